//! The `google-batch` backend: the launcher runtime's [`Backend`] over Google Batch, Cloud
//! Logging and Cloud Storage.
//!
//! Each attempt is one Batch job with an id from the attempt id ([`names::job_id`]) in the
//! task's project and region: one task group of one task, one container runnable. The create
//! carries a request id from the attempt id too ([`names::request_id`]), so a create retried
//! after a lost answer returns the job the first one made, and a job that exists already
//! (`ALREADY_EXISTS`: an earlier try's) is adopted. The job is labelled with the job, task,
//! attempt, flow, namespace and launcher; it has `maxRetryCount` 0 (every retry is a ferry
//! attempt), `maxRunDuration` from the task's timeout plus the kill grace (ferry's own timeout
//! stops it first, Batch's ends it when no launcher is left to), `computeResource` from the
//! task's resources, an allocation policy with the runner's machine type, provisioning model
//! (standard or spot), GPUs, reservation, service account and network, and logs to Cloud
//! Logging.
//!
//! States come from one [`Poller`]: a `jobs.list` of this launcher's jobs per location every
//! poll interval, the same call for a thousand jobs as for one; no attempt polls on its own.
//! With a notifications topic, each job publishes its state changes there, and the launcher's
//! subscription brings the read of the jobs they name forward ([`crate::events`]). A
//! job QUEUED or SCHEDULED longer than the pending deadline fails with Batch's last word on
//! why, and is deleted when the attempt is released. A cancel or a timeout is `jobs.cancel`,
//! and waits until Batch says the job ended; release deletes the job. A job whose VM was
//! preempted or lost (Batch's exit codes 50001 to 50004 and 50006) is `lost`, not failed: it
//! was not the task's fault.
//!
//! Output comes from Cloud Logging (the job's `batch_task_logs`, standard output and error as
//! one log), read by timestamp and insert id ([`crate::logs`]), to its end before the attempt
//! is released; it stays in Cloud Logging after the job is deleted. Jobs outlive the launcher
//! ([`ShutdownPolicy::Detach`]): the next start on the same journal adopts each, with its true
//! outcome.
//!
//! Files go through Cloud Storage when the task has a staging bucket ([`crate::stage`]). Without
//! one, a task with input or output files or secrets is refused before anything is created,
//! and its environment has no `FERRY_OUTPUTS`. Secrets never go in the job's definition, which
//! anyone allowed `batch.jobs.get` sees.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_artifacts::Store;
use ferry_event::payload::{GoogleBatchProvisioning, GoogleBatchRunner, Runner, Stream, TaskDispatched};
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use ferry_launcher::batch::{self, Filled};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::google::{Google, Job};
use crate::logs::{self, Cursor};
use crate::names;
use crate::poller::{Listing, Poller, Seen, is_terminal, parent_of};
use crate::stage::{self, MOUNT, Staging};

/// The runner type this backend serves; dispatches arrive on `dispatch.google-batch`.
pub const BACKEND: &str = "google-batch";

/// The job label naming the launcher that created it.
pub const LABEL_LAUNCHER: &str = "ferry-launcher";
/// The job label holding the attempt id.
pub const LABEL_ATTEMPT: &str = "ferry-attempt";

/// Batch's exit codes for a task whose VM went away, not the task's fault: preempted (spot),
/// lost, rebooted, unresponsive, recreated.
const VM_LOST: &[(i32, &str)] = &[
    (50001, "its VM was preempted"),
    (50002, "its VM stopped answering Batch"),
    (50003, "its VM was rebooted"),
    (50004, "its VM was unresponsive"),
    (50006, "its VM was recreated"),
];

/// Batch's exit code for a task that ran past `maxRunDuration`.
const RUN_DURATION_EXCEEDED: i32 = 50005;

/// How often a running job's log is read again, at most, while it brings lines.
const LOG_REFRESH: Duration = Duration::from_millis(500);

/// The longest wait between two reads of the log of a job that runs and writes nothing: each
/// read that brings nothing doubles the wait up to this (`entries.list` has a quota of 60 calls
/// a minute per project by default).
const LOG_IDLE_MAX: Duration = Duration::from_secs(16);

