//! The `docker` backend: the launcher runtime's [`Backend`] over an [`Engine`].
//!
//! Each attempt is one container named from its attempt id ([`container_name`]) and labelled
//! with its job, task, attempt, flow, namespace and this launcher ([`crate::spec`]). Its input
//! files are put into the working directory (`runner.workingDir`, `/ferry` by default) before it
//! starts, and `$FERRY_OUTPUTS` and `$FERRY_SUBTASKS` are files in a directory of their own
//! ([`OUTPUTS_DIR`]), so that no `outputFiles` pattern can match them; they are read back through the engine's archive API
//! after it ends, before it is removed. Containers outlive the launcher
//! ([`ShutdownPolicy::Detach`]): the next start adopts each with its true outcome.
//!
//! The handle journaled for a container is its id and working directory ([`Handle`]); the log
//! cursor is the engine's exact [`LogCursor`] with the bytes of each stream before it
//! ([`crate::logs`] says why it is exact).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_event::payload::{self, ImageRunner, Runner, Stream, TaskDispatched};
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use ferry_launcher::collect::{self, MAX_OUTPUTS_BYTES, MAX_SUBTASKS_BYTES};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::engine::{ContainerStatus, Engine, State};
use crate::error::Error;
use crate::files::{InputFile, Limits};
use crate::logs::{LogCursor, LogStream};
use crate::spec::{Attempt, ContainerSpec, Mount, PullPolicy, container_name};

/// The runner type this backend serves; dispatches arrive on `dispatch.docker`.
pub const BACKEND: &str = "docker";

/// The command's working directory when `runner.workingDir` does not say: a directory of
/// ferry's own at the root, so that it never mixes with the image's files.
pub const DEFAULT_WORKING_DIR: &str = "/ferry";

/// The directory `$FERRY_OUTPUTS` is in, apart from the working directory.
pub const OUTPUTS_DIR: &str = "/ferry-outputs";

/// `$FERRY_OUTPUTS` in every container.
pub const OUTPUTS_FILE: &str = "/ferry-outputs/outputs.json";

/// `$FERRY_SUBTASKS` in every container, beside the outputs.
pub const SUBTASKS_FILE: &str = "/ferry-outputs/subtasks.json";

/// How long one wait for a container's end may take before its status is read again (a wait
/// request that lost its connection would otherwise wait for ever).
const WAIT_SLICE: Duration = Duration::from_secs(30);

/// A stream of the engine's log that ended while the container ran (the engine restarted, the
/// connection broke) is not opened again sooner than this.
const REOPEN_AFTER: Duration = Duration::from_millis(100);

/// Log entries read ahead of the runtime per container: the engine's stream waits when they
/// are not taken.
const FOLLOW_AHEAD: usize = 64;

/// Most bytes of the other stream held while reading one.
const MAX_HELD: usize = 8 * 1024 * 1024;

/// What the journal keeps of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handle {
    /// The container's id.
    pub id: String,
    /// Its working directory, where output files are collected from; empty when not known
    /// (a container found by its labels alone).
    #[serde(default)]
    pub work_dir: String,
}

/// The docker backend. Cheap to clone: every clone is the same backend.
#[derive(Clone)]
pub struct Docker(Arc<Inner>);

struct Inner {
    /// The engine, or why there is none: then every attempt is refused with that message.
    engine: Result<Engine, String>,
    /// This launcher's identity on the engine (its containers' `dev.ferry.launcher` label):
    /// the same on every start over one data directory, so that a restart finds what it left.
    launcher: String,
    /// Where output files are copied, as `<job>/<task>/<attempt>/<path>`.
    artifact_dir: PathBuf,
    limits: Limits,
    /// What happens to running containers when the launcher stops: [`ShutdownPolicy::Detach`]
    /// unless [`Docker::kill_on_shutdown`] was asked for.
    shutdown: ShutdownPolicy,
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// What this run of the launcher knows of one container.
#[derive(Default)]
struct Live {
    /// The container was seen ended (or gone): its log grows no more.
    ended: AtomicBool,
    logs: tokio::sync::Mutex<Option<LogBuffer>>,
}

impl Docker {
    /// A backend on `engine`, owning the containers labelled `launcher`.
    pub fn new(engine: Engine, launcher: impl Into<String>, artifact_dir: PathBuf) -> Docker {
        Docker::with(Ok(engine), launcher.into(), artifact_dir)
    }

