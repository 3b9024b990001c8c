//! The `kubernetes` backend: the launcher runtime's [`Backend`] over the Kubernetes API.
//!
//! Each attempt is one Job ([`crate::spec`]) named from its attempt id ([`job_name`]), with a
//! Secret it owns for the task's env and input files. Per attempt the launcher makes three
//! writes — create the Job, create its Secret, delete the Job (with `Background` propagation,
//! which takes the pod and the Secret with it) — plus a delete of the pod when an attempt is
//! stopped before its end, and after a success one `pods/exec` to take out `$FERRY_SUBTASKS`,
//! and one more to take out the files of a task with `outputFiles` ([`crate::stage`]). Reads:
//! a look for the Job before creating it, and the pod's log; completion (the task container's
//! end) comes from the one pod watch of the namespace ([`Cache`]), so no attempt is polled.
//!
//! Jobs outlive the launcher ([`ShutdownPolicy::Detach`]): the next start adopts each with its
//! true outcome. `activeDeadlineSeconds` (timeout + pending deadline + a grace) and
//! `ttlSecondsAfterFinished` make the server clean up after a launcher that never comes back.
//!
//! A pod stuck `Pending` past the pending deadline ends the attempt naming the reason: an image
//! that cannot be pulled is the task's fault (`failed`, reason `ImagePullFailed`: a wrong name
//! fails the same way every time), a pod no node can take (`Unschedulable`) or whose config
//! cannot be made is the platform's (`lost`, retried outside the task's budget: capacity
//! comes and goes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{KubernetesRunner, PullPolicy, Runner, Stream, TaskDispatched};
use ferry_launcher::archive::Limits;
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, Container, Lookup, PodView};
use crate::error::{attempt_error, status};
use crate::logs::{Buffer, Mark};
use crate::names::{ANNOTATION_ATTEMPT_ID, LABEL_LAUNCHER, job_name, label_value};
use crate::spec::{
    DEFAULT_WORKING_DIR, InputFile, JobSpec, MAX_OUTPUTS_BYTES, OUTPUTS_FILE, Pull, SUBTASKS_DIR,
    SUBTASKS_FILE,
};

/// The runner type this backend serves; dispatches arrive on `dispatch.kubernetes`.
pub const BACKEND: &str = "kubernetes";

/// The stage container's image unless `--kube-stage-image` says: a small one with `sh`,
/// `sleep` and `tar`.
pub const DEFAULT_STAGE_IMAGE: &str = "busybox:1.37";

/// The longest a stop waits for a container that may yet start (an image still pulling) before
/// it deletes the pod all the same: a launcher's start reconciles its attempts before it serves.
const MAX_START_WAIT: Duration = Duration::from_secs(60);

/// What the journal keeps of a Job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub namespace: String,
    pub job: String,
}

/// How the backend runs its Jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The namespace of Jobs whose runner names none.
    pub namespace: String,
    /// This launcher's identity (its Jobs' `dev.ferry/launcher` label).
    pub launcher: String,
    /// How long a pod may stay Pending before its attempt ends, unless the runner says.
    pub pending_deadline: Duration,
    /// The pod's time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Added to a task's timeout and the pending deadline for `activeDeadlineSeconds`.
    pub deadline_grace: Duration,
    /// `ttlSecondsAfterFinished` of every Job (`None`: not set).
    pub ttl_after_finished: Option<Duration>,
    /// The stage container's image, for tasks with output files or subtasks: it must have
    /// `sh`, `sleep` and `tar` ([`crate::stage`]).
    pub stage_image: String,
    /// How long the pod of a task with a stage container and a timeout may outlive the
    /// timeout, so that a launcher that was down when it ended still finds its files
    /// (`activeDeadlineSeconds` grows by this much).
    pub stage_hold: Duration,
    /// Every task gets `$FERRY_SUBTASKS`, which takes a stage container in every pod; `false`:
    /// only tasks with output files have one, and no task can submit subtasks.
    pub subtasks: bool,
    /// Where output files are stored (`<dir>/<job>/<task>/<attempt>/`); `None`: tasks with
    /// output files are refused.
    pub artifact_dir: Option<PathBuf>,
    /// Caps on the output files of one attempt.
    pub limits: Limits,
}

impl Settings {
    /// Defaults: namespace `default`, 5 minutes' pending deadline, 10 s grace, 60 s deadline
    /// grace, finished Jobs removed by the server after a day, stage image
    /// [`DEFAULT_STAGE_IMAGE`] held for up to a day, `$FERRY_SUBTASKS` for every task, no
    /// artifact directory.
    pub fn new(launcher: impl Into<String>) -> Settings {
        Settings {
            namespace: "default".into(),
            launcher: launcher.into(),
            pending_deadline: Duration::from_secs(300),
            kill_grace: Duration::from_secs(10),
            deadline_grace: Duration::from_secs(60),
            ttl_after_finished: Some(Duration::from_secs(24 * 3600)),
            stage_image: DEFAULT_STAGE_IMAGE.into(),
            stage_hold: Duration::from_secs(24 * 3600),
            subtasks: true,
            artifact_dir: None,
            limits: Limits::default(),
        }
    }
}

