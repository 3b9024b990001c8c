//! The aws-batch launcher as a service: [`Config`] and [`run`], the launcher runtime driving
//! the [`AwsBatch`] backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_launcher::journal::Journal;
use ferry_launcher::{Error, Prepared, Result, Service};
use tokio_util::sync::CancellationToken;

use crate::backend::{AwsBatch, Settings};
use crate::stage::Staging;

/// How the aws-batch launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// What every launcher service has; its data directory also holds the launcher's identity.
    pub service: Service,
    /// The AWS region (else the standard chain's: `AWS_REGION`, the profile).
    pub region: Option<String>,
    /// The endpoint every AWS call goes to instead of AWS's own (a local server such as moto);
    /// else the standard `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint_url: Option<String>,
    /// The job queue of tasks whose runner names neither a queue nor a compute environment.
    pub job_queue: Option<String>,
    /// The compute environment ferry makes a queue on for tasks whose runner names none.
    pub compute_environment: Option<String>,
    /// How long a job may wait RUNNABLE before its attempt fails.
    pub pending_deadline: Duration,
    /// How often one round of DescribeJobs reads every job in flight.
    pub poll_interval: Duration,
    /// The SQS queue EventBridge delivers Batch's job state changes to, if any.
    pub events_queue: Option<String>,
    /// The bucket (`s3://BUCKET[/PREFIX]`) attempts' files are staged in; without one, tasks
    /// with input or output files are refused.
    pub staging: Option<String>,
    /// Leave jobs running when the launcher stops, for the next start to adopt (the default).
    pub detach: bool,
}

impl Config {
    /// Defaults: those of [`Service::new`] but 256 attempts at once and a grace of 30 s, group
    /// `launcher-aws-batch`, the standard AWS chain, no default queue, a pending deadline of 10
    /// minutes, a DescribeJobs round every 2 s, jobs left running when the launcher stops.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let mut service = Service::new(data_dir, "launcher-aws-batch");
        service.max_parallel = 256;
        service.kill_grace = Duration::from_secs(30);
        Config {
            service,
            region: None,
            endpoint_url: None,
            job_queue: None,
            compute_environment: None,
            pending_deadline: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            events_queue: None,
            staging: None,
            detach: true,
        }
    }
}

/// The AWS SDK configuration from the standard chain (credentials, region, `AWS_ENDPOINT_URL`),
/// with `region` and `endpoint_url` taking precedence when given.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> Result<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(url) = endpoint_url {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(Error::Config(format!(
                    "--aws-endpoint-url {url:?} is not an http(s) URL: write e.g. http://127.0.0.1:5000"
                )));
            }
        }
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(Error::Config(
            "no AWS region: set --aws-region, AWS_REGION, or a region in the AWS profile".into(),
        ));
    }
    Ok(sdk)
}

/// Staging through `url` (`--aws-batch-staging`) and the buckets tasks name, reached through the
/// same region and endpoint as the AWS calls.
fn staging(config: &Config, url: Option<&str>, artifacts: &Path) -> Result<Staging> {
    let mut options = Vec::new();
    if let Some(region) = &config.region {
        options.push(("region".to_string(), region.clone()));
    }
    if let Some(endpoint) = &config.endpoint_url {
        options.push(("endpoint_url".to_string(), endpoint.clone()));
        if endpoint.starts_with("http://") {
            options.push(("allow_http".to_string(), "true".into()));
        }
    }
    let default = match url {
        Some(url) => {
            let store = ferry_artifacts::Store::open_with(url, options.clone())
                .map_err(|e| Error::Config(format!("--aws-batch-staging: {e}")))?;
            if store.kind() != ferry_artifacts::Kind::S3 {
                return Err(Error::Config(format!(
                    "--aws-batch-staging {url:?}: jobs fetch and send their files with URLs that S3 signs: name an \
                     S3 bucket, s3://BUCKET[/PREFIX]"
                )));
            }
            Some(store)
        }
        None => None,
    };
    Ok(Staging::new(
        default,
        options,
        artifacts.to_path_buf(),
        Default::default(),
    ))
}

/// The backend as [`run`] makes it, for the launcher whose journal is `journal` (whose identity
/// its jobs are tagged with, so that a restart finds the jobs its previous run left), keeping
/// output files in `artifacts`.
pub async fn backend(config: &Config, journal: &Journal, artifacts: &Path) -> Result<AwsBatch> {
    let launcher = journal.identity().map_err(|source| Error::Io {
        what: format!(
            "cannot keep the launcher's identity beside {}",
            journal.path().display()
        ),
        source,
    })?;
    if config.poll_interval.is_zero() {
        return Err(Error::Config(
            "--aws-batch-poll-interval must be more than 0".into(),
        ));
    }
    let sdk = sdk_config(config.region.as_deref(), config.endpoint_url.as_deref()).await?;
    let mut settings = Settings::new(launcher);
    settings.job_queue = config.job_queue.clone();
    settings.compute_environment = config.compute_environment.clone();
    settings.pending_deadline = config.pending_deadline;
    settings.kill_grace = config.service.kill_grace;
    settings.poll_interval = config.poll_interval;
    settings.events_queue = config.events_queue.clone().filter(|q| !q.trim().is_empty());
    let default_staging = config.staging.as_deref().filter(|s| !s.trim().is_empty());
    settings.staging = Some(staging(config, default_staging, artifacts)?);
    tracing::info!(
        region = sdk.region().map(|r| r.as_ref()).unwrap_or(""),
        endpoint = config.endpoint_url.as_deref().unwrap_or("(AWS)"),
        job_queue = settings.job_queue.as_deref().unwrap_or("(per task)"),
        compute_environment = settings.compute_environment.as_deref().unwrap_or("(per task)"),
        events_queue = settings.events_queue.as_deref().unwrap_or("(none: polling alone)"),
        staging = default_staging.unwrap_or("(none: only tasks that name a bucket can have files)"),
        launcher = %settings.launcher,
        "aws-batch launcher starting"
    );
    let batch = AwsBatch::new(&sdk, settings);
    Ok(if config.detach {
        batch
    } else {
        batch.kill_on_shutdown()
    })
}

/// Runs the aws-batch launcher until `shutdown` is cancelled (or the bus closes). Jobs keep
/// running when it stops (unless `detach` is off); the next start on the same data directory
/// adopts them.
pub async fn run(mut config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let Prepared {
        runtime,
        journal,
        artifacts,
        ..
    } = config.service.prepare()?;
    let backend = backend(&config, &journal, &artifacts).await?;
    let result = ferry_launcher::run(runtime, journal, Arc::new(backend), bus, shutdown).await;
    tracing::info!("aws-batch launcher stopped");
    result
}
