//! The `ray` backend: the launcher runtime's [`Backend`] over Ray's Jobs REST API.
//!
//! Each attempt is one Ray job whose submission id is the compute name (`ferry-<attempt id>`):
//! Ray refuses a second job of one submission id ("already exists"), which is how a redelivered
//! dispatch, or a launcher restarted between submitting and journaling, adopts the job instead of
//! running the task twice. Per attempt the launcher submits once, reads the job's details and
//! its log until it ends, and deletes the job; a cancel or a timeout stops it first.
//!
//! The attempt's directory ([`Settings::work_dir`]`/<compute name>/`) holds the task's working
//! directory (`work/`, with its input files), its outputs file and `run.sh`, the script the
//! job's entrypoint runs: it changes into `work/` and `exec`s the task's command through `env`
//! with the task's environment. The command and the environment (which may hold secrets) are
//! in that file, private to the launcher's user, and never in the job's entrypoint or runtime
//! environment: Ray's Jobs API shows both to whoever can reach the dashboard. The directory must
//! be at the same path on the node the job runs on: a local cluster (or storage shared by the
//! cluster's nodes, mounted at the same path).
//!
//! Ray keeps a job's log on the node it ran on, and serves it whole through the head; its own
//! setup lines come first, up to the line `Running entrypoint for job <id>: <entrypoint>`, and
//! the entrypoint's output (standard output and error, merged) after it. [`Ray::read_logs`]
//! counts bytes from after that line, so offsets journaled before a restart meet the same bytes
//! again.
//!
//! Jobs outlive the launcher ([`ShutdownPolicy::Detach`]): the next start on the same journal
//! adopts each, with its true outcome and its log read on from where it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{RayRunner, Runner, Stream, TaskDispatched};
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use ferry_launcher::collect;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::api::{Client, JobDetails, Submission};

/// The runner type this backend serves; dispatches arrive on `dispatch.ray`.
pub const BACKEND: &str = "ray";

/// The job metadata key naming the launcher that submitted it.
pub const META_LAUNCHER: &str = "ferry.launcher";
/// The job metadata key holding the attempt id.
pub const META_ATTEMPT: &str = "ferry.attempt";

/// How often a running job's status is read while waiting for its end.
const POLL: Duration = Duration::from_millis(250);
/// How often the log of a running job is fetched again, at most.
const LOG_REFRESH: Duration = Duration::from_millis(200);
/// How long a job asked to stop may stay PENDING before it is taken for one waiting for
/// resources (a job's supervisor takes a second or two to start when they are free).
const PENDING_STOP: Duration = Duration::from_secs(10);

/// What the journal keeps of a Ray job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// The dashboard URL of the cluster it was submitted to.
    pub address: String,
    pub submission_id: String,
    /// The attempt's directory: `work/`, `run.sh`, `outputs.json`, `subtasks.json`.
    pub dir: PathBuf,
}

impl Handle {
    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    fn outputs(&self) -> PathBuf {
        self.dir.join("outputs.json")
    }

    fn subtasks(&self) -> PathBuf {
        self.dir.join("subtasks.json")
    }

    fn script(&self) -> PathBuf {
        self.dir.join("run.sh")
    }

    /// The job's entrypoint: the attempt's script, run by `sh` in place of Ray's shell.
    fn entrypoint(&self) -> String {
        format!("exec sh {}", quote(&self.script().to_string_lossy()))
    }

    /// The line Ray writes to the job's log as it starts the entrypoint. Ray buffers it and
    /// writes it when the entrypoint runs already, so it may land among the task's first
    /// output (in one piece: one write to a file both append to).
    fn ray_marker(&self) -> String {
        format!(
            "Running entrypoint for job {}: {}\n",
            self.submission_id,
            self.entrypoint()
        )
    }

    /// The line the attempt's script writes first: the task's output follows it, after every
    /// line of Ray's own setup.
    fn start_marker(&self) -> String {
        format!("ferry: the output of {} starts here\n", self.submission_id)
    }

    /// The task's output in the job's whole log: what follows the script's first line, without
    /// Ray's line, wherever it landed.
    fn output_of(&self, log: &str) -> Vec<u8> {
        let mut log = log.to_string();
        let ray = self.ray_marker();
        if let Some(at) = log.find(&ray) {
            log.replace_range(at..at + ray.len(), "");
        }
        let start = self.start_marker();
        match log.find(&start) {
            Some(at) => log.as_bytes()[at + start.len()..].to_vec(),
            // The script has not started: nothing of the task yet.
            None => Vec::new(),
        }
    }
}

