//! ferry's artifact stores: where the output files of attempts are kept, named by a URL.
//!
//! - `file:///DIR` (or an absolute path): a directory of the machine the launcher runs on, as
//!   every launcher has by default;
//! - `s3://BUCKET[/PREFIX]`: an S3 bucket, or a server that speaks S3. Credentials and settings
//!   come from the environment: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
//!   `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, the web identity token of EKS
//!   (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`), the role of an ECS or Batch task, or the
//!   instance profile of an EC2 machine (profiles of `~/.aws/config` are not read);
//! - `gs://BUCKET[/PREFIX]`: a Google Cloud Storage bucket, with the service account named by
//!   `GOOGLE_SERVICE_ACCOUNT` (a key file's path), the application default credentials or the
//!   metadata server, over Cloud Storage's JSON API; `STORAGE_EMULATOR_HOST` names an emulator
//!   (then no token is sent), as Google's client libraries read it.
//!
//! A file is stored under a key (`JOB/TASK/ATTEMPT/PATH`, [`attempt_key`]) below the store's
//! prefix, and named to users by its URI: `s3://BUCKET/PREFIX/KEY` and `gs://…` as the clouds'
//! own tools write them, `file:///…` as a URL. [`Store::key_of`] takes a URI back to its key,
//! and refuses one that is not in the store, so that a reader (the api) serves only what its
//! own stores hold.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
pub use object_store::signer::Method;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

mod gcs;
#[cfg(feature = "testing")]
pub mod testing;

/// Files at least this large go up in parts of this size (S3 takes parts of 5 MiB and more).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// What can go wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's URL or a setting is wrong: nothing will work until it is mended.
    #[error("artifact store {url}: {why}")]
    Config { url: String, why: String },
    /// A URI that does not name a file of this store.
    #[error("{uri} is not in the artifact store {store}")]
    Outside { uri: String, store: String },
    /// No file under that URI.
    #[error("{0}: no such file in the artifact store")]
    NotFound(String),
    /// A key that cannot name a file of a store (an empty part, `..`, a character refused).
    #[error("the key {key:?} cannot name a stored file: {why}")]
    Key { key: String, why: String },
    /// The store refused or failed a call (`what` says which).
    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again may succeed: a failed call to the store may be a network blip or
    /// a throttle, a wrong setting or a missing file is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            Error::Io { .. }
            | Error::Config { .. }
            | Error::Outside { .. }
            | Error::NotFound(_)
            | Error::Key { .. } => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kind of store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    S3,
    Gcs,
}

/// The key of an attempt's output file `path` (relative to its working directory):
/// `JOB/TASK/ATTEMPT/PATH`.
pub fn attempt_key(job: &str, task: &str, attempt: &str, path: &str) -> String {
    format!("{job}/{task}/{attempt}/{path}")
}

/// What holds a store's objects.
#[derive(Clone)]
enum Objects {
    /// A directory or an S3 bucket, through `object_store`.
    Store(Arc<dyn ObjectStore>),
    /// A Cloud Storage bucket, through its JSON API.
    Gcs(gcs::Gcs),
}

/// One artifact store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    objects: Objects,
    kind: Kind,
    /// The store's URL, normalized, without a trailing `/`: `s3://bucket/prefix`,
    /// `file:///dir`.
    base: String,
    /// The prefix of every key in the object store (empty for a directory, whose root is the
    /// directory itself).
    prefix: Path,
    /// The directory of a `file://` store.
    dir: Option<PathBuf>,
    /// What signs URLs that let their holder read or write one object without credentials (a
    /// bucket's; a directory has none).
    signer: Option<Arc<dyn Signer>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("base", &self.base).finish()
    }
}

impl Store {
    /// The store at `url`, its credentials and settings from the environment.
    pub fn open(url: &str) -> Result<Store> {
        Store::open_with(url, std::iter::empty::<(&str, &str)>())
    }

