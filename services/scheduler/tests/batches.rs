//! The scheduler's handling of one batch of events, driven directly: starts and successes in a
//! batch are applied together, and must give what applying them one by one would.

mod sim;

use std::collections::HashMap;
use std::sync::Arc;

use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{Outcome, TaskFinished, TaskStarted};
use ferry_event::{Event, EventBuilder, Topic, kind};
use ferry_scheduler::{Scheduler, Store};
use serde_json::{Map, json};
use sim::*;

struct Rig {
    bus: MemoryBus,
    sub: Subscription,
    sched: Scheduler,
    events: EventBuilder,
    db_url: String,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("scheduler.db");
        let bus = MemoryBus::new();
        let sub = bus
            .subscribe(Subscribe::new("scheduler", [Topic::Control]).prefetch(1000))
            .await
            .unwrap();
        let cfg = config(&db);
        let store = Store::open(&cfg.db_url).await.unwrap();
        let db_url = cfg.db_url.clone();
        let sched = Scheduler::new(store, Arc::new(bus.clone()), cfg);
        Rig {
            bus,
            sub,
            sched,
            events: EventBuilder::new("ferry/test"),
            db_url,
            _dir: dir,
        }
    }

    /// Publishes the events, then has the scheduler apply them as one batch.
    async fn apply(&mut self, events: Vec<Event>) {
        let n = events.len();
        self.bus.publish(&events).await.unwrap();
        let batch = self.sub.next_batch(1000).await.unwrap().unwrap();
        assert_eq!(batch.len(), n, "the events make one batch");
        self.sched.handle(batch).await.unwrap();
    }

    /// The current attempt of each task.
    async fn attempts(&self, job_id: &str) -> HashMap<String, String> {
        let tasks = self.sched.store().tasks(job_id).await.unwrap();
        tasks
            .into_iter()
            .filter_map(|t| t.attempt_id.map(|a| (t.task_id, a)))
            .collect()
    }

    fn started(&self, job_id: &str, task_id: &str, attempt_id: &str) -> Event {
        let data = TaskStarted {
            job_id: job_id.into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.into(),
            attempt: 1,
            started_at_ms: 1_000,
            ready_at_ms: 900,
            launcher: "test".into(),
            compute: None,
        };
        self.events
            .task(kind::TASK_STARTED, job_id, task_id, Some(attempt_id), &data)
    }

    fn succeeded(&self, job_id: &str, task_id: &str, attempt_id: &str) -> Event {
        let data = TaskFinished {
            job_id: job_id.into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.into(),
            attempt: 1,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            error: None,
            outputs: serde_json::from_value::<Map<_, _>>(json!({ "from": task_id })).unwrap(),
            output_files: Vec::new(),
            log_lines: 0,
            started_at_ms: Some(1_000),
            finished_at_ms: 2_000,
            reason: None,
            compute_ms: None,
            subtasks: Vec::new(),
        };
        self.events
            .task(kind::TASK_FINISHED, job_id, task_id, Some(attempt_id), &data)
    }
}