/// How the backend runs its jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The dashboard URL of the cluster of tasks whose runner names no `address`.
    pub address: Option<String>,
    /// This launcher's identity (its jobs' `ferry.launcher` metadata).
    pub launcher: String,
    /// Where attempt directories are made; the cluster's nodes must see it at the same path.
    pub work_dir: PathBuf,
    /// Where output files are stored (`<dir>/<job>/<task>/<attempt>/`); `None`: tasks with
    /// output files are refused.
    pub artifact_dir: Option<PathBuf>,
    /// The time a stopped job gets between SIGTERM and SIGKILL (whole seconds, at least one:
    /// Ray's `RAY_JOB_STOP_WAIT_TIME_S`).
    pub kill_grace: Duration,
}

impl Settings {
    pub fn new(launcher: impl Into<String>, work_dir: impl Into<PathBuf>) -> Settings {
        Settings {
            address: None,
            launcher: launcher.into(),
            work_dir: work_dir.into(),
            artifact_dir: None,
            kill_grace: Duration::from_secs(10),
        }
    }
}

/// The ray backend. Cheap to clone.
#[derive(Clone)]
pub struct Ray(Arc<Inner>);

struct Inner {
    api: Client,
    settings: Settings,
    shutdown: ShutdownPolicy,
    /// Clusters this run submitted to or adopted from, besides the default one: where
    /// [`Backend::list_owned`] looks.
    addresses: Mutex<BTreeSet<String>>,
    logs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LogCache>>>>,
}

/// The entrypoint's output of one job as last fetched.
#[derive(Default)]
struct LogCache {
    /// The entrypoint's bytes, from its first.
    bytes: Vec<u8>,
    /// Fetched after the job ended: no more will come.
    complete: bool,
    fetched: Option<Instant>,
}

impl Ray {
    pub fn new(settings: Settings) -> Ray {
        Ray(Arc::new(Inner {
            api: Client::new(),
            settings,
            shutdown: ShutdownPolicy::Detach,
            addresses: Mutex::new(BTreeSet::new()),
            logs: Mutex::new(HashMap::new()),
        }))
    }

    /// Stops every running job when the launcher stops, reporting its attempt `lost`, rather
    /// than leaving it to the next start. Call before the backend is shared.
    pub fn kill_on_shutdown(mut self) -> Ray {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.shutdown = ShutdownPolicy::Kill,
            None => debug_assert!(false, "kill_on_shutdown on a backend already shared"),
        }
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// The cluster a dispatch's job goes to: its runner's address, else the launcher's.
    fn address_of(&self, r: &RayRunner) -> BackendResult<String> {
        let address = r
            .address
            .clone()
            .filter(|a| !a.trim().is_empty())
            .or_else(|| self.0.settings.address.clone())
            .ok_or_else(|| {
                AttemptError::Task(
                    "runner.address is not set and this ray launcher has no --ray-address: name the Ray \
                     dashboard's URL (http://HEAD:8265) in the runner or start the launcher with --ray-address"
                        .into(),
                )
            })?;
        check_address(&address).map_err(AttemptError::Task)?;
        Ok(address.trim_end_matches('/').to_string())
    }

    fn handle(&self, compute: &Compute) -> BackendResult<Handle> {
        compute.handle_as()
    }