    /// A backend without an engine: every attempt fails at once with `why` (how `ferry run`
    /// answers a `runner: docker` task on a machine where no Docker engine answers).
    pub fn without_engine(why: impl Into<String>, artifact_dir: PathBuf) -> Docker {
        Docker::with(Err(why.into()), String::new(), artifact_dir)
    }

    fn with(engine: Result<Engine, String>, launcher: String, artifact_dir: PathBuf) -> Docker {
        Docker(Arc::new(Inner {
            engine,
            launcher,
            artifact_dir,
            limits: Limits::default(),
            shutdown: ShutdownPolicy::Detach,
            live: Mutex::new(HashMap::new()),
        }))
    }

    /// Stops every running container when the launcher stops, reporting its attempt `lost`,
    /// rather than leaving it to the next start: for a launcher whose jobs end with it
    /// (`ferry run`). Call before the backend is shared.
    pub fn kill_on_shutdown(mut self) -> Docker {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.shutdown = ShutdownPolicy::Kill,
            None => debug_assert!(false, "kill_on_shutdown on a backend already shared"),
        }
        self
    }

    fn engine(&self) -> BackendResult<&Engine> {
        self.0
            .engine
            .as_ref()
            .map_err(|why| AttemptError::Task(why.clone()))
    }

    fn live(&self, name: &str) -> Arc<Live> {
        let mut live = self.0.live.lock().unwrap_or_else(|e| e.into_inner());
        live.entry(name.to_string()).or_default().clone()
    }

    fn forget(&self, name: &str) {
        let mut live = self.0.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(name);
    }

    fn mark_ended(&self, name: &str) {
        self.live(name).ended.store(true, Ordering::SeqCst);
    }

    /// The container's state, as the runtime knows states; notes its end.
    fn state_of(&self, name: &str, found: Option<ContainerStatus>) -> ComputeState {
        let state = match found {
            None => ComputeState::Vanished(format!(
                "container {name} is gone: it was removed by something other than ferry"
            )),
            Some(s) => match s.state {
                State::Created => ComputeState::Pending,
                State::Running | State::Other(_) => ComputeState::Running,
                State::Exited { code } => ComputeState::Exited(exit(code, s.oom_killed, s.error.as_deref())),
            },
        };
        if matches!(state, ComputeState::Exited(_) | ComputeState::Vanished(_)) {
            self.mark_ended(name);
        }
        state
    }
}

/// How a container ended, as the runtime reports it.
fn exit(code: i64, oom_killed: bool, engine_error: Option<&str>) -> Exit {
    let code32 = i32::try_from(code).unwrap_or(i32::MAX);
    if oom_killed {
        return Exit {
            code: Some(code32),
            error: Some(format!(
                "OOMKilled: killed for exceeding its memory limit (resources.memory); exited with status {code}"
            )),
            reason: Some("OOMKilled".into()),
        };
    }
    let error = match (code, engine_error) {
        (0, _) => None,
        (_, Some(why)) => Some(format!("exited with status {code}: {why}")),
        (_, None) => Some(format!("exited with status {code}")),
    };
    Exit {
        code: Some(code32),
        error,
        reason: None,
    }
}

/// Whose fault an engine error is: the task's (an image missing with pull `never`, a request the
/// engine refused), for now (no engine answers), or ferry's and the platform's.
pub fn attempt_error(e: Error) -> AttemptError {
    if e.is_task_fault() {
        return AttemptError::Task(e.to_string());
    }
    match e {
        Error::NoEngine { .. } | Error::Unreachable { .. } => AttemptError::Unavailable(e.to_string()),
        Error::Engine { status: 503, .. } => AttemptError::Unavailable(e.to_string()),
        other => AttemptError::Platform(other.to_string()),
    }
}

/// The task's docker runner parameters, or a refusal naming the runner.
fn runner(d: &TaskDispatched) -> BackendResult<&ImageRunner> {
    match &d.runner {
        Runner::Docker(r) => Ok(r),
        other => Err(AttemptError::Task(format!(
            "runner type {:?} cannot run on the docker launcher",
            other.backend()
        ))),
    }
}

