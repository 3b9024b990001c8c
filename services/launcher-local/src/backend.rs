//! The `local` backend: each attempt's compute is a process group in a slot's working
//! directory on this machine.
//!
//! Its handle is the slot, the group leader's pid and that process's start time ([`Handle`]);
//! its output goes to two files in the slot, which the runtime reads by byte offset (the log
//! cursor is not used); its compute name is `ferry-<attempt id>`. Processes cannot outlive the
//! launcher usefully (nobody could wait for them), so its shutdown policy is
//! [`ShutdownPolicy::Kill`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{Runner, Stream, TaskDispatched};
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use ferry_launcher::collect;
use tokio::sync::watch;

use crate::contain::Contain;
use crate::resolve::Resolver;
use crate::spawn::{Leader, Spec};
use crate::state::{Handle, Owner, Slots, check_id};
use crate::{BACKEND, prepare, process};

/// The local backend. Cheap to clone: every clone is the same backend.
#[derive(Clone)]
pub(crate) struct Local(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) slots: Slots,
    pub(crate) contain: Contain,
    pub(crate) resolver: Resolver,
    /// The user tasks run as, when not the launcher's.
    pub(crate) owner: Option<Owner>,
    /// The part of the launcher's environment tasks receive, read once: every task's
    /// environment starts from it.
    pub(crate) base_env: Vec<(OsString, OsString)>,
    /// Where output files are copied, as `<job>/<task>/<attempt>/<path>`.
    pub(crate) artifact_dir: PathBuf,
    /// What this run knows of each compute it created or adopted, by name.
    live: Mutex<HashMap<String, Live>>,
}

/// An attempt's processes as this run of the launcher knows them.
struct Live {
    /// How the group leader ended, once it has: set by the task that waits for it. `None` for
    /// processes a previous run started (only their parent could wait for them).
    exit: Option<watch::Receiver<Option<Result<ExitStatus, String>>>>,
    /// The slot's stdout and stderr files, open for reading.
    output: Option<Arc<(File, File)>>,
    /// Every process of the attempt has been stopped: its output files grow no more.
    stopped: bool,
    /// Whether the task printed anything, and may have left an outputs or subtasks file: what
    /// its slot's cleaning can skip.
    printed: bool,
    outputs_file: bool,
}

impl Live {
    fn adopted() -> Self {
        Live {
            exit: None,
            output: None,
            stopped: false,
            printed: true,
            outputs_file: true,
        }
    }
}

