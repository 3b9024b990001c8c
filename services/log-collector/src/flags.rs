//! The log collector's flags, and the log store's, which the api reads: one definition for
//! `ferry-log-collector`, `ferry-api`, `ferry service log-collector|api` and `ferry up`.

use std::path::Path;
use std::time::Duration;

use crate::{Config, DEFAULT_BATCH_MAX, DEFAULT_GROUP, LogQuotas, LogStore, Result};

/// Where the log store is: written by the log collector, read by the api.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "log-store")]
#[command(next_help_heading = "Log store")]
pub struct LogDb {
    /// The log store: sqlite://PATH (written by the log collector, read by the api)
    /// [default: sqlite://DATA_DIR/logs.db]
    #[arg(long, env = "FERRY_LOG_DB", value_name = "URL")]
    pub log_db: Option<String>,
}

impl LogDb {
    /// The store's URL, `data_dir`'s `logs.db` unless `--log-db` names one.
    pub fn url(&self, data_dir: &Path) -> String {
        self.log_db
            .clone()
            .unwrap_or_else(|| ferry_runtime::sqlite_url(&data_dir.join("logs.db")))
    }
}

/// The log collector's command-line flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "log-collector")]
#[command(next_help_heading = "Log collector")]
pub struct Flags {
    /// Consumer group; every log collector of one deployment shares it.
    #[arg(long, env = "FERRY_LOG_COLLECTOR_GROUP", value_name = "NAME", default_value = DEFAULT_GROUP)]
    pub log_collector_group: String,
    /// Most task.log events stored per transaction.
    #[arg(long, env = "FERRY_LOG_COLLECTOR_BATCH_MAX", value_name = "N", default_value_t = DEFAULT_BATCH_MAX)]
    pub log_collector_batch_max: usize,
    /// Delete log lines older than this (by the time each line was written), a bounded batch
    /// at a time, every minute; reading a job whose lines went answers that they expired.
    /// [default: keep for ever]
    #[arg(long, env = "FERRY_LOG_RETENTION", value_name = "DURATION", value_parser = ferry_connect::service::duration)]
    pub log_retention: Option<Duration>,
    /// Most bytes of log text a namespace's jobs may keep in the log store, as NAME=BYTES (jobs
    /// without a namespace are in `default`; `*=BYTES` for every namespace not named); past
    /// it their lines are dropped, with one line per attempt saying so. Repeat the flag, or
    /// separate with commas.
    #[arg(long = "namespace-log-quota", env = "FERRY_NAMESPACE_LOG_QUOTA", value_name = "NAME=BYTES", value_delimiter = ',', value_parser = ferry_runtime::quota::parse_bytes)]
    pub namespace_log_quotas: Vec<(String, u64)>,
}

impl Flags {
    /// The log collector's configuration, storing into `store`.
    pub fn config(&self, store: LogStore) -> Config {
        Config {
            group: self.log_collector_group.clone(),
            batch_max: self.log_collector_batch_max,
            retention: self.log_retention,
            quotas: LogQuotas::new(self.namespace_log_quotas.iter().cloned()),
            ..Config::new(store)
        }
    }
}

/// The flags of a log collector process: the log store's and its own.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessFlags {
    #[command(flatten)]
    pub store: LogDb,
    #[command(flatten)]
    pub collector: Flags,
}

impl ProcessFlags {
    /// The log collector's configuration, with its store opened.
    pub async fn config(&self, data_dir: &Path) -> Result<Config> {
        let store = LogStore::open(&self.store.url(data_dir)).await?;
        Ok(self.collector.config(store))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: Flags,
    }

    #[test]
    fn namespace_log_quotas_are_name_equals_bytes_with_a_star_for_the_others() {
        let cli = Cli::try_parse_from([
            "x",
            "--namespace-log-quota",
            "analytics=1000,*=50",
            "--namespace-log-quota",
            "ml=7",
        ])
        .unwrap();
        let quotas = LogQuotas::new(cli.flags.namespace_log_quotas);
        assert_eq!(
            (quotas.of("analytics"), quotas.of("ml"), quotas.of("other")),
            (Some(1000), Some(7), Some(50))
        );
        assert!(LogQuotas::new(Cli::try_parse_from(["x"]).unwrap().flags.namespace_log_quotas).is_empty());
        for bad in ["analytics", "=5", "analytics=lots"] {
            let err = Cli::try_parse_from(["x", "--namespace-log-quota", bad])
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