/// The container for `d` as far as it is known without filling templates: everything
/// [`ContainerSpec::check`] looks at.
fn base_spec(d: &TaskDispatched, launcher: &str) -> BackendResult<ContainerSpec> {
    let r = runner(d)?;
    let task = |m: String| AttemptError::Task(m);
    let working_dir = r.working_dir.as_deref().unwrap_or(DEFAULT_WORKING_DIR);
    let trimmed = working_dir.trim_end_matches('/');
    if !trimmed.starts_with('/')
        || trimmed.split('/').any(|c| c == "." || c == "..")
        || trimmed == OUTPUTS_DIR
    {
        return Err(task(format!(
            "runner.workingDir `{working_dir}` must be an absolute path below `/`, without `.` or `..`, \
             and not {OUTPUTS_DIR}"
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
    if !d.output_files.is_empty() {
        // Output files are stored under <artifact dir>/<job>/<task>/<attempt>/.
        for (what, id) in [("job id", &d.job_id), ("task id", &d.task_id)] {
            ferry_launcher::journal::check_id(id).map_err(|why| {
                task(format!(
                    "{what} {id:?} cannot name the directory output files are stored in: {why}"
                ))
            })?;
        }
    }
    let spec = ContainerSpec {
        attempt: Attempt {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            attempt: d.attempt,
        },
        flow: d.flow_id.clone(),
        namespace: d.namespace.clone(),
        launcher: launcher.to_string(),
        image: r.image.clone(),
        pull: match r.pull_policy.unwrap_or_default() {
            payload::PullPolicy::Always => PullPolicy::Always,
            payload::PullPolicy::Missing => PullPolicy::Missing,
            payload::PullPolicy::Never => PullPolicy::Never,
        },
        command: Vec::new(),
        env: Vec::new(),
        working_dir: Some(trimmed.to_string()),
        user: r.user.clone(),
        network: r.network.clone(),
        mounts: r
            .mounts
            .iter()
            .map(|m| Mount {
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect(),
        cpu: d.resources.cpu,
        memory_bytes,
        gpus,
        volumes: Vec::new(),
    };
    spec.check().map_err(|e| {
        // The spec names fields as the runner does; mounts are runner parameters.
        let m = e.to_string();
        task(if m.starts_with("mounts") || m.starts_with("workingDir") {
            format!("runner.{m}")
        } else {
            m
        })
    })?;
    Ok(spec)
}

#[async_trait]
impl Backend for Docker {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        self.0.shutdown
    }

    fn compute_name(&self, attempt_id: &str) -> String {
        container_name(attempt_id)
    }

    /// The container's id, short as `docker ps` shows it, where the handle has it.
    fn describe(&self, compute: &Compute) -> String {
        match compute.handle_as::<Handle>() {
            Ok(h) if !h.id.is_empty() => h.id.chars().take(12).collect(),
            _ => compute.name.clone(),
        }
    }

    fn check(&self, d: &TaskDispatched) -> BackendResult<()> {
        self.engine()?;
        base_spec(d, &self.0.launcher).map(|_| ())
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let engine = self.engine()?;
        let d = task.dispatch;
        let mut spec = base_spec(d, &self.0.launcher)?;
        let work_dir = spec
            .working_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_WORKING_DIR.into());
        for (i, t) in d.command.iter().enumerate() {
            spec.command
                .push(task.fill(t, &format!("command[{i}]"), &work_dir)?);
        }
        for (name, t) in &d.env {
            spec.env
                .push((name.clone(), task.fill(t, &format!("env.{name}"), &work_dir)?));
        }
        spec.env.extend([
            ("FERRY_JOB_ID".to_string(), d.job_id.clone()),
            ("FERRY_TASK_ID".to_string(), d.task_id.clone()),
            ("FERRY_ATTEMPT_ID".to_string(), d.attempt_id.clone()),
            ("FERRY_WORKING_DIR".to_string(), work_dir.clone()),
            ("FERRY_OUTPUTS".to_string(), OUTPUTS_FILE.to_string()),
            ("FERRY_SUBTASKS".to_string(), SUBTASKS_FILE.to_string()),
        ]);
        let mut inputs = Vec::with_capacity(d.input_files.len());
        for (path, t) in &d.input_files {
            inputs.push(InputFile {
                path: path.clone(),
                contents: task
                    .fill(t, &format!("inputFiles.{path}"), &work_dir)?
                    .into_bytes(),
            });
        }
        // Without input files, run as root, the working directory needs nothing put in it (the
        // engine makes it at start) and the outputs' directory can be a volume of the
        // container's own: nothing is uploaded, which spares the engine mounting the container's
        // filesystem before it starts. Any other container gets both directories uploaded,
        // owned by its user.
        let upload = !inputs.is_empty()
            || spec.user.is_some()
            || spec.pull == PullPolicy::Always
            || !engine
                .image_runs_as_root(&spec.image)
                .await
                .map_err(attempt_error)?;
        if !upload {
            spec.volumes.push(OUTPUTS_DIR.to_string());
        }
        let created = engine.create_or_adopt(&spec).await.map_err(attempt_error)?;
        // A container created but never started (a crash in between, or a redelivery that
        // raced this one) may lack its files: they are put again before the one start. One
        // this call created has not started: it is not looked at again.
        let unstarted = !created.adopted
            || engine.inspect(&created.name).await.map_err(attempt_error)?.state == State::Created;
        if unstarted {
            if upload {
                let dirs: [(&str, &[InputFile]); 2] = [(&work_dir, &inputs), (OUTPUTS_DIR, &[])];
                engine
                    .put_dirs(&created.name, &dirs)
                    .await
                    .map_err(attempt_error)?;
            }
            if created.adopted {
                engine.start(&created.name).await
            } else {
                engine.start_created(&created.name).await
            }
            .map_err(attempt_error)?;
        }
        if created.adopted {
            tracing::info!(container = %created.name, attempt_id = %d.attempt_id, "adopted the attempt's existing container");
        }
        Compute::with_handle(
            reserved.name,
            &Handle {
                id: created.id,
                work_dir,
            },
        )
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        let engine = self.engine()?;
        let Some(found) = engine.find(&reserved.name).await.map_err(attempt_error)? else {
            return Ok(None);
        };
        Compute::with_handle(
            reserved.name.clone(),
            &Handle {
                id: found.id,
                work_dir: found.working_dir,
            },
        )
        .map(Some)
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let found = self.engine()?.find(&compute.name).await.map_err(attempt_error)?;
        Ok(self.state_of(&compute.name, found))
    }

    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let engine = self.engine()?;
        loop {
            match tokio::time::timeout(WAIT_SLICE, engine.wait(&compute.name)).await {
                Ok(Ok(found)) => match self.state_of(&compute.name, Some(found)) {
                    // Waiting ends for a container that was never started: look again.
                    ComputeState::Pending => tokio::time::sleep(Duration::from_secs(1)).await,
                    state => return Ok(state),
                },
                Ok(Err(Error::NotFound { .. })) => return Ok(self.state_of(&compute.name, None)),
                Ok(Err(e)) => {
                    let e = attempt_error(e);
                    if !e.is_transient() {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "waiting for the container failed; looking again");
                    match self.status(compute).await? {
                        ComputeState::Pending | ComputeState::Running => {
                            tokio::time::sleep(Duration::from_secs(1)).await
                        }
                        ended => return Ok(ended),
                    }
                }
                // A long wait: read the status, in case the wait's connection was lost.
                Err(_) => match self.status(compute).await? {
                    ComputeState::Pending | ComputeState::Running => {}
                    ended => return Ok(ended),
                },
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
        let engine = self.engine()?;
        let live = self.live(&compute.name);
        let mut held = live.logs.lock().await;
        let buffer = match held.as_mut() {
            Some(b) if b.serves(from) => b,
            _ => held.insert(LogBuffer::resume(from)),
        };
        let i = index(stream);
        buffer.trim(i, offset(from, i));
        if buffer.available(i) < max_bytes && !buffer.complete {
            let ended = live.ended.load(Ordering::SeqCst);
            buffer.fetch(engine, &compute.name, ended, i, max_bytes).await?;
        }
        Ok(buffer.read(i, from, max_bytes))
    }

    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()> {
        self.engine()?
            .stop(&compute.name, grace)
            .await
            .map_err(attempt_error)?;
        self.mark_ended(&compute.name);
        Ok(())
    }

    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        let engine = self.engine()?;
        let d = task.dispatch;
        let outputs = engine
            .read_file(&compute.name, OUTPUTS_FILE, MAX_OUTPUTS_BYTES)
            .await
            .map_err(attempt_error)?;
        let subtasks = engine
            .read_file(&compute.name, SUBTASKS_FILE, MAX_SUBTASKS_BYTES)
            .await
            .map_err(attempt_error)?;
        if d.output_files.is_empty() {
            return Ok(Collected {
                outputs,
                subtasks,
                files: Vec::new(),
            });
        }
        let handle: Handle = compute.handle_as()?;
        let work_dir = if handle.work_dir.is_empty() {
            engine
                .inspect(&compute.name)
                .await
                .map_err(attempt_error)?
                .working_dir
        } else {
            handle.work_dir
        };
        let dest = self.0.artifact_dir.join(collect::attempt_artifacts(d));
        tokio::fs::create_dir_all(&dest).await.map_err(|e| {
            AttemptError::Platform(format!(
                "cannot create the artifact directory {}: {e}",
                dest.display()
            ))
        })?;
        let collected = engine
            .collect_files(&compute.name, &work_dir, &d.output_files, &dest, self.0.limits)
            .await
            .map_err(attempt_error)?;
        let files = collected.into_output_files()?;
        Ok(Collected {
            outputs,
            subtasks,
            files,
        })
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        self.engine()?
            .remove(&compute.name)
            .await
            .map_err(attempt_error)?;
        self.forget(&compute.name);
        Ok(())
    }

    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let Ok(engine) = &self.0.engine else {
            return Ok(Vec::new());
        };
        let owned = engine.list_owned(&self.0.launcher).await.map_err(attempt_error)?;
        owned
            .into_iter()
            .map(|o| {
                Compute::with_handle(
                    o.name,
                    &Handle {
                        id: o.id,
                        work_dir: String::new(),
                    },
                )
            })
            .collect()
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn offset(p: &LogPosition, i: usize) -> u64 {
    if i == 0 { p.stdout } else { p.stderr }
}

/// A place in a container's log the runtime may journal: the engine's cursor and the bytes of
/// each stream before it. Written into the journal as `{"at": "since:skip", "stdout", "stderr"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    #[serde(with = "cursor_text")]
    at: LogCursor,
    stdout: u64,
    stderr: u64,
}

impl Mark {
    /// Whether a reader at `p` has read everything before this mark.
    fn before(&self, p: &LogPosition) -> bool {
        self.stdout <= p.stdout && self.stderr <= p.stderr
    }
}

mod cursor_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::logs::LogCursor;

    pub fn serialize<S: Serializer>(c: &LogCursor, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(c)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LogCursor, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A container's log as read from the engine and not yet handed to the runtime: both streams,
/// because the engine sends them together, and the marks between its entries.
#[derive(Debug)]
struct LogBuffer {
    /// Where the next read of the engine resumes.
    next: Mark,
    /// Entry boundaries already read, oldest first: places a journal may resume from.
    marks: VecDeque<Mark>,
    /// Each stream's bytes from `start[i]` on.
    bytes: [Vec<u8>; 2],
    start: [u64; 2],
    /// A stream opened once the container had ended was read to its end.
    complete: bool,
    /// The engine's stream this buffer reads from, held between reads.
    follow: Option<Follow>,
    /// No stream is opened again before this (one ended while the container ran).
    reopen_at: Option<Instant>,
}

/// The engine's log of one container from a cursor on, followed as it is written: a task reads
/// the engine's stream into a bounded channel, so that the engine is asked once while the
/// container runs (not at every read, each of which would send again the entries before the
/// cursor's `since`) and a read takes what has come without waiting.
struct Follow {
    entries: tokio::sync::mpsc::Receiver<crate::Result<crate::logs::LogEntry>>,
    reader: tokio::task::AbortHandle,
    /// Opened once the container had ended: the stream's end is the log's end. (A stream
    /// opened before may end when the container stops, but nothing said it was read to the end
    /// then, so it is not taken for the end.)
    after_end: bool,
}

impl Follow {
    fn open(engine: &Engine, name: &str, from: LogCursor, after_end: bool) -> Follow {
        let (tx, entries) = tokio::sync::mpsc::channel(FOLLOW_AHEAD);
        let stream = engine.logs(name, from, true);
        let reader = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(entry) = stream.next().await {
                let failed = entry.is_err();
                if tx.send(entry).await.is_err() || failed {
                    return;
                }
            }
        })
        .abort_handle();
        Follow {
            entries,
            reader,
            after_end,
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("after_end", &self.after_end)
            .finish_non_exhaustive()
    }
}

impl LogBuffer {
    /// A buffer that reads from the mark journaled with `from` (or from the start, when there is
    /// none or it does not fit).
    fn resume(from: &LogPosition) -> LogBuffer {
        let mark = serde_json::from_value::<Mark>(from.cursor.clone())
            .ok()
            .filter(|m| m.before(from))
            .unwrap_or_default();
        LogBuffer {
            next: mark,
            marks: VecDeque::from([mark]),
            bytes: [Vec::new(), Vec::new()],
            start: [mark.stdout, mark.stderr],
            complete: false,
            follow: None,
            reopen_at: None,
        }
    }

    fn end(&self, i: usize) -> u64 {
        self.start[i] + self.bytes[i].len() as u64
    }

    /// Whether `from` lies within what this buffer holds or will read next.
    fn serves(&self, from: &LogPosition) -> bool {
        (0..2).all(|i| self.start[i] <= offset(from, i) && offset(from, i) <= self.end(i))
    }

    /// Forgets stream `i`'s bytes before `at`: the runtime reads forward.
    fn trim(&mut self, i: usize, at: u64) {
        let drop = (at.saturating_sub(self.start[i]) as usize).min(self.bytes[i].len());
        self.bytes[i].drain(..drop);
        self.start[i] += drop as u64;
    }

    fn available(&self, i: usize) -> usize {
        self.bytes[i].len()
    }

    /// Takes entries from the engine until stream `i` has `want` bytes, or, while the container
    /// runs, until no more have come; once it has `ended`, until the end of its log.
    async fn fetch(
        &mut self,
        engine: &Engine,
        name: &str,
        ended: bool,
        i: usize,
        want: usize,
    ) -> BackendResult<()> {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            let follow = match &mut self.follow {
                Some(f) => f,
                None => {
                    if !ended && self.reopen_at.is_some_and(|t| Instant::now() < t) {
                        return Ok(());
                    }
                    self.follow
                        .insert(Follow::open(engine, name, self.next.at, ended))
                }
            };
            let next = if follow.after_end {
                follow.entries.recv().await
            } else {
                match follow.entries.try_recv() {
                    Ok(entry) => Some(entry),
                    Err(TryRecvError::Disconnected) => None,
                    // Ended meanwhile: what is left is read by a stream whose end is the log's.
                    Err(TryRecvError::Empty) if ended => {
                        self.follow = None;
                        continue;
                    }
                    Err(TryRecvError::Empty) => return Ok(()),
                }
            };
            let entry = match next {
                Some(Ok(entry)) => entry,
                None => {
                    let after_end = follow.after_end;
                    self.follow = None;
                    if after_end {
                        self.complete = true;
                        return Ok(());
                    }
                    self.reopen_at = Some(Instant::now() + REOPEN_AFTER);
                    if ended {
                        continue;
                    }
                    return Ok(());
                }
                Some(Err(e)) => {
                    self.follow = None;
                    self.reopen_at = Some(Instant::now() + REOPEN_AFTER);
                    return Err(match e {
                        Error::NotFound { .. } => AttemptError::Platform(format!(
                            "container {name} was removed before its output was read to the end"
                        )),
                        e => attempt_error(e),
                    });
                }
            };
            let s = match entry.stream {
                LogStream::Stdout => 0,
                LogStream::Stderr => 1,
            };
            self.bytes[s].extend_from_slice(&entry.text);
            if !entry.partial {
                self.bytes[s].push(b'\n');
            }
            self.next = Mark {
                at: entry.cursor,
                stdout: self.end(0),
                stderr: self.end(1),
            };
            self.marks.push_back(self.next);
            if self.bytes[i].len() >= want || self.bytes[1 - i].len() >= MAX_HELD {
                return Ok(());
            }
        }
    }

    /// Up to `max` bytes of stream `i` from `from`, with the latest mark a journal may keep with
    /// any offset of this stream up to their end (the other stream's offset as in `from`).
    fn read(&mut self, i: usize, from: &LogPosition, max: usize) -> LogRead {
        let skip = (offset(from, i) - self.start[i]) as usize;
        let bytes: Vec<u8> = self.bytes[i][skip.min(self.bytes[i].len())..]
            .iter()
            .take(max)
            .copied()
            .collect();
        // Marks before the oldest one still usable are of no more use: positions only grow.
        while self.marks.len() > 1 && self.marks[1].before(from) {
            self.marks.pop_front();
        }
        let mark = self.marks.iter().rev().find(|m| m.before(from)).copied();
        let reaches_end = skip + bytes.len() >= self.bytes[i].len();
        LogRead {
            complete: self.complete && reaches_end,
            cursor: mark
                .and_then(|m| serde_json::to_value(m).ok())
                .unwrap_or(serde_json::Value::Null),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(stdout: u64, stderr: u64, mark: Option<Mark>) -> LogPosition {
        LogPosition {
            stdout,
            stderr,
            cursor: mark.map(|m| serde_json::to_value(m).unwrap()).unwrap_or_default(),
        }
    }

    /// Feeds entries as an engine read would.
    fn feed(b: &mut LogBuffer, entries: &[(usize, &str, bool)]) {
        for (s, text, partial) in entries {
            b.bytes[*s].extend_from_slice(text.as_bytes());
            if !partial {
                b.bytes[*s].push(b'\n');
            }
            b.next = Mark {
                at: LogCursor {
                    since: 0,
                    skip: b.next.at.skip + 1,
                },
                stdout: b.end(0),
                stderr: b.end(1),
            };
            b.marks.push_back(b.next);
        }
    }

    #[test]
    fn marks_never_pass_what_the_runtime_has_read() {
        let mut b = LogBuffer::resume(&LogPosition::default());
        feed(
            &mut b,
            &[(0, "out1", false), (1, "err1", false), (0, "out2", false)],
        );
        // Reading stdout from the start: only the start is a safe mark (stderr is at 0).
        let r = b.read(0, &position(0, 0, None), 1024);
        assert_eq!(r.bytes, b"out1\nout2\n");
        let m: Mark = serde_json::from_value(r.cursor).unwrap();
        assert_eq!((m.stdout, m.stderr), (0, 0));
        // With stdout read to its end and stderr at 0, the mark after "out1" is the latest safe one.
        let r = b.read(1, &position(10, 0, None), 1024);
        assert_eq!(r.bytes, b"err1\n");
        let m: Mark = serde_json::from_value(r.cursor).unwrap();
        assert_eq!((m.stdout, m.stderr), (5, 0));
        // Both read to the end: the last mark.
        let r = b.read(0, &position(10, 5, None), 1024);
        assert!(r.bytes.is_empty());
        let m: Mark = serde_json::from_value(r.cursor).unwrap();
        assert_eq!((m.stdout, m.stderr), (10, 5));
        assert!(!r.complete, "the container has not ended");
    }

    #[test]
    fn partial_entries_join_and_a_resume_starts_at_its_mark() {
        let mut b = LogBuffer::resume(&LogPosition::default());
        feed(
            &mut b,
            &[(0, "long ", true), (0, "line", false), (0, "no newline", true)],
        );
        let r = b.read(0, &position(0, 0, None), 1024);
        assert_eq!(r.bytes, b"long line\nno newline");
        let mark = Mark {
            at: LogCursor { since: 7, skip: 2 },
            stdout: 10,
            stderr: 0,
        };
        let resumed = LogBuffer::resume(&position(12, 0, Some(mark)));
        assert_eq!(resumed.next, mark);
        assert_eq!(resumed.start, [10, 0]);
        // A mark beyond the position is not trusted: read from the start.
        let resumed = LogBuffer::resume(&position(3, 0, Some(mark)));
        assert_eq!(resumed.next, Mark::default());
    }

    #[test]
    fn the_journaled_cursor_round_trips() {
        let m = Mark {
            at: LogCursor {
                since: 1_796_540_000,
                skip: 3,
            },
            stdout: 10,
            stderr: 4,
        };
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"at": "1796540000:3", "stdout": 10, "stderr": 4})
        );
        assert_eq!(serde_json::from_value::<Mark>(v).unwrap(), m);
    }

    #[test]
    fn exits_say_what_happened() {
        assert!(exit(0, false, None).succeeded());
        let oom = exit(137, true, None);
        assert_eq!(oom.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(oom.code, Some(137));
        assert!(oom.error.unwrap().contains("resources.memory"));
        assert_eq!(
            exit(3, false, None).error.as_deref(),
            Some("exited with status 3")
        );
    }

    fn dispatch(runner: Runner) -> TaskDispatched {
        serde_json::from_value(serde_json::json!({
            "jobId": "j", "taskId": "t", "attemptId": "a", "attempt": 1,
            "runner": runner, "command": [], "leaseMs": 1000, "readyAtMs": 0,
        }))
        .unwrap()
    }

    #[test]
    fn what_docker_cannot_honour_is_refused_by_field() {
        let ok = ImageRunner::new("busybox");
        assert!(base_spec(&dispatch(Runner::Docker(ok.clone())), "l").is_ok());
        let e = base_spec(&dispatch(Runner::default()), "l").unwrap_err();
        assert!(e.message().contains("\"local\""), "{e}");
        let mut r = ok.clone();
        r.working_dir = Some("work".into());
        let e = base_spec(&dispatch(Runner::Docker(r)), "l").unwrap_err();
        assert!(e.message().starts_with("runner.workingDir"), "{e}");
        let mut r = ok.clone();
        r.mounts = vec![payload::ContainerMount {
            source: "/data".into(),
            target: "data".into(),
            read_only: false,
        }];
        let e = base_spec(&dispatch(Runner::Docker(r)), "l").unwrap_err();
        assert!(e.message().starts_with("runner.mounts"), "{e}");
        let mut d = dispatch(Runner::Docker(ok.clone()));
        d.resources.memory = Some("1Ki".into());
        let e = base_spec(&d, "l").unwrap_err();
        assert!(e.message().starts_with("resources.memory"), "{e}");
        assert_eq!(e.outcome(), payload::Outcome::Failed);
        let mut d = dispatch(Runner::Docker(ok));
        d.flow_id = Some("nightly".into());
        let spec = base_spec(&d, "l").unwrap();
        assert_eq!(spec.labels()[crate::spec::LABEL_FLOW], "nightly");
        assert_eq!(spec.working_dir.as_deref(), Some(DEFAULT_WORKING_DIR));
    }

    #[test]
    fn engine_errors_are_typed_by_fault() {
        let missing = Error::ImageMissing {
            image: "x".into(),
            host: "h".into(),
        };
        assert!(matches!(attempt_error(missing), AttemptError::Task(_)));
        let engine = Error::Engine {
            op: "container create",
            status: 500,
            message: "boom".into(),
        };
        assert!(matches!(attempt_error(engine), AttemptError::Platform(_)));
    }

    #[test]
    fn no_engine_refuses_every_task_with_the_reason() {
        let d = Docker::without_engine("no Docker engine at unix:///x", PathBuf::from("/tmp"));
        let e = d
            .check(&dispatch(Runner::Docker(ImageRunner::new("busybox"))))
            .unwrap_err();
        assert_eq!(e.outcome(), payload::Outcome::Failed);
        assert!(e.message().contains("no Docker engine"), "{e}");
    }

    #[test]
    fn the_compute_is_named_by_its_container_id() {
        let d = Docker::without_engine("no engine", PathBuf::from("/tmp"));
        let id = "4f2a9c0e1b7d5a6f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f";
        let c = Compute::with_handle(
            "ferry-a",
            &Handle {
                id: id.into(),
                work_dir: String::new(),
            },
        )
        .unwrap();
        assert_eq!(d.describe(&c), &id[..12]);
        // Known only by its name (a reservation): named so.
        assert_eq!(d.describe(&Compute::named("ferry-a")), "ferry-a");
    }
}
