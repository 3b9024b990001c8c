//! ferry's scheduler.
//!
//! It owns job and task state, in SQL (SQLite by default, PostgreSQL when several instances share
//! the load), and turns events into transitions:
//!
//! - `job.planned` creates a job and its tasks; tasks without dependencies are ready;
//! - a ready task is dispatched (`task.dispatched`, routed to its backend) when its job has room
//!   under `concurrency`, higher `priority` first, with `{{ outputs.* }}` filled in;
//! - `task.started` / `task.heartbeat` keep the attempt's lease; a lapsed lease, a missed
//!   deadline or a lost attempt is retried as a new attempt;
//! - `task.finished` succeeds the task and releases its dependents, or retries it with backoff, or
//!   fails it for good, which cancels the rest of the job (fail-fast); a success that submitted
//!   subtasks adds them to the job in the same transaction, and the task's dependents wait for
//!   them and theirs;
//! - `job.cancel` and `job.retry` stop a job and re-queue its failed and cancelled tasks.
//!
//! Delivery rules (DESIGN §3): every batch of events is applied in one transaction that also
//! records the applied event ids (inbox) and the events to emit (outbox); deliveries are acked
//! after the commit; the outbox is published after the commit and retried until confirmed. The
//! work per event is bounded by the task's own edges, never by the job's size.

mod clock;
mod engine;
mod flags;
mod store;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, Delivery, Subscribe};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_runtime::{Backoff, CancellationToken};
use tracing::Instrument as _;

pub use clock::{Clock, ManualClock, SystemClock};
pub use ferry_runtime::db::Dialect;
pub use flags::Flags;
pub use store::{AttemptRow, JobRow, Store, TaskRow};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed; the batch is rolled back and retried.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The bus failed; publishing is retried from the outbox.
    #[error(transparent)]
    Bus(#[from] ferry_bus::Error),
    /// A setting that can never work.
    #[error("scheduler configuration: {0}")]
    Config(String),
    /// Stored state that cannot be read back (a bug or a hand-edited database).
    #[error("corrupt scheduler state: {0}")]
    Corrupt(String),
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://PATH` or `postgres://…`.
    pub db_url: String,
    /// CloudEvents `source` of this instance.
    pub source: String,
    /// Consumer group on the control topic.
    pub group: String,
    /// A running attempt whose launcher sends no heartbeat for this long is considered lost.
    pub lease: Duration,
    /// A dispatched task whose backend no launcher serves (none announced itself, all said they
    /// leave, or all have been silent for [`PRESENCE_GONE`]) fails after waiting this long ("no launcher for backend `docker` is
    /// running"). `None`: it waits for ever.
    pub no_launcher_after: Option<Duration>,
    /// Lost attempts (launcher gone) retried per task before it fails; they do not use up
    /// `retry.attempts`.
    pub max_lost: u32,
    /// How long a cancelled attempt may take to confirm before it is given up on; also the
    /// margin past a task's timeout before the scheduler ends an attempt its launcher did not.
    pub grace: Duration,
    /// Most events applied in one transaction.
    pub batch_max: usize,
    /// Most tasks dispatched in one transaction.
    pub dispatch_max: usize,
    /// Most attempts of one backend dispatched and not yet started. Ready tasks beyond it wait
    /// in the database rather than in the broker (or in memory, on the embedded bus), so a
    /// 100,000-task fan-out does not queue 100,000 dispatches at once.
    pub max_waiting: usize,
    /// Most tasks of one namespace's jobs dispatched or running at once, by namespace (jobs
    /// without one are in `default`); `*` sets it for every namespace not named. Ready tasks
    /// beyond it wait, as they do beyond a job's `concurrency`. Empty: no quota.
    pub namespace_quotas: BTreeMap<String, u32>,
    /// Most subtasks one attempt may submit (`$FERRY_SUBTASKS`); a larger submission fails the
    /// attempt.
    pub max_subtasks_per_attempt: usize,
    /// How deep subtasks may nest: 1 lets a flow's tasks submit subtasks that submit none.
    pub max_subtask_depth: usize,
    /// Most tasks a job may grow to by its subtasks; a submission that would pass it fails the
    /// attempt.
    pub max_tasks_per_job: usize,
    /// How often timers (retries due, leases, deadlines) are checked.
    pub tick: Duration,
    /// How often the outbox is swept for rows no instance is publishing. A live instance
    /// deletes its rows within a tick of their confirmation, so a row seen at two sweeps this
    /// far apart belongs to an instance that died between its commit and its publish.
    pub orphan_sweep: Duration,
    /// How long the ids of applied events are kept to recognise a redelivery; older ones are
    /// pruned about once an hour. Redeliveries come within minutes, so days are ample.
    pub inbox_retention: Duration,
    /// Where the time is read: leases, backoff, timeouts and the outbox sweep are measured by
    /// it. The system clock by default; tests move a [`ManualClock`] on instead of sleeping.
    pub clock: Arc<dyn Clock>,
}