impl Local {
    pub(crate) fn new(
        slots: Slots,
        contain: Contain,
        owner: Option<Owner>,
        base_env: Vec<(OsString, OsString)>,
        artifact_dir: PathBuf,
    ) -> Self {
        Local(Arc::new(Inner {
            slots,
            contain,
            resolver: Resolver::new(),
            owner,
            base_env,
            artifact_dir,
            live: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn contain(&self) -> &Contain {
        &self.0.contain
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.0.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Below this much free space, the disk of a slot counts as full.
const DISK_FULL_BYTES: u64 = 64 * 1024;

impl Local {
    /// Why the attempt's output may be cut short, if the disk of its slot is full: the task
    /// writes its output to files there, and a write that fails for want of space fails in
    /// the task (which may then fail, or succeed without its output). Either way it is the
    /// platform's fault, not the task's.
    fn disk_full(&self, compute: &Compute) -> Option<String> {
        let h: Handle = compute.handle_as().ok()?;
        let dir = self.0.slots.dir(h.slot);
        let stat = nix::sys::statvfs::statvfs(dir.root()).ok()?;
        let free = stat.blocks_free() as u64 * stat.fragment_size() as u64;
        (free < DISK_FULL_BYTES).then(|| {
            format!(
                "the attempt's output could not be kept in {}: the disk is full ({free} bytes free); \
                 free space on it (the attempt is retried, its output was cut short)",
                dir.root().display()
            )
        })
    }
}

/// The attempt id a compute is named after.
fn attempt_of(compute: &Compute) -> &str {
    compute.name.strip_prefix("ferry-").unwrap_or(&compute.name)
}

/// What the blocking part of a start hands back.
struct Spawned {
    child: Leader,
    pid: i32,
    start_time: u64,
    output: (File, File),
}

impl Inner {
    /// Prepares the slot and the input files, finds the program and starts it in its own
    /// process group (the spawn waits for the exec). Blocking.
    fn spawn(&self, slot: u32, prepared: prepare::Prepared) -> BackendResult<Spawned> {
        let dir = self.slots.dir(slot);
        let work = dir.work();
        let (out, err) = dir.prepare().map_err(|e| {
            AttemptError::Platform(format!(
                "cannot prepare the working directory {}: {e}",
                work.display()
            ))
        })?;
        prepare::write_inputs(&work, &prepared.inputs, self.owner).map_err(AttemptError::Task)?;
        // A bare name is looked up on the task's PATH here, so that the spawn gets a path (see
        // `resolve`). Not found is the task's fault, like a program that does not exist.
        let task_path = prepared
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let cwd = prepared.cwd.clone().unwrap_or_else(|| work.clone());
        let program = self
            .resolver
            .resolve(&prepared.program, task_path, &cwd)
            .map_err(AttemptError::Task)?;
        let spec = Spec {
            program,
            arg0: prepared.program.into(),
            args: prepared.args.into_iter().map(OsString::from).collect(),
            env: prepared.env,
            cwd,
            stdout: out,
            stderr: err,
            owner: self.owner,
        };
        let (child, in_cgroup) = self.contain.start(slot, &spec)?;
        let Some(pid) = child.id() else {
            return Err(AttemptError::Task(
                "the process ended before its id could be read".into(),
            ));
        };
        if !in_cgroup && let Err(e) = self.contain.adopt(slot, pid) {
            tracing::warn!(pid, error = %e, "cannot move the task into its slot's cgroup; processes that leave its group may outlive it");
        }
        let Spec {
            stdout: out,
            stderr: err,
            ..
        } = spec;
        Ok(Spawned {
            child,
            pid,
            start_time: process::start_time(pid).unwrap_or(0),
            output: (out, err),
        })
    }
}

impl Local {
    /// Starts the attempt's process like [`Backend::create`], in `cwd` rather than the
    /// attempt's working directory when given (an agent's registered `workingDir`).
    pub(crate) async fn create_in(
        &self,
        task: Task<'_>,
        reserved: Compute,
        cwd: Option<PathBuf>,
    ) -> BackendResult<Compute> {
        let mut handle: Handle = reserved.handle_as()?;
        let dir = self.0.slots.dir(handle.slot);
        let work = dir.work();
        let mut prepared = prepare::prepare(
            task,
            &work.to_string_lossy(),
            &dir.outputs().to_string_lossy(),
            &dir.subtasks().to_string_lossy(),
            self.0.base_env.iter().cloned(),
        )?;
        prepared.cwd = cwd;
        let (inner, slot) = (self.0.clone(), handle.slot);
        let spawned = tokio::task::spawn_blocking(move || inner.spawn(slot, prepared))
            .await
            .unwrap_or_else(|e| {
                Err(AttemptError::Platform(format!(
                    "starting the attempt failed: {e}"
                )))
            })?;
        let Spawned {
            mut child,
            pid,
            start_time,
            output,
        } = spawned;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.map_err(|e| e.to_string());
            let _ = tx.send(Some(status));
        });
        self.live().insert(
            reserved.name.clone(),
            Live {
                exit: Some(rx),
                output: Some(Arc::new(output)),
                stopped: false,
                printed: false,
                outputs_file: true,
            },
        );
        handle.pid = pid;
        handle.start_time = start_time;
        Compute::with_handle(reserved.name, &handle)
    }
}

#[async_trait]
impl Backend for Local {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        ShutdownPolicy::Kill
    }

    fn check(&self, d: &TaskDispatched) -> BackendResult<()> {
        if !matches!(d.runner, Runner::Local(_)) {
            return Err(AttemptError::Task(format!(
                "runner type {:?} cannot run on the local launcher",
                d.runner.backend()
            )));
        }
        match d.resources.gpus() {
            Err(why) => return Err(AttemptError::Task(format!("resources.{why}"))),
            Ok(Some(g)) => {
                return Err(AttemptError::Task(format!(
                    "resources.gpu: the local launcher cannot give a task GPUs (this one asks for {}); \
                     remove the request, or run the task on a runner that schedules GPUs",
                    g.count
                )));
            }
            Ok(None) => {}
        }
        if !d.output_files.is_empty() {
            // Output files are stored under <artifact_dir>/<job>/<task>/<attempt>/.
            for (what, id) in [("job id", &d.job_id), ("task id", &d.task_id)] {
                check_id(id).map_err(|why| {
                    AttemptError::Task(format!(
                        "{what} {id:?} cannot name the directory output files are stored in: {why}"
                    ))
                })?;
            }
        }
        Ok(())
    }

    async fn reserve(&self, task: Task<'_>) -> BackendResult<Compute> {
        let slot = self.0.slots.take();
        let handle = Handle {
            slot,
            pid: 0,
            start_time: 0,
        };
        Compute::with_handle(self.compute_name(task.attempt_id()), &handle)
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        self.create_in(task, reserved, None).await
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        // The slot named in the journal holds the attempt's files whatever became of its
        // processes: the compute is there until released. `status` says whether it runs.
        reserved.handle_as::<Handle>()?;
        self.live()
            .entry(reserved.name.clone())
            .or_insert_with(Live::adopted);
        Ok(Some(reserved.clone()))
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let exit = self.live().get(&compute.name).and_then(|l| l.exit.clone());
        if let Some(exit) = exit {
            let ended = exit.borrow().clone();
            return Ok(match ended {
                None => ComputeState::Running,
                Some(Ok(status)) => match self.disk_full(compute) {
                    Some(full) => ComputeState::Vanished(full),
                    None => ComputeState::Exited(describe(status)),
                },
                Some(Err(e)) => ComputeState::Vanished(format!("cannot wait for the process: {e}")),
            });
        }
        // Processes a previous run started.
        let h: Handle = compute.handle_as()?;
        if h.pid == 0 {
            let found = process::processes_with_env("FERRY_ATTEMPT_ID", attempt_of(compute));
            return Ok(if found.is_empty() {
                ComputeState::Vanished("its processes had not started".into())
            } else {
                ComputeState::Running
            });
        }
        // The pid is ours only if it still names the process we started: same start time.
        Ok(
            if h.start_time != 0 && process::start_time(h.pid) == Some(h.start_time) {
                ComputeState::Running
            } else {
                ComputeState::Vanished("its process had already ended".into())
            },
        )
    }

    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let exit = self.live().get(&compute.name).and_then(|l| l.exit.clone());
        match exit {
            Some(mut exit) => {
                // The sender lives until it has sent: an error means it was dropped with the
                // runtime, and then nothing waits for this any more.
                let _ = exit.wait_for(Option::is_some).await;
                self.status(compute).await
            }
            None => loop {
                match self.status(compute).await? {
                    ComputeState::Running | ComputeState::Pending => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    ended => return Ok(ended),
                }
            },
        }
    }

    async fn read_logs(
        &self,
        compute: &Compute,
        stream: Stream,
        from: &LogPosition,
        max_bytes: usize,
    ) -> BackendResult<LogRead> {
        let (output, stopped) = {
            let live = self.live();
            let l = live.get(&compute.name);
            (l.and_then(|l| l.output.clone()), l.is_some_and(|l| l.stopped))
        };
        let output = match output {
            Some(o) => o,
            None => {
                // A previous run's attempt: its files are in the slot.
                let h: Handle = compute.handle_as()?;
                let dir = self.0.slots.dir(h.slot);
                let files = dir.open_output().map_err(|e| {
                    AttemptError::Platform(format!(
                        "cannot open the attempt's output files in {}: {e}",
                        dir.root().display()
                    ))
                })?;
                let files = Arc::new(files);
                if let Some(l) = self.live().get_mut(&compute.name) {
                    l.output = Some(files.clone());
                }
                files
            }
        };
        let (file, pos) = match stream {
            Stream::Stdout => (&output.0, from.stdout),
            Stream::Stderr => (&output.1, from.stderr),
        };
        let io = |e: std::io::Error| AttemptError::Platform(format!("cannot read the attempt's output: {e}"));
        // Most tasks print little or nothing: the buffer is sized to what is there.
        let size = file.metadata().map_err(io)?.len();
        let mut bytes = Vec::new();
        if size > pos {
            bytes.resize(((size - pos) as usize).min(max_bytes), 0);
            let n = read_at(file, &mut bytes, pos).map_err(io)?;
            bytes.truncate(n);
        }
        if !bytes.is_empty()
            && let Some(l) = self.live().get_mut(&compute.name)
        {
            l.printed = true;
        }
        Ok(LogRead {
            complete: stopped && bytes.len() < max_bytes,
            bytes,
            cursor: serde_json::Value::Null,
        })
    }

    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()> {
        let h: Handle = compute.handle_as()?;
        let attempt = attempt_of(compute);
        let ours = self.live().get(&compute.name).is_some_and(|l| l.exit.is_some());
        let contain = &self.0.contain;
        if ours {
            // Nothing of the task outlives it: not its process group, nor what left the group.
            contain.stop(h.slot, attempt, Some(h.pid), grace).await;
        } else {
            if h.pid == 0 {
                // Killed while starting it: its processes, if the spawn happened, are found by
                // the attempt id in their environment.
                let pids = process::processes_with_env("FERRY_ATTEMPT_ID", attempt);
                let mut groups: Vec<i32> = pids.iter().filter_map(|&p| process::group_of(p)).collect();
                groups.sort_unstable();
                groups.dedup();
                for pgid in groups {
                    tracing::warn!(
                        pgid,
                        "stopping the process group of an attempt started by a previous run"
                    );
                    process::stop_group(pgid, grace).await;
                }
            } else if h.start_time != 0 && process::start_time(h.pid) == Some(h.start_time) {
                tracing::warn!(
                    pid = h.pid,
                    "stopping the process group of an attempt from a previous run"
                );
                process::stop_group(h.pid, grace).await;
            }
            // Whatever left the attempt's process group: found in the slot's cgroup, or by the
            // attempt's id.
            contain.stop(h.slot, attempt, None, grace).await;
        }
        self.live()
            .entry(compute.name.clone())
            .or_insert_with(Live::adopted)
            .stopped = true;
        Ok(())
    }

    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        let h: Handle = compute.handle_as()?;
        let d = task.dispatch;
        let dir = self.0.slots.dir(h.slot);
        let dest = self.0.artifact_dir.join(collect::attempt_artifacts(d));
        let patterns = d.output_files.clone();
        let gather = move || {
            let outputs = collect::read_outputs_file(&dir.outputs())?;
            let subtasks = collect::read_subtasks_file(&dir.subtasks())?;
            let files = collect::collect_files(&dir.work(), &patterns, &dest)?;
            Ok::<_, String>((outputs, subtasks, files))
        };
        // Without output files this is one `stat` (and a small read when there are outputs):
        // not worth a hop to a blocking thread. Copying files is.
        let collected = if d.output_files.is_empty() {
            gather()
        } else {
            tokio::task::spawn_blocking(gather)
                .await
                .map_err(|e| AttemptError::Platform(format!("collecting outputs failed: {e}")))?
        }
        .map_err(AttemptError::Task)?;
        let (outputs, subtasks, files) = collected;
        if outputs.is_none()
            && subtasks.is_none()
            && let Some(l) = self.live().get_mut(&compute.name)
        {
            l.outputs_file = false;
        }
        Ok(Collected {
            outputs,
            subtasks,
            files,
        })
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        let h: Handle = compute.handle_as()?;
        let (printed, outputs_file) = match self.live().remove(&compute.name) {
            Some(l) => (l.printed, l.outputs_file),
            None => (true, true),
        };
        let inner = self.0.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let dir = inner.slots.dir(h.slot);
            match dir.clean_after(printed, outputs_file) {
                Ok(()) => inner.slots.give_back(h.slot),
                Err(e) => tracing::warn!(
                    slot = %dir.root().display(),
                    error = %e,
                    "cannot empty the attempt's slot; it is not used again"
                ),
            }
        })
        .await;
        Ok(())
    }

    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        // Nothing local exists unrecorded: every slot's reservation is journaled before its
        // process is spawned, and what a previous run left in a slot the journal does not hold
        // is ended when the slots are opened (`Contain::clear_idle`, `Slots::open`).
        Ok(Vec::new())
    }
}

/// How a process ended, as the runtime reports it.
fn describe(status: ExitStatus) -> Exit {
    let (code, error) = process::describe_exit(status);
    Exit {
        code,
        error,
        reason: None,
    }
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
