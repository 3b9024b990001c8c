//! A scripted launcher and an event recorder for driving the scheduler in tests.
//!
//! The launcher honours the launcher contract the way the real ones do (idempotent per attempt
//! id, `task.cancel` ends a running attempt, a cancel that arrives first leaves a tombstone) but
//! decides each attempt's outcome from a script instead of running a process, so that properties
//! of the scheduler can be checked over many random jobs quickly.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_bus::{Bus, MemoryBus, Subscribe};
use ferry_event::payload::{
    JobPlanned, Outcome, PlannedTask, TaskCancel, TaskDispatched, TaskFinished, TaskStarted,
};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_runtime::CancellationToken;
use serde_json::{Map, Value, json};

/// What the script decides for one attempt.
#[derive(Debug, Clone)]
pub struct Plan {
    pub outcome: Outcome,
    pub run_for: Duration,
    pub outputs: Map<String, Value>,
}

pub type Script = Arc<dyn Fn(&TaskDispatched) -> Plan + Send + Sync>;

/// What the simulated launcher saw and did.
#[derive(Debug, Default)]
pub struct SimLog {
    /// Attempt ids started, per task, in order.
    pub started: HashMap<(String, String), Vec<String>>,
    /// Attempts running right now, per task.
    pub running: HashMap<(String, String), HashSet<String>>,
    /// Times a task had two attempts running at once.
    pub overlaps: Vec<String>,
    /// Dispatches received, duplicates included.
    pub dispatches: usize,
    /// Tasks whose dispatch carried an unfilled template placeholder.
    pub unfilled: Vec<String>,
    pub tombstones: HashSet<String>,
    pub finished: HashSet<String>,
    /// Start order of tasks, per job.
    pub order: HashMap<String, Vec<String>>,
    /// Most attempts of a job running at once.
    pub max_running: HashMap<String, usize>,
    now_running: HashMap<String, usize>,
}

