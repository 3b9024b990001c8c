//! ferry's Prometheus metrics, in one place: every metric's name, help, type and labels are
//! defined here once, registered in one process-wide registry, and recorded through the
//! functions below. [`encode`] renders the registry in the OpenMetrics text format for
//! `GET /metrics` (`ferry_connect::endpoint`).
//!
//! Labels are bounded: a backend, a namespace, a flow id, an outcome, a topic kind, a store, an
//! api route template and a status class, never a job, task or attempt id. Values that come
//! from users (backend, namespace and flow names) are capped per label ([`Bounded`]): past
//! [`MAX_BACKENDS`], [`MAX_NAMESPACES`] or [`MAX_FLOWS`] distinct values, new ones are counted
//! under [`OTHER`].
//!
//! Recording costs an atomic add or a short map lookup; nothing is exported unless a process
//! serves the endpoint.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The names as Prometheus shows them (counters with their `_total`), for dashboards, alerts
/// and documentation.
pub mod name {
    /// Histogram {backend}: seconds from a task becoming ready to its compute starting.
    pub const DISPATCH_LATENCY: &str = "ferry_dispatch_latency_seconds";
    /// Counter {outcome}: tasks that ended (succeeded, failed, cancelled).
    pub const TASKS_ENDED: &str = "ferry_tasks_ended_total";
    /// Counter: task attempts that ended and are tried again.
    pub const TASK_RETRIES: &str = "ferry_task_retries_total";
    /// Counter {outcome}: jobs that ended (succeeded, failed, cancelled).
    pub const JOBS_ENDED: &str = "ferry_jobs_ended_total";
    /// Counter: jobs that started (their first task was dispatched).
    pub const JOBS_STARTED: &str = "ferry_jobs_started_total";
    /// Counter {outcome}: submissions the planner accepted (planned) or rejected.
    pub const JOBS_PLANNED: &str = "ferry_jobs_planned_total";
    /// Gauge: jobs not ended, as the scheduler's database holds them.
    pub const JOBS_ACTIVE: &str = "ferry_jobs_active";
    /// Gauge {backend}: tasks ready or dispatched and not started, per backend.
    pub const TASKS_WAITING: &str = "ferry_tasks_waiting";
    /// Gauge {backend}: seconds the longest-waiting dispatched, not started task has waited
    /// since it became ready.
    pub const TASKS_WAITING_OLDEST: &str = "ferry_tasks_waiting_oldest_seconds";
    /// Gauge {backend}: launcher instances serving the backend, as they announced themselves.
    pub const LAUNCHERS: &str = "ferry_launchers";
    /// Counter {backend}: attempts the scheduler ended because their lease lapsed.
    pub const LEASES_LAPSED: &str = "ferry_leases_lapsed_total";
    /// Gauge {backend}: attempts a launcher holds and has not finished.
    pub const ATTEMPTS_IN_FLIGHT: &str = "ferry_attempts_in_flight";
    /// Gauge {backend}: attempts a launcher received and has not started, its window full.
    pub const ATTEMPTS_QUEUED: &str = "ferry_attempts_queued";
    /// Counter {backend, namespace, flow}: seconds of compute held by attempts.
    pub const COMPUTE_SECONDS: &str = "ferry_compute_seconds_total";
    /// Histogram: seconds a publish took until the broker confirmed it.
    pub const BUS_PUBLISH: &str = "ferry_bus_publish_seconds";
    /// Counter {topic}: events published.
    pub const BUS_PUBLISHED: &str = "ferry_bus_published_total";
    /// Counter: publishes that failed (retried by their publisher).
    pub const BUS_PUBLISH_ERRORS: &str = "ferry_bus_publish_errors_total";
    /// Histogram {topic}: seconds from an event's `time` to its delivery to a consumer.
    pub const BUS_CONSUME_LAG: &str = "ferry_bus_consume_lag_seconds";
    /// Counter {topic}: deliveries received.
    pub const BUS_DELIVERIES: &str = "ferry_bus_deliveries_total";
    /// Counter {topic}: deliveries the broker marked as delivered before.
    pub const BUS_REDELIVERIES: &str = "ferry_bus_redeliveries_total";
    /// Counter {topic}: deliveries moved to the dead letters.
    pub const BUS_DEAD_LETTERS: &str = "ferry_bus_dead_letters_total";
    /// Histogram {store}: seconds a database transaction took, from begin to commit.
    pub const DB_TRANSACTION: &str = "ferry_db_transaction_seconds";
    /// Counter {store}: waits for a database out of reach while holding a batch.
    pub const DB_OUTAGE_HOLDS: &str = "ferry_db_outage_holds_total";
    /// Counter: log lines stored by the log collector.
    pub const LOG_LINES_STORED: &str = "ferry_log_lines_stored_total";
    /// Counter: bytes of log text stored by the log collector.
    pub const LOG_BYTES_STORED: &str = "ferry_log_bytes_stored_total";
    /// Counter: log lines deleted by retention.
    pub const LOG_LINES_EXPIRED: &str = "ferry_log_lines_expired_total";
    /// Counter: log lines not stored, their namespace at its log quota.
    pub const LOG_LINES_DROPPED: &str = "ferry_log_lines_dropped_total";
    /// Histogram {route, method, status}: seconds the api took to answer a request.
    pub const API_REQUEST: &str = "ferry_api_request_seconds";
    /// Gauge {version}: 1, for every process serving metrics.
    pub const BUILD_INFO: &str = "ferry_build_info";

