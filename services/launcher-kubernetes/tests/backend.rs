//! The kubernetes backend beyond the conformance suite: outputs through the termination message,
//! output files through the stage container, pods stuck Pending, OOM kills, and the API
//! requests an attempt costs.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_event::payload::{Outcome, OutputFile, Runner, TaskDispatched};
use ferry_event::template::Template;
use ferry_launcher::Secrets;
use ferry_launcher::backend::Task;
use ferry_launcher::conformance::{Harness, Program, Step, Target};
use ferry_launcher::journal::{Entry, Journal, RunningRecord};

fn p(steps: impl IntoIterator<Item = Step>) -> Program {
    Program::new(steps)
}

/// A harness on a fresh test API server, and the server.
async fn harness(test: &str) -> Option<(Harness, Arc<common::Kube>)> {
    if !common::docker_given(test) {
        return None;
    }
    let kube = Arc::new(common::Kube::new().await);
    let h = Harness::new(kube.clone() as Arc<dyn Target>).await;
    Some((h, kube))
}

/// A task running `script` with `sh -c`, collecting `patterns`.
fn script(h: &Harness, id: &str, script: &str, patterns: &[&str]) -> TaskDispatched {
    let mut d = h.task(id, &p([]));
    d.command = ["sh", "-c", script].map(Template::text).to_vec();
    d.output_files = patterns.iter().map(|p| p.to_string()).collect();
    d
}

/// Where an output file is stored, from its `file://` URI.
fn stored(f: &OutputFile) -> PathBuf {
    url::Url::parse(&f.uri)
        .expect("a URI")
        .to_file_path()
        .expect("a file:// URI")
}

