//! The aws-batch launcher killed again and again while its jobs run on moto (each a container
//! on the test Docker engine), and started again on its journal each time: every attempt ends
//! in one report with its true outcome, its output complete and its files back; no job was
//! submitted twice, none is left running, nothing is left staged. The kills start once every
//! job runs (a launcher killed while it starts an attempt reports it `lost` by the runtime's
//! rule, which the conformance suite's crash case holds).
//!
//! The launcher runs in this process (the conformance harness's, killed as a process is: its
//! runtime dropped where it stands): the `ferry` binary cannot read moto's CloudWatch Logs
//! answers (see tests/common). `FERRY_FAULT_AWS_BATCH_TASKS` tasks (12 by default) and
//! `FERRY_FAULT_AWS_BATCH_KILLS` kills (6).

mod common;

use std::sync::Arc;

use aws_sdk_batch::types::KeyValuesPair;
use ferry_launcher::conformance::faults::{KilledRun, env_or, killed_mid_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_killed_again_and_again_mid_job_loses_leaks_and_repeats_nothing() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let tasks = env_or("FERRY_FAULT_AWS_BATCH_TASKS", 12);
    let kills = env_or("FERRY_FAULT_AWS_BATCH_KILLS", 6);
    let target = Arc::new(common::BatchTarget::new(endpoint).await);
    let KilledRun {
        harness: h,
        launcher,
        ids,
    } = killed_mid_job(target.clone(), tasks, kills).await;
    // One job per attempt: no kill made a second submit.
    for (_, id) in &ids {
        let name = ferry_launcher_aws_batch::names::job_name(id);
        let jobs = target
            .batch
            .list_jobs()
            .job_queue(target.queue())
            .filters(KeyValuesPair::builder().name("JOB_NAME").values(&name).build())
            .send()
            .await
            .expect("list the jobs of one name");
        let same: Vec<_> = jobs
            .job_summary_list()
            .iter()
            .filter(|j| j.job_name() == Some(name.as_str()))
            .collect();
        assert_eq!(same.len(), 1, "{name} was submitted {} times", same.len());
    }
    h.assert_nothing_left(&format!("after {kills} kills")).await;
    launcher.stop().await;
}
