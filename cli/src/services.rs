//! Starting ferry's services in this process: one (`ferry service NAME`), all of them on a broker
//! (`ferry up`), or all but the api on the in-memory bus (`ferry run`).

use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ferry_bus::{Bus, Subscribe};
use ferry_event::Topic;
use ferry_log_collector::LogStore;
use ferry_runtime::{CancellationToken, instance_source};
use nix::fcntl::{Flock, FlockArg};
use tokio::task::JoinSet;

/// One of ferry's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Planner,
    Scheduler,
    Launcher,
    LogCollector,
    Api,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Planner,
        Service::Scheduler,
        Service::Launcher,
        Service::LogCollector,
        Service::Api,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Planner => "planner",
            Service::Scheduler => "scheduler",
            Service::Launcher => "launcher",
            Service::LogCollector => "log-collector",
            Service::Api => "api",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
                format!("unknown service {s:?}; choose one of {}", names.join(", "))
            })
    }
}

/// Where each service keeps its state and listens.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds the SQLite files by default, the launcher's `journal` and `slots/`, and `artifacts/`.
    pub data_dir: PathBuf,
    /// The scheduler's database (`sqlite://…` or `postgres://…`); `DATA_DIR/scheduler.db` by default.
    pub scheduler_db: Option<String>,
    /// The api's read model; `DATA_DIR/api.db` by default.
    pub api_db: Option<String>,
    /// The log store, written by the log collector and read by the api; `DATA_DIR/logs.db`.
    pub logs_db: Option<String>,
    /// Where the api listens.
    pub listen: SocketAddr,
    /// The launcher's backend.
    pub backend: String,
    pub kill_grace: Duration,
    pub max_parallel: usize,
    /// Who may use the api, and how it is reached.
    pub api_access: ApiAccess,
}

/// Who may use the api and how it is reached (`docs/security.md`).
#[derive(Debug, Clone, Default)]
pub struct ApiAccess {
    /// The tokens file; without one (and without `insecure_no_auth`), `DATA_DIR/tokens.yaml`,
    /// created on first start with an admin token in `DATA_DIR/admin.token`.
    pub tokens_file: Option<PathBuf>,
    /// No credential asked for (loopback only).
    pub insecure_no_auth: bool,
    pub tls: Option<ferry_api::TlsFiles>,
    pub allowed_hosts: Vec<String>,
}

impl ApiAccess {
    /// Sets the api's access settings, creating the data directory's tokens file if it is the
    /// one used. Returns what to tell the operator.
    fn apply(&self, config: &mut ferry_api::Config, data_dir: &Path) -> Result<Option<String>> {
        config.tls = self.tls.clone();
        config.allowed_hosts = self.allowed_hosts.clone();
        if self.insecure_no_auth {
            config.access = Some(ferry_api::Access::InsecureNoAuth);
            return Ok(Some("the api asks for no credential (--insecure-no-auth)".into()));
        }
        if let Some(file) = &self.tokens_file {
            config.access = Some(ferry_api::Access::TokensFile(file.clone()));
            return Ok(None);
        }
        let b = ferry_api::auth::bootstrap(data_dir)?;
        config.access = Some(ferry_api::Access::TokensFile(b.tokens_file.clone()));
        Ok(Some(match (&b.admin_token_file, b.created) {
            (Some(admin), true) => format!(
                "api tokens are in {}; an admin token was created in {} (ferry clients on this machine use it; elsewhere set FERRY_TOKEN)",
                b.tokens_file.display(),
                admin.display()
            ),
            (Some(admin), false) => format!(
                "api tokens are in {}; the admin token is in {}",
                b.tokens_file.display(),
                admin.display()
            ),
            (None, _) => format!("api tokens are in {}", b.tokens_file.display()),
        }))
    }
}

impl Settings {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            scheduler_db: None,
            api_db: None,
            logs_db: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backend: "local".into(),
            kill_grace: Duration::from_secs(10),
            max_parallel: 64,
            api_access: ApiAccess::default(),
        }
    }

    fn db(&self, given: &Option<String>, file: &str) -> String {
        given
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.data_dir.join(file)))
    }

    pub fn scheduler_db(&self) -> String {
        self.db(&self.scheduler_db, "scheduler.db")
    }

    pub fn api_db(&self) -> String {
        self.db(&self.api_db, "api.db")
    }

    pub fn logs_db(&self) -> String {
        self.db(&self.logs_db, "logs.db")
    }

    /// Creates the data directory and makes its path absolute.
    pub fn prepare(&mut self) -> Result<()> {
        let dir = &self.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        self.data_dir = dir
            .canonicalize()
            .with_context(|| format!("data directory {}", dir.display()))?;
        Ok(())
    }
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Services running in this process.
pub struct Running {
    pub shutdown: CancellationToken,
    set: JoinSet<(Service, Result<()>)>,
    _lock: Option<Flock<File>>,
}