/// How the backend runs its jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This launcher's identity (its jobs' `ferry-launcher` label).
    pub launcher: String,
    /// The project of tasks whose runner names none.
    pub project: Option<String>,
    /// The region of tasks whose runner names none.
    pub region: Option<String>,
    /// How long a job may wait to run before its attempt fails.
    pub pending_deadline: Duration,
    /// The time a stopped job gets between SIGTERM and SIGKILL: used to size the job's
    /// `maxRunDuration`.
    pub kill_grace: Duration,
    /// How often one round of listings reads every job in flight.
    pub poll_interval: Duration,
    /// How long after a job was seen ended its log may still gain entries (Cloud Logging
    /// ingests with a delay): the log is complete once a read this long after brings nothing.
    pub log_settle: Duration,
    /// The least time between two reads of a project's task logs: each reads every job whose
    /// log is wanted then, so that a launcher spends at most one of Cloud Logging's read quota
    /// (60 a minute per project by default) per this time, however many jobs it runs.
    pub log_round: Duration,
    /// Where attempts' files are staged; none: tasks with files are refused.
    pub staging: Staging,
    /// The service account of tasks whose runner names none.
    pub service_account: Option<String>,
    /// The Pub/Sub topic every job publishes its state changes on, and the launcher's
    /// subscription of it, read as hints that bring a job's next read forward
    /// ([`crate::events`]).
    pub notifications: Option<Notifications>,
}

/// Where jobs' state changes go, and where the launcher reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifications {
    /// `projects/P/topics/T`.
    pub topic: String,
    /// `projects/P/subscriptions/S`, a subscription of the topic.
    pub subscription: String,
}

impl Settings {
    pub fn new(launcher: impl Into<String>, staging: Staging) -> Settings {
        Settings {
            launcher: launcher.into(),
            project: None,
            region: None,
            pending_deadline: Duration::from_secs(600),
            kill_grace: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            log_settle: Duration::from_secs(5),
            log_round: Duration::from_secs(2),
            staging,
            service_account: None,
            notifications: None,
        }
    }
}

/// What the journal keeps of a Batch job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handle {
    /// `projects/P/locations/L/jobs/ID`.
    pub name: String,
    /// Its uid, once it was created (or found): what its log entries are labelled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// How long it may wait to run, in seconds.
    pub pending_deadline_s: u64,
    /// The prefix of its staged files in the staging bucket, when it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// That bucket (`gs://BUCKET[/PREFIX]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_bucket: Option<String>,
}

impl Handle {
    fn project(&self) -> &str {
        self.name
            .strip_prefix("projects/")
            .and_then(|r| r.split('/').next())
            .unwrap_or("")
    }
}

/// The google-batch backend. Cheap to clone.
#[derive(Clone)]
pub struct GoogleBatch(Arc<Inner>);

struct Inner {
    google: Google,
    settings: Settings,
    shutdown: ShutdownPolicy,
    poller: Arc<Poller>,
    stop: CancellationToken,
    /// Locations this run's attempts used: where [`Backend::list_owned`] looks.
    parents: Mutex<BTreeSet<String>>,
    /// Each job's log as read so far, by job name.
    logs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LogState>>>>,
    log_reader: Arc<logs::Reader>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One job's log and what is known of its end.
struct LogState {
    pages: logs::Pages,
    /// Nothing more can come: the job ended and a read after that brought nothing.
    complete: bool,
    fetched: Option<Instant>,
    /// Reads in a row that brought nothing.
    idle: u32,
    /// When the job was first seen ended.
    ended: Option<Instant>,
    /// The last read stopped at its page limit: more is there, read it at once.
    behind: bool,
}

impl LogState {
    fn refresh(&self) -> Duration {
        (LOG_REFRESH * 2u32.saturating_pow(self.idle.min(8))).min(LOG_IDLE_MAX)
    }
}

impl GoogleBatch {
    /// The backend over `google`; starts the job-state poller on the current tokio runtime.
    pub fn new(google: Google, settings: Settings) -> GoogleBatch {
        let stop = CancellationToken::new();
        let filter = format!("labels.{LABEL_LAUNCHER}=\"{}\"", names::label(&settings.launcher));
        let poller = Poller::start(
            Listing {
                google: google.clone(),
                filter,
            },
            settings.poll_interval,
            stop.clone(),
        );
        if let Some(n) = &settings.notifications {
            crate::events::listen(
                google.clone(),
                n.subscription.clone(),
                poller.clone(),
                stop.clone(),
            );
        }
        let log_reader = logs::Reader::new(google.clone(), settings.log_round);
        let mut parents = BTreeSet::new();
        if let (Some(p), Some(r)) = (&settings.project, &settings.region) {
            parents.insert(format!("projects/{p}/locations/{r}"));
        }
        GoogleBatch(Arc::new(Inner {
            google: google.clone(),
            settings,
            shutdown: ShutdownPolicy::Detach,
            poller,
            stop,
            parents: Mutex::new(parents),
            logs: Mutex::default(),
            log_reader,
        }))
    }

    /// Cancels every running job when the launcher stops, reporting its attempt `lost`, rather
    /// than leaving it to the next start. Call before the backend is shared.
    pub fn kill_on_shutdown(mut self) -> GoogleBatch {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.shutdown = ShutdownPolicy::Kill,
            None => debug_assert!(false, "kill_on_shutdown on a backend already shared"),
        }
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    fn handle(&self, compute: &Compute) -> BackendResult<Handle> {
        compute.handle_as()
    }

