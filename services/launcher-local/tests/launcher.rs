//! The local launcher end to end on the in-memory bus: real processes, real files.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{
    Outcome, Runner, Stream, TaskCancel, TaskDispatched, TaskFinished, TaskLog, TaskStarted,
};
use ferry_event::template::{Part, Template};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, envelope, kind};
use ferry_launcher_local::state::{Entry, Journal, LogMark, RunningRecord, SlotDir, Status};
use ferry_launcher_local::{Config, Secrets, is_alive, run, start_time};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound on waiting for any one event.
const WAIT: Duration = Duration::from_secs(20);
const GROUP: &str = "launcher-local";

struct Harness {
    bus: MemoryBus,
    tmp: tempfile::TempDir,
    data_dir: PathBuf,
    control: Subscription,
    logs: Subscription,
    /// Control events seen so far: (type, attempt id, event).
    seen: Vec<(String, String, Event)>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<ferry_launcher_local::Result<()>>>,
    events: EventBuilder,
}

impl Harness {
    async fn start() -> Result<Harness> {
        Self::start_with(|_| {}).await
    }

    /// Starts the launcher; `tweak` adjusts its configuration, `before` prepares the data
    /// directory first.
    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Harness> {
        let tmp = tempfile::tempdir()?;
        Self::start_in(tmp, |_| Ok(()), tweak).await
    }

    async fn start_in(
        tmp: tempfile::TempDir,
        before: impl FnOnce(&Path) -> Result<()>,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Harness> {
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        before(&data_dir)?;
        let bus = MemoryBus::new();
        let control = bus
            .subscribe(Subscribe::new("observer-control", [Topic::Control]))
            .await?;
        let logs = bus
            .subscribe(Subscribe::new("observer-logs", [Topic::Logs]))
            .await?;
        // The launcher's queue collects dispatches from now on, like a durable broker queue.
        drop(
            bus.subscribe(Subscribe::new(GROUP, [Topic::Dispatch("local".into())]))
                .await?,
        );
        let mut config = Config::new(&data_dir);
        config.service.secrets = Secrets::new();
        config.service.kill_grace = Duration::from_secs(1);
        config.service.source = "ferry/launcher-local/test".into();
        config.service.group = GROUP.into();
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(config, Arc::new(bus.clone()), shutdown.clone()));
        // Cancels reach only instances already listening: wait until this one is.
        let cancels = Topic::Cancel("local".into());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while bus.groups_on(&cancels) == 0 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the launcher did not subscribe to cancels"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Harness {
            bus,
            tmp,
            data_dir,
            control,
            logs,
            seen: Vec::new(),
            shutdown,
            handle: Some(handle),
            events: EventBuilder::new("ferry/scheduler/test"),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    async fn dispatch(&self, d: &TaskDispatched) -> Result<()> {
        let e = self.events.dispatch(
            kind::TASK_DISPATCHED,
            &d.job_id,
            &d.task_id,
            &d.attempt_id,
            "local",
            d,
        );
        Ok(self.bus.publish(&[e]).await?)
    }

    async fn cancel(&self, d: &TaskDispatched, reason: &str) -> Result<()> {
        let c = TaskCancel {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            reason: Some(reason.into()),
        };
        let e = self.events.dispatch(
            kind::TASK_CANCEL,
            &d.job_id,
            &d.task_id,
            &d.attempt_id,
            "local",
            &c,
        );
        Ok(self.bus.publish(&[e]).await?)
    }

    /// Receives and records the next control event.
    async fn next_control(&mut self) -> Result<()> {
        let d = tokio::time::timeout(WAIT, self.control.next())
            .await
            .with_context(|| format!("no control event within {WAIT:?}; seen: {:?}", self.seen_types()))?
            .context("bus closed")??;
        let event = d.event.clone();
        d.ack().await?;
        let a = envelope::extension(&event, envelope::EXT_ATTEMPT).unwrap_or_default();
        self.seen.push((event.ty().to_string(), a, event));
        Ok(())
    }

    /// Waits (at most [`WAIT`] in all) for the first control event of type `ty` for `attempt`.
    async fn expect(&mut self, ty: &str, attempt: &str) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((_, _, e)) = self.seen.iter().find(|(t, a, _)| t == ty && a == attempt) {
                return Ok(e.clone());
            }
            tokio::time::timeout_at(deadline, self.next_control())
                .await
                .with_context(|| {
                    format!(
                        "no {ty} of {attempt} within {WAIT:?}; seen: {:?}",
                        self.seen_types()
                    )
                })??;
        }
    }

    async fn started(&mut self, attempt: &str) -> Result<TaskStarted> {
        Ok(ferry_event::decode(
            &self.expect(kind::TASK_STARTED, attempt).await?,
        )?)
    }

    async fn finished(&mut self, attempt: &str) -> Result<TaskFinished> {
        Ok(ferry_event::decode(
            &self.expect(kind::TASK_FINISHED, attempt).await?,
        )?)
    }

    fn count(&self, ty: &str, attempt: &str) -> usize {
        self.seen
            .iter()
            .filter(|(t, a, _)| t == ty && a == attempt)
            .count()
    }

    fn seen_types(&self) -> Vec<(String, String)> {
        self.seen.iter().map(|(t, a, _)| (t.clone(), a.clone())).collect()
    }

    /// Log batches already published (all of an attempt's are, once its task.finished is).
    async fn log_batches(&mut self, attempt: &str) -> Result<Vec<TaskLog>> {
        let mut out = Vec::new();
        while let Some(d) = self.logs.try_next() {
            let log: TaskLog = ferry_event::decode(&d.event)?;
            d.ack().await?;
            if log.attempt_id == attempt {
                out.push(log);
            }
        }
        Ok(out)
    }

    /// Waits for a log line of `attempt` equal to `text`.
    async fn expect_line(&mut self, attempt: &str, text: &str) -> Result<()> {
        loop {
            let d = tokio::time::timeout(WAIT, self.logs.next())
                .await
                .with_context(|| format!("no log line {text:?} within {WAIT:?}"))?
                .context("bus closed")??;
            let log: TaskLog = ferry_event::decode(&d.event)?;
            d.ack().await?;
            if log.attempt_id == attempt && log.lines.iter().any(|l| l.text == text) {
                return Ok(());
            }
        }
    }

    async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .context("the launcher did not stop in time")???;
        }
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn text(s: &str) -> Template {
    Template::text(s)
}

/// The first attempt of a task of its own (a launcher runs one attempt of a task at a time).
fn task(attempt: &str, command: &[&str]) -> TaskDispatched {
    TaskDispatched {
        job_id: "job-1".into(),
        task_id: format!("task-{attempt}"),
        attempt_id: attempt.into(),
        attempt: 1,
        runner: Runner::default(),
        command: command.iter().map(|s| text(s)).collect(),
        env: BTreeMap::new(),
        input_files: BTreeMap::new(),
        output_files: Vec::new(),
        resources: Default::default(),
        timeout_ms: None,
        lease_ms: 30_000,
        ready_at_ms: 1_700_000_000_000,
        flow_id: None,
        namespace: None,
        priority: 0,
    }
}

fn sh(attempt: &str, script: &str) -> TaskDispatched {
    task(attempt, &["sh", "-c", script])
}

fn all_lines(batches: &[TaskLog]) -> Vec<(u64, Stream, String)> {
    let mut out = Vec::new();
    for b in batches {
        for (i, l) in b.lines.iter().enumerate() {
            out.push((b.seq + i as u64, l.stream, l.text.clone()));
        }
    }
    out.sort_by_key(|(seq, _, _)| *seq);
    out
}

fn read_pids(path: &Path) -> Result<Vec<i32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?)
}

