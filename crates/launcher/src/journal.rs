//! The launcher's journal: what happened to each attempt, one JSON record per line.
//!
//! ```text
//! <data_dir>/journal            {"journal":3}, then one JSON record per line, appended as attempts move on
//! ```
//!
//! Each step of an attempt is one line appended to the journal: `cancelled` (a cancel came
//! before the dispatch), `running` (written with the compute's reservation before it is
//! created, then again with the backend's handle once it is), `logs` (the extent of the next
//! batch of log lines, written before it is published), `reported` (the report, written before
//! it is published) and `done` (the broker confirmed the report; a later dispatch of the attempt
//! is a duplicate). The journal is read once at start into memory, where every later question
//! is answered without touching the disk, and is rewritten with only what still matters when it
//! has grown.
//!
//! What a backend needs to find its compute and resume its logs (its
//! [`Compute::handle`](crate::backend::Compute) and [`LogPosition::cursor`]) is journaled as the
//! backend gives it, as JSON the journal does not look into.
//!
//! The first line names the format's [`VERSION`]. A journal without it was written before the
//! launcher runtime existed, by the local launcher (version 1: a running record held the
//! slot, pid and start time of a process, a log mark the offsets in its stdout and stderr); it
//! is read as the local backend's handles and positions, and rewritten in the current version
//! when the launcher opens it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_event::payload::TaskFinished;
use serde::{Deserialize, Serialize};

use crate::backend::{Compute, LogPosition};

/// The format written; see the module's text.
pub const VERSION: u32 = 3;

/// How long a finished attempt is remembered, so that a late duplicate of its dispatch is
/// recognised and not run again.
pub const DONE_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// At most this many finished attempts are remembered (the most recent), whatever their age:
/// about 100 bytes of memory each. Duplicates of a dispatch come from redelivery after a crash,
/// seconds or minutes later, not from hundreds of thousands of attempts ago.
pub const DONE_RETAINED: usize = 200_000;
/// The journal is rewritten when it has grown by this much and by four times its size after
/// the last rewrite.
const COMPACT_MIN_BYTES: u64 = 8 * 1024 * 1024;

/// What the launcher records of an attempt whose compute is being created or runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningRecord {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub attempt: u32,
    /// The compute: its name and the backend's handle (the reservation alone while it is being
    /// created).
    pub compute: Compute,
    /// Whether the backend created it: false for the reservation written before the create.
    #[serde(default)]
    pub created: bool,
    /// When it started; 0 while it is being created.
    pub started_at_ms: i64,
    /// When its compute was asked for (the reservation recorded): where the time it held
    /// compute starts. 0 in records written before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reserved_at_ms: i64,
    /// The dispatch's `outputFiles`: what is collected from compute adopted after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<String>,
    /// The dispatch's lease: compute adopted after a restart is heartbeaten within it.
    /// Absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// The dispatch's timeout, from `startedAtMs`: enforced on compute adopted after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The dispatch's `readyAtMs`, for the `task.started` of queued compute adopted before it
    /// ran. 0 in records written before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ready_at_ms: i64,
    /// The dispatch's namespace and flow id: the compute-seconds metric's labels when the
    /// report is recorded, after a restart too. Absent in records written before they were
    /// kept, and for jobs without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
}

