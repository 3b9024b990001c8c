//! The scheduler driven through the bus by a scripted launcher.

mod sim;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_bus::MemoryBus;
use ferry_event::payload::{
    JobCancel, JobRetry, JobState, Outcome, PlannedTask, TaskDispatched, TaskState, TasksState,
};
use ferry_event::template::{Part, Template};
use ferry_event::{AttributesReader, kind};
use ferry_runtime::CancellationToken;
use ferry_scheduler::{Clock, ManualClock};
use serde_json::json;
use sim::*;

const WITHIN: Duration = Duration::from_secs(20);

struct Rig {
    bus: MemoryBus,
    db_url: String,
    rec: Recorder,
    log: Arc<std::sync::Mutex<SimLog>>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn rig(script: Script) -> Rig {
    rig_with(script, |_| {}).await
}

async fn rig_with(script: Script, tune: impl FnOnce(&mut ferry_scheduler::Config)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scheduler.db");
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    let log = launcher(bus.clone(), script, stop.clone()).await;
    declare_scheduler(&bus).await;
    let mut cfg = config(&db);
    tune(&mut cfg);
    let db_url = cfg.db_url.clone();
    let (_h, t) = start_scheduler(&bus, cfg);
    let s = stop.clone();
    tokio::spawn(async move {
        s.cancelled().await;
        t.cancel();
    });
    Rig {
        bus,
        db_url,
        rec,
        log,
        stop,
        _dir: dir,
    }
}

impl Rig {
    /// Waits until the scheduler has recorded the task in `state`.
    async fn wait_task_state(&self, job_id: &str, task_id: &str, state: &str) {
        let store = ferry_scheduler::Store::open(&self.db_url).await.unwrap();
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let tasks = store.tasks(job_id).await.unwrap();
            if tasks.iter().any(|t| t.task_id == task_id && t.state == state) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {job_id}/{task_id} never became {state}: {tasks:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        store.close().await;
    }

    /// Waits for the `n`th event of type `ty` and returns it.
    async fn wait_nth(&self, ty: &str, n: usize) -> TaskState {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            if let Some(s) = task_states(&self.rec, ty).into_iter().nth(n - 1) {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "no {ty} number {n}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A clock that moves only when a test moves it, and the scheduler set to read it.
fn manual_clock(c: &mut ferry_scheduler::Config) -> ManualClock {
    let clock = ManualClock::new(1_000_000);
    c.clock = Arc::new(clock.clone());
    clock
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn ok_script() -> Script {
    Arc::new(|_| succeed(1))
}

fn task_states(rec: &Recorder, ty: &str) -> Vec<TaskState> {
    rec.of_type(ty)
        .iter()
        .map(|e| ferry_event::decode(e).unwrap())
        .collect()
}

/// Every task reported cancelled, with the reason: one by one (`task.cancelled`, an attempt
/// that was stopped) or together (`tasks.cancelled`, tasks that had not started).
fn cancelled(rec: &Recorder) -> Vec<(String, Option<String>)> {
    let mut all: Vec<(String, Option<String>)> = task_states(rec, kind::TASK_CANCELLED)
        .into_iter()
        .map(|s| (s.task_id, s.error))
        .collect();
    for e in rec.of_type(kind::TASKS_CANCELLED) {
        let s: TasksState = ferry_event::decode(&e).unwrap();
        all.extend(s.tasks.into_iter().map(|t| (t.task_id, s.error.clone())));
    }
    all
}

fn dispatched(rec: &Recorder) -> Vec<TaskDispatched> {
    rec.of_type(kind::TASK_DISPATCHED)
        .iter()
        .map(|e| ferry_event::decode(e).unwrap())
        .collect()
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_with_outputs_passed_along() {
    let script: Script = Arc::new(|d: &TaskDispatched| {
        let mut p = succeed(5);
        if d.task_id == "a" {
            p.outputs = serde_json::from_value(json!({"rows": 42, "name": "x; rm -rf /"})).unwrap();
        }
        p
    });
    let r = rig(script).await;
    let mut b = task_spec("b", &["a"]);
    b.command = vec![Template(vec![
        Part::Text("--rows=".into()),
        Part::Output {
            task: "a".into(),
            key: "rows".into(),
        },
    ])];
    let mut c = task_spec("c", &["a"]);
    c.env.insert(
        "NAME".into(),
        Template(vec![Part::Output {
            task: "a".into(),
            key: "name".into(),
        }]),
    );
    let d = task_spec("d", &["b", "c"]);
    publish(
        &r.bus,
        kind::JOB_PLANNED,
        "j1",
        &planned("j1", vec![task_spec("a", &[]), b, c, d], None),
    )
    .await;
    assert_eq!(r.rec.wait_terminal("j1", WITHIN).await, kind::JOB_SUCCEEDED);

    let order = r.log.lock().unwrap().order["j1"].clone();
    assert_eq!(order[0], "a");
    assert_eq!(order[3], "d");
    let ds = dispatched(&r.rec);
    let b = ds.iter().find(|d| d.task_id == "b").unwrap();
    assert_eq!(b.command[0].as_text().unwrap(), "--rows=42");
    let c = ds.iter().find(|d| d.task_id == "c").unwrap();
    assert_eq!(c.env["NAME"].as_text().unwrap(), "x; rm -rf /");
    assert!(r.log.lock().unwrap().unfilled.is_empty());
    let succeeded = task_states(&r.rec, kind::TASK_SUCCEEDED);
    assert_eq!(succeeded.len(), 4);
    assert_eq!(
        succeeded.iter().find(|s| s.task_id == "a").unwrap().outputs["rows"],
        42
    );
}

/// Backoff on the scheduler's clock: each retry is due `initial`, then twice that, after the
/// failure, and is dispatched only once the clock gets there.
#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_then_succeed() {
    let tries = Arc::new(AtomicU32::new(0));
    let t = tries.clone();
    let script: Script = Arc::new(move |_| {
        let n = t.fetch_add(1, Ordering::SeqCst);
        Plan {
            outcome: if n < 2 {
                Outcome::Failed
            } else {
                Outcome::Succeeded
            },
            ..succeed(1)
        }
    });
    let mut clock = None;
    let r = rig_with(script, |c| clock = Some(manual_clock(c))).await;
    let clock = clock.unwrap();
    let start = clock.now_ms();
    let mut flaky = task_spec("flaky", &[]);
    flaky.retry.attempts = 3;
    flaky.retry.initial_ms = 60_000;
    flaky.retry.backoff = ferry_event::payload::Backoff::Exponential;
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", vec![flaky], None)).await;
    for (n, delay) in [(1, 60_000), (2, 120_000)] {
        let retrying = r.wait_nth(kind::TASK_RETRYING, n).await;
        let now = clock.now_ms();
        assert_eq!(retrying.retry_at_ms, Some(now + delay), "retry {n}");
        assert_eq!(
            dispatched(&r.rec).len(),
            n,
            "dispatched again before the retry was due"
        );
        clock.set(now + delay);
    }
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);

    let ds = dispatched(&r.rec);
    assert_eq!(ds.iter().map(|d| d.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        ds.iter().map(|d| d.ready_at_ms - start).collect::<Vec<_>>(),
        [0, 60_000, 180_000],
        "each attempt became ready when its backoff ended"
    );
    let done = &task_states(&r.rec, kind::TASK_SUCCEEDED)[0];
    assert_eq!(done.attempts, 3);
}

#[tokio::test]
async fn a_task_failing_for_good_cancels_its_running_sibling_and_pending_tasks() {
    let script: Script = Arc::new(|d: &TaskDispatched| match d.task_id.as_str() {
        "bad" => Plan {
            outcome: Outcome::Failed,
            ..succeed(20)
        },
        _ => succeed(60_000),
    });
    let r = rig(script).await;
    let tasks = vec![
        task_spec("bad", &[]),
        task_spec("slow", &[]),
        task_spec("after", &["bad"]),
    ];
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_FAILED);

    assert_eq!(r.log.lock().unwrap().running_in("j"), 0, "the sibling still runs");
    let cancelled: Vec<String> = cancelled(&r.rec).into_iter().map(|(t, _)| t).collect();
    assert!(
        cancelled.contains(&"slow".to_string()) && cancelled.contains(&"after".to_string()),
        "{cancelled:?}"
    );
    let failed = task_states(&r.rec, kind::TASK_FAILED);
    assert_eq!(failed.len(), 1);
    assert!(failed[0].error.as_deref().unwrap().contains("scripted failed"));
    let job: JobState = ferry_event::decode(&r.rec.of_type(kind::JOB_FAILED)[0]).unwrap();
    assert!(job.reason.unwrap().contains("task bad failed"));
    assert_eq!(r.log.lock().unwrap().attempts_of("j", "after"), 0);
}

#[tokio::test]
async fn a_namespace_quota_bounds_its_running_tasks_across_jobs() {
    let script: Script = Arc::new(|d: &TaskDispatched| succeed(if d.job_id == "free" { 300 } else { 15 }));
    let r = rig_with(script, |c| {
        c.namespace_quotas = [("team-a".to_string(), 3), ("closed".to_string(), 0)].into();
    })
    .await;
    let tasks = |n: usize| -> Vec<PlannedTask> { (0..n).map(|i| task_spec(&format!("t{i}"), &[])).collect() };
    for job_id in ["a1", "a2"] {
        let mut job = planned(job_id, tasks(8), None);
        job.namespace = Some("team-a".into());
        publish(&r.bus, kind::JOB_PLANNED, job_id, &job).await;
    }
    let mut closed = planned("shut", tasks(1), None);
    closed.namespace = Some("closed".into());
    publish(&r.bus, kind::JOB_PLANNED, "shut", &closed).await;
    // Jobs of other namespaces (here `default`) are not held back by it.
    publish(
        &r.bus,
        kind::JOB_PLANNED,
        "free",
        &planned("free", tasks(6), None),
    )
    .await;
    for job_id in ["a1", "a2", "free"] {
        assert_eq!(r.rec.wait_terminal(job_id, WITHIN).await, kind::JOB_SUCCEEDED);
    }
    // Attempts of team-a's two jobs out at once: dispatched and not yet finished, in the order
    // the bus carried them (a dispatch that a finish made room for comes after that finish).
    let (mut out, mut most) = (0i64, 0i64);
    for e in r.rec.events.lock().unwrap().iter() {
        let team_a = matches!(ferry_event::envelope::job_of(e).as_deref(), Some("a1" | "a2"));
        match e.ty() {
            kind::TASK_DISPATCHED if team_a => out += 1,
            kind::TASK_FINISHED if team_a => out -= 1,
            _ => {}
        }
        most = most.max(out);
    }
    assert_eq!(most, 3, "team-a's quota is 3 running tasks across its jobs");
    assert!(r.log.lock().unwrap().max_running["free"] >= 4);
    // A namespace whose quota is 0 runs nothing.
    assert!(r.rec.terminal("shut").is_none());
    assert_eq!(r.log.lock().unwrap().attempts_of("shut", "t0"), 0);
}

#[tokio::test]
async fn concurrency_limits_running_tasks_and_priority_orders_them() {
    let r = rig(Arc::new(|_| succeed(15))).await;
    let tasks: Vec<PlannedTask> = (0..10)
        .map(|i| {
            let mut t = task_spec(&format!("t{i}"), &[]);
            t.priority = i;
            t
        })
        .collect();
    let mut job = planned("j", tasks, Some(2));
    job.namespace = Some("team-a".into());
    publish(&r.bus, kind::JOB_PLANNED, "j", &job).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    // Dispatches carry the flow, namespace and priority, for backends' labels and classes.
    for d in dispatched(&r.rec) {
        assert_eq!(d.flow_id.as_deref(), Some("test"));
        assert_eq!(d.namespace.as_deref(), Some("team-a"));
        assert_eq!(format!("t{}", d.priority), d.task_id);
    }
    let log = r.log.lock().unwrap();
    assert_eq!(log.max_running["j"], 2);
    let order = &log.order["j"];
    // Higher priority first: the first two started are the two highest.
    let mut first_two = order[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, ["t8", "t9"]);
    assert_eq!(order.last().unwrap(), "t0");
}

#[tokio::test]
async fn cancelling_a_job_stops_running_attempts_and_never_starts_pending_ones() {
    let r = rig(Arc::new(|_| succeed(60_000))).await;
    let tasks = vec![task_spec("a", &[]), task_spec("b", &[]), task_spec("c", &["a"])];
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    // Wait until both roots run.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while r.log.lock().unwrap().running_in("j") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "tasks did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish(
        &r.bus,
        kind::JOB_CANCEL,
        "j",
        &JobCancel {
            job_id: "j".into(),
            reason: Some("operator".into()),
        },
    )
    .await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_CANCELLED);
    let log = r.log.lock().unwrap();
    assert_eq!(log.running_in("j"), 0);
    assert_eq!(log.attempts_of("j", "c"), 0);
    assert_eq!(cancelled(&r.rec).len(), 3);
}

/// Cancelling a big job costs a few events, not one per task: the tasks that had not started
/// are reported together, at most `TasksState::MAX_TASKS` to an event, each exactly once.
#[tokio::test]
async fn cancelling_a_big_job_reports_its_pending_tasks_together() {
    let r = rig(Arc::new(|_| succeed(60_000))).await;
    let n = 2 * TasksState::MAX_TASKS + 500;
    let mut tasks = vec![task_spec("root", &[])];
    tasks.extend((0..n).map(|i| task_spec(&format!("w{i}"), &["root"])));
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while r.log.lock().unwrap().running_in("j") < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the root did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancel = JobCancel {
        job_id: "j".into(),
        reason: Some("operator".into()),
    };
    publish(&r.bus, kind::JOB_CANCEL, "j", &cancel).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_CANCELLED);
    assert_eq!(r.rec.of_type(kind::TASKS_CANCELLED).len(), 3);
    let one_by_one: Vec<String> = task_states(&r.rec, kind::TASK_CANCELLED)
        .into_iter()
        .map(|s| s.task_id)
        .collect();
    assert_eq!(
        one_by_one,
        ["root"],
        "only the stopped attempt has an event of its own"
    );
    let all = cancelled(&r.rec);
    assert_eq!(all.len(), n + 1);
    let distinct: HashSet<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(distinct.len(), n + 1, "a task reported twice");
    assert!(all.iter().all(|(_, e)| e.as_deref() == Some("operator")));
}

/// A cancel can overtake its job's plan (the planner is still planning a big job when Ctrl-C
/// comes): the job ends cancelled as soon as it is planned, and nothing of it ever runs.
#[tokio::test]
async fn a_cancel_that_comes_before_the_plan_ends_the_job_once_planned() {
    let r = rig(Arc::new(|_| succeed(5))).await;
    let cancel = JobCancel {
        job_id: "j".into(),
        reason: Some("interrupted".into()),
    };
    publish(&r.bus, kind::JOB_CANCEL, "j", &cancel).await;
    // The cancel is applied (and kept) before the plan arrives.
    let store = ferry_scheduler::Store::open(&r.db_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if store.early_cancels().await.unwrap() == ["j"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the early cancel was never kept"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tasks = vec![task_spec("a", &[]), task_spec("b", &["a"])];
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_CANCELLED);
    assert!(
        dispatched(&r.rec).is_empty(),
        "nothing of a cancelled job is dispatched"
    );
    let cancelled = cancelled(&r.rec);
    assert_eq!(cancelled.len(), 2);
    assert!(
        cancelled
            .iter()
            .all(|(_, error)| error.as_deref() == Some("interrupted"))
    );
    assert_eq!(
        r.rec.of_type(kind::TASKS_CANCELLED).len(),
        1,
        "tasks that never started are reported together"
    );
    let job = store.job("j").await.unwrap().unwrap();
    assert_eq!(job.state, "cancelled");
    assert!(
        store.early_cancels().await.unwrap().is_empty(),
        "the kept cancel is used up"
    );
    store.close().await;
}

#[tokio::test]
async fn retrying_a_failed_job_requeues_only_failed_and_cancelled_tasks() {
    let fail_once = Arc::new(AtomicU32::new(0));
    let f = fail_once.clone();
    let script: Script = Arc::new(move |d: &TaskDispatched| {
        if d.task_id == "b" && f.fetch_add(1, Ordering::SeqCst) == 0 {
            Plan {
                outcome: Outcome::Failed,
                ..succeed(1)
            }
        } else {
            succeed(1)
        }
    });
    let r = rig(script).await;
    let tasks = vec![
        task_spec("a", &[]),
        task_spec("b", &["a"]),
        task_spec("c", &["b"]),
    ];
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_FAILED);
    r.rec.events.lock().unwrap().clear();
    publish(&r.bus, kind::JOB_RETRY, "j", &JobRetry { job_id: "j".into() }).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    // The re-queued tasks are reported together, as pending again.
    let requeued: Vec<TasksState> = r
        .rec
        .of_type(kind::TASKS_RETRYING)
        .iter()
        .map(|e| ferry_event::decode(e).unwrap())
        .collect();
    assert_eq!(requeued.len(), 1);
    let mut ids: Vec<&str> = requeued[0].tasks.iter().map(|t| t.task_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["b", "c"]);
    assert_eq!(requeued[0].state, ferry_event::payload::TaskStatus::Pending);
    let log = r.log.lock().unwrap();
    assert_eq!(
        log.attempts_of("j", "a"),
        1,
        "a succeeded before and must not run again"
    );
    assert_eq!(log.attempts_of("j", "b"), 2);
    assert_eq!(log.attempts_of("j", "c"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_retries_the_task_as_a_new_attempt_without_overlap() {
    let first = Arc::new(AtomicU32::new(0));
    let f = first.clone();
    // The first attempt runs on, but its first heartbeat is due a third of the lease (10 s)
    // after it started: the scheduler's clock passes the lease before, and must give up on it.
    let script: Script = Arc::new(move |_| {
        if f.fetch_add(1, Ordering::SeqCst) == 0 {
            succeed(60_000)
        } else {
            succeed(1)
        }
    });
    let mut clock = None;
    let r = rig_with(script, |c| {
        clock = Some(manual_clock(c));
        c.lease = Duration::from_secs(30);
    })
    .await;
    let clock = clock.unwrap();
    publish(
        &r.bus,
        kind::JOB_PLANNED,
        "j",
        &planned("j", vec![task_spec("a", &[])], None),
    )
    .await;
    // The lease runs from the start the scheduler recorded.
    r.wait_task_state("j", "a", "running").await;
    clock.advance(Duration::from_secs(30) + Duration::from_millis(1));
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    let log = r.log.lock().unwrap();
    assert_eq!(log.attempts_of("j", "a"), 2);
    // The launcher reads the first attempt's cancel and the second's dispatch on two
    // subscriptions, which nothing orders (on two threads the dispatch often comes first): a
    // dispatch of a task whose earlier attempt still runs there stops that one before it
    // creates anything.
    assert!(
        log.overlaps.is_empty(),
        "two attempts ran at once: {:?}",
        log.overlaps
    );
    let retrying = task_states(&r.rec, kind::TASK_RETRYING);
    assert!(
        retrying[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no heartbeat from the launcher for 30s"),
        "{retrying:?}"
    );
}

/// A task past its timeout whose launcher never reports it is ended by the scheduler once the
/// grace for the launcher to do so has passed too.
#[tokio::test]
async fn a_task_past_its_timeout_is_ended_when_its_launcher_does_not() {
    let mut clock = None;
    let r = rig_with(Arc::new(|_| succeed(60_000)), |c| {
        clock = Some(manual_clock(c));
        c.lease = Duration::from_secs(3600);
        c.grace = Duration::from_secs(5);
    })
    .await;
    let clock = clock.unwrap();
    let mut t = task_spec("a", &[]);
    t.timeout_ms = Some(600_000);
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", vec![t], None)).await;
    r.wait_task_state("j", "a", "running").await;
    clock.advance(Duration::from_millis(600_000 + 5_000 + 1));
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_FAILED);
    let failed = task_states(&r.rec, kind::TASK_FAILED);
    assert!(
        failed[0].error.as_deref().unwrap().contains("timed out"),
        "{failed:?}"
    );
    let cancels = r.rec.of_type(kind::TASK_CANCEL);
    assert_eq!(cancels.len(), 1, "the launcher is told to stop the attempt");
    // The scheduler gave up on the attempt; the launcher stops it on the cancel.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while r.log.lock().unwrap().running_in("j") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the attempt still runs");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn lost_attempts_do_not_use_up_retries() {
    let n = Arc::new(AtomicU32::new(0));
    let c = n.clone();
    let script: Script = Arc::new(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            Plan {
                outcome: Outcome::Lost,
                ..succeed(1)
            }
        } else {
            succeed(1)
        }
    });
    let r = rig(script).await;
    publish(
        &r.bus,
        kind::JOB_PLANNED,
        "j",
        &planned("j", vec![task_spec("a", &[])], None),
    )
    .await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    assert_eq!(r.log.lock().unwrap().attempts_of("j", "a"), 3);
}

#[tokio::test]
async fn a_missing_upstream_output_fails_the_task_with_a_clear_error() {
    let r = rig(ok_script()).await;
    let mut b = task_spec("b", &["a"]);
    b.command = vec![Template(vec![Part::Output {
        task: "a".into(),
        key: "rows".into(),
    }])];
    publish(
        &r.bus,
        kind::JOB_PLANNED,
        "j",
        &planned("j", vec![task_spec("a", &[]), b], None),
    )
    .await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_FAILED);
    let failed = task_states(&r.rec, kind::TASK_FAILED);
    let err = failed[0].error.clone().unwrap();
    assert!(
        err.contains("outputs.a.rows") && err.contains("produced no output"),
        "{err}"
    );
    assert_eq!(r.log.lock().unwrap().attempts_of("j", "b"), 0);
}

#[tokio::test]
async fn an_invalid_plan_fails_the_job_instead_of_hanging() {
    let r = rig(ok_script()).await;
    let tasks = vec![task_spec("a", &["b"]), task_spec("b", &["a"])];
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_FAILED);
    let job: JobState = ferry_event::decode(&r.rec.of_type(kind::JOB_FAILED)[0]).unwrap();
    assert!(job.reason.unwrap().contains("cycle"));
}

#[tokio::test]
async fn duplicate_events_are_applied_once() {
    let r = rig(Arc::new(|_| succeed(20))).await;
    let tasks = vec![task_spec("a", &[]), task_spec("b", &["a"])];
    let plan = planned("j", tasks, None);
    let e = ferry_event::EventBuilder::new("t").job(kind::JOB_PLANNED, "j", &plan);
    // The same event twice (redelivery), and a second planned event for the same job.
    use ferry_bus::Bus;
    r.bus.publish(&[e.clone(), e]).await.unwrap();
    publish(&r.bus, kind::JOB_PLANNED, "j", &plan).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.rec.of_type(kind::JOB_STARTED).len(), 1);
    assert_eq!(dispatched(&r.rec).len(), 2);
}