    fn remember(&self, address: &str) {
        self.0
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_string());
    }

    fn log_cache(&self, name: &str) -> Arc<tokio::sync::Mutex<LogCache>> {
        let mut logs = self.0.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.entry(name.to_string()).or_default().clone()
    }

    fn forget(&self, name: &str) {
        self.0.logs.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The job's details; a job that is gone is the platform's loss.
    async fn details(&self, h: &Handle) -> BackendResult<Option<JobDetails>> {
        self.0.api.job(&h.address, &h.submission_id).await
    }

    /// Writes the attempt's directory: `work/` with the input files, and `run.sh`. Everything
    /// is private to the launcher's user (directories 0700, files 0600, the script 0700).
    fn prepare(&self, task: Task<'_>, h: &Handle) -> BackendResult<()> {
        let work = h.work();
        let work_str = work.to_str().ok_or_else(|| {
            AttemptError::Platform(format!(
                "the working directory {} is not valid UTF-8",
                work.display()
            ))
        })?;
        let outputs = h.outputs();
        let prepared = ferry_launcher_local::prepare::prepare(
            task,
            work_str,
            &outputs.to_string_lossy(),
            &h.subtasks().to_string_lossy(),
            std::iter::empty::<(std::ffi::OsString, std::ffi::OsString)>(),
        )?;
        if prepared.program.contains('=') {
            return Err(AttemptError::Task(format!(
                "command[0] {:?} contains `=`, which `env` would take for a variable: name the program without it",
                prepared.program
            )));
        }
        let mut script = format!(
            "printf '%s\\n' {}\ncd {} || exit 1\nexec env",
            quote(h.start_marker().trim_end()),
            quote(work_str)
        );
        for (name, value) in &prepared.env {
            let pair = format!("{}={}", name.to_string_lossy(), value.to_string_lossy());
            script.push(' ');
            script.push_str(&quote(&pair));
        }
        for word in std::iter::once(&prepared.program).chain(&prepared.args) {
            script.push(' ');
            script.push_str(&quote(word));
        }
        script.push('\n');

        let platform = |what: &str, e: std::io::Error| {
            AttemptError::Platform(format!("cannot {what} {}: {e}", h.dir.display()))
        };
        // A try killed halfway left a directory: start again from nothing.
        match std::fs::remove_dir_all(&h.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(platform("clear the attempt directory", e)),
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work)
            .map_err(|e| platform("create the attempt directory", e))?;
        ferry_launcher_local::prepare::write_inputs(&work, &prepared.inputs, None)
            .map_err(AttemptError::Task)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(h.script())
            .map_err(|e| platform("write the entrypoint script in", e))?;
        file.write_all(script.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| platform("write the entrypoint script in", e))?;
        Ok(())
    }

    /// The job to submit for `task`.
    fn submission(&self, task: Task<'_>, r: &RayRunner, h: &Handle) -> BackendResult<Submission> {
        let d = task.dispatch;
        let grace = self.0.settings.kill_grace;
        let grace_secs = (grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).max(1);
        let mut env_vars = serde_json::Map::new();
        // Read by the job's supervisor: the time between SIGTERM and SIGKILL on a stop.
        env_vars.insert("RAY_JOB_STOP_WAIT_TIME_S".into(), grace_secs.to_string().into());
        let mut runtime_env = json!({ "env_vars": env_vars });
        if !r.pip.is_empty() {
            runtime_env["pip"] = json!(r.pip);
        }
        let memory = d
            .resources
            .memory_bytes()
            .map_err(|why| AttemptError::Task(format!("resources.memory: {why}")))?;
        let gpus = d
            .resources
            .gpus()
            .map_err(|why| AttemptError::Task(format!("resources.{why}")))?;
        Ok(Submission {
            submission_id: h.submission_id.clone(),
            entrypoint: h.entrypoint(),
            runtime_env,
            metadata: BTreeMap::from([
                (META_LAUNCHER.to_string(), self.0.settings.launcher.clone()),
                (META_ATTEMPT.to_string(), d.attempt_id.clone()),
                ("ferry.job".to_string(), d.job_id.clone()),
                ("ferry.task".to_string(), d.task_id.clone()),
            ]),
            entrypoint_num_cpus: d.resources.cpu,
            entrypoint_num_gpus: gpus.map(|g| f64::from(g.count)),
            entrypoint_memory: memory,
            entrypoint_resources: r.custom_resources.clone(),
        })
    }

    /// The entrypoint's output from `from` on, from the cache when it has it, else fetched.
    async fn read_stdout(&self, h: &Handle, from: u64, max_bytes: usize) -> BackendResult<(Vec<u8>, bool)> {
        let cache = self.log_cache(&h.submission_id);
        let mut cache = cache.lock().await;
        let held = cache.bytes.len() as u64;
        let fresh = cache.fetched.is_some_and(|at| at.elapsed() < LOG_REFRESH);
        if from >= held && !cache.complete && !fresh {
            // The status first: a job that had ended before its log was fetched has all of
            // its log in what is fetched.
            let ended = match self.details(h).await? {
                // A job stopped while it waited to start has no script left: whenever it
                // starts, it runs nothing of the task.
                Some(job) => job.is_terminal() || (job.status == "PENDING" && !h.script().exists()),
                None => {
                    return Err(AttemptError::Platform(format!(
                        "the log of Ray job {} is gone: the job was deleted from the cluster at {}",
                        h.submission_id, h.address
                    )));
                }
            };
            let Some(text) = self.0.api.logs(&h.address, &h.submission_id).await? else {
                return Err(AttemptError::Platform(format!(
                    "the log of Ray job {} is gone: the job was deleted from the cluster at {}",
                    h.submission_id, h.address
                )));
            };
            cache.bytes = h.output_of(&text);
            cache.complete = ended;
            cache.fetched = Some(Instant::now());
        }
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(cache.bytes.len());
        let end = start.saturating_add(max_bytes).min(cache.bytes.len());
        let complete = cache.complete && end == cache.bytes.len();
        Ok((cache.bytes[start..end].to_vec(), complete))
    }
}

