//! Subtasks end to end through the scheduler and the scripted launcher, on whichever database
//! the caller's configuration names (SQLite in `tests/subtasks.rs`, PostgreSQL in
//! `tests/postgres.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_bus::MemoryBus;
use ferry_event::payload::{JobRetry, JobState, Outcome, TaskDispatched, TaskState};
use ferry_event::{AttributesReader, kind};
use ferry_runtime::CancellationToken;
use serde_json::json;

use super::*;

const WITHIN: Duration = Duration::from_secs(60);

/// A scheduler and the scripted launcher on one bus, with a recorder.
pub struct SubRig {
    pub bus: MemoryBus,
    pub rec: Recorder,
    pub log: Arc<Mutex<SimLog>>,
    pub db_url: String,
    stop: CancellationToken,
}

impl Drop for SubRig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SubRig {
    pub async fn start(cfg: ferry_scheduler::Config, script: Script) -> SubRig {
        let bus = MemoryBus::new();
        let stop = CancellationToken::new();
        let rec = Recorder::start(&bus, stop.clone()).await;
        let log = launcher(bus.clone(), script, stop.clone()).await;
        declare_scheduler(&bus).await;
        let db_url = cfg.db_url.clone();
        let (_h, t) = start_scheduler(&bus, cfg);
        let s = stop.clone();
        tokio::spawn(async move {
            s.cancelled().await;
            t.cancel();
        });
        SubRig {
            bus,
            rec,
            log,
            db_url,
            stop,
        }
    }

    pub fn states(&self, ty: &str) -> Vec<TaskState> {
        self.rec
            .of_type(ty)
            .iter()
            .map(|e| ferry_event::decode(e).unwrap())
            .collect()
    }

    pub fn dispatched(&self) -> Vec<TaskDispatched> {
        self.rec
            .of_type(kind::TASK_DISPATCHED)
            .iter()
            .map(|e| ferry_event::decode(e).unwrap())
            .collect()
    }

    pub async fn task_ids(&self, job_id: &str) -> Vec<String> {
        let store = ferry_scheduler::Store::open(&self.db_url).await.unwrap();
        let mut ids: Vec<String> = store
            .tasks(job_id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.task_id)
            .collect();
        store.close().await;
        ids.sort();
        ids
    }
}

/// Subtasks in the flow's task format: `(id, dependsOn)`.
pub fn submission(tasks: &[(&str, &[&str])]) -> String {
    let tasks: Vec<serde_json::Value> = tasks
        .iter()
        .map(|(id, deps)| json!({"id": id, "runner": BACKEND, "command": ["true"], "dependsOn": deps}))
        .collect();
    serde_json::Value::Array(tasks).to_string()
}

/// A script by task id and attempt number (from 1): the plan, or a plain success.
pub fn by_attempt(f: impl Fn(&str, u32) -> Option<Plan> + Send + Sync + 'static) -> Script {
    let attempts: Mutex<HashMap<String, u32>> = Mutex::default();
    Arc::new(move |d: &TaskDispatched| {
        let n = {
            let mut all = attempts.lock().unwrap();
            let n = all.entry(d.task_id.clone()).or_default();
            *n += 1;
            *n
        };
        f(&d.task_id, n).unwrap_or_else(|| succeed(1))
    })
}

fn with_subtasks(outcome: Outcome, subtasks: String) -> Plan {
    Plan {
        outcome,
        subtasks: Some(subtasks),
        ..succeed(1)
    }
}

/// `split` fails once having written subtasks, then succeeds submitting `a`, `b` after `a`,
/// and `nest`, which submits `x` and `y` after `x`; `after` depends on `split`. The failed
/// attempt's subtasks never appear; the retry's join once; `after` runs only once all five
/// subtasks succeeded.
pub async fn subtasks_join_on_success_and_dependents_wait_for_the_subtree(cfg: ferry_scheduler::Config) {
    let script = by_attempt(|task, n| match (task, n) {
        ("split", 1) => Some(with_subtasks(Outcome::Failed, submission(&[("ghost", &[])]))),
        ("split", _) => Some(with_subtasks(
            Outcome::Succeeded,
            submission(&[("a", &[]), ("b", &["a"]), ("nest", &[])]),
        )),
        ("split.nest", _) => Some(with_subtasks(
            Outcome::Succeeded,
            submission(&[("x", &[]), ("y", &["x"])]),
        )),
        _ => None,
    });
    let r = SubRig::start(cfg, script).await;
    let mut split = task_spec("split", &[]);
    split.retry.attempts = 2;
    split.retry.initial_ms = 10;
    let tasks = vec![split, task_spec("after", &["split"])];
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);

    let all = [
        "after",
        "split",
        "split.a",
        "split.b",
        "split.nest",
        "split.nest.x",
        "split.nest.y",
    ];
    assert_eq!(
        r.task_ids("j").await,
        all,
        "the failed attempt's subtask never joined"
    );
    let dispatched: Vec<String> = r.dispatched().into_iter().map(|d| d.task_id).collect();
    assert!(!dispatched.iter().any(|t| t.contains("ghost")), "{dispatched:?}");
    for id in &all[2..] {
        assert_eq!(
            dispatched.iter().filter(|t| t == id).count(),
            1,
            "{id} dispatched once: {dispatched:?}"
        );
    }
    let order = r.log.lock().unwrap().order["j"].clone();
    let at = |id: &str| {
        order
            .iter()
            .position(|t| t == id)
            .unwrap_or_else(|| panic!("{id}: {order:?}"))
    };
    for id in &all[2..] {
        assert!(at("after") > at(id), "after ran after {id}: {order:?}");
    }
    assert!(at("split.b") > at("split.a"), "{order:?}");
    assert!(at("split.nest.y") > at("split.nest.x"), "{order:?}");
    assert_eq!(r.log.lock().unwrap().attempts_of("j", "split"), 2);

    let succeeded = r.states(kind::TASK_SUCCEEDED);
    let split = succeeded.iter().find(|s| s.task_id == "split").unwrap();
    assert_eq!(split.subtasks, ["split.a", "split.b", "split.nest"]);
    let nest = succeeded.iter().find(|s| s.task_id == "split.nest").unwrap();
    assert_eq!(nest.subtasks, ["split.nest.x", "split.nest.y"]);
    let end: JobState = ferry_event::decode(&r.rec.of_type(kind::JOB_SUCCEEDED)[0]).unwrap();
    assert_eq!(end.tasks, 7);
}

