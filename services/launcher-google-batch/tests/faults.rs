//! The google-batch launcher killed again and again while its jobs run on the Google Batch test
//! server (each a container on the test Docker engine, its files on fake-gcs-server), and
//! started again on its journal each time: every attempt ends in one report with its true
//! outcome, its output complete and its files back; no job was created twice, none is left,
//! nothing is left staged. The kills start once every job runs (a launcher killed while it
//! starts an attempt reports it `lost` by the runtime's rule, which the conformance suite's
//! crash case holds).
//!
//! The launcher runs in this process (the conformance harness's, killed as a process is: its
//! runtime dropped where it stands), beside the test server. `FERRY_FAULT_GOOGLE_BATCH_TASKS`
//! tasks (12 by default) and `FERRY_FAULT_GOOGLE_BATCH_KILLS` kills (6).

mod common;

use std::sync::Arc;

use ferry_launcher::conformance::faults::{KilledRun, env_or, killed_mid_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_killed_again_and_again_mid_job_loses_leaks_and_repeats_nothing() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let tasks = env_or("FERRY_FAULT_GOOGLE_BATCH_TASKS", 12);
    let kills = env_or("FERRY_FAULT_GOOGLE_BATCH_KILLS", 6);
    let target = Arc::new(common::BatchTarget::new(gcs).await);
    let KilledRun {
        harness: h,
        launcher,
        ids: _,
    } = killed_mid_job(target.clone(), tasks, kills).await;
    // One job per attempt: every job was created before the first kill, and no start after
    // a kill created another (each looks before it creates).
    let creates = target
        .server
        .counts()
        .get(&("jobs".to_string(), "create".to_string()))
        .copied()
        .unwrap_or(0);
    assert_eq!(creates, tasks as u64, "{tasks} attempts, {creates} jobs created");
    h.assert_nothing_left(&format!("after {kills} kills")).await;
    launcher.stop().await;
}