/// How long after a job's end its record may be deleted: Ray's job manager looks at each job
/// every second until it sees the job's supervisor gone, and a job deleted before that look
/// comes back as a record of its own ("Job supervisor actor died", no metadata).
const SETTLE: Duration = Duration::from_secs(3);

/// The time left until a job that ended at `end_ms` (milliseconds since the epoch) has
/// settled.
fn settle_left(end_ms: Option<i64>) -> Duration {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    match end_ms {
        Some(end) => {
            Duration::from_millis(u64::try_from(end + SETTLE.as_millis() as i64 - now_ms).unwrap_or(0))
        }
        None => SETTLE,
    }
}

/// Deletes the record of a job that has ended once Ray is done with it (after `wait`), and the
/// record Ray makes again if it was not. A launcher stopped before that leaves the record:
/// the next start finds it among the jobs it owns and deletes it.
async fn forget_job(api: Client, h: Handle, wait: Duration) {
    tokio::time::sleep(wait).await;
    for _ in 0..2 {
        if let Err(e) = api.delete(&h.address, &h.submission_id).await {
            tracing::warn!(job = %h.submission_id, error = %e, "cannot delete the record of a Ray job that ended");
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        match api.job(&h.address, &h.submission_id).await {
            Ok(Some(_)) => continue,
            _ => return,
        }
    }
}

/// Kills what is left of a stopped job on this machine. Ray's supervisor stops the processes
/// it finds when the stop is taken (the entrypoint and its children, SIGTERM then SIGKILL); one
/// forked by the task just then (as a stop that arrives as the job starts) is missed, and runs
/// on in the job's process group with nobody to end it. Where the job ran on the launcher's
/// machine (the local cluster the attempt directories need), its processes are found by their
/// `FERRY_ATTEMPT_ID` and killed; elsewhere there is nothing to find.
fn kill_strays(h: &Handle) {
    let Some(attempt) = h.submission_id.strip_prefix("ferry-") else {
        return;
    };
    let needle = format!("FERRY_ATTEMPT_ID={attempt}\0");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(mut env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        env.push(0);
        if env.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            let killed =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            tracing::info!(job = %h.submission_id, pid, ok = killed.is_ok(), "killed a process of a stopped Ray job that Ray's stop missed");
        }
    }
}

/// Removes the attempt's script, so that its job, if it ever starts, runs nothing of the task
/// (`sh` cannot open the script and exits).
fn disarm(h: &Handle) -> BackendResult<()> {
    match std::fs::remove_file(h.script()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AttemptError::Platform(format!(
            "cannot remove the script of Ray job {} ({}): {e}",
            h.submission_id,
            h.script().display()
        ))),
    }
}

/// A shell word that stands for `s` verbatim: single quotes, with each `'` written `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An address the Jobs API can be reached at: an `http` or `https` URL.
pub fn check_address(address: &str) -> Result<(), String> {
    match url::Url::parse(address) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!(
            "runner.address `{address}` is not the URL of a Ray dashboard: write http://HOST:PORT (the dashboard's port, 8265 by default)"
        )),
    }
}

fn runner(d: &TaskDispatched) -> BackendResult<&RayRunner> {
    match &d.runner {
        Runner::Ray(r) => Ok(r),
        other => Err(AttemptError::Task(format!(
            "the ray launcher runs `runner: ray` tasks, not `{}`",
            other.backend()
        ))),
    }
}

