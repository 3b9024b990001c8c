//! The cases: each takes a [`Target`] and panics, saying what it saw, when the backend
//! behaves otherwise than every launcher must.

use std::sync::Arc;
use std::time::Duration;

use ferry_event::kind;
use ferry_event::payload::{Outcome, TaskAccepted, TaskFinished, TaskStarted};
use ferry_event::template::{Part, Template};

use super::harness::{Harness, SmallDisk, display, is_root};
use super::{Program, SECRET, Step, Target};
use crate::backend::{ShutdownPolicy, Task};
use crate::journal::{Entry, Journal, RunningRecord};
use crate::secrets::Secrets;

fn p(steps: impl IntoIterator<Item = Step>) -> Program {
    Program::new(steps)
}

fn out(s: &str) -> Step {
    Step::Out(s.into())
}

/// A task that runs until stopped (well past any case).
fn forever() -> Program {
    p([out("running"), Step::Sleep(60_000)])
}

fn assert_outcome(f: &TaskFinished, outcome: Outcome) {
    assert_eq!(f.outcome, outcome, "{f:?}");
}

/// Accepted first where the backend's compute may queue, then started, heartbeats while it
/// runs, its lines, then finished: in that order, once each; both name the compute.
pub async fn lifecycle_is_started_heartbeats_logs_finished(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("life");
    let mut d = h.task(&id, &p([out("begin"), Step::Sleep(800), out("end")]));
    d.lease_ms = 300;
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Succeeded);
    assert_eq!((f.exit_code, f.error.as_deref()), (Some(0), None), "{f:?}");
    assert!(f.started_at_ms.is_some_and(|s| s <= f.finished_at_ms), "{f:?}");
    // The compute was held at least while the task ran (it slept 800 ms), and no longer than
    // from the dispatch to the report.
    let held = f
        .compute_ms
        .expect("a report of compute that ran says how long it was held");
    assert!(
        (800..=u64::try_from(f.finished_at_ms - d.ready_at_ms).unwrap_or(0)).contains(&held),
        "{f:?}"
    );
    let order: Vec<&str> = h
        .seen
        .iter()
        .filter(|(_, a, _)| *a == id)
        .map(|(t, _, _)| t.as_str())
        .collect();
    let queues = h.queues();
    let first: Vec<&str> = order
        .iter()
        .copied()
        .filter(|t| *t != kind::TASK_HEARTBEAT)
        .take(2)
        .collect();
    if queues {
        assert_eq!(first, [kind::TASK_ACCEPTED, kind::TASK_STARTED], "{order:?}");
        let accepted: TaskAccepted = h.payload(kind::TASK_ACCEPTED, &id);
        assert!(
            accepted.compute.as_deref().is_some_and(|c| !c.is_empty()),
            "task.accepted names no compute: {accepted:?}"
        );
        assert!(
            accepted.accepted_at_ms <= f.started_at_ms.unwrap_or(0),
            "{accepted:?} {f:?}"
        );
    } else {
        assert_eq!(order.first(), Some(&kind::TASK_STARTED), "{order:?}");
        assert_eq!(h.count(kind::TASK_ACCEPTED, &id), 0, "{order:?}");
    }
    let started: TaskStarted = h.payload(kind::TASK_STARTED, &id);
    assert!(
        started.compute.as_deref().is_some_and(|c| !c.is_empty()),
        "task.started names no compute: {started:?}"
    );
    assert_eq!(Some(started.started_at_ms), f.started_at_ms, "{started:?} {f:?}");
    assert_eq!(order.last(), Some(&kind::TASK_FINISHED), "{order:?}");
    assert!(
        order.iter().filter(|t| **t == kind::TASK_HEARTBEAT).count() >= 2,
        "a task running for more than two leases' thirds sent fewer than two heartbeats: {order:?}"
    );
    assert_eq!(h.texts(&id).await, ["begin", "end"]);
    assert_eq!(f.log_lines, 2);
    assert_eq!(h.settle_count(kind::TASK_FINISHED, &id).await, 1);
    assert_eq!(h.count(kind::TASK_STARTED, &id), 1);
    h.assert_nothing_left("after task.finished").await;
    launcher.stop().await;
}

