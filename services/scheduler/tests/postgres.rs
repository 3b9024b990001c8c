//! The scheduler on PostgreSQL: several instances on one database share the load (competing
//! consumers on the control topic) and never dispatch an attempt twice.
//!
//! Needs FERRY_TEST_POSTGRES (scripts/test.sh starts PostgreSQL and sets it); each test creates
//! and drops its own database.

mod sim;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::MemoryBus;
use ferry_event::payload::PlannedTask;
use ferry_event::{AttributesReader, kind};
use ferry_runtime::CancellationToken;
use sim::*;
use sqlx::Executor;

const WITHIN: Duration = Duration::from_secs(60);

/// A fresh database on the test server, dropped when the guard goes.
struct Db {
    admin: String,
    name: String,
    url: String,
}

impl Db {
    async fn new() -> Db {
        let admin = std::env::var("FERRY_TEST_POSTGRES").expect(
            "FERRY_TEST_POSTGRES is not set: run ./scripts/test.sh, which starts PostgreSQL and sets it",
        );
        let name = format!("ferry_t_{}", uuid_like());
        let mut conn = admin_conn(&admin).await;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
        Db {
            url: format!("{base}/{name}"),
            admin,
            name,
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Dropping needs a connection of its own; do it on a fresh thread and runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = admin_conn(&admin).await;
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            })
        })
        .join();
    }
}

async fn admin_conn(url: &str) -> sqlx::postgres::PgConnection {
    use sqlx::Connection;
    sqlx::postgres::PgConnection::connect(url)
        .await
        .expect("the test PostgreSQL server is reachable")
}

fn uuid_like() -> String {
    ferry_event::new_id().replace('-', "")
}

fn pg_config(url: &str, source: &str) -> ferry_scheduler::Config {
    let mut c = ferry_scheduler::Config::new(url, source);
    c.tick = Duration::from_millis(20);
    c.batch_max = 64;
    c
}

fn fan(n: usize) -> Vec<PlannedTask> {
    let mut tasks = vec![task_spec("root", &[])];
    tasks.extend((0..n).map(|i| task_spec(&format!("t{i}"), &["root"])));
    let all: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    tasks.push(task_spec("join", &all));
    tasks
}