/// The ids kept to recognise redeliveries are forgotten once older than the retention, so the
/// inbox does not grow for ever.
#[tokio::test]
async fn the_inbox_forgets_event_ids_older_than_its_retention() {
    let mut clock = None;
    let r = rig_with(Arc::new(|_| succeed(5)), |c| clock = Some(manual_clock(c))).await;
    let clock = clock.unwrap();
    publish(
        &r.bus,
        kind::JOB_PLANNED,
        "j",
        &planned("j", vec![task_spec("a", &[])], None),
    )
    .await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    let store = ferry_scheduler::Store::open(&r.db_url).await.unwrap();
    let held = store.inbox_len().await.unwrap();
    assert!(held >= 3, "planned, started and finished are recorded: {held}");

    // Within the retention, an hour on: nothing goes.
    clock.advance(Duration::from_secs(3600) + Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.inbox_len().await.unwrap(), held);

    clock.advance(Duration::from_secs(7 * 24 * 3600));
    let deadline = tokio::time::Instant::now() + WITHIN;
    while store.inbox_len().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the inbox was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.close().await;
}

#[tokio::test]
async fn a_malformed_control_event_is_dead_lettered_and_the_rest_applied() {
    let r = rig(ok_script()).await;
    publish(&r.bus, kind::JOB_PLANNED, "bad", &json!({"jobId": 7})).await;
    publish(
        &r.bus,
        kind::JOB_PLANNED,
        "j",
        &planned("j", vec![task_spec("a", &[])], None),
    )
    .await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    let dead = r.bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("not valid"), "{}", dead[0].reason);
}

