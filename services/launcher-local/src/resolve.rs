//! Finding the program of a command written as a bare name (`true`, `python3`) on the task's
//! `PATH`.
//!
//! The launcher starts every task with an environment of its own making. Given a bare name and
//! such an environment, the standard library cannot use `posix_spawn` (it would search the
//! launcher's `PATH`, not the task's) and falls back to `fork` + `exec` of the whole launcher, whose
//! cost grows with the launcher's memory: a 2,001-task fan-out of `true` took five times as
//! long as one of `/bin/true`. So the launcher looks the name up itself, on the task's `PATH`,
//! and spawns the absolute path (the process still sees the name as written in `argv[0]`).
//!
//! Lookups are cached by (`PATH`, name). A cached answer is used only while the file it names is
//! still an executable file (one `stat`) and for at most [`TTL`], so that a program installed
//! earlier on the `PATH` is found within that time.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lookup is trusted.
pub const TTL: Duration = Duration::from_secs(5);
/// At most this many lookups are kept; the cache is emptied when it would hold more.
const MAX_ENTRIES: usize = 4096;

/// A lookup's question: (`PATH`, name).
type Key = (Box<OsStr>, Box<str>);

/// The cache of lookups: the file found, and when.
#[derive(Debug, Default)]
pub struct Resolver {
    cache: Mutex<HashMap<Key, (PathBuf, Instant)>>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The file to execute for `program`: itself when it holds a `/` (a relative one is
    /// relative to the working directory), else the first executable file of that name in the
    /// directories of `path` (the task's `PATH`; relative entries, and empty ones, which mean
    /// the current directory, are taken relative to `work`). The error is for the attempt's
    /// report: the task asked for a program that is not there.
    pub fn resolve(&self, program: &str, path: Option<&OsStr>, work: &Path) -> Result<PathBuf, String> {
        if program.contains('/') {
            return Ok(PathBuf::from(program));
        }
        let path = path.unwrap_or_default();
        let key = (Box::<OsStr>::from(path), Box::<str>::from(program));
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((found, at)) = cache.get(&key)
                && at.elapsed() < TTL
                && is_executable(found)
            {
                return Ok(found.clone());
            }
        }
        let mut relative = false;
        let found = std::env::split_paths(path).find_map(|dir| {
            let dir = if dir.is_absolute() {
                dir
            } else {
                relative = true;
                work.join(dir)
            };
            let candidate = dir.join(program);
            is_executable(&candidate).then_some(candidate)
        });
        let Some(found) = found else {
            return Err(format!(
                "command `{program}` not found on PATH={}",
                path.to_string_lossy()
            ));
        };
        // What a relative entry finds depends on the working directory's content: not cached.
        if !relative {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (found.clone(), Instant::now()));
        }
        Ok(found)
    }
}

/// Whether `path` is a file (after symbolic links) with an execute bit: what `execve` can run.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn names_are_found_on_the_given_path_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let in_b = tool(&b, "tool");
        std::fs::write(a.join("tool"), "not executable").unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        let r = Resolver::new();
        assert_eq!(r.resolve("tool", Some(&path), tmp.path()), Ok(in_b.clone()));
        assert_eq!(r.resolve("./x/y", Some(&path), tmp.path()), Ok("./x/y".into()));
        let err = r.resolve("nope", Some(&path), tmp.path()).unwrap_err();
        assert_eq!(
            err,
            format!("command `nope` not found on PATH={}", path.to_string_lossy())
        );
        // Relative entries are relative to the working directory.
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("bin")).unwrap();
        let local = tool(&work.join("bin"), "local");
        assert_eq!(r.resolve("local", Some(OsStr::new("bin")), &work), Ok(local));
    }

    #[test]
    fn a_cached_lookup_is_checked_before_use() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        let r = Resolver::new();
        let in_a = tool(&a, "tool");
        assert_eq!(r.resolve("tool", Some(&path), tmp.path()), Ok(in_a.clone()));
        std::fs::remove_file(&in_a).unwrap();
        let in_b = tool(&b, "tool");
        assert_eq!(r.resolve("tool", Some(&path), tmp.path()), Ok(in_b.clone()));
        std::fs::remove_file(&in_b).unwrap();
        assert!(r.resolve("tool", Some(&path), tmp.path()).is_err());
    }
}