    /// The store at `url` with `options` over those of the environment: the keys of the
    /// store's kind as its environment variables name them, lower case without the `AWS_` or
    /// `GOOGLE_` (`endpoint_url`, `region`, `allow_http`, `access_key_id`,
    /// `secret_access_key`; `service_account`, `base_url`, `skip_signature`).
    pub fn open_with<K: AsRef<str>, V: Into<String>>(
        url: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Store> {
        let config = |why: String| Error::Config {
            url: url.to_string(),
            why,
        };
        let parsed = if url.starts_with('/') {
            url::Url::from_directory_path(url).map_err(|()| config("not an absolute directory".into()))?
        } else {
            url::Url::parse(url).map_err(|e| config(format!("not a URL ({e})")))?
        };
        match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| {
                    config("a file URL names a directory of this machine: file:///DIR".into())
                })?;
                if options.into_iter().next().is_some() {
                    return Err(config("a directory takes no options".into()));
                }
                // Private (0700) when made here, whatever the umask, as the launchers make their
                // artifact directories: whoever opens it first (a launcher or the api beside it)
                // must not leave it readable by all. Named by its real path, as launchers name
                // their files.
                {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&dir)
                        .map_err(|e| config(format!("cannot make the directory: {e}")))?;
                }
                let dir = dir
                    .canonicalize()
                    .map_err(|e| config(format!("cannot use the directory: {e}")))?;
                let local = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| config(format!("cannot use the directory: {e}")))?;
                let base = url::Url::from_file_path(&dir)
                    .map_err(|()| config("not an absolute directory".into()))?
                    .to_string();
                Ok(Store {
                    objects: Objects::Store(Arc::new(local)),
                    kind: Kind::File,
                    base: base.trim_end_matches('/').to_string(),
                    prefix: Path::default(),
                    dir: Some(dir),
                    signer: None,
                })
            }
            scheme @ ("s3" | "gs") => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| config(format!("no bucket: {scheme}://BUCKET[/PREFIX]")))?
                    .to_string();
                let prefix =
                    Path::from_url_path(parsed.path()).map_err(|e| config(format!("the prefix: {e}")))?;
                let (objects, signer, kind): (Objects, Arc<dyn Signer>, Kind) = if scheme == "s3" {
                    let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
                    for (k, v) in options {
                        let key: AmazonS3ConfigKey = aws_key(k.as_ref())
                            .parse()
                            .map_err(|_| config(format!("unknown S3 setting `{}`", k.as_ref())))?;
                        b = b.with_config(key, v);
                    }
                    let s3 = Arc::new(b.build().map_err(|e| config(e.to_string()))?);
                    (Objects::Store(s3.clone()), s3, Kind::S3)
                } else {
                    let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
                    for (k, v) in options {
                        let key: GoogleConfigKey = google_key(k.as_ref())
                            .parse()
                            .map_err(|_| config(format!("unknown GCS setting `{}`", k.as_ref())))?;
                        b = b.with_config(key, v);
                    }
                    let base_url = b.get_config_value(&GoogleConfigKey::BaseUrl);
                    let skip_signature = b
                        .get_config_value(&GoogleConfigKey::SkipSignature)
                        .is_some_and(|v| v == "true");
                    let signer = Arc::new(b.build().map_err(|e| config(e.to_string()))?);
                    let (endpoint, credentials) = gcs::endpoint(
                        base_url,
                        skip_signature,
                        std::env::var("STORAGE_EMULATOR_HOST").ok(),
                        signer.credentials(),
                    );
                    let gcs = gcs::Gcs::new(&endpoint, &bucket, credentials).map_err(config)?;
                    (Objects::Gcs(gcs), signer, Kind::Gcs)
                };
                let base = if prefix.as_ref().is_empty() {
                    format!("{scheme}://{bucket}")
                } else {
                    format!("{scheme}://{bucket}/{prefix}")
                };
                Ok(Store {
                    objects,
                    kind,
                    base,
                    prefix,
                    dir: None,
                    signer: Some(signer),
                })
            }
            other => Err(config(format!(
                "`{other}://` is not a kind of store ferry knows: file:///DIR, s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]"
            ))),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The store's URL, without a trailing `/`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The directory of a `file://` store.
    pub fn dir(&self) -> Option<&FsPath> {
        self.dir.as_deref()
    }

    /// The URI users see of the file stored under `key`.
    pub fn uri(&self, key: &str) -> String {
        match &self.dir {
            Some(dir) => url::Url::from_file_path(dir.join(key))
                .map(String::from)
                .unwrap_or_else(|()| format!("{}/{key}", self.base)),
            None => format!("{}/{key}", self.base),
        }
    }

    /// The key of `uri` in this store; [`Error::Outside`] when `uri` names no file of it.
    pub fn key_of(&self, uri: &str) -> Result<String> {
        let outside = || Error::Outside {
            uri: uri.to_string(),
            store: self.base.clone(),
        };
        let key = match &self.dir {
            Some(dir) => {
                let path = url::Url::parse(uri)
                    .ok()
                    .filter(|u| u.scheme() == "file")
                    .and_then(|u| u.to_file_path().ok())
                    .ok_or_else(outside)?;
                let rest = path.strip_prefix(dir).map_err(|_| outside())?;
                rest.to_str().ok_or_else(outside)?.to_string()
            }
            None => uri
                .strip_prefix(&self.base)
                .and_then(|rest| rest.strip_prefix('/'))
                .ok_or_else(outside)?
                .to_string(),
        };
        // A key is plain parts: nothing that climbs out of the store or its prefix.
        self.path(&key).map_err(|_| outside())?;
        Ok(key)
    }

    fn path(&self, key: &str) -> Result<Path> {
        let invalid = |why: String| Error::Key {
            key: key.to_string(),
            why,
        };
        if key.is_empty() || key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(invalid("a key is a relative path of plain names".into()));
        }
        let key = Path::parse(key).map_err(|e| invalid(e.to_string()))?;
        Ok(self.prefix.parts().chain(key.parts()).collect())
    }

    /// A URL that lets whoever holds it `method` (GET or PUT) the object under `key` for
    /// `expires_in`, with no credentials of its own: how a compute with no access to the
    /// bucket reads its inputs and writes its results. A bucket's only; S3 signs for at most
    /// seven days, and never beyond the expiry of the credentials that signed.
    pub async fn signed_url(
        &self,
        method: Method,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<url::Url> {
        let Some(signer) = &self.signer else {
            return Err(Error::Config {
                url: self.base.clone(),
                why: "a directory cannot hand out signed URLs: use an s3:// or gs:// store".into(),
            });
        };
        let path = self.path(key)?;
        signer
            .signed_url(method, &path, expires_in)
            .await
            .map_err(|source| Error::Store {
                what: format!("cannot sign a URL for {}", self.uri(key)),
                source,
            })
    }

    /// Stores the local file `local` under `key`, replacing what was there (storing the same
    /// file twice is harmless). Returns its size.
    pub async fn put_file(&self, key: &str, local: &FsPath) -> Result<u64> {
        let path = self.path(key)?;
        let io = |source| Error::Io {
            what: format!("cannot read {}", local.display()),
            source,
        };
        let store_error = |source| Error::Store {
            what: format!("cannot store {} as {}", local.display(), self.uri(key)),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        if size < PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await.map_err(io)?;
            let n = bytes.len() as u64;
            self.put_bytes(&path, Bytes::from(bytes))
                .await
                .map_err(store_error)?;
            return Ok(n);
        }
        match &self.objects {
            Objects::Store(inner) => {
                let upload = inner.put_multipart(&path).await.map_err(store_error)?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                let mut buf = vec![0u8; 1024 * 1024];
                let mut n = 0u64;
                loop {
                    let read = match file.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(read) => read,
                        Err(e) => {
                            writer.abort().await.ok();
                            return Err(io(e));
                        }
                    };
                    writer.wait_for_capacity(4).await.map_err(store_error)?;
                    writer.write(&buf[..read]);
                    n += read as u64;
                }
                writer.finish().await.map_err(store_error)?;
                Ok(n)
            }
            Objects::Gcs(gcs) => {
                let mut upload = gcs.start_upload(path.as_ref()).await.map_err(store_error)?;
                let mut n = 0u64;
                loop {
                    let mut part = Vec::with_capacity(gcs::CHUNK_BYTES);
                    let read = (&mut file)
                        .take(gcs::CHUNK_BYTES as u64)
                        .read_to_end(&mut part)
                        .await;
                    if let Err(e) = read {
                        upload.abort().await;
                        return Err(io(e));
                    }
                    // The size read at the start is the file's: a file still growing is cut there.
                    let last = part.len() < gcs::CHUNK_BYTES || n + part.len() as u64 >= size;
                    n += part.len() as u64;
                    if let Err(e) = upload.send(Bytes::from(part), last).await {
                        upload.abort().await;
                        return Err(store_error(e));
                    }
                    if last {
                        return Ok(n);
                    }
                }
            }
        }
    }

    async fn put_bytes(&self, path: &Path, bytes: Bytes) -> object_store::Result<()> {
        match &self.objects {
            Objects::Store(inner) => inner.put(path, PutPayload::from(bytes)).await.map(drop),
            Objects::Gcs(gcs) => gcs.put(path.as_ref(), bytes).await,
        }
    }

    /// Stores `bytes` under `key`.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.put_bytes(&path, bytes).await.map_err(|source| Error::Store {
            what: format!("cannot store {}", self.uri(key)),
            source,
        })
    }

    /// The file stored under `key`: its size and its bytes as they come.
    pub async fn get(&self, key: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        let path = self.path(key)?;
        let uri = self.uri(key);
        let got = match &self.objects {
            Objects::Store(inner) => match inner.get(&path).await {
                Ok(got) => Ok((got.meta.size, got.into_stream())),
                Err(e) => Err(e),
            },
            Objects::Gcs(gcs) => gcs.get(path.as_ref()).await,
        };
        let (size, stream) = got.map_err(|source| match source {
            object_store::Error::NotFound { .. } => Error::NotFound(uri.clone()),
            source => Error::Store {
                what: format!("cannot read {uri}"),
                source,
            },
        })?;
        let stream = stream
            .map_err(move |source| Error::Store {
                what: format!("cannot read {uri}"),
                source,
            })
            .boxed();
        Ok((size, stream))
    }

    /// The whole file stored under `key`.
    pub async fn read(&self, key: &str) -> Result<Bytes> {
        let (_, stream) = self.get(key).await?;
        let parts: Vec<Bytes> = stream.try_collect().await?;
        Ok(parts.concat().into())
    }

    /// The URIs of the files whose key starts with `dir/`.
    pub async fn list_under(&self, dir: &str) -> Result<Vec<String>> {
        let listed = self.locations_under(dir).await?;
        Ok(listed
            .iter()
            .map(|p| {
                let key: Path = p.parts().skip(self.prefix.parts().count()).collect();
                self.uri(key.as_ref())
            })
            .collect())
    }

    async fn locations_under(&self, dir: &str) -> Result<Vec<Path>> {
        let path = self.path(dir.trim_end_matches('/'))?;
        let listed = match &self.objects {
            Objects::Store(inner) => {
                inner
                    .list(Some(&path))
                    .map_ok(|meta| meta.location)
                    .try_collect()
                    .await
            }
            Objects::Gcs(gcs) => gcs.list(&format!("{path}/")).await.and_then(|names| {
                names
                    .into_iter()
                    .map(|name| {
                        Path::parse(&name).map_err(|e| object_store::Error::InvalidPath { source: e })
                    })
                    .collect()
            }),
        };
        listed.map_err(|source| Error::Store {
            what: format!("cannot list {}/", self.uri(dir.trim_end_matches('/'))),
            source,
        })
    }

    /// Removes every file whose key starts with `dir/` (an attempt's `JOB/TASK/ATTEMPT`).
    /// Returns how many were removed; removing what is gone already is no error.
    pub async fn remove_under(&self, dir: &str) -> Result<usize> {
        let what = || format!("cannot remove {}/", self.uri(dir.trim_end_matches('/')));
        let listed = self.locations_under(dir).await?;
        let n = listed.len();
        let mut removed = match &self.objects {
            Objects::Store(inner) => {
                inner.delete_stream(futures::stream::iter(listed.into_iter().map(Ok)).boxed())
            }
            Objects::Gcs(gcs) => {
                let gcs = gcs.clone();
                futures::stream::iter(listed)
                    .map(move |path| {
                        let gcs = gcs.clone();
                        async move { gcs.delete(path.as_ref()).await.map(|()| path) }
                    })
                    .buffer_unordered(8)
                    .boxed()
            }
        };
        while let Some(r) = removed.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(Error::Store { what: what(), source }),
            }
        }
        Ok(n)
    }
}

