//! The conformance suite every launcher backend passes: the same tasks, driven through the
//! runtime on the in-memory bus, must give the same events in the same order whatever runs
//! them.
//!
//! A backend plugs in with a [`Target`] (how to make its backend, how to run a [`Program`] on
//! it, how to see what is left on its platform, how to kill compute behind ferry's back) and
//! one line in a test file:
//!
//! ```ignore
//! ferry_launcher::launcher_conformance!(async { std::sync::Arc::new(MyTarget::new()) });
//! ```
//!
//! which expands to one `#[tokio::test]` per case. A case a backend cannot run is skipped only
//! where [`Target::cannot`] says so, and the reason is printed: nothing passes silently.

mod cases;
pub mod faults;
pub mod harness;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_event::payload::{Resources, Runner};
use ferry_event::template::Template;

pub use crate::testing::{Program, Step};
pub use cases::*;
pub use harness::{GROUP, Harness, Launcher, SECRET, WAIT};

use crate::backend::Backend;
use crate::journal::Journal;

/// A backend under test, and what the suite needs to know of its platform.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// The backend whose dispatches the suite sends: the backend's runner type
    /// ([`Backend::name`]), or one of the backends it [serves](Backend::serves).
    fn name(&self) -> &'static str;

    /// The consumer group its launchers share on the dispatch topic of [`name`](Target::name):
    /// the launcher's group, unless the backend says otherwise ([`Backend::serves`]).
    fn dispatch_group(&self) -> String {
        GROUP.to_string()
    }

    /// A new instance of the backend, as a launcher starting on `data_dir` with `journal`
    /// makes it. Called once per launcher start; every instance sees the same platform.
    async fn backend(&self, data_dir: &Path, journal: &Journal) -> Arc<dyn Backend>;

    /// How to run `program` on this backend: the dispatch's runner (an image for a container
    /// backend) and command (`sh -c` [`Program::sh`] for anything with a shell).
    fn command(&self, program: &Program) -> (Runner, Vec<Template>);

    /// A request this backend refuses before creating anything, and the field its error names
    /// (`resources.gpu` on local). `None`: it honours every request.
    fn refused(&self) -> Option<(Resources, &'static str)>;

    /// The names of every compute that is alive or kept on the platform, looked up on the
    /// platform itself (processes, containers, Jobs), not in the launcher's memory. Each name
    /// holds the attempt id it was made for.
    async fn leftovers(&self, data_dir: &Path) -> Vec<String>;

    /// Kills the compute of `attempt_id` behind ferry's back, as an operator or the OOM killer
    /// would.
    async fn kill(&self, attempt_id: &str) -> Result<(), String>;

    /// Why this backend cannot run `case` (a function of [`cases`]), if it cannot: the case is
    /// then skipped, and the reason printed.
    fn cannot(&self, case: &str) -> Option<&'static str> {
        let _ = case;
        None
    }
}

/// Runs `case` against `target`, unless the target says it cannot, which is printed.
pub async fn run_case<F, Fut>(target: Arc<dyn Target>, name: &str, case: F)
where
    F: FnOnce(Arc<dyn Target>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if let Some(why) = target.cannot(name) {
        println!("SKIPPED {name} on the {} backend: {why}", target.name());
        eprintln!("SKIPPED {name} on the {} backend: {why}", target.name());
        return;
    }
    case(target).await
}

/// Expands to one test per case of the suite, each given a fresh target by `$make` (an
/// expression of a future of `Arc<dyn Target>`, or of an `Arc` of a type implementing it).
#[macro_export]
macro_rules! launcher_conformance {
    ($make:expr) => {
        $crate::launcher_conformance!(@each $make;
            lifecycle_is_started_heartbeats_logs_finished,
            logs_arrive_complete_contiguous_and_once,
            exit_status_decides_the_outcome,
            a_task_sees_the_ferry_environment,
            input_files_arrive_and_hostile_names_create_nothing,
            outputs_and_output_files_come_back,
            subtasks_come_back_only_from_a_success,
            secrets_are_masked_in_lines_outputs_and_errors,
            a_timeout_leaves_no_compute,
            a_cancel_leaves_no_compute,
            a_cancel_for_another_launcher_is_not_this_ones,
            a_cancel_before_the_dispatch_creates_nothing_ever,
            a_redelivered_dispatch_never_creates_a_second_compute,
            a_crash_between_create_and_journal_leaves_one_compute_and_one_report,
            compute_killed_behind_ferrys_back_is_reported_within_a_lease,
            a_crash_at_each_step_ends_in_exactly_one_report,
            shutdown_follows_the_backends_policy,
            a_restarted_launcher_serves_and_keeps_adopted_compute_alive,
            refused_resources_create_nothing,
            at_most_max_parallel_attempts_run_at_once,
            a_full_disk_never_ends_in_a_silent_success,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let target: ::std::sync::Arc<dyn $crate::conformance::Target> = $make.await;
                $crate::conformance::run_case(target, stringify!($name), $crate::conformance::$name).await;
            }
        )*
    };
}
