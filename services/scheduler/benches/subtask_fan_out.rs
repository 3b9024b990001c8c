//! The scheduler's share of a dynamic fan-out: a job of `split` and `reduce` (after `split`) is
//! planned and `split` dispatched; then `split`'s attempt reports success with SUBTASKS
//! subtasks (10,000 by default), in the flow's task format as a launcher sends them. Timed from
//! publishing that report to the scheduler having validated the subtasks, added them to the
//! job and published a dispatch for every one of them. The process's resident memory is read
//! before the report and after (the published events drained and dropped): its growth per
//! subtask is the scheduler's.
//!
//! Nothing else runs: no launcher, so the bound on dispatches not yet started
//! (`max_waiting`) is raised above SUBTASKS for the whole fan-out to be dispatched at once.
//!
//! `cargo bench -p ferry-scheduler --bench subtask_fan_out` (SUBTASKS and RUNS in the
//! environment).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{JobPlanned, Outcome, PlannedTask, TaskDispatched, TaskFinished};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_scheduler::{Config, Scheduler, Store};
use serde_json::{Map, Value, json};

ferry_runtime::global_allocator!();

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident and peak resident memory of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn job() -> JobPlanned {
    let task = |v: Value| serde_json::from_value::<PlannedTask>(v).expect("a valid task");
    JobPlanned {
        job_id: "fan".into(),
        flow_id: "bench".into(),
        namespace: None,
        concurrency: None,
        inputs: Map::new(),
        tasks: vec![
            task(json!({"id": "split", "runner": {"type": "local"}, "command": ["true"]})),
            task(
                json!({"id": "reduce", "runner": {"type": "local"}, "command": ["true"], "dependsOn": ["split"]}),
            ),
        ],
    }
}

/// `n` subtasks as a task writes them: each runs a command over its part.
fn subtasks(n: usize) -> Vec<Map<String, Value>> {
    (0..n)
        .map(|i| {
            let v = json!({"id": format!("part-{i}"), "runner": "local", "command": ["sh", "-c", "work \"$1\"", "part", i.to_string()]});
            match v {
                Value::Object(m) => m,
                _ => unreachable!("an object"),
            }
        })
        .collect()
}

struct Rig {
    bus: MemoryBus,
    sub: Subscription,
    out: Subscription,
    sched: Scheduler,
    events: EventBuilder,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(n: usize) -> Rig {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bus = MemoryBus::new();
        let sub = bus
            .subscribe(Subscribe::new("scheduler", [Topic::Control]).prefetch(1024))
            .await
            .expect("subscribing");
        let out = bus
            .subscribe(
                Subscribe::new("bench", [Topic::Lifecycle, Topic::Dispatch("local".into())])
                    .prefetch(1_000_000),
            )
            .await
            .expect("subscribing");
        let db_url = format!("sqlite://{}", dir.path().join("scheduler.db").display());
        let mut cfg = Config::new(db_url.clone(), "ferry/bench");
        cfg.no_launcher_after = None;
        cfg.max_waiting = n + 16;
        cfg.max_subtasks_per_attempt = n.max(cfg.max_subtasks_per_attempt);
        let store = Store::open(&db_url).await.expect("opening the store");
        let sched = Scheduler::new(store, Arc::new(bus.clone()), cfg);
        Rig {
            bus,
            sub,
            out,
            sched,
            events: EventBuilder::new("ferry/bench"),
            _dir: dir,
        }
    }

    /// Publishes the events, has the scheduler apply them and run its timers (which dispatch);
    /// returns what it published meanwhile.
    async fn apply(&mut self, events: Vec<Event>) -> Vec<Event> {
        let mut left = events.len();
        self.bus.publish(&events).await.expect("publishing");
        while left > 0 {
            let batch = self.sub.next_batch(512).await.expect("open").expect("a batch");
            left -= batch.len();
            self.sched.handle(batch).await.expect("applying");
        }
        self.sched.tick().await.expect("timers");
        let mut got = Vec::new();
        while let Ok(Some(Ok(batch))) =
            tokio::time::timeout(Duration::from_millis(1), self.out.next_batch(100_000)).await
        {
            for d in batch {
                got.push(d.event.clone());
                d.ack().await.expect("ack");
            }
        }
        got
    }
}

struct Measured {
    took: Duration,
    dispatched: usize,
    rss_growth_kib: i64,
    peak_growth_kib: i64,
}

async fn run(n: usize) -> Measured {
    let mut r = Rig::new(n).await;
    let plan = r.events.job(kind::JOB_PLANNED, "fan", &job());
    let out = r.apply(vec![plan]).await;
    let split: TaskDispatched = out
        .iter()
        .find(|e| e.ty() == kind::TASK_DISPATCHED)
        .map(|e| ferry_event::decode(e).expect("a dispatch"))
        .expect("split is dispatched");
    drop(out);
    let report = TaskFinished {
        subtasks: subtasks(n),
        ..TaskFinished::unreported(
            "fan",
            "split",
            split.attempt_id.clone(),
            1,
            Outcome::Succeeded,
            "",
            ferry_event::now_ms(),
        )
    };
    let report = r.events.task(
        kind::TASK_FINISHED,
        "fan",
        "split",
        Some(&split.attempt_id),
        &TaskFinished {
            error: None,
            ..report
        },
    );
    let (rss_before, peak_before) = memory_kib();
    let t = Instant::now();
    let out = r.apply(vec![report]).await;
    let took = t.elapsed();
    let dispatched = out.iter().filter(|e| e.ty() == kind::TASK_DISPATCHED).count();
    drop(out);
    let (rss_after, peak_after) = memory_kib();
    Measured {
        took,
        dispatched,
        rss_growth_kib: rss_after as i64 - rss_before as i64,
        peak_growth_kib: peak_after as i64 - peak_before as i64,
    }
}

fn main() {
    ferry_runtime::memory::set_up();
    let n = env("SUBTASKS", 10_000);
    let runs = env("RUNS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    for i in 0..runs {
        let m = rt.block_on(run(n));
        assert_eq!(m.dispatched, n, "every subtask is dispatched");
        println!(
            "run {}: {n} subtasks accepted and all dispatched in {:.3} s; resident memory {:+} KiB ({:+.0} B per subtask), peak {:+} KiB ({:+.0} B per subtask)",
            i + 1,
            m.took.as_secs_f64(),
            m.rss_growth_kib,
            m.rss_growth_kib as f64 * 1024.0 / n as f64,
            m.peak_growth_kib,
            m.peak_growth_kib as f64 * 1024.0 / n as f64,
        );
    }
}
