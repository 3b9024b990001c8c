//! The local launcher's slots: reusable directories attempts borrow for their files.
//!
//! ```text
//! <data_dir>/slots/<n>/work     the working directory of the attempt holding slot n
//! <data_dir>/slots/<n>/outputs.json   $FERRY_OUTPUTS, outside work/ so that outputFiles globs never match it
//! <data_dir>/slots/<n>/subtasks.json  $FERRY_SUBTASKS, beside it
//! <data_dir>/slots/<n>/stdout   the task's standard output, as written
//! <data_dir>/slots/<n>/stderr   the task's standard error, as written
//! ```
//!
//! Slots are reused: an attempt's working directory is emptied and its output files truncated
//! rather than created and removed, so that a short task costs no inode allocation at all. The
//! task writes its output to files, not pipes: a launcher killed while the task runs loses no
//! line, because the next run reads the rest of the files from the last recorded extent.
//!
//! The journal is the runtime's (`ferry_launcher::journal`); [`RunningRecord`], [`LogMark`] and
//! [`Entry`] are its records with the local backend's handle and log position spelled out.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_event::payload::TaskFinished;
use ferry_launcher::backend::{Compute, LogPosition, default_compute_name};
use ferry_launcher::journal;
pub use ferry_launcher::journal::{DONE_RETAINED, DONE_RETENTION_MS, Journal, Open, Status, check_id};
use serde::{Deserialize, Serialize};

/// The local backend's handle on an attempt's processes, as the journal keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handle {
    /// The slot holding the attempt's files.
    pub slot: u32,
    /// The process group leader's pid, which is also the group id; 0 while it is being
    /// started (the processes are then found by their `FERRY_ATTEMPT_ID`).
    pub pid: i32,
    /// The leader's start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot):
    /// a pid reused by another process has a different one.
    pub start_time: u64,
}

/// A journal's running record of a local attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRecord {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub attempt: u32,
    /// The slot holding the attempt's files.
    pub slot: u32,
    /// See [`Handle::pid`].
    pub pid: i32,
    /// See [`Handle::start_time`].
    pub start_time: u64,
    pub started_at_ms: i64,
}

impl RunningRecord {
    /// The local view of a journal's running record; `None` when its handle is not a local
    /// one.
    pub fn from_journal(r: &journal::RunningRecord) -> Option<Self> {
        let h: Handle = r.compute.handle_as().ok()?;
        Some(RunningRecord {
            job_id: r.job_id.clone(),
            task_id: r.task_id.clone(),
            attempt_id: r.attempt_id.clone(),
            attempt: r.attempt,
            slot: h.slot,
            pid: h.pid,
            start_time: h.start_time,
            started_at_ms: r.started_at_ms,
        })
    }

