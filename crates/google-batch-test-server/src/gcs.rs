//! GCS volumes, emulated against a GCS server's JSON API (fake-gcs-server in tests).
//!
//! On a Batch VM, gcsfuse mounts `BUCKET/PREFIX` live at the volume's mount path. Here it is a
//! copy instead: before the container starts, every object under the prefix is downloaded into
//! a fresh directory of the host, which is bind-mounted; after the container ends (however it
//! ends), what changed is written back: new and changed files are uploaded, the objects of
//! removed files deleted, and the directory removed. So a task sees the objects that were
//! there when it started, and others see what it wrote only once it has ended; nothing is
//! shared live between tasks. The host directory must be visible to the Docker engine at the
//! same path (an engine on this machine).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::jobs::GcsVolume;

#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: the GCS server answered {status}: {body}")]
    Status {
        what: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = GcsError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GcsError {
    let what = what.into();
    move |source| GcsError::Io { what, source }
}

/// A client of a GCS JSON API at `endpoint` (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub struct Gcs {
    http: reqwest::Client,
    endpoint: String,
}

/// A volume's local copy while its task runs.
#[derive(Debug)]
pub struct Mounted {
    pub volume: GcsVolume,
    pub dir: tempfile::TempDir,
    /// Each downloaded file by its path in the directory, with the digest of its content.
    downloaded: BTreeMap<String, [u8; 32]>,
}

