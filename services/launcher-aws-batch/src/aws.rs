//! The AWS side: the clients of each region an attempt runs in ([`Regions`], made from the
//! launcher's SDK configuration with the region overridden), failures typed by whose fault they
//! are, and [`Poller`], the one reader of job states for every attempt in flight in a region.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_batch::config::http::HttpResponse;
use aws_sdk_batch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_batch::types::JobDetail;
use ferry_launcher::backend::AttemptError;
use tokio::sync::{Notify, watch};
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
            poller: Poller::start(batch.clone(), self.interval, self.stop.clone()),
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

/// A job as the last round of DescribeJobs saw it.
#[derive(Debug, Clone)]
pub enum Seen {
    Job(Arc<JobDetail>),
    /// DescribeJobs did not return it: no such job (Batch forgets jobs some days after they
    /// end).
    Missing,
}

struct Entry {
    /// The round whose answer this is.
    round: u64,
    seen: Seen,
}

#[derive(Default)]
struct State {
    /// Job ids whose state someone asked for and that were not forgotten since.
    watched: HashSet<String>,
    /// Watched jobs a notification said changed, to describe before the next full round.
    hinted: HashSet<String>,
    seen: HashMap<String, Entry>,
    /// The last round that failed, with why.
    failed: Option<(u64, AttemptError)>,
}

/// Reads the state of every job in flight with as few DescribeJobs calls as there are: one
/// task describes all watched jobs, [`DESCRIBE_BATCH`] per call, once per interval, and every
/// attempt's [`Poller::state`] waits for the next round rather than asking itself. A round is
/// only made while someone watches a job. A notification that jobs changed ([`Poller::hint`])
/// brings a round of those jobs alone forward: the interval is then only the fallback.
pub struct Poller {
    batch: aws_sdk_batch::Client,
    interval: Duration,
    state: Mutex<State>,
    rounds: watch::Sender<u64>,
    wake: Notify,
    hints: Notify,
}

/// How long hints are gathered before the round they bring forward: a burst of notifications
/// makes one DescribeJobs call per 100 jobs.
const HINT_GATHER: Duration = Duration::from_millis(20);

impl Poller {
    /// A poller, and its task on the current runtime, which ends with `stop`.
    pub fn start(batch: aws_sdk_batch::Client, interval: Duration, stop: CancellationToken) -> Arc<Poller> {
        let (rounds, _) = watch::channel(0);
        let poller = Arc::new(Poller {
            batch,
            interval,
            state: Mutex::default(),
            rounds,
            wake: Notify::new(),
            hints: Notify::new(),
        });
        let weak = Arc::downgrade(&poller);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                let wake = async {
                    if p.lock().watched.is_empty() {
                        p.wake.notified().await;
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake => {}
                }
                let all: Vec<String> = {
                    let mut state = p.lock();
                    state.hinted.clear();
                    state.watched.iter().cloned().collect()
                };
                p.round(all, true).await;
                let until = tokio::time::Instant::now() + p.interval;
                // Holding the poller here keeps nothing alive: the backend's end cancels `stop`.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(until) => break,
                        _ = p.hints.notified() => {}
                    }
                    tokio::time::sleep(HINT_GATHER).await;
                    let hinted: Vec<String> = p.lock().hinted.drain().collect();
                    if !hinted.is_empty() {
                        p.round(hinted, false).await;
                    }
                }
            }
        });
        poller
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Describes `ids`. The failure of a full round is every waiter's; that of a round of
    /// hinted jobs only delays them until the next full round.
    async fn round(&self, ids: Vec<String>, full: bool) {
        let round = *self.rounds.borrow() + 1;
        let mut answers: Vec<(String, Seen)> = Vec::with_capacity(ids.len());
        let mut failure = None;
        for chunk in ids.chunks(DESCRIBE_BATCH) {
            match self
                .batch
                .describe_jobs()
                .set_jobs(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(out) => {
                    let mut found: HashMap<&str, Arc<JobDetail>> = HashMap::new();
                    for job in out.jobs() {
                        if let Some(id) = job.job_id() {
                            found.insert(id, Arc::new(job.clone()));
                        }
                    }
                    for id in chunk {
                        let seen = found.get(id.as_str()).cloned().map_or(Seen::Missing, Seen::Job);
                        answers.push((id.clone(), seen));
                    }
                }
                Err(e) => {
                    failure = Some(fault(
                        "cannot read the state of AWS Batch jobs (DescribeJobs)",
                        e,
                        false,
                    ));
                    break;
                }
            }
        }
        {
            let mut state = self.lock();
            for (id, seen) in answers {
                if state.watched.contains(&id) {
                    state.seen.insert(id, Entry { round, seen });
                }
            }
            if let Some(e) = failure {
                tracing::warn!(error = %e, "a round of DescribeJobs failed");
                if full {
                    state.failed = Some((round, e));
                }
            }
        }
        self.rounds.send_replace(round);
    }

    /// The job's state as a round of DescribeJobs that began after this call saw it.
    pub async fn state(&self, job_id: &str) -> Result<Seen, AttemptError> {
        let mut rounds = self.rounds.subscribe();
        let after = *rounds.borrow_and_update();
        let added = self.lock().watched.insert(job_id.to_string());
        if added {
            self.wake.notify_one();
        }
        loop {
            {
                let state = self.lock();
                // A job that ended stays as it ended: what was seen of it is its state.
                if let Some(Entry {
                    seen: Seen::Job(job), ..
                }) = state.seen.get(job_id)
                    && job.status().is_some_and(crate::state::is_terminal)
                {
                    return Ok(Seen::Job(job.clone()));
                }
                // A round that ended after `after` began after it unless it is `after + 1`,
                // which may have been under way already: that one counts only if it saw the job.
                if let Some(e) = state.seen.get(job_id).filter(|e| e.round > after) {
                    return Ok(e.seen.clone());
                }
                if let Some((r, e)) = &state.failed
                    && *r > after
                {
                    return Err(e.clone());
                }
            }
            if rounds.changed().await.is_err() {
                return Err(AttemptError::Unavailable(
                    "the AWS Batch poller has stopped".into(),
                ));
            }
        }
    }

    /// Brings forward a round of those of `job_ids` that are watched (notifications said they
    /// changed); the others are not this launcher's, or no longer waited for.
    pub fn hint<'a>(&self, job_ids: impl IntoIterator<Item = &'a str>) -> usize {
        let mut state = self.lock();
        let mut n = 0;
        for id in job_ids {
            if state.watched.contains(id) {
                state.hinted.insert(id.to_string());
                n += 1;
            }
        }
        drop(state);
        if n > 0 {
            self.hints.notify_one();
        }
        n
    }

    /// Whether the latest round saw `job_id` ended, without waiting for another.
    pub fn seen_ended(&self, job_id: &str) -> bool {
        matches!(
            self.lock().seen.get(job_id),
            Some(Entry { seen: Seen::Job(job), .. }) if job.status().is_some_and(crate::state::is_terminal)
        )
    }

    /// Stops watching a job.
    pub fn forget(&self, job_id: &str) {
        let mut state = self.lock();
        state.watched.remove(job_id);
        state.seen.remove(job_id);
    }
}
