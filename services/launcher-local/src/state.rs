//! The launcher's state on disk, one directory per attempt.
//!
//! ```text
//! <data_dir>/attempts/<attempt_id>/
//!     work/          the working directory (removed once the attempt is reported)
//!     outputs.json   $FERRY_OUTPUTS, outside work/ so that outputFiles globs never match it
//!     pid            RunningRecord (JSON): the process runs or ran under this launcher
//!     log_lines      how many log lines the broker has confirmed so far
//!     result.json    the task.finished payload, written before it is published
//!     finished       FinishedMarker (JSON): reported; a dispatch of this attempt is a duplicate
//!     cancelled      tombstone: a task.cancel arrived before the dispatch (holds the reason)
//! ```
//!
//! Every file is written to a temporary name and renamed, so a crash never leaves half a file.

use std::io;
use std::path::{Path, PathBuf};

use ferry_event::payload::{Outcome, TaskFinished};
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

/// The small record kept once an attempt is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinishedMarker {
    pub outcome: Outcome,
    pub finished_at_ms: i64,
}

/// Where an attempt stands, from its files.
#[derive(Debug)]
pub enum Status {
    /// Nothing recorded (a directory may be left from a crash before the process started).
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

/// The paths of one attempt's state.
#[derive(Debug, Clone)]
pub struct AttemptDir {
    root: PathBuf,
}

/// `<data_dir>/attempts`.
pub fn attempts_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("attempts")
}

impl AttemptDir {
    /// The directory of `attempt_id`, which must have passed [`check_id`].
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

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("pid")
    }

    pub fn log_lines_file(&self) -> PathBuf {
        self.root.join("log_lines")
    }

    pub fn result_file(&self) -> PathBuf {
        self.root.join("result.json")
    }

    pub fn finished_file(&self) -> PathBuf {
        self.root.join("finished")
    }

    pub fn tombstone_file(&self) -> PathBuf {
        self.root.join("cancelled")
    }

    /// Where the attempt stands. Unreadable or corrupt state files are errors.
    pub fn status(&self) -> io::Result<Status> {
        if self.finished_file().exists() {
            return Ok(Status::Finished);
        }
        if let Some(bytes) = read_optional(&self.result_file())? {
            let result = serde_json::from_slice(&bytes).map_err(|e| corrupt(&self.result_file(), e))?;
            return Ok(Status::ResultPending(Box::new(result)));
        }
        if let Some(bytes) = read_optional(&self.pid_file())? {
            let record = serde_json::from_slice(&bytes).map_err(|e| corrupt(&self.pid_file(), e))?;
            return Ok(Status::Running(record));
        }
        if let Some(bytes) = read_optional(&self.tombstone_file())? {
            return Ok(Status::Tombstone(String::from_utf8_lossy(&bytes).into_owned()));
        }
        Ok(Status::Fresh)
    }

    pub fn write_running(&self, record: &RunningRecord) -> io::Result<()> {
        write_atomic(&self.pid_file(), &to_json(record)?)
    }

    pub fn write_tombstone(&self, reason: &str) -> io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        write_atomic(&self.tombstone_file(), reason.as_bytes())
    }

    pub fn write_log_lines(&self, lines: u64) -> io::Result<()> {
        write_atomic(&self.log_lines_file(), lines.to_string().as_bytes())
    }

    /// Log lines confirmed so far (0 when never recorded).
    pub fn read_log_lines(&self) -> u64 {
        std::fs::read_to_string(self.log_lines_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes the working directory and writes the report to publish.
    pub fn write_result(&self, result: &TaskFinished) -> io::Result<()> {
        remove_dir_if_exists(&self.work())?;
        std::fs::create_dir_all(&self.root)?;
        write_atomic(&self.result_file(), &to_json(result)?)
    }

    /// Marks the attempt reported and removes everything else it kept.
    pub fn mark_finished(&self, marker: &FinishedMarker) -> io::Result<()> {
        remove_dir_if_exists(&self.work())?;
        std::fs::create_dir_all(&self.root)?;
        write_atomic(&self.finished_file(), &to_json(marker)?)?;
        for f in [
            self.pid_file(),
            self.result_file(),
            self.outputs(),
            self.log_lines_file(),
            self.tombstone_file(),
        ] {
            remove_file_if_exists(&f)?;
        }
        Ok(())
    }

    /// Removes the directory of an attempt that never started (left by a crash).
    pub fn remove_unstarted(&self) -> io::Result<()> {
        remove_dir_if_exists(&self.work())?;
        remove_file_if_exists(&self.outputs())
    }
}

/// Checks that an id from an event can name a directory: 1 to 200 ASCII letters, digits, `-`,
/// `_` and `.`, not starting with `.`.
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

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn status_follows_the_files_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AttemptDir::new(tmp.path(), "a1");
        assert!(matches!(dir.status().unwrap(), Status::Fresh));
        dir.write_tombstone("stop").unwrap();
        assert!(matches!(dir.status().unwrap(), Status::Tombstone(r) if r == "stop"));
        let record = RunningRecord {
            job_id: "j".into(),
            task_id: "t".into(),
            attempt_id: "a1".into(),
            attempt: 1,
            pid: 42,
            start_time: 7,
            started_at_ms: 1,
        };
        dir.write_running(&record).unwrap();
        assert!(matches!(dir.status().unwrap(), Status::Running(r) if r == record));
        std::fs::create_dir_all(dir.work()).unwrap();
        dir.mark_finished(&FinishedMarker {
            outcome: Outcome::Succeeded,
            finished_at_ms: 2,
        })
        .unwrap();
        assert!(matches!(dir.status().unwrap(), Status::Finished));
        assert!(!dir.work().exists() && !dir.pid_file().exists());
        std::fs::remove_file(dir.finished_file()).unwrap();
        std::fs::write(dir.pid_file(), b"{").unwrap();
        let err = dir.status().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