#[tokio::test]
async fn happy_path_reports_start_logs_outputs_and_success() -> Result<()> {
    let mut h = Harness::start().await?;
    let mut d = sh(
        "a-happy",
        r#"cat data/in.txt; echo "to stderr" >&2; echo "cwd=$(pwd)"; printf '{"rows": 3, "ok": true}' > "$FERRY_OUTPUTS""#,
    );
    d.input_files
        .insert("data/in.txt".into(), text("first line\nsecond line\n"));
    h.dispatch(&d).await?;

    let started = h.started("a-happy").await?;
    assert_eq!(started.ready_at_ms, d.ready_at_ms);
    assert_eq!(started.launcher, "ferry/launcher-local/test");
    let f = h.finished("a-happy").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(f.exit_code, Some(0));
    assert_eq!(f.error, None);
    assert_eq!(f.outputs["rows"], 3);
    assert_eq!(f.outputs["ok"], true);
    assert_eq!(f.log_lines, 4);
    assert_eq!(f.started_at_ms, Some(started.started_at_ms));

    let lines = all_lines(&h.log_batches("a-happy").await?);
    assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let stdout: Vec<_> = lines
        .iter()
        .filter(|l| l.1 == Stream::Stdout)
        .map(|l| l.2.clone())
        .collect();
    let work = SlotDir::at(&h.data_dir.canonicalize()?, 0).work();
    assert_eq!(
        stdout,
        ["first line", "second line", &format!("cwd={}", work.display())]
    );
    let stderr: Vec<_> = lines
        .iter()
        .filter(|l| l.1 == Stream::Stderr)
        .map(|l| l.2.clone())
        .collect();
    assert_eq!(stderr, ["to stderr"]);

    // The attempt's task ends after its report is confirmed; once stopped, all is settled.
    h.stop().await?;
    let dir = SlotDir::at(&h.data_dir, 0);
    assert_eq!(
        std::fs::read_dir(dir.work())?.count(),
        0,
        "the working directory is emptied"
    );
    assert!(!dir.outputs().exists());
    assert_eq!(
        std::fs::metadata(dir.stdout())?.len(),
        0,
        "the output files are emptied"
    );
    assert_eq!(Journal::open(&h.data_dir)?.status("a-happy"), Status::Finished);
    Ok(())
}

#[tokio::test]
async fn a_batch_ended_early_by_a_long_line_loses_nothing_after_it() -> Result<()> {
    // Batches of 3: "a", "b", then a whole line just over the limit (the longest secret says
    // how far past the limit a line is still taken whole), cut in two pieces that stay
    // together: the first batch ends at two lines, and the rest (stderr too) must follow.
    // Output is read only once the task has ended (the first look, at the start, finds
    // nothing; the next is ten seconds away).
    let mut h = Harness::start_with(|c| {
        c.service.log_batch_lines = 3;
        c.service.log_batch_interval = Duration::from_secs(10);
        c.service.secrets.insert("LONG", "a-secret-of-some-length");
    })
    .await?;
    h.dispatch(&sh(
        "a-long",
        "sleep 0.2; printf 'a\\nb\\n'; head -c 65540 /dev/zero | tr '\\0' x; printf '\\nc\\n'; echo e >&2",
    ))
    .await?;
    let f = h.finished("a-long").await?;
    assert_eq!((f.outcome, f.log_lines), (Outcome::Succeeded, 6), "{f:?}");
    let lines = all_lines(&h.log_batches("a-long").await?);
    let sizes: Vec<usize> = lines.iter().map(|l| l.2.len()).collect();
    assert_eq!(sizes, [1, 1, 64 * 1024, 4, 1, 1], "{:?}", &sizes);
    assert_eq!(lines[5].1, Stream::Stderr);
    h.stop().await
}

#[tokio::test]
async fn many_lines_are_batched_with_contiguous_sequence_numbers() -> Result<()> {
    let mut h = Harness::start_with(|c| c.service.log_batch_lines = 100).await?;
    h.dispatch(&task("a-seq", &["seq", "1", "1000"])).await?;
    let f = h.finished("a-seq").await?;
    assert_eq!(f.outcome, Outcome::Succeeded);
    assert_eq!(f.log_lines, 1000);
    let batches = h.log_batches("a-seq").await?;
    assert!(batches.len() >= 10, "{} batches", batches.len());
    assert!(
        batches
            .iter()
            .all(|b| !b.lines.is_empty() && b.lines.len() <= 100)
    );
    let lines = all_lines(&batches);
    let seqs: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
    let texts: Vec<String> = lines.into_iter().map(|l| l.2).collect();
    assert_eq!(texts, (1..=1000).map(|n| n.to_string()).collect::<Vec<_>>());
    h.stop().await
}

/// Needs variables in the launcher's own environment (a secret, a bus URL with a password,
/// cloud credentials), which a test cannot set in its own process safely: it runs itself again
/// in a child process that has them.
#[tokio::test]
async fn a_task_sees_only_what_it_was_given() -> Result<()> {
    const NAME: &str = "a_task_sees_only_what_it_was_given";
    if std::env::var_os("FERRY_SECRET_LAUNCHER_TEST").is_none() {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("FERRY_SECRET_LAUNCHER_TEST", "hunter2-hunter2")
            .env("FERRY_BUS", "amqp://ferry:bus-password-7@127.0.0.1:5672/v")
            .env("AWS_SECRET_ACCESS_KEY", "aws-secret-key-9")
            .env("EXTRA_PASSED", "yes")
            .env("LC_TIME", "C")
            .output()?;
        let report = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            report.contains("1 passed"),
            "the test did not run in the child: {report}"
        );
        return Ok(());
    }
    let mut h = Harness::start_with(|c| {
        c.service.secrets = Secrets::from_env();
        c.pass_env = vec!["EXTRA_*".into()];
    })
    .await?;
    // The launcher made itself non-dumpable: processes of its user without CAP_SYS_PTRACE (any
    // task not running as root) cannot read its environment or memory through /proc.
    assert!(
        !nix::sys::prctl::get_dumpable()?,
        "the launcher's /proc files are readable by tasks of its user"
    );
    // The task's own environment, by name.
    let mut d = sh(
        "a-env",
        r#"echo "$FERRY_JOB_ID|$FERRY_TASK_ID|$FERRY_ATTEMPT_ID|$FERRY_WORKING_DIR|$FERRY_OUTPUTS|$FERRY_SUBTASKS|$GREETING"
tr '\0' '\n' < /proc/$$/environ | cut -d= -f1 | sort | paste -sd' ' -
tr '\0' '\n' < /proc/$$/environ | grep -c -e hunter2 -e bus-password -e aws-secret || true"#,
    );
    d.env.insert("GREETING".into(), text("hello"));
    h.dispatch(&d).await?;
    let f = h.finished("a-env").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-env").await?);
    let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    let dir = SlotDir::at(&h.data_dir.canonicalize()?, 0);
    let expected = format!(
        "job-1|task-a-env|a-env|{}|{}|{}|hello",
        dir.work().display(),
        dir.outputs().display(),
        dir.subtasks().display()
    );
    assert_eq!(texts[0], expected);
    assert!(!dir.outputs().starts_with(dir.work()));
    assert!(!dir.subtasks().starts_with(dir.work()));
    // Exactly the allow-list (those of it the launcher has), what the launcher was told to
    // pass, the task's own and ferry's.
    let mut names: Vec<&str> = texts[1].split(' ').collect();
    // Those of the allow-list this test's own environment may or may not have are left out.
    let ambient = ["HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"];
    names.retain(|n| !(ambient.contains(n) || (n.starts_with("LC_") && *n != "LC_TIME")));
    assert_eq!(
        names,
        [
            "EXTRA_PASSED",
            "FERRY_ATTEMPT_ID",
            "FERRY_JOB_ID",
            "FERRY_OUTPUTS",
            "FERRY_SUBTASKS",
            "FERRY_TASK_ID",
            "FERRY_WORKING_DIR",
            "GREETING",
            "LC_TIME",
            "PATH"
        ],
        "{texts:?}"
    );
    assert_eq!(
        texts[2], "0",
        "the launcher's secrets reached the task: {texts:?}"
    );
    h.stop().await
}

