//! The kubernetes launcher as a service: [`Config`] and [`run`], the launcher runtime driving the
//! [`Kubernetes`] backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_launcher::{Error, Prepared, Result, Service};
use kube::Client;
use kube::config::KubeConfigOptions;
use tokio_util::sync::CancellationToken;

use crate::backend::{Kubernetes, Settings};

/// The file in the data directory holding this launcher's identity in the cluster.
const LAUNCHER_ID_FILE: &str = "kubernetes-launcher-id";

/// How the kubernetes launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// What every launcher service has; its data directory also holds the launcher's identity
    /// in the cluster. `kill_grace` is a stopped pod's `terminationGracePeriodSeconds`.
    pub service: Service,
    /// The kubeconfig context to use (its current context when absent). Without a kubeconfig,
    /// the in-cluster configuration of the pod the launcher runs in.
    pub context: Option<String>,
    /// The namespace of Jobs whose runner names none (the context's namespace, else `default`).
    pub namespace: Option<String>,
    /// When no cluster can be reached: fail to start (true), or run and fail every attempt with
    /// why (false).
    pub require_cluster: bool,
    /// Leave Jobs running when the launcher stops, for the next start to adopt (the default).
    pub detach: bool,
    /// How long a pod may stay Pending before its attempt ends (`runner.pendingDeadlineSeconds`
    /// overrides it).
    pub pending_deadline: Duration,
    /// How long the server keeps a finished Job the launcher did not delete (`None`: for ever).
    pub ttl_after_finished: Option<Duration>,
    /// The image of the container that holds a pod's `$FERRY_SUBTASKS` and, for a task with
    /// output files, its working directory ([`crate::DEFAULT_STAGE_IMAGE`] when absent): it
    /// must have `sh`, `sleep` and `tar`.
    pub stage_image: Option<String>,
    /// Every task gets `$FERRY_SUBTASKS` (a stage container in every pod).
    pub subtasks: bool,
}

impl Config {
    /// Defaults: those of [`Service::new`], group `launcher-kubernetes`, 5 minutes' pending
    /// deadline, finished Jobs kept a day, `$FERRY_SUBTASKS` for every task.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            service: Service::new(data_dir, "launcher-kubernetes"),
            context: None,
            namespace: None,
            require_cluster: true,
            detach: true,
            pending_deadline: Duration::from_secs(300),
            ttl_after_finished: Some(Duration::from_secs(24 * 3600)),
            stage_image: None,
            subtasks: true,
        }
    }
}

/// A client of the cluster `context` names in the kubeconfig (`KUBECONFIG`, `~/.kube/config`),
/// of its current context, or of the cluster the process runs in; and the namespace that
/// configuration defaults to.
pub async fn connect(context: Option<&str>) -> std::result::Result<(Client, String), String> {
    let config = match context {
        Some(ctx) => kube::Config::from_kubeconfig(&KubeConfigOptions {
            context: Some(ctx.to_string()),
            ..KubeConfigOptions::default()
        })
        .await
        .map_err(|e| format!("cannot use kubeconfig context `{ctx}`: {e}"))?,
        None => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes cluster configured (no kubeconfig, not in a cluster): {e}")
        })?,
    };
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| format!("cannot make a Kubernetes client: {e}"))?;
    Ok((client, namespace))
}

/// This launcher's identity in the cluster, kept in the data directory: the same on every start
/// over one journal, so that a restart finds the Jobs its previous run left.
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
    let id = format!("launcher-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &id).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

/// The backend as [`run`] makes it: on the configured cluster, with the identity kept in
/// `data_dir`, storing output files in `artifacts`.
pub async fn backend(config: &Config, data_dir: &Path, artifacts: PathBuf) -> Result<Kubernetes> {
    let launcher = launcher_id(data_dir)?;
    let mut settings = Settings::new(launcher);
    settings.kill_grace = config.service.kill_grace;
    settings.pending_deadline = config.pending_deadline;
    settings.ttl_after_finished = config.ttl_after_finished;
    settings.artifact_dir = Some(artifacts);
    settings.subtasks = config.subtasks;
    if let Some(image) = config.stage_image.clone().filter(|i| !i.trim().is_empty()) {
        settings.stage_image = image;
    }
    match connect(config.context.as_deref()).await {
        Ok((client, namespace)) => {
            settings.namespace = config.namespace.clone().unwrap_or(namespace);
            tracing::info!(
                namespace = %settings.namespace,
                launcher = %settings.launcher,
                data_dir = %data_dir.display(),
                "kubernetes launcher starting"
            );
            Ok(Kubernetes::new(client, settings))
        }
        Err(e) if config.require_cluster => Err(Error::Config(e)),
        Err(e) => {
            tracing::info!(error = %e, "no Kubernetes cluster: runner: kubernetes tasks fail");
            Ok(Kubernetes::without_cluster(e, settings))
        }
    }
}

/// Runs the kubernetes launcher until `shutdown` is cancelled (or the bus closes). Jobs keep
/// running when it stops; the next start on the same data directory adopts them.
pub async fn run(mut config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let Prepared {
        runtime,
        journal,
        data_dir,
        artifacts,
    } = config.service.prepare()?;
    let backend = backend(&config, &data_dir, artifacts).await?;
    let backend = if config.detach {
        backend
    } else {
        backend.kill_on_shutdown()
    };
    let result = ferry_launcher::run(runtime, journal, Arc::new(backend), bus, shutdown).await;
    tracing::info!("kubernetes launcher stopped");
    result
}
