//! The launcher the scheduler's tests dispatch to, and an event recorder.
//!
//! The launcher is the real launcher runtime on the in-memory bus, serving runner type `local`
//! on an in-memory platform whose compute does what a script says instead of running a process
//! (`ferry_launcher::testing`): idempotency per attempt id, cancels, tombstones, heartbeats and
//! presence are the runtime's own, so that properties of the scheduler can be checked over many
//! random jobs quickly against a launcher that behaves as the real ones do. The platform keeps
//! the ledger the tests read ([`SimLog`]); `tests/launcher.rs` runs the launcher conformance
//! suite against this same configuration.

#![allow(dead_code)]

pub mod subtasks;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_bus::{Bus, MemoryBus, Subscribe};
use ferry_event::payload::{JobPlanned, Outcome, PlannedTask};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_launcher::ShutdownPolicy;
use ferry_launcher::journal::Journal;
use ferry_launcher::testing::{Platform, Remote};
use ferry_runtime::CancellationToken;
use serde_json::{Map, json};

pub use ferry_launcher::testing::{Ledger as SimLog, Plan, Script};

/// The runner type of every task the tests plan.
pub const BACKEND: &str = "local";
/// What happens to running attempts when the launcher stops: they are stopped and reported
/// lost, as the local launcher does.
pub const POLICY: ShutdownPolicy = ShutdownPolicy::Kill;

/// The platform the launcher runs on: attempts of runner type `local`, run as `script` says.
pub fn platform(script: Script) -> Arc<Platform> {
    Arc::new(Platform::default().named(BACKEND).scripted(script))
}

/// The launcher's configuration.
pub fn launcher_config() -> ferry_launcher::Config {
    ferry_launcher::Config {
        max_parallel: 256,
        kill_grace: Duration::from_millis(100),
        log_batch_lines: 256,
        log_batch_interval: Duration::from_millis(10),
        secrets: ferry_launcher::Secrets::new(),
        source: "ferry/launcher/sim".into(),
        group: "sim-launcher".into(),
        artifact_retention: None,
        artifact_quotas: None,
        artifact_store: None,
    }
}

pub fn task_spec(id: &str, deps: &[&str]) -> PlannedTask {
    serde_json::from_value(json!({
        "id": id, "runner": {"type": BACKEND}, "command": ["true"], "dependsOn": deps
    }))
    .unwrap()
}

pub fn planned(job_id: &str, tasks: Vec<PlannedTask>, concurrency: Option<u32>) -> JobPlanned {
    JobPlanned {
        job_id: job_id.into(),
        flow_id: "test".into(),
        namespace: None,
        concurrency,
        inputs: Map::new(),
        tasks,
    }
}

/// Starts the launcher on the bus, its journal in a directory of its own; it stops with
/// `shutdown`. Returns once it hears dispatches and cancels, with the platform's ledger.
pub async fn launcher(bus: MemoryBus, script: Script, shutdown: CancellationToken) -> Arc<Mutex<SimLog>> {
    let platform = platform(script);
    let ledger = platform.ledger.clone();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let backend = Arc::new(Remote(platform, POLICY));
    let b: Arc<dyn Bus> = Arc::new(bus.clone());
    let running = tokio::spawn(async move {
        let result = ferry_launcher::run(launcher_config(), journal, backend, b, shutdown).await;
        drop(dir);
        result
    });
    let cancels = Topic::Cancel(BACKEND.into());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bus.groups_on(&cancels) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline && !running.is_finished(),
            "the launcher did not start listening to cancels"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ledger
}

/// Records every event on every topic, in publish order.
#[derive(Clone)]
pub struct Recorder {
    pub events: Arc<Mutex<Vec<Event>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Recorder {
    pub async fn start(bus: &MemoryBus, shutdown: CancellationToken) -> Recorder {
        let topics = [
            Topic::Control,
            Topic::Lifecycle,
            Topic::Dispatch(BACKEND.into()),
            Topic::Cancel(BACKEND.into()),
        ];
        let mut sub = bus.subscribe(Subscribe::new("recorder", topics)).await.unwrap();
        let rec = Recorder {
            events: Default::default(),
            notify: Default::default(),
        };
        let r = rec.clone();
        tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    d = sub.next() => match d { Some(Ok(d)) => d, _ => return },
                };
                r.events.lock().unwrap().push(d.event.clone());
                r.notify.notify_waiters();
                d.ack().await.unwrap();
            }
        });
        rec
    }

    /// Waits for the job's final event and returns its type.
    pub async fn wait_terminal(&self, job_id: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if let Some(ty) = self.terminal(job_id) {
                return ty;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let tail: Vec<String> = self
                    .events
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(10)
                    .map(|e| e.ty().to_string())
                    .collect();
                panic!("job {job_id} did not finish within {within:?}; last events: {tail:?}");
            }
        }
    }

    pub fn terminal(&self, job_id: &str) -> Option<String> {
        self.events.lock().unwrap().iter().find_map(|e| {
            let is_end = matches!(
                e.ty(),
                kind::JOB_SUCCEEDED | kind::JOB_FAILED | kind::JOB_CANCELLED
            );
            (is_end && ferry_event::envelope::job_of(e).as_deref() == Some(job_id))
                .then(|| e.ty().to_string())
        })
    }

    pub fn of_type(&self, ty: &str) -> Vec<Event> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.ty() == ty)
            .cloned()
            .collect()
    }
}

pub async fn publish<T: serde::Serialize>(bus: &MemoryBus, ty: &str, job_id: &str, data: &T) {
    bus.publish(&[EventBuilder::new("ferry/test").job(ty, job_id, data)])
        .await
        .unwrap();
}

pub fn config(db: &std::path::Path) -> ferry_scheduler::Config {
    let mut c = ferry_scheduler::Config::new(format!("sqlite://{}", db.display()), "ferry/scheduler/test");
    c.tick = Duration::from_millis(10);
    c.grace = Duration::from_secs(5);
    // Tests move clocks by hours, past any launcher's last announcement: tasks that no launcher
    // serves are failed only where a test says so.
    c.no_launcher_after = None;
    c
}

/// Starts the scheduler service; returns its handle and its own shutdown token.
pub fn start_scheduler(
    bus: &MemoryBus,
    cfg: ferry_scheduler::Config,
) -> (
    tokio::task::JoinHandle<ferry_scheduler::Result<()>>,
    CancellationToken,
) {
    let token = CancellationToken::new();
    let b: Arc<dyn Bus> = Arc::new(bus.clone());
    let handle = tokio::spawn(ferry_scheduler::run(cfg, b, token.clone()));
    (handle, token)
}

/// Binds the scheduler's group before anything is published.
pub async fn declare_scheduler(bus: &MemoryBus) {
    bus.declare(&Subscribe::new("scheduler", [Topic::Control]))
        .await
        .unwrap();
}

pub fn succeed(ms: u64) -> Plan {
    Plan {
        outcome: Outcome::Succeeded,
        run_for: Duration::from_millis(ms),
        outputs: Map::new(),
        subtasks: None,
    }
}
