//! ferry's HTTP API service.
//!
//! It has two halves that share nothing but a database:
//!
//! - **intake**: `POST /events` takes CloudEvents over HTTP (the HTTP protocol binding: binary
//!   mode with `ce-*` headers, structured mode, batch mode) and publishes them onto the bus,
//!   answering only once the bus confirmed. A `dev.ferry.job.submitted` has its flow and inputs
//!   validated and planned here first, so that a bad one is refused with every problem (400)
//!   and never published; `job.cancel` and `job.retry` are refused (404) for jobs the read model
//!   does not know; any event type of the submitter's own goes to the intake topic, where
//!   triggers see it.
//! - **read model** ([`ReadModel`]): the service consumes the control and lifecycle topics as
//!   consumer group `api` and keeps jobs, tasks, attempts and each job's list of state changes
//!   in SQL (SQLite or PostgreSQL), one transaction per batch with an inbox of event ids, acking
//!   after the commit. It answers `GET /jobs`, `GET /jobs/{id}` and `GET /jobs/{id}/events`.
//!
//! Logs are read from the log collector's store ([`ferry_log_collector::LogStore`]): the log
//! store is a database with one writer (the log-collector service) and many readers (this
//! service, the CLI). The api never calls another service.
//!
//! [`run`] binds the configured address; [`serve`] takes a bound listener (tests bind
//! `127.0.0.1:0`). Routes and formats are described in `docs/api.md`.

mod error;
mod flags;
mod follow;
mod http;
mod intake;
mod project;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, Subscribe};
use ferry_event::Topic;
use ferry_log_collector::LogStore;
use ferry_runtime::CancellationToken;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

pub use error::{Error, Result};
pub use flags::{Flags, ProcessFlags};
pub use follow::DEFAULT_LOG_GRACE;
pub use store::{
    Change, Dialect, FinishedAttempt, JOB_STATES, JobDetail, JobView, ReadModel, TASK_STATES, TaskView,
    job_state_is_terminal,
};

/// The read model's consumer group: api instances sharing one database share it.
pub const DEFAULT_GROUP: &str = "api";
/// Largest request body accepted (413 above it).
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// How the api service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (used by [`run`]; [`serve`] takes a listener).
    pub listen: SocketAddr,
    /// The read model's database: `sqlite://PATH`, `sqlite::memory:` or `postgres://…`.
    pub db_url: String,
    /// The log collector's store, read only: `sqlite:///path/to/logs.db`.
    pub logs_url: String,
    /// Consumer group on the control and lifecycle topics.
    pub group: String,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Most events applied to the read model in one transaction.
    pub batch_max: usize,
    /// How long the read model waits, after an event arrives, for more to apply with it: a
    /// few milliseconds of staleness for far fewer transactions when events come one by one.
    pub batch_linger: Duration,
    /// How long a publish may wait for the bus to confirm before the request gets a 503.
    pub publish_timeout: Duration,
    /// How often followed streams look for changes that did not wake them (another api
    /// instance writing a shared database, the log collector writing the log store).
    pub follow_poll: Duration,
    /// How long a followed log stream waits for the lines of a finished job before it ends
    /// without them.
    pub log_grace: Duration,
    /// How long applied event ids are remembered to skip redeliveries.
    pub inbox_retention: Duration,
}

impl Config {
    pub fn new(db_url: impl Into<String>, logs_url: impl Into<String>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db_url: db_url.into(),
            logs_url: logs_url.into(),
            group: DEFAULT_GROUP.to_string(),
            body_limit: DEFAULT_BODY_LIMIT,
            batch_max: 256,
            batch_linger: Duration::from_millis(10),
            publish_timeout: Duration::from_secs(10),
            follow_poll: Duration::from_millis(500),
            log_grace: DEFAULT_LOG_GRACE,
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Binds `config.listen` and serves until `shutdown` is cancelled.
pub async fn run(config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    serve(config, bus, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` is cancelled: opens the read model and the log store,
/// joins the consumer group (before the first request is answered, so a client that saw
/// `/healthz` answer can publish lifecycle events that the read model will see), then answers
/// requests while the read model follows the bus. Streaming responses end at shutdown; requests
/// in flight are finished.
pub async fn serve(
    config: Config,
    bus: Arc<dyn Bus>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let model = ReadModel::open(&config.db_url).await?;
    let logs = LogStore::open(&config.logs_url)
        .await?
        .with_follow_poll(config.follow_poll);
    let prefetch = config.batch_max.max(1).saturating_mul(2);
    let sub = bus
        .subscribe(
            Subscribe::new(config.group.clone(), [Topic::Control, Topic::Lifecycle]).prefetch(prefetch),
        )
        .await?;
    let config = Arc::new(config);
    let stop = shutdown.child_token();
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let projector = {
        let (config, model, stop) = (config.clone(), model.clone(), stop.clone());
        tokio::spawn(async move {
            let result = project::project(&config, model, sub, changed_tx, stop.clone()).await;
            // A read model that cannot go on stops the service rather than serve stale data.
            stop.cancel();
            result
        })
    };
    let state = http::AppState {
        bus,
        model: model.clone(),
        logs: logs.clone(),
        config: config.clone(),
        changed: changed_rx,
        shutdown: stop.clone(),
    };
    let local = listener.local_addr().map_err(Error::Serve)?;
    info!(listen = %local, group = %config.group, "api started");
    let served = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await;
    stop.cancel();
    let projected = projector
        .await
        .unwrap_or_else(|e| Err(Error::Config(format!("the read model task failed: {e}"))));
    model.close().await;
    logs.close().await;
    info!("api stopped");
    served.map_err(Error::Serve)?;
    projected
}
