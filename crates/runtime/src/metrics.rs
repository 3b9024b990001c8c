//! ferry's metrics, in one place: every metric's name, help, type, unit, buckets and labels
//! are defined here once ([`DEFS`]), registered in one process-wide registry, and recorded
//! through the functions below. [`encode`] renders the registry in the OpenMetrics text format
//! for `GET /metrics` (`ferry_connect::endpoint`); every service of a process (`ferry up`,
//! `ferry run`) records into that one registry. When the process exports metrics over OTLP
//! ([`crate::telemetry::Telemetry::export_metrics`]), the same functions also record into
//! OpenTelemetry instruments made from [`DEFS`], with the same label values.
//!
//! Labels are bounded: a backend, a namespace, a flow id, an outcome, a topic kind, a store, an
//! api route template and a status class, never a job, task or attempt id. Values that come
//! from users (backend, namespace and flow names) are capped per label ([`Bounded`]): past
//! [`MAX_BACKENDS`], [`MAX_NAMESPACES`] or [`MAX_FLOWS`] distinct values, new ones are counted
//! under [`OTHER`].
//!
//! Recording costs an atomic add or a short map lookup, and one atomic load more while OTLP is
//! off; nothing is exported unless a process serves the endpoint or exports over OTLP.

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

/// What a metric is: a counter, a gauge, or a histogram with its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram(Buckets),
}

/// The buckets of a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buckets {
    /// Latencies of work a person waits for: 5 ms to about 80 s.
    Latency,
    /// Latencies of a round trip to a broker or a database: 0.5 ms to about 8 s.
    Io,
}

impl Buckets {
    /// The buckets' upper bounds, in seconds.
    pub fn bounds(self) -> Vec<f64> {
        match self {
            Buckets::Latency => exponential_buckets(0.005, 2.0, 15).collect(),
            Buckets::Io => exponential_buckets(0.0005, 2.0, 15).collect(),
        }
    }
}

