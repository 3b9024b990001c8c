//! The scheduler's flags: one definition for `ferry-scheduler`, `ferry service scheduler` and
//! `ferry up`.

use std::path::Path;
use std::time::Duration;

use crate::Config;

/// The scheduler's command-line flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "scheduler")]
#[command(next_help_heading = "Scheduler")]
pub struct Flags {
    /// The scheduler's database: sqlite://PATH or postgres://… (which several schedulers can
    /// share) [default: sqlite://DATA_DIR/scheduler.db]
    #[arg(long, env = "FERRY_DB", value_name = "URL")]
    pub db: Option<String>,
    /// A running attempt without a heartbeat for this long is presumed lost.
    #[arg(long, env = "FERRY_LEASE", value_name = "DURATION", default_value = "30s", value_parser = ferry_connect::service::duration)]
    pub lease: Duration,
    /// A dispatched task whose backend no running launcher has announced itself for (in
    /// `launcher.presence`) fails after waiting this long; 0 waits for ever.
    #[arg(long, env = "FERRY_NO_LAUNCHER_AFTER", value_name = "DURATION", default_value = "60s", value_parser = ferry_connect::service::duration)]
    pub no_launcher_after: Duration,
    /// Most tasks of a namespace's jobs dispatched or running at once, as NAME=N (jobs without
    /// a namespace are in `default`; `*=N` for every namespace not named); more wait, ready.
    /// Repeat the flag, or separate with commas.
    #[arg(long = "namespace-quota", env = "FERRY_NAMESPACE_QUOTA", value_name = "NAME=N", value_delimiter = ',', value_parser = quota)]
    pub namespace_quotas: Vec<(String, u32)>,
    /// Most subtasks one attempt may submit through `$FERRY_SUBTASKS`; a larger submission
    /// fails the attempt.
    #[arg(
        long,
        env = "FERRY_MAX_SUBTASKS_PER_ATTEMPT",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_subtasks_per_attempt: usize,
    /// How deep subtasks may nest (1: a flow's tasks may submit subtasks, those may not).
    #[arg(long, env = "FERRY_MAX_SUBTASK_DEPTH", value_name = "N", default_value_t = 4)]
    pub max_subtask_depth: usize,
    /// Most tasks a job may grow to by the subtasks its tasks submit.
    #[arg(
        long,
        env = "FERRY_MAX_TASKS_PER_JOB",
        value_name = "N",
        default_value_t = 100_000
    )]
    pub max_tasks_per_job: usize,
}

/// `NAME=N`, N a whole number of tasks.
fn quota(s: &str) -> Result<(String, u32), String> {
    ferry_runtime::quota::parse(s, "tasks", "analytics=20 or *=50")
}

impl Flags {
    /// The scheduler's configuration, for an instance of this process keeping its defaults in
    /// `data_dir`.
    pub fn config(&self, data_dir: &Path) -> Config {
        let db = self
            .db
            .clone()
            .unwrap_or_else(|| ferry_runtime::sqlite_url(&data_dir.join("scheduler.db")));
        let mut config = Config::new(db, ferry_runtime::instance_source("scheduler"));
        config.lease = self.lease;
        config.no_launcher_after = (!self.no_launcher_after.is_zero()).then_some(self.no_launcher_after);
        config.namespace_quotas = self.namespace_quotas.iter().cloned().collect();
        config.max_subtasks_per_attempt = self.max_subtasks_per_attempt;
        config.max_subtask_depth = self.max_subtask_depth;
        config.max_tasks_per_job = self.max_tasks_per_job;
        config
    }
}
