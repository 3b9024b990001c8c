//! Per-namespace quotas on the bytes of output files a launcher keeps in its artifact directory.
//!
//! The launcher remembers which namespace each attempt's artifact directory
//! (`ARTIFACTS/JOB/TASK/ATTEMPT`) belongs to, in a ledger of its own beside the journal
//! (`artifact-namespaces.jsonl`, one JSON line per attempt that kept files), and what those
//! directories hold now: sizes are read from the file system, never trusted from the ledger,
//! so files removed by the retention sweep or by hand stop counting (at the next sweep, or the
//! next start). An attempt whose files would take its namespace past its quota keeps none of
//! them and fails, saying so.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_runtime::NamespaceLimits;
use serde::{Deserialize, Serialize};

/// The ledger's file name in the data directory.
pub const LEDGER_FILE: &str = "artifact-namespaces.jsonl";

/// Where each namespace's output files are, and how many bytes they hold.
#[derive(Debug)]
pub struct ArtifactQuotas {
    limits: NamespaceLimits,
    /// The artifact directory.
    dir: PathBuf,
    ledger: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bytes held, by namespace, then by attempt directory (relative to the artifact
    /// directory).
    held: HashMap<String, HashMap<String, u64>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    ns: String,
    /// `JOB/TASK/ATTEMPT`, relative to the artifact directory.
    dir: String,
}

/// Why an attempt's files were not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    pub namespace: String,
    pub held: u64,
    pub adding: u64,
    pub limit: u64,
}

impl std::fmt::Display for OverQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "namespace `{}` is at its quota of output files ({} bytes held, {} more would pass the {}-byte limit of --namespace-artifact-quota); the attempt's files were not kept. Older files go with --artifact-retention or when removed from the artifact directory",
            self.namespace, self.held, self.adding, self.limit
        )
    }
}

impl ArtifactQuotas {
    /// The quotas `limits` on the artifact directory `dir`, with the ledger in `data_dir`:
    /// what the ledger names and still exists is counted again; the rest is forgotten.
    pub fn open(limits: NamespaceLimits, dir: impl Into<PathBuf>, data_dir: &Path) -> io::Result<Self> {
        let quotas = ArtifactQuotas {
            limits,
            dir: dir.into(),
            ledger: data_dir.join(LEDGER_FILE),
            inner: Mutex::new(Inner::default()),
        };
        let lines = match File::open(&quotas.ledger) {
            Ok(f) => BufReader::new(f).lines().collect::<io::Result<Vec<_>>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        {
            let mut inner = quotas.lock();
            for line in lines {
                // A line cut by a crash mid-write names nothing.
                let Ok(l) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                inner.held.entry(l.ns).or_default().insert(l.dir, 0);
            }
        }
        quotas.refresh();
        quotas.rewrite()?;
        Ok(quotas)
    }

    /// The quotas of a launcher whose flags set `limits` (none when empty), or why its ledger
    /// cannot be read.
    pub fn configure(
        limits: &NamespaceLimits,
        dir: impl Into<PathBuf>,
        data_dir: &Path,
    ) -> crate::Result<Option<std::sync::Arc<Self>>> {
        if limits.is_empty() {
            return Ok(None);
        }
        ArtifactQuotas::open(limits.clone(), dir, data_dir)
            .map(|q| Some(std::sync::Arc::new(q)))
            .map_err(|e| {
                crate::Error::Config(format!(
                    "cannot read {}: {e}",
                    data_dir.join(LEDGER_FILE).display()
                ))
            })
    }

    /// The artifact directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit of `namespace`, if it has one.
    pub fn limit(&self, namespace: &str) -> Option<u64> {
        self.limits.of(namespace)
    }

    /// Bytes `namespace`'s kept output files hold, as last counted.
    pub fn held(&self, namespace: &str) -> u64 {
        self.lock()
            .held
            .get(namespace)
            .map_or(0, |dirs| dirs.values().sum())
    }

    /// Takes `bytes` of files in the attempt directory `JOB/TASK/ATTEMPT` into `namespace`'s
    /// count, or refuses them when they would pass its quota. Taken files are recorded in the
    /// ledger before this returns.
    pub fn admit(&self, namespace: &str, attempt_dir: &str, bytes: u64) -> Result<(), OverQuota> {
        let Some(limit) = self.limit(namespace) else {
            return Ok(());
        };
        let mut inner = self.lock();
        let dirs = inner.held.entry(namespace.to_string()).or_default();
        let held: u64 = dirs
            .iter()
            .filter(|(d, _)| *d != attempt_dir)
            .map(|(_, b)| b)
            .sum();
        if held.saturating_add(bytes) > limit {
            return Err(OverQuota {
                namespace: namespace.to_string(),
                held,
                adding: bytes,
                limit,
            });
        }
        dirs.insert(attempt_dir.to_string(), bytes);
        drop(inner);
        if let Err(e) = self.append(namespace, attempt_dir) {
            // Counted from now on; after a restart these files count only once the ledger
            // can be written again.
            tracing::warn!(ledger = %self.ledger.display(), error = %e, "cannot record the namespace of kept output files");
        }
        Ok(())
    }

    /// Counts again what each recorded attempt directory holds, forgetting those that are
    /// gone (the retention sweep removed them, or someone did by hand).
    pub fn refresh(&self) {
        let known: Vec<(String, String)> = {
            let inner = self.lock();
            inner
                .held
                .iter()
                .flat_map(|(ns, dirs)| dirs.keys().map(move |d| (ns.clone(), d.clone())))
                .collect()
        };
        let counted: Vec<(String, String, Option<u64>)> = known
            .into_iter()
            .map(|(ns, d)| {
                let bytes = bytes_under(&self.dir.join(&d));
                (ns, d, bytes)
            })
            .collect();
        let mut inner = self.lock();
        for (ns, d, bytes) in counted {
            let Some(dirs) = inner.held.get_mut(&ns) else {
                continue;
            };
            match bytes {
                Some(b) => {
                    dirs.insert(d, b);
                }
                None => {
                    dirs.remove(&d);
                }
            }
        }
        inner.held.retain(|_, dirs| !dirs.is_empty());
    }

    fn append(&self, ns: &str, dir: &str) -> io::Result<()> {
        let mut line = serde_json::to_vec(&Line {
            ns: ns.to_string(),
            dir: dir.to_string(),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.ledger)?
            .write_all(&line)
    }

    /// Writes the ledger anew with what is counted now.
    fn rewrite(&self) -> io::Result<()> {
        let mut text = Vec::new();
        for (ns, dirs) in &self.lock().held {
            for d in dirs.keys() {
                serde_json::to_writer(
                    &mut text,
                    &Line {
                        ns: ns.clone(),
                        dir: d.clone(),
                    },
                )
                .map_err(io::Error::other)?;
                text.push(b'\n');
            }
        }
        crate::journal::write_private(&self.ledger, &text)
    }
}

/// Bytes of the regular files under `dir`, links not followed; `None` when `dir` is gone.
fn bytes_under(dir: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(dir).ok()?;
    if !meta.is_dir() {
        return None;
    }
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pairs: &[(&str, u64)]) -> NamespaceLimits {
        NamespaceLimits::new(pairs.iter().map(|(n, b)| (n.to_string(), *b)))
    }

    fn keep(artifacts: &Path, dir: &str, bytes: usize) {
        let d = artifacts.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("out.bin"), vec![0u8; bytes]).unwrap();
    }

