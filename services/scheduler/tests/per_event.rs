//! The work one event costs does not grow with the job: rows written to apply a task's start or
//! success are the same in a job of 4 tasks and of 400, for a fan-in, a chain and a flat fan-out,
//! and a success that releases N dependents costs the same per dependent whatever N is.
//!
//! Rows are counted by SQLite (`total_changes()` on the scheduler's one connection), around the
//! handling of one batch and the timer pass after it, which deletes the batch's confirmed outbox
//! rows.

mod sim;

use std::collections::HashMap;
use std::sync::Arc;

use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::cloudevents::AttributesWriter as _;
use ferry_event::payload::{JobPlanned, Outcome, TaskFinished, TaskStarted};
use ferry_event::{Event, EventBuilder, Topic, kind};
use ferry_scheduler::{Scheduler, Store};
use serde_json::Map;
use sim::*;

struct Rig {
    bus: MemoryBus,
    sub: Subscription,
    sched: Scheduler,
    events: EventBuilder,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(plan: &JobPlanned) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let bus = MemoryBus::new();
        let sub = bus
            .subscribe(Subscribe::new("scheduler", [Topic::Control]).prefetch(1000))
            .await
            .unwrap();
        let cfg = config(&dir.path().join("scheduler.db"));
        let store = Store::open(&cfg.db_url).await.unwrap();
        let sched = Scheduler::new(store, Arc::new(bus.clone()), cfg);
        let mut r = Rig {
            bus,
            sub,
            sched,
            events: EventBuilder::new("ferry/test"),
            _dir: dir,
        };
        let e = r.events.job(kind::JOB_PLANNED, &plan.job_id, plan);
        r.apply(vec![e]).await;
        r
    }

    /// Applies the events as one batch, then a timer pass; returns the rows that wrote.
    async fn apply(&mut self, events: Vec<Event>) -> i64 {
        let before = self.rows().await;
        let n = events.len();
        self.bus.publish(&events).await.unwrap();
        let batch = self.sub.next_batch(1000).await.unwrap().unwrap();
        assert_eq!(batch.len(), n, "the events make one batch");
        self.sched.handle(batch).await.unwrap();
        self.sched.tick().await.unwrap();
        self.rows().await - before
    }

    async fn rows(&self) -> i64 {
        self.sched
            .store()
            .rows_written()
            .await
            .unwrap()
            .expect("SQLite counts rows")
    }

    /// The current attempt of each dispatched task.
    async fn attempts(&self) -> HashMap<String, String> {
        let tasks = self.sched.store().tasks("j").await.unwrap();
        tasks
            .into_iter()
            .filter_map(|t| t.attempt_id.map(|a| (t.task_id, a)))
            .collect()
    }

    async fn start(&mut self, task_id: &str) -> i64 {
        let attempt_id = self.attempts().await[task_id].clone();
        let data = TaskStarted {
            job_id: "j".into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.clone(),
            attempt: 1,
            started_at_ms: 1_000,
            ready_at_ms: 900,
            launcher: "test".into(),
            compute: None,
        };
        let e = self
            .events
            .task(kind::TASK_STARTED, "j", task_id, Some(&attempt_id), &data);
        self.apply(vec![e]).await
    }

    async fn succeed(&mut self, task_id: &str) -> i64 {
        self.succeed_with(task_id, Vec::new()).await
    }

    /// Succeeds a task that submitted `subtasks`.
    async fn succeed_with(&mut self, task_id: &str, subtasks: Vec<Map<String, serde_json::Value>>) -> i64 {
        let e = self.finished(task_id, subtasks).await;
        self.apply(vec![e]).await
    }

    /// The report of a task's current attempt succeeding with `subtasks`.
    async fn finished(&mut self, task_id: &str, subtasks: Vec<Map<String, serde_json::Value>>) -> Event {
        let attempt_id = self.attempts().await[task_id].clone();
        let data = TaskFinished {
            job_id: "j".into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.clone(),
            attempt: 1,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            error: None,
            outputs: Map::new(),
            output_files: Vec::new(),
            log_lines: 0,
            started_at_ms: Some(1_000),
            finished_at_ms: 2_000,
            reason: None,
            compute_ms: None,
            subtasks,
        };
        self.events
            .task(kind::TASK_FINISHED, "j", task_id, Some(&attempt_id), &data)
    }

    /// Starts and succeeds a task; the rows each wrote.
    async fn run(&mut self, task_id: &str) -> (i64, i64) {
        (self.start(task_id).await, self.succeed(task_id).await)
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// `n` tasks `u*` feeding one `sink`.
fn fan_in(n: usize) -> JobPlanned {
    let up = ids("u", n);
    let mut tasks: Vec<_> = up.iter().map(|u| task_spec(u, &[])).collect();
    let deps: Vec<&str> = up.iter().map(String::as_str).collect();
    tasks.push(task_spec("sink", &deps));
    planned("j", tasks, None)
}

/// `t0 → t1 → … → t(n-1)`.
fn chain(n: usize) -> JobPlanned {
    let t = ids("t", n);
    let tasks = (0..n)
        .map(|i| match i {
            0 => task_spec(&t[0], &[]),
            _ => task_spec(&t[i], &[&t[i - 1]]),
        })
        .collect();
    planned("j", tasks, None)
}

/// One `root` feeding `n` tasks `l*`.
fn fan_out(n: usize) -> JobPlanned {
    let mut tasks = vec![task_spec("root", &[])];
    tasks.extend(ids("l", n).iter().map(|l| task_spec(l, &["root"])));
    planned("j", tasks, None)
}

/// `n` independent tasks `f*`.
fn flat(n: usize) -> JobPlanned {
    planned("j", ids("f", n).iter().map(|f| task_spec(f, &[])).collect(), None)
}

#[tokio::test]
async fn an_upstream_success_costs_the_same_whatever_the_number_of_siblings() {
    let mut costs = Vec::new();
    for n in [4, 400] {
        let mut r = Rig::new(&fan_in(n)).await;
        // Every upstream but the last: the sink still waits.
        let first = r.run("u0").await;
        let second = r.run("u1").await;
        for i in 2..n - 1 {
            r.run(&format!("u{i}")).await;
        }
        // The last releases and dispatches the sink.
        let last = r.run(&format!("u{}", n - 1)).await;
        let sink = r.run("sink").await;
        assert_eq!(first, second, "fan-in of {n}: two upstream successes cost alike");
        costs.push((first, last, sink));
    }
    assert_eq!(costs[0], costs[1], "rows per event, fan-in of 4 and of 400");
}

#[tokio::test]
async fn a_hop_of_a_chain_costs_the_same_whatever_the_chain_length() {
    let mut costs = Vec::new();
    for n in [4, 400] {
        let mut r = Rig::new(&chain(n)).await;
        let hops = [r.run("t0").await, r.run("t1").await, r.run("t2").await];
        assert_eq!(hops[1], hops[2], "chain of {n}: hops in the middle cost alike");
        costs.push(hops);
    }
    assert_eq!(costs[0], costs[1], "rows per hop, chain of 4 and of 400");
}

#[tokio::test]
async fn a_task_of_a_big_job_costs_what_one_of_a_small_job_does() {
    let mut costs = Vec::new();
    for n in [4, 400] {
        let mut r = Rig::new(&flat(n)).await;
        costs.push((r.run("f0").await, r.run("f1").await));
    }
    assert_eq!(costs[0], costs[1], "rows per task, flat job of 4 and of 400");
}

#[tokio::test]
async fn a_success_releasing_n_dependents_costs_the_same_per_dependent() {
    let mut released = Vec::new();
    for n in [4, 40, 400] {
        let mut r = Rig::new(&fan_out(n)).await;
        let (_, root) = r.run("root").await;
        assert_eq!(r.attempts().await.len(), n + 1, "all {n} dependents dispatched");
        released.push((n as i64, root));
    }
    // rows = fixed + n × per dependent, with the same fixed part and per-dependent part.
    let per = (released[1].1 - released[0].1) / (released[1].0 - released[0].0);
    let fixed = released[0].1 - per * released[0].0;
    assert!(per > 0, "releasing writes rows per dependent: {released:?}");
    for (n, rows) in released {
        assert_eq!(
            rows,
            fixed + per * n,
            "rows for releasing {n} dependents: {fixed} + {per} each"
        );
    }
}

/// `n` subtasks `s*` of the flow format, none depending on another.
fn subtasks(n: usize) -> Vec<Map<String, serde_json::Value>> {
    ids("s", n)
        .iter()
        .map(|id| {
            serde_json::from_value(serde_json::json!({"id": id, "runner": BACKEND, "command": ["true"]}))
                .unwrap()
        })
        .collect()
}

/// A parent `p` with a dependent `after`, beside `n` independent tasks.
fn parent_in(n: usize) -> JobPlanned {
    let mut tasks = vec![task_spec("p", &[]), task_spec("after", &["p"])];
    tasks.extend(ids("f", n).iter().map(|f| task_spec(f, &[])));
    planned("j", tasks, None)
}

#[tokio::test]
async fn a_subtask_success_costs_the_same_whatever_the_job_size() {
    let mut costs = Vec::new();
    for n in [4, 400] {
        let mut r = Rig::new(&parent_in(n)).await;
        r.start("p").await;
        let submitted = r.succeed_with("p", subtasks(3)).await;
        assert_eq!(
            r.attempts().await.len(),
            n + 1 + 3,
            "the subtasks were dispatched"
        );
        // The first two leave `p` open; the last closes it, which releases `after`.
        let first = r.run("p.s0").await;
        let second = r.run("p.s1").await;
        assert!(
            !r.attempts().await.contains_key("after"),
            "after waits for p's last subtask"
        );
        let last = r.run("p.s2").await;
        assert!(
            r.attempts().await.contains_key("after"),
            "after runs once p's subtree is done"
        );
        assert_eq!(first, second, "job of {n}: two subtask successes cost alike");
        costs.push((submitted, first, last));
    }
    assert_eq!(
        costs[0], costs[1],
        "rows per event, job of 4 and of 400 other tasks"
    );
}

#[tokio::test]
async fn adding_n_subtasks_costs_the_same_per_subtask_and_rewrites_nothing_else() {
    let mut added = Vec::new();
    for k in [4, 40, 400] {
        let mut r = Rig::new(&parent_in(100)).await;
        r.start("p").await;
        let rows = r.succeed_with("p", subtasks(k)).await;
        let tasks = r.sched.store().tasks("j").await.unwrap();
        assert_eq!(tasks.len(), 102 + k, "{k} subtasks joined the job");
        added.push((k as i64, rows));
    }
    // rows = fixed + k × per subtask: the job's other 101 tasks are not written.
    let per = (added[1].1 - added[0].1) / (added[1].0 - added[0].0);
    let fixed = added[0].1 - per * added[0].0;
    assert!(per > 0, "each subtask writes rows: {added:?}");
    assert!(
        fixed < 100,
        "the submission rewrites no other task: {fixed} rows besides the subtasks'"
    );
    for (k, rows) in added {
        assert_eq!(
            rows,
            fixed + per * k,
            "rows for adding {k} subtasks: {fixed} + {per} each"
        );
    }
}

/// A report redelivered (the scheduler died after its commit, before its ack), or sent again
/// under a new event id (a launcher that restarted and reported again), adds nothing: the
/// subtasks joined once.
#[tokio::test]
async fn a_submission_redelivered_or_reported_again_joins_once() {
    let mut r = Rig::new(&parent_in(2)).await;
    r.start("p").await;
    let report = r.finished("p", subtasks(3)).await;
    let mut again = report.clone();
    again.set_id(ferry_event::new_id());
    r.apply(vec![report.clone()]).await;
    let tasks = r.sched.store().tasks("j").await.unwrap();
    let job = r.sched.store().job("j").await.unwrap().unwrap();
    assert_eq!((tasks.len(), job.total, job.unfinished), (7, 7, 6));
    r.apply(vec![report]).await;
    r.apply(vec![again]).await;
    let after = r.sched.store().tasks("j").await.unwrap();
    let job_after = r.sched.store().job("j").await.unwrap().unwrap();
    assert_eq!(after, tasks, "the tasks are as the first report left them");
    assert_eq!(
        job_after, job,
        "the job's counters are as the first report left them"
    );
    let p = after.iter().find(|t| t.task_id == "p").unwrap();
    assert_eq!(p.state, "succeeded");
}

/// A success with subtasks that arrives while its job is being failed: the subtasks join
/// cancelled, the job ends failed, and a job retry runs them; what depends on the parent runs
/// only after them.
#[tokio::test]
async fn subtasks_joining_an_ending_job_are_cancelled_then_run_by_a_retry() {
    let plan = planned(
        "j",
        vec![
            task_spec("p", &[]),
            task_spec("q", &[]),
            task_spec("after", &["p"]),
        ],
        None,
    );
    let mut r = Rig::new(&plan).await;
    r.start("p").await;
    r.start("q").await;
    let mut failed = r.finished("q", Vec::new()).await;
    let mut report: TaskFinished = ferry_event::decode(&failed).unwrap();
    report.outcome = Outcome::Failed;
    report.error = Some("exit status 1".into());
    failed.set_data("application/json", serde_json::to_value(&report).unwrap());
    r.apply(vec![failed]).await;
    r.succeed_with("p", subtasks(2)).await;
    let state = |tasks: &[ferry_scheduler::TaskRow], id: &str| {
        tasks
            .iter()
            .find(|t| t.task_id == id)
            .map(|t| t.state.clone())
            .unwrap()
    };
    let tasks = r.sched.store().tasks("j").await.unwrap();
    assert_eq!(state(&tasks, "p"), "succeeded");
    assert_eq!(state(&tasks, "p.s0"), "cancelled");
    assert_eq!(state(&tasks, "p.s1"), "cancelled");
    assert_eq!(state(&tasks, "after"), "cancelled");
    assert_eq!(r.sched.store().job("j").await.unwrap().unwrap().state, "failed");

    let retry = r.events.job(
        kind::JOB_RETRY,
        "j",
        &ferry_event::payload::JobRetry { job_id: "j".into() },
    );
    r.apply(vec![retry]).await;
    let dispatched = r.attempts().await;
    let tasks = r.sched.store().tasks("j").await.unwrap();
    assert_eq!(state(&tasks, "after"), "waiting", "after waits for p's subtasks");
    for id in ["q", "p.s0", "p.s1"] {
        assert_eq!(state(&tasks, id), "dispatched", "{id}: {tasks:?}");
        assert!(dispatched.contains_key(id));
    }
    r.run("q").await;
    r.run("p.s0").await;
    assert_eq!(
        state(&r.sched.store().tasks("j").await.unwrap(), "after"),
        "waiting"
    );
    r.run("p.s1").await;
    r.run("after").await;
    assert_eq!(
        r.sched.store().job("j").await.unwrap().unwrap().state,
        "succeeded"
    );
}