#[tokio::test]
async fn secrets_are_filled_and_masked_everywhere() -> Result<()> {
    let key = "-----BEGIN TEST KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END TEST KEY-----";
    let mut h = Harness::start_with(|c| {
        c.service.secrets.insert("TOKEN", "s3cr3t-value");
        c.service.secrets.insert("KEY", key);
    })
    .await?;
    let mut d = sh(
        "a-secret",
        r#"echo "token=$1 again $1"; echo "$TOKEN_ENV" >&2; printf '{"t": "%s", "s3cr3t-value": 1}' "$1" > "$FERRY_OUTPUTS""#,
    );
    d.command.push(text("sh"));
    d.command.push(Template(vec![Part::Secret("TOKEN".into())]));
    d.env.insert(
        "TOKEN_ENV".into(),
        Template(vec![Part::Text("env:".into()), Part::Secret("TOKEN".into())]),
    );
    h.dispatch(&d).await?;
    let f = h.finished("a-secret").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(f.outputs["t"], "****");
    assert_eq!(f.outputs["****"], 1);
    let lines = all_lines(&h.log_batches("a-secret").await?);
    let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    assert!(texts.contains(&"token=**** again ****"), "{texts:?}");
    assert!(texts.contains(&"env:****"), "{texts:?}");

    // A secret of several lines printed by the task: each line is masked.
    let mut d = sh("a-key", r#"printf '%s\n' "$KEY_ENV"; echo done"#);
    d.env
        .insert("KEY_ENV".into(), Template(vec![Part::Secret("KEY".into())]));
    h.dispatch(&d).await?;
    let f = h.finished("a-key").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-key").await?);
    let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(texts, ["****", "****", "****", "done"]);

    // A secret in an error (here: the program name) is masked too.
    let mut d = task("a-secret-error", &[]);
    d.command = vec![Template(vec![
        Part::Text("/nope/".into()),
        Part::Secret("TOKEN".into()),
    ])];
    h.dispatch(&d).await?;
    let f = h.finished("a-secret-error").await?;
    let error = f.error.unwrap_or_default();
    assert!(
        error.contains("/nope/****") && !error.contains("s3cr3t"),
        "{error}"
    );

    // A missing secret fails the attempt, naming the variable to set.
    let mut d = task("a-secret-missing", &["echo"]);
    d.command.push(Template(vec![Part::Secret("ABSENT".into())]));
    h.dispatch(&d).await?;
    let f = h.finished("a-secret-missing").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    let error = f.error.unwrap_or_default();
    assert!(error.contains("FERRY_SECRET_ABSENT"), "{error}");
    assert_eq!(h.count(kind::TASK_STARTED, "a-secret-missing"), 0);
    h.stop().await
}

#[tokio::test]
async fn hostile_input_file_names_fail_clearly_and_write_nothing_outside() -> Result<()> {
    let mut h = Harness::start().await?;
    let outside_abs = h.path_str("abs-target");
    let marker = h.path("ran");
    let names = ["../x", outside_abs.as_str(), "a/../../x"];
    for (i, name) in names.iter().enumerate() {
        let mut d = task(&format!("a-hostile-{i}"), &["touch", &marker.to_string_lossy()]);
        d.input_files.insert("fine.txt".into(), text("ok"));
        d.input_files.insert((*name).into(), text("pwned"));
        h.dispatch(&d).await?;
    }
    for (i, name) in names.iter().enumerate() {
        let attempt = format!("a-hostile-{i}");
        let f = h.finished(&attempt).await?;
        assert_eq!(f.outcome, Outcome::Failed, "{name}: {f:?}");
        let error = f.error.unwrap_or_default();
        assert!(error.contains(&format!("{name:?}")), "{name}: {error}");
        assert_eq!(h.count(kind::TASK_STARTED, &attempt), 0);
        assert!(!h.data_dir.join("slots/x").exists());
        assert!(!h.data_dir.join("slots/0/x").exists());
        assert!(!h.data_dir.join("x").exists());
    }
    assert!(!h.path("abs-target").exists());
    assert!(!marker.exists(), "the command ran despite a refused input file");
    h.stop().await
}

#[tokio::test]
async fn values_with_shell_syntax_are_passed_verbatim() -> Result<()> {
    let mut h = Harness::start().await?;
    let pwned = h.path_str("pwned");
    let value = format!("$(touch {pwned}); touch {pwned} `touch {pwned}`");
    let mut d = task("a-verbatim", &["printf", "%s|%s\n"]);
    d.command.push(text(&value));
    d.command.push(Template(vec![
        Part::WorkingDir,
        Part::Text(format!("/$(touch {pwned})")),
    ]));
    h.dispatch(&d).await?;
    let f = h.finished("a-verbatim").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-verbatim").await?);
    let work = SlotDir::at(&h.data_dir.canonicalize()?, 0).work();
    assert_eq!(lines[0].2, format!("{value}|{}/$(touch {pwned})", work.display()));
    assert!(!h.path("pwned").exists());
    h.stop().await
}

#[tokio::test]
async fn output_files_are_copied_and_listed() -> Result<()> {
    let artifacts = tempfile::tempdir()?;
    let artifact_dir = artifacts.path().to_path_buf();
    let mut h = Harness::start_with(|c| c.service.artifact_dir = Some(artifact_dir)).await?;
    let mut d = sh(
        "a-files",
        "mkdir -p out && printf one > out/a.json && printf two2 > b.json && printf x > c.txt \
         && ln -s /etc/hostname leak.json && mkdir dir.json",
    );
    d.output_files = vec!["*.json".into(), "out/*.json".into(), "b.json".into()];
    h.dispatch(&d).await?;
    let f = h.finished("a-files").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let listed: Vec<(&str, u64)> = f.output_files.iter().map(|o| (o.path.as_str(), o.size)).collect();
    assert_eq!(listed, [("b.json", 4), ("out/a.json", 3)]);
    let base = artifacts
        .path()
        .canonicalize()?
        .join("job-1/task-a-files/a-files");
    assert_eq!(std::fs::read_to_string(base.join("out/a.json"))?, "one");
    assert_eq!(std::fs::read_to_string(base.join("b.json"))?, "two2");
    assert_eq!(
        f.output_files[0].uri,
        format!("file://{}", base.join("b.json").display())
    );
    assert!(!base.join("leak.json").exists());
    h.stop().await
}

#[tokio::test]
async fn output_files_go_to_the_artifact_store_and_leave_the_directory() -> Result<()> {
    let Some(endpoint) = ferry_artifacts::testing::moto() else {
        return Ok(());
    };
    let bucket = ferry_artifacts::testing::moto_bucket(&endpoint, "local");
    output_files_are_stored_in(
        &format!("s3://{bucket}"),
        ferry_artifacts::testing::moto_options(&endpoint),
    )
    .await
}

#[tokio::test]
async fn output_files_go_to_a_cloud_storage_bucket_and_leave_the_directory() -> Result<()> {
    let Some(endpoint) = ferry_artifacts::testing::gcs() else {
        return Ok(());
    };
    let bucket = ferry_artifacts::testing::gcs_bucket(&endpoint, "local");
    output_files_are_stored_in(
        &format!("gs://{bucket}"),
        ferry_artifacts::testing::gcs_options(&endpoint),
    )
    .await
}

/// A task's output files stored under `runs` in the bucket at `bucket`, reached with `options`:
/// named by the bucket's URIs on `task.finished`, and gone from the artifact directory.
async fn output_files_are_stored_in(bucket: &str, options: Vec<(String, String)>) -> Result<()> {
    let artifacts = tempfile::tempdir()?;
    let artifact_dir = artifacts.path().to_path_buf();
    let url = format!("{bucket}/runs");
    let store_options = options.clone();
    let mut h = Harness::start_with(|c| {
        c.service.artifact_dir = Some(artifact_dir);
        c.service.artifact_store = Some(url);
        c.service.artifact_store_options = store_options;
    })
    .await?;
    let mut d = sh(
        "a-stored",
        "mkdir -p out && printf one > 'out/a b.json' && printf two2 > b.json",
    );
    d.output_files = vec!["*.json".into(), "out/*.json".into()];
    h.dispatch(&d).await?;
    let f = h.finished("a-stored").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let listed: Vec<(&str, &str, u64)> = f
        .output_files
        .iter()
        .map(|o| (o.path.as_str(), o.uri.as_str(), o.size))
        .collect();
    let prefix = format!("{bucket}/runs/job-1/task-a-stored/a-stored");
    assert_eq!(
        listed,
        [
            ("b.json", format!("{prefix}/b.json").as_str(), 4),
            ("out/a b.json", format!("{prefix}/out/a b.json").as_str(), 3)
        ]
    );
    let store = ferry_artifacts::Store::open_with(bucket, options)?;
    for (file, want) in f.output_files.iter().zip(["two2", "one"]) {
        assert_eq!(store.read(&store.key_of(&file.uri)?).await?, want.as_bytes());
    }
    // Stored, the local copies are gone.
    assert!(!artifacts.path().join("job-1/task-a-stored/a-stored").exists());
    h.stop().await
}

#[test]
fn an_artifact_store_that_cannot_work_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Config::new(tmp.path());
    c.service.artifact_store = Some("ftp://x".into());
    let e = c.service.prepare().err().unwrap().to_string();
    assert!(e.contains("`ftp://` is not a kind of store"), "{e}");
    c.service.artifact_store = Some(format!("file://{}", tmp.path().display()));
    let e = c.service.prepare().err().unwrap().to_string();
    assert!(e.contains("--artifact-dir"), "{e}");
    c.service.artifact_store = Some("s3://bucket".into());
    c.service.artifact_store_options = vec![("region".into(), "us-east-1".into())];
    c.service.artifact_retention = Some(Duration::from_secs(60));
    let e = c.service.prepare().err().unwrap().to_string();
    assert!(
        e.contains("--artifact-retention") && e.contains("lifecycle"),
        "{e}"
    );
}