/// A subtask that fails for good fails the job; a job retry runs it again, and its success
/// then releases what waited for its parent.
pub async fn a_job_retry_reruns_a_failed_subtask_then_releases_the_parents_dependents(
    cfg: ferry_scheduler::Config,
) {
    let script = by_attempt(|task, n| match (task, n) {
        ("p", _) => Some(with_subtasks(Outcome::Succeeded, submission(&[("s", &[])]))),
        ("p.s", 1) => Some(Plan {
            outcome: Outcome::Failed,
            ..succeed(1)
        }),
        _ => None,
    });
    let r = SubRig::start(cfg, script).await;
    let tasks = vec![task_spec("p", &[]), task_spec("after", &["p"])];
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", tasks, None)).await;
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_FAILED);
    assert_eq!(r.log.lock().unwrap().attempts_of("j", "after"), 0);

    let before = r.rec.events.lock().unwrap().len();
    publish(&r.bus, kind::JOB_RETRY, "j", &JobRetry { job_id: "j".into() }).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let ended = r.rec.events.lock().unwrap()[before..]
            .iter()
            .any(|e| e.ty() == kind::JOB_SUCCEEDED);
        if ended {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried job never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let log = r.log.lock().unwrap();
    assert_eq!(log.attempts_of("j", "p"), 1, "the parent is not run again");
    assert_eq!(log.attempts_of("j", "p.s"), 2);
    assert_eq!(log.attempts_of("j", "after"), 1);
    let order = &log.order["j"];
    assert_eq!(order.last().map(String::as_str), Some("after"), "{order:?}");
}

/// Submissions refused: not valid as a flow's tasks, more than an attempt may submit, nested
/// too deep, growing the job past its limit. Each fails its attempt with a message that says where and why; nothing joins.
pub async fn invalid_and_over_limit_submissions_fail_the_attempt(mut cfg: ferry_scheduler::Config) {
    cfg.max_subtasks_per_attempt = 2;
    cfg.max_subtask_depth = 1;
    cfg.max_tasks_per_job = 3;
    let script = by_attempt(|task, _| {
        let sub = |s: String| Some(with_subtasks(Outcome::Succeeded, s));
        match task {
            "bad" => sub(submission(&[("a", &[]), ("b", &["zz"])])),
            "many" => sub(submission(&[("a", &[]), ("b", &[]), ("c", &[])])),
            "deep" => sub(submission(&[("inner", &[])])),
            "deep.inner" => sub(submission(&[("x", &[])])),
            "big" => sub(submission(&[("a", &[]), ("b", &[])])),
            _ => None,
        }
    });
    let r = SubRig::start(cfg, script).await;
    for (job, task) in [
        ("j-bad", "bad"),
        ("j-many", "many"),
        ("j-deep", "deep"),
        ("j-big", "big"),
    ] {
        // `big`'s job has another task: its 2 subtasks would make it 4, past 3.
        let mut tasks = vec![task_spec(task, &[])];
        if task == "big" {
            tasks.push(task_spec("other", &[]));
        }
        publish(&r.bus, kind::JOB_PLANNED, job, &planned(job, tasks, None)).await;
    }
    for job in ["j-bad", "j-many", "j-deep", "j-big"] {
        assert_eq!(r.rec.wait_terminal(job, WITHIN).await, kind::JOB_FAILED, "{job}");
    }
    let failed = r.states(kind::TASK_FAILED);
    let error = |task: &str| {
        failed
            .iter()
            .find(|s| s.task_id == task)
            .and_then(|s| s.error.clone())
            .unwrap_or_else(|| panic!("{task} failed: {failed:?}"))
    };
    let bad = error("bad");
    assert!(bad.contains("subtasks[1].dependsOn"), "{bad}");
    assert!(bad.contains("zz"), "{bad}");
    let many = error("many");
    assert!(
        many.contains("submitted 3 subtasks") && many.contains("--max-subtasks-per-attempt"),
        "{many}"
    );
    let deep = error("deep.inner");
    assert!(deep.contains("--max-subtask-depth"), "{deep}");
    assert_eq!(r.task_ids("j-bad").await, ["bad"]);
    assert_eq!(r.task_ids("j-many").await, ["many"]);
    assert_eq!(r.task_ids("j-deep").await, ["deep", "deep.inner"]);
    let big = error("big");
    assert!(
        big.contains("grow job j-big to 4 tasks") && big.contains("--max-tasks-per-job"),
        "{big}"
    );
    assert_eq!(r.task_ids("j-big").await, ["big", "other"]);
}
