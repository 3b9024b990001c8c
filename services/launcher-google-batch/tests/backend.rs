//! The google-batch backend driven directly, against the Google Batch test server: what it
//! creates, how a create retried adopts, where secrets go, what it refuses before creating
//! anything, a job that cannot be placed, and many jobs' logs read in one call.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_event::payload::{GoogleBatchProvisioning, Resources, Runner, TaskDispatched};
use ferry_event::template::{Part, Template};
use ferry_launcher::Backend;
use ferry_launcher::backend::{AttemptError, ComputeState, LogPosition, Task};
use ferry_launcher::secrets::Secrets;
use ferry_launcher_google_batch::{GoogleBatch, Handle, Notifications, Settings};
use serde_json::Value;

fn dispatch(id: &str, runner: Runner, command: &[&str]) -> TaskDispatched {
    TaskDispatched {
        job_id: "job-1".into(),
        task_id: format!("task-{id}"),
        attempt_id: id.into(),
        attempt: 1,
        runner,
        command: command.iter().map(|w| Template::text(*w)).collect(),
        env: BTreeMap::new(),
        input_files: BTreeMap::new(),
        output_files: Vec::new(),
        resources: Resources::default(),
        timeout_ms: None,
        lease_ms: 30_000,
        ready_at_ms: ferry_event::now_ms(),
        flow_id: Some("Flow.A".into()),
        namespace: Some("team-a".into()),
        priority: 0,
    }
}

async fn ended(backend: &GoogleBatch, compute: &ferry_launcher::Compute) -> ComputeState {
    tokio::time::timeout(Duration::from_secs(60), backend.wait(compute))
        .await
        .expect("the job ends within a minute")
        .expect("its state can be read")
}

/// The job as the test server holds it, as JSON.
async fn raw_job(target: &common::BatchTarget, name: &str) -> Value {
    reqwest::get(format!("{}/v1/{name}", target.server.url()))
        .await
        .expect("the test server answers")
        .json()
        .await
        .expect("a job")
}