#[tokio::test]
async fn exit_status_and_signals_fail_the_attempt() -> Result<()> {
    let mut h = Harness::start().await?;
    h.dispatch(&sh("a-exit", "echo before; exit 3")).await?;
    h.dispatch(&sh("a-signal", "kill -KILL $$")).await?;
    let f = h.finished("a-exit").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(f.exit_code, Some(3));
    assert_eq!(f.error.as_deref(), Some("exited with status 3"));
    assert_eq!(f.log_lines, 1);
    let f = h.finished("a-signal").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(f.exit_code, None);
    assert_eq!(f.error.as_deref(), Some("killed by signal SIGKILL"));
    h.stop().await
}

#[tokio::test]
async fn a_command_that_cannot_start_fails_clearly() -> Result<()> {
    let mut h = Harness::start().await?;
    let mut d = task("a-missing", &["ferry-no-such-program"]);
    d.env.insert("PATH".into(), text("/nowhere:/usr/bin"));
    h.dispatch(&d).await?;
    let f = h.finished("a-missing").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.error.as_deref(),
        Some("command `ferry-no-such-program` not found on PATH=/nowhere:/usr/bin")
    );
    assert_eq!(h.count(kind::TASK_STARTED, "a-missing"), 0);
    assert_eq!(std::fs::read_dir(SlotDir::at(&h.data_dir, 0).work())?.count(), 0);
    h.dispatch(&task("a-missing-path", &["/nowhere/program"])).await?;
    let f = h.finished("a-missing-path").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.error.as_deref(),
        Some(r#"cannot start "/nowhere/program": No such file or directory (os error 2)"#)
    );
    h.stop().await
}

#[tokio::test]
async fn what_the_local_backend_cannot_give_is_refused_before_anything_runs() -> Result<()> {
    let mut h = Harness::start().await?;
    let ran = h.path_str("ran");
    let mut d = task("a-gpu", &["touch", &ran]);
    d.resources.gpu = Some(1);
    h.dispatch(&d).await?;
    let f = h.finished("a-gpu").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    let error = f.error.unwrap_or_default();
    assert!(error.starts_with("resources.gpu: "), "{error}");
    assert_eq!(h.count(kind::TASK_STARTED, "a-gpu"), 0);
    assert!(!Path::new(&ran).exists(), "the task ran");
    assert_eq!(Journal::open(&h.data_dir)?.status("a-gpu"), Status::Finished);
    h.stop().await
}

#[tokio::test]
async fn commands_are_found_on_the_tasks_path_and_keep_the_name_written() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::start().await?;
    let bin = h.path("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::write(
        bin.join("ferry-test-tool"),
        "#!/bin/sh\necho \"tool ran with $1\"\n",
    )?;
    std::fs::set_permissions(
        bin.join("ferry-test-tool"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let mut d = task("a-path", &["ferry-test-tool", "x"]);
    d.env.insert("PATH".into(), text(&path));
    h.dispatch(&d).await?;
    let f = h.finished("a-path").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-path").await?);
    assert_eq!(lines[0].2, "tool ran with x");
    let mut d = task("a-argv0", &["sh", "-c", "tr '\\0' ' ' < /proc/$$/cmdline"]);
    d.env.insert("PATH".into(), text(&path));
    h.dispatch(&d).await?;
    let f = h.finished("a-argv0").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-argv0").await?);
    assert!(
        lines[0].2.starts_with("sh -c "),
        "argv[0] is not as written: {:?}",
        lines[0].2
    );
    h.stop().await
}

/// A script that records its own pid and a background child's, says "ready", and waits.
fn group_script(pids: &str, ignore_term: bool) -> String {
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    format!("{trap}echo $$ > {pids}; sleep 100 & echo $! >> {pids}; echo ready; sleep 100")
}

#[tokio::test]
async fn a_timeout_kills_the_whole_group_even_when_it_ignores_sigterm() -> Result<()> {
    let mut h = Harness::start_with(|c| c.service.kill_grace = Duration::from_millis(300)).await?;
    let pids = h.path_str("pids");
    let mut d = sh("a-timeout", &group_script(&pids, true));
    d.timeout_ms = Some(1500);
    h.dispatch(&d).await?;
    let f = h.finished("a-timeout").await?;
    assert_eq!(f.outcome, Outcome::TimedOut, "{f:?}");
    assert_eq!(f.error.as_deref(), Some("timed out after 1.5s"));
    let pids = read_pids(Path::new(&pids))?;
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived the timeout");
    }
    h.stop().await
}

#[tokio::test]
async fn a_cancel_kills_the_whole_group() -> Result<()> {
    let mut h = Harness::start().await?;
    let pids = h.path_str("pids");
    let d = sh("a-cancel", &group_script(&pids, false));
    h.dispatch(&d).await?;
    h.expect_line("a-cancel", "ready").await?;
    h.cancel(&d, "job cancelled by user").await?;
    let f = h.finished("a-cancel").await?;
    assert_eq!(f.outcome, Outcome::Cancelled, "{f:?}");
    assert_eq!(f.error.as_deref(), Some("cancelled: job cancelled by user"));
    let pids = read_pids(Path::new(&pids))?;
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived the cancel");
    }
    h.stop().await
}

#[tokio::test]
async fn a_background_child_does_not_outlive_its_task() -> Result<()> {
    let mut h = Harness::start().await?;
    let pids = h.path_str("pids");
    h.dispatch(&sh(
        "a-stray",
        &format!("sleep 100 & echo $! > {pids}; echo done"),
    ))
    .await?;
    let f = h.finished("a-stray").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let pids = read_pids(Path::new(&pids))?;
    assert!(!is_alive(pids[0]), "the background child outlived its task");
    h.stop().await
}

#[tokio::test]
async fn a_duplicate_dispatch_never_starts_a_second_process() -> Result<()> {
    let mut h = Harness::start().await?;
    let count = h.path_str("count");
    let go = h.path_str("go");
    let d = sh(
        "a-dup",
        &format!("echo run >> {count}; while [ ! -e {go} ]; do sleep 0.02; done"),
    );
    h.dispatch(&d).await?;
    h.started("a-dup").await?;
    // Redelivered while running; then a marker dispatch processed after it.
    h.dispatch(&d).await?;
    h.dispatch(&task("a-after-1", &["true"])).await?;
    h.finished("a-after-1").await?;
    std::fs::write(&go, "")?;
    assert_eq!(h.finished("a-dup").await?.outcome, Outcome::Succeeded);
    // Redelivered after it finished.
    h.dispatch(&d).await?;
    h.dispatch(&task("a-after-2", &["true"])).await?;
    h.finished("a-after-2").await?;
    assert_eq!(std::fs::read_to_string(&count)?, "run\n");
    assert_eq!(h.count(kind::TASK_STARTED, "a-dup"), 1);
    assert_eq!(h.count(kind::TASK_FINISHED, "a-dup"), 1);
    assert!(h.bus.dead_letters().is_empty());
    h.stop().await
}