fn kubernetes(runner: &mut Runner) -> &mut ferry_event::payload::KubernetesRunner {
    match runner {
        Runner::Kubernetes(r) => r,
        other => panic!("not a kubernetes runner: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_come_back_as_the_termination_message_and_too_large_ones_fail() {
    let Some((mut h, _kube)) = harness("outputs").await else {
        return;
    };
    let launcher = h.start().await;
    let id = h.id("outputs");
    h.dispatch(&h.task(&id, &p([Step::Outputs(r#"{"rows": 3}"#.into())])))
        .await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(f.outputs["rows"], 3, "{f:?}");

    let big = h.id("big-outputs");
    let value = "x".repeat(5000);
    h.dispatch(&h.task(&big, &p([Step::Outputs(format!(r#"{{"v": "{value}"}}"#))])))
        .await;
    let f = h.finished(&big).await;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert!(
        f.error.as_deref().is_some_and(|e| e.contains("FERRY_OUTPUTS")),
        "{f:?}"
    );

    h.assert_nothing_left("after outputs").await;
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_stuck_pending_end_after_the_pending_deadline_naming_why() {
    let Some((mut h, _kube)) = harness("pending").await else {
        return;
    };
    let launcher = h.start().await;
    // An image that is not there: the task's fault.
    let image = h.id("no-image");
    let mut d = h.task(&image, &p([Step::Out("ran".into())]));
    let r = kubernetes(&mut d.runner);
    r.image = "ferry-test/absent:1".into();
    r.pending_deadline_seconds = Some(1);
    h.dispatch(&d).await;
    // No node with that label: the platform's.
    let unschedulable = h.id("no-node");
    let mut d = h.task(&unschedulable, &p([Step::Out("ran".into())]));
    let r = kubernetes(&mut d.runner);
    r.node_selector = [("pool".to_string(), "gpu".to_string())].into();
    r.pending_deadline_seconds = Some(1);
    h.dispatch(&d).await;

    let f = h.finished(&image).await;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert_eq!(f.reason.as_deref(), Some("ImagePullFailed"), "{f:?}");
    assert!(
        f.error
            .as_deref()
            .is_some_and(|e| e.contains("ErrImageNeverPull")),
        "{f:?}"
    );
    let f = h.finished(&unschedulable).await;
    assert_eq!(f.outcome, Outcome::Lost, "{f:?}");
    assert!(
        f.error.as_deref().is_some_and(|e| e.contains("Unschedulable")),
        "{f:?}"
    );
    assert!(h.texts(&image).await.is_empty());
    h.assert_nothing_left("after pods stuck pending").await;
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_reported_as_such() {
    let Some((mut h, _kube)) = harness("oom").await else {
        return;
    };
    let launcher = h.start().await;
    let id = h.id("oom");
    let mut d = h.task(&id, &p([]));
    d.command = [
        "sh",
        "-c",
        // The shell outlives the kill a moment, so the engine's OOM event has the time to
        // arrive before the container's exit.
        "echo filling; head -c 64m /dev/zero | tail > /dev/null; s=$?; sleep 1; exit $s",
    ]
    .map(Template::text)
    .to_vec();
    d.resources.memory = Some("8Mi".into());
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert_eq!(f.reason.as_deref(), Some("OOMKilled"), "{f:?}");
    assert_eq!(f.exit_code, Some(137), "{f:?}");
    // The shell may say "Killed" of the pipeline after it.
    assert_eq!(h.texts(&id).await.first().map(String::as_str), Some("filling"));
    h.assert_nothing_left("after an OOM kill").await;
    launcher.stop().await;
}

/// What `n` attempts cost the API: printed as a table (BENCHMARKS.md has the figures), and held
/// to what the design says — four writes an attempt (Job, Secret, the exec of `tar` that takes
/// out `$FERRY_SUBTASKS`, delete), one watch for the launcher, and no polling: reads grow with
/// attempts only by the look before create, a read of the Job while the watch has yet to bring
/// its pod, and the log stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_per_attempt() {
    let Some((mut h, kube)) = harness("requests").await else {
        return;
    };
    let n: usize = std::env::var("FERRY_KUBE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    h.max_parallel = 16;
    kube.server.reset_counts();
    let launcher = h.start().await;
    let ids: Vec<String> = (0..n).map(|i| h.id(&format!("req-{i}"))).collect();
    for id in &ids {
        let mut d = h.task(id, &p([Step::Out("hello".into()), Step::Sleep(200)]));
        d.env.insert("GREETING".into(), Template::text("hi"));
        h.dispatch(&d).await;
    }
    for id in &ids {
        assert_eq!(h.finished(id).await.outcome, Outcome::Succeeded);
    }
    h.assert_nothing_left("after the attempts").await;
    let counts = kube.server.counts();
    launcher.stop().await;
    let total = |verbs: &[&str]| -> u64 {
        counts
            .iter()
            .filter(|((v, _), _)| verbs.contains(&v.as_str()))
            .map(|(_, c)| c)
            .sum()
    };
    println!("API requests for {n} attempts (kubernetes backend, test API server):");
    println!(
        "{:<8} {:<10} {:>8} {:>10}",
        "verb", "resource", "count", "per task"
    );
    for ((verb, resource), count) in &counts {
        println!(
            "{verb:<8} {resource:<10} {count:>8} {:>10.2}",
            *count as f64 / n as f64
        );
    }
    let writes = total(&["create", "delete", "update", "patch"]);
    println!("writes per task: {:.2}", writes as f64 / n as f64);
    assert_eq!(writes, 4 * n as u64, "{counts:?}");
    assert_eq!(
        counts.get(&("create".to_string(), "pods/exec".to_string())),
        Some(&(n as u64)),
        "{counts:?}"
    );
    let watches = total(&["watch"]);
    assert_eq!(watches, 1, "one watch for the launcher: {counts:?}");
    let gets = counts
        .get(&("get".to_string(), "jobs".to_string()))
        .copied()
        .unwrap_or(0);
    // The look before create, and a read of the Job while the watch has yet to bring its pod
    // (the watch lags on a loaded machine: 41 for 20 attempts was seen); polling would read
    // each Job many times over its life.
    assert!(gets <= 3 * n as u64, "the Jobs were polled: {counts:?}");
    let pods = counts
        .get(&("get".to_string(), "pods".to_string()))
        .copied()
        .unwrap_or(0);
    assert_eq!(pods, 0, "pods were polled: {counts:?}");
}

/// Files a Secret (1 MiB) or a termination message (4 KiB) could never carry come back whole,
/// in subdirectories too; a task whose patterns match nothing succeeds with no files; and the
/// task's image needs nothing for it (the busybox image here has `tar`, but the task container
/// is never asked to run it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_files_larger_than_a_secret_come_back_and_none_is_no_error() {
    let Some((mut h, kube)) = harness("output-files").await else {
        return;
    };
    let launcher = h.start().await;
    let id = h.id("big-files");
    let d = script(
        &h,
        &id,
        "mkdir -p out/deep && yes ferry | head -c 2097152 > out/big.bin && printf '{\"n\": 1}' > $FERRY_OUTPUTS \
         && printf small > out/deep/s.txt && printf no > skipped.log",
        &["out/*.bin", "out/**/*.txt"],
    );
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(f.outputs["n"], 1, "{f:?}");
    let files: Vec<(&str, u64)> = f.output_files.iter().map(|o| (o.path.as_str(), o.size)).collect();
    assert_eq!(files, [("out/big.bin", 2097152), ("out/deep/s.txt", 5)], "{f:?}");
    let big = std::fs::read(stored(&f.output_files[0])).unwrap();
    assert_eq!(big.len(), 2097152);
    assert!(
        big.chunks(6).all(|c| b"ferry\n".starts_with(c)),
        "the bytes changed on the way"
    );
    assert_eq!(std::fs::read(stored(&f.output_files[1])).unwrap(), b"small");

    let none = h.id("no-files");
    h.dispatch(&script(&h, &none, "echo nothing to keep", &["*.csv"]))
        .await;
    let f = h.finished(&none).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert!(f.output_files.is_empty(), "{f:?}");
    assert_eq!(h.texts(&none).await, ["nothing to keep"]);
    h.assert_nothing_left("after output files").await;
    launcher.stop().await;
    drop(kube);
}

/// Names a shell would split or a command line would take for options, a name longer than a
/// tar header holds, links out of the working directory and a named pipe: the names come back
/// as they are, the links are not followed, the pipe is not opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_in_the_pod_come_back_as_they_are_and_links_are_not_followed() {
    let Some((mut h, _kube)) = harness("hostile-names").await else {
        return;
    };
    let launcher = h.start().await;
    let id = h.id("hostile");
    let d = script(
        &h,
        &id,
        "printf a > 'a b.txt'; printf b > \"$(printf 'new\\nline.txt')\"; printf c > ./-rf.txt; \
         printf d > '$(reboot).txt'; ln -s /etc/passwd link.txt; ln -s .. up.txt; mkfifo pipe.txt; \
         printf e > \"$(printf 'l%.0s' $(seq 200)).txt\"",
        &["*.txt"],
    );
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let mut got: Vec<(String, Vec<u8>)> = f
        .output_files
        .iter()
        .map(|o| (o.path.clone(), std::fs::read(stored(o)).unwrap()))
        .collect();
    got.sort();
    let long = format!("{}.txt", "l".repeat(200));
    let want: Vec<(String, Vec<u8>)> = [
        ("$(reboot).txt", "d"),
        ("-rf.txt", "c"),
        ("a b.txt", "a"),
        (long.as_str(), "e"),
        ("new\nline.txt", "b"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
    .collect();
    assert_eq!(got, want, "{f:?}");
    h.assert_nothing_left("after hostile names").await;
    launcher.stop().await;
}

/// A stage image without `tar`: the attempt is lost (the launcher's setup, not the task, is at
/// fault), and the error names the image and what it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_image_without_tar_loses_the_attempt_naming_the_image() {
    let Some((mut h, kube)) = harness("no-tar").await else {
        return;
    };
    let image = kube.image_without("tar").await;
    kube.set_stage_image(&image);
    let launcher = h.start().await;
    let id = h.id("no-tar");
    h.dispatch(&script(&h, &id, "printf x > r.txt", &["*.txt"])).await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Lost, "{f:?}");
    let e = f.error.clone().unwrap_or_default();
    assert!(e.contains(&image) && e.contains("tar"), "{e}");
    assert!(f.output_files.is_empty(), "{f:?}");
    h.assert_nothing_left("after a stage image without tar").await;
    launcher.stop().await;
}

/// A launcher killed while the task runs, started again after the task has ended: the pod has
/// held the files meanwhile, and the new launcher collects them; what the task printed while
/// no launcher ran is read to the end before the Job goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_files_of_a_task_that_ended_while_the_launcher_was_down_come_back() {
    let Some((mut h, kube)) = harness("adopted-files").await else {
        return;
    };
    let launcher = h.start().await;
    let id = h.id("adopted-files");
    let d = script(
        &h,
        &id,
        "echo started; sleep 1; printf kept > r.txt; echo while-down; echo last",
        &["*.txt"],
    );
    h.dispatch(&d).await;
    h.wait_for_lines(&id, 1).await;
    launcher.crash();
    assert!(
        kube.wait_task_ended(&id, Duration::from_secs(30)).await,
        "the task container did not end"
    );
    let launcher = h.start().await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(f.output_files.len(), 1, "{f:?}");
    assert_eq!(std::fs::read(stored(&f.output_files[0])).unwrap(), b"kept");
    assert_eq!(h.texts(&id).await, ["started", "while-down", "last"]);
    h.assert_nothing_left("after an adopted attempt with files").await;
    launcher.stop().await;
}

/// A launcher killed while it created Jobs (the journal names the reservations, not the Jobs
/// yet) on a node slow to start containers: the next start stops the attempts and reports them
/// lost. Their containers, already being started, run all the same (a delete does not stop a
/// start under way); what they print is kept, and only then are the Jobs removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_starting_as_their_attempts_are_stopped_keep_their_lines() {
    if !common::docker_given("slow-start") {
        return;
    }
    let options = ferry_kube_test_server::Options {
        start_delay: Duration::from_secs(4),
        ..Default::default()
    };
    let kube = Arc::new(common::Kube::with(options).await);
    let mut h = Harness::new(kube.clone() as Arc<dyn Target>).await;
    h.max_parallel = 8;
    let ids: Vec<String> = (0..8).map(|i| h.id(&format!("slow-start-{i}"))).collect();
    {
        // The killed run, step by step as the runtime takes them, up to the creates.
        let journal = Journal::open(&h.data_dir).expect("the journal");
        let backend = kube.backend(&h.data_dir, &journal).await;
        let secrets = Secrets::new();
        for id in &ids {
            let d = script(&h, id, "echo one; echo two; echo three", &[]);
            let task = Task::new(&d, &secrets);
            let reserved = backend.reserve(task).await.expect("reserve");
            let record = RunningRecord::reserved(&d, reserved.clone(), 0);
            journal.record(id, Entry::Running(record)).expect("journal");
            backend.create(task, reserved).await.expect("create");
        }
    }
    let launcher = h.start().await;
    for id in &ids {
        let f = h.finished(id).await;
        assert_eq!(f.outcome, Outcome::Lost, "{f:?}");
        assert_eq!(h.texts(id).await, ["one", "two", "three"], "{id}: {f:?}");
        assert_eq!(f.log_lines, 3, "{f:?}");
    }
    h.assert_nothing_left("after stopping containers as they started")
        .await;
    launcher.stop().await;
}

/// What one attempt with output files costs the API: one exec more than an attempt without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_per_attempt_with_output_files() {
    let Some((mut h, kube)) = harness("requests-files").await else {
        return;
    };
    let n: usize = std::env::var("FERRY_KUBE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    h.max_parallel = 16;
    kube.server.reset_counts();
    let launcher = h.start().await;
    let ids: Vec<String> = (0..n).map(|i| h.id(&format!("reqf-{i}"))).collect();
    for id in &ids {
        let mut d = script(&h, id, "echo hello; printf r > r.txt", &["*.txt"]);
        d.env.insert("GREETING".into(), Template::text("hi"));
        h.dispatch(&d).await;
    }
    for id in &ids {
        let f = h.finished(id).await;
        assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
        assert_eq!(f.output_files.len(), 1, "{f:?}");
    }
    h.assert_nothing_left("after the attempts").await;
    let counts = kube.server.counts();
    launcher.stop().await;
    println!("API requests for {n} attempts with output files:");
    for ((verb, resource), count) in &counts {
        println!(
            "{verb:<8} {resource:<10} {count:>8} {:>10.2}",
            *count as f64 / n as f64
        );
    }
    let writes: u64 = counts
        .iter()
        .filter(|((v, _), _)| ["create", "delete", "update", "patch"].contains(&v.as_str()))
        .map(|(_, c)| c)
        .sum();
    println!("writes per task: {:.2}", writes as f64 / n as f64);
    // Job, Secret, the execs of `tar` (subtasks, output files), the delete.
    assert_eq!(writes, 5 * n as u64, "{counts:?}");
    assert_eq!(
        counts.get(&("create".to_string(), "pods/exec".to_string())),
        Some(&(2 * n as u64)),
        "{counts:?}"
    );
}

/// `--kube-no-subtasks`: a pod of one container, no `$FERRY_SUBTASKS`, no exec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_subtasks_a_pod_has_no_stage_container_and_no_exec() {
    let Some((mut h, kube)) = harness("no-subtasks").await else {
        return;
    };
    kube.set_subtasks(false);
    kube.server.reset_counts();
    let launcher = h.start().await;
    let id = h.id("no-subtasks");
    h.dispatch(&script(&h, &id, r#"echo "[${FERRY_SUBTASKS:-unset}]""#, &[]))
        .await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let texts = h.texts(&id).await;
    assert!(texts.iter().any(|t| t == "[unset]"), "{texts:?}");
    let counts = kube.server.counts();
    assert_eq!(
        counts.get(&("create".to_string(), "pods/exec".to_string())),
        None,
        "{counts:?}"
    );
    h.assert_nothing_left("after the attempt").await;
    launcher.stop().await;
}

/// What the task leaves at `$FERRY_SUBTASKS` is taken as a file and nothing else: a link (to a
/// file of the stage container's own), a pipe that would hold a reader for ever, a directory and
/// a file over 4 MiB each fail the attempt, saying what was there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtasks_that_are_not_a_small_regular_file_fail_the_attempt() {
    let Some((mut h, _kube)) = harness("hostile-subtasks").await else {
        return;
    };
    let launcher = h.start().await;
    let cases = [
        (
            "link",
            r#"ln -s /etc/passwd "$FERRY_SUBTASKS""#,
            "a symbolic link",
        ),
        ("pipe", r#"mkfifo "$FERRY_SUBTASKS""#, "a named pipe"),
        ("dir", r#"mkdir "$FERRY_SUBTASKS""#, "a directory"),
        (
            "large",
            r#"head -c 4194305 /dev/zero | tr '\0' ' ' > "$FERRY_SUBTASKS""#,
            "larger than",
        ),
    ];
    let mut ids = Vec::new();
    for (name, command, _) in &cases {
        let id = h.id(&format!("subtasks-{name}"));
        h.dispatch(&script(&h, &id, command, &[])).await;
        ids.push(id);
    }
    for (id, (name, _, says)) in ids.iter().zip(&cases) {
        let f = h.finished(id).await;
        assert_eq!(f.outcome, Outcome::Failed, "{name}: {f:?}");
        let error = f.error.clone().unwrap_or_default();
        assert!(
            error.contains("FERRY_SUBTASKS") && error.contains(says),
            "{name}: {error}"
        );
    }
    h.assert_nothing_left("after the attempts").await;
    launcher.stop().await;
}

/// Jobs of this launcher in any namespace its attempts used are listed as its own (so that a
/// restart stops one the journal does not know), and only those: not another launcher's, not
/// one in a namespace none of its attempts used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_jobs_are_listed_in_every_namespace_attempts_used() {
    use ferry_launcher::Backend;
    use ferry_launcher::backend::Compute;
    use ferry_launcher_kubernetes::names::{LABEL_LAUNCHER, label_value};
    use ferry_launcher_kubernetes::{Handle, Kubernetes, Settings};
    use k8s_openapi::api::batch::v1::Job;
    use kube::Api;
    use kube::api::PostParams;

    if !common::docker_given("owned-namespaces") {
        return;
    }
    let server = common::server().await;
    let dir = tempfile::tempdir().unwrap();
    let client = common::client(&server, dir.path()).await;
    let mut settings = Settings::new("launcher-owned");
    settings.namespace = common::NAMESPACE.into();
    let backend = Kubernetes::new(client.clone(), settings);
    let job = |name: &str, launcher: &str| -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {LABEL_LAUNCHER: label_value(launcher)}},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "task", "image": common::image(), "imagePullPolicy": "Never",
                    "command": ["true"]}]}}}
        }))
        .unwrap()
    };
    for (ns, name, launcher) in [
        (common::NAMESPACE, "home", "launcher-owned"),
        ("batch", "away", "launcher-owned"),
        ("batch", "theirs", "launcher-other"),
        ("unused", "elsewhere", "launcher-owned"),
    ] {
        Api::<Job>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &job(name, launcher))
            .await
            .unwrap();
    }
    // An attempt in `batch` is looked up, as a restart does for each journaled attempt.
    let journaled = Compute::with_handle(
        "ferry-journaled".to_string(),
        &Handle {
            namespace: "batch".into(),
            job: "ferry-journaled".into(),
        },
    )
    .unwrap();
    assert!(backend.find(&journaled).await.unwrap().is_none());
    let mut owned: Vec<String> = backend
        .list_owned()
        .await
        .unwrap()
        .iter()
        .map(|c| backend.describe(c))
        .collect();
    owned.sort();
    assert_eq!(
        owned,
        ["batch/away", format!("{}/home", common::NAMESPACE).as_str()]
    );
    server.stop().await;
}

/// A pod gone after its task ended but before the launcher read `$FERRY_SUBTASKS` (deleted by
/// hand, its node lost): collecting fails as the platform's fault, so that the attempt is run
/// again, never a success whose subtasks were not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gone_before_its_subtasks_were_read_fails_the_collect() {
    if !common::docker_given("pod-gone") {
        return;
    }
    let cluster = Arc::new(common::Kube::new().await);
    let h = Harness::new(cluster.clone() as Arc<dyn Target>).await;
    let id = h.id("pod-gone");
    let journal = Journal::open(&h.data_dir).expect("the journal");
    let backend = cluster.backend(&h.data_dir, &journal).await;
    let secrets = Secrets::new();
    let submitted = r#"[{"id": "part-1", "runner": "local", "command": ["true"]}]"#;
    let d = h.task(&id, &p([Step::Subtasks(submitted.into())]));
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.expect("reserve");
    let compute = backend.create(task, reserved).await.expect("create");
    assert!(cluster.wait_task_ended(&id, Duration::from_secs(60)).await);
    let client = common::client(&cluster.server, &h.data_dir).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, common::NAMESPACE);
    let name = ferry_launcher_kubernetes::names::job_name(&id);
    for pod in cluster.server.pods_of(common::NAMESPACE, &name) {
        let pod_name = pod.metadata.name.unwrap_or_default();
        pods.delete(&pod_name, &kube::api::DeleteParams::default())
            .await
            .expect("delete the pod");
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cluster.server.pods_of(common::NAMESPACE, &name).is_empty() {
        assert!(tokio::time::Instant::now() < until, "the pod is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match backend.collect(&compute, task).await {
        Err(ferry_launcher::backend::AttemptError::Platform(m)) => {
            assert!(m.contains("FERRY_SUBTASKS") && m.contains("gone"), "{m}")
        }
        other => panic!("collecting from a pod that is gone: {other:?}"),
    }
    backend.release(&compute).await.expect("release");
}