#[tokio::test]
async fn a_scheduler_killed_mid_job_and_restarted_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    let log = launcher(bus.clone(), Arc::new(|_| succeed(2)), stop.clone()).await;
    declare_scheduler(&bus).await;
    let n = 300;
    let mut tasks = vec![task_spec("root", &[])];
    tasks.extend((0..n).map(|i| task_spec(&format!("t{i}"), &["root"])));
    let all: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    tasks.push(task_spec("join", &all));
    publish(&bus, kind::JOB_PLANNED, "j", &planned("j", tasks, Some(16))).await;

    // A killed instance's last commit can land after the next one read the outbox as it
    // started (aborting drops the future, not the database connection finishing the commit; a
    // database server finishes a dead process's commit the same way): its events are then
    // published by the sweep for orphaned outbox rows, made short here to come within WITHIN.
    let config = |db: &std::path::Path| {
        let mut c = config(db);
        c.orphan_sweep = Duration::from_millis(200);
        c
    };
    // Kill it three times while the job runs, each time without any chance to clean up.
    for round in 0..3 {
        let (handle, _token) = start_scheduler(&bus, config(&db));
        let target = 50 * (round + 1);
        let deadline = tokio::time::Instant::now() + WITHIN;
        while rec.of_type(kind::TASK_SUCCEEDED).len() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress in round {round}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        handle.abort();
        let _ = handle.await;
    }
    let (_handle, token) = start_scheduler(&bus, config(&db));
    assert_eq!(rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);

    let log = std::mem::take(&mut *log.lock().unwrap());
    for t in std::iter::once("root").chain(all.iter().copied()).chain(["join"]) {
        assert_eq!(
            log.attempts_of("j", t),
            1,
            "task {t} ran {} times",
            log.attempts_of("j", t)
        );
    }
    assert!(log.overlaps.is_empty());
    let store = ferry_scheduler::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let job = store.job("j").await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.unfinished, job.active),
        ("succeeded", 0, 0)
    );
    assert!(
        store
            .tasks("j")
            .await
            .unwrap()
            .iter()
            .all(|t| t.state == "succeeded" && t.attempts == 1)
    );
    token.cancel();
    stop.cancel();
}

