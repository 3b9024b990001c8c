//! What the ray backend does beyond the conformance suite, on a real Ray head: entrypoint
//! resources reach Ray, a job waiting for them is accepted and its cancel runs nothing, nothing
//! of the task shows in the job's details, and a second submission of an attempt is adopted.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use ferry_event::kind;
use ferry_event::payload::{Outcome, Resources, Runner};
use ferry_event::template::{Part, Template};
use ferry_launcher::Backend;
use ferry_launcher::backend::Task;
use ferry_launcher::conformance::{Harness, Program, SECRET, Step, Target};
use ferry_launcher::journal::Journal;
use ferry_launcher::secrets::Secrets;
use ferry_launcher_ray::Handle;
use ferry_launcher_ray::api::{Client, Submission, Submitted};

fn ray(h: &mut ferry_event::payload::TaskDispatched) -> &mut ferry_event::payload::RayRunner {
    match &mut h.runner {
        Runner::Ray(r) => r,
        other => panic!("not a ray runner: {other:?}"),
    }
}

/// The job's details as Ray's Jobs API gives them, unparsed.
async fn raw_job(address: &str, id: &str) -> String {
    reqwest::get(format!("{address}/api/jobs/{id}"))
        .await
        .expect("the Jobs API answers")
        .text()
        .await
        .expect("a body")
}

/// CPUs, memory and custom resources are the entrypoint's: a task asking for more than the
/// head has waits (accepted, never started), and its cancel ends it with nothing run and its
/// directory gone; one asking for what fits runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_resources_decide_where_and_whether_a_job_runs() {
    if !common::ray_given("entrypoint_resources_decide_where_and_whether_a_job_runs") {
        return;
    }
    let target = Arc::new(common::RayTarget::new());
    let mut h = Harness::new(target.clone()).await;
    let launcher = h.start().await;
    let program = Program::new([Step::Out("ran".into())]);

    // The head has 8 CPUs, a few GiB, and no custom resources.
    let too_many_cpus = h.id("cpus");
    let mut d = h.task(&too_many_cpus, &program);
    d.resources.cpu = Some(64.0);
    h.dispatch(&d).await;
    let cpus = d;

    let too_much_memory = h.id("memory");
    let mut d = h.task(&too_much_memory, &program);
    d.resources.memory = Some("64Ti".into());
    h.dispatch(&d).await;
    let memory = d;

    let absent = h.id("custom");
    let mut d = h.task(&absent, &program);
    ray(&mut d)
        .custom_resources
        .insert("ferry-test-absent".into(), 1.0);
    h.dispatch(&d).await;
    let custom = d;

    let fits = h.id("fits");
    let mut d = h.task(&fits, &program);
    d.resources = Resources {
        cpu: Some(0.5),
        memory: Some("64Mi".into()),
        ..Resources::default()
    };
    h.dispatch(&d).await;
    let f = h.finished(&fits).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(h.texts(&fits).await, ["ran"]);

    for d in [&cpus, &memory, &custom] {
        h.expect(kind::TASK_ACCEPTED, &d.attempt_id).await;
    }
    // Long enough for a job whose resources are free to start (the one that fits did).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for d in [&cpus, &memory, &custom] {
        assert_eq!(
            h.count(kind::TASK_STARTED, &d.attempt_id),
            0,
            "{} started without its resources",
            d.attempt_id
        );
        let job = raw_job(&target.address, &format!("ferry-{}", d.attempt_id)).await;
        assert!(job.contains("\"PENDING\""), "{job}");
    }
    for d in [&cpus, &memory, &custom] {
        h.cancel(d, "no room").await;
    }
    for d in [&cpus, &memory, &custom] {
        let f = h.finished(&d.attempt_id).await;
        assert_eq!(f.outcome, Outcome::Cancelled, "{f:?}");
        assert!(h.texts(&d.attempt_id).await.is_empty());
        assert!(
            !h.data_dir
                .join("ray")
                .join(format!("ferry-{}", d.attempt_id))
                .exists(),
            "the attempt directory of a cancelled job is left"
        );
        // Ray cannot end a job before it starts: it is left waiting, with nothing to run.
        assert!(common::task_processes(&d.attempt_id).is_empty());
    }
    launcher.stop().await;
}

/// The job's entrypoint and runtime environment (which the Jobs API shows to whoever reaches
/// the dashboard) hold nothing of the task: not its command, not its env, not a secret; the
/// script that does is the launcher user's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_the_task_shows_in_the_jobs_details() {
    if !common::ray_given("nothing_of_the_task_shows_in_the_jobs_details") {
        return;
    }
    let target = Arc::new(common::RayTarget::new());
    let mut h = Harness::new(target.clone()).await;
    let launcher = h.start().await;
    let id = h.id("private");
    let (name, value) = SECRET;
    let mut d = h.task(
        &id,
        &Program::new([
            Step::Env(name.into()),
            Step::Env("GREETING".into()),
            Step::Sleep(1_500),
        ]),
    );
    d.env
        .insert(name.into(), Template(vec![Part::Secret(name.into())]));
    d.env
        .insert("GREETING".into(), Template::text("hello-from-the-env"));
    d.command.push(Template(vec![Part::Secret(name.into())]));
    h.dispatch(&d).await;
    h.expect(kind::TASK_STARTED, &id).await;
    let job = raw_job(&target.address, &format!("ferry-{id}")).await;
    for shown in [value, "GREETING", "hello-from-the-env", "FERRY_ATTEMPT_ID"] {
        assert!(!job.contains(shown), "the job's details show {shown:?}: {job}");
    }
    assert!(job.contains("run.sh"), "{job}");
    let dir = h.data_dir.join("ray").join(format!("ferry-{id}"));
    let script = std::fs::read_to_string(dir.join("run.sh")).expect("the attempt's script");
    assert!(script.contains("hello-from-the-env") && script.contains(value));
    for (path, mode) in [
        (dir.clone(), 0o700),
        (dir.join("run.sh"), 0o700),
        (dir.join("work"), 0o700),
    ] {
        let m = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(m, mode, "{}", path.display());
    }
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    let mut texts = h.texts(&id).await;
    texts.sort();
    assert_eq!(
        texts,
        ["GREETING=hello-from-the-env".to_string(), format!("{name}=****")]
    );
    assert!(!dir.exists(), "the attempt directory is left after release");
    launcher.stop().await;
}