/// Thousands of lines on both streams arrive numbered from 0 without a gap, each once, in the
/// order each stream wrote them.
pub async fn logs_arrive_complete_contiguous_and_once(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("logs");
    h.dispatch(&h.task(
        &id,
        &p([Step::Count(3000), Step::Err("on stderr".into()), Step::Count(5)]),
    ))
    .await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Succeeded);
    let texts = h.texts(&id).await;
    assert_eq!(f.log_lines, texts.len() as u64);
    assert_eq!(texts.len(), 3006, "lines were lost or doubled");
    let stdout: Vec<String> = texts.iter().filter(|t| *t != "on stderr").cloned().collect();
    let expected: Vec<String> = (1..=3000).chain(1..=5).map(|n: u32| n.to_string()).collect();
    assert_eq!(stdout, expected, "standard output arrived out of order");
    launcher.stop().await;
}

/// Status 0 is success; any other is the task's failure, with its code.
pub async fn exit_status_decides_the_outcome(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let (ok, bad) = (h.id("exit-0"), h.id("exit-3"));
    h.dispatch(&h.task(&ok, &p([Step::Exit(0)]))).await;
    h.dispatch(&h.task(&bad, &p([out("failing"), Step::Exit(3)])))
        .await;
    let f = h.finished(&ok).await;
    assert_outcome(&f, Outcome::Succeeded);
    assert_eq!(f.exit_code, Some(0));
    let f = h.finished(&bad).await;
    assert_outcome(&f, Outcome::Failed);
    assert_eq!(f.exit_code, Some(3), "{f:?}");
    assert!(f.error.as_deref().is_some_and(|e| e.contains('3')), "{f:?}");
    assert_eq!(h.texts(&bad).await, ["failing"]);
    h.assert_nothing_left("after a failure").await;
    launcher.stop().await;
}

/// The task's own environment, and the `FERRY_*` variables every backend sets.
pub async fn a_task_sees_the_ferry_environment(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("env");
    let names = [
        "FERRY_JOB_ID",
        "FERRY_TASK_ID",
        "FERRY_ATTEMPT_ID",
        "FERRY_WORKING_DIR",
        "FERRY_OUTPUTS",
        "GREETING",
    ];
    let mut d = h.task(&id, &p(names.iter().map(|n| Step::Env(n.to_string()))));
    d.env
        .insert("GREETING".into(), Template::text("hello $HOME 'quoted'"));
    h.dispatch(&d).await;
    assert_outcome(&h.finished(&id).await, Outcome::Succeeded);
    let seen: std::collections::BTreeMap<String, String> = h
        .texts(&id)
        .await
        .into_iter()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    assert_eq!(seen["FERRY_JOB_ID"], d.job_id);
    assert_eq!(seen["FERRY_TASK_ID"], d.task_id);
    assert_eq!(seen["FERRY_ATTEMPT_ID"], d.attempt_id);
    assert!(!seen["FERRY_WORKING_DIR"].is_empty(), "{seen:?}");
    assert!(!seen["FERRY_OUTPUTS"].is_empty(), "{seen:?}");
    assert_eq!(
        seen["GREETING"], "hello $HOME 'quoted'",
        "values are passed verbatim"
    );
    launcher.stop().await;
}

/// Input files are in the working directory; a name that would leave it fails the task before
/// any compute exists.
pub async fn input_files_arrive_and_hostile_names_create_nothing(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("inputs");
    let mut d = h.task(&id, &p([Step::Cat("data/in.txt".into())]));
    d.input_files
        .insert("data/in.txt".into(), Template::text("first\nsecond\n"));
    h.dispatch(&d).await;
    assert_outcome(&h.finished(&id).await, Outcome::Succeeded);
    assert_eq!(h.texts(&id).await, ["first", "second"]);

    let outside = h.data_dir.join("outside");
    let hostile = ["../x", outside.to_str().expect("a UTF-8 path"), "a/../../x"];
    for (i, name) in hostile.iter().enumerate() {
        let id = h.id(&format!("hostile-{i}"));
        let mut d = h.task(&id, &p([out("ran")]));
        d.input_files.insert("fine.txt".into(), Template::text("ok"));
        d.input_files.insert((*name).into(), Template::text("pwned"));
        h.dispatch(&d).await;
        let f = h.finished(&id).await;
        assert_outcome(&f, Outcome::Failed);
        let error = f.error.unwrap_or_default();
        assert!(
            error.contains(&format!("{name:?}")),
            "the error does not name {name:?}: {error}"
        );
        assert_eq!(h.count(kind::TASK_STARTED, &id), 0, "{name}");
        assert!(h.texts(&id).await.is_empty(), "the task ran despite {name:?}");
    }
    assert!(!outside.exists(), "a hostile input file was written");
    h.assert_nothing_left("after refused input files").await;
    launcher.stop().await;
}

