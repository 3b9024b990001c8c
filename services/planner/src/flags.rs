//! The planner's flags: one definition for `ferry-planner`, `ferry service planner` and
//! `ferry up`.

use crate::Config;

/// The planner's command-line flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "planner")]
#[command(next_help_heading = "Planner")]
pub struct Flags {
    /// Most submissions held unacknowledged at once.
    #[arg(long = "planner-prefetch", env = "FERRY_PLANNER_PREFETCH", value_name = "N", default_value_t = Config::default().prefetch)]
    pub prefetch: usize,
}

impl Flags {
    /// The planner's configuration, for an instance of this process.
    pub fn config(&self) -> Config {
        Config {
            source: ferry_runtime::instance_source("planner"),
            prefetch: self.prefetch,
        }
    }
}
