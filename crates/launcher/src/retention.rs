//! Artifact retention: output files stored longer ago than a retention are removed from the
//! artifact directory by a periodic sweep, and the directories it empties with them.
//!
//! The sweep stays inside the artifact directory and never follows a symbolic link: entries are
//! looked at with `lstat`, a link is removed as the entry it is (never what it points to), and a
//! directory is only read once its real path is seen to be under the artifact directory's. A
//! file's age is its modification time, which is when the launcher copied it there. A directory
//! is removed only when the sweep emptied it and it was itself last changed before the cutoff:
//! one an attempt has just made for its files (new, so changed now) is never taken from under it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often the sweep runs by default.
pub const DEFAULT_SWEEP_EVERY: Duration = Duration::from_secs(5 * 60);

/// Which files to remove, where, and how often to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRetention {
    /// The artifact directory: nothing outside it is touched.
    pub dir: PathBuf,
    /// Files stored longer ago than this are removed.
    pub older_than: Duration,
    /// Time between two sweeps.
    pub every: Duration,
}

impl ArtifactRetention {
    /// Files of `dir` older than `older_than`, swept every [`DEFAULT_SWEEP_EVERY`].
    pub fn new(dir: impl Into<PathBuf>, older_than: Duration) -> Self {
        ArtifactRetention {
            dir: dir.into(),
            older_than,
            every: DEFAULT_SWEEP_EVERY,
        }
    }
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    /// Entries that could not be read or removed (logged; tried again at the next sweep).
    pub errors: u64,
}

/// Removes the files under `dir` last modified before `cutoff`, and the directories that
/// leaves empty which were last changed before it too; `dir` itself stays. A `dir` that does
/// not exist holds nothing to remove.
pub fn sweep(dir: &Path, cutoff: SystemTime) -> Swept {
    let mut swept = Swept::default();
    let root = match dir.canonicalize() {
        Ok(root) => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return swept,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot resolve the artifact directory");
            swept.errors += 1;
            return swept;
        }
    };
    match std::fs::symlink_metadata(&root) {
        Ok(m) if m.is_dir() => {
            sweep_dir(&root, &root, cutoff, &mut swept);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(dir = %root.display(), error = %e, "cannot read the artifact directory");
            swept.errors += 1;
        }
    }
    swept
}

/// Sweeps the directory `dir` (known by `lstat` to be a directory, not a link); returns whether
/// it is empty afterwards.
fn sweep_dir(root: &Path, dir: &Path, cutoff: SystemTime, swept: &mut Swept) -> bool {
    // A directory swapped for a link since it was looked at resolves elsewhere: left alone.
    match dir.canonicalize() {
        Ok(real) if real.starts_with(root) && real == dir => {}
        _ => {
            tracing::warn!(dir = %dir.display(), "skipping a directory that does not resolve to itself inside the artifact directory");
            return false;
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list an artifact directory");
                swept.errors += 1;
            }
            return false;
        }
    };
    let mut empty = true;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list an artifact directory");
                swept.errors += 1;
                empty = false;
                continue;
            }
        };
        let path = entry.path();
        // lstat: a symbolic link is looked at as itself.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot look at an artifact");
                swept.errors += 1;
                empty = false;
                continue;
            }
        };
        let old = meta.modified().is_ok_and(|t| t < cutoff);
        if meta.is_dir() {
            // Its time before the sweep: removing entries changes it.
            if sweep_dir(root, &path, cutoff, swept) && old {
                match std::fs::remove_dir(&path) {
                    Ok(()) => {
                        swept.dirs += 1;
                        continue;
                    }
                    // A file arrived meanwhile, or another launcher removed it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(_) => {}
                }
            }
            empty = false;
        } else if old {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    swept.files += 1;
                    if meta.is_file() {
                        swept.bytes += meta.len();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an expired artifact");
                    swept.errors += 1;
                    empty = false;
                }
            }
        } else {
            empty = false;
        }
    }
    empty
}