#[tokio::test]
async fn successes_in_one_batch_release_a_shared_dependent_once() {
    let mut r = Rig::new().await;
    let plan = planned(
        "j",
        vec![
            task_spec("a", &[]),
            task_spec("b", &[]),
            task_spec("c", &["a", "b"]),
        ],
        None,
    );
    let planned_event = r.events.job(kind::JOB_PLANNED, "j", &plan);
    r.apply(vec![planned_event]).await;
    let before = r.attempts("j").await;
    let (a, b) = (before["a"].clone(), before["b"].clone());
    assert!(!before.contains_key("c"), "c waits for a and b");

    // Both upstream tasks start and succeed in one batch; a's start comes twice (two event
    // ids), and once more after its success.
    let events = vec![
        r.started("j", "a", &a),
        r.started("j", "b", &b),
        r.started("j", "a", &a),
        r.succeeded("j", "b", &b),
        r.succeeded("j", "a", &a),
        r.started("j", "a", &a),
    ];
    r.apply(events).await;

    let store = r.sched.store();
    let tasks: HashMap<String, _> = store
        .tasks("j")
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.task_id.clone(), t))
        .collect();
    assert_eq!(tasks["a"].state, "succeeded");
    assert_eq!(tasks["b"].state, "succeeded");
    assert_eq!(tasks["a"].started_at, Some(1_000));
    assert_eq!(tasks["a"].outputs.as_deref(), Some(r#"{"from":"a"}"#));
    assert_eq!(tasks["c"].state, "dispatched", "released once both succeeded");
    let c_attempts: Vec<_> = store
        .attempts("j")
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.task_id == "c")
        .collect();
    assert_eq!(c_attempts.len(), 1, "c is dispatched once");
    let job = store.job("j").await.unwrap().unwrap();
    assert_eq!(
        (job.active, job.ready, job.unfinished, job.state.as_str()),
        (1, 0, 1, "running")
    );

    let c = c_attempts[0].attempt_id.clone();
    let events = vec![r.started("j", "c", &c), r.succeeded("j", "c", &c)];
    r.apply(events).await;
    let job = r.sched.store().job("j").await.unwrap().unwrap();
    assert_eq!(
        (job.active, job.ready, job.unfinished, job.state.as_str()),
        (0, 0, 0, "succeeded")
    );
}

#[tokio::test]
async fn a_success_of_an_unknown_attempt_or_job_changes_nothing() {
    let mut r = Rig::new().await;
    let plan = planned("j", vec![task_spec("a", &[]), task_spec("b", &["a"])], None);
    let planned_event = r.events.job(kind::JOB_PLANNED, "j", &plan);
    r.apply(vec![planned_event]).await;
    let a = r.attempts("j").await["a"].clone();
    let events = vec![
        r.started("j", "a", &a),
        r.succeeded("j", "a", "no-such-attempt"),
        r.succeeded("other-job", "a", &a),
    ];
    r.apply(events).await;
    let store = r.sched.store();
    let tasks = store.tasks("j").await.unwrap();
    let a_row = tasks.iter().find(|t| t.task_id == "a").unwrap();
    assert_eq!(a_row.state, "running");
    let b_row = tasks.iter().find(|t| t.task_id == "b").unwrap();
    assert_eq!(b_row.state, "waiting");
    let job = store.job("j").await.unwrap().unwrap();
    assert_eq!((job.active, job.ready, job.unfinished), (1, 0, 2));
}

/// While another process holds the database's write lock for longer than the scheduler's busy
/// timeout (an outage), the scheduler holds the batch and applies it once the lock goes,
/// rather than giving it back to the bus: each return counts towards the broker's delivery
/// limit, past which RabbitMQ dead-letters the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_held_through_a_database_outage_not_given_back() {
    use sqlx::{Connection, Executor};
    let mut r = Rig::new().await;
    let mut locker = sqlx::SqliteConnection::connect(&r.db_url).await.unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();

    let plan = planned("j", vec![task_spec("a", &[])], None);
    let planned_event = r.events.job(kind::JOB_PLANNED, "j", &plan);
    r.bus.publish(&[planned_event]).await.unwrap();
    let batch = r.sub.next_batch(10).await.unwrap().unwrap();
    let release = async {
        // The busy timeout is 5 s: at least one attempt fails before the lock goes.
        tokio::time::sleep(std::time::Duration::from_secs(7)).await;
        locker.execute("COMMIT").await.unwrap();
    };
    let (handled, ()) = tokio::join!(r.sched.handle(batch), release);
    handled.unwrap();

    assert!(r.sub.try_next().is_none(), "the event was given back to the bus");
    let job = r
        .sched
        .store()
        .job("j")
        .await
        .unwrap()
        .expect("the job was created");
    assert_eq!(job.state, "running");
    assert_eq!(r.attempts("j").await.len(), 1, "its task was dispatched");
}