/// One metric, as both exports show it: Prometheus (`GET /metrics`) and OTLP.
#[derive(Debug)]
pub struct Def {
    /// The name as Prometheus shows it ([`name`]); over OTLP a counter's lacks the `_total`,
    /// which Prometheus adds to counters.
    pub name: &'static str,
    pub kind: Kind,
    /// The UCUM unit OTLP carries (`s`, `By`), empty for a count.
    pub unit: &'static str,
    /// The labels (OTLP attributes) of its series, in order.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Every metric: the one definition both exports read.
pub const DEFS: &[Def] = &[
    Def {
        name: name::DISPATCH_LATENCY,
        kind: Kind::Histogram(Buckets::Latency),
        unit: "s",
        labels: &["backend"],
        help: "Seconds from a task becoming ready to its compute starting",
    },
    Def {
        name: name::TASKS_ENDED,
        kind: Kind::Counter,
        unit: "",
        labels: &["outcome"],
        help: "Tasks that ended, by outcome (succeeded, failed, cancelled)",
    },
    Def {
        name: name::TASK_RETRIES,
        kind: Kind::Counter,
        unit: "",
        labels: &[],
        help: "Task attempts that ended and are tried again",
    },
    Def {
        name: name::JOBS_ENDED,
        kind: Kind::Counter,
        unit: "",
        labels: &["outcome"],
        help: "Jobs that ended, by outcome (succeeded, failed, cancelled)",
    },
    Def {
        name: name::JOBS_STARTED,
        kind: Kind::Counter,
        unit: "",
        labels: &[],
        help: "Jobs that started",
    },
    Def {
        name: name::JOBS_PLANNED,
        kind: Kind::Counter,
        unit: "",
        labels: &["outcome"],
        help: "Submissions the planner planned or rejected, by outcome",
    },
    Def {
        name: name::JOBS_ACTIVE,
        kind: Kind::Gauge,
        unit: "",
        labels: &[],
        help: "Jobs not ended, as the scheduler's database holds them",
    },
    Def {
        name: name::TASKS_WAITING,
        kind: Kind::Gauge,
        unit: "",
        labels: &["backend"],
        help: "Tasks ready or dispatched and not started, by backend",
    },
    Def {
        name: name::TASKS_WAITING_OLDEST,
        kind: Kind::Gauge,
        unit: "s",
        labels: &["backend"],
        help: "Seconds the longest-waiting dispatched task has waited since ready, by backend",
    },
    Def {
        name: name::LAUNCHERS,
        kind: Kind::Gauge,
        unit: "",
        labels: &["backend"],
        help: "Launcher instances serving a backend, as they announced themselves",
    },
    Def {
        name: name::LEASES_LAPSED,
        kind: Kind::Counter,
        unit: "",
        labels: &["backend"],
        help: "Attempts ended by the scheduler because their lease lapsed, by backend",
    },
    Def {
        name: name::ATTEMPTS_IN_FLIGHT,
        kind: Kind::Gauge,
        unit: "",
        labels: &["backend"],
        help: "Attempts a launcher holds and has not finished, by backend",
    },
    Def {
        name: name::ATTEMPTS_QUEUED,
        kind: Kind::Gauge,
        unit: "",
        labels: &["backend"],
        help: "Attempts a launcher received and has not started (its window is full), by backend",
    },
    Def {
        name: name::COMPUTE_SECONDS,
        kind: Kind::Counter,
        unit: "s",
        labels: &["backend", "namespace", "flow"],
        help: "Seconds of compute held by attempts, by backend, namespace and flow",
    },
    Def {
        name: name::BUS_PUBLISH,
        kind: Kind::Histogram(Buckets::Io),
        unit: "s",
        labels: &[],
        help: "Seconds a publish took until the broker confirmed it",
    },
    Def {
        name: name::BUS_PUBLISHED,
        kind: Kind::Counter,
        unit: "",
        labels: &["topic"],
        help: "Events published, by topic",
    },
    Def {
        name: name::BUS_PUBLISH_ERRORS,
        kind: Kind::Counter,
        unit: "",
        labels: &[],
        help: "Publishes that failed (their publisher retries them)",
    },
    Def {
        name: name::BUS_CONSUME_LAG,
        kind: Kind::Histogram(Buckets::Latency),
        unit: "s",
        labels: &["topic"],
        help: "Seconds from an event's time to its delivery to a consumer, by topic",
    },
    Def {
        name: name::BUS_DELIVERIES,
        kind: Kind::Counter,
        unit: "",
        labels: &["topic"],
        help: "Deliveries received, by topic",
    },
    Def {
        name: name::BUS_REDELIVERIES,
        kind: Kind::Counter,
        unit: "",
        labels: &["topic"],
        help: "Deliveries the broker marked as delivered before, by topic",
    },
    Def {
        name: name::BUS_DEAD_LETTERS,
        kind: Kind::Counter,
        unit: "",
        labels: &["topic"],
        help: "Deliveries moved to the dead letters, by topic",
    },
    Def {
        name: name::DB_TRANSACTION,
        kind: Kind::Histogram(Buckets::Io),
        unit: "s",
        labels: &["store"],
        help: "Seconds a database transaction took, from begin to commit, by store",
    },
    Def {
        name: name::DB_OUTAGE_HOLDS,
        kind: Kind::Counter,
        unit: "",
        labels: &["store"],
        help: "Waits for a database out of reach while holding a batch, by store",
    },
    Def {
        name: name::LOG_LINES_STORED,
        kind: Kind::Counter,
        unit: "",
        labels: &[],
        help: "Log lines stored",
    },
    Def {
        name: name::LOG_BYTES_STORED,
        kind: Kind::Counter,
        unit: "By",
        labels: &[],
        help: "Bytes of log text stored",
    },
    Def {
        name: name::LOG_LINES_EXPIRED,
        kind: Kind::Counter,
        unit: "",
        labels: &[],
        help: "Log lines deleted by retention",
    },
    Def {
        name: name::LOG_LINES_DROPPED,
        kind: Kind::Counter,
        unit: "",
        labels: &[],
        help: "Log lines not stored: their namespace was at its log quota",
    },
    Def {
        name: name::API_REQUEST,
        kind: Kind::Histogram(Buckets::Latency),
        unit: "s",
        labels: &["route", "method", "status"],
        help: "Seconds the api took to answer a request, by route template, method and status class",
    },
    Def {
        name: name::BUILD_INFO,
        kind: Kind::Gauge,
        unit: "",
        labels: &["version"],
        help: "1, labelled with ferry's version",
    },
];

/// The definition of the metric Prometheus shows as `exposed`.
///
/// # Panics
/// When `exposed` is none of [`name::ALL`]: the names are constants of this module.
pub fn def(exposed: &str) -> &'static Def {
    DEFS.iter()
        .find(|d| d.name == exposed)
        .unwrap_or_else(|| panic!("{exposed} is not a metric of ferry's"))
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

fn latency_buckets() -> Histogram {
    Histogram::new(Buckets::Latency.bounds())
}

fn io_buckets() -> Histogram {
    Histogram::new(Buckets::Io.bounds())
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

/// Registers `metric` as its definition ([`def`]) says.
fn reg(r: &mut Registry, exposed: &'static str, metric: impl prometheus_client::registry::Metric) {
    r.register(counter_name(exposed), def(exposed).help, metric);
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
        reg(r, DISPATCH_LATENCY, m.dispatch_latency.clone());
        reg(r, TASKS_ENDED, m.tasks_ended.clone());
        reg(r, TASK_RETRIES, m.task_retries.clone());
        reg(r, JOBS_ENDED, m.jobs_ended.clone());
        reg(r, JOBS_STARTED, m.jobs_started.clone());
        reg(r, JOBS_PLANNED, m.jobs_planned.clone());
        reg(r, JOBS_ACTIVE, m.jobs_active.clone());
        reg(r, TASKS_WAITING, m.tasks_waiting.clone());
        reg(r, TASKS_WAITING_OLDEST, m.tasks_waiting_oldest.clone());
        reg(r, LAUNCHERS, m.launchers.clone());
        reg(r, LEASES_LAPSED, m.leases_lapsed.clone());
        reg(r, ATTEMPTS_IN_FLIGHT, m.attempts_in_flight.clone());
        reg(r, ATTEMPTS_QUEUED, m.attempts_queued.clone());
        reg(r, COMPUTE_SECONDS, m.compute_seconds.clone());
        reg(r, BUS_PUBLISH, m.bus_publish.clone());
        reg(r, BUS_PUBLISHED, m.bus_published.clone());
        reg(r, BUS_PUBLISH_ERRORS, m.bus_publish_errors.clone());
        reg(r, BUS_CONSUME_LAG, m.bus_consume_lag.clone());
        reg(r, BUS_DELIVERIES, m.bus_deliveries.clone());
        reg(r, BUS_REDELIVERIES, m.bus_redeliveries.clone());
        reg(r, BUS_DEAD_LETTERS, m.bus_dead_letters.clone());
        reg(r, DB_TRANSACTION, m.db_transaction.clone());
        reg(r, DB_OUTAGE_HOLDS, m.db_outage_holds.clone());
        reg(r, LOG_LINES_STORED, m.log_lines_stored.clone());
        reg(r, LOG_BYTES_STORED, m.log_bytes_stored.clone());
        reg(r, LOG_LINES_EXPIRED, m.log_lines_expired.clone());
        reg(r, LOG_LINES_DROPPED, m.log_lines_dropped.clone());
        reg(r, API_REQUEST, m.api_request.clone());
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        reg(r, BUILD_INFO, build);
        for (exposed, value) in known_series() {
            let outcome = || OutcomeLabel {
                outcome: value.to_string(),
            };
            let topic = || TopicLabel {
                topic: value.to_string(),
            };
            match exposed {
                TASKS_ENDED => drop(m.tasks_ended.get_or_create(&outcome())),
                JOBS_ENDED => drop(m.jobs_ended.get_or_create(&outcome())),
                JOBS_PLANNED => drop(m.jobs_planned.get_or_create(&outcome())),
                BUS_PUBLISHED => drop(m.bus_published.get_or_create(&topic())),
                BUS_DELIVERIES => drop(m.bus_deliveries.get_or_create(&topic())),
                BUS_REDELIVERIES => drop(m.bus_redeliveries.get_or_create(&topic())),
                BUS_DEAD_LETTERS => drop(m.bus_dead_letters.get_or_create(&topic())),
                DB_OUTAGE_HOLDS => drop(m.db_outage_holds.get_or_create(&StoreLabel {
                    store: value.to_string(),
                })),
                _ => unreachable!("known_series names {exposed}"),
            }
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

/// The counters' series of known label values (metric, its one label's value): they exist from
/// the start, at zero, in both exports. A rate over a counter that appears only at its first
/// increment misses that increment, and a dashboard shows 0 rather than nothing.
fn known_series() -> impl Iterator<Item = (&'static str, &'static str)> {
    use name::*;
    let ended = ["succeeded", "failed", "cancelled"];
    let outcomes = [TASKS_ENDED, JOBS_ENDED]
        .into_iter()
        .flat_map(move |n| ended.into_iter().map(move |o| (n, o)))
        .chain(["planned", "rejected"].map(|o| (JOBS_PLANNED, o)));
    let topics = [BUS_PUBLISHED, BUS_DELIVERIES, BUS_REDELIVERIES, BUS_DEAD_LETTERS]
        .into_iter()
        .flat_map(|n| TOPICS.into_iter().map(move |t| (n, t)));
    let stores = STORES.into_iter().map(|s| (DB_OUTAGE_HOLDS, s));
    outcomes.chain(topics).chain(stores)
}

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
    let label = m.backend(backend);
    m.dispatch_latency
        .get_or_create(&label)
        .observe(latency.as_secs_f64());
    otel::record(name::DISPATCH_LATENCY, latency.as_secs_f64(), &[&label.backend]);
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
    otel::record(name::TASKS_ENDED, n as f64, &[outcome]);
}

/// A task's attempt ended and the task is tried again.
pub fn task_retried() {
    tasks_retried(1);
}

/// `n` tasks are tried again together (a job retry re-queued them).
pub fn tasks_retried(n: u64) {
    METRICS.task_retries.inc_by(n);
    otel::record(name::TASK_RETRIES, n as f64, &[]);
}

/// A job ended: `outcome` is `succeeded`, `failed` or `cancelled`.
pub fn job_ended(outcome: &'static str) {
    METRICS
        .jobs_ended
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
    otel::record(name::JOBS_ENDED, 1.0, &[outcome]);
}

/// A job started.
pub fn job_started() {
    METRICS.jobs_started.inc();
    otel::record(name::JOBS_STARTED, 1.0, &[]);
}

/// The planner planned (`planned`) or rejected (`rejected`) a submission.
pub fn job_planned(outcome: &'static str) {
    METRICS
        .jobs_planned
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
    otel::record(name::JOBS_PLANNED, 1.0, &[outcome]);
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
    otel::record(name::JOBS_ACTIVE, sample.jobs_active as f64, &[]);
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
        otel::record(name::TASKS_WAITING, n as f64, &[backend]);
        otel::record(name::TASKS_WAITING_OLDEST, oldest, &[backend]);
        otel::record(name::LAUNCHERS, l as f64, &[backend]);
        otel::record(name::LEASES_LAPSED, 0.0, &[backend]);
    }
}

/// The scheduler ended an attempt on `backend` whose lease lapsed.
pub fn lease_lapsed(backend: &str) {
    let m = &*METRICS;
    let label = m.backend(backend);
    m.leases_lapsed.get_or_create(&label).inc();
    otel::record(name::LEASES_LAPSED, 1.0, &[&label.backend]);
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
    otel::record(name::ATTEMPTS_IN_FLIGHT, in_flight as f64, &[&label.backend]);
    otel::record(name::ATTEMPTS_QUEUED, queued as f64, &[&label.backend]);
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
    otel::record(
        name::COMPUTE_SECONDS,
        held.as_secs_f64(),
        &[&labels.backend, &labels.namespace, &labels.flow],
    );
}

/// A publish of events took `took`; `topics` names each event's topic kind. A failed one
/// counts as an error only.
pub fn bus_published(took: Duration, ok: bool, topics: impl IntoIterator<Item = &'static str>) {
    let m = &*METRICS;
    if !ok {
        m.bus_publish_errors.inc();
        otel::record(name::BUS_PUBLISH_ERRORS, 1.0, &[]);
        return;
    }
    m.bus_publish.observe(took.as_secs_f64());
    otel::record(name::BUS_PUBLISH, took.as_secs_f64(), &[]);
    for topic in topics {
        m.bus_published
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
        otel::record(name::BUS_PUBLISHED, 1.0, &[topic]);
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
    otel::record(name::BUS_DELIVERIES, 1.0, &[topic]);
    if redelivered {
        m.bus_redeliveries.get_or_create(&label).inc();
        otel::record(name::BUS_REDELIVERIES, 1.0, &[topic]);
    }
    if let Some(lag) = lag {
        m.bus_consume_lag.get_or_create(&label).observe(lag.as_secs_f64());
        otel::record(name::BUS_CONSUME_LAG, lag.as_secs_f64(), &[topic]);
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
    otel::record(name::BUS_DEAD_LETTERS, 1.0, &[topic]);
}

/// A transaction of `store` (`scheduler`, `read-model`, `logs`) took `took` to commit.
pub fn db_transaction(store: &'static str, took: Duration) {
    METRICS
        .db_transaction
        .get_or_create(&StoreLabel {
            store: store.to_string(),
        })
        .observe(took.as_secs_f64());
    otel::record(name::DB_TRANSACTION, took.as_secs_f64(), &[store]);
}

/// `store` was out of reach and a batch is held until it answers.
pub fn db_outage_hold(store: &'static str) {
    METRICS
        .db_outage_holds
        .get_or_create(&StoreLabel {
            store: store.to_string(),
        })
        .inc();
    otel::record(name::DB_OUTAGE_HOLDS, 1.0, &[store]);
}

/// The log collector stored `lines` lines holding `bytes` bytes of text.
pub fn logs_stored(lines: u64, bytes: u64) {
    METRICS.log_lines_stored.inc_by(lines);
    METRICS.log_bytes_stored.inc_by(bytes);
    otel::record(name::LOG_LINES_STORED, lines as f64, &[]);
    otel::record(name::LOG_BYTES_STORED, bytes as f64, &[]);
}

/// Retention deleted `lines` log lines.
pub fn logs_expired(lines: u64) {
    METRICS.log_lines_expired.inc_by(lines);
    otel::record(name::LOG_LINES_EXPIRED, lines as f64, &[]);
}

/// `lines` log lines were not stored: their namespace was at its quota.
pub fn logs_dropped(lines: u64) {
    METRICS.log_lines_dropped.inc_by(lines);
    otel::record(name::LOG_LINES_DROPPED, lines as f64, &[]);
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
    otel::record(name::API_REQUEST, took.as_secs_f64(), &[route, method, status]);
}

/// The same metrics over OTLP: OpenTelemetry instruments made from [`DEFS`], recorded beside
/// the Prometheus ones with the same label values, once [`Exporter::from_env`] has installed
/// them. Until then, and in every process that does not export over OTLP, recording here is
/// one atomic load.
mod otel {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use opentelemetry::KeyValue;
    use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

    use super::{DEFS, Kind, counter_name};

    enum Instrument {
        Counter(Counter<f64>),
        Gauge(Gauge<f64>),
        Histogram(Histogram<f64>),
    }

    /// Each metric's instrument and label names, by the name Prometheus shows.
    type Instruments = HashMap<&'static str, (Instrument, &'static [&'static str])>;

    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

    /// Makes an instrument of `meter` for every metric and starts recording into them. `false`
    /// when it was done before (by another exporter of this process).
    pub(super) fn install(meter: &Meter) -> bool {
        let mut instruments = Instruments::new();
        for def in DEFS {
            let name = counter_name(def.name).to_string();
            let instrument = match def.kind {
                Kind::Counter => {
                    let mut b = meter.f64_counter(name).with_description(def.help);
                    if !def.unit.is_empty() {
                        b = b.with_unit(def.unit);
                    }
                    Instrument::Counter(b.build())
                }
                Kind::Gauge => {
                    let mut b = meter.f64_gauge(name).with_description(def.help);
                    if !def.unit.is_empty() {
                        b = b.with_unit(def.unit);
                    }
                    Instrument::Gauge(b.build())
                }
                Kind::Histogram(buckets) => {
                    let mut b = meter
                        .f64_histogram(name)
                        .with_description(def.help)
                        .with_boundaries(buckets.bounds());
                    if !def.unit.is_empty() {
                        b = b.with_unit(def.unit);
                    }
                    Instrument::Histogram(b.build())
                }
            };
            instruments.insert(def.name, (instrument, def.labels));
        }
        INSTRUMENTS.set(instruments).is_ok()
    }

    /// Records `value` for the metric Prometheus shows as `exposed`, its labels taking
    /// `values` in order: added to a counter, set on a gauge, observed by a histogram.
    #[inline]
    pub(super) fn record(exposed: &'static str, value: f64, values: &[&str]) {
        let Some(instruments) = INSTRUMENTS.get() else {
            return;
        };
        let Some((instrument, labels)) = instruments.get(exposed) else {
            return;
        };
        debug_assert_eq!(labels.len(), values.len(), "{exposed}: labels {labels:?}");
        let attributes: Vec<KeyValue> = labels
            .iter()
            .zip(values)
            .map(|(k, v)| KeyValue::new(*k, v.to_string()))
            .collect();
        match instrument {
            Instrument::Counter(c) => c.add(value, &attributes),
            Instrument::Gauge(g) => g.record(value, &attributes),
            Instrument::Histogram(h) => h.record(value, &attributes),
        }
    }
}

/// The OTLP export of the metrics, when the standard variables ask for it (see
/// [`crate::telemetry::init`]): an OpenTelemetry SDK meter provider whose periodic reader sends
/// every metric of [`DEFS`] every `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (60000 by default)
/// and once more at [`Exporter::shutdown`], with cumulative temporality unless
/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` says otherwise.
pub(crate) struct Exporter {
    provider: opentelemetry_sdk::metrics::SdkMeterProvider,
    /// The gRPC client's runtime ([`crate::otlp::grpc_runtime`]).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    /// An exporter as the environment configures one, or `None` when metrics are not exported
    /// over OTLP (or already are, by an exporter made before).
    pub(crate) fn from_env(service: &str) -> Result<Option<Exporter>, crate::otlp::Error> {
        use crate::otlp::{Protocol, Signal};
        use opentelemetry::metrics::MeterProvider as _;
        let Some(protocol) = crate::otlp::config(Signal::Metrics, |n| std::env::var(n).ok())? else {
            return Ok(None);
        };
        let (exporter, runtime) = match protocol {
            Protocol::HttpProtobuf => (
                opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .build()?,
                None,
            ),
            Protocol::Grpc => {
                let runtime = crate::otlp::grpc_runtime(Signal::Metrics)?;
                let exporter = {
                    let _in = runtime.enter();
                    opentelemetry_otlp::MetricExporter::builder()
                        .with_tonic()
                        .build()?
                };
                (exporter, Some(runtime))
            }
        };
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_periodic_exporter(exporter)
            .with_resource(crate::otlp::resource(service))
            .build();
        let exporter = Exporter { provider, runtime };
        if !otel::install(&exporter.provider.meter("ferry")) {
            exporter.shutdown();
            return Ok(None);
        }
        otel::record(name::BUILD_INFO, 1.0, &[env!("CARGO_PKG_VERSION")]);
        for (exposed, value) in known_series() {
            otel::record(exposed, 0.0, &[value]);
        }
        Ok(Some(exporter))
    }

    /// Sends the metrics once more and stops.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("warning: the last metrics may not have been exported: {e}\n").as_bytes(),
            );
        }
        if let Some(runtime) = self.runtime {
            runtime.shutdown_background();
        }
    }
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
        // Every sample line is `name{labels} value`, the value a number, its labels those its
        // definition names (and `le` on a histogram's buckets).
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(line.starts_with("ferry_"), "{line}");
            let (sample, keys) = sample_labels(line);
            let def = DEFS
                .iter()
                .find(|d| {
                    ["", "_total", "_bucket", "_sum", "_count", "_created"]
                        .iter()
                        .any(|suffix| format!("{}{suffix}", counter_name(d.name)) == sample)
                })
                .unwrap_or_else(|| panic!("{line}: no definition"));
            let mut wanted: Vec<&str> = def.labels.to_vec();
            if sample.ends_with("_bucket") {
                wanted.insert(0, "le");
            }
            assert_eq!(keys, wanted, "{line}: the labels of its definition");
        }
    }

    /// A sample line's metric name and label names, in order.
    fn sample_labels(line: &str) -> (&str, Vec<&str>) {
        let Some((name, mut rest)) = line.split_once('{') else {
            return (line.split(' ').next().unwrap(), Vec::new());
        };
        let mut keys = Vec::new();
        while let Some((key, after)) = rest.split_once("=\"") {
            keys.push(key);
            // The value ends at the first quote no backslash escapes.
            let bytes = after.as_bytes();
            let mut i = 0;
            while bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            rest = &after[i + 1..];
            match rest.strip_prefix(',') {
                Some(next) => rest = next,
                None => break,
            }
        }
        (name, keys)
    }

    #[test]
    fn every_name_has_one_definition() {
        let defined: Vec<&str> = DEFS.iter().map(|d| d.name).collect();
        assert_eq!(defined, name::ALL, "DEFS and name::ALL list the same metrics");
        for d in DEFS {
            assert!(!d.help.is_empty(), "{}", d.name);
            let seconds = d.name.ends_with("_seconds") || d.name.ends_with("_seconds_total");
            assert_eq!(
                seconds,
                d.unit == "s",
                "{}: seconds and only seconds are `s`",
                d.name
            );
            if let Kind::Histogram(b) = d.kind {
                assert!(
                    d.unit == "s" && b.bounds().windows(2).all(|w| w[0] < w[1]),
                    "{}",
                    d.name
                );
            }
        }
    }
}
