//! What every launcher service is configured with, whatever its backend ([`Service`]), and what
//! it does before the runtime starts ([`Service::prepare`]). Each backend's `Config` holds one
//! as `service` beside the settings that are its own, so that the flags, the defaults and the
//! start-up checks are written once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_runtime::NamespaceLimits;

use crate::journal::Journal;
use crate::quota::ArtifactQuotas;
use crate::retention::ArtifactRetention;
use crate::secrets::Secrets;
use crate::{Config, Error, Result};

/// A launcher service's settings that do not depend on its backend.
#[derive(Debug, Clone)]
pub struct Service {
    /// Holds the journal (and whatever else the backend keeps); output files go to
    /// `artifacts/` in it by default.
    pub data_dir: PathBuf,
    /// Where output files are copied, as `<job>/<task>/<attempt>/<path>`.
    pub artifact_dir: Option<PathBuf>,
    /// Output files stored longer ago than this are removed from the artifact directory by a
    /// periodic sweep (`None`: kept for ever).
    pub artifact_retention: Option<Duration>,
    /// Bytes of output files each namespace may keep in the artifact directory.
    pub artifact_quotas: NamespaceLimits,
    /// The bucket output files are stored in (`s3://BUCKET[/PREFIX]`, `gs://…`) instead of the
    /// artifact directory, which then holds them only until they are stored.
    pub artifact_store: Option<String>,
    /// Settings of the artifact store over those of the environment (see
    /// [`ferry_artifacts::Store::open_with`]).
    pub artifact_store_options: Vec<(String, String)>,
    /// Attempts running at once, and the dispatch subscription's prefetch.
    pub max_parallel: usize,
    /// Time a stopped task gets between the request to end and the end for good.
    pub kill_grace: Duration,
    /// Most lines in one `task.log` event.
    pub log_batch_lines: usize,
    /// A `task.log` event is sent at least this often while lines flow.
    pub log_batch_interval: Duration,
    /// Secrets read when the configuration was made (`FERRY_SECRET_*`), to which
    /// [`Service::prepare`] adds those of `secrets_file`.
    pub secrets: Secrets,
    /// A secrets file read when the launcher starts (see [`Secrets::from_file`]).
    pub secrets_file: Option<PathBuf>,
    /// The CloudEvents `source` of this instance.
    pub source: String,
    /// The consumer group of the dispatch topic.
    pub group: String,
}

/// What [`Service::prepare`] made ready.
pub struct Prepared {
    /// The runtime's configuration, with the artifact sweep and quotas.
    pub runtime: Config,
    pub journal: Journal,
    /// The data directory and the artifact directory, created and absolute.
    pub data_dir: PathBuf,
    pub artifacts: PathBuf,
}

impl Service {
    /// Defaults of the launcher service `name` (`launcher-docker`, …): 64 attempts at once, 10 s
    /// grace, batches of 256 lines or 20 ms, secrets from `FERRY_SECRET_*` and the file
    /// `FERRY_SECRETS_FILE` names, consumer group `name`.
    pub fn new(data_dir: impl Into<PathBuf>, name: &str) -> Service {
        Service {
            data_dir: data_dir.into(),
            artifact_dir: None,
            artifact_retention: None,
            artifact_quotas: NamespaceLimits::default(),
            artifact_store: None,
            artifact_store_options: Vec::new(),
            max_parallel: 64,
            kill_grace: Duration::from_secs(10),
            log_batch_lines: 256,
            log_batch_interval: Duration::from_millis(20),
            secrets: Secrets::from_env(),
            secrets_file: std::env::var("FERRY_SECRETS_FILE")
                .ok()
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            source: ferry_runtime::instance_source(name),
            group: name.to_string(),
        }
    }

    /// What the runtime needs of it, but the artifact sweep and quotas, which
    /// [`Service::prepare`] adds once the directories exist.
    pub fn runtime(&self) -> Config {
        Config {
            max_parallel: self.max_parallel,
            kill_grace: self.kill_grace,
            log_batch_lines: self.log_batch_lines,
            log_batch_interval: self.log_batch_interval,
            secrets: self.secrets.clone(),
            source: self.source.clone(),
            group: self.group.clone(),
            artifact_retention: None,
            artifact_quotas: None,
            artifact_store: None,
        }
    }