/// Sweeps `retention.dir` at once and then every `retention.every`, until `stop`. Each sweep
/// runs on a blocking thread; its errors are logged and the next sweep tries again.
pub async fn sweep_every(retention: ArtifactRetention, stop: CancellationToken) {
    loop {
        let cutoff = SystemTime::now()
            .checked_sub(retention.older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let dir = retention.dir.clone();
        match tokio::task::spawn_blocking(move || sweep(&dir, cutoff)).await {
            Ok(swept) if swept != Swept::default() => tracing::info!(
                dir = %retention.dir.display(),
                files = swept.files,
                bytes = swept.bytes,
                dirs = swept.dirs,
                errors = swept.errors,
                "expired artifacts removed"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the artifact sweep failed"),
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retention.every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn write(path: &Path, bytes: &[u8], age: Duration) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        age_of(path, age);
    }

    /// Sets the modification time of `path` (a file or a directory) `age` back.
    fn age_of(path: &Path, age: Duration) {
        File::open(path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }

    #[test]
    fn old_files_and_the_directories_they_leave_empty_go_new_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("artifacts");
        write(&dir.join("j1/t/a1/out/report.csv"), b"12345", 3 * DAY);
        write(&dir.join("j1/t/a1/summary.json"), b"{}", 3 * DAY);
        write(&dir.join("j2/t/a2/fresh.txt"), b"new", Duration::ZERO);
        write(&dir.join("j2/t/a1/stale.txt"), b"old", 3 * DAY);
        for d in ["j1/t/a1/out", "j1/t/a1", "j1/t", "j1", "j2/t/a1"] {
            age_of(&dir.join(d), 3 * DAY);
        }
        // Just made by an attempt that has not stored its files yet.
        std::fs::create_dir_all(dir.join("j3/t/a3")).unwrap();

        let swept = sweep(&dir, SystemTime::now() - DAY);
        assert_eq!((swept.files, swept.bytes, swept.errors), (3, 10, 0));
        assert!(!dir.join("j1").exists(), "j1 held only old files");
        assert!(dir.join("j2/t/a2/fresh.txt").exists());
        assert!(!dir.join("j2/t/a1").exists());
        assert!(dir.join("j3/t/a3").is_dir(), "a new empty directory stays");
        assert!(dir.is_dir(), "the artifact directory itself stays");
        // Nothing left to do.
        assert_eq!(sweep(&dir, SystemTime::now() - DAY).files, 0);
    }

    #[test]
    fn links_are_never_followed_out_of_the_artifact_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("artifacts");
        let outside = tmp.path().join("outside");
        write(&outside.join("precious.txt"), b"keep", 3 * DAY);
        age_of(&outside, 3 * DAY);
        std::fs::create_dir_all(dir.join("j/t/a")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("j/t/a/to-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("precious.txt"), dir.join("j/t/a/to-file")).unwrap();

        // The links are new: they stay, and what they point to is not looked at.
        sweep(&dir, SystemTime::now() - DAY);
        assert!(outside.join("precious.txt").exists());
        assert!(dir.join("j/t/a/to-dir").exists());

        // Once old, a link is removed as itself; its target stays.
        let cutoff = SystemTime::now() + DAY;
        let swept = sweep(&dir, cutoff);
        assert_eq!(swept.files, 2);
        assert!(
            outside.join("precious.txt").exists(),
            "a link's target is never removed"
        );
        assert!(outside.is_dir());
        assert!(std::fs::symlink_metadata(dir.join("j/t/a/to-dir")).is_err());
    }

    #[test]
    fn a_missing_artifact_directory_holds_nothing_to_remove() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            sweep(&tmp.path().join("nope"), SystemTime::now()),
            Swept::default()
        );
    }

    #[tokio::test]
    async fn the_sweep_runs_at_once_and_again_until_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write(&dir.join("j/t/a/old.txt"), b"x", 3 * DAY);
        let stop = CancellationToken::new();
        let retention = ArtifactRetention {
            every: Duration::from_millis(10),
            ..ArtifactRetention::new(&dir, DAY)
        };
        let sweeper = tokio::spawn(sweep_every(retention, stop.clone()));
        let gone = |p: &Path| std::fs::symlink_metadata(p).is_err();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !gone(&dir.join("j/t/a/old.txt")) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first sweep did not run"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A file that ages after the first sweep goes at a later one.
        write(&dir.join("k/later.txt"), b"y", 3 * DAY);
        while !gone(&dir.join("k/later.txt")) {
            assert!(tokio::time::Instant::now() < deadline, "no later sweep ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), sweeper)
            .await
            .expect("the sweep stops")
            .unwrap();
    }
}
