//! The launcher's state on disk, one directory per attempt.
//!
//! ```text
//! <data_dir>/attempts/<attempt_id>/
//!     work/          the working directory (removed once the attempt is reported)
//!     outputs.json   $FERRY_OUTPUTS, outside work/ so that outputFiles globs never match it
//!     record         Record (JSON): a tombstone, the running process, or the report being
//!                    published; each step replaces the one before
//!     log_lines      how many log lines the broker has confirmed so far
//!     done           the report, once the broker confirmed it: a dispatch of this attempt is
//!                    a duplicate
//! ```
//!
//! A record is written to `record.tmp` and renamed, so a crash never leaves half a file; once
//! the report is confirmed, `record` is renamed to `done`, writing nothing. Every rename stays
//! inside the attempt's own directory, so attempts never contend for a shared directory's lock.
//! A fresh attempt costs two failed lookups.
//!
//! Earlier versions kept `pid`, `result.json`, `finished` and `cancelled` instead of `record`
//! and `done`; [`legacy`] rewrites those, so that a restart after an upgrade still reconciles
//! them.

use std::io;
use std::path::{Path, PathBuf};

use ferry_event::payload::TaskFinished;
use serde::{Deserialize, Serialize};

/// What the launcher records once an attempt's process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningRecord {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub attempt: u32,
    /// The process group leader's pid, which is also the group id.
    pub pid: i32,
    /// The leader's start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot):
    /// a pid reused by another process has a different one.
    pub start_time: u64,
    pub started_at_ms: i64,
}

/// The content of `records/<attempt_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Record {
    /// A `task.cancel` arrived before the dispatch.
    Cancelled { reason: String },
    /// The process runs or ran under this launcher.
    Running(RunningRecord),
    /// The `task.finished` payload, written before it is published.
    Reported(Box<TaskFinished>),
}

/// Where an attempt stands, from its files.
#[derive(Debug)]
pub enum Status {
    /// Nothing recorded (a working directory may be left from a crash before the process
    /// started).
    Fresh,
    /// Cancelled before its dispatch arrived; holds the reason.
    Tombstone(String),
    /// Its process runs or ran without being reported.
    Running(RunningRecord),
    /// Its report was written but maybe not published.
    ResultPending(Box<TaskFinished>),
    /// Reported.
    Finished,
}

/// `<data_dir>/attempts`.
pub fn attempts_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("attempts")
}

/// Creates the attempts directory (once, at start).
pub fn create_dirs(data_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(attempts_dir(data_dir))
}

/// The paths of one attempt's state.
#[derive(Debug, Clone)]
pub struct AttemptDir {
    root: PathBuf,
}

