//! The api's flags: one definition for `ferry-api`, `ferry service api` and `ferry up`. The log
//! store it reads is named by `ferry_log_collector::LogDb`, shared with the log collector.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_log_collector::LogDb;

use crate::{Config, DEFAULT_BODY_LIMIT, DEFAULT_GROUP};

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
}

impl Flags {
    /// The api's configuration, keeping its defaults in `data_dir` and reading the log store
    /// at `logs_url`.
    pub fn config(&self, data_dir: &Path, logs_url: String) -> Config {
        let db = self
            .api_db
            .clone()
            .unwrap_or_else(|| ferry_runtime::sqlite_url(&data_dir.join("api.db")));
        Config {
            listen: self.listen,
            group: self.api_group.clone(),
            body_limit: self.body_limit,
            log_grace: self.log_grace,
            ..Config::new(db, logs_url)
        }
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
    pub fn config(&self, data_dir: &Path) -> Config {
        self.api.config(data_dir, self.logs.url(data_dir))
    }
}