#[tokio::test]
async fn a_cancel_before_the_dispatch_leaves_a_tombstone() -> Result<()> {
    let mut h = Harness::start().await?;
    let ran = h.path_str("ran");
    let d = task("a-tomb", &["touch", &ran]);
    h.cancel(&d, "changed my mind").await?;
    h.dispatch(&d).await?;
    let f = h.finished("a-tomb").await?;
    assert_eq!(f.outcome, Outcome::Cancelled);
    assert_eq!(f.error.as_deref(), Some("cancelled: changed my mind"));
    assert_eq!(f.started_at_ms, None);
    assert_eq!(h.count(kind::TASK_STARTED, "a-tomb"), 0);
    assert!(!Path::new(&ran).exists());
    h.stop().await
}

#[tokio::test]
async fn at_most_max_parallel_attempts_run_at_once() -> Result<()> {
    let mut h = Harness::start_with(|c| c.service.max_parallel = 2).await?;
    let go = h.path_str("go");
    let wait_for_go = format!("while [ ! -e {go} ]; do sleep 0.02; done");
    for id in ["p-1", "p-2", "p-3"] {
        h.dispatch(&sh(id, &wait_for_go)).await?;
    }
    h.started("p-1").await?;
    h.started("p-2").await?;
    // A third start can only be observed as absence: allow it a bounded chance to show up.
    let third = tokio::time::timeout(Duration::from_millis(500), h.control.next()).await;
    if let Ok(Some(Ok(d))) = third {
        bail!("unexpected event while two attempts run: {}", d.event.ty());
    }
    // A cancel still arrives while every slot is busy, and ends the waiting dispatch.
    h.cancel(&sh("p-3", ""), "not needed").await?;
    assert_eq!(h.finished("p-3").await?.outcome, Outcome::Cancelled);
    std::fs::write(&go, "")?;
    for id in ["p-1", "p-2"] {
        assert_eq!(h.finished(id).await?.outcome, Outcome::Succeeded);
    }
    // Slots are free again.
    h.dispatch(&sh("p-4", &wait_for_go)).await?;
    assert_eq!(h.finished("p-4").await?.outcome, Outcome::Succeeded);
    assert_eq!(h.count(kind::TASK_STARTED, "p-3"), 0);
    h.stop().await
}

#[tokio::test]
async fn heartbeats_flow_while_the_attempt_runs() -> Result<()> {
    let mut h = Harness::start().await?;
    let go = h.path_str("go");
    let mut d = sh("a-beat", &format!("while [ ! -e {go} ]; do sleep 0.02; done"));
    d.lease_ms = 300;
    h.dispatch(&d).await?;
    h.started("a-beat").await?;
    while h.count(kind::TASK_HEARTBEAT, "a-beat") < 3 {
        h.next_control().await?;
    }
    std::fs::write(&go, "")?;
    let f = h.finished("a-beat").await?;
    assert_eq!(f.outcome, Outcome::Succeeded);
    h.stop().await
}

#[tokio::test]
async fn an_unsafe_attempt_id_is_dead_lettered() -> Result<()> {
    let mut h = Harness::start().await?;
    h.dispatch(&task("../evil", &["true"])).await?;
    h.dispatch(&task("a-ok", &["true"])).await?;
    h.finished("a-ok").await?;
    let dead = h.bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains(r#"attempt id "../evil""#),
        "{}",
        dead[0].reason
    );
    assert!(!h.data_dir.join("evil").exists());
    h.stop().await
}

#[tokio::test]
async fn shutdown_stops_running_attempts_and_reports_them_lost() -> Result<()> {
    let mut h = Harness::start().await?;
    let pids = h.path_str("pids");
    h.dispatch(&sh("a-shutdown", &group_script(&pids, false))).await?;
    h.expect_line("a-shutdown", "ready").await?;
    h.stop().await?;
    let f = h.finished("a-shutdown").await?;
    assert_eq!(f.outcome, Outcome::Lost);
    assert_eq!(f.error.as_deref(), Some("launcher shut down"));
    assert!(f.log_lines >= 1);
    for pid in read_pids(Path::new(&pids))? {
        assert!(!is_alive(pid), "process {pid} outlived the launcher");
    }
    Ok(())
}

/// A process group a previous run of the launcher left behind.
struct Leftover {
    child: std::process::Child,
    /// The background child's pid.
    grandchild: i32,
    /// The leader's pid (the group id) and start time, as the launcher records them.
    pid: i32,
    start: u64,
}

/// Starts `sh` in its own process group with a background child, as a launcher would have.
fn leftover() -> Result<Leftover> {
    let (child, grandchild) = leftover_group()?;
    let pid = child.id() as i32;
    let start = start_time(pid).context("no start time")?;
    Ok(Leftover {
        child,
        grandchild,
        pid,
        start,
    })
}

fn leftover_group() -> Result<(std::process::Child, i32)> {
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 100 & echo $!; exec sleep 100"])
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    Ok((child, line.trim().parse()?))
}

