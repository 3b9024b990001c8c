//! Subtasks on SQLite: a successful attempt's submission joins its job once, a failed one's
//! never; dependents wait for the parent's whole subtree; bad submissions fail the attempt.

mod sim;

use sim::config;
use sim::subtasks::*;

fn sqlite() -> (tempfile::TempDir, ferry_scheduler::Config) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("scheduler.db"));
    (dir, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtasks_join_on_success_and_dependents_wait_for_the_subtree_on_sqlite() {
    let (_dir, cfg) = sqlite();
    subtasks_join_on_success_and_dependents_wait_for_the_subtree(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_retry_reruns_a_failed_subtask_on_sqlite() {
    let (_dir, cfg) = sqlite();
    a_job_retry_reruns_a_failed_subtask_then_releases_the_parents_dependents(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_over_limit_submissions_fail_the_attempt_on_sqlite() {
    let (_dir, cfg) = sqlite();
    invalid_and_over_limit_submissions_fail_the_attempt(cfg).await;
}