impl AttemptDir {
    /// The state of `attempt_id`, which must have passed [`check_id`].
    pub fn new(data_dir: &Path, attempt_id: &str) -> Self {
        AttemptDir {
            root: attempts_dir(data_dir).join(attempt_id),
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

    pub fn record_file(&self) -> PathBuf {
        self.root.join("record")
    }

    pub fn log_lines_file(&self) -> PathBuf {
        self.root.join("log_lines")
    }

    pub fn done_file(&self) -> PathBuf {
        self.root.join("done")
    }

    fn tmp_file(&self, what: &str) -> PathBuf {
        self.root.join(format!("{what}.tmp"))
    }

    /// Where the attempt stands. Unreadable or corrupt records are errors.
    pub fn status(&self) -> io::Result<Status> {
        if let Some(record) = self.read_record()? {
            return Ok(match record {
                Record::Cancelled { reason } => Status::Tombstone(reason),
                Record::Running(r) => Status::Running(r),
                Record::Reported(r) => Status::ResultPending(r),
            });
        }
        match std::fs::symlink_metadata(self.done_file()) {
            Ok(_) => Ok(Status::Finished),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::Fresh),
            Err(e) => Err(e),
        }
    }

    /// The record, if there is one.
    pub fn read_record(&self) -> io::Result<Option<Record>> {
        let path = self.record_file();
        match read_optional(&path)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| corrupt(&path, e)),
            None => Ok(None),
        }
    }

    /// Replaces the record.
    pub fn write_record(&self, record: &Record) -> io::Result<()> {
        write_via(&self.tmp_file("record"), &self.record_file(), &to_json(record)?)
    }

    pub fn write_running(&self, record: &RunningRecord) -> io::Result<()> {
        self.write_record(&Record::Running(record.clone()))
    }

    pub fn write_tombstone(&self, reason: &str) -> io::Result<()> {
        self.write_record(&Record::Cancelled {
            reason: reason.to_string(),
        })
    }

    pub fn write_log_lines(&self, lines: u64) -> io::Result<()> {
        write_via(
            &self.tmp_file("log_lines"),
            &self.log_lines_file(),
            lines.to_string().as_bytes(),
        )
    }

    /// Log lines confirmed so far (0 when never recorded).
    pub fn read_log_lines(&self) -> u64 {
        std::fs::read_to_string(self.log_lines_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Creates the working directory. One left by a crash before the process started is
    /// emptied first, along with its outputs file.
    pub fn create_work(&self) -> io::Result<()> {
        match std::fs::create_dir(&self.root) {
            Ok(()) => return std::fs::create_dir(self.work()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let work = self.work();
        match std::fs::create_dir(&work) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_unstarted()?;
                std::fs::create_dir(&work)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The state directories were removed while the launcher ran.
                std::fs::create_dir_all(&work)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the working directory and writes the report to publish. `outputs_left` says
    /// whether the outputs file may exist (`false` once it was read and removed).
    pub fn write_result(&self, result: &TaskFinished, outputs_left: bool) -> io::Result<()> {
        remove_dir_fast(&self.work())?;
        if outputs_left {
            remove_file_if_exists(&self.outputs())?;
        }
        self.write_record(&Record::Reported(Box::new(result.clone())))
    }

    /// Marks the attempt reported: its record (`report`, written by [`Self::write_result`])
    /// moves to `done/`, or `report` is written there when it could not be recorded.
    /// `lines_recorded` says whether a log line count may have been written.
    pub fn mark_finished(&self, report: &TaskFinished, lines_recorded: bool) -> io::Result<()> {
        match std::fs::rename(self.record_file(), self.done_file()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let record = Record::Reported(Box::new(report.clone()));
                write_via(&self.tmp_file("record"), &self.done_file(), &to_json(&record)?)?;
            }
            Err(e) => return Err(e),
        }
        if lines_recorded {
            remove_file_if_exists(&self.log_lines_file())?;
        }
        Ok(())
    }

    /// Removes the working directory and the outputs file of an attempt that never started
    /// (left by a crash).
    pub fn remove_unstarted(&self) -> io::Result<()> {
        remove_dir_if_exists(&self.work())?;
        remove_file_if_exists(&self.outputs())
    }
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

fn to_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

fn corrupt(path: &Path, e: serde_json::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is corrupt: {e}", path.display()),
    )
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `tmp`, then renames it over `path`; creates their directory when it
/// does not exist (an attempt that never started has none).
fn write_via(tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    match std::fs::write(tmp, bytes) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = tmp.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(tmp, bytes)?;
        }
        other => other?,
    }
    std::fs::rename(tmp, path)
}

pub(crate) fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a directory that is usually empty: one `rmdir`, and a walk only when it holds
/// something.
pub(crate) fn remove_dir_fast(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => remove_dir_if_exists(path),
    }
}

pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The files of earlier versions, in the same attempt directory: `pid`, `result.json`,
/// `finished` and `cancelled`.
pub mod legacy {
    use super::*;

    /// Where an attempt recorded by an earlier version stands (same precedence as its reader).
    pub fn status(dir: &Path) -> io::Result<Status> {
        if dir.join("finished").exists() {
            return Ok(Status::Finished);
        }
        let result = dir.join("result.json");
        if let Some(bytes) = read_optional(&result)? {
            let r = serde_json::from_slice(&bytes).map_err(|e| corrupt(&result, e))?;
            return Ok(Status::ResultPending(Box::new(r)));
        }
        let pid = dir.join("pid");
        if let Some(bytes) = read_optional(&pid)? {
            let r = serde_json::from_slice(&bytes).map_err(|e| corrupt(&pid, e))?;
            return Ok(Status::Running(r));
        }
        if let Some(bytes) = read_optional(&dir.join("cancelled"))? {
            return Ok(Status::Tombstone(String::from_utf8_lossy(&bytes).into_owned()));
        }
        Ok(Status::Fresh)
    }

    /// Rewrites what an earlier version recorded for `dir` as the current record (or done
    /// marker), then removes the old files.
    pub fn migrate(dir: &AttemptDir) -> io::Result<Status> {
        let status = status(dir.root())?;
        match &status {
            Status::Finished => std::fs::rename(dir.root().join("finished"), dir.done_file())?,
            Status::ResultPending(r) => dir.write_record(&Record::Reported(r.clone()))?,
            Status::Running(r) => dir.write_running(r)?,
            Status::Tombstone(reason) => dir.write_tombstone(reason)?,
            Status::Fresh => return Ok(status),
        }
        for old in ["result.json", "pid", "cancelled"] {
            remove_file_if_exists(&dir.root().join(old))?;
        }
        Ok(status)
    }
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
            pid: 42,
            start_time: 7,
            started_at_ms: 1,
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
        }
    }

    #[test]
    fn status_follows_the_files_written() {
        let tmp = tempfile::tempdir().unwrap();
        create_dirs(tmp.path()).unwrap();
        let dir = AttemptDir::new(tmp.path(), "a1");
        assert!(matches!(dir.status().unwrap(), Status::Fresh));
        dir.write_tombstone("stop").unwrap();
        assert!(matches!(dir.status().unwrap(), Status::Tombstone(r) if r == "stop"));
        dir.write_running(&running("a1")).unwrap();
        assert!(matches!(dir.status().unwrap(), Status::Running(r) if r == running("a1")));
        dir.create_work().unwrap();
        std::fs::write(dir.work().join("left"), "x").unwrap();
        std::fs::write(dir.outputs(), "{}").unwrap();
        dir.write_log_lines(3).unwrap();
        dir.write_result(&report("a1"), true).unwrap();
        assert!(!dir.work().exists() && !dir.outputs().exists());
        assert!(matches!(dir.status().unwrap(), Status::ResultPending(r) if *r == report("a1")));
        dir.mark_finished(&report("a1"), true).unwrap();
        assert!(matches!(dir.status().unwrap(), Status::Finished));
        assert!(!dir.record_file().exists() && !dir.log_lines_file().exists());
        let mut left: Vec<_> = std::fs::read_dir(dir.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["done"], "only the done marker is kept");

        let other = AttemptDir::new(tmp.path(), "a2");
        std::fs::create_dir_all(other.root()).unwrap();
        std::fs::write(other.record_file(), b"{").unwrap();
        let err = other.status().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn a_working_directory_left_by_a_crash_is_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        create_dirs(tmp.path()).unwrap();
        let dir = AttemptDir::new(tmp.path(), "a1");
        dir.create_work().unwrap();
        std::fs::write(dir.work().join("stale"), "x").unwrap();
        std::fs::write(dir.outputs(), "{\"stale\": 1}").unwrap();
        dir.create_work().unwrap();
        assert_eq!(std::fs::read_dir(dir.work()).unwrap().count(), 0);
        assert!(!dir.outputs().exists());
    }

    #[test]
    fn records_of_each_state_round_trip_with_a_named_state() {
        for record in [
            Record::Cancelled { reason: "no".into() },
            Record::Running(running("a")),
            Record::Reported(Box::new(report("a"))),
        ] {
            let json = serde_json::to_value(&record).unwrap();
            assert!(json["state"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<Record>(json).unwrap(), record);
        }
    }

    #[test]
    fn attempts_of_earlier_versions_are_rewritten_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        create_dirs(tmp.path()).unwrap();
        let at = |id: &str| AttemptDir::new(tmp.path(), id);
        let write = |id: &str, file: &str, bytes: &[u8]| {
            std::fs::create_dir_all(at(id).work()).unwrap();
            std::fs::write(at(id).root().join(file), bytes).unwrap();
        };
        write("f", "finished", br#"{"outcome":"succeeded","finishedAtMs":2}"#);
        write("p", "result.json", &serde_json::to_vec(&report("p")).unwrap());
        write("r", "pid", &serde_json::to_vec(&running("r")).unwrap());
        write("r", "log_lines", b"5");
        write("c", "cancelled", b"why");
        for id in ["f", "p", "r", "c"] {
            assert!(matches!(at(id).status().unwrap(), Status::Fresh), "{id}");
            legacy::migrate(&at(id)).unwrap();
        }
        assert!(matches!(at("f").status().unwrap(), Status::Finished));
        assert!(matches!(at("p").status().unwrap(), Status::ResultPending(r) if *r == report("p")));
        assert!(matches!(at("r").status().unwrap(), Status::Running(r) if r == running("r")));
        assert_eq!(at("r").read_log_lines(), 5);
        assert!(matches!(at("c").status().unwrap(), Status::Tombstone(r) if r == "why"));
        assert!(!at("r").root().join("pid").exists());
    }
}