    /// Every name, for tests and documentation.
    pub const ALL: &[&str] = &[
        DISPATCH_LATENCY,
        TASKS_ENDED,
        TASK_RETRIES,
        JOBS_ENDED,
        JOBS_STARTED,
        JOBS_PLANNED,
        JOBS_ACTIVE,
        TASKS_WAITING,
        TASKS_WAITING_OLDEST,
        LAUNCHERS,
        LEASES_LAPSED,
        ATTEMPTS_IN_FLIGHT,
        ATTEMPTS_QUEUED,
        COMPUTE_SECONDS,
        BUS_PUBLISH,
        BUS_PUBLISHED,
        BUS_PUBLISH_ERRORS,
        BUS_CONSUME_LAG,
        BUS_DELIVERIES,
        BUS_REDELIVERIES,
        BUS_DEAD_LETTERS,
        DB_TRANSACTION,
        DB_OUTAGE_HOLDS,
        LOG_LINES_STORED,
        LOG_BYTES_STORED,
        LOG_LINES_EXPIRED,
        LOG_LINES_DROPPED,
        API_REQUEST,
        BUILD_INFO,
    ];
}

/// The value counted in place of label values past a label's cap.
pub const OTHER: &str = "other";
/// Distinct backends counted before new ones are [`OTHER`].
pub const MAX_BACKENDS: usize = 32;
/// Distinct namespaces counted before new ones are [`OTHER`].
pub const MAX_NAMESPACES: usize = 100;
/// Distinct flow ids counted before new ones are [`OTHER`].
pub const MAX_FLOWS: usize = 500;
/// Longest label value kept; longer ones are cut.
pub const MAX_VALUE_CHARS: usize = 64;