impl Running {
    /// Starts `services` on `bus`. The log store is shared by the log collector and the api, and
    /// returned for in-process readers.
    pub async fn start(
        services: &[Service],
        settings: &Settings,
        bus: Arc<dyn Bus>,
    ) -> Result<(Running, Option<LogStore>)> {
        let lock = if services.contains(&Service::Launcher) {
            Some(lock(&settings.data_dir)?)
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        let mut set = JoinSet::new();
        let needs_logs = services.contains(&Service::LogCollector) || services.contains(&Service::Api);
        let logs = match needs_logs {
            true => Some(
                LogStore::open(&settings.logs_db())
                    .await
                    .context("the log collector and the api need the log store")?,
            ),
            false => None,
        };
        for &svc in services {
            let (bus, token) = (bus.clone(), shutdown.child_token());
            match svc {
                Service::Planner => {
                    let config = ferry_planner::Config {
                        source: instance_source("planner"),
                        ..Default::default()
                    };
                    set.spawn(async move {
                        (
                            svc,
                            ferry_planner::run(config, bus, token).await.map_err(Into::into),
                        )
                    });
                }
                Service::Scheduler => {
                    let config =
                        ferry_scheduler::Config::new(settings.scheduler_db(), instance_source("scheduler"));
                    set.spawn(async move {
                        (
                            svc,
                            ferry_scheduler::run(config, bus, token).await.map_err(Into::into),
                        )
                    });
                }
                Service::Launcher => {
                    if settings.backend != ferry_launcher_local::BACKEND {
                        bail!(
                            "no launcher for backend {:?} in this build; available: {}",
                            settings.backend,
                            ferry_launcher_local::BACKEND
                        );
                    }
                    let mut config = ferry_launcher_local::Config::new(&settings.data_dir);
                    config.kill_grace = settings.kill_grace;
                    config.max_parallel = settings.max_parallel;
                    config.source = instance_source("launcher-local");
                    set.spawn(async move {
                        (
                            svc,
                            ferry_launcher_local::run(config, bus, token)
                                .await
                                .map_err(Into::into),
                        )
                    });
                }
                Service::LogCollector => {
                    let store = logs.clone().expect("opened above");
                    let config = ferry_log_collector::Config::new(store);
                    set.spawn(async move {
                        (
                            svc,
                            ferry_log_collector::run(config, bus, token)
                                .await
                                .map_err(Into::into),
                        )
                    });
                }
                Service::Api => {
                    let mut config = ferry_api::Config::new(settings.api_db(), settings.logs_db());
                    config.listen = settings.listen;
                    if let Some(note) = settings.api_access.apply(&mut config, &settings.data_dir)? {
                        eprintln!("ferry: {note}");
                    }
                    let listener = tokio::net::TcpListener::bind(settings.listen)
                        .await
                        .with_context(|| format!("the api cannot listen on {}", settings.listen))?;
                    set.spawn(async move {
                        (
                            svc,
                            ferry_api::serve(config, bus, listener, token)
                                .await
                                .map_err(Into::into),
                        )
                    });
                }
            }
        }
        Ok((
            Running {
                shutdown,
                set,
                _lock: lock,
            },
            logs,
        ))
    }

    /// Resolves when a service stops on its own: something is wrong.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.set.join_next().await {
            Some(Ok((svc, Ok(())))) => anyhow!("the {svc} service stopped unexpectedly"),
            Some(Ok((svc, Err(e)))) => e.context(format!("the {svc} service failed")),
            Some(Err(e)) => anyhow!("a service panicked: {e}"),
            None => std::future::pending().await,
        }
    }

    /// A service that already stopped, if any.
    pub fn try_failed(&mut self) -> Option<anyhow::Error> {
        match self.set.try_join_next()? {
            Ok((svc, Ok(()))) => Some(anyhow!("the {svc} service stopped unexpectedly")),
            Ok((svc, Err(e))) => Some(e.context(format!("the {svc} service failed"))),
            Err(e) => Some(anyhow!("a service panicked: {e}")),
        }
    }

    /// Stops every service and waits for them: the launcher ends whatever still runs.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let mut first_error = None;
        while let Some(joined) = self.set.join_next().await {
            let err = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((svc, Err(e))) => e.context(format!("the {svc} service failed while stopping")),
                Err(e) => anyhow!("a service panicked: {e}"),
            };
            first_error.get_or_insert(err);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// One launcher per data directory: a second one would reconcile (and so kill) the first one's
/// processes.
fn lock(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow!(
            "another ferry launcher is using the data directory {} ({errno}); wait for it or pass a different --data-dir",
            dir.display()
        )
    })
}