impl RunningRecord {
    /// The record of `d`'s attempt once `compute` is reserved for it (not created yet), at
    /// `reserved_at_ms`.
    pub fn reserved(d: &ferry_event::payload::TaskDispatched, compute: Compute, reserved_at_ms: i64) -> Self {
        RunningRecord {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            attempt: d.attempt,
            compute,
            created: false,
            started_at_ms: 0,
            reserved_at_ms,
            output_files: d.output_files.clone(),
            lease_ms: Some(d.lease_ms),
            timeout_ms: d.timeout_ms,
            ready_at_ms: d.ready_at_ms,
            namespace: d.namespace.clone(),
            flow_id: d.flow_id.clone(),
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// How far an attempt's output was turned into log lines: the next line's number, and the
/// position in the output where the next line starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogMark {
    pub seq: u64,
    #[serde(flatten)]
    pub position: LogPosition,
}

/// One journal record.
// Entries are made one at a time to be written, and the running record is the common one:
// boxing it would allocate for most entries to save stack space in few.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Entry {
    /// A `task.cancel` arrived before the dispatch.
    Cancelled { reason: String },
    /// The compute is being created (its reservation) or runs under this launcher.
    Running(RunningRecord),
    /// The lines up to this mark are numbered and about to be published. Output before the
    /// previous mark was published.
    Logs(LogMark),
    /// The `task.finished` payload, written before it is published, with the compute still to
    /// release after it (absent in records written before it was kept).
    Reported {
        report: Box<TaskFinished>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<Compute>,
    },
    /// The compute of a reported attempt was released.
    Released,
    /// The report was published.
    Done,
}

#[derive(Debug, Deserialize)]
struct Line {
    id: String,
    at: i64,
    #[serde(flatten)]
    entry: Entry,
}

#[derive(Serialize)]
struct LineRef<'a> {
    id: &'a str,
    at: i64,
    #[serde(flatten)]
    entry: &'a Entry,
}

/// Where an attempt stands.
// Answered by value, one at a time, and held briefly: boxing the running record would buy
// nothing but an allocation per lookup.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Nothing recorded.
    Fresh,
    /// Cancelled before its dispatch arrived; holds the reason.
    Tombstone(String),
    /// Its compute is being created, runs, or ran without being reported.
    Running(RunningRecord),
    /// Its report was written but maybe not published.
    ResultPending(Box<TaskFinished>),
    /// Reported.
    Finished,
}

/// An attempt that is not finished, as the journal knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub status: Status,
    /// The last two log marks: lines before `published` were confirmed; those between it and
    /// `numbered` may or may not have been.
    pub published: LogMark,
    pub numbered: LogMark,
    /// The compute of a reported attempt not known to be released yet: a launcher killed
    /// between recording the report and releasing it releases it on its next start.
    pub release: Option<Compute>,
    at: i64,
}

struct Inner {
    file: File,
    open: HashMap<String, Open>,
    /// Finished attempts and when they finished.
    done: HashMap<Box<str>, i64>,
    size: u64,
    compact_at: u64,
}

/// The journal of attempts: appended on every step, held in memory.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({})", self.path.display())
    }
}