fn record(attempt: &str, pid: i32, start_time: u64) -> RunningRecord {
    RunningRecord {
        job_id: "job-1".into(),
        task_id: "extract".into(),
        attempt_id: attempt.into(),
        attempt: 2,
        slot: 0,
        pid,
        start_time,
        started_at_ms: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn reconcile_stops_a_previous_runs_process_group_and_reports_it_lost() -> Result<()> {
    let Leftover {
        mut child,
        grandchild,
        pid,
        start,
    } = leftover()?;
    let tmp = tempfile::tempdir()?;
    let mut h = Harness::start_in(
        tmp,
        |data| {
            let dir = SlotDir::at(data, 0);
            std::fs::create_dir_all(dir.work())?;
            std::fs::write(dir.work().join("partial"), "x")?;
            // Seven lines were published before the launcher died.
            std::fs::write(dir.stdout(), "1\n2\n3\n4\n5\n6\n7\n")?;
            let journal = Journal::open(data)?;
            journal.record("a-left", Entry::Running(record("a-left", pid, start)))?;
            journal.record(
                "a-left",
                Entry::Logs(LogMark {
                    seq: 7,
                    out: 14,
                    err: 0,
                }),
            )?;
            journal.record(
                "a-left",
                Entry::Logs(LogMark {
                    seq: 7,
                    out: 14,
                    err: 0,
                }),
            )?;
            Ok(())
        },
        |_| {},
    )
    .await?;
    let f = h.finished("a-left").await?;
    assert_eq!(f.outcome, Outcome::Lost);
    assert_eq!(f.attempt, 2);
    assert_eq!(f.log_lines, 7);
    assert!(
        f.error.as_deref().unwrap_or_default().contains("stopped"),
        "{f:?}"
    );
    let status = child.wait()?;
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert!(!is_alive(grandchild), "the leftover background child survived");

    // Dispatched again (the old run never acked it): recognised, not started.
    h.dispatch(&task("a-left", &["true"])).await?;
    h.dispatch(&task("a-next", &["true"])).await?;
    h.finished("a-next").await?;
    assert_eq!(h.count(kind::TASK_STARTED, "a-left"), 0);
    assert_eq!(h.count(kind::TASK_FINISHED, "a-left"), 1);
    h.stop().await?;
    assert_eq!(Journal::open(&h.data_dir)?.status("a-left"), Status::Finished);
    let dir = SlotDir::at(&h.data_dir, 0);
    assert_eq!(std::fs::read_dir(dir.work())?.count(), 0, "the slot was emptied");
    Ok(())
}

#[tokio::test]
async fn reconcile_publishes_a_killed_runs_output_under_the_same_numbers() -> Result<()> {
    let Leftover {
        mut child,
        grandchild,
        pid,
        start,
    } = leftover()?;
    let tmp = tempfile::tempdir()?;
    let mut h = Harness::start_in(
        tmp,
        |data| {
            let dir = SlotDir::at(data, 2);
            std::fs::create_dir_all(dir.work())?;
            std::fs::write(dir.stdout(), "l0\nl1\nl2\nl3\nunfinished")?;
            std::fs::write(dir.stderr(), "e0\n")?;
            let journal = Journal::open(data)?;
            let mut r = record("a-out", pid, start);
            r.slot = 2;
            journal.record("a-out", Entry::Running(r))?;
            // l0 was published; l1 and l2 were numbered, and maybe published, when the
            // launcher died; the rest was never read.
            journal.record(
                "a-out",
                Entry::Logs(LogMark {
                    seq: 1,
                    out: 3,
                    err: 0,
                }),
            )?;
            journal.record(
                "a-out",
                Entry::Logs(LogMark {
                    seq: 3,
                    out: 9,
                    err: 0,
                }),
            )?;
            Ok(())
        },
        |_| {},
    )
    .await?;
    let f = h.finished("a-out").await?;
    assert_eq!((f.outcome, f.log_lines), (Outcome::Lost, 6), "{f:?}");
    let lines: Vec<(u64, String)> = all_lines(&h.log_batches("a-out").await?)
        .into_iter()
        .map(|(seq, _, text)| (seq, text))
        .collect();
    let expected = [(1, "l1"), (2, "l2"), (3, "l3"), (4, "unfinished"), (5, "e0")];
    assert_eq!(
        lines,
        expected.map(|(n, t)| (n, t.to_string())),
        "the numbered lines again, then the rest"
    );
    child.wait()?;
    assert!(!is_alive(grandchild));
    h.stop().await
}

/// A journal as the local launcher wrote it before the launcher runtime existed (no version
/// line; the slot, pid and start time in the running record; file offsets in log marks).
#[tokio::test]
async fn a_journal_written_before_the_launcher_runtime_is_reconciled() -> Result<()> {
    let Leftover {
        mut child,
        grandchild,
        pid,
        start,
    } = leftover()?;
    let tmp = tempfile::tempdir()?;
    let mut h = Harness::start_in(
        tmp,
        |data| {
            let dir = SlotDir::at(data, 1);
            std::fs::create_dir_all(dir.work())?;
            std::fs::write(dir.stdout(), "l0\nl1\nl2\n")?;
            std::fs::write(dir.stderr(), "e0\n")?;
            let records = [
                r#"{"id":"a-v1","at":1,"state":"running","jobId":"job-1","taskId":"extract","attemptId":"a-v1","attempt":3,"slot":1,"pid":0,"startTime":0,"startedAtMs":0}"#
                    .to_string(),
                format!(
                    r#"{{"id":"a-v1","at":1,"state":"running","jobId":"job-1","taskId":"extract","attemptId":"a-v1","attempt":3,"slot":1,"pid":{pid},"startTime":{start},"startedAtMs":1700000000000}}"#
                ),
                r#"{"id":"a-v1","at":1,"state":"logs","seq":1,"out":3,"err":0}"#.to_string(),
                r#"{"id":"a-v1","at":1,"state":"logs","seq":2,"out":6,"err":0}"#.to_string(),
            ];
            std::fs::write(data.join("journal"), records.join("\n") + "\n")?;
            Ok(())
        },
        |_| {},
    )
    .await?;
    let f = h.finished("a-v1").await?;
    assert_eq!(
        (f.outcome, f.attempt, f.log_lines),
        (Outcome::Lost, 3, 4),
        "{f:?}"
    );
    assert!(
        f.error.as_deref().unwrap_or_default().contains("stopped"),
        "{f:?}"
    );
    let lines: Vec<(u64, String)> = all_lines(&h.log_batches("a-v1").await?)
        .into_iter()
        .map(|(seq, _, text)| (seq, text))
        .collect();
    let expected = [(1, "l1"), (2, "l2"), (3, "e0")];
    assert_eq!(lines, expected.map(|(n, t)| (n, t.to_string())));
    let status = child.wait()?;
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert!(!is_alive(grandchild));
    h.stop().await?;
    let text = std::fs::read_to_string(h.data_dir.join("journal"))?;
    assert!(
        text.starts_with("{\"journal\":3}\n"),
        "rewritten in the current version: {text}"
    );
    assert_eq!(Journal::open(&h.data_dir)?.status("a-v1"), Status::Finished);
    Ok(())
}

#[tokio::test]
async fn reconcile_leaves_a_reused_pid_alone() -> Result<()> {
    let Leftover {
        mut child,
        grandchild,
        pid,
        start,
    } = leftover()?;
    let tmp = tempfile::tempdir()?;
    let mut h = Harness::start_in(
        tmp,
        // Same pid, different start time: the process is someone else's now.
        |data| {
            let journal = Journal::open(data)?;
            Ok(journal.record("a-reused", Entry::Running(record("a-reused", pid, start + 1)))?)
        },
        |_| {},
    )
    .await?;
    let f = h.finished("a-reused").await?;
    assert_eq!(f.outcome, Outcome::Lost);
    assert!(
        f.error.as_deref().unwrap_or_default().contains("already ended"),
        "{f:?}"
    );
    let alive = is_alive(pid) && is_alive(grandchild);
    let _ = kill_group(pid);
    let _ = child.wait();
    assert!(alive, "a process that was not ours was killed");
    h.stop().await
}

fn kill_group(pgid: i32) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

#[tokio::test]
async fn invalid_outputs_fail_the_attempt_clearly() -> Result<()> {
    let mut h = Harness::start().await?;
    h.dispatch(&sh("a-bad-json", r#"printf '{"rows":' > "$FERRY_OUTPUTS""#))
        .await?;
    h.dispatch(&sh("a-array", r#"printf '[1, 2]' > "$FERRY_OUTPUTS""#))
        .await?;
    let f = h.finished("a-bad-json").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    assert!(
        f.error.as_deref().unwrap_or_default().contains("not valid JSON"),
        "{f:?}"
    );
    let f = h.finished("a-array").await?;
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.error.as_deref(),
        Some("the outputs file $FERRY_OUTPUTS must hold a JSON object, not an array")
    );
    h.stop().await
}

fn recorded_report(attempt: &str) -> TaskFinished {
    TaskFinished {
        job_id: "job-1".into(),
        task_id: "extract".into(),
        attempt_id: attempt.into(),
        attempt: 1,
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        error: None,
        outputs: Default::default(),
        output_files: Vec::new(),
        log_lines: 3,
        started_at_ms: Some(1_700_000_000_000),
        finished_at_ms: 1_700_000_000_500,
        reason: None,
        compute_ms: None,
        subtasks: Vec::new(),
    }
}

#[tokio::test]
async fn reconcile_resumes_each_recorded_state() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut h = Harness::start_in(
        tmp,
        |data| {
            let journal = Journal::open(data)?;
            let reported = |id: &str| Entry::Reported {
                report: Box::new(recorded_report(id)),
            };
            // Report recorded, not confirmed: published at start.
            journal.record("s-pending", reported("s-pending"))?;
            // Reported and confirmed: a dispatch of it is a duplicate.
            journal.record("s-done", reported("s-done"))?;
            journal.record("s-done", Entry::Done)?;
            // Cancelled before its dispatch: the tombstone outlives the restart.
            journal.record(
                "s-tomb",
                Entry::Cancelled {
                    reason: "cancelled: no longer needed".into(),
                },
            )?;
            // Leftovers in a slot no attempt holds go.
            let fresh = SlotDir::at(data, 0);
            std::fs::create_dir_all(fresh.work())?;
            std::fs::write(fresh.work().join("partial"), "x")?;
            std::fs::write(fresh.outputs(), "{}")?;
            Ok(())
        },
        |_| {},
    )
    .await?;
    let f = h.finished("s-pending").await?;
    assert_eq!((f.outcome, f.log_lines), (Outcome::Succeeded, 3), "{f:?}");
    let fresh = SlotDir::at(&h.data_dir, 0);
    assert!(!fresh.work().join("partial").exists() && !fresh.outputs().exists());

    let ran = h.path_str("ran");
    for id in ["s-pending", "s-done", "s-tomb"] {
        h.dispatch(&task(id, &["touch", &ran])).await?;
    }
    let f = h.finished("s-tomb").await?;
    assert_eq!(f.outcome, Outcome::Cancelled);
    assert_eq!(f.error.as_deref(), Some("cancelled: no longer needed"));
    h.dispatch(&task("s-next", &["true"])).await?;
    h.finished("s-next").await?;
    assert!(!Path::new(&ran).exists(), "a recorded attempt ran again");
    for id in ["s-pending", "s-done", "s-tomb"] {
        assert_eq!(h.count(kind::TASK_STARTED, id), 0, "{id}");
    }
    assert_eq!(h.count(kind::TASK_FINISHED, "s-pending"), 1);
    assert_eq!(h.count(kind::TASK_FINISHED, "s-done"), 0);
    h.stop().await?;
    assert_eq!(Journal::open(&h.data_dir)?.status("s-pending"), Status::Finished);
    Ok(())
}

#[tokio::test]
async fn reconcile_finds_processes_started_just_before_a_crash_by_their_attempt_id() -> Result<()> {
    // The previous run recorded the start (no pid yet), spawned, and died before recording the
    // pid: the process carries the attempt id in its environment.
    let attempt = format!("a-starting-{}", std::process::id());
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 100 & echo $!; exec sleep 100"])
        .env("FERRY_ATTEMPT_ID", &attempt)
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let grandchild: i32 = line.trim().parse()?;
    let tmp = tempfile::tempdir()?;
    let a = attempt.clone();
    let mut h = Harness::start_in(
        tmp,
        move |data| {
            let journal = Journal::open(data)?;
            Ok(journal.record(&a, Entry::Running(record(&a, 0, 0)))?)
        },
        |_| {},
    )
    .await?;
    let f = h.finished(&attempt).await?;
    assert_eq!(f.outcome, Outcome::Lost);
    assert!(
        f.error.as_deref().unwrap_or_default().contains("while starting"),
        "{f:?}"
    );
    let status = child.wait()?;
    assert!(
        status.signal().is_some(),
        "the attempt's process was not stopped: {status:?}"
    );
    assert!(!is_alive(grandchild), "its background child survived");
    // The redelivered dispatch is recognised, never started a second time.
    h.dispatch(&task(&attempt, &["true"])).await?;
    h.dispatch(&task("a-after", &["true"])).await?;
    h.finished("a-after").await?;
    assert_eq!(h.count(kind::TASK_STARTED, &attempt), 0);
    h.stop().await
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Whether this machine gives the launcher a cgroup v2 per slot (root, and a cgroup2 mount).
fn cgroups_here() -> bool {
    is_root()
        && std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.lines().any(|l| l.contains(" - cgroup2 ")))
}

/// Waits until `path` holds as many pids as `n`.
async fn wait_pids(path: &Path, n: usize) -> Result<Vec<i32>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(pids) = read_pids(path)
            && pids.len() >= n
        {
            return Ok(pids);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{} did not get {n} pids",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A task that leaves three processes outside its process group: one in a new session, one
/// double-forked into a new session, one in a new session with an empty environment (which the
/// sweep cannot find: only cgroups stop it). Their pids go to `pids`, one per line.
fn escape_script(pids: &str, with_cleared_env: bool) -> String {
    let cleared = if with_cleared_env {
        format!("setsid env -i sh -c 'echo $$ >> {pids}; exec sleep 1000' &\n")
    } else {
        String::new()
    };
    format!(
        "setsid sh -c 'echo $$ >> {pids}; exec sleep 1000' &\n\
         (setsid sh -c 'sleep 1000 & echo $! >> {pids}' &)\n\
         {cleared}\
         n={n}; while [ \"$(wc -l < {pids} 2>/dev/null || echo 0)\" -lt $n ]; do sleep 0.01; done\n\
         echo ready",
        n = if with_cleared_env { 3 } else { 2 }
    )
}

async fn nothing_outlives_an_attempt(cgroups: bool) -> Result<()> {
    let mut h = Harness::start_with(|c| {
        c.cgroups = cgroups;
        c.service.kill_grace = Duration::from_millis(300);
    })
    .await?;
    let cleared = cgroups && cgroups_here();
    // Finished: the task exits as soon as its daemons run.
    let finished_pids = h.path_str("finished-pids");
    h.dispatch(&sh("a-escape-finish", &escape_script(&finished_pids, cleared)))
        .await?;
    let f = h.finished("a-escape-finish").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let pids = read_pids(Path::new(&finished_pids))?;
    assert_eq!(pids.len(), if cleared { 3 } else { 2 });
    for pid in &pids {
        assert!(
            !is_alive(*pid),
            "process {pid} left its group and outlived its task"
        );
    }

    // Cancelled while running.
    let cancelled_pids = h.path_str("cancelled-pids");
    let d = sh(
        "a-escape-cancel",
        &format!("{}; sleep 1000", escape_script(&cancelled_pids, cleared)),
    );
    h.dispatch(&d).await?;
    h.expect_line("a-escape-cancel", "ready").await?;
    let pids = wait_pids(Path::new(&cancelled_pids), if cleared { 3 } else { 2 }).await?;
    if cleared {
        for pid in &pids {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
            assert!(
                cgroup.contains("/ferry-"),
                "process {pid} is not in a slot's cgroup: {cgroup}"
            );
        }
    }
    h.cancel(&d, "stop").await?;
    let f = h.finished("a-escape-cancel").await?;
    assert_eq!(f.outcome, Outcome::Cancelled, "{f:?}");
    for pid in &pids {
        assert!(
            !is_alive(*pid),
            "process {pid} left its group and outlived the cancel"
        );
    }
    h.stop().await
}

#[tokio::test]
async fn nothing_an_attempt_started_outlives_it_in_a_cgroup() -> Result<()> {
    nothing_outlives_an_attempt(true).await
}

#[tokio::test]
async fn nothing_an_attempt_started_outlives_it_without_cgroups() -> Result<()> {
    nothing_outlives_an_attempt(false).await
}

#[tokio::test]
async fn what_an_attempt_plants_in_its_slot_never_reaches_the_next() -> Result<()> {
    // One slot, so that every attempt runs in the same working directory.
    let mut h = Harness::start_with(|c| {
        c.service.max_parallel = 1;
        c.service.kill_grace = Duration::from_millis(300);
    })
    .await?;
    let outside = h.path("outside");
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("keep"), "precious")?;
    let o = outside.display();
    // Links to outside in the working directory and in place of the slot's stdout, and a
    // daemon that keeps writing into the working directory.
    h.dispatch(&sh(
        "a-plant",
        &format!(
            "ln -s {o}/target out.txt; ln -s {o} linked-dir; ln -sf {o}/keep ../stdout\n\
             setsid sh -c 'while :; do echo pwned > \"$FERRY_WORKING_DIR/pwn\"; sleep 0.01; done' > /dev/null 2>&1 &\n\
             sleep 0.1"
        ),
    ))
    .await?;
    assert_eq!(h.finished("a-plant").await?.outcome, Outcome::Succeeded);
    let mut d = sh(
        "a-next",
        "ls -A; echo mine > out.txt; sleep 0.3; ls -A; cat out.txt",
    );
    d.output_files = vec!["out.txt".into()];
    h.dispatch(&d).await?;
    let f = h.finished("a-next").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-next").await?);
    let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(
        texts,
        ["out.txt", "mine"],
        "the working directory was not the attempt's own"
    );
    assert_eq!(f.output_files.len(), 1);
    assert!(!outside.join("target").exists(), "a planted link was followed");
    assert_eq!(std::fs::read_to_string(outside.join("keep"))?, "precious");

    // The working directory itself replaced by a link: cleaning removes the link, not what it
    // points to, and the next attempt gets a directory of its own.
    h.dispatch(&sh("a-swap", &format!("cd ..; rm -rf work; ln -s {o} work")))
        .await?;
    h.finished("a-swap").await?;
    h.dispatch(&sh("a-after-swap", "ls -A; pwd -P")).await?;
    let f = h.finished("a-after-swap").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-after-swap").await?);
    let work = SlotDir::at(&h.data_dir.canonicalize()?, 0).work();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].2, work.display().to_string());
    assert_eq!(std::fs::read_to_string(outside.join("keep"))?, "precious");
    assert!(std::fs::symlink_metadata(&work)?.is_dir());
    h.stop().await
}

#[tokio::test]
async fn a_short_secret_or_a_readable_secrets_file_stops_the_launcher_at_start() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut config = Config::new(tmp.path().join("data"));
    config.service.secrets = Secrets::new();
    config.service.secrets.insert("PIN", "4711");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let err = run(config, bus.clone(), CancellationToken::new())
        .await
        .expect_err("a 4-byte secret was accepted")
        .to_string();
    assert!(
        err.contains("\"PIN\"") && err.contains("at least 8 bytes"),
        "{err}"
    );
    assert!(!err.contains("4711"), "{err}");

    let file = tmp.path().join("secrets.yaml");
    std::fs::write(&file, "TOKEN: a-long-enough-value\n")?;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let mut config = Config::new(tmp.path().join("data"));
    config.service.secrets = Secrets::new();
    config.service.secrets_file = Some(file.clone());
    let err = run(config, bus, CancellationToken::new())
        .await
        .expect_err("a world-readable secrets file was accepted")
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_secret_scoped_elsewhere_is_answered_like_an_unknown_one() -> Result<()> {
    let mut h = Harness::start_with(|c| {
        let scope = ferry_launcher_local::secrets::Scope {
            namespaces: Some(["finance".to_string()].into()),
            flows: None,
        };
        c.service
            .secrets
            .insert_scoped("SCOPED", "finance-only-value", scope);
        c.service.secrets.insert("OPEN", "open-to-all-value");
    })
    .await?;
    for (attempt, name) in [("a-scoped", "SCOPED"), ("a-unknown", "UNKNOWN")] {
        let mut d = task(attempt, &["echo"]);
        d.command.push(Template(vec![Part::Secret(name.into())]));
        h.dispatch(&d).await?;
    }
    let scoped = h.finished("a-scoped").await?;
    let unknown = h.finished("a-unknown").await?;
    assert_eq!(
        (scoped.outcome, unknown.outcome),
        (Outcome::Failed, Outcome::Failed)
    );
    let (scoped, unknown) = (
        scoped.error.unwrap_or_default(),
        unknown.error.unwrap_or_default(),
    );
    assert_eq!(
        scoped.replace("SCOPED", "NAME"),
        unknown.replace("UNKNOWN", "NAME")
    );
    assert!(
        !unknown.contains("OPEN") && !unknown.contains("SCOPED"),
        "{unknown}"
    );
    h.stop().await
}

/// A secret scoped to a namespace and a flow reaches the tasks of that flow in that namespace,
/// as the dispatch names them, and no other task: another namespace, another flow, the default
/// namespace, or a dispatch that does not say (an older scheduler's).
#[tokio::test]
async fn a_scoped_secret_reaches_the_tasks_of_its_namespace_and_flow_only() -> Result<()> {
    let mut h = Harness::start_with(|c| {
        let scope = ferry_launcher_local::secrets::Scope {
            namespaces: Some(["finance".to_string()].into()),
            flows: Some(["ledger".to_string()].into()),
        };
        c.service
            .secrets
            .insert_scoped("LEDGER", "ledger-db-password", scope);
        let default_only = ferry_launcher_local::secrets::Scope {
            namespaces: Some(["default".to_string()].into()),
            flows: None,
        };
        c.service
            .secrets
            .insert_scoped("PLAIN", "default-namespace-value", default_only);
    })
    .await?;
    /// A task asking for `secret`, of `flow` in `namespace`, and whether it gets it.
    struct Case {
        attempt: &'static str,
        secret: &'static str,
        flow: Option<&'static str>,
        namespace: Option<&'static str>,
        admitted: bool,
    }
    let case = |attempt, secret, flow, namespace, admitted| Case {
        attempt,
        secret,
        flow,
        namespace,
        admitted,
    };
    let cases = [
        case("s-own", "LEDGER", Some("ledger"), Some("finance"), true),
        case("s-other-ns", "LEDGER", Some("ledger"), Some("sales"), false),
        case("s-other-flow", "LEDGER", Some("payroll"), Some("finance"), false),
        case("s-unsaid", "LEDGER", None, Some("finance"), false),
        case("s-default", "PLAIN", Some("any"), None, true),
        case("s-default-unsaid", "PLAIN", None, None, false),
    ];
    for c in &cases {
        let mut d = task(c.attempt, &["echo"]);
        d.command.push(Template(vec![Part::Secret(c.secret.into())]));
        d.flow_id = c.flow.map(str::to_string);
        d.namespace = c.namespace.map(str::to_string);
        h.dispatch(&d).await?;
    }
    for c in &cases {
        let f = h.finished(c.attempt).await?;
        let want = if c.admitted {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        assert_eq!(f.outcome, want, "{}: {:?}", c.attempt, f.error);
    }
    h.stop().await
}

#[tokio::test]
async fn files_the_launcher_creates_are_private_whatever_the_umask() -> Result<()> {
    use nix::sys::stat::{Mode, umask};
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| -> Result<u32> {
        Ok(std::fs::symlink_metadata(p)
            .with_context(|| p.display().to_string())?
            .permissions()
            .mode()
            & 0o777)
    };
    let artifacts = tempfile::tempdir()?;
    let artifact_dir = artifacts.path().join("store");
    let tmp = tempfile::tempdir()?;
    let old = umask(Mode::empty());
    let started = Harness::start_in(
        tmp,
        |data| Ok(std::fs::remove_dir(data)?),
        |c| c.service.artifact_dir = Some(artifact_dir.clone()),
    )
    .await;
    let mut h = match started {
        Ok(h) => h,
        Err(e) => {
            umask(old);
            return Err(e);
        }
    };
    let mut d = sh("a-modes", "stat -c %a . a a/b.txt; echo x > out.txt");
    d.input_files.insert("a/b.txt".into(), text("in"));
    d.output_files = vec!["out.txt".into()];
    h.dispatch(&d).await?;
    let f = h.finished("a-modes").await;
    umask(old);
    let f = f?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let lines = all_lines(&h.log_batches("a-modes").await?);
    let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(texts, ["700", "700", "600"]);
    let slot = SlotDir::at(&h.data_dir, 0);
    assert_eq!(mode(&h.data_dir)?, 0o700);
    assert_eq!(mode(&h.data_dir.join("journal"))?, 0o600);
    assert_eq!(mode(&h.data_dir.join("slots"))?, 0o700);
    assert_eq!(mode(slot.root())?, 0o700);
    assert_eq!(mode(&slot.stdout())?, 0o600);
    let stored = artifact_dir.join("job-1/task-a-modes/a-modes");
    assert_eq!(mode(&artifact_dir)?, 0o700);
    assert_eq!(mode(&stored)?, 0o700);
    assert_eq!(mode(&stored.join("out.txt"))?, 0o600);
    h.stop().await
}

#[tokio::test]
async fn tasks_run_as_another_user_own_their_files_and_cannot_read_the_launcher() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: only root can run tasks as another user");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let mut h = Harness::start_in(tmp, |_| Ok(()), |c| c.run_as = Some("nobody".into())).await?;
    let mut d = sh(
        "a-nobody",
        r#"id -u; cat in/put.txt; echo "$USER|$HOME"; echo made > out.txt
cat /proc/$PPID/environ > /dev/null 2>&1 && echo launcher-readable || echo launcher-unreadable
cat ../stdout > /dev/null 2>&1 && echo slot-readable || echo slot-unreadable
printf '{"ok": true}' > "$FERRY_OUTPUTS""#,
    );
    d.input_files.insert("in/put.txt".into(), text("given\n"));
    d.output_files = vec!["out.txt".into()];
    h.dispatch(&d).await?;
    let f = h.finished("a-nobody").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(f.outputs["ok"], true);
    assert_eq!(f.output_files.len(), 1);
    let lines = all_lines(&h.log_batches("a-nobody").await?);
    let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    let nobody = nix::unistd::User::from_name("nobody")?.context("no user nobody")?;
    assert_eq!(
        texts,
        [
            nobody.uid.to_string().as_str(),
            "given",
            &format!("nobody|{}", nobody.dir.display()),
            "launcher-unreadable",
            "slot-unreadable"
        ]
    );
    // A task that wrote no outputs leaves the file made for it empty: no outputs.
    h.dispatch(&task("a-nobody-quiet", &["true"])).await?;
    let f = h.finished("a-nobody-quiet").await?;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert!(f.outputs.is_empty());
    h.stop().await
}

#[tokio::test]
async fn run_as_refuses_a_data_directory_its_user_cannot_reach() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: only root can run tasks as another user");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut config = Config::new(tmp.path().join("data"));
    config.service.secrets = Secrets::new();
    config.run_as = Some("nobody".into());
    let err = run(config, Arc::new(MemoryBus::new()), CancellationToken::new())
        .await
        .expect_err("an unreachable data directory was accepted")
        .to_string();
    assert!(err.contains("chmod o+x"), "{err}");
    Ok(())
}
