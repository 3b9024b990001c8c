//! Launchers chosen by backend name, the way buses are chosen by URL scheme: one arm per
//! backend, each behind its cargo feature; a backend left out of the build answers that it is
//! not enabled, naming the feature.
//!
//! Every backend takes its settings from the same launcher flags (`--max-parallel`,
//! `--kill-grace`, `--artifact-dir`, `--artifact-retention`, `--secrets-file`, …, each also
//! `FERRY_*`), so that `ferry
//! up`, `ferry service launcher` and the environment configure them alike. Each keeps its
//! journal in a data directory of its own: the local launcher in the data directory itself (as
//! it always has), the docker launcher in `docker/` under it, the kubernetes launcher in
//! `kubernetes/`, the ray launcher in `ray/`, the aws-batch launcher in `aws-batch/`, the google-batch launcher
//! in `google-batch/`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use ferry_bus::{Bus, Subscribe};
use ferry_event::Topic;
use ferry_launcher_local::Service;
use tokio_util::sync::CancellationToken;

/// Every backend a launcher can serve, built in or not.
pub const BACKENDS: &[&str] = &[
    "local",
    "docker",
    "kubernetes",
    "ray",
    "aws-batch",
    "google-batch",
];

/// One launcher, configured for its backend.
#[derive(Debug, Clone)]
pub enum Launcher {
    Local(ferry_launcher_local::Config),
    /// `ferry agent`: the local launcher serving the registered tasks of one cluster.
    Agent(ferry_launcher_local::agent::AgentConfig),
    #[cfg(feature = "docker")]
    Docker(ferry_launcher_docker::Config),
    #[cfg(feature = "kubernetes")]
    Kubernetes(ferry_launcher_kubernetes::Config),
    #[cfg(feature = "ray")]
    Ray(ferry_launcher_ray::Config),
    #[cfg(feature = "aws-batch")]
    AwsBatch(ferry_launcher_aws_batch::Config),
    #[cfg(feature = "google-batch")]
    GoogleBatch(ferry_launcher_google_batch::Config),
}

impl Launcher {
    /// The launcher of `backend`, configured by the launcher flags; `data_dir` is the prepared
    /// data directory.
    pub fn from_flags(
        backend: &str,
        flags: &ferry_launcher_local::Flags,
        data_dir: &Path,
    ) -> Result<Launcher> {
        match backend {
            "local" => Ok(Launcher::Local(flags.config(data_dir)?)),
            "docker" => docker(flags, data_dir),
            "kubernetes" => kubernetes(flags, data_dir),
            "ray" => ray(flags, data_dir),
            "aws-batch" => aws_batch(flags, data_dir),
            "google-batch" => google_batch(flags, data_dir),
            other => bail!(
                "backend `{other}` is not known: choose one of {}",
                BACKENDS.join(", ")
            ),
        }
    }