/// The kubernetes backend. Cheap to clone.
#[derive(Clone)]
pub struct Kubernetes(Arc<Inner>);

struct Inner {
    /// The API, or why there is none: then every attempt is refused with that message.
    client: Result<(Client, Cache), String>,
    settings: Settings,
    shutdown: ShutdownPolicy,
    live: Mutex<HashMap<String, Arc<Live>>>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
        for live in self.live.lock().unwrap_or_else(|e| e.into_inner()).values() {
            live.abort();
        }
    }
}

/// What this run knows of one attempt's Job.
#[derive(Default)]
struct Live {
    /// The container can write no more.
    ended: Arc<AtomicBool>,
    logs: Mutex<Option<Follower>>,
}

/// An attempt's log buffer and the task that fills it.
type Follower = (Arc<Mutex<Buffer>>, tokio::task::JoinHandle<()>);

impl Live {
    fn abort(&self) {
        if let Some((_, task)) = self.logs.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Kubernetes {
    /// A backend on `client`, watching its pods from now on.
    pub fn new(client: Client, settings: Settings) -> Kubernetes {
        let stop = CancellationToken::new();
        let selector = format!("{LABEL_LAUNCHER}={}", label_value(&settings.launcher));
        let cache = Cache::new(client.clone(), selector, stop.clone());
        cache.watch(&settings.namespace);
        Kubernetes::with(Ok((client, cache)), settings, stop)
    }

    /// A backend without a cluster: every attempt fails at once with `why`.
    pub fn without_cluster(why: impl Into<String>, settings: Settings) -> Kubernetes {
        Kubernetes::with(Err(why.into()), settings, CancellationToken::new())
    }

    fn with(
        client: Result<(Client, Cache), String>,
        settings: Settings,
        stop: CancellationToken,
    ) -> Kubernetes {
        Kubernetes(Arc::new(Inner {
            client,
            settings,
            shutdown: ShutdownPolicy::Detach,
            live: Mutex::new(HashMap::new()),
            stop,
        }))
    }

    /// Stops every running Job when the launcher stops, reporting its attempt `lost`, rather
    /// than leaving it to the next start. Call before the backend is shared.
    pub fn kill_on_shutdown(mut self) -> Kubernetes {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.shutdown = ShutdownPolicy::Kill,
            None => debug_assert!(false, "kill_on_shutdown on a backend already shared"),
        }
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    fn api(&self) -> BackendResult<(&Client, &Cache)> {
        match &self.0.client {
            Ok((c, cache)) => Ok((c, cache)),
            Err(why) => Err(AttemptError::Task(why.clone())),
        }
    }

    /// The buffer the Job's log is followed into: the running follower's, if it can serve a
    /// read from `from_bytes`; else a new follower's, resuming at `mark` (journaled with those
    /// bytes), or at the log's start.
    fn follower(&self, h: &Handle, from_bytes: u64, mark: Option<Mark>) -> BackendResult<Arc<Mutex<Buffer>>> {
        let (client, cache) = self.api()?;
        let live = self.live(&h.job);
        let mut logs = live.logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((buffer, _)) = logs.as_ref()
            && buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .serves(from_bytes)
        {
            return Ok(buffer.clone());
        }
        if let Some((_, task)) = logs.take() {
            task.abort();
        }
        let buffer = Arc::new(Mutex::new(Buffer::resume(from_bytes, mark)));
        let task = tokio::spawn(crate::logs::follow(
            Api::<Pod>::namespaced(client.clone(), &h.namespace),
            cache.clone(),
            h.namespace.clone(),
            h.job.clone(),
            buffer.clone(),
            live.ended.clone(),
        ));
        *logs = Some((buffer.clone(), task));
        Ok(buffer)
    }

    /// The Job's pod as the cache has it, once the cache is in sync (5 s at most); else as the
    /// API has it. `None`: there is none.
    async fn pod_now(&self, cache: &Cache, h: &Handle) -> BackendResult<Option<PodView>> {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match cache.pod(&h.namespace, &h.job) {
                Lookup::Pod(p) => return Ok(Some(*p)),
                Lookup::NotSynced if tokio::time::Instant::now() < until => {
                    cache.changed(Duration::from_millis(200)).await
                }
                _ => break,
            }
        }
        match cache.ask(&h.namespace, &h.job).await {
            Ok(Lookup::Pod(p)) => Ok(Some(*p)),
            Ok(_) => Ok(None),
            Err(e) => Err(attempt_error(
                &format!("looking for the pod of Job {}/{}", h.namespace, h.job),
                e,
            )),
        }
    }

    fn live(&self, name: &str) -> Arc<Live> {
        let mut live = self.0.live.lock().unwrap_or_else(|e| e.into_inner());
        live.entry(name.to_string()).or_default().clone()
    }

    fn forget(&self, name: &str) {
        let gone = self.0.live.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        if let Some(live) = gone {
            live.abort();
        }
    }

    /// The Job's handle: journaled, or the default namespace for one known only by name.
    fn handle(&self, compute: &Compute) -> BackendResult<Handle> {
        if compute.handle.is_null() {
            return Ok(Handle {
                namespace: self.0.settings.namespace.clone(),
                job: compute.name.clone(),
            });
        }
        compute.handle_as()
    }

    fn namespace_of(&self, r: &KubernetesRunner) -> String {
        r.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.0.settings.namespace.clone())
    }