/// Ray refuses a second job of one submission id, which the backend takes for "adopt": two
/// creates of one attempt make one job, which runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_submission_of_an_attempt_is_adopted() {
    if !common::ray_given("a_second_submission_of_an_attempt_is_adopted") {
        return;
    }
    let target = Arc::new(common::RayTarget::new());
    let address = target.address.clone();
    let client = Client::new();

    // The API: the second submission of an id says so.
    let id = format!("ferry-api-{}", ferry_event::new_id());
    let job = Submission {
        submission_id: id.clone(),
        entrypoint: "true".into(),
        runtime_env: serde_json::json!({}),
        ..Submission::default()
    };
    assert_eq!(client.submit(&address, &job).await.unwrap(), Submitted::New);
    assert_eq!(client.submit(&address, &job).await.unwrap(), Submitted::Exists);

    // The backend: create twice, one job, one run.
    let h = Harness::new(target.clone()).await;
    let journal = Journal::open(&h.data_dir).expect("a journal");
    let backend: Arc<dyn Backend> = target.backend(&h.data_dir, &journal).await;
    let attempt = h.id("twice");
    let d = h.task(
        &attempt,
        &Program::new([Step::Out("once".into()), Step::Sleep(500)]),
    );
    let secrets = Secrets::new();
    let task = Task::new(&d, &secrets);
    backend.check(&d).expect("the dispatch is accepted");
    let reserved = backend.reserve(task).await.expect("reserve");
    let first = backend.create(task, reserved.clone()).await.expect("create");
    let second = backend
        .create(task, reserved.clone())
        .await
        .expect("create again");
    assert_eq!(first, second);
    let handle: Handle = first.handle_as().expect("a handle");
    let jobs: Vec<_> = client
        .list(&address)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.submission_id.as_deref() == Some(handle.submission_id.as_str()))
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let ended = tokio::time::timeout(Duration::from_secs(60), backend.wait(&first))
        .await
        .expect("the job ends")
        .expect("its state");
    assert!(
        matches!(&ended, ferry_launcher::ComputeState::Exited(e) if e.succeeded()),
        "{ended:?}"
    );
    let logs = client
        .logs(&address, &handle.submission_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        logs.matches("once").count(),
        1,
        "the task ran more than once: {logs}"
    );
    backend.release(&first).await.expect("release");
    assert!(!handle.dir.exists(), "the attempt directory is left");
    // The record goes once Ray is done with the job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while client
        .job(&address, &handle.submission_id)
        .await
        .unwrap()
        .is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "the job's record stays");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The API test's job: `true` ends at once; then it can be deleted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !client
        .job(&address, &id)
        .await
        .unwrap()
        .is_some_and(|j| j.is_terminal())
    {
        assert!(tokio::time::Instant::now() < deadline, "job {id} did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.delete(&address, &id).await.unwrap();
}

/// A job's record is deleted a few seconds after its attempt was reported (once Ray is done
/// with it), and does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_ended_jobs_go_and_stay_gone() {
    if !common::ray_given("records_of_ended_jobs_go_and_stay_gone") {
        return;
    }
    let target = Arc::new(common::RayTarget::new());
    let client = Client::new();
    let mut h = Harness::new(target.clone()).await;
    let launcher = h.start().await;
    let (ok, cancelled) = (h.id("record"), h.id("record-cancelled"));
    h.dispatch(&h.task(&ok, &Program::new([Step::Out("done".into())])))
        .await;
    let forever = Program::new([Step::Out("running".into()), Step::Sleep(60_000)]);
    h.dispatch(&h.task(&cancelled, &forever)).await;
    assert_eq!(h.finished(&ok).await.outcome, Outcome::Succeeded);
    h.expect(kind::TASK_STARTED, &cancelled).await;
    h.cancel(&h.task(&cancelled, &forever), "enough").await;
    assert_eq!(h.finished(&cancelled).await.outcome, Outcome::Cancelled);
    for id in [&ok, &cancelled] {
        let job = format!("ferry-{id}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while client.job(&target.address, &job).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the record of {job} is still there 15 s after its report"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Long enough for Ray's job manager to have looked at them again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [&ok, &cancelled] {
        let job = format!("ferry-{id}");
        assert!(
            client.job(&target.address, &job).await.unwrap().is_none(),
            "the record of {job} came back"
        );
    }
    assert!(common::task_processes(&cancelled).is_empty());
    launcher.stop().await;
}