    /// The runner type it serves.
    pub fn backend(&self) -> &'static str {
        match self {
            Launcher::Local(_) => ferry_launcher_local::BACKEND,
            Launcher::Agent(_) => ferry_launcher_local::agent::BACKEND,
            #[cfg(feature = "docker")]
            Launcher::Docker(_) => ferry_launcher_docker::BACKEND,
            #[cfg(feature = "kubernetes")]
            Launcher::Kubernetes(_) => ferry_launcher_kubernetes::BACKEND,
            #[cfg(feature = "ray")]
            Launcher::Ray(_) => ferry_launcher_ray::BACKEND,
            #[cfg(feature = "aws-batch")]
            Launcher::AwsBatch(_) => ferry_launcher_aws_batch::BACKEND,
            #[cfg(feature = "google-batch")]
            Launcher::GoogleBatch(_) => ferry_launcher_google_batch::BACKEND,
        }
    }

    /// The settings it shares with every launcher.
    fn service(&self) -> &Service {
        match self {
            Launcher::Local(c) => &c.service,
            Launcher::Agent(c) => &c.launcher.service,
            #[cfg(feature = "docker")]
            Launcher::Docker(c) => &c.service,
            #[cfg(feature = "kubernetes")]
            Launcher::Kubernetes(c) => &c.service,
            #[cfg(feature = "ray")]
            Launcher::Ray(c) => &c.service,
            #[cfg(feature = "aws-batch")]
            Launcher::AwsBatch(c) => &c.service,
            #[cfg(feature = "google-batch")]
            Launcher::GoogleBatch(c) => &c.service,
        }
    }

    fn service_mut(&mut self) -> &mut Service {
        match self {
            Launcher::Local(c) => &mut c.service,
            Launcher::Agent(c) => &mut c.launcher.service,
            #[cfg(feature = "docker")]
            Launcher::Docker(c) => &mut c.service,
            #[cfg(feature = "kubernetes")]
            Launcher::Kubernetes(c) => &mut c.service,
            #[cfg(feature = "ray")]
            Launcher::Ray(c) => &mut c.service,
            #[cfg(feature = "aws-batch")]
            Launcher::AwsBatch(c) => &mut c.service,
            #[cfg(feature = "google-batch")]
            Launcher::GoogleBatch(c) => &mut c.service,
        }
    }

    /// Its consumer groups on the dispatch topics it serves: one, on its backend's, but for an
    /// agent (one per task version it serves).
    pub fn groups(&self) -> Vec<Subscribe> {
        if let Launcher::Agent(c) = self {
            return c
                .served()
                .into_iter()
                .map(|(backend, group)| Subscribe::new(group, [Topic::Dispatch(backend)]))
                .collect();
        }
        let group = self.service().group.clone();
        vec![Subscribe::new(group, [Topic::Dispatch(self.backend().into())])]
    }

    /// Sets how long a stopped task gets between SIGTERM and SIGKILL, and how many run at once.
    pub fn tune(&mut self, kill_grace: std::time::Duration, max_parallel: usize) {
        let service = self.service_mut();
        service.kill_grace = kill_grace;
        service.max_parallel = max_parallel;
    }

    /// Runs it until `shutdown`.
    pub async fn run(self, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
        match self {
            Launcher::Local(c) => Ok(ferry_launcher_local::run(c, bus, shutdown).await?),
            Launcher::Agent(c) => Ok(ferry_launcher_local::agent::run(c, bus, shutdown).await?),
            #[cfg(feature = "docker")]
            Launcher::Docker(c) => Ok(ferry_launcher_docker::run(c, bus, shutdown).await?),
            #[cfg(feature = "kubernetes")]
            Launcher::Kubernetes(c) => Ok(ferry_launcher_kubernetes::run(c, bus, shutdown).await?),
            #[cfg(feature = "ray")]
            Launcher::Ray(c) => Ok(ferry_launcher_ray::run(c, bus, shutdown).await?),
            #[cfg(feature = "aws-batch")]
            Launcher::AwsBatch(c) => Ok(ferry_launcher_aws_batch::run(c, bus, shutdown).await?),
            #[cfg(feature = "google-batch")]
            Launcher::GoogleBatch(c) => Ok(ferry_launcher_google_batch::run(c, bus, shutdown).await?),
        }
    }
}

/// The docker launcher's data directory, under the shared one.
pub fn docker_data_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("docker")
}

#[cfg(feature = "docker")]
fn docker(flags: &ferry_launcher_local::Flags, data_dir: &Path) -> Result<Launcher> {
    let mut c = ferry_launcher_docker::Config::new(docker_data_dir(data_dir));
    shared(flags, data_dir, &mut c.service, "docker");
    c.docker_host = flags.docker_host.clone();
    Ok(Launcher::Docker(c))
}

#[cfg(not(feature = "docker"))]
fn docker(_: &ferry_launcher_local::Flags, _: &Path) -> Result<Launcher> {
    bail!("{}", not_enabled("docker"))
}

