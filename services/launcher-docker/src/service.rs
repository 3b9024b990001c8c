//! The docker launcher as a service: [`Config`] and [`run`], the launcher runtime driving the
//! [`Docker`] backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_launcher::journal::Journal;
use ferry_launcher::{Error, Result, Secrets};
use tokio_util::sync::CancellationToken;

use crate::Engine;
use crate::backend::Docker;

/// The file in the data directory holding this launcher's identity on the engine.
const LAUNCHER_ID_FILE: &str = "docker-launcher-id";

/// How the docker launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the journal and the launcher's identity; output files go to `artifacts/` in it by
    /// default.
    pub data_dir: PathBuf,
    /// Where output files are copied, as `<job>/<task>/<attempt>/<path>`.
    pub artifact_dir: Option<PathBuf>,
    /// Output files stored longer ago than this are removed from the artifact directory by a
    /// periodic sweep (`None`: kept for ever).
    pub artifact_retention: Option<Duration>,
    /// Bytes of output files each namespace may keep in the artifact directory.
    pub artifact_quotas: ferry_runtime::NamespaceLimits,
    /// The engine's address (`unix:///…`, `tcp://…`); `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// When no engine answers: fail to start (true), or run and fail every attempt with why
    /// (false: `ferry run`, where a `runner: docker` task must end, not wait).
    pub require_engine: bool,
    /// Leave containers running when the launcher stops, for the next start to adopt (the
    /// default); when false they are stopped and their attempts reported `lost` (`ferry run`,
    /// whose job ends with it).
    pub detach: bool,
    /// Attempts running at once, and the subscription's prefetch.
    pub max_parallel: usize,
    /// Time a stopped container gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Most lines in one `task.log` event.
    pub log_batch_lines: usize,
    /// A `task.log` event is sent at least this often while lines flow.
    pub log_batch_interval: Duration,
    /// Secrets read when the configuration was made (`FERRY_SECRET_*`), to which [`run`] adds
    /// those of `secrets_file`.
    pub secrets: Secrets,
    pub secrets_file: Option<PathBuf>,
    /// The CloudEvents `source` of this instance.
    pub source: String,
    /// The consumer group.
    pub group: String,
}

impl Config {
    /// Defaults: 64 attempts at once, 10 s grace, batches of 256 lines or 20 ms, secrets from
    /// `FERRY_SECRET_*` and the file `FERRY_SECRETS_FILE` names, group `launcher-docker`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Config {
            data_dir: data_dir.into(),
            artifact_dir: None,
            artifact_retention: None,
            artifact_quotas: Default::default(),
            docker_host: None,
            require_engine: true,
            detach: true,
            max_parallel: 64,
            kill_grace: Duration::from_secs(10),
            log_batch_lines: 256,
            log_batch_interval: Duration::from_millis(20),
            secrets: Secrets::from_env(),
            secrets_file: var("FERRY_SECRETS_FILE").map(PathBuf::from),
            source: ferry_runtime::instance_source("launcher-docker"),
            group: "launcher-docker".to_string(),
        }
    }

    fn runtime(&self) -> ferry_launcher::Config {
        ferry_launcher::Config {
            max_parallel: self.max_parallel,
            kill_grace: self.kill_grace,
            log_batch_lines: self.log_batch_lines,
            log_batch_interval: self.log_batch_interval,
            secrets: self.secrets.clone(),
            source: self.source.clone(),
            group: self.group.clone(),
            artifact_retention: None,
            artifact_quotas: None,
        }
    }
}

/// Connects to the engine `host` names, or `DOCKER_HOST`, or the local socket.
pub async fn connect(host: Option<&str>) -> crate::Result<Engine> {
    match host {
        Some(h) => Engine::connect_to(h).await,
        None => Engine::connect().await,
    }
}

/// This launcher's identity on the engine, kept in the data directory: the same on every
/// start over one journal, so that a restart finds the containers its previous run left.
/// Made on the first start.
pub fn launcher_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(LAUNCHER_ID_FILE);
    let io = |source| Error::Io {
        what: format!("cannot keep the launcher's identity in {}", path.display()),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = format!("launcher-{}", uuid::Uuid::new_v4().simple());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &id).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

fn make_dir(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(path)
        .and_then(|()| path.canonicalize())
        .map_err(|source| Error::Io {
            what: format!("cannot create the {what} {}", path.display()),
            source,
        })
}

/// Runs the docker launcher until `shutdown` is cancelled (or the bus closes). Containers keep
/// running when it stops; the next start on the same data directory adopts them.
pub async fn run(mut config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    config.runtime().check()?;
    if let Some(path) = &config.secrets_file {
        config.secrets.extend(Secrets::from_file(path)?);
    }
    let data_dir = make_dir(&config.data_dir, "data directory")?;
    let artifacts = make_dir(
        &config
            .artifact_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("artifacts")),
        "artifact directory",
    )?;
    let mut runtime = config.runtime();
    runtime.artifact_retention = config
        .artifact_retention
        .map(|older_than| ferry_launcher::ArtifactRetention::new(&artifacts, older_than));
    runtime.artifact_quotas =
        ferry_launcher::ArtifactQuotas::configure(&config.artifact_quotas, &artifacts, &data_dir)?;
    let backend = match connect(config.docker_host.as_deref()).await {
        Ok(engine) => {
            let launcher = launcher_id(&data_dir)?;
            tracing::info!(
                host = engine.host(),
                %launcher,
                data_dir = %data_dir.display(),
                group = %config.group,
                max_parallel = config.max_parallel,
                secrets = config.secrets.len(),
                "docker launcher starting"
            );
            Docker::new(engine, launcher, artifacts)
        }
        Err(e) if config.require_engine => return Err(Error::Config(e.to_string())),
        Err(e) => {
            tracing::info!(error = %e, "no Docker engine: runner: docker tasks fail");
            Docker::without_engine(e.to_string(), artifacts)
        }
    };
    let backend = if config.detach {
        backend
    } else {
        backend.kill_on_shutdown()
    };
    let journal = Journal::open(&data_dir).map_err(|source| Error::Io {
        what: format!("cannot read the journal in {}", data_dir.display()),
        source,
    })?;
    let result = ferry_launcher::run(runtime, journal, Arc::new(backend), bus, shutdown).await;
    tracing::info!("docker launcher stopped");
    result
}