/// How a job that ended did, from its details.
fn state_of(h: &Handle, job: &JobDetails) -> ComputeState {
    match job.status.as_str() {
        "PENDING" => ComputeState::Pending,
        "RUNNING" => ComputeState::Running,
        "SUCCEEDED" => ComputeState::Exited(Exit {
            code: Some(0),
            error: None,
            reason: None,
        }),
        "STOPPED" => ComputeState::Exited(Exit {
            code: None,
            error: Some(format!(
                "Ray job {} was stopped on the cluster (ray job stop, or the dashboard)",
                h.submission_id
            )),
            reason: Some("Stopped".into()),
        }),
        "FAILED" => match (job.driver_exit_code, job.error_type.as_deref()) {
            (Some(code), _) if code >= 0 => ComputeState::Exited(Exit {
                code: Some(code),
                error: Some(format!("exited with status {code}")),
                reason: None,
            }),
            (Some(code), _) => {
                let signal = nix::sys::signal::Signal::try_from(-code)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| (-code).to_string());
                ComputeState::Exited(Exit {
                    code: None,
                    error: Some(format!("killed by signal {signal}")),
                    reason: None,
                })
            }
            // A runtime environment that cannot be made (a pip package that does not exist)
            // fails the same way every time: the task's.
            (None, Some("RUNTIME_ENV_SETUP_FAILURE")) => ComputeState::Exited(Exit {
                code: None,
                error: Some(format!(
                    "the job's runtime environment could not be set up (runner.pip): {}",
                    job.message.as_deref().unwrap_or("Ray gave no reason")
                )),
                reason: Some("RuntimeEnvSetupFailed".into()),
            }),
            // Its supervisor died, its node was lost: the platform's.
            (None, kind) => ComputeState::Vanished(format!(
                "Ray job {} failed before its entrypoint ended ({}): {}",
                h.submission_id,
                kind.unwrap_or("no error type"),
                job.message.as_deref().unwrap_or("Ray gave no reason")
            )),
        },
        other => ComputeState::Vanished(format!(
            "Ray job {} is in a state ferry does not know: {other}",
            h.submission_id
        )),
    }
}

