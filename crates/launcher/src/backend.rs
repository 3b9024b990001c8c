//! The seam between the launcher runtime and one kind of compute: [`Backend`].
//!
//! The runtime owns everything that is the same whatever runs the task: dispatch and cancel
//! intake, the in-flight window, idempotency per attempt id, the journal, heartbeats, the log
//! pipeline, secrets, outputs and reports. A backend only knows its compute: a process group in
//! a slot, a container, a Kubernetes Job, a cloud batch job. It implements [`Backend`], whose
//! methods the runtime calls in this order for one attempt:
//!
//! ```text
//! check ─▶ reserve ─▶ (journal: running, the reservation) ─▶ create ─▶ (journal: running, the handle)
//!   ─▶ status / wait / read_logs … ─▶ [stop] ─▶ read_logs to the end ─▶ collect ─▶ (journal: reported)
//!   ─▶ release ─▶ (publish task.finished) ─▶ (journal: done)
//! ```
//!
//! and, when it starts again after a crash, `find` for each attempt the journal holds running,
//! then the rest of the sequence from where the journal says it was; `list_owned` finds compute
//! the journal does not know (created by a run killed before it journaled), which is stopped,
//! drained and released.
//!
//! What the runtime journals of a backend — its [`Compute::handle`] and the log
//! [`LogPosition::cursor`] — is opaque JSON to it: a backend stores there whatever it needs to
//! find its compute and resume its logs after a crash, and reads it back with
//! [`Compute::handle_as`].
//!
//! Every method may be called again for the same attempt after a crash at any point: creating
//! adopts what exists, stopping or releasing what is gone is not an error.

use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{Outcome, OutputFile, Stream, TaskDispatched};
use ferry_event::template::Template;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secrets::{Secrets, TaskScope};
use ferry_event::payload::DEFAULT_NAMESPACE;

/// A backend's operations fail with this; the runtime turns it into the attempt's outcome.
pub type BackendResult<T> = std::result::Result<T, AttemptError>;

/// Why an attempt could not go on, typed by whose fault it is: that decides whether the attempt
/// counts against the task's `retry.attempts`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The task's own fault: a template names a secret that is not there, an input file name
    /// is refused, its program does not exist, it asks for what this backend cannot give
    /// (`resources.gpu` on local). The attempt is `failed` and counts against its retries. The
    /// message names the field and says what is accepted.
    #[error("{0}")]
    Task(String),
    /// ferry's or the platform's fault, which trying again cannot mend within this attempt: a
    /// full disk, the compute vanished, the API refused ferry's credentials. The attempt is
    /// `lost` and retried outside the task's budget.
    #[error("{0}")]
    Platform(String),
    /// The platform cannot be reached now (an API timing out, a daemon restarting). The runtime
    /// calls again with a growing wait; if it never comes back within the attempt's lease, the
    /// attempt is `lost`.
    #[error("{0}")]
    Unavailable(String),
}

impl AttemptError {
    /// The outcome of an attempt that ends on this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            AttemptError::Task(_) => Outcome::Failed,
            AttemptError::Platform(_) | AttemptError::Unavailable(_) => Outcome::Lost,
        }
    }

    /// Whether calling again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, AttemptError::Unavailable(_))
    }

    /// The message, for the attempt's report.
    pub fn message(&self) -> &str {
        match self {
            AttemptError::Task(m) | AttemptError::Platform(m) | AttemptError::Unavailable(m) => m,
        }
    }
}

/// What happens to running attempts when the launcher stops, chosen by the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownPolicy {
    /// Stop each attempt's compute (within the kill grace), read its logs to the end, release
    /// it, and report it `lost`. For compute that cannot outlive the launcher anyway (local
    /// processes).
    Kill,
    /// Take no new attempts; let running ones end on their own for up to this long, then
    /// [`Kill`](ShutdownPolicy::Kill) the rest. For long-running workers (agents).
    Drain(Duration),
    /// Leave the compute running and the journal as it is: the next start of a launcher on the
    /// same journal adopts each attempt with [`Backend::find`] and reports its true outcome.
    /// For compute that lives elsewhere (containers, Jobs, cloud batch jobs).
    Detach,
}

/// An attempt's compute as the runtime knows it, and journals it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    /// The name derived from the attempt id ([`Backend::compute_name`]): the same on every try,
    /// so that a backend looks for it before creating and adopts what it finds.
    pub name: String,
    /// The backend's own handle: a process group and its start time, a container id,
    /// `namespace/job`. `null` until the backend says more. The runtime journals it and hands it
    /// back; only the backend reads it.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub handle: Value,
}