    fn pending_deadline(&self, r: Option<&KubernetesRunner>) -> Duration {
        r.and_then(|r| r.pending_deadline_seconds)
            .map(Duration::from_secs)
            .unwrap_or(self.0.settings.pending_deadline)
    }

    /// The Job for `d` as far as it is known without filling templates.
    fn base_spec(&self, d: &TaskDispatched) -> BackendResult<JobSpec> {
        let r = runner(d)?;
        let task = |m: String| AttemptError::Task(m);
        let files = !d.output_files.is_empty();
        let s = &self.0.settings;
        let staged = files || s.subtasks;
        if files {
            if self.0.settings.artifact_dir.is_none() {
                return Err(task(
                    "outputFiles cannot be collected: this kubernetes launcher has no artifact directory"
                        .into(),
                ));
            }
            for p in &d.output_files {
                ferry_launcher::collect::check_pattern(p).map_err(task)?;
            }
            // Output files are stored under <artifact dir>/<job>/<task>/<attempt>/.
            for (what, id) in [("job id", &d.job_id), ("task id", &d.task_id)] {
                ferry_launcher::journal::check_id(id).map_err(|why| {
                    task(format!(
                        "{what} {id:?} cannot name the directory output files are stored in: {why}"
                    ))
                })?;
            }
        }
        let namespace = self.namespace_of(r);
        if !crate::names::is_dns_label(&namespace) {
            return Err(task(format!(
                "runner.namespace `{namespace}` is not a Kubernetes namespace name (lowercase letters, digits and `-`)"
            )));
        }
        let working_dir = r
            .working_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_WORKING_DIR.into());
        let trimmed = working_dir.trim_end_matches('/');
        let ours = |dir: &str| trimmed == dir || trimmed.starts_with(&format!("{dir}/"));
        if !trimmed.starts_with('/')
            || trimmed.split('/').any(|c| c == "." || c == "..")
            || ours("/ferry-outputs")
            || ours(SUBTASKS_DIR)
        {
            return Err(task(format!(
                "runner.workingDir `{working_dir}` must be an absolute path below `/`, without `.` or `..`, and not in /ferry-outputs or {SUBTASKS_DIR}"
            )));
        }
        let memory_bytes = d
            .resources
            .memory_bytes()
            .map_err(|why| task(format!("resources.memory: {why}")))?;
        let gpus = d
            .resources
            .gpus()
            .map_err(|why| task(format!("resources.{why}")))?;
        let pending = self.pending_deadline(Some(r));
        let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let active_deadline_seconds = d.timeout_ms.map(|t| {
            let hold = if staged { s.stage_hold } else { Duration::ZERO };
            let total = Duration::from_millis(t) + pending + s.deadline_grace + hold;
            i64::try_from(secs(total)).unwrap_or(i64::MAX)
        });
        let spec = JobSpec {
            namespace,
            name: job_name(&d.attempt_id),
            launcher: s.launcher.clone(),
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            attempt: d.attempt,
            flow: d.flow_id.clone(),
            job_namespace: d.namespace.clone(),
            image: r.image.clone(),
            pull: match r.pull_policy.unwrap_or_default() {
                PullPolicy::Always => Pull::Always,
                PullPolicy::Missing => Pull::IfNotPresent,
                PullPolicy::Never => Pull::Never,
            },
            command: Vec::new(),
            ferry_env: Vec::new(),
            env: Vec::new(),
            inputs: Vec::new(),
            working_dir: trimmed.to_string(),
            stage_image: s.stage_image.clone(),
            work_volume: files,
            subtasks: s.subtasks,
            service_account: r.service_account.clone(),
            node_selector: r.node_selector.clone(),
            tolerations: r.tolerations.clone(),
            image_pull_secrets: r.image_pull_secrets.clone(),
            priority_class: r.priority_class.clone(),
            cpu: d.resources.cpu,
            memory_bytes,
            gpus,
            pending_deadline_seconds: pending.as_secs().max(1),
            grace_seconds: i64::try_from(secs(s.kill_grace)).unwrap_or(i64::MAX),
            active_deadline_seconds,
            ttl_seconds_after_finished: s
                .ttl_after_finished
                .map(|t| i32::try_from(t.as_secs()).unwrap_or(i32::MAX)),
        };
        spec.check().map_err(task)?;
        Ok(spec)
    }

    /// The attempt's state from its pod as the cache saw it.
    fn state_of(&self, job: &str, pod: &PodView, pending_deadline: Duration) -> BackendResult<ComputeState> {
        if pod.ended() {
            self.live(job).ended.store(true, Ordering::SeqCst);
            return Ok(ComputeState::Exited(exit_of(pod)));
        }
        if pod.phase != "Pending" {
            return Ok(ComputeState::Running);
        }
        let pending_deadline = pod
            .pending_deadline
            .map(Duration::from_secs)
            .unwrap_or(pending_deadline);
        let waited = chrono::Utc::now().timestamp() - pod.created;
        if waited <= pending_deadline.as_secs() as i64 || pod.deleting {
            return Ok(ComputeState::Pending);
        }
        let stuck = format!(
            "pod {} stayed Pending for more than {}s",
            pod.name,
            pending_deadline.as_secs()
        );
        if let Container::Waiting { reason, message } = &pod.stage
            && is_pull_failure(reason)
        {
            return Err(AttemptError::Platform(format!(
                "{stuck}: the stage container's image {} cannot be had: {reason}: {message} (--kube-stage-image)",
                self.0.settings.stage_image
            )));
        }
        if let Some((reason, message)) = &pod.unscheduled {
            return Err(AttemptError::Platform(format!(
                "{stuck}: {reason}: {message} (runner.nodeSelector, runner.tolerations and resources decide where it fits)"
            )));
        }
        match &pod.container {
            Container::Waiting { reason, message } if is_pull_failure(reason) => {
                Ok(ComputeState::Exited(Exit {
                    code: None,
                    error: Some(format!(
                        "{stuck}: {reason}: {message} (runner.image, runner.pullPolicy)"
                    )),
                    reason: Some("ImagePullFailed".into()),
                }))
            }
            Container::Waiting { reason, message } => {
                Err(AttemptError::Platform(format!("{stuck}: {reason}: {message}")))
            }
            _ => Ok(ComputeState::Pending),
        }
    }

    /// The attempt's state from the Job itself: when the cache has no pod for it.
    async fn state_from_job(&self, h: &Handle, pending_deadline: Duration) -> BackendResult<ComputeState> {
        let (client, _) = self.api()?;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &h.namespace);
        let job = jobs
            .get_opt(&h.job)
            .await
            .map_err(|e| attempt_error(&format!("reading Job {}/{}", h.namespace, h.job), e))?;
        let Some(job) = job else {
            self.live(&h.job).ended.store(true, Ordering::SeqCst);
            return Ok(ComputeState::Vanished(format!(
                "Job {}/{} is gone: it was deleted by something other than ferry",
                h.namespace, h.job
            )));
        };
        let status = job.status.clone().unwrap_or_default();
        let condition = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Failed" || c.type_ == "Complete") && c.status == "True");
        if let Some(c) = condition {
            self.live(&h.job).ended.store(true, Ordering::SeqCst);
            let reason = c.reason.clone().unwrap_or_default();
            if c.type_ == "Complete" {
                return Ok(ComputeState::Exited(Exit {
                    code: Some(0),
                    error: None,
                    reason: None,
                }));
            }
            return Ok(ComputeState::Exited(Exit {
                code: None,
                error: Some(format!(
                    "Job {}/{} failed: {reason}: {}",
                    h.namespace,
                    h.job,
                    c.message.clone().unwrap_or_default()
                )),
                reason: Some(reason).filter(|r| !r.is_empty()),
            }));
        }
        let created = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        if chrono::Utc::now().timestamp() - created > pending_deadline.as_secs() as i64 + 60 {
            return Err(AttemptError::Platform(format!(
                "Job {}/{} has had no pod for more than {}s: is the Job controller running?",
                h.namespace,
                h.job,
                pending_deadline.as_secs() + 60
            )));
        }
        Ok(ComputeState::Pending)
    }

    async fn state(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let (_, cache) = self.api()?;
        let h = self.handle(compute)?;
        cache.watch(&h.namespace);
        let deadline = self.pending_deadline(None);
        match cache.pod(&h.namespace, &h.job) {
            Lookup::Pod(pod) => self.state_of(&h.job, &pod, deadline),
            Lookup::Absent | Lookup::NotSynced => self.state_from_job(&h, deadline).await,
        }
    }
}