#[async_trait]
impl Backend for Ray {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        self.0.shutdown
    }

    fn describe(&self, compute: &Compute) -> String {
        match self.handle(compute) {
            Ok(h) => format!("{} at {}", h.submission_id, h.address),
            Err(_) => compute.name.clone(),
        }
    }

    /// A job waits on the cluster (its runtime environment set up, its resources free) before
    /// its entrypoint runs.
    fn may_queue(&self) -> bool {
        true
    }

    fn check(&self, d: &TaskDispatched) -> BackendResult<()> {
        let r = runner(d)?;
        let task = |m: String| AttemptError::Task(m);
        self.address_of(r)?;
        d.resources
            .memory_bytes()
            .map_err(|why| task(format!("resources.memory: {why}")))?;
        let gpus = d
            .resources
            .gpus()
            .map_err(|why| task(format!("resources.{why}")))?;
        if let Some(kind) = gpus.and_then(|g| g.kind) {
            return Err(task(format!(
                "resources.gpuType `{kind}`: the ray backend counts GPUs (entrypoint_num_gpus) but cannot choose \
                 their model by that name; reserve the custom resource the cluster's nodes advertise for it in \
                 runner.customResources (e.g. `accelerator_type:T4: 0.001`)"
            )));
        }
        for (name, amount) in &r.custom_resources {
            if name.trim().is_empty() || matches!(name.as_str(), "CPU" | "GPU" | "memory") {
                return Err(task(format!(
                    "runner.customResources: `{name}` is refused: name a custom resource; CPUs, GPUs and \
                     memory are asked for in resources.cpu, resources.gpu and resources.memory"
                )));
            }
            if !amount.is_finite() || *amount <= 0.0 {
                return Err(task(format!(
                    "runner.customResources.{name}: {amount} is refused: give a positive amount"
                )));
            }
        }
        if let Some(p) = r.pip.iter().find(|p| p.trim().is_empty()) {
            return Err(task(format!(
                "runner.pip: {p:?} is not a requirement: give package specifiers such as `requests==2.32.3`"
            )));
        }
        if !d.output_files.is_empty() {
            if self.0.settings.artifact_dir.is_none() {
                return Err(task(
                    "outputFiles cannot be collected: this ray launcher has no artifact directory".into(),
                ));
            }
            for p in &d.output_files {
                collect::check_pattern(p).map_err(task)?;
            }
            for (what, id) in [("job id", &d.job_id), ("task id", &d.task_id)] {
                ferry_launcher::journal::check_id(id).map_err(|why| {
                    task(format!(
                        "{what} {id:?} cannot name the directory output files are stored in: {why}"
                    ))
                })?;
            }
        }
        Ok(())
    }

    async fn reserve(&self, task: Task<'_>) -> BackendResult<Compute> {
        let r = runner(task.dispatch)?;
        let address = self.address_of(r)?;
        self.remember(&address);
        let name = self.compute_name(task.attempt_id());
        let h = Handle {
            address,
            submission_id: name.clone(),
            dir: self.0.settings.work_dir.join(&name),
        };
        Compute::with_handle(name, &h)
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let r = runner(task.dispatch)?;
        let h = self.handle(&reserved)?;
        // Look before creating: a job of this submission id is this attempt's, from an earlier
        // try: adopt it (its directory is in use, left as it is).
        if self.details(&h).await?.is_some() {
            return Ok(reserved);
        }
        let submission = self.submission(task, r, &h)?;
        // The templates are filled (secrets too) and the directory written here, before
        // anything is submitted: a task whose inputs are refused leaves no job. A few small
        // files, written on this thread.
        self.prepare(task, &h)?;
        match self.0.api.submit(&h.address, &submission).await? {
            crate::api::Submitted::New => {
                tracing::info!(job = %h.submission_id, address = %h.address, "submitted Ray job");
            }
            crate::api::Submitted::Exists => {
                tracing::info!(job = %h.submission_id, address = %h.address, "adopted the Ray job of an earlier try");
            }
        }
        Ok(reserved)
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        let h = self.handle(reserved)?;
        self.remember(&h.address);
        Ok(self.details(&h).await?.map(|_| reserved.clone()))
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let h = self.handle(compute)?;
        Ok(match self.details(&h).await? {
            Some(job) => state_of(&h, &job),
            None => ComputeState::Vanished(format!(
                "Ray job {} is gone from the cluster at {} (deleted behind ferry's back, or the head node \
                 restarted without its job table)",
                h.submission_id, h.address
            )),
        })
    }

    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        loop {
            match self.status(compute).await? {
                ComputeState::Pending | ComputeState::Running => tokio::time::sleep(POLL).await,
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
            Stream::Stdout => {
                let (bytes, complete) = self.read_stdout(&h, from.stdout, max_bytes).await?;
                Ok(LogRead {
                    bytes,
                    cursor: serde_json::Value::Null,
                    complete,
                })
            }
            // Ray merges both streams into the job's log: everything arrives as stdout.
            Stream::Stderr => {
                let (_, complete) = self.read_stdout(&h, from.stdout, 0).await?;
                let done = complete || {
                    let cache = self.log_cache(&h.submission_id);
                    let cache = cache.lock().await;
                    cache.complete
                };
                Ok(LogRead {
                    bytes: Vec::new(),
                    cursor: serde_json::Value::Null,
                    complete: done,
                })
            }
        }
    }

    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()> {
        let h = self.handle(compute)?;
        // Ray's supervisor sends SIGTERM, waits RAY_JOB_STOP_WAIT_TIME_S (the launcher's kill
        // grace, set at submission) and sends SIGKILL; then the job is STOPPED.
        let limit = grace.max(self.0.settings.kill_grace) + Duration::from_secs(30);
        let until = Instant::now() + limit;
        let mut asked: Option<Instant> = None;
        let mut pending_since: Option<Instant> = None;
        loop {
            let job = match self.details(&h).await? {
                Some(job) if !job.is_terminal() => job,
                _ => {
                    if asked.is_some() {
                        kill_strays(&h);
                    }
                    return Ok(());
                }
            };
            if job.status == "PENDING" {
                // A job waiting for its resources has no supervisor running yet, and Ray's
                // stop reaches it only once it starts (then it ends at once). Nothing of the
                // task runs while it waits: take its script away, so that a job started later
                // runs nothing of the task either, and call it stopped.
                let since = *pending_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= PENDING_STOP {
                    disarm(&h)?;
                    tracing::info!(job = %h.submission_id, "stopped a Ray job still waiting to start: its script is gone, it will run nothing");
                    return Ok(());
                }
            } else {
                pending_since = None;
            }
            if Instant::now() >= until {
                return Err(AttemptError::Unavailable(format!(
                    "Ray job {} at {} did not stop within {limit:?} of being asked to",
                    h.submission_id, h.address,
                )));
            }
            // A job whose supervisor was still starting may not hear the first ask.
            if asked.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                self.0.api.stop(&h.address, &h.submission_id).await?;
                asked = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        let h = self.handle(compute)?;
        let d = task.dispatch;
        let outputs_path = h.outputs();
        let subtasks_path = h.subtasks();
        let work = h.work();
        let patterns = d.output_files.clone();
        let dest = match (&self.0.settings.artifact_dir, patterns.is_empty()) {
            (_, true) => None,
            (Some(dir), false) => Some(dir.join(collect::attempt_artifacts(d))),
            (None, false) => {
                return Err(AttemptError::Task(
                    "outputFiles cannot be collected: this ray launcher has no artifact directory".into(),
                ));
            }
        };
        let gather = move || {
            let outputs = collect::read_outputs_file(&outputs_path)?;
            let subtasks = collect::read_subtasks_file(&subtasks_path)?;
            let files = match dest {
                Some(dest) => collect::collect_files(&work, &patterns, &dest)?,
                None => Vec::new(),
            };
            Ok::<_, String>((outputs, subtasks, files))
        };
        let (outputs, subtasks, files) = tokio::task::spawn_blocking(gather)
            .await
            .map_err(|e| AttemptError::Platform(format!("collecting outputs failed: {e}")))?
            .map_err(AttemptError::Task)?;
        Ok(Collected {
            outputs,
            subtasks,
            files,
        })
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        let h = self.handle(compute)?;
        let mut job = self.details(&h).await?;
        let disarmed = job.as_ref().is_some_and(|j| j.status == "PENDING") && !h.script().exists();
        if job.as_ref().is_some_and(|j| !j.is_terminal()) && !disarmed {
            // Ray deletes only jobs that have ended: stop it first.
            self.stop(compute, self.0.settings.kill_grace).await?;
            job = self.details(&h).await?;
        }
        match std::fs::remove_dir_all(&h.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AttemptError::Platform(format!(
                    "cannot remove the attempt directory {}: {e}",
                    h.dir.display()
                )));
            }
        }
        self.forget(&h.submission_id);
        match job {
            None => {}
            // One still waiting to start cannot end before it starts (then it fails at once,
            // its script gone): it is left to Ray, which also fails it after
            // RAY_JOB_START_TIMEOUT_SECONDS.
            Some(j) if !j.is_terminal() => {
                tracing::warn!(job = %h.submission_id, address = %h.address, "left a Ray job that never started on the cluster: Ray deletes only jobs that have ended");
            }
            Some(j) => {
                let wait = settle_left(j.end_time);
                if wait.is_zero() {
                    self.0.api.delete(&h.address, &h.submission_id).await?;
                } else {
                    // Deleted once Ray is done with it, without holding up the report: the
                    // job holds no compute any more, only its record.
                    let api = self.0.api.clone();
                    tokio::spawn(async move { forget_job(api, h, wait).await });
                }
            }
        }
        Ok(())
    }

    /// The jobs whose metadata names this launcher, on its default cluster and on every
    /// cluster an attempt it knows of used (each journaled attempt is looked up before the
    /// runtime asks, and a job is journaled, reserved, before it is submitted).
    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let mut addresses = self.0.addresses.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let home = self
            .0
            .settings
            .address
            .clone()
            .map(|a| a.trim_end_matches('/').to_string());
        if let Some(home) = &home {
            addresses.insert(home.clone());
        }
        let mut owned = Vec::new();
        for address in addresses {
            let jobs = match self.0.api.list(&address).await {
                Ok(jobs) => jobs,
                Err(e) if Some(&address) != home.as_ref() => {
                    tracing::warn!(%address, error = %e, "cannot list the Ray jobs of a cluster this launcher's attempts used");
                    continue;
                }
                Err(e) => return Err(e),
            };
            for job in jobs {
                let ours = job
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get(META_LAUNCHER))
                    .is_some_and(|l| *l == self.0.settings.launcher);
                let Some(id) = job.submission_id.filter(|_| ours) else {
                    continue;
                };
                let dir = self.0.settings.work_dir.join(&id);
                owned.push(Compute::with_handle(
                    id.clone(),
                    &Handle {
                        address: address.clone(),
                        submission_id: id,
                        dir,
                    },
                )?);
            }
        }
        Ok(owned)
    }
}