    fn remember(&self, h: &Handle) {
        lock(&self.0.parents).insert(parent_of(&h.name).to_string());
    }

    /// The location (`projects/P/locations/L`) a task's job goes to.
    fn parent_of_task(&self, r: &GoogleBatchRunner) -> BackendResult<String> {
        let s = &self.0.settings;
        let pick = |own: &Option<String>, default: &Option<String>| {
            own.as_deref()
                .filter(|v| !v.trim().is_empty())
                .or(default.as_deref())
                .map(str::to_string)
        };
        let project = pick(&r.project, &s.project).ok_or_else(|| {
            AttemptError::Task(
                "runner.project is unset, and this google-batch launcher has no --google-project: name the Google \
                 Cloud project the job runs in (defaults.google-batch in the flow sets it for every task)"
                    .into(),
            )
        })?;
        let region = pick(&r.region, &s.region).ok_or_else(|| {
            AttemptError::Task(
                "runner.region is unset, and this google-batch launcher has no --google-region: name the region the \
                 job runs in, e.g. europe-west1"
                    .into(),
            )
        })?;
        let word = |v: &str| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        };
        if !word(&project) {
            return Err(AttemptError::Task(format!(
                "runner.project {project:?} is not a project id"
            )));
        }
        if !word(&region) {
            return Err(AttemptError::Task(format!(
                "runner.region {region:?} is not a region"
            )));
        }
        Ok(format!("projects/{project}/locations/{region}"))
    }

    /// The staged prefix and bucket of an attempt that has them.
    fn staged(&self, h: &Handle) -> BackendResult<Option<(Store, String)>> {
        let (Some(prefix), Some(url)) = (&h.stage, &h.stage_bucket) else {
            return Ok(None);
        };
        let bucket = self.0.settings.staging.open(url).map_err(|why| {
            AttemptError::Platform(format!(
                "the journal's staging bucket of {} cannot be read: {why}",
                h.name
            ))
        })?;
        Ok(Some((bucket, prefix.clone())))
    }

    /// The job as the poller's latest round saw it, `None` when Batch does not know it.
    async fn job(&self, h: &Handle) -> BackendResult<Option<Arc<Job>>> {
        Ok(match self.0.poller.state(&h.name).await? {
            Seen::Job(j) => Some(j),
            Seen::Missing => None,
        })
    }

    async fn cancel(&self, name: &str) -> BackendResult<()> {
        match self.0.google.cancel_job(name).await {
            Ok(()) => Ok(()),
            // Gone, or ended already: nothing runs.
            Err(e) if e.is_not_found() => Ok(()),
            Err(crate::google::ApiError::Refused {
                code: 400, status, ..
            }) if status == "FAILED_PRECONDITION" => Ok(()),
            Err(e) => Err(e.fault(&format!("cannot cancel Google Batch job {name}"), false)),
        }
    }

    /// The attempt's state from its job.
    async fn state_of(&self, h: &Handle, job: &Job) -> BackendResult<ComputeState> {
        let name = job.id();
        match job.state() {
            "RUNNING" => Ok(ComputeState::Running),
            "SUCCEEDED" => Ok(ComputeState::Exited(Exit {
                code: Some(job.exit_code().unwrap_or(0)),
                error: None,
                reason: None,
            })),
            "FAILED" => Ok(failed(name, job)),
            "CANCELLED" => Ok(ComputeState::Exited(Exit {
                code: job.exit_code(),
                error: Some(format!(
                    "Google Batch job {name} was cancelled{}",
                    job.last_event().map(|e| format!(": {e}")).unwrap_or_default()
                )),
                reason: Some("Cancelled".into()),
            })),
            "DELETION_IN_PROGRESS" => Ok(ComputeState::Vanished(format!(
                "Google Batch job {name} is being deleted, not by this attempt"
            ))),
            // Cancelled by ferry or behind its back: it ends soon.
            "CANCELLATION_IN_PROGRESS" => Ok(ComputeState::Running),
            waiting => {
                let created = job
                    .create_time
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or_else(ferry_event::now_ms, |t| t.timestamp_millis());
                let waited =
                    Duration::from_millis(u64::try_from(ferry_event::now_ms() - created).unwrap_or(0));
                let deadline = Duration::from_secs(h.pending_deadline_s);
                if waited <= deadline {
                    return Ok(ComputeState::Pending);
                }
                // Past its deadline the attempt is over: the job is cancelled now, so that it
                // never runs.
                self.cancel(&h.name).await?;
                Ok(ComputeState::Exited(Exit {
                    code: None,
                    error: Some(format!(
                        "Google Batch job {name} was still {waiting} after {}s, past its pending deadline of {}s: {} \
                         (runner.pendingDeadlineSeconds)",
                        waited.as_secs(),
                        deadline.as_secs(),
                        job.last_event().unwrap_or(
                            "the region has no capacity for its machine type or GPUs, or its quota is used up"
                        )
                    )),
                    reason: Some("PendingDeadlineExceeded".into()),
                }))
            }
        }
    }