impl Compute {
    /// Compute known only by its name.
    pub fn named(name: impl Into<String>) -> Self {
        Compute {
            name: name.into(),
            handle: Value::Null,
        }
    }

    /// Compute with a handle the backend serializes.
    pub fn with_handle(name: impl Into<String>, handle: &impl Serialize) -> BackendResult<Self> {
        let handle = serde_json::to_value(handle)
            .map_err(|e| AttemptError::Platform(format!("cannot record the compute's handle: {e}")))?;
        Ok(Compute {
            name: name.into(),
            handle,
        })
    }

    /// The handle as the backend's own type. A handle the backend cannot read (a journal of
    /// another version, edited by hand) is ferry's fault, not the task's.
    pub fn handle_as<H: DeserializeOwned>(&self) -> BackendResult<H> {
        serde_json::from_value(self.handle.clone()).map_err(|e| {
            AttemptError::Platform(format!(
                "the journal's handle of compute {} cannot be read: {e}",
                self.name
            ))
        })
    }
}

/// A backend's opaque place in an attempt's output (`null`: the start). The runtime journals it
/// beside the byte offsets it goes with ([`LogPosition`]).
pub type LogCursor = Value;

/// How far the runtime has read an attempt's output: byte offsets in each stream, counted from
/// the compute's first byte, and a cursor of the backend's from which those offsets can be
/// reached again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogPosition {
    /// Bytes of standard output before this position.
    pub stdout: u64,
    /// Bytes of standard error before this position.
    pub stderr: u64,
    /// Where the backend reads from to get there: a timestamp and what to skip after it, a
    /// page token; `null` for a backend that reads by offset alone (local files).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub cursor: LogCursor,
}

/// Output of one stream read from an attempt's compute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogRead {
    /// The stream's bytes from the position's offset on, as the task wrote them (unmasked, not
    /// cut into lines: the runtime does that).
    pub bytes: Vec<u8>,
    /// A cursor the runtime may journal with this stream's offset anywhere between the one
    /// read from and the end of these bytes (the other stream's offset unchanged), and pass
    /// back to [`Backend::read_logs`] with them.
    pub cursor: LogCursor,
    /// The compute can write no more and these bytes run to the end of the stream: the
    /// runtime then takes a last line that has no newline.
    pub complete: bool,
}

/// How an attempt's compute ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code of the task's process, when it has one.
    pub code: Option<i32>,
    /// Why it did not succeed, for a person (`exited with status 3`, `killed by signal
    /// SIGKILL`); `None` when it succeeded.
    pub error: Option<String>,
    /// The platform's machine-readable reason, when it gives one: `OOMKilled`,
    /// `DeadlineExceeded`, `Evicted`.
    pub reason: Option<String>,
}

impl Exit {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// The state of an attempt's compute, read from the platform: the truth, where notifications
/// are only hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComputeState {
    /// Created, not running yet: an image being pulled, a pod Pending, a job RUNNABLE.
    Pending,
    Running,
    /// It ended on its own.
    Exited(Exit),
    /// It is gone without an end the platform can tell (removed behind ferry's back, its node
    /// lost): the attempt is `lost`. The message says what was seen.
    Vanished(String),
}

/// What [`Backend::collect`] brings back of a successful attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// The bytes of the file at `$FERRY_OUTPUTS`, `None` when there is none. At most
    /// [`crate::collect::MAX_OUTPUTS_BYTES`] + 1 bytes: the runtime refuses larger ones.
    pub outputs: Option<Vec<u8>>,
    /// The bytes of the file at `$FERRY_SUBTASKS`, `None` when there is none (or the backend
    /// has no such file). At most [`crate::collect::MAX_SUBTASKS_BYTES`] + 1 bytes: the runtime
    /// refuses larger ones.
    pub subtasks: Option<Vec<u8>>,
    /// The files matching the task's `outputFiles`, already in the artifact store.
    pub files: Vec<OutputFile>,
}

/// One attempt, as the runtime hands it to its backend.
#[derive(Debug, Clone, Copy)]
pub struct Task<'a> {
    /// The dispatch, with upstream outputs filled in; `{{ workingDir }}` and secrets are left
    /// for [`Task::fill`].
    pub dispatch: &'a TaskDispatched,
    secrets: &'a Secrets,
}

impl<'a> Task<'a> {
    pub fn new(dispatch: &'a TaskDispatched, secrets: &'a Secrets) -> Self {
        Task { dispatch, secrets }
    }