/// Waits until the target has no job left: Batch deletes a job in the background
/// (DELETION_IN_PROGRESS, then gone).
async fn deleted(target: &common::BatchTarget) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = target.jobs().await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "released jobs are still there: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything the job wrote, read through the backend to the end.
async fn output(backend: &GoogleBatch, compute: &ferry_launcher::Compute) -> String {
    let mut from = LogPosition::default();
    let mut text = Vec::new();
    for _ in 0..100 {
        let read = backend
            .read_logs(compute, ferry_event::payload::Stream::Stdout, &from, 1 << 20)
            .await
            .expect("read the log");
        from.stdout += read.bytes.len() as u64;
        from.cursor = read.cursor;
        text.extend(read.bytes);
        if read.complete {
            return String::from_utf8(text).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the log never completed: {}", String::from_utf8_lossy(&text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_carries_the_attempts_labels_resources_and_allocation_policy() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = target.make("Launcher.Labels".into(), dir.path(), false);
    let secrets = Secrets::new();
    let id = common::fresh("Spec.Attempt");
    let mut runner = target.runner();
    runner.machine_type = Some("e2-standard-2".into());
    runner.provisioning_model = Some(GoogleBatchProvisioning::Spot);
    runner.service_account = Some("jobs@ferry-test.iam.gserviceaccount.com".into());
    runner.subnetwork = Some("projects/ferry-test/regions/test-region1/subnetworks/default".into());
    runner.no_external_ip = true;
    let mut d = dispatch(
        &id,
        Runner::GoogleBatch(runner),
        &["sh", "-c", "echo \"$FERRY_ATTEMPT_ID $GREETING\"; echo oops >&2"],
    );
    d.env.insert("GREETING".into(), Template::text("hello 'there'"));
    d.resources.cpu = Some(0.5);
    d.resources.memory = Some("256Mi".into());
    d.timeout_ms = Some(20_000);
    backend.check(&d).expect("a valid task");
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.expect("reserve");
    let compute = backend.create(task, reserved).await.expect("create");
    match ended(&backend, &compute).await {
        ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Both streams, as one log (their lines interleave as the engine read them).
    let mut lines: Vec<String> = output(&backend, &compute)
        .await
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, [format!("{id} hello 'there'"), "oops".to_string()]);

    let h: Handle = compute.handle_as().unwrap();
    assert!(h.name.ends_with(&format!("/jobs/{}", compute.name)), "{h:?}");
    let job = raw_job(&target, &h.name).await;
    let labels = &job["labels"];
    for (key, value) in [
        ("ferry-job", "job-1"),
        (
            "ferry-task",
            format!("task-{}", id.to_lowercase()).replace('.', "_").as_str(),
        ),
        ("ferry-attempt", id.to_lowercase().replace('.', "_").as_str()),
        ("ferry-flow", "flow_a"),
        ("ferry-namespace", "team-a"),
        ("ferry-launcher", "launcher_labels"),
    ] {
        assert_eq!(labels[key], value, "label {key}: {job:#}");
    }
    let spec = &job["taskGroups"][0]["taskSpec"];
    assert_eq!(spec["computeResource"]["cpuMilli"], 500, "{job:#}");
    assert_eq!(spec["computeResource"]["memoryMib"], 256, "{job:#}");
    assert_eq!(spec["maxRetryCount"], 0, "{job:#}");
    // The task's timeout and the kill grace (1 s here).
    assert_eq!(spec["maxRunDuration"], "21s", "{job:#}");
    let container = &spec["runnables"][0]["container"];
    assert_eq!(container["imageUri"], common::image(), "{job:#}");
    assert_eq!(container["entrypoint"], "sh", "{job:#}");
    assert_eq!(
        spec["environment"]["variables"]["GREETING"], "hello 'there'",
        "{job:#}"
    );
    assert_eq!(
        spec["environment"]["variables"]["FERRY_ATTEMPT_ID"], id,
        "{job:#}"
    );
    let policy = &job["allocationPolicy"];
    assert_eq!(
        policy["instances"][0]["policy"]["machineType"], "e2-standard-2",
        "{job:#}"
    );
    assert_eq!(
        policy["instances"][0]["policy"]["provisioningModel"], "SPOT",
        "{job:#}"
    );
    assert_eq!(
        policy["serviceAccount"]["email"], "jobs@ferry-test.iam.gserviceaccount.com",
        "{job:#}"
    );
    assert_eq!(
        policy["network"]["networkInterfaces"][0]["noExternalIpAddress"], true,
        "{job:#}"
    );
    assert_eq!(job["logsPolicy"]["destination"], "CLOUD_LOGGING", "{job:#}");

    backend.release(&compute).await.expect("release");
    deleted(&target).await;
    // The log outlives the job, as Cloud Logging keeps it.
    let again = target.make("Launcher.Labels".into(), dir.path(), false);
    assert!(matches!(
        again.status(&compute).await.unwrap(),
        ComputeState::Vanished(_)
    ));
    assert!(output(&again, &compute).await.contains("oops"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_or_raced_adopts_the_one_job_of_the_attempt() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let dir = tempfile::tempdir().unwrap();
    let one = target.make("launcher-one".into(), dir.path(), false);
    let two = target.make("launcher-one".into(), dir.path(), false);
    let secrets = Secrets::new();
    let id = common::fresh("twice");
    let d = dispatch(&id, Runner::GoogleBatch(target.runner()), &["sleep", "2"]);
    let task = Task::new(&d, &secrets);
    let reserved = one.reserve(task).await.unwrap();
    let (a, b) = tokio::join!(
        one.create(task, reserved.clone()),
        two.create(task, reserved.clone())
    );
    let (a, b) = (a.expect("first create"), b.expect("second create"));
    let uid = |c: &ferry_launcher::Compute| c.handle_as::<Handle>().unwrap().uid;
    assert!(uid(&a).is_some());
    assert_eq!(uid(&a), uid(&b), "two creates of one attempt made two jobs");
    // A third, after the job exists, adopts it too.
    let c = one.create(task, reserved).await.expect("a create retried later");
    assert_eq!(uid(&a), uid(&c));
    assert_eq!(
        target.jobs().await.iter().filter(|(j, _)| *j == a.name).count(),
        1
    );
    assert!(matches!(ended(&one, &a).await, ComputeState::Exited(e) if e.succeeded()));
    one.release(&a).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_task_through_the_bucket_and_never_the_jobs_definition() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = target.make("launcher-secrets".into(), dir.path(), true);
    let mut secrets = Secrets::new();
    let value = "t0ken-that-must-not-show";
    secrets.insert("API_TOKEN", value);
    let id = common::fresh("secret");
    let mut d = dispatch(
        &id,
        Runner::GoogleBatch(target.runner()),
        &[
            "sh",
            "-c",
            "test \"$TOKEN\" = \"$1\" && echo same; echo \"${#TOKEN} chars\"",
            "check",
        ],
    );
    d.env
        .insert("TOKEN".into(), Template(vec![Part::Secret("API_TOKEN".into())]));
    d.command.push(Template(vec![Part::Secret("API_TOKEN".into())]));
    backend.check(&d).expect("a valid task");
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.unwrap();
    let compute = backend.create(task, reserved).await.expect("create");
    let h: Handle = compute.handle_as().unwrap();
    let job = raw_job(&target, &h.name).await;
    assert!(
        !job.to_string().contains(value),
        "the secret is in the job's definition: {job:#}"
    );
    match ended(&backend, &compute).await {
        ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        output(&backend, &compute).await,
        format!("same\n{} chars\n", value.len())
    );
    // The job deleted the staged script once it had read it.
    let staged = target.staged().await;
    assert!(
        staged.iter().all(|o| !o.ends_with("secrets.sh")),
        "secrets.sh is still in the bucket: {staged:?}"
    );
    backend.release(&compute).await.unwrap();
    assert_eq!(target.staged().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bucket_files_and_secrets_are_refused_before_anything_exists() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = target.make("launcher-refuse".into(), dir.path(), false);
    let runner = Runner::GoogleBatch(target.runner());
    let refused = |d: &TaskDispatched, field: &str| match backend.check(d) {
        Err(AttemptError::Task(m)) => assert!(m.contains(field), "{m}"),
        other => panic!("{field}: {other:?}"),
    };
    let mut d = dispatch("in", runner.clone(), &["true"]);
    d.input_files.insert("a.txt".into(), Template::text("x"));
    refused(&d, "inputFiles.a.txt");
    let mut d = dispatch("out", runner.clone(), &["true"]);
    d.output_files.push("*.txt".into());
    refused(&d, "outputFiles");
    let mut d = dispatch("sec", runner.clone(), &["true"]);
    d.env
        .insert("TOKEN".into(), Template(vec![Part::Secret("API_TOKEN".into())]));
    refused(&d, "env.TOKEN");
    let mut d = dispatch("gpu", runner.clone(), &["true"]);
    d.resources.gpu = Some(1);
    refused(&d, "resources.gpuType");
    let mut d = dispatch("wd", runner.clone(), &["true"]);
    d.command.push(Template(vec![Part::WorkingDir]));
    refused(&d, "workingDir");
    let mut nowhere = target.runner();
    nowhere.project = None;
    let other = target.make("launcher-refuse".into(), dir.path(), false);
    // This backend has a default project: a runner without one takes it.
    other
        .check(&dispatch("p", Runner::GoogleBatch(nowhere), &["true"]))
        .expect("the launcher's project");
    assert_eq!(target.jobs().await, Vec::<(String, String)>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_vm_can_take_fails_at_its_pending_deadline_and_is_gone_after_release() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = target.make("launcher-pending".into(), dir.path(), false);
    let secrets = Secrets::new();
    let mut runner = target.runner();
    runner.pending_deadline_seconds = Some(2);
    let id = common::fresh("gpu");
    let mut d = dispatch(&id, Runner::GoogleBatch(runner), &["true"]);
    // The test server has no GPUs: the job stays QUEUED.
    d.resources.gpu = Some(1);
    d.resources.gpu_type = Some("nvidia-l4".into());
    backend.check(&d).unwrap();
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.unwrap();
    let compute = backend.create(task, reserved).await.expect("create");
    let h: Handle = compute.handle_as().unwrap();
    let job = raw_job(&target, &h.name).await;
    let policy = &job["allocationPolicy"]["instances"][0];
    assert_eq!(
        policy["policy"]["accelerators"][0]["type"], "nvidia-l4",
        "{job:#}"
    );
    assert_eq!(policy["policy"]["accelerators"][0]["count"], "1", "{job:#}");
    assert_eq!(policy["installGpuDrivers"], true, "{job:#}");
    assert_eq!(backend.status(&compute).await.unwrap(), ComputeState::Pending);
    match ended(&backend, &compute).await {
        ComputeState::Exited(e) => {
            assert_eq!(e.reason.as_deref(), Some("PendingDeadlineExceeded"), "{e:?}");
            assert!(
                e.error.as_deref().unwrap().contains("pendingDeadlineSeconds"),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    backend.release(&compute).await.unwrap();
    deleted(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_state_change_on_pub_sub_brings_its_read_forward() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let Some(pubsub) = common::pubsub() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "FERRY_TEST_PUBSUB is not set: scripts/services.sh starts gcloud's Pub/Sub emulator"
        );
        eprintln!("SKIPPED: FERRY_TEST_PUBSUB is not set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let (topic, subscription) = common::topic(&pubsub).await;
    let dir = tempfile::tempdir().unwrap();
    let staging = ferry_launcher_google_batch::stage::Staging::new(
        None,
        Vec::new(),
        dir.path().join("artifacts"),
        Default::default(),
    )
    .unwrap();
    let mut settings = Settings::new("launcher-notified", staging);
    // Listings so rare that only a notification can bring the job's end within the test.
    settings.poll_interval = Duration::from_secs(600);
    settings.kill_grace = Duration::from_secs(1);
    settings.log_settle = Duration::from_secs(1);
    settings.notifications = Some(Notifications {
        topic: topic.clone(),
        subscription,
    });
    let backend = GoogleBatch::new(target.google.clone(), settings);
    let secrets = Secrets::new();
    let id = common::fresh("notified");
    let d = dispatch(
        &id,
        Runner::GoogleBatch(target.runner()),
        &["sh", "-c", "sleep 1; echo done"],
    );
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.unwrap();
    let compute = backend.create(task, reserved).await.expect("create");
    let h: Handle = compute.handle_as().unwrap();
    let job = raw_job(&target, &h.name).await;
    assert_eq!(job["notifications"][0]["pubsubTopic"], topic, "{job:#}");
    assert_eq!(
        job["notifications"][0]["message"]["type"], "JOB_STATE_CHANGED",
        "{job:#}"
    );
    // The first listing sees the job waiting or running; the next is 10 minutes away.
    let state = tokio::time::timeout(Duration::from_secs(60), backend.wait(&compute))
        .await
        .expect("a notification brought the job's end before the next listing")
        .unwrap();
    assert!(
        matches!(&state, ComputeState::Exited(e) if e.succeeded()),
        "{state:?}"
    );
    assert_eq!(output(&backend, &compute).await, "done\n");
    let lists = target
        .server
        .counts()
        .get(&("jobs".to_string(), "list".to_string()))
        .copied()
        .unwrap_or(0);
    assert_eq!(lists, 1, "one listing, the rest from notifications");
    backend.release(&compute).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_of_many_jobs_are_read_in_one_call() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = target.make("launcher-logs".into(), dir.path(), false);
    let secrets = Secrets::new();
    let mut computes = Vec::new();
    for n in 0..4 {
        let id = common::fresh(&format!("logs{n}"));
        let line = format!("printf 'job {n} a\\njob {n} b\\n'");
        let d = dispatch(&id, Runner::GoogleBatch(target.runner()), &["sh", "-c", &line]);
        let task = Task::new(&d, &secrets);
        let reserved = backend.reserve(task).await.unwrap();
        computes.push(backend.create(task, reserved).await.unwrap());
    }
    for c in &computes {
        assert!(matches!(ended(&backend, c).await, ComputeState::Exited(e) if e.succeeded()));
    }
    let uid = |c: &ferry_launcher::Compute| c.handle_as::<Handle>().unwrap().uid.unwrap();
    let reader =
        ferry_launcher_google_batch::logs::Reader::new(target.google.clone(), Duration::from_millis(50));
    let before = target.server.counts();
    let reads = computes.iter().map(|c| {
        let want = ferry_launcher_google_batch::logs::Want {
            uid: uid(c),
            after: None,
            until: None,
        };
        let reader = reader.clone();
        async move { reader.read(common::PROJECT, want).await }
    });
    let got = futures::future::join_all(reads).await;
    for (n, got) in got.into_iter().enumerate() {
        let lines: Vec<String> = got.expect("a read").entries.into_iter().map(|(_, l)| l).collect();
        assert_eq!(lines, [format!("job {n} a"), format!("job {n} b")]);
    }
    let calls = |counts: &ferry_google_batch_test_server::Counts| {
        counts
            .get(&("entries".to_string(), "list".to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(calls(&target.server.counts()) - calls(&before), 1);
    // Each job's read on from where it is: the second read of a job brings nothing new.
    for c in &computes {
        assert_eq!(output(&backend, c).await.lines().count(), 2);
        backend.release(c).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_journal_lost_is_released_with_its_staged_files() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let target = common::BatchTarget::new(gcs).await;
    let dir = tempfile::tempdir().unwrap();
    let first = target.make("launcher-lost".into(), dir.path(), true);
    let secrets = Secrets::new();
    let id = common::fresh("lost");
    let mut d = dispatch(&id, Runner::GoogleBatch(target.runner()), &["sleep", "60"]);
    d.input_files
        .insert("in.txt".into(), Template::text("staged before the job"));
    let task = Task::new(&d, &secrets);
    let reserved = first.reserve(task).await.unwrap();
    let created = first.create(task, reserved).await.unwrap();
    assert!(!target.staged().await.is_empty(), "nothing was staged");
    // A launcher that knows nothing of the job (its journal lost) finds it as its own, with
    // where its files are.
    let second = target.make("launcher-lost".into(), dir.path(), true);
    let owned = second.list_owned().await.expect("list owned");
    let orphan = owned
        .iter()
        .find(|c| c.name == created.name)
        .expect("the job is found as the launcher's");
    let h = orphan.handle_as::<Handle>().unwrap();
    assert_eq!(
        (h.stage.as_deref(), h.stage_bucket),
        (
            Some(format!("job-1/task-{id}/{id}").as_str()),
            Some(format!("gs://{}/stage", target.bucket))
        )
    );
    second.release(orphan).await.expect("release");
    deleted(&target).await;
    assert_eq!(target.staged().await, Vec::<String>::new());
}
