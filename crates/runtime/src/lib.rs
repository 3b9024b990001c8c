//! What every ferry service shares at run time.
//!
//! - [`Backoff`]: the growing waits of every retry loop;
//! - [`global_allocator!`] and [`memory`]: the allocator of every binary and its set-up;
//! - [`telemetry`]: `tracing` set-up (human or JSON lines on stderr, filtered by `FERRY_LOG`);
//! - [`trace`]: OpenTelemetry traces over OTLP when configured, one trace per job, and the span
//!   of each event handled continuing the trace the event carries;
//! - [`shutdown`]: a root [`CancellationToken`] cancelled by SIGINT/SIGTERM, with a second signal
//!   exiting at once;
//! - [`metrics`]: every metric, defined in one place, and how to record it; exported to
//!   Prometheus (`GET /metrics`) and, when configured, over OTLP;
//! - `otlp`: what the OTLP export of traces and metrics share (the standard variables);
//! - [`quota`]: limits set per namespace (`NAME=N`, `*=N`);
//! - [`health`]: readiness checks of the process's bus and databases, for `/readyz`;
//! - [`text`]: text from outside (event ids, task output) shown without its control characters;
//! - [`instance_source`]: the CloudEvents `source` naming one service instance;
//! - [`db`] (feature `sqlx`): the SQL plumbing of every store: opening a database, its dialect,
//!   placeholder lists, the inbox of applied event ids, and telling an outage from a bad write.

pub mod backoff;
#[cfg(feature = "sqlx")]
pub mod db;
pub mod health;
pub mod memory;
pub mod metrics;
mod otlp;
pub mod quota;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod trace;

pub use backoff::Backoff;
pub use quota::NamespaceLimits;
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// The URL of a SQLite database file, `sqlite://PATH`: where a service keeps its database in the
/// data directory unless told otherwise.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A URL with its password replaced, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:****{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The CloudEvents `source` of one service instance: `ferry/<service>/<host>/<pid>`.
pub fn instance_source(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("ferry/{service}/{host}/{}", std::process::id())
}