/// How the services sign and check events on the bus (see `docs/security.md`).
#[derive(Debug, Clone, Default)]
pub struct BusKeys {
    /// The key file every service of the deployment shares.
    pub file: Option<PathBuf>,
    /// Neither sign nor check: anyone who can publish on the broker can then forge events.
    pub insecure_unsigned: bool,
}

/// The name of the key file `ferry up` keeps in its data directory.
pub const DATA_DIR_KEYS: &str = "bus.keys";

/// Decides how `services` sign and check events: with the key file given; unsigned on the
/// in-memory bus or when asked; for every service in one process (`ferry up`) on a broker,
/// with `DATA_DIR/bus.keys`, created on the first start. A service alone on a broker
/// (`ferry service`) needs the deployment's key file: one made up here would make it refuse
/// the others' events and they its.
pub fn bus_auth(
    services: &[Service],
    settings: &Settings,
    bus_url: &str,
    keys: &BusKeys,
) -> Result<ferry_connect::Auth> {
    let all_here = Service::ALL.iter().all(|s| services.contains(s));
    if keys.file.is_some() || keys.insecure_unsigned || bus_url.starts_with("memory://") || !all_here {
        return Ok(ferry_connect::Auth::resolve(
            bus_url,
            keys.file.as_deref(),
            keys.insecure_unsigned,
        )?);
    }
    let path = settings.data_dir.join(DATA_DIR_KEYS);
    let (ring, created) = crate::keys::load_or_create(&path)?;
    if created {
        eprintln!(
            "ferry: created the bus key file {}; give it to any `ferry service` joining this deployment (--bus-key-file)",
            path.display()
        );
    }
    tracing::info!(key_file = %path.display(), signing_key = ring.signing_id(), "signing events on the bus");
    Ok(ferry_connect::Auth::Signed(ring))
}

/// Runs services until SIGINT/SIGTERM (graceful: in-flight work drains, the launcher ends what
/// runs) or until one of them fails.
pub async fn serve(
    services: &[Service],
    mut settings: Settings,
    bus_url: &str,
    keys: &BusKeys,
) -> Result<()> {
    settings.prepare()?;
    let auth = bus_auth(services, &settings, bus_url, keys)?;
    let bus = ferry_connect::open(bus_url, auth)
        .await
        .with_context(|| format!("cannot open the bus {bus_url}"))?;
    // Every service's queue exists before any of them publishes, whichever run where.
    for spec in standard_groups() {
        bus.declare(&spec)
            .await
            .with_context(|| format!("cannot declare the {} queue", spec.group))?;
    }
    let (mut running, _) = Running::start(services, &settings, bus).await?;
    let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
    tracing::info!(services = %names.join(", "), bus = %redact(bus_url), data_dir = %settings.data_dir.display(), "ferry running");
    if services.contains(&Service::Api) {
        let scheme = if settings.api_access.tls.is_some() {
            "https"
        } else {
            "http"
        };
        eprintln!("ferry: api listening on {scheme}://{}", settings.listen);
    }
    let outcome = tokio::select! {
        _ = ferry_runtime::shutdown::wait_for_signal() => Ok(()),
        err = running.failed() => Err(err),
    };
    // A second signal while draining exits at once.
    tokio::spawn(async {
        ferry_runtime::shutdown::wait_for_signal().await;
        std::process::exit(130);
    });
    let stopped = running.stop().await;
    outcome.and(stopped)
}

/// The consumer groups of ferry's services, as they subscribe.
pub fn standard_groups() -> Vec<Subscribe> {
    Service::ALL.into_iter().map(group_of).collect()
}

/// The consumer group a service subscribes as.
pub fn group_of(service: Service) -> Subscribe {
    match service {
        Service::Planner => Subscribe::new(ferry_planner::GROUP, [Topic::Intake]),
        Service::Scheduler => Subscribe::new("scheduler", [Topic::Control]),
        Service::Launcher => Subscribe::new(
            "launcher-local",
            [Topic::Dispatch(ferry_launcher_local::BACKEND.into())],
        ),
        Service::LogCollector => Subscribe::new(ferry_log_collector::DEFAULT_GROUP, [Topic::Logs]),
        Service::Api => Subscribe::new(ferry_api::DEFAULT_GROUP, [Topic::Control, Topic::Lifecycle]),
    }
}

/// A URL with its password replaced, for logs.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_like_the_command_line() {
        for s in Service::ALL {
            assert_eq!(s.name().parse::<Service>().unwrap(), s);
        }
        assert!("schedular".parse::<Service>().unwrap_err().contains("scheduler"));
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/v"),
            "amqp://guest:****@h:5672/v"
        );
        assert_eq!(redact("kafka://h:9092"), "kafka://h:9092");
    }
}