/// What a sync back did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    pub uploaded: usize,
    pub deleted: usize,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Objects {
    #[serde(default)]
    items: Vec<Object>,
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Object {
    name: String,
}

fn encode(name: &str) -> String {
    utf8_percent_encode(name, NON_ALPHANUMERIC).to_string()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Gcs {
    pub fn new(endpoint: &str) -> Gcs {
        Gcs {
            http: reqwest::Client::new(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    /// `PREFIX/` of the volume, or nothing for a whole bucket.
    fn dir_prefix(v: &GcsVolume) -> String {
        if v.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", v.prefix)
        }
    }

    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|source| GcsError::Http {
            what: what.to_string(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Err(GcsError::Status {
            what: what.to_string(),
            status,
            body: body.chars().take(500).collect(),
        })
    }

    /// The names of the objects under the volume's prefix.
    async fn list(&self, v: &GcsVolume) -> Result<Vec<String>> {
        let prefix = Gcs::dir_prefix(v);
        let what = format!("listing gs://{}/{prefix}", v.bucket);
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, encode(&v.bucket));
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("prefix", prefix.clone())];
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let page: Objects = self
                .send(&what, self.http.get(&url).query(&query))
                .await?
                .json()
                .await
                .map_err(|source| GcsError::Http {
                    what: what.clone(),
                    source,
                })?;
            names.extend(page.items.into_iter().map(|o| o.name));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(names),
            }
        }
    }

    fn object_url(&self, bucket: &str, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            encode(bucket),
            encode(name)
        )
    }

    /// Copies the volume's objects into a new directory anyone can write to (the task may
    /// run as any user): directories 0777, files 0666.
    pub async fn download(&self, v: &GcsVolume) -> Result<Mounted> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-batch-gcs-")
            .tempdir()
            .map_err(io("making a directory for a GCS volume"))?;
        set_mode(dir.path(), 0o777)?;
        let prefix = Gcs::dir_prefix(v);
        let mut downloaded = BTreeMap::new();
        for name in self.list(v).await? {
            let Some(rel) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Some(path) = local_path(dir.path(), rel) else {
                continue;
            };
            if rel.ends_with('/') {
                make_dirs(dir.path(), &path)?;
                continue;
            }
            let what = format!("downloading gs://{}/{name}", v.bucket);
            let bytes = self
                .send(
                    &what,
                    self.http
                        .get(self.object_url(&v.bucket, &name))
                        .query(&[("alt", "media")]),
                )
                .await?
                .bytes()
                .await
                .map_err(|source| GcsError::Http {
                    what: what.clone(),
                    source,
                })?;
            if let Some(parent) = path.parent() {
                make_dirs(dir.path(), parent)?;
            }
            std::fs::write(&path, &bytes).map_err(io(format!("writing {}", path.display())))?;
            set_mode(&path, 0o666)?;
            downloaded.insert(rel.to_string(), digest(&bytes));
        }
        Ok(Mounted {
            volume: v.clone(),
            dir,
            downloaded,
        })
    }

    /// Writes back what the task changed in its copy: uploads new and changed files, deletes
    /// the objects of files it removed. The directory goes when `m` is dropped.
    pub async fn sync_back(&self, m: &Mounted) -> Result<Synced> {
        let root = m.dir.path().to_path_buf();
        let files = tokio::task::spawn_blocking(move || walk(&root))
            .await
            .map_err(|e| GcsError::Io {
                what: "reading a GCS volume's directory".into(),
                source: std::io::Error::other(e),
            })??;
        let v = &m.volume;
        let prefix = Gcs::dir_prefix(v);
        let mut synced = Synced::default();
        for (rel, (path, sum)) in &files {
            if m.downloaded.get(rel) == Some(sum) {
                continue;
            }
            let name = format!("{prefix}{rel}");
            let bytes = tokio::fs::read(path)
                .await
                .map_err(io(format!("reading {}", path.display())))?;
            // The content may have changed since it was hashed; what is read is what is sent.
            let url = format!("{}/upload/storage/v1/b/{}/o", self.endpoint, encode(&v.bucket));
            self.send(
                &format!("uploading gs://{}/{name}", v.bucket),
                self.http
                    .post(url)
                    .query(&[("uploadType", "media"), ("name", name.as_str())])
                    .header("content-type", "application/octet-stream")
                    .body(bytes),
            )
            .await?;
            synced.uploaded += 1;
        }
        for rel in m.downloaded.keys() {
            if files.contains_key(rel) {
                continue;
            }
            let name = format!("{prefix}{rel}");
            let what = format!("deleting gs://{}/{name}", v.bucket);
            match self
                .send(&what, self.http.delete(self.object_url(&v.bucket, &name)))
                .await
            {
                Ok(_) => synced.deleted += 1,
                // Gone already: someone else deleted it, which is what was wanted.
                Err(GcsError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        Ok(synced)
    }
}

/// Where object `rel` goes under `root`, or `None` for a name that would leave it.
fn local_path(root: &Path, rel: &str) -> Option<PathBuf> {
    let trimmed = rel.trim_end_matches('/');
    if trimmed.is_empty() {
        return None;
    }
    let mut path = root.to_path_buf();
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return None;
        }
        path.push(part);
    }
    Some(path)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

/// Makes `dir` and its parents up to `root`, each 0777.
fn make_dirs(root: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(format!("making {}", dir.display())))?;
    let mut at = dir;
    while at != root && at.starts_with(root) {
        set_mode(at, 0o777)?;
        at = match at.parent() {
            Some(p) => p,
            None => break,
        };
    }
    Ok(())
}

/// The regular files under `root` by their `/`-separated path in it, with their digests.
/// Symlinks are not followed: gcsfuse does not store them either.
fn walk(root: &Path) -> Result<BTreeMap<String, (PathBuf, [u8; 32])>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(io(format!("reading {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(io(format!("reading {}", path.display())))?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
                let Ok(rel) = path.strip_prefix(root) else {
                    continue;
                };
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                files.insert(rel.join("/"), (path, digest(&bytes)));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_stay_inside_the_volume() {
        let root = Path::new("/v");
        assert_eq!(local_path(root, "a/b.txt"), Some(PathBuf::from("/v/a/b.txt")));
        assert_eq!(local_path(root, "a/"), Some(PathBuf::from("/v/a")));
        for bad in ["", "/", "../x", "a/../../x", "a//b"] {
            assert_eq!(local_path(root, bad), None, "{bad}");
        }
    }
}