/// How a pod that ended went, as the runtime reports it.
fn exit_of(pod: &PodView) -> Exit {
    match &pod.container {
        Container::Terminated { code, reason, .. } if reason == "OOMKilled" => Exit {
            code: Some(*code),
            error: Some(format!(
                "OOMKilled: killed for exceeding its memory limit (resources.memory); exited with status {code}"
            )),
            reason: Some("OOMKilled".into()),
        },
        Container::Terminated { code: 0, .. } => Exit {
            code: Some(0),
            error: None,
            reason: None,
        },
        Container::Terminated { code, .. } => Exit {
            code: Some(*code),
            error: Some(format!("exited with status {code}")),
            reason: None,
        },
        _ => {
            let (reason, message) = pod.reason.clone().unwrap_or_default();
            Exit {
                code: None,
                error: Some(format!(
                    "pod {} ended {} without its container's status: {reason} {message}",
                    pod.name, pod.phase
                )),
                reason: Some(reason).filter(|r| !r.is_empty()),
            }
        }
    }
}

/// Whether the pod's task container may still start: the pod is not known to fit no node, and
/// the container has not started nor is it waiting for a reason that keeps it from starting (an
/// image that cannot be had, a config that cannot be made).
fn may_start(pod: &PodView) -> bool {
    let stage_stuck = matches!(&pod.stage, Container::Waiting { reason, .. } if is_pull_failure(reason));
    let starting = match &pod.container {
        Container::Unknown => true,
        Container::Waiting { reason, .. } => {
            matches!(reason.as_str(), "" | "ContainerCreating" | "PodInitializing")
        }
        Container::Running | Container::Terminated { .. } => false,
    };
    starting && !pod.ended() && pod.unscheduled.is_none() && !stage_stuck
}