pub fn task_spec(id: &str, deps: &[&str]) -> PlannedTask {
    serde_json::from_value(json!({
        "id": id, "runner": {"type": "local"}, "command": ["true"], "dependsOn": deps
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

/// Starts the simulated launcher on the bus; it stops with `shutdown`.
pub async fn launcher(bus: MemoryBus, script: Script, shutdown: CancellationToken) -> Arc<Mutex<SimLog>> {
    let log = Arc::new(Mutex::new(SimLog::default()));
    let mut sub = bus
        .subscribe(Subscribe::new(
            "sim-launcher",
            [Topic::Dispatch("local".into()), Topic::Cancel("local".into())],
        ))
        .await
        .unwrap();
    let events = EventBuilder::new("ferry/sim-launcher");
    let cancels: Arc<Mutex<HashMap<String, CancellationToken>>> = Default::default();
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let d = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = sub.next() => match d { Some(Ok(d)) => d, _ => return },
            };
            match d.event.ty() {
                kind::TASK_DISPATCHED => {
                    let p: TaskDispatched = ferry_event::decode(&d.event).unwrap();
                    let key = (p.job_id.clone(), p.task_id.clone());
                    // Settled without running: a duplicate, or an attempt cancelled before it came.
                    let (skip, tomb) = {
                        let mut log = l.lock().unwrap();
                        log.dispatches += 1;
                        let seen = log.started.get(&key).is_some_and(|v| v.contains(&p.attempt_id));
                        let tomb = !seen
                            && log.tombstones.contains(&p.attempt_id)
                            && log.finished.insert(p.attempt_id.clone());
                        (seen || log.tombstones.contains(&p.attempt_id), tomb)
                    };
                    if skip {
                        if tomb {
                            let f = finished(&p, Outcome::Cancelled, Map::new());
                            bus.publish(&[events.task(
                                kind::TASK_FINISHED,
                                &p.job_id,
                                &p.task_id,
                                Some(&p.attempt_id),
                                &f,
                            )])
                            .await
                            .unwrap();
                        }
                        d.ack().await.unwrap();
                        continue;
                    }
                    {
                        let mut log = l.lock().unwrap();
                        let unfilled = p
                            .command
                            .iter()
                            .chain(p.env.values())
                            .any(|t| t.outputs().count() > 0);
                        if unfilled {
                            log.unfilled.push(p.task_id.clone());
                        }
                        log.started
                            .entry(key.clone())
                            .or_default()
                            .push(p.attempt_id.clone());
                        let running = log.running.entry(key.clone()).or_default();
                        running.insert(p.attempt_id.clone());
                        if running.len() > 1 {
                            log.overlaps.push(format!("{}/{}", p.job_id, p.task_id));
                        }
                        log.order
                            .entry(p.job_id.clone())
                            .or_default()
                            .push(p.task_id.clone());
                        let now = log.now_running.entry(p.job_id.clone()).or_default();
                        *now += 1;
                        let now = *now;
                        let max = log.max_running.entry(p.job_id.clone()).or_default();
                        *max = (*max).max(now);
                    }
                    let started = TaskStarted {
                        job_id: p.job_id.clone(),
                        task_id: p.task_id.clone(),
                        attempt_id: p.attempt_id.clone(),
                        attempt: p.attempt,
                        started_at_ms: ferry_event::now_ms(),
                        ready_at_ms: p.ready_at_ms,
                        launcher: "sim".into(),
                        compute: None,
                    };
                    bus.publish(&[events.task(
                        kind::TASK_STARTED,
                        &p.job_id,
                        &p.task_id,
                        Some(&p.attempt_id),
                        &started,
                    )])
                    .await
                    .unwrap();
                    d.ack().await.unwrap();
                    let plan = script(&p);
                    let token = CancellationToken::new();
                    cancels
                        .lock()
                        .unwrap()
                        .insert(p.attempt_id.clone(), token.clone());
                    let (bus, events, l) = (bus.clone(), events.clone(), l.clone());
                    tokio::spawn(async move {
                        let outcome = tokio::select! {
                            _ = tokio::time::sleep(plan.run_for) => plan.outcome,
                            _ = token.cancelled() => Outcome::Cancelled,
                        };
                        {
                            let mut log = l.lock().unwrap();
                            if log.running.get_mut(&key).unwrap().remove(&p.attempt_id) {
                                *log.now_running.get_mut(&p.job_id).unwrap() -= 1;
                            }
                            log.finished.insert(p.attempt_id.clone());
                        }
                        let outputs = if outcome == Outcome::Succeeded {
                            plan.outputs
                        } else {
                            Map::new()
                        };
                        let f = finished(&p, outcome, outputs);
                        bus.publish(&[events.task(
                            kind::TASK_FINISHED,
                            &p.job_id,
                            &p.task_id,
                            Some(&p.attempt_id),
                            &f,
                        )])
                        .await
                        .unwrap();
                    });
                }
                kind::TASK_CANCEL => {
                    let p: TaskCancel = ferry_event::decode(&d.event).unwrap();
                    let token = cancels.lock().unwrap().get(&p.attempt_id).cloned();
                    match token {
                        // Cancellation ends the attempt before the next delivery is handled, as
                        // a launcher's kill does.
                        Some(t) => {
                            let key = (p.job_id.clone(), p.task_id.clone());
                            let mut log = l.lock().unwrap();
                            if log.running.get_mut(&key).is_some_and(|r| r.remove(&p.attempt_id)) {
                                *log.now_running.get_mut(&p.job_id).unwrap() -= 1;
                            }
                            t.cancel();
                        }
                        None => {
                            l.lock().unwrap().tombstones.insert(p.attempt_id.clone());
                        }
                    }
                    d.ack().await.unwrap();
                }
                _ => d.ack().await.unwrap(),
            }
        }
    });
    log
}

fn finished(p: &TaskDispatched, outcome: Outcome, outputs: Map<String, Value>) -> TaskFinished {
    TaskFinished {
        job_id: p.job_id.clone(),
        task_id: p.task_id.clone(),
        attempt_id: p.attempt_id.clone(),
        attempt: p.attempt,
        outcome,
        exit_code: match outcome {
            Outcome::Succeeded => Some(0),
            Outcome::Failed => Some(1),
            _ => None,
        },
        error: (outcome != Outcome::Succeeded).then(|| format!("scripted {}", outcome.as_str())),
        outputs,
        output_files: Vec::new(),
        log_lines: 0,
        started_at_ms: None,
        finished_at_ms: ferry_event::now_ms(),
        reason: None,
    }
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
            Topic::Dispatch("local".into()),
            Topic::Cancel("local".into()),
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
    // The scripted launcher does not announce itself, and tests move clocks by hours: tasks
    // that no launcher serves are failed only where a test says so.
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

impl SimLog {
    /// Attempts of a job still running.
    pub fn running_in(&self, job_id: &str) -> usize {
        self.now_running.get(job_id).copied().unwrap_or(0)
    }

    pub fn attempts_of(&self, job_id: &str, task_id: &str) -> usize {
        self.started
            .get(&(job_id.to_string(), task_id.to_string()))
            .map(Vec::len)
            .unwrap_or(0)
    }
}

pub fn succeed(ms: u64) -> Plan {
    Plan {
        outcome: Outcome::Succeeded,
        run_for: Duration::from_millis(ms),
        outputs: Map::new(),
    }
}