#[cfg(feature = "kubernetes")]
fn kubernetes(flags: &ferry_launcher_local::Flags, data_dir: &Path) -> Result<Launcher> {
    let mut c = ferry_launcher_kubernetes::Config::new(data_dir.join("kubernetes"));
    shared(flags, data_dir, &mut c.service, "kubernetes");
    c.context = flags.kube_context.clone();
    c.namespace = flags.kube_namespace.clone();
    c.stage_image = flags.kube_stage_image.clone();
    c.subtasks = !flags.kube_no_subtasks;
    c.pending_deadline = flags.pending_deadline;
    Ok(Launcher::Kubernetes(c))
}

#[cfg(not(feature = "kubernetes"))]
fn kubernetes(_: &ferry_launcher_local::Flags, _: &Path) -> Result<Launcher> {
    bail!("{}", not_enabled("kubernetes"))
}

#[cfg(feature = "ray")]
fn ray(flags: &ferry_launcher_local::Flags, data_dir: &Path) -> Result<Launcher> {
    let mut c = ferry_launcher_ray::Config::new(data_dir.join("ray"));
    shared(flags, data_dir, &mut c.service, "ray");
    c.address = flags.ray_address.clone().filter(|a| !a.trim().is_empty());
    c.work_dir = flags.ray_work_dir.clone();
    Ok(Launcher::Ray(c))
}

#[cfg(not(feature = "ray"))]
fn ray(_: &ferry_launcher_local::Flags, _: &Path) -> Result<Launcher> {
    bail!("{}", not_enabled("ray"))
}

#[cfg(feature = "aws-batch")]
fn aws_batch(flags: &ferry_launcher_local::Flags, data_dir: &Path) -> Result<Launcher> {
    let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let mut c = ferry_launcher_aws_batch::Config::new(data_dir.join("aws-batch"));
    shared(flags, data_dir, &mut c.service, "aws-batch");
    c.region = given(&flags.aws_region);
    c.endpoint_url = given(&flags.aws_endpoint_url);
    c.job_queue = given(&flags.aws_batch_job_queue);
    c.compute_environment = given(&flags.aws_batch_compute_environment);
    c.pending_deadline = flags.pending_deadline;
    c.poll_interval = flags.aws_batch_poll_interval;
    c.events_queue = flags.aws_batch_events_queue.clone();
    c.staging = given(&flags.aws_batch_staging);
    Ok(Launcher::AwsBatch(c))
}

#[cfg(not(feature = "aws-batch"))]
fn aws_batch(_: &ferry_launcher_local::Flags, _: &Path) -> Result<Launcher> {
    bail!("{}", not_enabled("aws-batch"))
}

#[cfg(feature = "google-batch")]
fn google_batch(flags: &ferry_launcher_local::Flags, data_dir: &Path) -> Result<Launcher> {
    let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let mut c = ferry_launcher_google_batch::Config::new(data_dir.join("google-batch"));
    shared(flags, data_dir, &mut c.service, "google-batch");
    c.project = given(&flags.google_project);
    c.region = given(&flags.google_region);
    c.staging = given(&flags.google_batch_staging);
    c.service_account = given(&flags.google_batch_service_account);
    c.pending_deadline = flags.pending_deadline;
    c.poll_interval = flags.google_batch_poll_interval;
    c.endpoints = ferry_launcher_google_batch::google::Endpoints {
        batch: flags.google_batch_endpoint.clone(),
        logging: flags.google_logging_endpoint.clone(),
        storage: flags.google_storage_endpoint.clone(),
        pubsub: flags.google_pubsub_endpoint.clone(),
    };
    c.notifications_topic = given(&flags.google_batch_topic);
    c.notifications_subscription = given(&flags.google_batch_subscription);
    c.anonymous = flags.google_anonymous;
    Ok(Launcher::GoogleBatch(c))
}

#[cfg(not(feature = "google-batch"))]
fn google_batch(_: &ferry_launcher_local::Flags, _: &Path) -> Result<Launcher> {
    bail!("{}", not_enabled("google-batch"))
}