/// A label whose values come from users, capped at `max` distinct values: the first `max`
/// seen are kept, later new ones become [`OTHER`]. Keeps a series count bounded whatever
/// names a deployment's flows use.
#[derive(Debug)]
pub struct Bounded {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl Bounded {
    pub fn new(max: usize) -> Bounded {
        Bounded {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The value to record for `value`: itself (cut to [`MAX_VALUE_CHARS`], `none` when
    /// empty) while the cap allows, [`OTHER`] after.
    pub fn value(&self, value: &str) -> String {
        let value = match value.char_indices().nth(MAX_VALUE_CHARS) {
            Some((i, _)) => &value[..i],
            None if value.is_empty() => "none",
            None => value,
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() >= self.max {
            return OTHER.to_string();
        }
        seen.insert(value.to_string());
        value.to_string()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComputeLabels {
    backend: String,
    namespace: String,
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies of work a person waits for: 5 ms to about 80 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Latencies of a round trip to a broker or a database: 0.5 ms to about 8 s.
fn io_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The topic kinds, the `topic` label's values.
pub const TOPICS: [&str; 6] = ["intake", "control", "lifecycle", "dispatch", "cancel", "logs"];

/// The stores, the `store` label's values.
pub const STORES: [&str; 3] = ["scheduler", "read-model", "logs"];

/// Every instrument, and the registry that renders them.
struct Metrics {
    registry: Registry,
    backends: Bounded,
    namespaces: Bounded,
    flows: Bounded,
    /// Backends a [`SchedulerSample`] named, kept at zero once absent.
    sampled: Mutex<HashSet<String>>,
    dispatch_latency: Histograms<BackendLabel>,
    tasks_ended: Family<OutcomeLabel, Counter>,
    task_retries: Counter,
    jobs_ended: Family<OutcomeLabel, Counter>,
    jobs_started: Counter,
    jobs_planned: Family<OutcomeLabel, Counter>,
    jobs_active: Gauge,
    tasks_waiting: Family<BackendLabel, Gauge>,
    tasks_waiting_oldest: Family<BackendLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    launchers: Family<BackendLabel, Gauge>,
    leases_lapsed: Family<BackendLabel, Counter>,
    attempts_in_flight: Family<BackendLabel, Gauge>,
    attempts_queued: Family<BackendLabel, Gauge>,
    compute_seconds: Family<ComputeLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    bus_publish: Histogram,
    bus_published: Family<TopicLabel, Counter>,
    bus_publish_errors: Counter,
    bus_consume_lag: Histograms<TopicLabel>,
    bus_deliveries: Family<TopicLabel, Counter>,
    bus_redeliveries: Family<TopicLabel, Counter>,
    bus_dead_letters: Family<TopicLabel, Counter>,
    db_transaction: Histograms<StoreLabel>,
    db_outage_holds: Family<StoreLabel, Counter>,
    log_lines_stored: Counter,
    log_bytes_stored: Counter,
    log_lines_expired: Counter,
    log_lines_dropped: Counter,
    api_request: Histograms<RequestLabels>,
}

/// A counter's registered name: the exposition adds `_total`.
fn counter_name(exposed: &str) -> &str {
    exposed.strip_suffix("_total").unwrap_or(exposed)
}

impl Metrics {
    fn new() -> Metrics {
        use name::*;
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            backends: Bounded::new(MAX_BACKENDS),
            namespaces: Bounded::new(MAX_NAMESPACES),
            flows: Bounded::new(MAX_FLOWS),
            sampled: Mutex::default(),
            dispatch_latency: Family::new_with_constructor(latency_buckets),
            tasks_ended: Family::default(),
            task_retries: Counter::default(),
            jobs_ended: Family::default(),
            jobs_started: Counter::default(),
            jobs_planned: Family::default(),
            jobs_active: Gauge::default(),
            tasks_waiting: Family::default(),
            tasks_waiting_oldest: Family::default(),
            launchers: Family::default(),
            leases_lapsed: Family::default(),
            attempts_in_flight: Family::default(),
            attempts_queued: Family::default(),
            compute_seconds: Family::default(),
            bus_publish: io_buckets(),
            bus_published: Family::default(),
            bus_publish_errors: Counter::default(),
            bus_consume_lag: Family::new_with_constructor(latency_buckets),
            bus_deliveries: Family::default(),
            bus_redeliveries: Family::default(),
            bus_dead_letters: Family::default(),
            db_transaction: Family::new_with_constructor(io_buckets),
            db_outage_holds: Family::default(),
            log_lines_stored: Counter::default(),
            log_bytes_stored: Counter::default(),
            log_lines_expired: Counter::default(),
            log_lines_dropped: Counter::default(),
            api_request: Family::new_with_constructor(latency_buckets),
        };
        let r = &mut registry;
        r.register(
            DISPATCH_LATENCY,
            "Seconds from a task becoming ready to its compute starting",
            m.dispatch_latency.clone(),
        );
        r.register(
            counter_name(TASKS_ENDED),
            "Tasks that ended, by outcome (succeeded, failed, cancelled)",
            m.tasks_ended.clone(),
        );
        r.register(
            counter_name(TASK_RETRIES),
            "Task attempts that ended and are tried again",
            m.task_retries.clone(),
        );
        r.register(
            counter_name(JOBS_ENDED),
            "Jobs that ended, by outcome (succeeded, failed, cancelled)",
            m.jobs_ended.clone(),
        );
        r.register(
            counter_name(JOBS_STARTED),
            "Jobs that started",
            m.jobs_started.clone(),
        );
        r.register(
            counter_name(JOBS_PLANNED),
            "Submissions the planner planned or rejected, by outcome",
            m.jobs_planned.clone(),
        );
        r.register(
            JOBS_ACTIVE,
            "Jobs not ended, as the scheduler's database holds them",
            m.jobs_active.clone(),
        );
        r.register(
            TASKS_WAITING,
            "Tasks ready or dispatched and not started, by backend",
            m.tasks_waiting.clone(),
        );
        r.register(
            TASKS_WAITING_OLDEST,
            "Seconds the longest-waiting dispatched task has waited since ready, by backend",
            m.tasks_waiting_oldest.clone(),
        );
        r.register(
            LAUNCHERS,
            "Launcher instances serving a backend, as they announced themselves",
            m.launchers.clone(),
        );
        r.register(
            counter_name(LEASES_LAPSED),
            "Attempts ended by the scheduler because their lease lapsed, by backend",
            m.leases_lapsed.clone(),
        );
        r.register(
            ATTEMPTS_IN_FLIGHT,
            "Attempts a launcher holds and has not finished, by backend",
            m.attempts_in_flight.clone(),
        );
        r.register(
            ATTEMPTS_QUEUED,
            "Attempts a launcher received and has not started (its window is full), by backend",
            m.attempts_queued.clone(),
        );
        r.register(
            counter_name(COMPUTE_SECONDS),
            "Seconds of compute held by attempts, by backend, namespace and flow",
            m.compute_seconds.clone(),
        );
        r.register(
            BUS_PUBLISH,
            "Seconds a publish took until the broker confirmed it",
            m.bus_publish.clone(),
        );
        r.register(
            counter_name(BUS_PUBLISHED),
            "Events published, by topic",
            m.bus_published.clone(),
        );
        r.register(
            counter_name(BUS_PUBLISH_ERRORS),
            "Publishes that failed (their publisher retries them)",
            m.bus_publish_errors.clone(),
        );
        r.register(
            BUS_CONSUME_LAG,
            "Seconds from an event's time to its delivery to a consumer, by topic",
            m.bus_consume_lag.clone(),
        );
        r.register(
            counter_name(BUS_DELIVERIES),
            "Deliveries received, by topic",
            m.bus_deliveries.clone(),
        );
        r.register(
            counter_name(BUS_REDELIVERIES),
            "Deliveries the broker marked as delivered before, by topic",
            m.bus_redeliveries.clone(),
        );
        r.register(
            counter_name(BUS_DEAD_LETTERS),
            "Deliveries moved to the dead letters, by topic",
            m.bus_dead_letters.clone(),
        );
        r.register(
            DB_TRANSACTION,
            "Seconds a database transaction took, from begin to commit, by store",
            m.db_transaction.clone(),
        );
        r.register(
            counter_name(DB_OUTAGE_HOLDS),
            "Waits for a database out of reach while holding a batch, by store",
            m.db_outage_holds.clone(),
        );
        r.register(
            counter_name(LOG_LINES_STORED),
            "Log lines stored",
            m.log_lines_stored.clone(),
        );
        r.register(
            counter_name(LOG_BYTES_STORED),
            "Bytes of log text stored",
            m.log_bytes_stored.clone(),
        );
        r.register(
            counter_name(LOG_LINES_EXPIRED),
            "Log lines deleted by retention",
            m.log_lines_expired.clone(),
        );
        r.register(
            counter_name(LOG_LINES_DROPPED),
            "Log lines not stored: their namespace was at its log quota",
            m.log_lines_dropped.clone(),
        );
        r.register(
            API_REQUEST,
            "Seconds the api took to answer a request, by route template, method and status class",
            m.api_request.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register(BUILD_INFO, "1, labelled with ferry's version", build);
        // Series of known label values exist from the start, at zero: a rate over a counter
        // that appears only at its first increment misses that increment, and a dashboard
        // shows 0 rather than nothing.
        for outcome in ["succeeded", "failed", "cancelled"] {
            let label = OutcomeLabel {
                outcome: outcome.to_string(),
            };
            drop(m.tasks_ended.get_or_create(&label));
            drop(m.jobs_ended.get_or_create(&label));
        }
        for outcome in ["planned", "rejected"] {
            drop(m.jobs_planned.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            }));
        }
        for topic in TOPICS {
            let label = TopicLabel {
                topic: topic.to_string(),
            };
            drop(m.bus_published.get_or_create(&label));
            drop(m.bus_deliveries.get_or_create(&label));
            drop(m.bus_redeliveries.get_or_create(&label));
            drop(m.bus_dead_letters.get_or_create(&label));
        }
        for store in STORES {
            drop(m.db_outage_holds.get_or_create(&StoreLabel {
                store: store.to_string(),
            }));
        }
        Metrics { registry, ..m }
    }

    fn backend(&self, backend: &str) -> BackendLabel {
        BackendLabel {
            backend: self.backends.value(backend),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Every metric in the OpenMetrics text format (`Content-Type:` [`CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &METRICS.registry);
    text
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A task became ready `latency` before its compute started, on `backend`.
pub fn dispatch_latency(backend: &str, latency: Duration) {
    let m = &*METRICS;
    m.dispatch_latency
        .get_or_create(&m.backend(backend))
        .observe(latency.as_secs_f64());
}

/// A task ended: `outcome` is `succeeded`, `failed` or `cancelled`.
pub fn task_ended(outcome: &'static str) {
    tasks_ended(outcome, 1);
}

/// `n` tasks ended together (a big job's pending tasks cancelled at once).
pub fn tasks_ended(outcome: &'static str, n: u64) {
    METRICS
        .tasks_ended
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc_by(n);
}

/// A task's attempt ended and the task is tried again.
pub fn task_retried() {
    tasks_retried(1);
}

/// `n` tasks are tried again together (a job retry re-queued them).
pub fn tasks_retried(n: u64) {
    METRICS.task_retries.inc_by(n);
}

/// A job ended: `outcome` is `succeeded`, `failed` or `cancelled`.
pub fn job_ended(outcome: &'static str) {
    METRICS
        .jobs_ended
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// A job started.
pub fn job_started() {
    METRICS.jobs_started.inc();
}

/// The planner planned (`planned`) or rejected (`rejected`) a submission.
pub fn job_planned(outcome: &'static str) {
    METRICS
        .jobs_planned
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// What the scheduler's database holds now: jobs not ended, and per backend the tasks waiting
/// to start, how long the oldest has waited, and the launchers serving it. Backends absent
/// from a sample are set to zero.
#[derive(Debug, Default, Clone)]
pub struct SchedulerSample {
    pub jobs_active: i64,
    /// Backend, tasks waiting, seconds the oldest waited.
    pub waiting: Vec<(String, i64, f64)>,
    /// Backend, launcher instances.
    pub launchers: Vec<(String, i64)>,
}

/// Records a [`SchedulerSample`].
pub fn scheduler_sample(sample: &SchedulerSample) {
    let m = &*METRICS;
    m.jobs_active.set(sample.jobs_active);
    // Every backend sampled once stays, at zero when the sample lacks it.
    let mut sampled = m.sampled.lock().unwrap_or_else(|p| p.into_inner());
    let mut waiting: Vec<(String, i64, f64)> = Vec::new();
    for (backend, n, oldest) in &sample.waiting {
        waiting.push((m.backends.value(backend), *n, *oldest));
    }
    let mut launchers: Vec<(String, i64)> = Vec::new();
    for (backend, n) in &sample.launchers {
        launchers.push((m.backends.value(backend), *n));
    }
    sampled.extend(waiting.iter().map(|w| w.0.clone()));
    sampled.extend(launchers.iter().map(|l| l.0.clone()));
    for backend in sampled.iter() {
        let label = BackendLabel {
            backend: backend.clone(),
        };
        // Values folded into `other` add up.
        let (n, oldest) = waiting
            .iter()
            .filter(|w| &w.0 == backend)
            .fold((0, 0.0f64), |(n, o), w| (n + w.1, o.max(w.2)));
        m.tasks_waiting.get_or_create(&label).set(n);
        m.tasks_waiting_oldest.get_or_create(&label).set(oldest);
        let l: i64 = launchers.iter().filter(|l| &l.0 == backend).map(|l| l.1).sum();
        m.launchers.get_or_create(&label).set(l);
        drop(m.leases_lapsed.get_or_create(&label));
    }
}

/// The scheduler ended an attempt on `backend` whose lease lapsed.
pub fn lease_lapsed(backend: &str) {
    let m = &*METRICS;
    m.leases_lapsed.get_or_create(&m.backend(backend)).inc();
}

/// A launcher of `backend` holds `in_flight` attempts and `queued` more wait for room.
pub fn attempts(backend: &str, in_flight: usize, queued: usize) {
    let m = &*METRICS;
    let label = m.backend(backend);
    m.attempts_in_flight
        .get_or_create(&label)
        .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    m.attempts_queued
        .get_or_create(&label)
        .set(i64::try_from(queued).unwrap_or(i64::MAX));
}

/// An attempt of flow `flow` in `namespace` (`None`: the `default` namespace) held compute on
/// `backend` for `held` (its report's `computeMs`).
pub fn compute(backend: &str, namespace: Option<&str>, flow: &str, held: Duration) {
    let m = &*METRICS;
    let labels = ComputeLabels {
        backend: m.backends.value(backend),
        namespace: m.namespaces.value(namespace.unwrap_or("default")),
        flow: m.flows.value(flow),
    };
    m.compute_seconds
        .get_or_create(&labels)
        .inc_by(held.as_secs_f64());
}

/// A publish of events took `took`; `topics` names each event's topic kind. A failed one
/// counts as an error only.
pub fn bus_published(took: Duration, ok: bool, topics: impl IntoIterator<Item = &'static str>) {
    let m = &*METRICS;
    if !ok {
        m.bus_publish_errors.inc();
        return;
    }
    m.bus_publish.observe(took.as_secs_f64());
    for topic in topics {
        m.bus_published
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
    }
}

/// A delivery on a topic of kind `topic` arrived `lag` after its event's time; `redelivered`
/// when the broker delivered it before.
pub fn bus_delivered(topic: &'static str, lag: Option<Duration>, redelivered: bool) {
    let m = &*METRICS;
    let label = TopicLabel {
        topic: topic.to_string(),
    };
    m.bus_deliveries.get_or_create(&label).inc();
    if redelivered {
        m.bus_redeliveries.get_or_create(&label).inc();
    }
    if let Some(lag) = lag {
        m.bus_consume_lag.get_or_create(&label).observe(lag.as_secs_f64());
    }
}

/// A delivery on a topic of kind `topic` was dead-lettered.
pub fn bus_dead_lettered(topic: &'static str) {
    METRICS
        .bus_dead_letters
        .get_or_create(&TopicLabel {
            topic: topic.to_string(),
        })
        .inc();
}

/// A transaction of `store` (`scheduler`, `read-model`, `logs`) took `took` to commit.
pub fn db_transaction(store: &'static str, took: Duration) {
    METRICS
        .db_transaction
        .get_or_create(&StoreLabel {
            store: store.to_string(),
        })
        .observe(took.as_secs_f64());
}

/// `store` was out of reach and a batch is held until it answers.
pub fn db_outage_hold(store: &'static str) {
    METRICS
        .db_outage_holds
        .get_or_create(&StoreLabel {
            store: store.to_string(),
        })
        .inc();
}

/// The log collector stored `lines` lines holding `bytes` bytes of text.
pub fn logs_stored(lines: u64, bytes: u64) {
    METRICS.log_lines_stored.inc_by(lines);
    METRICS.log_bytes_stored.inc_by(bytes);
}

/// Retention deleted `lines` log lines.
pub fn logs_expired(lines: u64) {
    METRICS.log_lines_expired.inc_by(lines);
}

/// `lines` log lines were not stored: their namespace was at its quota.
pub fn logs_dropped(lines: u64) {
    METRICS.log_lines_dropped.inc_by(lines);
}

/// The api answered a request to `route` (its template, `/jobs/{id}`; `unmatched` for none)
/// with `status` after `took`.
pub fn api_request(route: &str, method: &str, status: u16, took: Duration) {
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "PATCH" | "OPTIONS" => method,
        _ => OTHER,
    };
    let status = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    METRICS
        .api_request
        .get_or_create(&RequestLabels {
            route: route.to_string(),
            method: method.to_string(),
            status: status.to_string(),
        })
        .observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_label_values_are_capped_and_cut() {
        let b = Bounded::new(2);
        assert_eq!(b.value("a"), "a");
        assert_eq!(b.value("b"), "b");
        assert_eq!(b.value("c"), OTHER);
        assert_eq!(b.value("a"), "a", "a value seen before stays itself");
        assert_eq!(b.value(""), OTHER);
        let long = "x".repeat(200);
        let b = Bounded::new(2);
        assert_eq!(b.value(&long).len(), MAX_VALUE_CHARS);
        assert_eq!(b.value(""), "none");
    }

    #[test]
    fn flows_past_the_cap_are_counted_as_other() {
        for i in 0..MAX_FLOWS + 50 {
            compute(
                "local",
                Some("cap-test"),
                &format!("flow-{i}"),
                Duration::from_secs(1),
            );
        }
        let text = encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with(name::COMPUTE_SECONDS) && l.contains("namespace=\"cap-test\""))
            .count();
        assert!(series <= MAX_FLOWS + 1, "{series} series");
        assert!(text.contains(&format!(
            "{}{{backend=\"local\",namespace=\"cap-test\",flow=\"other\"}} 50",
            name::COMPUTE_SECONDS
        )));
    }

    #[test]
    fn the_exposition_names_every_metric_once_with_help_and_type() {
        let ms = Duration::from_millis(3);
        dispatch_latency("local", ms);
        task_ended("succeeded");
        task_retried();
        job_ended("failed");
        job_started();
        job_planned("planned");
        scheduler_sample(&SchedulerSample {
            jobs_active: 1,
            waiting: vec![("local".into(), 2, 1.5)],
            launchers: vec![("local".into(), 1)],
        });
        lease_lapsed("local");
        attempts("local", 1, 0);
        compute("local", None, "f", ms);
        bus_published(ms, true, ["control"]);
        bus_published(ms, false, []);
        bus_delivered("control", Some(ms), true);
        bus_dead_lettered("control");
        db_transaction("scheduler", ms);
        db_outage_hold("scheduler");
        logs_stored(1, 10);
        logs_expired(1);
        logs_dropped(1);
        api_request("/jobs/{id}", "GET", 200, ms);
        let text = encode();
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        for exposed in name::ALL {
            let family = counter_name(exposed);
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family} is declared once:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {family} ")), "{family} has help");
        }
        assert!(text.contains("ferry_dispatch_latency_seconds_count{backend=\"local\"} "));
        assert!(text.contains("ferry_tasks_ended_total{outcome=\"succeeded\"} "));
        assert!(text.contains(
            "ferry_api_request_seconds_count{route=\"/jobs/{id}\",method=\"GET\",status=\"2xx\"} "
        ));
        // Every sample line is `name{labels} value`, the value a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(line.starts_with("ferry_"), "{line}");
        }
    }
}