impl Journal {
    /// Reads `<data_dir>/journal` (creating it), forgets finished attempts older than
    /// [`DONE_RETENTION_MS`] and rewrites it with what is left.
    pub fn open(data_dir: &Path) -> io::Result<Journal> {
        let path = data_dir.join("journal");
        let mut open = HashMap::new();
        let mut done = HashMap::new();
        match File::open(&path) {
            Ok(f) => replay(&path, io::BufReader::new(f), &mut open, &mut done)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        forget_old(&mut done);
        let now = ferry_event::now_ms();
        // A cancel whose dispatch never came is forgotten like a finished attempt.
        open.retain(|_, o| !matches!(o.status, Status::Tombstone(_)) || now - o.at < DONE_RETENTION_MS);
        let (file, size) = rewrite(&path, &open, &done)?;
        Ok(Journal {
            path,
            inner: Mutex::new(Inner {
                file,
                open,
                done,
                size,
                compact_at: compact_threshold(size),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity of the launcher that keeps this journal: made once, kept in `launcher-id`
    /// beside it, so that a launcher restarted on the same journal is the same launcher (the
    /// scheduler accepts an attempt's reports only from the launcher that took it up).
    pub fn identity(&self) -> io::Result<String> {
        let path = self.path.with_file_name("launcher-id");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim();
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if ok {
                    return Ok(id.to_string());
                }
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold a launcher identity (1 to 64 letters, digits or `-`); remove it to make a new one",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = ferry_event::new_id();
                write_private(&path, id.as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps as they were before the record that
        // failed: still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where `id` stands.
    pub fn status(&self, id: &str) -> Status {
        let inner = self.lock();
        if let Some(o) = inner.open.get(id) {
            return o.status.clone();
        }
        if inner.done.contains_key(id) {
            return Status::Finished;
        }
        Status::Fresh
    }

    /// Every attempt that is not finished, as recorded (what a previous run left behind).
    pub fn unfinished(&self) -> Vec<(String, Open)> {
        let inner = self.lock();
        let mut all: Vec<_> = inner.open.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The log marks of `id`: (published, numbered).
    pub fn log_marks(&self, id: &str) -> (LogMark, LogMark) {
        let inner = self.lock();
        inner
            .open
            .get(id)
            .map(|o| (o.published.clone(), o.numbered.clone()))
            .unwrap_or_default()
    }

    /// Appends a record for `id`. The record is in the file (the page cache: it survives the
    /// launcher, not the machine) when this returns.
    pub fn record(&self, id: &str, entry: impl Into<Entry>) -> io::Result<()> {
        let entry = entry.into();
        let at = ferry_event::now_ms();
        let mut bytes = serde_json::to_vec(&LineRef {
            id,
            at,
            entry: &entry,
        })
        .map_err(io::Error::other)?;
        bytes.push(b'\n');
        let mut inner = self.lock();
        if let Err(e) = inner.file.write_all(&bytes) {
            // Cut off what part of the record was written (a full disk, say), so that the next
            // record does not continue a broken line.
            let size = inner.size;
            let _ = inner.file.set_len(size);
            return Err(e);
        }
        inner.size += bytes.len() as u64;
        let inner = &mut *inner;
        apply(&mut inner.open, &mut inner.done, id.to_string(), at, entry);
        if inner.size >= inner.compact_at {
            // The record is in: a rewrite that fails is tried again once the journal has grown
            // some more, and the journal stays as it was.
            forget_old(&mut inner.done);
            match rewrite(&self.path, &inner.open, &inner.done) {
                Ok((file, size)) => {
                    inner.file = file;
                    inner.size = size;
                    inner.compact_at = compact_threshold(size);
                }
                Err(e) => {
                    tracing::warn!(journal = %self.path.display(), error = %e, "cannot rewrite the journal; it keeps growing for now");
                    inner.compact_at = compact_threshold(inner.size);
                }
            }
        }
        Ok(())
    }
}

/// Forgets finished attempts older than [`DONE_RETENTION_MS`], and the oldest beyond
/// [`DONE_RETAINED`].
fn forget_old(done: &mut HashMap<Box<str>, i64>) {
    let now = ferry_event::now_ms();
    let mut oldest = now - DONE_RETENTION_MS;
    if done.len() > DONE_RETAINED {
        let mut times: Vec<i64> = done.values().copied().collect();
        let cut = times.len() - DONE_RETAINED;
        oldest = oldest.max(*times.select_nth_unstable(cut).1);
    }
    done.retain(|_, at| *at >= oldest);
}

fn compact_threshold(size: u64) -> u64 {
    size + COMPACT_MIN_BYTES.max(size * 4)
}

fn apply(
    open: &mut HashMap<String, Open>,
    done: &mut HashMap<Box<str>, i64>,
    id: String,
    at: i64,
    entry: Entry,
) {
    let fresh = || Open {
        status: Status::Fresh,
        published: LogMark::default(),
        numbered: LogMark::default(),
        release: None,
        at,
    };
    match entry {
        Entry::Done => {
            open.remove(&id);
            done.insert(id.into_boxed_str(), at);
        }
        Entry::Cancelled { reason } => {
            let o = open.entry(id).or_insert_with(fresh);
            o.status = Status::Tombstone(reason);
            o.at = at;
        }
        Entry::Running(r) => {
            let o = open.entry(id).or_insert_with(fresh);
            o.status = Status::Running(r);
            o.at = at;
        }
        Entry::Logs(mark) => {
            let o = open.entry(id).or_insert_with(fresh);
            o.published = std::mem::replace(&mut o.numbered, mark);
        }
        Entry::Reported { report, release } => {
            let o = open.entry(id).or_insert_with(fresh);
            o.status = Status::ResultPending(report);
            o.release = release;
            o.at = at;
        }
        Entry::Released => {
            if let Some(o) = open.get_mut(&id) {
                o.release = None;
            }
        }
    }
}

fn replay(
    path: &Path,
    reader: impl BufRead,
    open: &mut HashMap<String, Open>,
    done: &mut HashMap<Box<str>, i64>,
) -> io::Result<()> {
    let corrupt = |n: usize, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is corrupt at line {}: {e}", path.display(), n + 1),
        )
    };
    let mut version = None;
    let mut lines = reader.split(b'\n').enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let version = *version.get_or_insert_with(|| match serde_json::from_slice::<Header>(&line) {
            Ok(h) => h.journal,
            Err(_) => 1,
        });
        let parsed = match version {
            1 => serde_json::from_slice::<v1::Line>(&line).map(v1::Line::upgrade),
            // Version 2 is version 3 without `released` records and `reported.release`.
            2 | VERSION => match serde_json::from_slice::<Header>(&line) {
                Ok(_) => continue,
                Err(_) => serde_json::from_slice::<Line>(&line),
            },
            newer => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} was written by a newer ferry (journal version {newer}; this one reads up to {VERSION}): \
                         run that version, or move the data directory aside",
                        path.display()
                    ),
                ));
            }
        };
        match parsed {
            Ok(Line { id, at, entry }) => apply(open, done, id, at, entry),
            // The machine stopped in the middle of the last record: it never took effect.
            Err(_) if lines.peek().is_none() => {
                tracing::warn!(journal = %path.display(), line = n + 1, "ignoring an incomplete last record");
            }
            Err(e) => return Err(corrupt(n, &e)),
        }
    }
    Ok(())
}

/// The first line of a journal of version 2 or later.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    journal: u32,
}