/// Sets the launcher flags every backend takes on `service`, the settings of the launcher of
/// `backend` keeping its state under `data_dir`: its output files go to `--artifact-dir`, else
/// to the data directory's `artifacts`, which every backend of `ferry up` shares.
#[cfg(any(
    feature = "docker",
    feature = "kubernetes",
    feature = "ray",
    feature = "aws-batch",
    feature = "google-batch"
))]
fn shared(flags: &ferry_launcher_local::Flags, data_dir: &Path, service: &mut Service, backend: &str) {
    flags.apply(service, backend);
    if flags.artifact_dir.is_none() {
        service.artifact_dir = Some(data_dir.join("artifacts"));
    }
}

/// What a backend left out of this build answers.
pub fn not_enabled(backend: &str) -> String {
    format!("backend `{backend}` is not enabled in this build (rebuild ferry with the `{backend}` feature)")
}

/// Whether this build has `backend`.
pub fn enabled(backend: &str) -> bool {
    backend == "local"
        || (backend == "docker" && cfg!(feature = "docker"))
        || (backend == "kubernetes" && cfg!(feature = "kubernetes"))
        || (backend == "ray" && cfg!(feature = "ray"))
        || (backend == "aws-batch" && cfg!(feature = "aws-batch"))
        || (backend == "google-batch" && cfg!(feature = "google-batch"))
}

/// Whether a Docker engine answers at `host` (or `DOCKER_HOST`, or the local socket): how
/// `ferry up` decides to serve docker tasks. The error says why not.
#[cfg(feature = "docker")]
pub async fn docker_engine(host: Option<&str>) -> Result<String, String> {
    // An address that swallows packets must not hold `ferry up` back for long.
    let wait = std::time::Duration::from_secs(5);
    match tokio::time::timeout(wait, ferry_launcher_docker::connect(host)).await {
        Ok(Ok(engine)) => Ok(engine.host().to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the Docker engine at {} did not answer within {wait:?}",
            host.map(String::from)
                .or_else(|| std::env::var("DOCKER_HOST").ok())
                .unwrap_or_else(|| ferry_launcher_docker::DEFAULT_HOST.to_string())
        )),
    }
}

#[cfg(not(feature = "docker"))]
pub async fn docker_engine(_: Option<&str>) -> Result<String, String> {
    Err(not_enabled("docker"))
}

/// Whether a Kubernetes cluster is configured (kubeconfig `context`, the current context, or
/// the cluster this process runs in) and its API answers: how `ferry up` decides to serve
/// kubernetes tasks. Says where (server and namespace), or why not.
#[cfg(feature = "kubernetes")]
pub async fn kubernetes_cluster(context: Option<&str>) -> Result<String, String> {
    let wait = std::time::Duration::from_secs(5);
    let probe = async {
        let (client, namespace) = ferry_launcher_kubernetes::connect(context).await?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| format!("the Kubernetes API does not answer: {e}"))?;
        Ok(format!(
            "Kubernetes {}, namespace {namespace}",
            version.git_version
        ))
    };
    tokio::time::timeout(wait, probe)
        .await
        .unwrap_or_else(|_| Err(format!("the Kubernetes API did not answer within {wait:?}")))
}

/// Whether the Jobs API of the Ray cluster at `address` (`--ray-address`) answers: how `ferry
/// up` decides to serve ray tasks. Says where, or why not.
#[cfg(feature = "ray")]
pub async fn ray_cluster(address: Option<&str>) -> Result<String, String> {
    let Some(address) = address else {
        return Err("no --ray-address given".into());
    };
    let wait = std::time::Duration::from_secs(5);
    match tokio::time::timeout(wait, ferry_launcher_ray::api::Client::new().list(address)).await {
        Ok(Ok(_)) => Ok(format!("Ray Jobs API at {address}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the Ray Jobs API at {address} did not answer within {wait:?}"
        )),
    }
}