/// A waiting container's reason that says its image cannot be had.
fn is_pull_failure(reason: &str) -> bool {
    matches!(
        reason,
        "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName"
    )
}

/// The task's kubernetes runner parameters, or a refusal naming the runner.
fn runner(d: &TaskDispatched) -> BackendResult<&KubernetesRunner> {
    match &d.runner {
        Runner::Kubernetes(r) => Ok(r),
        other => Err(AttemptError::Task(format!(
            "runner type {:?} cannot run on the kubernetes launcher",
            other.backend()
        ))),
    }
}

#[async_trait]
impl Backend for Kubernetes {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        self.0.shutdown
    }

    fn compute_name(&self, attempt_id: &str) -> String {
        job_name(attempt_id)
    }

    /// `namespace/job`, as `kubectl` names it.
    fn describe(&self, compute: &Compute) -> String {
        match self.handle(compute) {
            Ok(h) => format!("{}/{}", h.namespace, h.job),
            Err(_) => compute.name.clone(),
        }
    }

    /// A pod may wait Pending (image pull, scheduling): `task.started` comes once it runs.
    fn may_queue(&self) -> bool {
        true
    }

    fn check(&self, d: &TaskDispatched) -> BackendResult<()> {
        self.api()?;
        self.base_spec(d).map(|_| ())
    }

    async fn reserve(&self, task: Task<'_>) -> BackendResult<Compute> {
        let d = task.dispatch;
        let namespace = self.namespace_of(runner(d)?);
        let name = job_name(&d.attempt_id);
        Compute::with_handle(name.clone(), &Handle { namespace, job: name })
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let (client, cache) = self.api()?;
        let d = task.dispatch;
        let mut spec = self.base_spec(d)?;
        let work = spec.working_dir.clone();
        for (i, t) in d.command.iter().enumerate() {
            spec.command.push(task.fill(t, &format!("command[{i}]"), &work)?);
        }
        for (name, t) in &d.env {
            spec.env
                .push((name.clone(), task.fill(t, &format!("env.{name}"), &work)?));
        }
        spec.ferry_env = vec![
            ("FERRY_JOB_ID".into(), d.job_id.clone()),
            ("FERRY_TASK_ID".into(), d.task_id.clone()),
            ("FERRY_ATTEMPT_ID".into(), d.attempt_id.clone()),
            ("FERRY_WORKING_DIR".into(), work.clone()),
            ("FERRY_OUTPUTS".into(), OUTPUTS_FILE.into()),
        ];
        if spec.subtasks {
            spec.ferry_env
                .push(("FERRY_SUBTASKS".into(), SUBTASKS_FILE.into()));
        }
        for (path, t) in &d.input_files {
            spec.inputs.push(InputFile {
                path: path.clone(),
                contents: task.fill(t, &format!("inputFiles.{path}"), &work)?.into_bytes(),
            });
        }
        spec.check().map_err(AttemptError::Task)?;
        cache.watch(&spec.namespace);
        let jobs: Api<Job> = Api::namespaced(client.clone(), &spec.namespace);
        let what = format!("Job {}/{}", spec.namespace, spec.name);
        // Look before creating; "already exists" means adopt (two launchers racing).
        let existing = jobs
            .get_opt(&spec.name)
            .await
            .map_err(|e| attempt_error(&format!("reading {what}"), e))?;
        let (job, adopted) = match existing {
            Some(job) => (job, true),
            None => match jobs.create(&PostParams::default(), &spec.job()).await {
                Ok(job) => (job, false),
                Err(e) if status(&e) == Some(409) => {
                    let job = jobs
                        .get(&spec.name)
                        .await
                        .map_err(|e| attempt_error(&format!("reading {what}"), e))?;
                    (job, true)
                }
                Err(e) => return Err(attempt_error(&format!("creating {what}"), e)),
            },
        };
        let owner = job
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_ATTEMPT_ID));
        if owner != Some(&d.attempt_id) {
            return Err(AttemptError::Platform(format!(
                "{what} exists but belongs to attempt {}, not {}: delete it (kubectl delete job -n {} {}) if it is left over",
                owner.map(String::as_str).unwrap_or("(none: not ferry's)"),
                d.attempt_id,
                spec.namespace,
                spec.name
            )));
        }
        if spec.needs_secret() {
            let uid = job.metadata.uid.clone().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &spec.namespace);
            match secrets.create(&PostParams::default(), &spec.secret(&uid)).await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(409) => {}
                Err(e) => return Err(attempt_error(&format!("creating the Secret of {what}"), e)),
            }
        }
        if adopted {
            tracing::info!(job = %what, attempt_id = %d.attempt_id, "adopted the attempt's existing Job");
        }
        Compute::with_handle(
            reserved.name,
            &Handle {
                namespace: spec.namespace,
                job: spec.name,
            },
        )
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        let (client, cache) = self.api()?;
        let h = self.handle(reserved)?;
        cache.watch(&h.namespace);
        let jobs: Api<Job> = Api::namespaced(client.clone(), &h.namespace);
        let found = jobs
            .get_opt(&h.job)
            .await
            .map_err(|e| attempt_error(&format!("reading Job {}/{}", h.namespace, h.job), e))?;
        match found {
            Some(_) => Compute::with_handle(reserved.name.clone(), &h).map(Some),
            None => Ok(None),
        }
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        self.state(compute).await
    }

    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let (_, cache) = self.api()?;
        loop {
            let mut changes = cache.subscribe();
            match self.state(compute).await? {
                ComputeState::Pending => {
                    // The watch wakes this; a look each second covers the pending deadline
                    // passing with nothing changing (no request: the cache is read).
                    let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
                }
                ComputeState::Running => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
                }
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
        let mark = serde_json::from_value::<Mark>(from.cursor.clone()).ok();
        let buffer = self.follower(&h, from.stdout, mark)?;
        let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &b.lost {
            return Err(AttemptError::Platform(why.clone()));
        }
        let (bytes, mark) = match stream {
            Stream::Stdout => b.read(from.stdout, max_bytes),
            // The API merges both streams: everything arrives as stdout.
            Stream::Stderr => (Vec::new(), b.read(from.stdout, 0).1),
        };
        let complete = b.complete && (stream == Stream::Stderr || b.held() <= bytes.len());
        Ok(LogRead {
            bytes,
            cursor: serde_json::to_value(mark).unwrap_or_default(),
            complete,
        })
    }

    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()> {
        let (client, cache) = self.api()?;
        let h = self.handle(compute)?;
        // Just after a restart the cache may not hold the pod yet: the API says whether one runs.
        let seen = match self.pod_now(cache, &h).await? {
            Some(p) => p,
            // No pod: nothing runs (a Job not yet scheduled goes with its release).
            None => {
                self.live(&h.job).ended.store(true, Ordering::SeqCst);
                return Ok(());
            }
        };
        // The log goes with the pod: it is followed from before the delete (from its start, if
        // nothing follows it yet, as after a restart), so what the container writes until it
        // stops is kept. A delete does not stop a container that is being started (a kubelet
        // mid-sync starts it, then stops it within the grace), and a container that runs after
        // its pod was deleted can be gone, and its log with it, before a stream opens: so a
        // container that may yet start is waited for, up to the pod's pending deadline (and
        // [`MAX_START_WAIT`]), and the pod is deleted once its log is followed. One that cannot
        // start (no node fits, its image or config cannot be had) is deleted at once.
        if !seen.ended() {
            let buffer = self.follower(&h, 0, None)?;
            let pending = seen
                .pending_deadline
                .map(Duration::from_secs)
                .unwrap_or(self.0.settings.pending_deadline);
            let left = seen.created + pending.as_secs() as i64 - chrono::Utc::now().timestamp();
            let start_until =
                tokio::time::Instant::now() + Duration::from_secs(left.max(0) as u64).min(MAX_START_WAIT);
            // A container seen running gets a moment for the stream to open.
            let mut attach_until = None;
            loop {
                let mut changes = cache.subscribe();
                if buffer.lock().unwrap_or_else(|e| e.into_inner()).attached {
                    break;
                }
                let pod = match cache.pod(&h.namespace, &h.job) {
                    Lookup::Pod(p) if !p.ended() => *p,
                    _ => break,
                };
                let now = tokio::time::Instant::now();
                let until = if may_start(&pod) {
                    start_until
                } else if pod.container == Container::Running {
                    *attach_until.get_or_insert(now + Duration::from_secs(5))
                } else {
                    break;
                };
                if now >= until {
                    break;
                }
                // The follower says nothing when its stream opens: a short wait between looks.
                let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
            }
        }
        let pod = match cache.pod(&h.namespace, &h.job) {
            Lookup::Pod(p) => *p,
            _ => seen,
        };
        if !pod.ended() {
            // Deleting the pod stops it within the grace; its log stream, followed until the
            // container ends, keeps what it wrote.
            let pods: Api<Pod> = Api::namespaced(client.clone(), &h.namespace);
            let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
            let params = DeleteParams {
                grace_period_seconds: Some(u32::try_from(secs).unwrap_or(u32::MAX)),
                ..DeleteParams::default()
            };
            match pods.delete(&pod.name, &params).await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => {
                    return Err(attempt_error(
                        &format!("deleting pod {}/{}", h.namespace, pod.name),
                        e,
                    ));
                }
            }
            let until = tokio::time::Instant::now() + grace + Duration::from_secs(30);
            loop {
                let mut changes = cache.subscribe();
                match cache.pod(&h.namespace, &h.job) {
                    Lookup::Pod(p) if !p.ended() && tokio::time::Instant::now() < until => {}
                    // The cache not in sync yet says nothing of the pod's end.
                    Lookup::NotSynced if tokio::time::Instant::now() < until => {}
                    _ => break,
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            }
        }
        self.live(&h.job).ended.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        let (client, cache) = self.api()?;
        let h = self.handle(compute)?;
        let pod = match cache.pod(&h.namespace, &h.job) {
            Lookup::Pod(p) => Some(p),
            Lookup::NotSynced => {
                cache.changed(Duration::from_secs(5)).await;
                match cache.pod(&h.namespace, &h.job) {
                    Lookup::Pod(p) => Some(p),
                    _ => None,
                }
            }
            Lookup::Absent => None,
        };
        // The pod says whether it has the file. A pod gone already may have had it, as
        // this launcher's pods do: then reading it fails (the attempt is `lost`, and run
        // again) rather than a success whose subtasks were never read.
        let subtasks = pod.as_ref().map_or(self.0.settings.subtasks, |p| p.subtasks);
        let message = match pod.map(|p| p.container) {
            Some(Container::Terminated { message, .. }) => message,
            _ => String::new(),
        };
        if message.len() >= MAX_OUTPUTS_BYTES {
            return Err(AttemptError::Task(format!(
                "FERRY_OUTPUTS: the task wrote {MAX_OUTPUTS_BYTES} bytes or more; on kubernetes outputs come back \
                 as the pod's termination message, of which the kubelet keeps {MAX_OUTPUTS_BYTES} bytes \
                 (larger results fit in outputFiles)"
            )));
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &h.namespace);
        let stage = crate::stage::Stage {
            namespace: &h.namespace,
            job: &h.job,
            image: &self.0.settings.stage_image,
            start_within: self.0.settings.pending_deadline,
        };
        let subtasks = match subtasks {
            true => crate::stage::subtasks(&pods, cache, &stage).await?,
            false => None,
        };
        let d = task.dispatch;
        let files = match (&self.0.settings.artifact_dir, d.output_files.is_empty()) {
            (_, true) => Vec::new(),
            (None, false) => {
                return Err(AttemptError::Task(
                    "outputFiles cannot be collected: this kubernetes launcher has no artifact directory"
                        .into(),
                ));
            }
            (Some(dir), false) => {
                let dest = dir.join(ferry_launcher::collect::attempt_artifacts(d));
                tokio::fs::create_dir_all(&dest).await.map_err(|e| {
                    AttemptError::Platform(format!(
                        "cannot create the artifact directory {}: {e}",
                        dest.display()
                    ))
                })?;
                crate::stage::collect(
                    &pods,
                    cache,
                    &stage,
                    crate::stage::Collect {
                        patterns: &d.output_files,
                        dest: &dest,
                        limits: self.0.settings.limits,
                    },
                )
                .await?
            }
        };
        Ok(Collected {
            outputs: (!message.is_empty()).then(|| message.into_bytes()),
            subtasks,
            files,
        })
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        let (client, cache) = self.api()?;
        let h = self.handle(compute)?;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &h.namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match jobs.delete(&h.job, &params).await {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => {
                return Err(attempt_error(
                    &format!("deleting Job {}/{}", h.namespace, h.job),
                    e,
                ));
            }
        }
        cache.forget(&h.namespace, &h.job);
        self.forget(&h.job);
        Ok(())
    }

    /// The Jobs labelled with this launcher in its namespace and in every namespace an attempt
    /// it knows of uses: by the time the runtime asks, each journaled attempt has been looked
    /// up (which starts its namespace's watch), and a Job is journaled (reserved) before it is
    /// created, so no namespace a Job of this launcher may be in is missed. A namespace that
    /// cannot be listed (RBAC granted in the launcher's namespace only) is skipped, saying so.
    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let Ok((client, cache)) = &self.0.client else {
            return Ok(Vec::new());
        };
        let home = &self.0.settings.namespace;
        let mut namespaces = cache.namespaces_watched();
        if !namespaces.contains(home) {
            namespaces.insert(0, home.clone());
        }
        let selector = format!("{LABEL_LAUNCHER}={}", label_value(&self.0.settings.launcher));
        let mut owned = Vec::new();
        for namespace in namespaces {
            let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
            let list = match jobs.list(&ListParams::default().labels(&selector)).await {
                Ok(list) => list,
                Err(e) if &namespace != home => {
                    tracing::warn!(%namespace, error = %e, "cannot list this launcher's Jobs in a namespace its attempts used");
                    continue;
                }
                Err(e) => {
                    return Err(attempt_error(
                        &format!("listing the Jobs of namespace {namespace}"),
                        e,
                    ));
                }
            };
            for name in list.items.into_iter().filter_map(|j| j.metadata.name) {
                owned.push(Compute::with_handle(
                    name.clone(),
                    &Handle {
                        namespace: namespace.clone(),
                        job: name,
                    },
                )?);
            }
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(phase: &str, container: Container) -> PodView {
        PodView {
            name: "p".into(),
            phase: phase.into(),
            created: 0,
            deleting: false,
            container,
            stage: Container::Unknown,
            unscheduled: None,
            reason: None,
            pending_deadline: None,
            subtasks: false,
        }
    }

    #[test]
    fn exits_say_what_happened() {
        let oom = exit_of(&view(
            "Failed",
            Container::Terminated {
                code: 137,
                reason: "OOMKilled".into(),
                message: String::new(),
            },
        ));
        assert_eq!(oom.reason.as_deref(), Some("OOMKilled"));
        assert!(oom.error.unwrap().contains("resources.memory"));
        let failed = exit_of(&view(
            "Failed",
            Container::Terminated {
                code: 3,
                reason: "Error".into(),
                message: String::new(),
            },
        ));
        assert_eq!(failed.error.as_deref(), Some("exited with status 3"));
    }

    #[test]
    fn a_stop_waits_only_for_a_container_that_may_still_start() {
        let waiting = |reason: &str| Container::Waiting {
            reason: reason.into(),
            message: String::new(),
        };
        assert!(may_start(&view("Pending", Container::Unknown)));
        assert!(may_start(&view("Pending", waiting("ContainerCreating"))));
        assert!(!may_start(&view("Pending", waiting("ErrImageNeverPull"))));
        assert!(!may_start(&view(
            "Pending",
            waiting("CreateContainerConfigError")
        )));
        assert!(!may_start(&view("Running", Container::Running)));
        let mut unschedulable = view("Pending", Container::Unknown);
        unschedulable.unscheduled = Some(("Unschedulable".into(), "0/1 nodes".into()));
        assert!(!may_start(&unschedulable));
        let mut stage_stuck = view("Pending", waiting("ContainerCreating"));
        stage_stuck.stage = waiting("ImagePullBackOff");
        assert!(!may_start(&stage_stuck));
    }

    #[test]
    fn a_pod_stuck_pending_ends_naming_why_and_whose_fault() {
        let k = Kubernetes::without_cluster("none", Settings::new("l"));
        let deadline = Duration::from_secs(1);
        let image = view(
            "Pending",
            Container::Waiting {
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image \"nope\"".into(),
            },
        );
        match k.state_of("j", &image, deadline) {
            Ok(ComputeState::Exited(e)) => {
                assert_eq!(e.reason.as_deref(), Some("ImagePullFailed"));
                assert!(e.error.unwrap().contains("ImagePullBackOff"));
            }
            other => panic!("{other:?}"),
        }
        let mut unschedulable = view("Pending", Container::Unknown);
        unschedulable.unscheduled = Some(("Unschedulable".into(), "0/1 nodes".into()));
        let e = k.state_of("j", &unschedulable, deadline).unwrap_err();
        assert!(
            matches!(e, AttemptError::Platform(_)) && e.message().contains("Unschedulable"),
            "{e}"
        );
        let mut young = unschedulable.clone();
        young.created = chrono::Utc::now().timestamp();
        assert_eq!(k.state_of("j", &young, deadline), Ok(ComputeState::Pending));
    }
}
