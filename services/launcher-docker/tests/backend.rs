//! The docker launcher end to end, for what only Docker has: the service as `ferry service
//! launcher --backend docker` runs it ([`run`] and its [`Config`]) driving the `docker` backend
//! on the in-memory bus, against the private Docker engine the test scripts start
//! (`DOCKER_HOST`). What every backend must do (lifecycle, logs, exits, files, secrets,
//! timeouts, cancels, crashes, adoption, shutdown) is the conformance suite's
//! (tests/conformance.rs), not repeated here.
//!
//! Each test runs its own launcher on a data directory of its own, so its containers carry a
//! launcher label no other test uses; [`Harness::owned`] lists them.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{
    ImageRunner, Outcome, PullPolicy, Runner, Stream, TaskCancel, TaskDispatched, TaskFinished, TaskLog,
};
use ferry_event::template::Template;
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, envelope, kind};
use ferry_launcher::Secrets;
use ferry_launcher_docker::{Config, Engine, run};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound on waiting for any one event.
const WAIT: Duration = Duration::from_secs(60);
const GROUP: &str = "launcher-docker";

struct Harness {
    bus: MemoryBus,
    _tmp: tempfile::TempDir,
    data_dir: PathBuf,
    engine: Engine,
    control: Subscription,
    logs: Subscription,
    /// Control events seen so far: (type, attempt id, event).
    seen: Vec<(String, String, Event)>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<ferry_launcher::Result<()>>>,
    events: EventBuilder,
}

impl Harness {
    async fn start() -> Result<Harness> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let bus = MemoryBus::new();
        let control = bus
            .subscribe(Subscribe::new("observer-control", [Topic::Control]))
            .await?;
        let logs = bus
            .subscribe(Subscribe::new("observer-logs", [Topic::Logs]))
            .await?;
        // The launcher's queue collects dispatches from now on, like a durable broker queue.
        drop(
            bus.subscribe(Subscribe::new(GROUP, [Topic::Dispatch("docker".into())]))
                .await?,
        );
        let mut h = Harness {
            bus,
            _tmp: tmp,
            data_dir,
            engine: common::engine().await,
            control,
            logs,
            seen: Vec::new(),
            shutdown: CancellationToken::new(),
            handle: None,
            events: EventBuilder::new("ferry/scheduler/test"),
        };
        h.launch().await?;
        Ok(h)
    }

    /// Starts a launcher on the harness's data directory.
    async fn launch(&mut self) -> Result<()> {
        let mut config = Config::new(&self.data_dir);
        config.service.secrets = Secrets::new();
        config.service.secrets_file = None;
        config.service.kill_grace = Duration::from_secs(1);
        config.service.source = "ferry/launcher-docker/test".into();
        config.service.group = GROUP.into();
        self.shutdown = CancellationToken::new();
        let before = self.bus.groups_on(&Topic::Cancel("docker".into()));
        self.handle = Some(tokio::spawn(run(
            config,
            Arc::new(self.bus.clone()),
            self.shutdown.clone(),
        )));
        // Cancels reach only instances already listening: wait until this one is.
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.bus.groups_on(&Topic::Cancel("docker".into())) <= before {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the launcher did not subscribe to cancels"
            );
            if let Some(h) = &self.handle
                && h.is_finished()
            {
                let r = self.handle.take().context("handle")?.await?;
                anyhow::bail!("the launcher stopped at once: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Stops the launcher the orderly way and waits for it.
    async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h).await???;
        }
        Ok(())
    }

    /// The containers this harness's launcher owns on the engine.
    async fn owned(&self) -> Result<Vec<ferry_launcher_docker::Owned>> {
        let id = std::fs::read_to_string(self.data_dir.join("docker-launcher-id"))?;
        Ok(self.engine.list_owned(id.trim()).await?)
    }

    async fn dispatch(&self, d: &TaskDispatched) -> Result<()> {
        let e = self.events.dispatch(
            kind::TASK_DISPATCHED,
            &d.job_id,
            &d.task_id,
            &d.attempt_id,
            "docker",
            d,
        );
        Ok(self.bus.publish(&[e]).await?)
    }

    async fn cancel(&self, d: &TaskDispatched) -> Result<()> {
        let c = TaskCancel {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            reason: Some("test".into()),
        };
        let e = self.events.dispatch(
            kind::TASK_CANCEL,
            &d.job_id,
            &d.task_id,
            &d.attempt_id,
            "docker",
            &c,
        );
        Ok(self.bus.publish(&[e]).await?)
    }

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

    async fn expect(&mut self, ty: &str, attempt: &str) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((_, _, e)) = self.seen.iter().find(|(t, a, _)| t == ty && a == attempt) {
                return Ok(e.clone());
            }
            tokio::time::timeout_at(deadline, self.next_control())
                .await
                .with_context(|| format!("no {ty} of {attempt}; seen: {:?}", self.seen_types()))??;
        }
    }

    async fn finished(&mut self, attempt: &str) -> Result<TaskFinished> {
        Ok(ferry_event::decode(
            &self.expect(kind::TASK_FINISHED, attempt).await?,
        )?)
    }

    fn types_of(&self, attempt: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, a, _)| a == attempt)
            .map(|(t, _, _)| t.clone())
            .collect()
    }

    fn seen_types(&self) -> Vec<(String, String)> {
        self.seen.iter().map(|(t, a, _)| (t.clone(), a.clone())).collect()
    }

    /// Every line published for `attempt` so far, in order of number; fails on a gap, or on a
    /// number published again with other content (after a crash the runtime publishes the lines
    /// it may not have published again, under the same numbers: the log store keeps one).
    async fn lines(&mut self, attempt: &str) -> Result<Vec<(Stream, String)>> {
        let mut by_seq = BTreeMap::new();
        while let Some(d) = self.logs.try_next() {
            let log: TaskLog = ferry_event::decode(&d.event)?;
            d.ack().await?;
            if log.attempt_id != attempt {
                continue;
            }
            for (i, l) in log.lines.into_iter().enumerate() {
                let seq = log.seq + i as u64;
                let line = (l.stream, l.text);
                if let Some(before) = by_seq.insert(seq, line.clone()) {
                    ensure!(
                        before == line,
                        "line {seq} published as {before:?} and as {line:?}"
                    );
                }
            }
        }
        for (want, got) in by_seq.keys().enumerate() {
            ensure!(*got == want as u64, "line {want} is missing: {:?}", by_seq.keys());
        }
        Ok(by_seq.into_values().collect())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
        // Whatever a failed test left behind.
        if let Ok(id) = std::fs::read_to_string(self.data_dir.join("docker-launcher-id")) {
            let id = id.trim().to_string();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    // A client of this runtime: the test's keeps its idle connections on the
                    // test's runtime, which waits for this thread.
                    let Ok(engine) = Engine::connect().await else {
                        return;
                    };
                    for c in engine.list_owned(&id).await.unwrap_or_default() {
                        let _ = engine.remove(&c.name).await;
                    }
                });
                Ok::<_, std::io::Error>(())
            })
            .join();
        }
    }
}