    fn log_state(&self, name: &str, cursor: &Value) -> Arc<tokio::sync::Mutex<LogState>> {
        lock(&self.0.logs)
            .entry(name.to_string())
            .or_insert_with(|| {
                let cursor: Cursor = serde_json::from_value(cursor.clone()).unwrap_or_default();
                Arc::new(tokio::sync::Mutex::new(LogState {
                    pages: cursor.pages(),
                    complete: false,
                    fetched: None,
                    idle: 0,
                    ended: None,
                    behind: false,
                }))
            })
            .clone()
    }

    /// The job's output (both streams, as one log) from `from` on.
    async fn read_output(&self, h: &Handle, from: &LogPosition, max: usize) -> BackendResult<LogRead> {
        let state = self.log_state(&h.name, &from.cursor);
        let mut st = state.lock().await;
        if !st.pages.reaches(from.stdout) {
            let cursor: Cursor = serde_json::from_value(from.cursor.clone()).unwrap_or_default();
            st.pages = cursor.pages();
            st.complete = false;
        }
        let ended = self.0.poller.seen_ended(&h.name);
        if ended && st.ended.is_none() {
            st.ended = Some(Instant::now());
        }
        let fresh = !ended && !st.behind && st.fetched.is_some_and(|at| at.elapsed() < st.refresh());
        if st.pages.drained_at(from.stdout) && !st.complete && !fresh {
            // Once what the log held when the job was seen ended has been read, what is left
            // arrives by the end of the settle time: one read then ends the log, rather than
            // one each time the runtime looks until then.
            if let Some(at) = st.ended
                && !st.behind
                && st.fetched.is_some_and(|f| f >= at)
            {
                tokio::time::sleep_until(at + self.0.settings.log_settle).await;
            }
            self.fetch_logs(h, &mut st).await?;
        }
        let (bytes, cursor) = st.pages.read(from.stdout, max);
        let complete = st.complete && st.pages.drained_at(from.stdout + bytes.len() as u64);
        Ok(LogRead {
            bytes,
            cursor: serde_json::to_value(Cursor::from(cursor)).unwrap_or_default(),
            complete,
        })
    }

    /// Reads the entries after the last one held, every page; marks the log complete when the
    /// job had ended long enough before the read and it brought nothing.
    async fn fetch_logs(&self, h: &Handle, st: &mut LogState) -> BackendResult<()> {
        let started = Instant::now();
        let settled = st
            .ended
            .is_some_and(|at| started.duration_since(at) >= self.0.settings.log_settle);
        let Some(uid) = h.uid.as_deref() else {
            // Never created: there is no log.
            st.complete = true;
            return Ok(());
        };
        let project = h.project();
        // Until the job has ended and the settle time passed, only entries older than it.
        let until = (!settled).then(|| {
            let at = chrono::Utc::now()
                - chrono::Duration::from_std(self.0.settings.log_settle).unwrap_or_default();
            at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        });
        let want = logs::Want {
            uid: uid.to_string(),
            after: st.pages.next().clone(),
            until,
        };
        let logs::Got { entries, more } = self.0.log_reader.read(project, want).await?;
        let new = logs::push(&mut st.pages, entries);
        st.fetched = Some(Instant::now());
        st.idle = if new { 0 } else { st.idle.saturating_add(1) };
        st.behind = more;
        if !new && !more && settled {
            st.complete = true;
        }
        Ok(())
    }