/// Whether the AWS Batch API answers with the aws-batch launcher's credentials, region and
/// endpoint: how `ferry up` decides to serve aws-batch tasks. Says where, or why not.
#[cfg(feature = "aws-batch")]
pub async fn aws_batch_api(c: &ferry_launcher_aws_batch::Config) -> Result<String, String> {
    let wait = std::time::Duration::from_secs(10);
    let probe = async {
        let sdk = ferry_launcher_aws_batch::sdk_config(c.region.as_deref(), c.endpoint_url.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
        ferry_launcher_aws_batch::AwsBatch::probe(&sdk).await?;
        Ok(format!(
            "AWS Batch in {region}{}",
            c.endpoint_url
                .as_deref()
                .map(|u| format!(" at {u}"))
                .unwrap_or_default()
        ))
    };
    tokio::time::timeout(wait, probe)
        .await
        .unwrap_or_else(|_| Err(format!("the AWS Batch API did not answer within {wait:?}")))
}

/// Whether the Batch API answers with the google-batch launcher's credentials and endpoint: how
/// `ferry up` decides to serve google-batch tasks. Says where, or why not.
#[cfg(feature = "google-batch")]
pub async fn google_batch_api(c: &ferry_launcher_google_batch::Config) -> Result<String, String> {
    let (Some(project), Some(region)) = (&c.project, &c.region) else {
        return Err("no --google-project and --google-region given".into());
    };
    let wait = std::time::Duration::from_secs(10);
    let probe = async {
        let google = c.google().map_err(|e| e.to_string())?;
        let parent = format!("projects/{project}/locations/{region}");
        google
            .list_jobs(&parent, "labels.ferry-probe=\"none\"")
            .await
            .map_err(|e| format!("the Google Batch API refused jobs.list in {parent}: {e}"))?;
        Ok(format!("Google Batch in {parent} at {}", c.endpoints.batch))
    };
    tokio::time::timeout(wait, probe)
        .await
        .unwrap_or_else(|_| Err(format!("the Google Batch API did not answer within {wait:?}")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ferry_launcher_local::Flags,
    }

    fn retention(launcher: &Launcher) -> Option<Duration> {
        launcher.service().artifact_retention
    }

    /// The backends of this build: every one takes the artifact flags (aws-batch, which
    /// collects no output files yet, keeps its artifact directory empty).
    fn storing(backend: &&&str) -> bool {
        enabled(backend)
    }

    #[test]
    fn every_backend_takes_the_artifact_retention_flag() {
        let dir = tempfile::tempdir().unwrap();
        let with = Cli::parse_from(["ferry", "--artifact-retention", "7d"]).flags;
        let without = Cli::parse_from(["ferry"]).flags;
        for backend in BACKENDS.iter().filter(storing) {
            let launcher = Launcher::from_flags(backend, &with, dir.path()).unwrap();
            assert_eq!(
                retention(&launcher),
                Some(Duration::from_secs(7 * 24 * 3600)),
                "{backend}"
            );
            let launcher = Launcher::from_flags(backend, &without, dir.path()).unwrap();
            assert_eq!(retention(&launcher), None, "{backend}: kept for ever by default");
        }
        assert!(Cli::try_parse_from(["ferry", "--artifact-retention", "soon"]).is_err());
    }

    fn quotas(launcher: &Launcher) -> &ferry_runtime::NamespaceLimits {
        &launcher.service().artifact_quotas
    }

    #[test]
    fn every_backend_takes_the_namespace_artifact_quota_flag() {
        let dir = tempfile::tempdir().unwrap();
        let with = Cli::parse_from(["ferry", "--namespace-artifact-quota", "a=5,*=9"]).flags;
        for backend in BACKENDS.iter().filter(storing) {
            let launcher = Launcher::from_flags(backend, &with, dir.path()).unwrap();
            let q = quotas(&launcher);
            assert_eq!((q.of("a"), q.of("b")), (Some(5), Some(9)), "{backend}");
        }
        assert!(Cli::try_parse_from(["ferry", "--namespace-artifact-quota", "a=lots"]).is_err());
    }
}