    /// The same attempt with `dispatch` in place of its own: how a backend that resolves a
    /// dispatch (an agent filling in its registered command) hands it on.
    pub fn with_dispatch<'b>(&self, dispatch: &'b TaskDispatched) -> Task<'b>
    where
        'a: 'b,
    {
        Task {
            dispatch,
            secrets: self.secrets,
        }
    }

    pub fn attempt_id(&self) -> &'a str {
        &self.dispatch.attempt_id
    }

    /// The namespace and flow the task is of, which decide the scoped secrets it may have. A
    /// dispatch of an older scheduler does not say (no `flowId`): scoped secrets are then for
    /// no task (fail closed), open ones for all.
    pub fn scope(&self) -> TaskScope<'a> {
        let d = self.dispatch;
        match &d.flow_id {
            Some(flow) => TaskScope {
                namespace: Some(d.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)),
                flow: Some(flow),
            },
            None => TaskScope::default(),
        }
    }

    /// Fills a template of the dispatch: `{{ workingDir }}` with `working_dir` (the working
    /// directory as the compute sees it), `{{ secret('NAME') }}` with the secret's value;
    /// `field` names it in errors (`command[1]`, `env.TOKEN`), which are the task's fault.
    pub fn fill(&self, template: &Template, field: &str, working_dir: &str) -> BackendResult<String> {
        crate::template::fill(template, field, working_dir, self.secrets, &self.scope())
            .map_err(AttemptError::Task)
    }
}

/// `ferry-<attempt id>`: the name [`Backend::compute_name`] gives unless a backend says
/// otherwise.
pub fn default_compute_name(attempt_id: &str) -> String {
    format!("ferry-{attempt_id}")
}