    fn forget(&self, h: &Handle) {
        lock(&self.0.logs).remove(&h.name);
        self.0.poller.forget(&h.name);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn runner(d: &TaskDispatched) -> BackendResult<&GoogleBatchRunner> {
    match &d.runner {
        Runner::GoogleBatch(r) => Ok(r),
        other => Err(AttemptError::Task(format!(
            "the google-batch launcher runs `runner: google-batch` tasks, not `{}`",
            other.backend()
        ))),
    }
}

/// How a FAILED job ended, and whose fault that was.
fn failed(name: &str, job: &Job) -> ComputeState {
    let code = job.exit_code();
    let said = job.last_event().unwrap_or("no reason given");
    if let Some((_, why)) = code.and_then(|c| VM_LOST.iter().find(|(k, _)| *k == c)) {
        return ComputeState::Vanished(format!(
            "Google Batch job {name} failed because {why} (exit code {}): {said}",
            code.unwrap_or_default()
        ));
    }
    match code {
        Some(RUN_DURATION_EXCEEDED) => ComputeState::Exited(Exit {
            code: None,
            error: Some(format!(
                "Google Batch job {name} ran past its maxRunDuration (the task's timeout and the kill grace): {said}"
            )),
            reason: Some("DeadlineExceeded".into()),
        }),
        Some(code) => ComputeState::Exited(Exit {
            code: Some(code),
            error: Some(if code == stage::STAGE_FAILED {
                format!(
                    "exited with status {code}: staging the task's files failed (its log says why: ferry-stage)"
                )
            } else {
                format!("exited with status {code}")
            }),
            reason: (code == 137).then(|| "Killed".to_string()),
        }),
        None => ComputeState::Exited(Exit {
            code: None,
            error: Some(format!("Google Batch job {name} failed: {said}")),
            reason: None,
        }),
    }
}

/// Batch's `maxRunDuration` for a task's timeout: the timeout plus the kill grace, whole
/// seconds.
pub fn max_run_duration(timeout_ms: Option<u64>, grace: Duration) -> Option<String> {
    let ms = timeout_ms?;
    Some(format!(
        "{}s",
        (ms + grace.as_millis() as u64).div_ceil(1000).max(1)
    ))
}

/// What this backend refuses in a task's command and environment ([`batch::check`]).
const PLATFORM: batch::Platform = batch::Platform {
    backend: BACKEND,
    reader: "batch.jobs.get",
    staging: "runner.bucket, or the launcher's --google-batch-staging gs://BUCKET[/PREFIX]",
    secret_store: "Or give the job's service account access to the secret in Secret Manager and read it from the \
                   task",
    no_working_dir: "the job's working directory is only known inside the job; read $FERRY_WORKING_DIR there \
                     instead (set when the task has a staging bucket)",
};

/// The task's `computeResource` and the VM's accelerators.
fn resources(d: &TaskDispatched) -> BackendResult<(Value, Option<Value>)> {
    let task = AttemptError::Task;
    let mut compute = serde_json::Map::new();
    if let Some(cpu) = d.resources.cpu {
        compute.insert(
            "cpuMilli".into(),
            Value::from(names::cpu_milli(cpu).map_err(task)?),
        );
    }
    if let Some(bytes) = d
        .resources
        .memory_bytes()
        .map_err(|why| task(format!("resources.memory: {why}")))?
    {
        compute.insert("memoryMib".into(), Value::from(names::memory_mib(bytes)));
    }
    let gpus = d
        .resources
        .gpus()
        .map_err(|why| task(format!("resources.{why}")))?;
    let accelerators = match gpus {
        None => None,
        Some(g) => {
            let Some(kind) = g.kind else {
                return Err(task(format!(
                    "resources.gpu {}: Google Batch needs the GPU model too: set resources.gpuType (nvidia-tesla-t4, \
                     nvidia-l4, nvidia-tesla-a100, …)",
                    g.count
                )));
            };
            Some(json!([{ "type": kind, "count": g.count.to_string() }]))
        }
    };
    Ok((Value::Object(compute), accelerators))
}

/// Labels of the attempt's job.
fn labels(d: &TaskDispatched, launcher: &str) -> Value {
    let namespace = d
        .namespace
        .as_deref()
        .unwrap_or(ferry_event::payload::DEFAULT_NAMESPACE);
    let mut l = serde_json::Map::new();
    l.insert("ferry-job".into(), names::label(&d.job_id).into());
    l.insert("ferry-task".into(), names::label(&d.task_id).into());
    l.insert(LABEL_ATTEMPT.into(), names::label(&d.attempt_id).into());
    l.insert("ferry-namespace".into(), names::label(namespace).into());
    l.insert(LABEL_LAUNCHER.into(), names::label(launcher).into());
    if let Some(flow) = &d.flow_id {
        l.insert("ferry-flow".into(), names::label(flow).into());
    }
    Value::Object(l)
}

#[async_trait]
impl Backend for GoogleBatch {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        self.0.shutdown
    }

    fn compute_name(&self, attempt_id: &str) -> String {
        names::job_id(attempt_id)
    }

    fn describe(&self, compute: &Compute) -> String {
        match self.handle(compute) {
            Ok(h) => h.name,
            Err(_) => compute.name.clone(),
        }
    }

    /// A job waits QUEUED and SCHEDULED for its VM before it runs.
    fn may_queue(&self) -> bool {
        true
    }

    fn check(&self, d: &TaskDispatched) -> BackendResult<()> {
        let r = runner(d)?;
        let task = AttemptError::Task;
        if r.image.trim().is_empty() {
            return Err(task(
                "runner.image is empty: name the container image the job runs".into(),
            ));
        }
        self.parent_of_task(r)?;
        resources(d)?;
        if d.command.is_empty() {
            return Err(task("command is empty: give at least the program to run".into()));
        }
        for name in d.env.keys() {
            if name.is_empty() || name.contains(['=', '\0']) || name.starts_with("BATCH_") {
                return Err(task(format!(
                    "env: {name:?} is not a variable the google-batch backend can set (it must be non-empty, without \
                     '=' or NUL, and not start with BATCH_, which Batch keeps for its own)"
                )));
            }
        }
        let staged = self.0.settings.staging.for_task(r.bucket.as_deref())?.is_some();
        if !staged {
            if let Some(name) = d.input_files.keys().next() {
                return Err(task(format!(
                    "inputFiles.{name}: no staging bucket to pass input files through: name one in runner.bucket \
                     (defaults.google-batch.bucket for the whole flow), or start the launcher with \
                     --google-batch-staging gs://BUCKET[/PREFIX]"
                )));
            }
            if let Some(p) = d.output_files.first() {
                return Err(task(format!(
                    "outputFiles {p:?}: no staging bucket to bring output files back through: name one in \
                     runner.bucket (defaults.google-batch.bucket for the whole flow), or start the launcher with \
                     --google-batch-staging gs://BUCKET[/PREFIX]"
                )));
            }
        }
        for name in d.input_files.keys() {
            ferry_flow::rules::input_file_name(name)
                .map_err(|why| task(format!("inputFiles: {name:?} is refused: {why}")))?;
        }
        for p in &d.output_files {
            ferry_launcher::collect::check_pattern(p).map_err(task)?;
        }
        batch::check(d, staged, &PLATFORM)
    }

    async fn reserve(&self, task: Task<'_>) -> BackendResult<Compute> {
        let r = runner(task.dispatch)?;
        let parent = self.parent_of_task(r)?;
        let id = self.compute_name(task.attempt_id());
        let bucket = self.0.settings.staging.for_task(r.bucket.as_deref())?;
        let deadline = r
            .pending_deadline_seconds
            .map(Duration::from_secs)
            .unwrap_or(self.0.settings.pending_deadline);
        let h = Handle {
            name: format!("{parent}/jobs/{id}"),
            uid: None,
            pending_deadline_s: deadline.as_secs().max(1),
            stage: bucket.as_ref().map(|_| batch::stage_prefix(task.dispatch)),
            stage_bucket: bucket.map(|b| b.url().to_string()),
        };
        self.remember(&h);
        Compute::with_handle(id, &h)
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let d = task.dispatch;
        let r = runner(d)?;
        let mut h = self.handle(&reserved)?;
        self.remember(&h);
        // Look before creating: a job of this id is this attempt's, from an earlier try.
        if let Some(job) = self
            .0
            .google
            .get_job(&h.name)
            .await
            .map_err(|e| e.fault(&format!("cannot look up Google Batch job {}", h.name), false))?
        {
            tracing::info!(job = %h.name, "adopted the Google Batch job of an earlier try");
            h.uid = Some(job.uid.clone());
            return Compute::with_handle(reserved.name, &h);
        }
        // Everything of the task's is filled before anything is created: a template that
        // cannot be filled leaves no job.
        let filled = Filled::new(task)?;
        let mut env = filled.env.clone();
        let (entrypoint, commands, volumes) = match self.staged(&h)? {
            Some((bucket, prefix)) => {
                let (args, stage_env) = stage::prepare(&bucket, task, &prefix, &filled).await?;
                env.extend(stage_env);
                let remote = stage::remote_path(&bucket, &prefix);
                (
                    "sh".to_string(),
                    args,
                    Some(json!([{ "gcs": { "remotePath": remote }, "mountPath": MOUNT }])),
                )
            }
            _ if filled.has_secrets() => {
                return Err(AttemptError::Task(
                    "the task uses secrets, and this attempt has no staging prefix to pass them through: a job's \
                     command and environment are shown to anyone allowed batch.jobs.get"
                        .into(),
                ));
            }
            _ => {
                let (program, args) = filled
                    .command
                    .split_first()
                    .ok_or_else(|| AttemptError::Task("command is empty".into()))?;
                (program.clone(), args.to_vec(), None)
            }
        };
        let (compute, accelerators) = resources(d)?;
        let mut container = json!({
            "imageUri": r.image,
            "entrypoint": entrypoint,
            "commands": commands,
        });
        if volumes.is_some() {
            container["volumes"] = json!([format!("{MOUNT}:{MOUNT}:rw")]);
        }
        let variables: serde_json::Map<String, Value> =
            env.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
        let mut task_spec = json!({
            "runnables": [{ "container": container }],
            "computeResource": compute,
            "maxRetryCount": 0,
            "environment": { "variables": variables },
        });
        if let Some(v) = volumes {
            task_spec["volumes"] = v;
        }
        if let Some(dur) = max_run_duration(d.timeout_ms, self.0.settings.kill_grace) {
            task_spec["maxRunDuration"] = Value::from(dur);
        }
        let mut policy = serde_json::Map::new();
        if let Some(m) = r.machine_type.as_deref().filter(|m| !m.is_empty()) {
            policy.insert("machineType".into(), m.into());
        }
        if r.provisioning_model == Some(GoogleBatchProvisioning::Spot) {
            policy.insert("provisioningModel".into(), "SPOT".into());
        }
        if let Some(a) = accelerators {
            policy.insert("accelerators".into(), a);
        }
        if let Some(res) = r.reservation.as_deref().filter(|s| !s.is_empty()) {
            policy.insert("reservation".into(), res.into());
        }
        let mut allocation = json!({
            "instances": [{ "policy": Value::Object(policy), "installGpuDrivers": d.resources.gpu.unwrap_or(0) > 0 }],
            "labels": labels(d, &self.0.settings.launcher),
        });
        if let Some(sa) = r
            .service_account
            .as_deref()
            .or(self.0.settings.service_account.as_deref())
            .filter(|s| !s.is_empty())
        {
            allocation["serviceAccount"] = json!({ "email": sa });
        }
        if r.network.is_some() || r.subnetwork.is_some() || r.no_external_ip {
            let mut iface = serde_json::Map::new();
            if let Some(n) = &r.network {
                iface.insert("network".into(), n.clone().into());
            }
            if let Some(s) = &r.subnetwork {
                iface.insert("subnetwork".into(), s.clone().into());
            }
            if r.no_external_ip {
                iface.insert("noExternalIpAddress".into(), true.into());
            }
            allocation["network"] = json!({ "networkInterfaces": [Value::Object(iface)] });
        }
        let mut body = json!({
            "taskGroups": [{ "taskSpec": task_spec, "taskCount": "1", "parallelism": "1" }],
            "allocationPolicy": allocation,
            "labels": labels(d, &self.0.settings.launcher),
            "logsPolicy": { "destination": "CLOUD_LOGGING" },
        });
        if let Some(n) = &self.0.settings.notifications {
            body["notifications"] = json!([{
                "pubsubTopic": n.topic,
                "message": { "type": "JOB_STATE_CHANGED" },
            }]);
        }
        let parent = parent_of(&h.name).to_string();
        let id = reserved.name.clone();
        let made = self
            .0
            .google
            .create_job(&parent, &id, &names::request_id(d.attempt_id.as_str()), &body)
            .await;
        let job = match made {
            Ok(job) => job,
            // Another try (or launcher) created it first: that one is this attempt's.
            Err(e) if e.is_conflict() => self
                .0
                .google
                .get_job(&h.name)
                .await
                .map_err(|e| e.fault(&format!("cannot look up Google Batch job {}", h.name), false))?
                .ok_or_else(|| {
                    AttemptError::Unavailable(format!(
                        "Google Batch says job {} exists, and then that it does not",
                        h.name
                    ))
                })?,
            Err(e) => {
                return Err(e.fault(
                    &format!("cannot create Google Batch job {} in {parent}", id),
                    true,
                ));
            }
        };
        tracing::info!(job = %h.name, uid = %job.uid, "created Google Batch job");
        h.uid = Some(job.uid);
        Compute::with_handle(reserved.name, &h)
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        let mut h = self.handle(reserved)?;
        self.remember(&h);
        let job = self
            .0
            .google
            .get_job(&h.name)
            .await
            .map_err(|e| e.fault(&format!("cannot look up Google Batch job {}", h.name), false))?;
        Ok(match job {
            Some(job) => {
                h.uid = Some(job.uid);
                Some(Compute::with_handle(reserved.name.clone(), &h)?)
            }
            None => None,
        })
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let h = self.handle(compute)?;
        match self.job(&h).await? {
            Some(job) => self.state_of(&h, &job).await,
            None => Ok(ComputeState::Vanished(format!(
                "Google Batch job {} is gone: Batch does not know it",
                h.name
            ))),
        }
    }

    /// Each call waits for the poller's next round: the rounds pace it.
    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        loop {
            match self.status(compute).await? {
                ComputeState::Pending | ComputeState::Running => {}
                ended => return Ok(ended),
            }
        }
    }