/// `$FERRY_OUTPUTS` comes back as the report's outputs, matching files as its outputFiles.
pub async fn outputs_and_output_files_come_back(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("outputs");
    let mut d = h.task(
        &id,
        &p([
            Step::Outputs(r#"{"rows": 3, "ok": true}"#.into()),
            Step::Write {
                path: "report.txt".into(),
                content: "hello".into(),
            },
            Step::Write {
                path: "other.csv".into(),
                content: "a,b".into(),
            },
        ]),
    );
    d.output_files = vec!["*.txt".into()];
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Succeeded);
    assert_eq!(f.outputs["rows"], 3, "{f:?}");
    assert_eq!(f.outputs["ok"], true, "{f:?}");
    let files: Vec<(&str, u64)> = f.output_files.iter().map(|o| (o.path.as_str(), o.size)).collect();
    assert_eq!(files, [("report.txt", 5)], "{f:?}");
    assert!(!f.output_files[0].uri.is_empty());

    let bad = h.id("bad-outputs");
    h.dispatch(&h.task(&bad, &p([Step::Outputs("[1, 2]".into())])))
        .await;
    let f = h.finished(&bad).await;
    assert_outcome(&f, Outcome::Failed);
    assert!(
        f.error.as_deref().is_some_and(|e| e.contains("FERRY_OUTPUTS")),
        "{f:?}"
    );
    h.assert_nothing_left("after outputs were collected").await;
    launcher.stop().await;
}