/// Instances started together on a new database (a deployment's first start) each create the
/// schema that is missing, side by side: every one of them opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_on_a_new_database_all_open_it() {
    for _ in 0..3 {
        let db = Db::new().await;
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let url = db.url.clone();
                tokio::spawn(async move { ferry_scheduler::Store::open(&url).await })
            })
            .collect();
        for open in opens {
            match open.await.unwrap() {
                Ok(store) => store.close().await,
                Err(e) => panic!("an instance could not open the new database: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_jobs_without_dispatching_an_attempt_twice() {
    let db = Db::new().await;
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    let log = launcher(bus.clone(), Arc::new(|_| succeed(3)), stop.clone()).await;
    declare_scheduler(&bus).await;
    let (_a, ta) = start_scheduler(&bus, pg_config(&db.url, "ferry/scheduler/a"));
    let (_b, tb) = start_scheduler(&bus, pg_config(&db.url, "ferry/scheduler/b"));
    // Six jobs, so that both instances find jobs the other has not locked.
    let n = 150;
    let jobs = 6;
    for j in 0..jobs {
        publish(
            &bus,
            kind::JOB_PLANNED,
            &format!("j{j}"),
            &planned(&format!("j{j}"), fan(n), None),
        )
        .await;
    }
    for j in 0..jobs {
        assert_eq!(
            rec.wait_terminal(&format!("j{j}"), WITHIN).await,
            kind::JOB_SUCCEEDED
        );
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    for j in 0..jobs {
        let job = format!("j{j}");
        for t in ["root".to_string(), "join".to_string()]
            .into_iter()
            .chain((0..n).map(|i| format!("t{i}")))
        {
            assert_eq!(
                log.attempts_of(&job, &t),
                1,
                "{job}/{t} was dispatched {} times",
                log.attempts_of(&job, &t)
            );
        }
    }
    assert!(log.overlaps.is_empty());
    let sources: HashSet<String> = rec
        .of_type(kind::TASK_DISPATCHED)
        .iter()
        .map(|e| e.source().to_string())
        .collect();
    // Which instance locks a job first is the machine's timing: on a busy one, one instance can
    // take every job before the other looks. What must hold either way is the above (no attempt
    // twice, no overlap), and that no one else dispatched.
    assert!(
        !sources.is_empty()
            && sources
                .iter()
                .all(|s| s == "ferry/scheduler/a" || s == "ferry/scheduler/b"),
        "dispatches came from the two instances only: {sources:?}"
    );
    eprintln!("instances that dispatched: {sources:?}");
    let store = ferry_scheduler::Store::open(&db.url).await.unwrap();
    for j in 0..jobs {
        let job = store.job(&format!("j{j}")).await.unwrap().unwrap();
        assert_eq!(
            (job.state.as_str(), job.unfinished, job.active, job.ready),
            ("succeeded", 0, 0, 0)
        );
    }
    store.close().await;
    ta.cancel();
    tb.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finishes_when_one_of_two_instances_is_killed() {
    let db = Db::new().await;
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    let log = launcher(bus.clone(), Arc::new(|_| succeed(5)), stop.clone()).await;
    declare_scheduler(&bus).await;
    ferry_scheduler::Store::open(&db.url).await.unwrap().close().await;
    let (a, _ta) = start_scheduler(&bus, pg_config(&db.url, "ferry/scheduler/a"));
    let (_b, tb) = start_scheduler(&bus, pg_config(&db.url, "ferry/scheduler/b"));
    publish(&bus, kind::JOB_PLANNED, "j", &planned("j", fan(200), Some(8))).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while rec.of_type(kind::TASK_SUCCEEDED).len() < 40 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.abort();
    let _ = a.await;
    assert_eq!(rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(log.overlaps.is_empty());
    for i in 0..200 {
        assert_eq!(log.attempts_of("j", &format!("t{i}")), 1);
    }
    assert!(
        log.max_running["j"] <= 8,
        "concurrency held across instances: {}",
        log.max_running["j"]
    );
    tb.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_an_instance_committed_but_never_published_are_published_by_another() {
    let db = Db::new().await;
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    declare_scheduler(&bus).await;
    ferry_scheduler::Store::open(&db.url).await.unwrap().close().await;
    // What an instance killed between its commit and its publish leaves behind.
    let orphan = ferry_event::EventBuilder::new("ferry/scheduler/gone").job(
        kind::JOB_STARTED,
        "j-orphan",
        &serde_json::json!({"jobId": "j-orphan"}),
    );
    let mut cfg = pg_config(&db.url, "ferry/scheduler/b");
    cfg.orphan_sweep = Duration::from_secs(10);
    let clock = ferry_scheduler::ManualClock::new(1_000_000);
    cfg.clock = Arc::new(clock.clone());
    let (_b, tb) = start_scheduler(&bus, cfg);
    // Written once the survivor runs (a start publishes the whole outbox anyway): a job it
    // starts shows it does.
    publish(&bus, kind::JOB_PLANNED, "j", &planned("j", fan(0), None)).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while rec.of_type(kind::JOB_STARTED).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the survivor never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut conn = admin_conn(&db.url).await;
    sqlx::query("INSERT INTO outbox (event_id, event) VALUES ($1, $2)")
        .bind(orphan.id())
        .bind(serde_json::to_string(&orphan).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    let orphan_published = || {
        rec.of_type(kind::JOB_STARTED)
            .iter()
            .any(|e| e.id() == orphan.id())
    };
    // It is published once it has outlived a sweep: seen at one, adopted at the next.
    while !orphan_published() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphaned event was never published"
        );
        clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once confirmed, the row goes.
    while sqlx::query("SELECT seq FROM outbox")
        .fetch_optional(&mut conn)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the published row was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tb.cancel();
    stop.cancel();
}

/// The scheduler's connection is ended by the server in the middle of a transaction (as in a
/// restart or a failover): the batch is held and applied again on a new connection, not given
/// back to the bus, where each return counts towards the broker's delivery limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ended_mid_transaction_holds_the_batch_and_applies_it_again() {
    use ferry_bus::{Bus, Subscribe};
    let db = Db::new().await;
    let bus = MemoryBus::new();
    let mut sub = bus
        .subscribe(Subscribe::new("scheduler", [ferry_event::Topic::Control]))
        .await
        .unwrap();
    let cfg = pg_config(&db.url, "ferry/scheduler/a");
    let store = ferry_scheduler::Store::open(&db.url).await.unwrap();
    let mut sched = ferry_scheduler::Scheduler::new(store, Arc::new(bus.clone()), cfg);

    // Another session holds a lock on the jobs, so the scheduler's transaction waits inside.
    let mut blocker = admin_conn(&db.url).await;
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    publish(&bus, kind::JOB_PLANNED, "j", &planned("j", fan(2), None)).await;
    let batch = sub.next_batch(10).await.unwrap().unwrap();
    let interrupt = async {
        let mut admin = admin_conn(&db.url).await;
        let waiting = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'";
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let ended: Vec<(bool,)> = sqlx::query_as(waiting).fetch_all(&mut admin).await.unwrap();
            if !ended.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the scheduler never waited on the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        blocker.execute("COMMIT").await.unwrap();
    };
    let (handled, ()) = tokio::join!(sched.handle(batch), interrupt);
    handled.unwrap();

    assert!(sub.try_next().is_none(), "the event was given back to the bus");
    let job = sched
        .store()
        .job("j")
        .await
        .unwrap()
        .expect("the job was created");
    assert_eq!((job.state.as_str(), job.total), ("running", 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtasks_join_once_and_dependents_wait_for_the_subtree_on_postgres() {
    let db = Db::new().await;
    sim::subtasks::subtasks_join_on_success_and_dependents_wait_for_the_subtree(pg_config(
        &db.url,
        "ferry/scheduler/pg",
    ))
    .await;
    let db = Db::new().await;
    sim::subtasks::a_job_retry_reruns_a_failed_subtask_then_releases_the_parents_dependents(pg_config(
        &db.url,
        "ferry/scheduler/pg",
    ))
    .await;
    let db = Db::new().await;
    sim::subtasks::invalid_and_over_limit_submissions_fail_the_attempt(pg_config(
        &db.url,
        "ferry/scheduler/pg",
    ))
    .await;
}