impl Config {
    pub fn new(db_url: impl Into<String>, source: impl Into<String>) -> Self {
        Config {
            db_url: db_url.into(),
            source: source.into(),
            group: "scheduler".into(),
            lease: Duration::from_secs(30),
            no_launcher_after: Some(Duration::from_secs(60)),
            max_lost: 3,
            grace: Duration::from_secs(30),
            batch_max: 512,
            dispatch_max: 512,
            max_waiting: 1024,
            namespace_quotas: BTreeMap::new(),
            max_subtasks_per_attempt: 10_000,
            max_subtask_depth: 4,
            max_tasks_per_job: 100_000,
            tick: Duration::from_millis(100),
            orphan_sweep: Duration::from_secs(10),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Runs the scheduler until `shutdown` is cancelled or the bus closes.
pub async fn run(config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let store = Store::open(&config.db_url).await?;
    let _ready = ferry_runtime::db::readiness("scheduler database", &store.pool);
    let mut sub = bus
        .subscribe(Subscribe::new(config.group.clone(), [Topic::Control]).prefetch(config.batch_max * 2))
        .await?;
    let mut sched = Scheduler::new(store, bus, config).stop_on(shutdown.clone());
    sched.recover().await;
    let mut tick = tokio::time::interval(sched.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Waits after a failed receive, apply or timer pass, so that a database or broker outage is
    // not met with a busy loop; a success starts again from the first wait.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(3200));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            batch = sub.next_batch(sched.config.batch_max) => match batch {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "receiving from the bus failed; retrying");
                    backoff.wait(&shutdown).await;
                }
                Some(Ok(batch)) => match sched.handle(batch).await {
                    Ok(()) => backoff.reset(),
                    Err(e) => {
                        tracing::error!(error = %e, "applying events failed; they will be redelivered");
                        backoff.wait(&shutdown).await;
                    }
                },
            },
            _ = tick.tick() => {
                if let Err(e) = sched.tick().await {
                    tracing::error!(error = %e, "timer pass failed; retrying");
                    backoff.wait(&shutdown).await;
                }
            }
        }
    }
    sched.flush().await;
    let confirmed = std::mem::take(&mut sched.confirmed);
    if let Err(e) = sched.store.delete_outbox(&confirmed).await {
        tracing::warn!(error = %e, "clearing the outbox failed; its events will be published again");
    }
    sched.store.close().await;
    Ok(())
}

/// A launcher that has not said it leaves is taken to serve its backend until it has been
/// silent this long. Far longer than the three announcements that show it live: a broker outage
/// silences every launcher at once, and the tasks queued meanwhile must not fail for it. A
/// backend no launcher ever announced, or whose launchers all said they leave, is unserved at
/// once.
pub const PRESENCE_GONE: Duration = Duration::from_secs(10 * 60);

/// How often dispatched tasks are checked for a backend no launcher serves.
const UNSERVED_EVERY: Duration = Duration::from_secs(1);