/// `$FERRY_SUBTASKS` comes back as the report's subtasks, but only from a success: a failed
/// attempt's are never sent; a file that is not a list of tasks fails the attempt.
pub async fn subtasks_come_back_only_from_a_success(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let submitted = r#"[{"id": "part-1", "runner": "local", "command": ["true"]}]"#;
    let ok = h.id("submits");
    h.dispatch(&h.task(&ok, &p([Step::Subtasks(submitted.into())])))
        .await;
    let f = h.finished(&ok).await;
    assert_outcome(&f, Outcome::Succeeded);
    assert_eq!(f.subtasks.len(), 1, "{f:?}");
    assert_eq!(f.subtasks[0]["id"], "part-1", "{f:?}");

    let failed = h.id("submits-then-fails");
    h.dispatch(&h.task(&failed, &p([Step::Subtasks(submitted.into()), Step::Exit(3)])))
        .await;
    let f = h.finished(&failed).await;
    assert_outcome(&f, Outcome::Failed);
    assert!(
        f.subtasks.is_empty(),
        "a failed attempt's subtasks were sent: {f:?}"
    );

    let bad = h.id("bad-subtasks");
    h.dispatch(&h.task(&bad, &p([Step::Subtasks(r#"{"id": "x"}"#.into())])))
        .await;
    let f = h.finished(&bad).await;
    assert_outcome(&f, Outcome::Failed);
    assert!(
        f.error.as_deref().is_some_and(|e| e.contains("FERRY_SUBTASKS")),
        "{f:?}"
    );
    h.assert_nothing_left("after subtasks were collected").await;
    launcher.stop().await;
}

/// A secret's value never shows: not in lines of either stream, not in outputs, not in an
/// error (the harness checks every line and report of every case; this case puts it in each).
pub async fn secrets_are_masked_in_lines_outputs_and_errors(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("secrets");
    let (name, value) = SECRET;
    let mut d = h.task(
        &id,
        &p([
            Step::Env(name.into()),
            Step::Out(format!("inline {value} inline")),
            Step::Err(format!("{value} on stderr")),
            Step::Outputs(format!(r#"{{"token": "{value}", "nested": ["x{value}x"]}}"#)),
        ]),
    );
    d.env
        .insert(name.into(), Template(vec![Part::Secret(name.into())]));
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Succeeded);
    let mut texts = h.texts(&id).await;
    texts.sort();
    assert_eq!(
        texts,
        [
            "**** on stderr".to_string(),
            format!("{name}=****"),
            "inline **** inline".to_string()
        ]
    );
    assert_eq!(f.outputs["token"], "****");
    assert_eq!(f.outputs["nested"][0], "x****x");

    // An error that would quote it: a cancel's reason.
    let cancelled = h.id("secret-cancel");
    h.dispatch(&h.task(&cancelled, &forever())).await;
    h.expect(kind::TASK_STARTED, &cancelled).await;
    h.cancel(&h.task(&cancelled, &forever()), &format!("rotate {value}"))
        .await;
    let f = h.finished(&cancelled).await;
    assert_outcome(&f, Outcome::Cancelled);
    assert_eq!(f.error.as_deref(), Some("cancelled: rotate ****"));
    launcher.stop().await;
}

/// A task that runs past its timeout is stopped, reported `timedOut`, and nothing of it is
/// left.
pub async fn a_timeout_leaves_no_compute(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("timeout");
    let mut d = h.task(&id, &forever());
    d.timeout_ms = Some(300);
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::TimedOut);
    assert_eq!(
        h.texts(&id).await,
        ["running"],
        "output before the timeout is kept"
    );
    h.assert_nothing_left("after a timeout").await;
    launcher.stop().await;
}

/// A cancel stops the running task; nothing of it is left.
pub async fn a_cancel_leaves_no_compute(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("cancel");
    let d = h.task(&id, &forever());
    h.dispatch(&d).await;
    h.expect(kind::TASK_STARTED, &id).await;
    h.cancel(&d, "not needed").await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Cancelled);
    assert_eq!(f.error.as_deref(), Some("cancelled: not needed"));
    h.assert_nothing_left("after a cancel").await;
    launcher.stop().await;
}

/// Every word of a launcher names it (`ferrylauncher`), the same after a restart; a cancel
/// addressed to another launcher (the scheduler fencing off a copy of the attempt elsewhere)
/// leaves this one's attempt running, and one addressed to it stops it.
pub async fn a_cancel_for_another_launcher_is_not_this_ones(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("fenced");
    let d = h.task(&id, &forever());
    h.dispatch(&d).await;
    let started = h.expect(kind::TASK_STARTED, &id).await;
    let me = ferry_event::envelope::launcher_of(&started).expect("task.started names its launcher");
    h.cancel_for(&d, "a copy elsewhere", Some("some-other-launcher"))
        .await;
    assert_eq!(
        h.settle_count(kind::TASK_FINISHED, &id).await,
        0,
        "a cancel for another launcher stopped this one's attempt"
    );
    h.cancel_for(&d, "fenced", Some(&me)).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Cancelled);
    h.assert_nothing_left("after a cancel addressed to it").await;
    launcher.stop().await;
    // Started again on the same journal, it is the same launcher.
    let launcher = h.start().await;
    let again = h.id("fenced-again");
    h.dispatch(&h.task(&again, &p([out("hi")]))).await;
    let started = h.expect(kind::TASK_STARTED, &again).await;
    assert_eq!(ferry_event::envelope::launcher_of(&started), Some(me));
    h.finished(&again).await;
    launcher.stop().await;
}

/// A cancel that arrives before its dispatch wins: the dispatch, and every redelivery of it,
/// creates nothing.
pub async fn a_cancel_before_the_dispatch_creates_nothing_ever(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("tomb");
    let d = h.task(&id, &forever());
    h.cancel(&d, "changed my mind").await;
    h.wait_journaled(&id).await;
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Cancelled);
    assert_eq!((f.started_at_ms, f.compute_ms), (None, None), "{f:?}");
    h.dispatch(&d).await;
    assert_eq!(h.settle_count(kind::TASK_FINISHED, &id).await, 1);
    // And after a restart, on the same journal.
    launcher.stop().await;
    let launcher = h.start().await;
    h.dispatch(&d).await;
    assert_eq!(h.settle_count(kind::TASK_FINISHED, &id).await, 1);
    assert_eq!(h.count(kind::TASK_STARTED, &id), 0);
    assert!(h.texts(&id).await.is_empty());
    h.assert_nothing_left("after a cancelled dispatch").await;
    launcher.stop().await;
}

/// The same dispatch delivered again — while it waits, while it runs, after it finished, after
/// a restart — runs once.
pub async fn a_redelivered_dispatch_never_creates_a_second_compute(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("dup");
    let d = h.task(&id, &p([out("ran"), Step::Sleep(400)]));
    h.dispatch(&d).await;
    h.dispatch(&d).await;
    h.expect(kind::TASK_STARTED, &id).await;
    h.dispatch(&d).await;
    assert_outcome(&h.finished(&id).await, Outcome::Succeeded);
    h.dispatch(&d).await;
    launcher.stop().await;
    let launcher = h.start().await;
    h.dispatch(&d).await;
    assert_eq!(h.settle_count(kind::TASK_FINISHED, &id).await, 1);
    assert_eq!(h.count(kind::TASK_STARTED, &id), 1);
    assert_eq!(h.texts(&id).await, ["ran"]);
    h.assert_nothing_left("after duplicates").await;
    launcher.stop().await;
}

/// A launcher killed after its backend created the compute but before the journal recorded
/// the handle: the next start finds it from the reservation, stops it and reports the attempt
/// `lost` once; the redelivered dispatch creates nothing more.
pub async fn a_crash_between_create_and_journal_leaves_one_compute_and_one_report(target: Arc<dyn Target>) {
    let mut h = Harness::new(target.clone()).await;
    let id = h.id("half");
    let d = h.task(&id, &forever());
    {
        // The killed run, step by step as the runtime takes them, up to the create.
        let journal = Journal::open(&h.data_dir).expect("the journal");
        let backend = target.backend(&h.data_dir, &journal).await;
        let secrets = Secrets::new();
        let task = Task::new(&d, &secrets);
        let reserved = backend.reserve(task).await.expect("reserve");
        let record = RunningRecord::reserved(&d, reserved.clone(), 0);
        journal.record(&id, Entry::Running(record)).expect("journal");
        backend.create(task, reserved).await.expect("create");
        assert!(
            !h.leftovers().await.is_empty(),
            "the platform does not show the compute just created"
        );
    }
    let launcher = h.start().await;
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Lost);
    assert_eq!(h.settle_count(kind::TASK_FINISHED, &id).await, 1);
    assert_eq!(
        h.count(kind::TASK_STARTED, &id),
        0,
        "the redelivered dispatch started compute"
    );
    h.assert_nothing_left("after reconciling a half-started attempt")
        .await;
    launcher.stop().await;
}

/// Compute that dies behind ferry's back (killed by an operator, the OOM killer, a node lost)
/// is reported within one lease, and never as a success.
pub async fn compute_killed_behind_ferrys_back_is_reported_within_a_lease(target: Arc<dyn Target>) {
    let mut h = Harness::new(target.clone()).await;
    let launcher = h.start().await;
    let id = h.id("killed");
    let mut d = h.task(&id, &forever());
    d.lease_ms = 2_000;
    h.dispatch(&d).await;
    h.expect(kind::TASK_STARTED, &id).await;
    let at = tokio::time::Instant::now();
    target.kill(&id).await.expect("kill the compute");
    let lease = Duration::from_millis(d.lease_ms);
    let Some(e) = h.expect_within(kind::TASK_FINISHED, &id, lease).await else {
        panic!("compute killed behind ferry's back was not reported within its lease of {lease:?}");
    };
    let f: TaskFinished = ferry_event::decode(&e).expect("a task.finished payload");
    assert!(
        matches!(f.outcome, Outcome::Failed | Outcome::Lost),
        "killed compute reported {:?} after {:?}: {f:?}",
        f.outcome,
        at.elapsed()
    );
    h.assert_nothing_left("after compute was killed").await;
    launcher.stop().await;
}

/// A launcher killed at each point of an attempt's life (started, lines published, report
/// published) and started again on its journal: exactly one `task.finished`, and every line
/// numbered once, from 0, without a gap.
pub async fn a_crash_at_each_step_ends_in_exactly_one_report(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let program = p([Step::Count(300), Step::Sleep(700), Step::Count(300)]);
    for point in ["started", "lines", "finished"] {
        let id = h.id(&format!("crash-{point}"));
        let launcher = h.start().await;
        h.dispatch(&h.task(&id, &program)).await;
        h.expect(kind::TASK_STARTED, &id).await;
        match point {
            "lines" => h.wait_for_lines(&id, 1).await,
            "finished" => {
                h.finished(&id).await;
            }
            _ => {}
        }
        launcher.crash();
        let launcher = h.start().await;
        let f = h.finished(&id).await;
        let reports = h.settle_count(kind::TASK_FINISHED, &id).await;
        // A report is journaled before it is published and marked done once the broker
        // confirmed it: a crash between the two publishes the same report again (at least
        // once, never two different ones). Anywhere else, exactly one.
        let again: Vec<TaskFinished> = h
            .seen
            .iter()
            .filter(|(t, a, _)| t == kind::TASK_FINISHED && *a == id)
            .map(|(_, _, e)| ferry_event::decode(e).expect("a task.finished payload"))
            .collect();
        assert!(
            again.iter().all(|r| *r == f),
            "crashed after {point}: two different reports: {again:?}"
        );
        if point != "finished" {
            assert_eq!(reports, 1, "crashed after {point}: {:?}", h.types());
        }
        let lines = h.lines(&id).await;
        assert_eq!(f.log_lines, lines.len() as u64, "crashed after {point}: {f:?}");
        match f.outcome {
            Outcome::Succeeded => assert_eq!(lines.len(), 600, "crashed after {point}"),
            Outcome::Lost => assert!(f.error.is_some(), "{f:?}"),
            other => panic!("crashed after {point}: reported {other:?}: {f:?}"),
        }
        h.assert_nothing_left(&format!("after a crash after {point}"))
            .await;
        launcher.stop().await;
    }
}

/// What a launcher's orderly stop does to a running attempt is what the backend's policy says:
/// `Kill` stops it and reports it lost; `Drain` lets it end within the grace; `Detach` leaves
/// it running and the next start adopts it with its true outcome.
pub async fn shutdown_follows_the_backends_policy(target: Arc<dyn Target>) {
    let policy = {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let journal = Journal::open(tmp.path()).expect("a journal");
        target.backend(tmp.path(), &journal).await.shutdown_policy()
    };
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("shutdown");
    let run_for = Duration::from_millis(1_500);
    h.dispatch(&h.task(
        &id,
        &p([out("begin"), Step::Sleep(run_for.as_millis() as u64), out("end")]),
    ))
    .await;
    h.expect(kind::TASK_STARTED, &id).await;
    h.wait_for_lines(&id, 1).await;
    launcher.stop().await;
    match policy {
        ShutdownPolicy::Kill => {
            let f = h.finished(&id).await;
            assert_outcome(&f, Outcome::Lost);
            assert_eq!(h.texts(&id).await, ["begin"]);
            h.assert_nothing_left("after a stop under Kill").await;
        }
        ShutdownPolicy::Drain(grace) => {
            let f = h.finished(&id).await;
            let expected = if grace > run_for {
                Outcome::Succeeded
            } else {
                Outcome::Lost
            };
            assert_outcome(&f, expected);
            h.assert_nothing_left("after a stop under Drain").await;
        }
        ShutdownPolicy::Detach => {
            assert_eq!(
                h.settle_count(kind::TASK_FINISHED, &id).await,
                0,
                "a detached attempt was reported"
            );
            assert!(
                h.leftovers().await.iter().any(|n| n.contains(&id)),
                "detached compute did not keep running"
            );
            let launcher = h.start().await;
            let f = h.finished(&id).await;
            assert_outcome(&f, Outcome::Succeeded);
            assert_eq!(h.texts(&id).await, ["begin", "end"]);
            h.assert_nothing_left("after adopting detached compute").await;
            launcher.stop().await;
        }
    }
}

/// A launcher started again while compute of its previous run still runs (adopted under
/// `Detach`, stopped otherwise) serves new dispatches at once; what it adopted sends
/// heartbeats, so that its lease does not lapse, and can be cancelled.
pub async fn a_restarted_launcher_serves_and_keeps_adopted_compute_alive(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("adopted");
    let mut d = h.task(&id, &forever());
    d.lease_ms = 600;
    h.dispatch(&d).await;
    h.expect(kind::TASK_STARTED, &id).await;
    h.wait_for_lines(&id, 1).await;
    launcher.stop().await;
    let reported = h.settle_count(kind::TASK_FINISHED, &id).await == 1;

    let launcher = h.start().await;
    let other = h.id("after-restart");
    h.dispatch(&h.task(&other, &p([out("served")]))).await;
    assert_outcome(&h.finished(&other).await, Outcome::Succeeded);
    if !reported {
        // Adopted: it must stay alive in the scheduler's eyes, and obey a cancel.
        let before = h.count(kind::TASK_HEARTBEAT, &id);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(3 * d.lease_ms);
        while h.count(kind::TASK_HEARTBEAT, &id) < before + 2 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                h.next_within(left).await,
                "adopted compute sent fewer than two heartbeats in three leases: its lease lapses while it runs"
            );
        }
        h.cancel(&d, "adopted, then cancelled").await;
        let f = h.finished(&id).await;
        assert_outcome(&f, Outcome::Cancelled);
        assert_eq!(h.texts(&id).await, ["running"]);
    }
    assert_eq!(h.settle_count(kind::TASK_FINISHED, &id).await, 1);
    h.assert_nothing_left("after a restart").await;
    launcher.stop().await;
}

