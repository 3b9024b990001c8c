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
//! Every request but `GET /healthz` and `GET /readyz` is authenticated ([`auth`]: bearer tokens with scopes and
//! namespaces) and must name an allowed `Host`; headers and bodies have deadlines; TLS is
//! served from PEM files ([`TlsFiles`]). See `docs/security.md`.
//!
//! [`run`] binds the configured address; [`serve`] takes a bound listener (tests bind
//! `127.0.0.1:0`). Routes and formats are described in `docs/api.md`.

pub mod auth;
mod digest;
mod error;
mod flags;
mod follow;
mod guard;
mod http;
mod intake;
mod project;
mod reload;
mod server;
mod store;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, Subscribe};
use ferry_event::Topic;
use ferry_log_collector::LogStore;
use ferry_runtime::CancellationToken;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use error::{Error, Result};
pub use flags::{Flags, ProcessFlags};
pub use follow::DEFAULT_LOG_GRACE;
pub use guard::AllowedHosts;
pub use store::{
    Change, Dialect, FinishedAttempt, FlowView, JOB_STATES, JobDetail, JobView, LauncherView, ReadModel,
    Reservation, TASK_STATES, TaskView, job_state_is_terminal,
};
pub use tls::TlsFiles;

/// The read model's consumer group: api instances sharing one database share it.
pub const DEFAULT_GROUP: &str = "api";
/// Largest request body accepted (413 above it).
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// How long a client may take to send a request's headers (and its TLS handshake).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body, and the api to begin its answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How the api knows who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Bearer tokens listed in this file (see [`auth`]), read again when it changes.
    TokensFile(PathBuf),
    /// No credential asked for: every request may do everything. Refused unless the api
    /// listens on a loopback address (development on one machine).
    InsecureNoAuth,
}

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
    /// Who may do what; `None` is refused at start (the api never runs open by accident).
    pub access: Option<Access>,
    /// Serve HTTPS with this certificate and key; plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// Host names (in `Host`) answered besides the listening address (and `localhost` on
    /// loopback); `*` answers any.
    pub allowed_hosts: Vec<String>,
    /// How long a client may take to send a request's headers (and its TLS handshake).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, and the api to begin its answer.
    pub request_timeout: Duration,
    /// How often the tokens file and the TLS files are checked for changes.
    pub reload_every: Duration,
    /// The artifact stores whose output files `GET /jobs/{id}/files/…` serves (directories
    /// and buckets, as `file:///DIR`, `s3://BUCKET[/PREFIX]`, `gs://…`): a file kept anywhere
    /// else is not served.
    pub artifact_stores: Vec<String>,
    /// Settings of the bucket stores over those of the environment (see
    /// [`ferry_artifacts::Store::open_with`]).
    pub artifact_store_options: Vec<(String, String)>,
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
            access: None,
            tls: None,
            allowed_hosts: Vec::new(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reload_every: Duration::from_secs(2),
            artifact_stores: Vec::new(),
            artifact_store_options: Vec::new(),
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

/// The stores `config` serves output files from, opened (a URL that cannot work is refused at
/// start).
fn open_artifact_stores(config: &Config) -> Result<Vec<ferry_artifacts::Store>> {
    config
        .artifact_stores
        .iter()
        .map(|url| {
            let store = if url.starts_with("file:") || url.starts_with('/') {
                ferry_artifacts::Store::open(url)
            } else {
                ferry_artifacts::Store::open_with(url, config.artifact_store_options.iter().cloned())
            };
            store.map_err(|e| Error::Config(format!("--serve-artifacts: {e}")))
        })
        .collect()
}

/// Serves on `listener` until `shutdown` is cancelled: checks the access settings, opens the
/// read model and the log store, joins the consumer group (before the first request is
/// answered, so a client that saw `/healthz` answer can publish lifecycle events that the read
/// model will see), then answers requests while the read model follows the bus. Streaming
/// responses end at shutdown; requests in flight are finished.
pub async fn serve(
    config: Config,
    bus: Arc<dyn Bus>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let local = listener.local_addr().map_err(Error::Serve)?;
    let guards = Guards::new(&config, local)?;
    let artifacts = open_artifact_stores(&config)?;
    let model = ReadModel::open(&config.db_url).await?;
    let logs = LogStore::open(&config.logs_url)
        .await?
        .with_follow_poll(config.follow_poll);
    let _ready = (model.readiness(), logs.readiness());
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
        artifacts: Arc::new(artifacts),
        changed: changed_rx,
        shutdown: stop.clone(),
    };
    let scheme = if guards.tls.is_some() { "https" } else { "http" };
    info!(listen = %local, %scheme, group = %config.group, "api started");
    let reloader = tokio::spawn(guards.clone().reload(config.reload_every, stop.clone()));
    let serving = server::Serving {
        router: http::router(state, guards.authenticator.clone(), guards.hosts.clone()),
        tls: guards.server_config.clone(),
        header_read_timeout: config.header_read_timeout,
    };
    server::serve(listener, serving, stop.clone()).await;
    stop.cancel();
    let _ = reloader.await;
    let projected = projector
        .await
        .unwrap_or_else(|e| Err(Error::Config(format!("the read model task failed: {e}"))));
    model.close().await;
    logs.close().await;
    info!("api stopped");
    projected
}