    #[test]
    fn files_past_a_namespaces_quota_are_refused_and_others_are_not_counted_against_it() {
        let data = tempfile::tempdir().unwrap();
        let artifacts = data.path().join("artifacts");
        let q = ArtifactQuotas::open(limits(&[("team-a", 1_000)]), &artifacts, data.path()).unwrap();
        keep(&artifacts, "j/t/a1", 600);
        q.admit("team-a", "j/t/a1", 600).unwrap();
        keep(&artifacts, "j/t/a2", 500);
        let refused = q.admit("team-a", "j/t/a2", 500).unwrap_err();
        assert_eq!((refused.held, refused.adding, refused.limit), (600, 500, 1_000));
        assert!(
            refused.to_string().contains("--namespace-artifact-quota"),
            "{refused}"
        );
        // Another namespace, without a quota, is not limited by team-a's.
        q.admit("team-b", "j2/t/a1", 5_000).unwrap();
        assert_eq!(q.held("team-a"), 600);
    }

    #[test]
    fn the_count_survives_a_restart_and_forgets_files_that_are_gone() {
        let data = tempfile::tempdir().unwrap();
        let artifacts = data.path().join("artifacts");
        let q = ArtifactQuotas::open(limits(&[("*", 1_000)]), &artifacts, data.path()).unwrap();
        keep(&artifacts, "j/t/a1", 400);
        q.admit("team-a", "j/t/a1", 400).unwrap();
        keep(&artifacts, "j/t/a2", 300);
        q.admit("team-a", "j/t/a2", 300).unwrap();
        drop(q);
        let q = ArtifactQuotas::open(limits(&[("*", 1_000)]), &artifacts, data.path()).unwrap();
        assert_eq!(q.held("team-a"), 700, "counted again after a restart");
        assert!(q.admit("team-a", "j/t/a3", 400).is_err());
        // The retention sweep (or an operator) removes a1: at the next count it is forgotten.
        std::fs::remove_dir_all(artifacts.join("j/t/a1")).unwrap();
        q.refresh();
        assert_eq!(q.held("team-a"), 300);
        keep(&artifacts, "j/t/a3", 400);
        q.admit("team-a", "j/t/a3", 400).unwrap();
        let ledger = std::fs::read_to_string(data.path().join(LEDGER_FILE)).unwrap();
        assert!(ledger.contains("j/t/a3"), "{ledger}");
    }

    #[test]
    fn a_link_in_an_attempt_directory_counts_as_nothing_it_points_to() {
        let data = tempfile::tempdir().unwrap();
        let artifacts = data.path().join("artifacts");
        let big = data.path().join("big");
        std::fs::write(&big, vec![0u8; 10_000]).unwrap();
        keep(&artifacts, "j/t/a1", 10);
        std::os::unix::fs::symlink(&big, artifacts.join("j/t/a1/link")).unwrap();
        assert_eq!(bytes_under(&artifacts.join("j/t/a1")), Some(10));
        assert_eq!(bytes_under(&artifacts.join("j/t/nope")), None);
    }
}