/// What the backend cannot honour fails the task, naming the field, before anything exists.
pub async fn refused_resources_create_nothing(target: Arc<dyn Target>) {
    let Some((resources, field)) = target.refused() else {
        println!(
            "refused_resources_create_nothing: the {} backend honours every resource request; nothing to refuse",
            target.name()
        );
        return;
    };
    let mut h = Harness::new(target).await;
    let launcher = h.start().await;
    let id = h.id("refused");
    let mut d = h.task(&id, &p([out("ran")]));
    d.resources = resources;
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_outcome(&f, Outcome::Failed);
    assert!(f.error.as_deref().is_some_and(|e| e.contains(field)), "{f:?}");
    assert_eq!(h.count(kind::TASK_STARTED, &id), 0);
    assert!(h.texts(&id).await.is_empty());
    h.assert_nothing_left("after a refused request").await;
    launcher.stop().await;
}

/// No more than `max_parallel` attempts run at once; the others wait and then run. Each runs
/// for a second, so that two running together are seen so on a platform whose starts are
/// observed by polling (Ray's status every 250 ms) and take a while to begin.
pub async fn at_most_max_parallel_attempts_run_at_once(target: Arc<dyn Target>) {
    let mut h = Harness::new(target).await;
    h.max_parallel = 2;
    let launcher = h.start().await;
    let ids: Vec<String> = (0..5).map(|i| h.id(&format!("par-{i}"))).collect();
    for id in &ids {
        h.dispatch(&h.task(id, &p([Step::Sleep(1000)]))).await;
    }
    for id in &ids {
        assert_outcome(&h.finished(id).await, Outcome::Succeeded);
    }
    let (mut running, mut most) = (0i32, 0i32);
    for (ty, _, _) in &h.seen {
        match ty.as_str() {
            kind::TASK_STARTED => running += 1,
            kind::TASK_FINISHED => running -= 1,
            _ => {}
        }
        most = most.max(running);
    }
    assert_eq!(most, 2, "attempts at once: {:?}", h.types());
    launcher.stop().await;
}