fn text(s: &str) -> Template {
    Template::text(s)
}

/// A dispatch of `sh -c SCRIPT` in the test image, never pulled.
fn task(script: &str) -> TaskDispatched {
    let mut runner = ImageRunner::new(common::image());
    runner.pull_policy = Some(PullPolicy::Never);
    runner.network = Some("none".into());
    let attempt_id = ferry_event::new_id();
    // The first attempt of a task of its own (a launcher runs one attempt of a task at a time).
    TaskDispatched {
        job_id: "job-1".into(),
        task_id: format!("task-{attempt_id}"),
        attempt_id,
        attempt: 1,
        runner: Runner::Docker(runner),
        command: vec![text("sh"), text("-c"), text(script)],
        env: BTreeMap::new(),
        input_files: BTreeMap::new(),
        output_files: Vec::new(),
        resources: Default::default(),
        timeout_ms: None,
        lease_ms: 30_000,
        ready_at_ms: 1_700_000_000_000,
        flow_id: Some("nightly".into()),
        namespace: Some("team-a".into()),
        priority: 0,
    }
}

fn texts(lines: &[(Stream, String)]) -> Vec<&str> {
    lines.iter().map(|(_, t)| t.as_str()).collect()
}

#[tokio::test]
async fn the_working_directory_is_ferrys_own_unless_the_runner_names_one() -> Result<()> {
    let mut h = Harness::start().await?;
    let mut ours = task(r#"echo "$PWD"; cat in.txt; echo data > result.csv"#);
    ours.input_files.insert("in.txt".into(), text("an input\n"));
    ours.output_files.push("*.csv".into());
    let mut named = ours.clone();
    named.attempt_id = ferry_event::new_id();
    if let Runner::Docker(r) = &mut named.runner {
        r.working_dir = Some("/srv/task".into());
    }
    // One after the other: `lines` reads past the lines of other attempts.
    for (d, dir) in [(&ours, "/ferry"), (&named, "/srv/task")] {
        h.dispatch(d).await?;
        let f = h.finished(&d.attempt_id).await?;
        assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
        assert_eq!(texts(&h.lines(&d.attempt_id).await?), [dir, "an input"]);
        assert_eq!(f.output_files.len(), 1, "{f:?}");
        let stored = url::Url::parse(&f.output_files[0].uri)?
            .to_file_path()
            .map_err(|()| anyhow::anyhow!("not a file URI: {}", f.output_files[0].uri))?;
        assert!(
            stored.starts_with(h.data_dir.join("artifacts")),
            "output files go to the artifact directory: {}",
            stored.display()
        );
        assert_eq!(std::fs::read_to_string(stored)?, "data\n");
    }
    assert!(h.owned().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn labels_name_the_flow_namespace_and_attempt() -> Result<()> {
    let mut h = Harness::start().await?;
    let d = task("sleep 30");
    h.dispatch(&d).await?;
    h.expect(kind::TASK_STARTED, &d.attempt_id).await?;
    let owned = h.owned().await?;
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].attempt.attempt_id, d.attempt_id);
    assert_eq!(owned[0].name, format!("ferry-{}", d.attempt_id));
    let status = h.engine.inspect(&owned[0].name).await?;
    assert_eq!(status.attempt.as_ref().map(|a| a.job_id.as_str()), Some("job-1"));
    let labels = labels_of(&owned[0].name).await?;
    assert_eq!(labels.get("dev.ferry.flow").map(String::as_str), Some("nightly"));
    assert_eq!(
        labels.get("dev.ferry.namespace").map(String::as_str),
        Some("team-a")
    );
    h.cancel(&d).await?;
    let f = h.finished(&d.attempt_id).await?;
    assert_eq!(f.outcome, Outcome::Cancelled, "{f:?}");
    assert!(
        h.owned().await?.is_empty(),
        "a cancelled attempt leaves no container"
    );
    Ok(())
}

/// The labels of a container, read with the docker client the test scripts install.
async fn labels_of(name: &str) -> Result<BTreeMap<String, String>> {
    let out = tokio::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Labels}}", name])
        .output()
        .await
        .context("running docker inspect")?;
    ensure!(
        out.status.success(),
        "docker inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test]
async fn an_oom_kill_is_failed_with_the_platforms_reason() -> Result<()> {
    let mut h = Harness::start().await?;
    let mut oom = task("x=0123456789; while true; do x=$x$x; done");
    oom.resources.memory = Some("16Mi".into());
    h.dispatch(&oom).await?;
    let f = h.finished(&oom.attempt_id).await?;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert_eq!(f.exit_code, Some(137));
    assert_eq!(f.reason.as_deref(), Some("OOMKilled"), "{f:?}");
    assert!(f.error.as_deref().unwrap_or("").starts_with("OOMKilled"), "{f:?}");
    assert!(h.owned().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_image_missing_under_pull_never_fails_naming_it_and_creates_nothing() -> Result<()> {
    let mut h = Harness::start().await?;
    let mut missing = task("true");
    if let Runner::Docker(r) = &mut missing.runner {
        r.image = "ferry-test/not-there:1".into();
    }
    h.dispatch(&missing).await?;
    let f = h.finished(&missing.attempt_id).await?;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert!(
        f.error
            .as_deref()
            .unwrap_or("")
            .contains("ferry-test/not-there:1"),
        "{f:?}"
    );
    assert_eq!(h.types_of(&missing.attempt_id), [kind::TASK_FINISHED]);
    assert!(h.owned().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_container_the_journal_does_not_know_is_stopped_and_removed_on_start() -> Result<()> {
    let mut h = Harness::start().await?;
    h.stop().await?;
    // What a launcher killed between creating a container and journaling it leaves behind.
    let id = std::fs::read_to_string(h.data_dir.join("docker-launcher-id"))?;
    let scope = common::Scope {
        engine: h.engine.clone(),
        launcher: id.trim().to_string(),
    };
    let spec = scope.spec(&["sleep", "60"]);
    scope.run(&spec).await;
    assert_eq!(h.owned().await?.len(), 1);
    h.launch().await?;
    // Reconciling ends before the launcher subscribes, which `launch` waited for.
    assert!(h.owned().await?.is_empty(), "the unknown container is removed");
    Ok(())
}
