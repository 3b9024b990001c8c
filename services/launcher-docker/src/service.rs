//! The docker launcher as a service: [`Config`] and [`run`], the launcher runtime driving the
//! [`Docker`] backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_bus::Bus;
use ferry_launcher::{Error, Prepared, Result, Service};
use tokio_util::sync::CancellationToken;

use crate::Engine;
use crate::backend::Docker;

/// The file in the data directory holding this launcher's identity on the engine.
const LAUNCHER_ID_FILE: &str = "docker-launcher-id";

/// How the docker launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// What every launcher service has; its data directory also holds the launcher's identity
    /// on the engine.
    pub service: Service,
    /// The engine's address (`unix:///…`, `tcp://…`); `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// When no engine answers: fail to start (true), or run and fail every attempt with why
    /// (false: `ferry run`, where a `runner: docker` task must end, not wait).
    pub require_engine: bool,
    /// Leave containers running when the launcher stops, for the next start to adopt (the
    /// default); when false they are stopped and their attempts reported `lost` (`ferry run`,
    /// whose job ends with it).
    pub detach: bool,
}

impl Config {
    /// Defaults: those of [`Service::new`], group `launcher-docker`, the engine of `DOCKER_HOST`
    /// or the local socket, required, containers left running when the launcher stops.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            service: Service::new(data_dir, "launcher-docker"),
            docker_host: None,
            require_engine: true,
            detach: true,
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

/// Runs the docker launcher until `shutdown` is cancelled (or the bus closes). Containers keep
/// running when it stops; the next start on the same data directory adopts them.
pub async fn run(mut config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let Prepared {
        runtime,
        journal,
        data_dir,
        artifacts,
    } = config.service.prepare()?;
    let backend = match connect(config.docker_host.as_deref()).await {
        Ok(engine) => {
            let launcher = launcher_id(&data_dir)?;
            tracing::info!(
                host = engine.host(),
                %launcher,
                data_dir = %data_dir.display(),
                group = %runtime.group,
                max_parallel = runtime.max_parallel,
                secrets = runtime.secrets.len(),
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
    let result = ferry_launcher::run(runtime, journal, Arc::new(backend), bus, shutdown).await;
    tracing::info!("docker launcher stopped");
    result
}