/// With the data directory on a full disk, an attempt never ends in a success with its output
/// gone: the journal cannot record where its lines are, so it is `lost` with an error that
/// names the path and says the disk is full (and retried outside the task's budget).
pub async fn a_full_disk_never_ends_in_a_silent_success(target: Arc<dyn Target>) {
    if !is_root() {
        println!("SKIPPED a_full_disk_never_ends_in_a_silent_success: mounting a small tmpfs needs root");
        return;
    }
    let disk = SmallDisk::mount("4m").expect("a small tmpfs");
    let mut h = Harness::in_dir(target, disk.path.join("data"), None).await;
    let launcher = h.start().await;
    disk.fill(32 * 1024).expect("fill the disk");
    let id = h.id("full");
    let lines = 200_000u32;
    h.dispatch(&h.task(&id, &p([Step::Count(lines)]))).await;
    let f = h.finished(&id).await;
    let got = h.lines(&id).await.len() as u64;
    assert_outcome(&f, Outcome::Lost);
    let error = f.error.clone().unwrap_or_default();
    assert!(
        error.contains(&display(&h.data_dir)) && error.contains("disk is full"),
        "the error does not name the path or say the disk is full: {error}"
    );
    assert_eq!(f.log_lines, got, "{f:?}");
    assert!(
        got < lines as u64,
        "every line arrived although the disk was full: {f:?}"
    );
    launcher.stop().await;
    drop(h);
    drop(disk);
}