/// How often the state is sampled for the metrics ([`Store::sample`]).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How often the inbox is pruned of ids older than [`Config::inbox_retention`].
const INBOX_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Waits before applying held events again while the database is out of reach.
const OUTAGE_WAITS: ferry_runtime::db::Waits = ferry_runtime::db::Waits {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// The scheduler's state machine over its store. Public for tests and tools that drive it
/// directly; services use [`run`].
pub struct Scheduler {
    store: Store,
    bus: Arc<dyn Bus>,
    config: Config,
    events: EventBuilder,
    /// Committed outbox events not yet confirmed by the bus, in order.
    unpublished: VecDeque<Event>,
    /// Outbox rows confirmed by the bus, deleted in the next transaction.
    confirmed: Vec<String>,
    /// Outbox rows of other instances seen at the last sweep (see [`Scheduler::adopt_orphans`]).
    seen_outbox: HashSet<i64>,
    /// When the outbox is swept next, by the clock.
    next_sweep_ms: i64,
    /// When the inbox is pruned next, by the clock.
    next_prune_ms: i64,
    /// When dispatched tasks are next checked for a backend no launcher serves.
    next_unserved_ms: i64,
    /// When the state is next sampled for the metrics.
    next_sample_ms: i64,
    /// Ends the wait for the database to come back (see [`Scheduler::handle`]).
    stop: CancellationToken,
    /// Agent backends whose shared queue this instance has declared (see [`Scheduler::flush`]).
    declared: HashSet<String>,
}

impl Scheduler {
    pub fn new(store: Store, bus: Arc<dyn Bus>, config: Config) -> Self {
        let now = config.clock.now_ms();
        let next_sweep_ms = now + ms(config.orphan_sweep);
        let events = EventBuilder::new(config.source.clone());
        Scheduler {
            store,
            bus,
            config,
            events,
            unpublished: VecDeque::new(),
            confirmed: Vec::new(),
            seen_outbox: HashSet::new(),
            next_sweep_ms,
            next_prune_ms: now + ms(INBOX_PRUNE_EVERY),
            next_unserved_ms: now,
            next_sample_ms: now,
            stop: CancellationToken::new(),
            declared: HashSet::new(),
        }
    }

    /// Stops waiting for the database when `stop` is cancelled.
    pub fn stop_on(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// After a restart: publish what the outbox still holds, then dispatch what is ready.
    pub async fn recover(&mut self) {
        match self.store.outbox().await {
            Ok(events) => self.unpublished.extend(events),
            Err(e) => tracing::error!(error = %e, "reading the outbox failed"),
        }
        if !self.unpublished.is_empty() {
            tracing::info!(
                events = self.unpublished.len(),
                "publishing events left in the outbox"
            );
        }
        self.flush().await;
        if let Err(e) = self.tick().await {
            tracing::error!(error = %e, "first timer pass failed");
        }
    }

    /// Applies a batch of deliveries in one transaction, publishes what the batch emitted,
    /// then acks them. While the database is out of reach ([`ferry_runtime::db::is_outage`])
    /// the batch is held and applied again after a backoff, until it applies or the scheduler
    /// stops; any other failure gives it back to the bus.
    pub async fn handle(&mut self, batch: Vec<Delivery>) -> Result<()> {
        let mut good = Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        let mut inputs = Vec::with_capacity(batch.len());
        // With traces exported: a span per event, continuing its trace; what the batch emits
        // for a job is built in the span of the job's last event.
        let mut spans = Vec::new();
        let mut by_job = engine::Spans::new();
        for mut d in batch {
            let span = ferry_runtime::trace::event_span(&d.event);
            match engine::Input::decode(&mut d.event) {
                Ok(Some(input)) => {
                    if let Some(span) = span {
                        if let Some(job) = input.job_id() {
                            by_job.insert(job.to_string(), span.clone());
                        }
                        spans.push(span);
                    }
                    inputs.push((d.event.id().to_string(), input));
                    good.push(d);
                }
                Ok(None) => good.push(d), // not for the scheduler
                Err(reason) => bad.push((d, reason)),
            }
        }
        // The batch's transaction: a child of its first event's span, linked to the others'.
        let transaction = tracing::info_span!("db.transaction", events = inputs.len());
        ferry_runtime::trace::batch(&transaction, &spans);
        let applied = ferry_runtime::db::through_outages(
            "the database",
            "scheduler",
            OUTAGE_WAITS,
            &self.stop,
            |e| match e {
                Error::Db(e) => Some(e),
                _ => None,
            },
            || {
                let now = self.config.clock.now_ms();
                let confirmed = self.confirmed.clone();
                engine::apply(
                    &self.store,
                    &self.config,
                    &self.events,
                    now,
                    inputs.clone(),
                    confirmed,
                    &by_job,
                )
            },
        )
        .instrument(transaction)
        .await;
        let emitted = match applied {
            Ok(e) => {
                self.confirmed.clear();
                e
            }
            Err(e) => {
                for d in good {
                    let _ = d.nack().await;
                }
                return Err(e);
            }
        };
        // Committed: what the batch emitted is published first (it is what the next service
        // waits for), then the deliveries are acked. A delivery whose ack is lost (the broker
        // went away meanwhile) comes again and is recognised as applied.
        self.unpublished.extend(emitted);
        match spans.first() {
            Some(first) => self.flush().instrument(first.clone()).await,
            None => self.flush().await,
        }
        for (d, reason) in bad {
            if let Err(e) = d.dead_letter(&reason).await {
                tracing::warn!(error = %e, "cannot dead-letter a delivery; the broker delivers it again");
            }
        }
        if let Err(e) = ferry_bus::ack_all(good).await {
            tracing::warn!(
                error = %e,
                "cannot ack applied deliveries; the broker delivers them again and they are recognised as applied"
            );
        }
        Ok(())
    }

    /// Timers (retries due, lapsed leases, missed deadlines) and dispatch of ready tasks.
    pub async fn tick(&mut self) -> Result<()> {
        loop {
            let now = self.config.clock.now_ms();
            let (emitted, more) = engine::tick(
                &self.store,
                &self.config,
                &self.events,
                now,
                std::mem::take(&mut self.confirmed),
            )
            .await?;
            self.unpublished.extend(emitted);
            self.flush().await;
            if !more {
                break;
            }
        }
        let now = self.config.clock.now_ms();
        if let Some(after) = self.config.no_launcher_after
            && now >= self.next_unserved_ms
        {
            self.next_unserved_ms = now + ms(UNSERVED_EVERY);
            let emitted = engine::unserved(&self.store, &self.config, &self.events, now, after).await?;
            if !emitted.is_empty() {
                self.unpublished.extend(emitted);
                self.flush().await;
            }
        }
        if now >= self.next_sweep_ms {
            self.next_sweep_ms = now + ms(self.config.orphan_sweep);
            self.adopt_orphans().await;
        }
        if now >= self.next_sample_ms {
            self.next_sample_ms = now + ms(SAMPLE_EVERY);
            match self.store.sample(now, now - ms(PRESENCE_GONE)).await {
                Ok(sample) => ferry_runtime::metrics::scheduler_sample(&sample),
                Err(e) => tracing::debug!(error = %e, "sampling the state for the metrics failed"),
            }
        }
        if now >= self.next_prune_ms {
            self.next_prune_ms = now + ms(INBOX_PRUNE_EVERY);
            let cutoff = now.saturating_sub(ms(self.config.inbox_retention));
            match self.store.prune_inbox(cutoff).await {
                Ok(n) => tracing::debug!(removed = n, "inbox pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning the inbox failed; trying again later"),
            }
        }
        Ok(())
    }

    /// Publishes outbox rows that another instance committed but never published (it died in
    /// between): rows not this instance's own, seen at the previous sweep too. Publishing an
    /// event twice is harmless (every consumer applies an event id once); never publishing a
    /// dispatch would leave its task waiting for good.
    async fn adopt_orphans(&mut self) {
        let rows = match self.store.outbox_head(1000).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed; sweeping again later");
                return;
            }
        };
        let mine: HashSet<String> = self
            .unpublished
            .iter()
            .map(|e| e.id().to_string())
            .chain(self.confirmed.iter().cloned())
            .collect();
        let mut seen = HashSet::new();
        let mut adopted = Vec::new();
        for (seq, event) in rows {
            if mine.contains(event.id()) {
                continue;
            }
            if self.seen_outbox.contains(&seq) {
                adopted.push(event);
            } else {
                seen.insert(seq);
            }
        }
        self.seen_outbox = seen;
        if !adopted.is_empty() {
            tracing::warn!(
                events = adopted.len(),
                "publishing events another scheduler instance committed but did not publish"
            );
            self.unpublished.extend(adopted);
            self.flush().await;
        }
    }

    /// Publishes unpublished outbox events in order; what the bus does not confirm stays for
    /// the next attempt.
    ///
    /// The queue of an agent task's request is declared before its first dispatch: agents
    /// declare theirs when they start, but a task may be dispatched before any agent that
    /// serves it ever ran, and must wait in the broker for one rather than be dropped.
    pub async fn flush(&mut self) {
        while !self.unpublished.is_empty() {
            let n = self.unpublished.len().min(1024);
            let chunk: Vec<Event> = self.unpublished.iter().take(n).cloned().collect();
            if let Err(e) = self.declare_agent_queues(&chunk).await {
                tracing::warn!(error = %e, pending = self.unpublished.len(), "declaring an agent queue failed; will retry");
                return;
            }
            match self.bus.publish(&chunk).await {
                Ok(()) => {
                    self.unpublished.drain(..n);
                    self.confirmed.extend(chunk.iter().map(|e| e.id().to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, pending = self.unpublished.len(), "publishing failed; will retry");
                    return;
                }
            }
        }
    }

    /// Declares the shared queue of each agent backend `events` dispatch to that this instance
    /// has not declared yet.
    async fn declare_agent_queues(&mut self, events: &[Event]) -> std::result::Result<(), ferry_bus::Error> {
        for e in events {
            if e.ty() != kind::TASK_DISPATCHED {
                continue;
            }
            let Topic::Dispatch(backend) = ferry_event::route(e) else {
                continue;
            };
            if self.declared.contains(&backend) || ferry_event::agent::parse_backend(&backend).is_none() {
                continue;
            }
            let spec = Subscribe::new(
                ferry_event::agent::group(&backend),
                [Topic::Dispatch(backend.clone())],
            );
            self.bus.declare(&spec).await?;
            self.declared.insert(backend);
        }
        Ok(())
    }

    /// Events committed but not yet confirmed by the bus.
    pub fn unpublished(&self) -> usize {
        self.unpublished.len()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