/// Whether `dir` can hold attempt directories: an absolute path, so that the cluster's nodes
/// see the same place.
pub fn check_work_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err(format!(
            "the Ray work directory {} must be an absolute path (the cluster's nodes find attempt directories by it)",
            dir.display()
        ));
    }
    if dir.to_str().is_none_or(|s| s.contains(['\n', '\r'])) {
        return Err(format!(
            "the Ray work directory {} must be valid UTF-8 without line breaks",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> Handle {
        Handle {
            address: "http://127.0.0.1:8265".into(),
            submission_id: "ferry-a1".into(),
            dir: "/var/lib/ferry/ray work/ferry-a1".into(),
        }
    }

    #[test]
    fn words_are_quoted_verbatim() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's $HOME `x`"), r"'it'\''s $HOME `x`'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn the_output_is_what_follows_the_scripts_first_line_without_rays() {
        let h = handle();
        assert_eq!(
            h.entrypoint(),
            "exec sh '/var/lib/ferry/ray work/ferry-a1/run.sh'"
        );
        let ray = "Running entrypoint for job ferry-a1: exec sh '/var/lib/ferry/ray work/ferry-a1/run.sh'\n";
        let start = "ferry: the output of ferry-a1 starts here\n";
        let setup = "2026-12-06 18:33:59,649\tINFO job_manager.py:581 -- Runtime env is setting up.\n";
        // Ray's line before the script's, among the task's lines, inside one.
        for log in [
            format!("{setup}{ray}{start}begin\nend\n"),
            format!("{setup}{start}begin\n{ray}end\n"),
            format!("{setup}{start}beg{ray}in\nend\n"),
        ] {
            assert_eq!(h.output_of(&log), b"begin\nend\n", "{log}");
        }
        // Before the script starts, and as it starts: nothing, then a prefix of the rest.
        assert!(h.output_of(setup).is_empty());
        assert_eq!(h.output_of(&format!("{setup}{start}beg")), b"beg");
        // The task's own text like Ray's line is kept once Ray's is gone.
        let twice = format!("{setup}{ray}{start}{ray}");
        assert_eq!(h.output_of(&twice), ray.as_bytes());
    }

    #[test]
    fn job_states_map_to_outcomes_and_faults() {
        let h = handle();
        let job = |status: &str, code: Option<i32>, kind: Option<&str>| JobDetails {
            status: status.into(),
            driver_exit_code: code,
            error_type: kind.map(String::from),
            message: Some("why".into()),
            ..JobDetails::default()
        };
        assert_eq!(state_of(&h, &job("PENDING", None, None)), ComputeState::Pending);
        assert_eq!(state_of(&h, &job("RUNNING", None, None)), ComputeState::Running);
        match state_of(&h, &job("FAILED", Some(3), Some("JOB_ENTRYPOINT_COMMAND_ERROR"))) {
            ComputeState::Exited(e) => {
                assert_eq!(
                    (e.code, e.error.as_deref()),
                    (Some(3), Some("exited with status 3"))
                )
            }
            other => panic!("{other:?}"),
        }
        match state_of(&h, &job("FAILED", Some(-9), None)) {
            ComputeState::Exited(e) => assert_eq!(e.error.as_deref(), Some("killed by signal SIGKILL")),
            other => panic!("{other:?}"),
        }
        match state_of(&h, &job("FAILED", None, Some("RUNTIME_ENV_SETUP_FAILURE"))) {
            ComputeState::Exited(e) => assert_eq!(e.reason.as_deref(), Some("RuntimeEnvSetupFailed")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            state_of(&h, &job("FAILED", None, Some("JOB_SUPERVISOR_ACTOR_DIED"))),
            ComputeState::Vanished(m) if m.contains("JOB_SUPERVISOR_ACTOR_DIED")
        ));
        assert!(
            state_of(&h, &job("SUCCEEDED", Some(0), None))
                == ComputeState::Exited(Exit {
                    code: Some(0),
                    error: None,
                    reason: None
                })
        );
    }

    #[test]
    fn addresses_and_work_dirs_are_checked() {
        assert!(check_address("http://127.0.0.1:8265").is_ok());
        assert!(check_address("https://ray.example.com").is_ok());
        let e = check_address("127.0.0.1:8265").unwrap_err();
        assert!(e.contains("http://HOST:PORT"), "{e}");
        assert!(check_address("ray://head:10001").is_err());
        assert!(check_work_dir(Path::new("relative")).is_err());
        assert!(check_work_dir(Path::new("/abs/ok")).is_ok());
    }
}
