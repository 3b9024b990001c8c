//! What the scheduler's benches share: the scheduler alone on the embedded bus and a fresh
//! SQLite file, fed events and drained of what it publishes. Nothing else runs: no launcher,
//! no api, no planner.

use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::{Event, EventBuilder, Topic};
use ferry_scheduler::{Config, Scheduler, Store};

/// A number from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Rig {
    bus: MemoryBus,
    sub: Subscription,
    /// Everything the scheduler publishes on the lifecycle, dispatch and cancel topics.
    out: Subscription,
    pub sched: Scheduler,
    pub events: EventBuilder,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A scheduler taking up to `prefetch` control events at a time, with its configuration
    /// adjusted by `configure`. No launcher runs: dispatched tasks wait rather than fail for
    /// want of one.
    pub async fn new(prefetch: usize, configure: impl FnOnce(&mut Config)) -> Rig {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bus = MemoryBus::new();
        let sub = bus
            .subscribe(Subscribe::new("scheduler", [Topic::Control]).prefetch(prefetch))
            .await
            .expect("subscribing");
        let out = bus
            .subscribe(
                Subscribe::new(
                    "bench",
                    [
                        Topic::Lifecycle,
                        Topic::Dispatch("local".into()),
                        Topic::Cancel("local".into()),
                    ],
                )
                .prefetch(1_000_000),
            )
            .await
            .expect("subscribing");
        let db_url = format!("sqlite://{}", dir.path().join("scheduler.db").display());
        let mut cfg = Config::new(db_url.clone(), "ferry/bench");
        cfg.no_launcher_after = None;
        configure(&mut cfg);
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

    /// Publishes the events and has the scheduler apply all of them, in batches as the
    /// service takes them, then run its timers (which dispatch); returns the events it
    /// published meanwhile.
    pub async fn apply(&mut self, events: Vec<Event>) -> Vec<Event> {
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

/// How many of `events` are of type `ty`.
pub fn count(events: &[Event], ty: &str) -> usize {
    use ferry_event::AttributesReader;
    events.iter().filter(|e| e.ty() == ty).count()
}