    pub fn handle(&self) -> Handle {
        Handle {
            slot: self.slot,
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

impl From<RunningRecord> for journal::RunningRecord {
    fn from(r: RunningRecord) -> Self {
        let handle = r.handle();
        journal::RunningRecord {
            compute: Compute {
                name: default_compute_name(&r.attempt_id),
                handle: serde_json::json!(handle),
            },
            created: r.pid != 0,
            job_id: r.job_id,
            task_id: r.task_id,
            attempt_id: r.attempt_id,
            attempt: r.attempt,
            started_at_ms: r.started_at_ms,
            reserved_at_ms: 0,
            output_files: Vec::new(),
            lease_ms: None,
            timeout_ms: None,
            ready_at_ms: 0,
            namespace: None,
            flow_id: None,
        }
    }
}

/// How far a local attempt's output was turned into log lines: the next line's number and the
/// byte offsets in the stdout and stderr files where the next line starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogMark {
    pub seq: u64,
    pub out: u64,
    pub err: u64,
}

impl From<LogMark> for journal::LogMark {
    fn from(m: LogMark) -> Self {
        journal::LogMark {
            seq: m.seq,
            position: LogPosition {
                stdout: m.out,
                stderr: m.err,
                cursor: serde_json::Value::Null,
            },
        }
    }
}

impl From<&journal::LogMark> for LogMark {
    fn from(m: &journal::LogMark) -> Self {
        LogMark {
            seq: m.seq,
            out: m.position.stdout,
            err: m.position.stderr,
        }
    }
}

/// A journal record of a local attempt (see [`journal::Entry`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Cancelled { reason: String },
    Running(RunningRecord),
    Logs(LogMark),
    Reported { report: Box<TaskFinished> },
    Done,
}

impl From<Entry> for journal::Entry {
    fn from(e: Entry) -> Self {
        match e {
            Entry::Cancelled { reason } => journal::Entry::Cancelled { reason },
            Entry::Running(r) => journal::Entry::Running(r.into()),
            Entry::Logs(m) => journal::Entry::Logs(m.into()),
            Entry::Reported { report } => journal::Entry::Reported {
                report,
                release: None,
            },
            Entry::Done => journal::Entry::Done,
        }
    }
}

/// The reusable directories attempts keep their files in.
#[derive(Debug)]
pub struct Slots {
    root: PathBuf,
    owner: Option<Owner>,
    free: Mutex<(Vec<u32>, u32)>,
}

/// The user tasks run as, when not the launcher's: it owns each working directory and outputs
/// file, and may pass through (not list) the directories above them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Creates `path` (and what is missing above it) as a directory of mode `mode`, exactly,
/// whatever the umask; an existing directory gets `mode` too.
pub fn make_private_dir(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl Slots {
    /// Opens `<data_dir>/slots`. Slots in `busy` belong to attempts a previous run left behind;
    /// every other slot is emptied and becomes free.
    /// Tasks run as `owner` when given (see [`Owner`]).
    pub fn open(data_dir: &Path, busy: &[u32], owner: Option<Owner>) -> io::Result<Slots> {
        let root = data_dir.join("slots");
        make_private_dir(&root, dir_mode(owner))?;
        let mut free = Vec::new();
        let mut next = 0;
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            next = next.max(n + 1);
            if !busy.contains(&n) {
                match SlotDir::new(&root, n, owner).clean() {
                    Ok(()) => free.push(n),
                    Err(e) => tracing::warn!(
                        slot = %SlotDir::new(&root, n, owner).root().display(),
                        error = %e,
                        "cannot empty a slot left by a previous run; it is not used"
                    ),
                }
            }
        }
        for &n in busy {
            next = next.max(n + 1);
        }
        // Lowest first: the same few directories stay warm.
        free.sort_unstable_by(|a, b| b.cmp(a));
        Ok(Slots {
            root,
            owner,
            free: Mutex::new((free, next)),
        })
    }

    /// Borrows a free slot (a new one when none is free).
    pub fn take(&self) -> u32 {
        let mut guard = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let (free, next) = &mut *guard;
        free.pop().unwrap_or_else(|| {
            *next += 1;
            *next - 1
        })
    }

    /// Returns a slot whose files are no longer needed. Its working directory must have been
    /// emptied ([`SlotDir::clean`]). A slot already free is not added twice.
    pub fn give_back(&self, n: u32) {
        let mut guard = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if !guard.0.contains(&n) {
            guard.0.push(n);
        }
    }

    pub fn dir(&self, n: u32) -> SlotDir {
        SlotDir::new(&self.root, n, self.owner)
    }
}

/// The mode of the directories above working directories: private to the launcher's user, or
/// passable (not listable) by others when tasks run as another user.
fn dir_mode(owner: Option<Owner>) -> u32 {
    if owner.is_some() { 0o711 } else { 0o700 }
}

/// The paths of one slot.
#[derive(Debug, Clone)]
pub struct SlotDir {
    root: PathBuf,
    owner: Option<Owner>,
}

impl SlotDir {
    /// Slot `n` of the launcher whose data directory is `data_dir`.
    pub fn at(data_dir: &Path, n: u32) -> Self {
        SlotDir::new(&data_dir.join("slots"), n, None)
    }

    fn new(slots: &Path, n: u32, owner: Option<Owner>) -> Self {
        SlotDir {
            root: slots.join(n.to_string()),
            owner,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    pub fn outputs(&self) -> PathBuf {
        self.root.join("outputs.json")
    }

    pub fn subtasks(&self) -> PathBuf {
        self.root.join("subtasks.json")
    }

    pub fn stdout(&self) -> PathBuf {
        self.root.join("stdout")
    }

    pub fn stderr(&self) -> PathBuf {
        self.root.join("stderr")
    }

    /// Makes a free slot ready for an attempt: empty stdout and stderr files, returned open for
    /// the task to write (and the launcher to read). A free slot's working directory is empty
    /// and it has no outputs file: [`Slots::open`] and [`Self::clean`] saw to it, so this is two
    /// `open`s and a `stat` (and the directories, the first time a slot is used). When tasks run
    /// as another user, the working directory is theirs and an empty outputs file is made for
    /// them, and an empty subtasks file (they cannot create files beside their working directory).
    pub fn prepare(&self) -> io::Result<(File, File)> {
        let out = match open_private(&self.stdout(), true) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_private_dir(&self.root, dir_mode(self.owner))?;
                open_private(&self.stdout(), true)?
            }
            Err(e) => return Err(e),
        };
        let work = self.work();
        match std::fs::symlink_metadata(&work) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                // Not a directory (a task replaced it): the link itself goes, never its target.
                std::fs::remove_file(&work)?;
                self.make_work()?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.make_work()?,
            Err(e) => return Err(e),
        }
        if let Some(owner) = self.owner {
            for path in [self.outputs(), self.subtasks()] {
                remove_file_if_exists(&path)?;
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(path)?;
                std::os::unix::fs::fchown(&f, Some(owner.uid), Some(owner.gid))?;
            }
        }
        Ok((out, open_private(&self.stderr(), true)?))
    }

