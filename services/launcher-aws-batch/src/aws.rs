//! The AWS side: the clients of each region an attempt runs in ([`Regions`], made from the
//! launcher's SDK configuration with the region overridden), failures typed by whose fault they
//! are, and [`Poller`], the one reader of job states for every attempt in flight in a region.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_batch::config::http::HttpResponse;
use aws_sdk_batch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_batch::types::JobDetail;
use ferry_launcher::backend::AttemptError;
use ferry_launcher::batch::{self, Round};
use tokio_util::sync::CancellationToken;

/// The clients of one region, and its [`Poller`].
pub struct Regional {
    /// The region's name (empty: the launcher's SDK configuration has none, and its calls fail
    /// as they would without this backend).
    pub region: String,
    pub batch: aws_sdk_batch::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub poller: Arc<Poller>,
}

/// The clients of every region attempts run in, each made on first use from the launcher's
/// SDK configuration (credentials, endpoint, HTTP client) with only the region changed, and
/// kept for the launcher's life. Each region has its own poller: DescribeJobs answers for the
/// jobs of one region only, and a region that fails its rounds delays no other's attempts.
pub struct Regions {
    sdk: aws_config::SdkConfig,
    home: String,
    interval: Duration,
    stop: CancellationToken,
    made: Mutex<HashMap<String, Arc<Regional>>>,
}

impl Regions {
    /// The regions of a launcher whose own region is `sdk`'s. Its pollers poll every
    /// `interval` and end with `stop`.
    pub fn new(sdk: &aws_config::SdkConfig, interval: Duration, stop: CancellationToken) -> Regions {
        Regions {
            home: sdk.region().map(|r| r.to_string()).unwrap_or_default(),
            sdk: sdk.clone(),
            interval,
            stop,
            made: Mutex::default(),
        }
    }

    /// The launcher's own region (`--aws-region`, else the standard chain's).
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The clients of `region` (the launcher's own when empty), made on first use: on the
    /// current tokio runtime, where its poller runs.
    pub fn get(&self, region: &str) -> Arc<Regional> {
        let region = if region.is_empty() {
            self.home.as_str()
        } else {
            region
        };
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = made.get(region) {
            return r.clone();
        }
        let sdk = if region == self.home {
            self.sdk.clone()
        } else {
            self.sdk
                .to_builder()
                .region(aws_config::Region::new(region.to_string()))
                .build()
        };
        let batch = aws_sdk_batch::Client::new(&sdk);
        let made_one = Arc::new(Regional {
            region: region.to_string(),
            logs: aws_sdk_cloudwatchlogs::Client::new(&sdk),
            poller: Poller::start(Describe(batch.clone()), self.interval, self.stop.clone()),
            batch,
        });
        if region != self.home {
            tracing::info!(region, "AWS clients made for a region other than the launcher's");
        }
        made.insert(region.to_string(), made_one.clone());
        made_one
    }

    /// Hands `job_ids` (notifications said they changed) to every region's poller, each of
    /// which brings forward a round of those it watches; returns how many were watched.
    pub fn hint(&self, job_ids: &[String]) -> usize {
        let pollers: Vec<Arc<Poller>> = self
            .made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.poller.clone())
            .collect();
        pollers
            .iter()
            .map(|p| p.hint(job_ids.iter().map(String::as_str)))
            .sum()
    }
}

/// DescribeJobs takes at most this many job ids per call.
pub const DESCRIBE_BATCH: usize = 100;

/// Error codes AWS answers when a caller goes too fast: try again later.
const THROTTLED: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "ServerException",
];

/// A failed call's error as the runtime types it: the platform unreachable, slow or throttling
/// is [`AttemptError::Unavailable`] (tried again); anything else it answered (credentials
/// refused, a queue that does not exist) is [`AttemptError::Platform`], unless `task_fault`
/// says the request came from the task's own parameters.
pub fn fault<E>(what: &str, err: SdkError<E, HttpResponse>, task_fault: bool) -> AttemptError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let shown = match &err {
        SdkError::ServiceError(s) => {
            let e = s.err();
            format!(
                "{}: {}",
                e.code().unwrap_or("error"),
                e.message().unwrap_or("no message")
            )
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    };
    let message = format!("{what}: {shown}");
    match &err {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            if THROTTLED.contains(&code) || s.raw().status().is_server_error() {
                AttemptError::Unavailable(message)
            } else if task_fault && code == "ClientException" {
                AttemptError::Task(message)
            } else {
                AttemptError::Platform(message)
            }
        }
        SdkError::ConstructionFailure(_) => AttemptError::Platform(message),
        _ => AttemptError::Unavailable(message),
    }
}

/// Whether a service error says the thing asked about does not exist.
pub fn is_not_found<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    matches!(err, SdkError::ServiceError(s) if s.err().code() == Some("ResourceNotFoundException"))
}

/// A job as the last round of DescribeJobs saw it; [`batch::Seen::Missing`]: DescribeJobs did
/// not return it, no such job (Batch forgets jobs some days after they end).
pub type Seen = batch::Seen<JobDetail>;

/// Reads the state of every job in flight in a region with as few DescribeJobs calls as there
/// are: one task describes all watched jobs, [`DESCRIBE_BATCH`] per call, once per interval, and
/// every attempt's `state` waits for the next round rather than asking itself. A notification
/// that jobs changed (`hint`) brings a round of those jobs alone forward, a DescribeJobs call per
/// 100 of them: the interval is then only the fallback.
pub type Poller = batch::Poller<Describe>;

/// How a region's [`Poller`] reads jobs: DescribeJobs, [`DESCRIBE_BATCH`] ids per call. A job
/// it does not return is [`batch::Seen::Missing`], which is not taken for ended.
pub struct Describe(pub aws_sdk_batch::Client);

impl Describe {
    /// Describes `ids`, until a call fails: what was seen until then, and why.
    async fn describe(&self, ids: &[String]) -> Round<JobDetail> {
        let mut seen: Vec<(String, Seen)> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(DESCRIBE_BATCH) {
            match self.0.describe_jobs().set_jobs(Some(chunk.to_vec())).send().await {
                Ok(out) => {
                    let mut found: HashMap<&str, Arc<JobDetail>> = HashMap::new();
                    for job in out.jobs() {
                        if let Some(id) = job.job_id() {
                            found.insert(id, Arc::new(job.clone()));
                        }
                    }
                    for id in chunk {
                        let job = found.get(id.as_str()).cloned().map_or(Seen::Missing, Seen::Job);
                        seen.push((id.clone(), job));
                    }
                }
                Err(e) => {
                    let e = fault("cannot read the state of AWS Batch jobs (DescribeJobs)", e, false);
                    tracing::warn!(error = %e, "a round of DescribeJobs failed");
                    return Round {
                        seen,
                        failed: Some(e),
                    };
                }
            }
        }
        Round { seen, failed: None }
    }
}

#[async_trait]
impl batch::Reader for Describe {
    type Job = JobDetail;
    const PLATFORM: &'static str = "AWS Batch";
    const MISSING_ENDED: bool = false;

    async fn round(&self, ids: Vec<String>) -> Round<JobDetail> {
        self.describe(&ids).await
    }

    /// A failed call only delays the jobs it did not describe until the next full round.
    async fn hinted(&self, ids: Vec<String>) -> Vec<(String, Seen)> {
        self.describe(&ids).await.seen
    }

    fn is_terminal(job: &JobDetail) -> bool {
        job.status().is_some_and(crate::state::is_terminal)
    }
}
