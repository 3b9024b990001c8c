//! The ray launcher as a service: [`Config`] and [`run`], the launcher runtime driving the
//! [`Ray`] backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_launcher::journal::Journal;
use ferry_launcher::{Error, Result, Secrets};
use tokio_util::sync::CancellationToken;

use crate::backend::{Ray, Settings, check_address, check_work_dir};

/// How the ray launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the journal, the launcher's identity and (unless `work_dir` says) the attempt
    /// directories.
    pub data_dir: PathBuf,
    /// The dashboard URL of the cluster of tasks whose runner names no `address`
    /// (`http://127.0.0.1:8265`).
    pub address: Option<String>,
    /// Where attempt directories are made [default: `ray/` in the data directory]; the
    /// cluster's nodes must see it at the same path.
    pub work_dir: Option<PathBuf>,
    /// Leave jobs running when the launcher stops, for the next start to adopt (the default).
    pub detach: bool,
    pub max_parallel: usize,
    /// Time a stopped job gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Where output files are stored [default: `artifacts/` in the data directory].
    pub artifact_dir: Option<PathBuf>,
    /// Output files stored longer ago than this are removed from the artifact directory by a
    /// periodic sweep (`None`: kept for ever).
    pub artifact_retention: Option<Duration>,
    /// Bytes of output files each namespace may keep in the artifact directory.
    pub artifact_quotas: ferry_runtime::NamespaceLimits,
    pub log_batch_lines: usize,
    pub log_batch_interval: Duration,
    pub secrets: Secrets,
    pub secrets_file: Option<PathBuf>,
    pub source: String,
    pub group: String,
}

impl Config {
    /// Defaults: no default cluster, 64 attempts at once, 10 s grace, jobs left running when
    /// the launcher stops, secrets from `FERRY_SECRET_*` and `FERRY_SECRETS_FILE`, group
    /// `launcher-ray`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Config {
            data_dir: data_dir.into(),
            address: None,
            work_dir: None,
            detach: true,
            max_parallel: 64,
            kill_grace: Duration::from_secs(10),
            artifact_dir: None,
            artifact_retention: None,
            artifact_quotas: Default::default(),
            log_batch_lines: 256,
            log_batch_interval: Duration::from_millis(20),
            secrets: Secrets::from_env(),
            secrets_file: var("FERRY_SECRETS_FILE").map(PathBuf::from),
            source: ferry_runtime::instance_source("launcher-ray"),
            group: "launcher-ray".to_string(),
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

/// The backend as [`run`] makes it, for the launcher whose journal is `journal` (whose identity
/// its jobs carry, so that a restart finds the jobs its previous run left).
pub fn backend(config: &Config, journal: &Journal) -> Result<Ray> {
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
    settings.kill_grace = config.kill_grace;
    settings.artifact_dir = Some(
        config
            .artifact_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("artifacts")),
    );
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
    config.runtime().check()?;
    if let Some(path) = &config.secrets_file {
        config.secrets.extend(Secrets::from_file(path)?);
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
        what: format!("cannot create the data directory {}", config.data_dir.display()),
        source,
    })?;
    let journal = Journal::open(&config.data_dir).map_err(|source| Error::Io {
        what: format!("cannot read the journal in {}", config.data_dir.display()),
        source,
    })?;
    let backend = backend(&config, &journal)?;
    let mut runtime = config.runtime();
    let artifacts = (config.artifact_dir.clone()).unwrap_or_else(|| config.data_dir.join("artifacts"));
    runtime.artifact_retention = config
        .artifact_retention
        .map(|older_than| ferry_launcher::ArtifactRetention::new(&artifacts, older_than));
    runtime.artifact_quotas =
        ferry_launcher::ArtifactQuotas::configure(&config.artifact_quotas, &artifacts, &config.data_dir)?;
    let result = ferry_launcher::run(runtime, journal, Arc::new(backend), bus, shutdown).await;
    tracing::info!("ray launcher stopped");
    result
}