/// The records of version 1, written by the local launcher before the runtime existed.
mod v1 {
    use ferry_event::payload::TaskFinished;
    use serde::Deserialize;

    use crate::backend::{Compute, LogPosition, default_compute_name};

    #[derive(Debug, Deserialize)]
    pub(super) struct Line {
        id: String,
        at: i64,
        #[serde(flatten)]
        entry: Entry,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "state", rename_all = "camelCase")]
    enum Entry {
        Cancelled { reason: String },
        Running(Running),
        Logs(LogMark),
        Reported { report: Box<TaskFinished> },
        Done,
    }

    /// A local process: the slot holding its files, its group leader's pid (0 while it was
    /// being started) and that process's start time.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Running {
        job_id: String,
        task_id: String,
        attempt_id: String,
        attempt: u32,
        slot: u32,
        pid: i32,
        start_time: u64,
        started_at_ms: i64,
    }

    /// The next line's number and the offsets in the stdout and stderr files.
    #[derive(Debug, Deserialize)]
    struct LogMark {
        seq: u64,
        out: u64,
        err: u64,
    }

    impl Line {
        /// The record as the current version writes it: the local backend's handle is
        /// `{"slot", "pid", "startTime"}`, its positions are offsets without a cursor.
        pub(super) fn upgrade(self) -> super::Line {
            let entry = match self.entry {
                Entry::Cancelled { reason } => super::Entry::Cancelled { reason },
                Entry::Running(r) => super::Entry::Running(super::RunningRecord {
                    compute: Compute {
                        name: default_compute_name(&r.attempt_id),
                        handle: serde_json::json!({
                            "slot": r.slot,
                            "pid": r.pid,
                            "startTime": r.start_time,
                        }),
                    },
                    // The pid was recorded once the process was spawned.
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
                }),
                Entry::Logs(m) => super::Entry::Logs(super::LogMark {
                    seq: m.seq,
                    position: LogPosition {
                        stdout: m.out,
                        stderr: m.err,
                        cursor: serde_json::Value::Null,
                    },
                }),
                Entry::Reported { report } => super::Entry::Reported {
                    report,
                    release: None,
                },
                Entry::Done => super::Entry::Done,
            };
            super::Line {
                id: self.id,
                at: self.at,
                entry,
            }
        }
    }
}

