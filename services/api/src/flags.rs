//! The api's flags: one definition for `ferry-api`, `ferry service api` and `ferry up`. The log
//! store it reads is named by `ferry_log_collector::LogDb`, shared with the log collector.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_log_collector::LogDb;

use crate::{Access, Config, DEFAULT_BODY_LIMIT, DEFAULT_GROUP, Result, TlsFiles};

/// The api's command-line flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "api")]
#[command(next_help_heading = "Api")]
pub struct Flags {
    /// The address the api listens on.
    #[arg(
        long,
        env = "FERRY_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// The api's read model: sqlite://PATH or postgres://… [default: sqlite://DATA_DIR/api.db]
    #[arg(long, env = "FERRY_API_DB", value_name = "URL")]
    pub api_db: Option<String>,
    /// Consumer group of the read model; api instances sharing one database share it.
    #[arg(long, env = "FERRY_API_GROUP", value_name = "NAME", default_value = DEFAULT_GROUP)]
    pub api_group: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "FERRY_BODY_LIMIT", value_name = "BYTES", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// How long a followed log stream waits for the lines of a finished job.
    #[arg(long, env = "FERRY_LOG_GRACE", value_name = "DURATION", default_value = "30s", value_parser = ferry_connect::service::duration)]
    pub log_grace: Duration,
    /// The bearer tokens that may use the api (YAML: name, sha256, scopes, namespaces), read
    /// again when it changes; `ferry token create` makes a token [default: DATA_DIR/tokens.yaml,
    /// created on first start with an admin token in DATA_DIR/admin.token].
    #[arg(long, env = "FERRY_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Ask for no credential at all: every request may do everything. Refused unless --listen
    /// is a loopback address.
    #[arg(long, env = "FERRY_INSECURE_NO_AUTH", conflicts_with = "tokens_file")]
    pub insecure_no_auth: bool,
    /// Serve HTTPS with this certificate chain (PEM); read again when it changes.
    #[arg(long, env = "FERRY_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A host name clients use to reach the api (checked against `Host`); repeat or
    /// comma-separate, `*` for any. The listening address (and localhost on loopback) is
    /// always allowed.
    #[arg(
        long = "allowed-host",
        env = "FERRY_ALLOWED_HOST",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// How long a client may take to send a request's headers (and its TLS handshake).
    #[arg(long, env = "FERRY_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = ferry_connect::service::duration)]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, and the api to begin its answer.
    #[arg(long, env = "FERRY_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = ferry_connect::service::duration)]
    pub request_timeout: Duration,
    /// Serve output files kept in this artifact store (file:///DIR, s3://BUCKET[/PREFIX],
    /// gs://BUCKET[/PREFIX]) to those who may read their job; repeat the flag, or separate with
    /// commas. `ferry up` serves its launchers' own.
    #[arg(
        long = "serve-artifacts",
        env = "FERRY_SERVE_ARTIFACTS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub serve_artifacts: Vec<String>,
}

impl Flags {
    /// The api's configuration, keeping its defaults in `data_dir` and reading the log store
    /// at `logs_url`. Without `--tokens-file` (nor `--insecure-no-auth`), the data directory's
    /// tokens file is used, made on first start with an admin token beside it.
    pub fn config(&self, data_dir: &Path, logs_url: String) -> Result<Config> {
        let db = self
            .api_db
            .clone()
            .unwrap_or_else(|| ferry_runtime::sqlite_url(&data_dir.join("api.db")));
        let access = if self.insecure_no_auth {
            Access::InsecureNoAuth
        } else if let Some(file) = &self.tokens_file {
            Access::TokensFile(file.clone())
        } else {
            let b = crate::auth::bootstrap(data_dir)?;
            match (&b.admin_token_file, b.created) {
                (Some(admin), true) => tracing::info!(
                    tokens_file = %b.tokens_file.display(),
                    admin_token = %admin.display(),
                    "api tokens file created with an admin token (ferry clients on this machine use it; elsewhere set FERRY_TOKEN)"
                ),
                _ => tracing::info!(tokens_file = %b.tokens_file.display(), "api tokens file"),
            }
            Access::TokensFile(b.tokens_file)
        };
        Ok(Config {
            listen: self.listen,
            group: self.api_group.clone(),
            body_limit: self.body_limit,
            log_grace: self.log_grace,
            access: Some(access),
            tls: self
                .tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
            allowed_hosts: self.allowed_hosts.clone(),
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            artifact_stores: self.serve_artifacts.clone(),
            ..Config::new(db, logs_url)
        })
    }
}

/// The flags of an api process: its own and the log store's, which it reads.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessFlags {
    #[command(flatten)]
    pub api: Flags,
    #[command(flatten)]
    pub logs: LogDb,
}

impl ProcessFlags {
    /// The api's configuration, keeping its defaults in `data_dir`.
    pub fn config(&self, data_dir: &Path) -> Result<Config> {
        self.api.config(data_dir, self.logs.url(data_dir))
    }
}