    /// Creates the working directory, private to whoever runs the tasks.
    fn make_work(&self) -> io::Result<()> {
        let work = self.work();
        make_private_dir(&work, 0o700)?;
        if let Some(owner) = self.owner {
            std::os::unix::fs::lchown(&work, Some(owner.uid), Some(owner.gid))?;
        }
        Ok(())
    }

    /// Opens the output files a previous run's task wrote, for reading.
    pub fn open_output(&self) -> io::Result<(File, File)> {
        let open = |path: PathBuf| match open_private(&path, false) {
            Ok(f) => Ok(f),
            // Never written: read as empty.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_private_dir(&self.root, dir_mode(self.owner))?;
                open_private(&path, false)
            }
            Err(e) => Err(e),
        };
        Ok((open(self.stdout())?, open(self.stderr())?))
    }

    /// Empties the working directory and the output files, and removes the outputs file, so
    /// that nothing of the attempt takes disk space once it is reported.
    pub fn clean(&self) -> io::Result<()> {
        self.clean_after(true, true)
    }

    /// [`Self::clean`], skipping what is known not to be there: output in the stdout and
    /// stderr files, an outputs or subtasks file.
    ///
    /// Every process of the attempt must have ended (the launcher stops them all first): what
    /// is removed is then what is there. Symbolic links a task left are removed, never
    /// followed, wherever they are: in the working directory, or in place of it or of the slot's
    /// files.
    pub fn clean_after(&self, printed: bool, outputs_file: bool) -> io::Result<()> {
        let work = self.work();
        match std::fs::symlink_metadata(&work) {
            Ok(m) if m.is_dir() => empty_dir(&work)?,
            Ok(_) => std::fs::remove_file(&work)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if outputs_file || self.owner.is_some() {
            remove_file_if_exists(&self.outputs())?;
            remove_file_if_exists(&self.subtasks())?;
        }
        if printed {
            for path in [self.stdout(), self.stderr()] {
                match OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // A link in place of the file: removed, and made again at the next start.
                    Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => remove_file_if_exists(&path)?,
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// Opens a file of the slot for reading and writing, creating it with mode 0600, never through
/// a symbolic link (one in its place is removed, and the file made anew).
fn open_private(path: &Path, truncate: bool) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Removes everything inside `dir`, keeping `dir`. An empty directory costs one read. Nothing
/// is followed: a symbolic link is removed as itself (`remove_dir_all` does not follow links).
fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if std::fs::remove_dir_all(&path).is_err() {
                // A task may leave directories without write permission: restore it, retry.
                make_writable(&path);
                std::fs::remove_dir_all(&path)?;
            }
        } else {
            remove_file_if_exists(&path)?;
        }
    }
    Ok(())
}

/// Gives the owner full permissions on every directory under (and including) `dir`; links
/// are left alone.
fn make_writable(dir: &Path) {
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn slots_are_reused_and_come_back_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let slots = Slots::open(tmp.path(), &[], None).unwrap();
        let n = slots.take();
        let dir = slots.dir(n);
        let (mut out, _err) = dir.prepare().unwrap();
        out.write_all(b"hello\n").unwrap();
        std::fs::create_dir_all(dir.work().join("sub/deeper")).unwrap();
        std::fs::write(dir.work().join("sub/deeper/f"), "x").unwrap();
        std::fs::write(dir.outputs(), "{}").unwrap();
        std::fs::write(dir.subtasks(), "[]").unwrap();
        dir.clean().unwrap();
        slots.give_back(n);
        assert_eq!(slots.take(), n, "a free slot is reused");
        assert_eq!(std::fs::read_dir(dir.work()).unwrap().count(), 0);
        assert!(!dir.outputs().exists());
        assert!(
            !dir.subtasks().exists(),
            "a reused slot holds no earlier attempt's subtasks"
        );
        assert_eq!(std::fs::metadata(dir.stdout()).unwrap().len(), 0);
        assert_ne!(slots.take(), n, "a busy slot is not handed out twice");

        // On a new start, slots of attempts left behind stay busy; the others are cleaned.
        std::fs::write(slots.dir(n).work().join("left"), "x").unwrap();
        let again = Slots::open(tmp.path(), &[n], None).unwrap();
        let other = again.take();
        assert_ne!(other, n);
        assert!(slots.dir(n).work().join("left").exists());
    }
}