#[tokio::test]
async fn dispatches_not_picked_up_are_bounded_per_backend() {
    let dir = tempfile::tempdir().unwrap();
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    declare_scheduler(&bus).await;
    let mut cfg = config(&dir.path().join("s.db"));
    cfg.max_waiting = 3;
    let (_h, token) = start_scheduler(&bus, cfg);
    let tasks: Vec<PlannedTask> = (0..10).map(|i| task_spec(&format!("t{i}"), &[])).collect();
    publish(&bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    // No launcher picks anything up: three dispatches, then the rest wait in the database.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while dispatched(&rec).len() < 3 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = dispatched(&rec);
    assert_eq!(sent.len(), 3);
    // One starts: one more may go.
    let d = &sent[0];
    let started = ferry_event::payload::TaskStarted {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
        attempt: d.attempt,
        started_at_ms: ferry_event::now_ms(),
        ready_at_ms: d.ready_at_ms,
        launcher: "test".into(),
        compute: None,
    };
    let e = ferry_event::EventBuilder::new("t").task(
        kind::TASK_STARTED,
        "j",
        &d.task_id,
        Some(&d.attempt_id),
        &started,
    );
    use ferry_bus::Bus;
    bus.publish(&[e]).await.unwrap();
    while dispatched(&rec).len() < 4 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dispatched(&rec).len(), 4);
    token.cancel();
    stop.cancel();
}
