//! The google-batch launcher as a service: [`Config`] and [`run`], the launcher runtime driving
//! the [`GoogleBatch`] backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_launcher::journal::Journal;
use ferry_launcher::{Error, Prepared, Result, Service};
use tokio_util::sync::CancellationToken;

use crate::backend::{GoogleBatch, Settings};
use crate::google::{Auth, Endpoints, Google};
use crate::stage::Staging;

/// How the google-batch launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// What every launcher service has; its data directory also holds the launcher's identity.
    pub service: Service,
    /// The project of tasks whose runner names none.
    pub project: Option<String>,
    /// The region of tasks whose runner names none.
    pub region: Option<String>,
    /// Where the Batch, Cloud Logging and Cloud Storage APIs answer (Google's own by default).
    pub endpoints: Endpoints,
    /// Send no credentials (a test server or an emulator); else Google's standard chain.
    pub anonymous: bool,
    /// The bucket (`gs://BUCKET[/PREFIX]`) attempts' files are staged in; without one, tasks
    /// with input or output files are refused unless their runner names a bucket.
    pub staging: Option<String>,
    /// The service account of jobs whose runner names none.
    pub service_account: Option<String>,
    /// The Pub/Sub topic jobs publish their state changes on (`projects/P/topics/T`), and the
    /// launcher's subscription of it (`projects/P/subscriptions/S`): both, or neither (polling
    /// alone).
    pub notifications_topic: Option<String>,
    pub notifications_subscription: Option<String>,
    /// How long a job may wait QUEUED or SCHEDULED before its attempt fails.
    pub pending_deadline: Duration,
    /// How often one round of listings reads every job in flight.
    pub poll_interval: Duration,
    /// How long after a job ended its log may still gain entries.
    pub log_settle: Duration,
    /// The least time between two reads of a project's task logs (each reads every job's).
    pub log_round: Duration,
    /// Leave jobs running when the launcher stops, for the next start to adopt (the default).
    pub detach: bool,
}

impl Config {
    /// Defaults: those of [`Service::new`] but 256 attempts at once and a grace of 30 s, group
    /// `launcher-google-batch`, Google's endpoints and credential chain, a pending deadline of
    /// 10 minutes, a listing round every 2 s, 5 s for Cloud Logging to settle, a round of log reads
    /// every 2 s at most, jobs left running when the launcher stops.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let mut service = Service::new(data_dir, "launcher-google-batch");
        service.max_parallel = 256;
        service.kill_grace = Duration::from_secs(30);
        Config {
            service,
            project: None,
            region: None,
            endpoints: Endpoints::default(),
            anonymous: false,
            staging: None,
            service_account: None,
            notifications_topic: None,
            notifications_subscription: None,
            pending_deadline: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            log_settle: Duration::from_secs(5),
            log_round: Duration::from_secs(2),
            detach: true,
        }
    }

    /// The API client this configuration names.
    pub fn google(&self) -> Result<Google> {
        for (flag, url) in [
            ("--google-batch-endpoint", &self.endpoints.batch),
            ("--google-logging-endpoint", &self.endpoints.logging),
            ("--google-storage-endpoint", &self.endpoints.storage),
            ("--google-pubsub-endpoint", &self.endpoints.pubsub),
        ] {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(Error::Config(format!(
                        "{flag} {url:?} is not an http(s) URL: write e.g. http://127.0.0.1:8085"
                    )));
                }
            }
        }
        let auth = if self.anonymous {
            Auth::Anonymous
        } else {
            Auth::from_env().map_err(Error::Config)?
        };
        Google::new(self.endpoints.clone(), auth).map_err(Error::Config)
    }
}

/// The backend as [`run`] makes it, for the launcher whose journal is `journal` (whose identity
/// its jobs are labelled with, so that a restart finds the jobs its previous run left), keeping
/// output files in `artifacts`.
pub async fn backend(config: &Config, journal: &Journal, artifacts: &Path) -> Result<GoogleBatch> {
    let launcher = journal.identity().map_err(|source| Error::Io {
        what: format!(
            "cannot keep the launcher's identity beside {}",
            journal.path().display()
        ),
        source,
    })?;
    if config.poll_interval.is_zero() {
        return Err(Error::Config(
            "--google-batch-poll-interval must be more than 0".into(),
        ));
    }
    let staging = Staging::new(
        config.staging.as_deref(),
        Staging::options(&config.endpoints.storage, config.anonymous),
        artifacts.to_path_buf(),
        Default::default(),
    )
    .map_err(|why| Error::Config(format!("--google-batch-staging: {why}")))?;
    let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let notifications = match (
        given(&config.notifications_topic),
        given(&config.notifications_subscription),
    ) {
        (None, None) => None,
        (Some(topic), Some(subscription)) => {
            let shaped = |v: &str, kind: &str| {
                let p: Vec<&str> = v.split('/').collect();
                p.len() == 4 && p[0] == "projects" && p[2] == kind && !p[1].is_empty() && !p[3].is_empty()
            };
            if !shaped(&topic, "topics") {
                return Err(Error::Config(format!(
                    "--google-batch-topic {topic:?} is not projects/PROJECT/topics/TOPIC"
                )));
            }
            if !shaped(&subscription, "subscriptions") {
                return Err(Error::Config(format!(
                    "--google-batch-subscription {subscription:?} is not projects/PROJECT/subscriptions/SUBSCRIPTION"
                )));
            }
            Some(crate::backend::Notifications { topic, subscription })
        }
        _ => {
            return Err(Error::Config(
                "--google-batch-topic and --google-batch-subscription go together: jobs publish their state changes \
                 on the topic, and the launcher reads them from its subscription of it"
                    .into(),
            ));
        }
    };
    let google = config.google()?;
    let mut settings = Settings::new(launcher, staging);
    settings.project = config.project.clone().filter(|p| !p.trim().is_empty());
    settings.region = config.region.clone().filter(|r| !r.trim().is_empty());
    settings.pending_deadline = config.pending_deadline;
    settings.kill_grace = config.service.kill_grace;
    settings.poll_interval = config.poll_interval;
    settings.log_settle = config.log_settle;
    settings.log_round = config.log_round;
    settings.service_account = config.service_account.clone().filter(|s| !s.trim().is_empty());
    settings.notifications = notifications;
    tracing::info!(
        project = settings.project.as_deref().unwrap_or("(per task)"),
        region = settings.region.as_deref().unwrap_or("(per task)"),
        batch = %config.endpoints.batch,
        staging = config.staging.as_deref().unwrap_or("(none: only tasks that name a bucket can have files)"),
        notifications = settings.notifications.as_ref().map_or("(none: polling alone)", |n| n.subscription.as_str()),
        launcher = %settings.launcher,
        "google-batch launcher starting"
    );
    let batch = GoogleBatch::new(google, settings);
    Ok(if config.detach {
        batch
    } else {
        batch.kill_on_shutdown()
    })
}

/// Runs the google-batch launcher until `shutdown` is cancelled (or the bus closes). Jobs keep
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
    tracing::info!("google-batch launcher stopped");
    result
}