    async fn read_logs(
        &self,
        compute: &Compute,
        stream: Stream,
        from: &LogPosition,
        max_bytes: usize,
    ) -> BackendResult<LogRead> {
        let h = self.handle(compute)?;
        match stream {
            Stream::Stdout => self.read_output(&h, from, max_bytes).await,
            // Batch writes both streams to one log: everything arrives as stdout.
            Stream::Stderr => Ok(ferry_launcher::batch::merged_stderr(from)),
        }
    }

    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()> {
        let h = self.handle(compute)?;
        match self.job(&h).await? {
            None => return Ok(()),
            Some(job) if is_terminal(job.state()) => return Ok(()),
            Some(_) => {}
        }
        self.cancel(&h.name).await?;
        // Batch stops the task (SIGTERM, then SIGKILL) and ends the job; a job that does not
        // end within the grace and a margin is deleted, which stops it for good.
        let until = Instant::now() + grace + Duration::from_secs(60);
        loop {
            match self.job(&h).await? {
                None => return Ok(()),
                Some(job) if is_terminal(job.state()) => return Ok(()),
                Some(_) if Instant::now() >= until => {
                    tracing::warn!(job = %h.name, "the cancelled Google Batch job did not end: deleting it");
                    return self
                        .0
                        .google
                        .delete_job(&h.name)
                        .await
                        .map_err(|e| e.fault(&format!("cannot delete Google Batch job {}", h.name), false));
                }
                Some(_) => {}
            }
        }
    }

    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        let h = self.handle(compute)?;
        match self.staged(&h)? {
            Some((bucket, prefix)) => stage::collect(&self.0.settings.staging, &bucket, task, &prefix).await,
            None => Ok(Collected::default()),
        }
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        let h = self.handle(compute)?;
        self.0
            .google
            .delete_job(&h.name)
            .await
            .map_err(|e| e.fault(&format!("cannot delete Google Batch job {}", h.name), false))?;
        if let Some((bucket, prefix)) = self.staged(&h)? {
            batch::remove_staged(&bucket, &prefix).await?;
        }
        self.forget(&h);
        Ok(())
    }

    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let parents: Vec<String> = lock(&self.0.parents).iter().cloned().collect();
        let filter = format!(
            "labels.{LABEL_LAUNCHER}=\"{}\"",
            names::label(&self.0.settings.launcher)
        );
        let mut owned = Vec::new();
        for parent in parents {
            let jobs = self
                .0
                .google
                .list_jobs(&parent, &filter)
                .await
                .map_err(|e| e.fault(&format!("cannot list the Google Batch jobs of {parent}"), false))?;
            for job in jobs {
                if matches!(job.state(), "DELETION_IN_PROGRESS") {
                    continue;
                }
                // Its staged files, from its volume: release removes them with the job.
                let staged = job.gcs_volume(MOUNT).and_then(stage::from_remote_path);
                let h = Handle {
                    name: job.name.clone(),
                    uid: Some(job.uid.clone()),
                    pending_deadline_s: self.0.settings.pending_deadline.as_secs().max(1),
                    stage_bucket: staged.as_ref().map(|(bucket, _)| bucket.clone()),
                    stage: staged.map(|(_, prefix)| prefix),
                };
                owned.push(Compute::with_handle(job.id().to_string(), &h)?);
            }
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, code: Option<i32>, said: &str) -> Job {
        serde_json::from_value(json!({
            "name": "projects/p/locations/l/jobs/ferry-a",
            "status": {"state": state, "statusEvents": [
                {"description": said, "taskExecution": code.map(|c| json!({"exitCode": c}))}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn a_lost_vm_is_not_the_tasks_fault_and_a_timeout_is_named() {
        assert!(matches!(
            failed("j", &job("FAILED", Some(50001), "preempted")),
            ComputeState::Vanished(m) if m.contains("preempted")
        ));
        match failed("j", &job("FAILED", Some(50005), "too long")) {
            ComputeState::Exited(e) => assert_eq!(e.reason.as_deref(), Some("DeadlineExceeded")),
            other => panic!("{other:?}"),
        }
        match failed("j", &job("FAILED", Some(3), "exit 3")) {
            ComputeState::Exited(e) => {
                assert_eq!(e.code, Some(3));
                assert_eq!(e.error.as_deref(), Some("exited with status 3"));
            }
            other => panic!("{other:?}"),
        }
        match failed("j", &job("FAILED", None, "image not found")) {
            ComputeState::Exited(e) => assert!(e.error.unwrap().contains("image not found")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_run_duration_covers_the_timeout_and_the_grace() {
        assert_eq!(
            max_run_duration(Some(1500), Duration::from_secs(30)).as_deref(),
            Some("32s")
        );
        assert_eq!(max_run_duration(None, Duration::from_secs(30)), None);
    }
}