/// `AWS_ENDPOINT_URL`, `aws_endpoint_url` and `endpoint_url` all name the same setting.
fn aws_key(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    if key.starts_with("aws_") {
        key
    } else {
        format!("aws_{key}")
    }
}

fn google_key(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    if key.starts_with("google_") {
        key
    } else {
        format!("google_{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_kind_and_bad_ones_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(s.kind(), Kind::File);
        assert_eq!(s.dir(), Some(dir.path()));
        let s = Store::open_with("s3://bucket/a/b/", [("region", "us-east-1")]).unwrap();
        assert_eq!((s.kind(), s.url()), (Kind::S3, "s3://bucket/a/b"));
        assert_eq!(s.uri("j/t/a/x y.txt"), "s3://bucket/a/b/j/t/a/x y.txt");
        let s = Store::open_with("s3://bucket/my%20runs", [("region", "us-east-1")]).unwrap();
        assert_eq!(s.uri("j/f"), "s3://bucket/my runs/j/f");
        assert_eq!(s.key_of("s3://bucket/my runs/j/f").unwrap(), "j/f");
        let s = Store::open_with("gs://bucket/runs", [("skip_signature", "true")]).unwrap();
        assert_eq!(
            (s.kind(), s.uri("j/f")),
            (Kind::Gcs, "gs://bucket/runs/j/f".to_string())
        );
        let e = Store::open_with("gs://b", [("colour", "blue")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown GCS setting `colour`"), "{e}");
        let e = Store::open("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("`ftp://` is not a kind of store"), "{e}");
        let e = Store::open("s3:///x").unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = Store::open_with("s3://b", [("colour", "blue")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown S3 setting `colour`"), "{e}");
        let e = Store::open("relative/dir").unwrap_err().to_string();
        assert!(e.contains("not a URL"), "{e}");
    }

    #[test]
    fn a_uri_maps_back_to_its_key_only_inside_the_store() {
        let s = Store::open_with("s3://bucket/pre", [("region", "us-east-1")]).unwrap();
        assert_eq!(s.key_of("s3://bucket/pre/j/t/a/f.txt").unwrap(), "j/t/a/f.txt");
        for bad in [
            "s3://bucket/other/j/t/a/f",
            "s3://bucket/prefix/j",
            "s3://bucket2/pre/j",
            "s3://bucket/pre/../x",
            "s3://bucket/pre//x",
            "gs://bucket/pre/j",
        ] {
            assert!(matches!(s.key_of(bad), Err(Error::Outside { .. })), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        let uri = f.uri("j/t/a/a b.txt");
        assert!(uri.ends_with("/j/t/a/a%20b.txt"), "{uri}");
        assert_eq!(f.key_of(&uri).unwrap(), "j/t/a/a b.txt");
        assert!(matches!(
            f.key_of("file:///etc/passwd"),
            Err(Error::Outside { .. })
        ));
        let climbing = format!("file://{}/j/../../x", dir.path().display());
        assert!(f.key_of(&climbing).is_err());
    }

    #[test]
    fn a_directory_made_for_a_store_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/artifacts");
        Store::open(dir.to_str().unwrap()).unwrap();
        for made in [root.path().join("data"), dir] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", made.display());
        }
    }

    #[tokio::test]
    async fn a_directory_store_keeps_reads_and_removes_files() {
        let root = tempfile::tempdir().unwrap();
        let s = Store::open(root.path().to_str().unwrap()).unwrap();
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), b"hello").unwrap();
        assert_eq!(s.put_file("j/t/a/out/x.txt", src.path()).await.unwrap(), 5);
        s.put("j/t/a/y", Bytes::from_static(b"yy")).await.unwrap();
        assert_eq!(
            std::fs::read(root.path().join("j/t/a/out/x.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(
            s.read("j/t/a/out/x.txt").await.unwrap(),
            Bytes::from_static(b"hello")
        );
        assert!(matches!(s.get("j/t/a/none").await, Err(Error::NotFound(_))));
        assert_eq!(s.remove_under("j/t/a").await.unwrap(), 2);
        assert_eq!(s.remove_under("j/t/a").await.unwrap(), 0);
        assert!(s.put("../x", Bytes::new()).await.is_err());
    }
}