    /// What the runtime needs of it, with the sweep and quotas of the artifact directory
    /// `artifacts` (made already), whose quota ledger is kept in `data_dir`, and the artifact
    /// store.
    pub fn runtime_over(&self, artifacts: &Path, data_dir: &Path) -> Result<Config> {
        let mut runtime = self.runtime();
        if let Some(url) = &self.artifact_store {
            runtime.artifact_store = Some(self.store(url)?);
        }
        runtime.artifact_retention = self
            .artifact_retention
            .map(|older_than| ArtifactRetention::new(artifacts, older_than));
        runtime.artifact_quotas = ArtifactQuotas::configure(&self.artifact_quotas, artifacts, data_dir)?;
        Ok(runtime)
    }

    /// The artifact store at `url`: a bucket, whose own lifecycle rules and limits keep its
    /// files (the sweep and quotas of the artifact directory would find nothing there).
    fn store(&self, url: &str) -> Result<ferry_artifacts::Store> {
        let store = ferry_artifacts::Store::open_with(url, self.artifact_store_options.iter().cloned())
            .map_err(|e| Error::Config(e.to_string()))?;
        let refused = |why: &str| Err(Error::Config(format!("--artifact-store {url}: {why}")));
        if store.kind() == ferry_artifacts::Kind::File {
            return refused(
                "a directory of this machine is set with --artifact-dir; the store is a bucket (s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX])",
            );
        }
        if self.artifact_retention.is_some() {
            return refused(
                "--artifact-retention sweeps the artifact directory, which keeps no file once it is stored: let the bucket's lifecycle rules remove old files",
            );
        }
        if !self.artifact_quotas.is_empty() {
            return refused(
                "--namespace-artifact-quota counts the artifact directory, which keeps no file once it is stored: limit the bucket instead",
            );
        }
        Ok(store)
    }

    /// The artifact directory: `artifact_dir`, else `artifacts/` in the data directory.
    pub fn artifacts(&self) -> PathBuf {
        self.artifact_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("artifacts"))
    }

    /// Checks the settings, reads the secrets file, creates the data and artifact directories
    /// and opens the journal: all a backend's `run` does before it makes its backend.
    pub fn prepare(&mut self) -> Result<Prepared> {
        self.runtime().check()?;
        if let Some(path) = &self.secrets_file {
            self.secrets.extend(Secrets::from_file(path)?);
            self.secrets.check().map_err(Error::Config)?;
        }
        let data_dir = made_dir(&self.data_dir, "data directory")?;
        let artifacts = made_dir(&self.artifacts(), "artifact directory")?;
        let journal = Journal::open(&data_dir).map_err(|source| Error::Io {
            what: format!("cannot read the journal in {}", data_dir.display()),
            source,
        })?;
        let runtime = self.runtime_over(&artifacts, &data_dir)?;
        Ok(Prepared {
            runtime,
            journal,
            data_dir,
            artifacts,
        })
    }
}

/// Creates a directory of the launcher's and returns it absolute.
fn made_dir(path: &Path, what: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(path)
        .and_then(|()| path.canonicalize())
        .map_err(|source| Error::Io {
            what: format!("cannot create the {what} {}", path.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_makes_the_directories_and_reads_the_secrets_file() {
        let tmp = tempfile::tempdir().unwrap();
        let secrets = tmp.path().join("secrets");
        std::fs::write(&secrets, "TOKEN=a-secret-of-some-length\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut service = Service::new(tmp.path().join("data"), "launcher-test");
        service.secrets_file = Some(secrets);
        service.artifact_retention = Some(Duration::from_secs(60));
        let prepared = service.prepare().unwrap();
        assert!(prepared.data_dir.is_absolute() && prepared.data_dir.is_dir());
        assert_eq!(prepared.artifacts, prepared.data_dir.join("artifacts"));
        assert!(prepared.artifacts.is_dir());
        assert!(prepared.runtime.artifact_retention.is_some());
        assert_eq!(prepared.runtime.group, "launcher-test");
        assert_eq!(service.secrets.get("TOKEN"), Some("a-secret-of-some-length"));
    }

    #[test]
    fn prepare_refuses_settings_that_can_never_work() {
        let tmp = tempfile::tempdir().unwrap();
        let mut service = Service::new(tmp.path().join("data"), "launcher-test");
        service.max_parallel = 0;
        let e = service.prepare().err().unwrap();
        assert!(e.to_string().contains("max_parallel"), "{e}");
        assert!(
            !tmp.path().join("data").exists(),
            "nothing is created for a bad configuration"
        );
    }
}