/// Writes what is still open and the remembered finished attempts to a new journal, makes it
/// durable and puts it in place. Returns it, open for appending, and its size.
fn rewrite(
    path: &Path,
    open: &HashMap<String, Open>,
    done: &HashMap<Box<str>, i64>,
) -> io::Result<(File, u64)> {
    let tmp = path.with_extension("tmp");
    // Only the launcher's user reads the journal: reports may hold outputs.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let mut out = io::BufWriter::new(file);
    serde_json::to_writer(&mut out, &Header { journal: VERSION }).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    let mut write = |id: &str, at: i64, entry: Entry| -> io::Result<()> {
        serde_json::to_writer(
            &mut out,
            &LineRef {
                id,
                at,
                entry: &entry,
            },
        )
        .map_err(io::Error::other)?;
        out.write_all(b"\n")
    };
    for (id, at) in done {
        write(id, *at, Entry::Done)?;
    }
    for (id, o) in open {
        let entry = match &o.status {
            Status::Fresh | Status::Finished => None,
            Status::Tombstone(reason) => Some(Entry::Cancelled {
                reason: reason.clone(),
            }),
            Status::Running(r) => Some(Entry::Running(r.clone())),
            Status::ResultPending(r) => Some(Entry::Reported {
                report: r.clone(),
                release: o.release.clone(),
            }),
        };
        if let Some(entry) = entry {
            write(id, o.at, entry)?;
        }
        if o.numbered != LogMark::default() {
            write(id, o.at, Entry::Logs(o.published.clone()))?;
            write(id, o.at, Entry::Logs(o.numbered.clone()))?;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    // Opened before the rename, so that once the new journal is in place there is a handle on
    // it: a failure after the rename cannot leave appends going to the replaced file.
    let file = OpenOptions::new().append(true).open(&tmp)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Err(e) = File::open(dir).and_then(|d| d.sync_all())
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make the journal's rename durable");
    }
    Ok((file, size))
}

/// Replaces `path` with `bytes`, readable by the owner only: written beside it and renamed
/// over it once on disk, so that a crash leaves the old contents or the new, never a part.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("new");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Checks that an id from an event can name a file: 1 to 200 ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `.`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".into());
    }
    if id.len() > 200 {
        return Err(format!("it is {} bytes long (at most 200)", id.len()));
    }
    if id.starts_with('.') {
        return Err("it starts with '.'".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "it contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are accepted"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ferry_event::payload::Outcome;

    use super::*;

    #[test]
    fn ids_that_could_leave_the_directory_are_refused() {
        for ok in ["0190f3a2-7c1e-7b7e-9a4e-3f1c2d4e5f60", "a.b_c-1", "x"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a\0b", "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"a".repeat(201)).unwrap_err().contains("200"));
    }

    fn running(id: &str) -> RunningRecord {
        RunningRecord {
            job_id: "j".into(),
            task_id: "t".into(),
            attempt_id: id.into(),
            attempt: 1,
            compute: Compute {
                name: format!("ferry-{id}"),
                handle: serde_json::json!({"container": "c0ffee"}),
            },
            created: true,
            started_at_ms: 1,
            reserved_at_ms: 0,
            output_files: vec!["*.csv".into()],
            lease_ms: Some(30_000),
            timeout_ms: None,
            ready_at_ms: 0,
            namespace: None,
            flow_id: None,
        }
    }

    fn mark(seq: u64, stdout: u64, stderr: u64) -> LogMark {
        LogMark {
            seq,
            position: LogPosition {
                stdout,
                stderr,
                cursor: serde_json::json!({"since": "2026-12-06T07:00:00Z"}),
            },
        }
    }

    fn report(id: &str) -> TaskFinished {
        TaskFinished {
            job_id: "j".into(),
            task_id: "t".into(),
            attempt_id: id.into(),
            attempt: 1,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            error: None,
            outputs: Default::default(),
            output_files: Vec::new(),
            log_lines: 3,
            started_at_ms: Some(1),
            finished_at_ms: 2,
            reason: None,
            compute_ms: None,
            subtasks: Vec::new(),
        }
    }

    #[test]
    fn status_follows_the_records_and_survives_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        assert_eq!(j.status("a1"), Status::Fresh);
        j.record(
            "a1",
            Entry::Cancelled {
                reason: "stop".into(),
            },
        )
        .unwrap();
        assert_eq!(j.status("a1"), Status::Tombstone("stop".into()));
        j.record("a2", Entry::Running(running("a2"))).unwrap();
        let (m1, m2) = (mark(2, 10, 0), mark(5, 10, 30));
        j.record("a2", Entry::Logs(m1.clone())).unwrap();
        j.record("a2", Entry::Logs(m2.clone())).unwrap();
        j.record("a3", Entry::Running(running("a3"))).unwrap();
        j.record(
            "a3",
            Entry::Reported {
                report: Box::new(report("a3")),
                release: None,
            },
        )
        .unwrap();
        j.record("a4", Entry::Running(running("a4"))).unwrap();
        j.record("a4", Entry::Done).unwrap();
        drop(j);

        // A record cut short by a crash is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(tmp.path().join("journal"))
            .unwrap();
        f.write_all(br#"{"id":"a5","at":1,"state":"runn"#).unwrap();
        drop(f);

        let j = Journal::open(tmp.path()).unwrap();
        assert_eq!(j.status("a1"), Status::Tombstone("stop".into()));
        assert_eq!(j.status("a2"), Status::Running(running("a2")));
        assert_eq!(j.log_marks("a2"), (m1, m2));
        assert_eq!(j.status("a3"), Status::ResultPending(Box::new(report("a3"))));
        assert_eq!(j.status("a4"), Status::Finished);
        assert_eq!(j.status("a5"), Status::Fresh);
        let ids: Vec<String> = j.unfinished().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["a1", "a2", "a3"]);
        // The rewrite kept only what matters: the version, one record per open state, two
        // marks, one done.
        let text = std::fs::read_to_string(tmp.path().join("journal")).unwrap();
        assert_eq!(text.lines().next(), Some(r#"{"journal":3}"#));
        assert_eq!(text.lines().count(), 7, "{text}");
    }

    #[test]
    fn a_journal_of_version_2_is_read_and_rewritten_as_3() {
        let tmp = tempfile::tempdir().unwrap();
        let reported = serde_json::to_string(&report("a1")).unwrap();
        std::fs::write(
            tmp.path().join("journal"),
            format!(
                "{{\"journal\":2}}\n{{\"id\":\"a1\",\"at\":1,\"state\":\"reported\",\"report\":{reported}}}\n"
            ),
        )
        .unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        assert_eq!(j.status("a1"), Status::ResultPending(Box::new(report("a1"))));
        assert_eq!(j.unfinished()[0].1.release, None);
        let text = std::fs::read_to_string(tmp.path().join("journal")).unwrap();
        assert_eq!(text.lines().next(), Some(r#"{"journal":3}"#));
    }

    #[test]
    fn the_compute_of_a_report_is_kept_until_it_is_released() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        let compute = running("r1").compute;
        for id in ["r1", "r2"] {
            j.record(id, Entry::Running(running(id))).unwrap();
            j.record(
                id,
                Entry::Reported {
                    report: Box::new(report(id)),
                    release: Some(compute.clone()),
                },
            )
            .unwrap();
        }
        j.record("r2", Entry::Released).unwrap();
        drop(j);
        // Read back, and read back again after the rewrite on opening.
        for _ in 0..2 {
            let j = Journal::open(tmp.path()).unwrap();
            let open: HashMap<String, Open> = j.unfinished().into_iter().collect();
            assert_eq!(open["r1"].release, Some(compute.clone()));
            assert_eq!(open["r2"].release, None);
            assert_eq!(j.status("r2"), Status::ResultPending(Box::new(report("r2"))));
        }
    }

    #[test]
    fn a_journal_of_the_local_launcher_before_the_runtime_is_read_as_local_handles() {
        let tmp = tempfile::tempdir().unwrap();
        // Written by the local launcher of ferry 0.1, record for record.
        let reported = serde_json::to_string(&report("a3")).unwrap();
        let v1 = format!(
            r#"{{"id":"a0","at":1,"state":"done"}}
{{"id":"a1","at":{now},"state":"cancelled","reason":"stop"}}
{{"id":"a2","at":1,"state":"running","jobId":"j","taskId":"t","attemptId":"a2","attempt":2,"slot":3,"pid":0,"startTime":0,"startedAtMs":0}}
{{"id":"a2","at":1,"state":"running","jobId":"j","taskId":"t","attemptId":"a2","attempt":2,"slot":3,"pid":42,"startTime":7,"startedAtMs":5}}
{{"id":"a2","at":1,"state":"logs","seq":1,"out":3,"err":0}}
{{"id":"a2","at":1,"state":"logs","seq":3,"out":9,"err":4}}
{{"id":"a3","at":1,"state":"reported","report":{reported}}}
"#,
            now = ferry_event::now_ms()
        );
        std::fs::write(tmp.path().join("journal"), v1).unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        let Status::Running(r) = j.status("a2") else {
            panic!("{:?}", j.status("a2"));
        };
        assert_eq!((r.job_id.as_str(), r.attempt, r.started_at_ms), ("j", 2, 5));
        assert_eq!(r.compute.name, "ferry-a2");
        assert!(r.created, "a record with a pid is of a process that was spawned");
        assert_eq!(
            r.compute.handle,
            serde_json::json!({"slot": 3, "pid": 42, "startTime": 7})
        );
        let at = |seq, stdout, stderr| LogMark {
            seq,
            position: LogPosition {
                stdout,
                stderr,
                cursor: serde_json::Value::Null,
            },
        };
        assert_eq!(j.log_marks("a2"), (at(1, 3, 0), at(3, 9, 4)));
        assert_eq!(j.status("a1"), Status::Tombstone("stop".into()));
        assert_eq!(j.status("a3"), Status::ResultPending(Box::new(report("a3"))));
        // Opening rewrote it in the current version, which reads back the same.
        let text = std::fs::read_to_string(tmp.path().join("journal")).unwrap();
        assert_eq!(text.lines().next(), Some(r#"{"journal":3}"#), "{text}");
        drop(j);
        let j = Journal::open(tmp.path()).unwrap();
        assert_eq!(j.status("a2"), Status::Running(r));
        assert_eq!(j.log_marks("a2"), (at(1, 3, 0), at(3, 9, 4)));
    }

    #[test]
    fn a_journal_of_a_newer_version_is_refused_with_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let newer = VERSION + 1;
        std::fs::write(tmp.path().join("journal"), format!("{{\"journal\":{newer}}}\n")).unwrap();
        let err = Journal::open(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("newer ferry") && err.contains(&format!("version {newer}")),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_record_before_the_end_is_an_error_naming_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("journal"),
            "{\"id\":\"a\",\"at\":1,\"state\":\"done\"}\nnot json\n{\"id\":\"b\",\"at\":1,\"state\":\"done\"}\n",
        )
        .unwrap();
        let err = Journal::open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn finished_attempts_are_forgotten_after_the_retention() {
        let tmp = tempfile::tempdir().unwrap();
        let old = ferry_event::now_ms() - DONE_RETENTION_MS - 1;
        std::fs::write(
            tmp.path().join("journal"),
            format!("{{\"id\":\"old\",\"at\":{old},\"state\":\"done\"}}\n"),
        )
        .unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        assert_eq!(j.status("old"), Status::Fresh);
    }

    #[test]
    fn only_the_most_recent_finished_attempts_are_kept() {
        let now = ferry_event::now_ms();
        let mut done: HashMap<Box<str>, i64> = (0..DONE_RETAINED + 10)
            .map(|i| (i.to_string().into_boxed_str(), now - 1_000_000 + i as i64))
            .collect();
        done.insert("ancient".into(), now - DONE_RETENTION_MS - 1);
        forget_old(&mut done);
        assert_eq!(done.len(), DONE_RETAINED);
        assert!(!done.contains_key("ancient") && !done.contains_key("9"));
        assert!(done.contains_key(&*(DONE_RETAINED + 9).to_string()));
    }

    #[test]
    fn records_of_each_state_round_trip_with_a_named_state() {
        for entry in [
            Entry::Cancelled { reason: "no".into() },
            Entry::Running(running("a")),
            Entry::Logs(mark(1, 2, 3)),
            Entry::Reported {
                report: Box::new(report("a")),
                release: None,
            },
            Entry::Done,
        ] {
            let line = LineRef {
                id: "a",
                at: 1,
                entry: &entry,
            };
            let json = serde_json::to_value(&line).unwrap();
            assert!(json["state"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<Line>(json).unwrap().entry, entry);
        }
    }
}
