//! The planner's flags: one definition for `ferry-planner`, `ferry service planner` and
//! `ferry up`.

use std::path::Path;
use std::time::Duration;

use crate::Config;

/// The planner's command-line flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "planner")]
#[command(next_help_heading = "Planner")]
pub struct Flags {
    /// Most submissions held unacknowledged at once.
    #[arg(long = "planner-prefetch", env = "FERRY_PLANNER_PREFETCH", value_name = "N", default_value_t = Config::default().prefetch)]
    pub prefetch: usize,
    /// The registry of deployed flows: sqlite://PATH or postgres://… (which several planners
    /// share; it may be the scheduler's database) [default: sqlite://DATA_DIR/planner.db]
    #[arg(long = "planner-db", env = "FERRY_PLANNER_DB", value_name = "URL")]
    pub planner_db: Option<String>,
    /// Schedule ticks missed while no planner ran are fired when one starts again if they are
    /// at most this old; older ones are skipped, with a warning in the planner's log.
    #[arg(long = "schedule-catch-up", env = "FERRY_SCHEDULE_CATCH_UP", value_name = "DURATION", default_value = "1h", value_parser = ferry_connect::service::duration)]
    pub schedule_catch_up: Duration,
}

impl Flags {
    /// The planner's configuration, for an instance of this process keeping its defaults in
    /// `data_dir`.
    pub fn config(&self, data_dir: &Path) -> Config {
        Config {
            source: ferry_runtime::instance_source("planner"),
            prefetch: self.prefetch,
            db_url: self
                .planner_db
                .clone()
                .unwrap_or_else(|| ferry_runtime::sqlite_url(&data_dir.join("planner.db"))),
            catch_up: self.schedule_catch_up,
            clock: crate::Clock::System,
        }
    }
}
