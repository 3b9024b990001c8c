//! The ray launcher as a service: [`Config`] and [`run`], the launcher runtime driving the
//! [`Ray`] backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_bus::Bus;
use ferry_launcher::journal::Journal;
use ferry_launcher::{Error, Prepared, Result, Service};
use tokio_util::sync::CancellationToken;

use crate::backend::{Ray, Settings, check_address, check_work_dir};

/// How the ray launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// What every launcher service has; its data directory also holds the launcher's identity
    /// and (unless `work_dir` says) the attempt directories. `kill_grace` is a stopped job's
    /// time between SIGTERM and SIGKILL.
    pub service: Service,
    /// The dashboard URL of the cluster of tasks whose runner names no `address`
    /// (`http://127.0.0.1:8265`).
    pub address: Option<String>,
    /// Where attempt directories are made [default: `ray/` in the data directory]; the
    /// cluster's nodes must see it at the same path.
    pub work_dir: Option<PathBuf>,
    /// Leave jobs running when the launcher stops, for the next start to adopt (the default).
    pub detach: bool,
}

impl Config {
    /// Defaults: those of [`Service::new`], group `launcher-ray`, no default cluster, jobs left
    /// running when the launcher stops.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            service: Service::new(data_dir, "launcher-ray"),
            address: None,
            work_dir: None,
            detach: true,
        }
    }
}

/// The backend as [`run`] makes it, for the launcher whose journal is `journal` (whose identity
/// its jobs carry, so that a restart finds the jobs its previous run left), storing output
/// files in `artifacts`.
pub fn backend(config: &Config, journal: &Journal, artifacts: PathBuf) -> Result<Ray> {
    let launcher = journal.identity().map_err(|source| Error::Io {
        what: format!(
            "cannot keep the launcher's identity beside {}",
            journal.path().display()
        ),
        source,
    })?;
    let data_dir = journal.path().parent().unwrap_or(Path::new(".")).to_path_buf();
    let work_dir = match &config.work_dir {
        Some(dir) => dir.clone(),
        None => std::path::absolute(data_dir.join("ray")).map_err(|source| Error::Io {
            what: format!("cannot resolve the data directory {}", data_dir.display()),
            source,
        })?,
    };
    check_work_dir(&work_dir).map_err(Error::Config)?;
    if let Some(address) = &config.address {
        check_address(address).map_err(|e| Error::Config(e.replace("runner.address", "--ray-address")))?;
    }
    let mut settings = Settings::new(launcher, work_dir);
    settings.address = config.address.clone();
    settings.kill_grace = config.service.kill_grace;
    settings.artifact_dir = Some(artifacts);
    tracing::info!(
        address = settings.address.as_deref().unwrap_or("(per task)"),
        launcher = %settings.launcher,
        work_dir = %settings.work_dir.display(),
        "ray launcher starting"
    );
    let ray = Ray::new(settings);
    Ok(if config.detach {
        ray
    } else {
        ray.kill_on_shutdown()
    })
}

/// Runs the ray launcher until `shutdown` is cancelled (or the bus closes). Jobs keep running
/// when it stops (unless `detach` is off); the next start on the same data directory adopts
/// them.
pub async fn run(mut config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let Prepared {
        runtime,
        journal,
        artifacts,
        ..
    } = config.service.prepare()?;
    let backend = backend(&config, &journal, artifacts)?;
    let result = ferry_launcher::run(runtime, journal, Arc::new(backend), bus, shutdown).await;
    tracing::info!("ray launcher stopped");
    result
}