/// The access settings, checked and opened.
#[derive(Clone)]
struct Guards {
    authenticator: auth::Authenticator,
    hosts: Arc<AllowedHosts>,
    tls: Option<Arc<tls::Certificate>>,
    server_config: Option<Arc<rustls::ServerConfig>>,
}

impl Guards {
    fn new(config: &Config, local: SocketAddr) -> Result<Guards> {
        let loopback = local.ip().is_loopback();
        let authenticator = match &config.access {
            None => {
                return Err(Error::Config(
                    "the api needs to know who may use it: give it a tokens file (--tokens-file; \
                     `ferry token create` makes a token) or, on a loopback address only, \
                     --insecure-no-auth"
                        .into(),
                ));
            }
            Some(Access::InsecureNoAuth) if !loopback => {
                return Err(Error::Config(format!(
                    "--insecure-no-auth is refused on {local}: without credentials the api may only \
                     listen on a loopback address (127.0.0.1, ::1); give it a tokens file instead"
                )));
            }
            Some(Access::InsecureNoAuth) => {
                warn!(listen = %local, "the api asks for no credential (--insecure-no-auth): anyone on this machine may use it");
                auth::Authenticator::Open
            }
            Some(Access::TokensFile(path)) => {
                let table = auth::TokenTable::open(path)?;
                if table.is_empty() {
                    warn!(file = %path.display(), "the tokens file lists no token: every request will be refused");
                } else {
                    info!(file = %path.display(), tokens = table.len(), "api tokens read");
                }
                auth::Authenticator::Tokens(Arc::new(table))
            }
        };
        let (tls, server_config) = match &config.tls {
            Some(files) => {
                let cert = tls::Certificate::open(files)?;
                let server_config = cert.server_config()?;
                (Some(cert), Some(server_config))
            }
            None => (None, None),
        };
        if tls.is_none() && !loopback {
            warn!(
                listen = %local,
                "THE API LISTENS BEYOND LOOPBACK WITHOUT TLS: bearer tokens and jobs cross the network \
                 in clear text; give it --tls-cert and --tls-key, or put it behind a TLS proxy"
            );
        }
        Ok(Guards {
            authenticator,
            hosts: Arc::new(AllowedHosts::new(local, &config.allowed_hosts)),
            tls,
            server_config,
        })
    }

    /// Reads the tokens file and the TLS files again whenever they change, until `stop`.
    async fn reload(self, every: Duration, stop: CancellationToken) {
        let every = every.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let auth::Authenticator::Tokens(table) = &self.authenticator {
                match table.reload_if_changed() {
                    Some(Ok(n)) => info!(file = %table.path().display(), tokens = n, "api tokens read again"),
                    Some(Err(e)) => {
                        warn!(error = %e, "the tokens file changed but does not read; the previous tokens stay in force")
                    }
                    None => {}
                }
            }
            if let Some(cert) = &self.tls {
                match cert.reload_if_changed() {
                    Some(Ok(())) => info!("TLS certificate read again"),
                    Some(Err(e)) => {
                        warn!(error = %e, "the TLS files changed but do not read; the previous certificate stays in use")
                    }
                    None => {}
                }
            }
        }
    }
}