/// One kind of compute: what a launcher backend implements.
///
/// All methods take `&self` and may run concurrently for different attempts. Every `async` method
/// must be cancel-safe (the runtime abandons `wait` when an attempt is cancelled or times out),
/// and every method must be safe to call again for the same attempt after a crash of the
/// launcher at any point (see the module's text for the order).
///
/// A backend whose compute lives elsewhere (no local process; logs pulled over an API; compute
/// that outlives the launcher) fits as it is: its handle and cursor are whatever its API needs,
/// [`wait`](Backend::wait) turns the platform's notifications into a call to
/// [`status`](Backend::status), and [`ShutdownPolicy::Detach`] leaves its compute running.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The runner type it runs (`local`, `docker`, `kubernetes`): it names the dispatch and
    /// cancel topics the launcher subscribes to.
    fn name(&self) -> &'static str;

    /// What happens to running attempts when the launcher stops.
    fn shutdown_policy(&self) -> ShutdownPolicy;

    /// The backends whose `task.dispatched` and `task.cancel` it receives, each with the
    /// consumer group it shares with every other launcher serving that backend. By default its
    /// runner type ([`name`](Backend::name)) in `group`, the launcher's group; an agent serves
    /// one backend per task version it runs, each in a group of its own
    /// (`ferry_event::agent`).
    fn serves(&self, group: &str) -> Vec<(String, String)> {
        vec![(self.name().to_string(), group.to_string())]
    }

    /// Adds what the launcher's presence says of this backend besides its runner type and the
    /// backends it serves: an agent's cluster and tasks. Nothing by default.
    fn describe_presence(&self, presence: &mut ferry_event::payload::LauncherPresence) {
        let _ = presence;
    }

    /// The name of an attempt's compute, derived from the attempt id alone so that every try
    /// (and every launcher instance) arrives at the same one. Attempt ids are 1 to 200 ASCII
    /// letters, digits, `-`, `_` and `.`; a platform with stricter names (DNS-1123, 63
    /// characters) maps them here, deterministically.
    fn compute_name(&self, attempt_id: &str) -> String {
        default_compute_name(attempt_id)
    }

    /// What `task.accepted` and `task.started` name the compute by, as its platform shows it:
    /// a container id, `namespace/job`, a batch job id. The compute's name by default.
    fn describe(&self, compute: &Compute) -> String {
        compute.name.clone()
    }

    /// Whether compute this backend creates may wait on its platform before it runs (a pod
    /// Pending, a batch job RUNNABLE). When it may, the runtime reports `task.accepted` once
    /// the compute is created and `task.started` once [`status`](Backend::status) says it runs
    /// (the task's timeout starts there); when not, `task.started` as soon as it is created.
    fn may_queue(&self) -> bool {
        false
    }

    /// Refuses, before anything is created, what this backend cannot honour: a runner of
    /// another type, a resource it cannot give (`resources.gpu` on local), a parameter it does
    /// not know. Errors are [`AttemptError::Task`] and name the field. No I/O.
    fn check(&self, dispatch: &TaskDispatched) -> BackendResult<()>;

    /// Picks what the attempt's compute will be before it exists: its name and whatever part of
    /// its handle is known already (the local backend's slot). The runtime journals it before
    /// [`create`](Backend::create), so that after a crash in between [`find`](Backend::find)
    /// knows where to look; and calls [`release`](Backend::release) with it if the attempt ends
    /// before its compute is created.
    async fn reserve(&self, task: Task<'_>) -> BackendResult<Compute> {
        Ok(Compute::named(self.compute_name(task.attempt_id())))
    }

    /// Creates the attempt's compute and starts it, or adopts compute of the reserved name that
    /// exists already (look before create; the platform's "already exists" means adopt, never a
    /// second compute). Returns it with its handle, which the runtime journals. The attempt's
    /// working directory holds its input files; its environment holds the task's `env` and
    /// `FERRY_JOB_ID`, `FERRY_TASK_ID`, `FERRY_ATTEMPT_ID`, `FERRY_WORKING_DIR`, `FERRY_OUTPUTS` and, where
    /// the backend brings it back, `FERRY_SUBTASKS`.
    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute>;

    /// The compute of this name or reservation, if it exists: how a launcher that restarted
    /// adopts what its previous run journaled. `None` when it is gone.
    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>>;

    /// The compute's state as the platform says it is now: a read of the platform, or of a
    /// cache the backend keeps current from the platform's own watch or event stream (so that
    /// heartbeats of many attempts cost no request each). Never a guess from a notification
    /// alone.
    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState>;

    /// Returns once the compute has ended, with its state ([`ComputeState::Exited`] or
    /// [`ComputeState::Vanished`]): notifications wake it, a read of
    /// [`status`](Backend::status) decides. Cancel-safe. The default reads the status every
    /// second.
    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        loop {
            match self.status(compute).await? {
                ComputeState::Pending | ComputeState::Running => {
                    tokio::time::sleep(Duration::from_secs(1)).await
                }
                ended => return Ok(ended),
            }
        }
    }

    /// Output of `stream` from `from` on: at most `max_bytes`, less when less is there.
    /// Reading the same position again gives the same bytes, also after a restart of the
    /// launcher, until the compute is released. A backend whose platform sends both streams
    /// together (or one merged stream, which it reports as stdout) keeps what it read of the
    /// other until asked.
    async fn read_logs(
        &self,
        compute: &Compute,
        stream: Stream,
        from: &LogPosition,
        max_bytes: usize,
    ) -> BackendResult<LogRead>;

    /// Stops the compute: asks it to end (SIGTERM, `docker stop`), waits up to `grace`, then
    /// ends it for good, and returns once nothing of it runs. Its logs and files stay readable
    /// until [`release`](Backend::release). Stopping compute that has ended is not an error.
    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()>;

    /// Collects what a successful attempt produced: the bytes at `$FERRY_OUTPUTS` (and at
    /// `$FERRY_SUBTASKS`) and the files
    /// matching `task`'s `outputFiles`, copied into the artifact store (under
    /// `<job>/<task>/<attempt>/`). Called after the compute ended and before it is released.
    /// An output the task got wrong is [`AttemptError::Task`].
    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected>;

    /// Removes everything of the compute: its processes' slot, its container, its Job and
    /// secrets. Called once its logs were read to the end and its outputs collected (pod and
    /// container logs die with them). Releasing what is gone is not an error.
    async fn release(&self, compute: &Compute) -> BackendResult<()>;

    /// All compute this launcher owns, journaled or not (labels, a name prefix, a cgroup):
    /// what a run killed between creating compute and journaling it left behind.
    async fn list_owned(&self) -> BackendResult<Vec<Compute>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_decide_the_outcome() {
        assert_eq!(AttemptError::Task("x".into()).outcome(), Outcome::Failed);
        assert_eq!(AttemptError::Platform("x".into()).outcome(), Outcome::Lost);
        assert_eq!(AttemptError::Unavailable("x".into()).outcome(), Outcome::Lost);
        assert!(AttemptError::Unavailable("x".into()).is_transient());
        assert!(!AttemptError::Platform("x".into()).is_transient());
    }

    #[test]
    fn a_handle_round_trips_and_a_foreign_one_is_ferrys_fault() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Pid {
            pid: i32,
        }
        let c = Compute::with_handle("ferry-a", &Pid { pid: 7 }).unwrap();
        assert_eq!(c.handle_as::<Pid>().unwrap(), Pid { pid: 7 });
        let err = Compute::named("ferry-a").handle_as::<Pid>().unwrap_err();
        assert_eq!(err.outcome(), Outcome::Lost);
        assert!(err.message().contains("ferry-a"), "{err}");
        // A compute known only by name is journaled without a handle.
        let json = serde_json::to_value(Compute::named("ferry-a")).unwrap();
        assert_eq!(json, serde_json::json!({"name": "ferry-a"}));
    }
}
