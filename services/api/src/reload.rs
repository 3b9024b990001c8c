//! Noticing that files changed: the tokens file and the TLS certificate are read again when
//! they do, so that a token is revoked or a certificate renewed without a restart.

use std::path::Path;
use std::time::SystemTime;

/// What identifies a version of some files: each one's modification time, size and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamp {
    pub fn of(paths: &[&Path]) -> Stamp {
        Stamp(
            paths
                .iter()
                .map(|p| {
                    let m = std::fs::metadata(p).ok()?;
                    #[cfg(unix)]
                    let ino = std::os::unix::fs::MetadataExt::ino(&m);
                    #[cfg(not(unix))]
                    let ino = 0;
                    Some((m.modified().ok()?, m.len(), ino))
                })
                .collect(),
        )
    }
}
