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
use std::time::Duration;

use ferry_event::kind;
use ferry_event::payload::Outcome;
use ferry_event::template::Template;
use ferry_launcher::conformance::{Harness, Program, Step};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_killed_again_and_again_mid_job_loses_leaks_and_repeats_nothing() {
    let Ok(gcs) = common::gcs() else {
        eprintln!("SKIPPED: DOCKER_HOST and FERRY_TEST_GCS are not both set");
        return;
    };
    let tasks = env_or("FERRY_FAULT_GOOGLE_BATCH_TASKS", 12);
    let kills = env_or("FERRY_FAULT_GOOGLE_BATCH_KILLS", 6);
    let target = Arc::new(common::BatchTarget::new(gcs).await);
    let mut h = Harness::new(target.clone()).await;
    h.max_parallel = tasks;

    let mut launcher = h.start().await;
    let mut ids = Vec::with_capacity(tasks);
    for n in 0..tasks {
        let id = h.id(&format!("fault-{n}"));
        // Each job reads its input, writes lines, runs for a while (so that kills land while
        // jobs run, between them and while they are collected), and leaves outputs and a file.
        let program = Program::new([
            Step::Cat("in.txt".into()),
            Step::Count(40),
            Step::Sleep(2_000 + 500 * (n as u64 % 8)),
            Step::Outputs(format!(r#"{{"n": {n}}}"#)),
            Step::Write {
                path: "result.txt".into(),
                content: format!("result {n}"),
            },
        ]);
        let mut d = h.task(&id, &program);
        d.input_files
            .insert("in.txt".into(), Template::text(format!("input {n}\n")));
        d.output_files.push("result*".into());
        h.dispatch(&d).await;
        ids.push((n, id));
    }
    // Kills while jobs run, as they end, and while their files are collected. (A kill while an
    // attempt is being started ends it `lost`, its job stopped, by the runtime's rule: the
    // conformance suite's crash case holds that.)
    for (_, id) in &ids {
        h.expect(kind::TASK_STARTED, id).await;
    }
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(400 + 300 * (k as u64 % 4))).await;
        launcher.crash();
        launcher = h.start().await;
    }

    for (n, id) in &ids {
        let f = h.finished(id).await;
        assert_eq!(f.outcome, Outcome::Succeeded, "{id}: {f:?}");
        assert_eq!(f.outputs["n"], *n as u64, "{id}: {f:?}");
        assert_eq!(f.output_files.len(), 1, "{id}: {f:?}");
        assert_eq!(f.output_files[0].path, "result.txt");
        let stored = url::Url::parse(&f.output_files[0].uri)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .unwrap_or_else(|| panic!("{id}: not a file: {:?}", f.output_files[0]));
        assert_eq!(std::fs::read_to_string(stored).unwrap(), format!("result {n}"));
        let texts = h.texts(id).await;
        assert_eq!(texts.len(), 41, "{id}: {texts:?}");
        assert_eq!(texts[0], format!("input {n}"));
        assert_eq!(f.log_lines, 41, "{id}: {f:?}");
    }
    for (_, id) in &ids {
        // A report journaled but not yet confirmed when the launcher was killed is published
        // again, the same; two different ones never.
        let reports = h.settle_count(kind::TASK_FINISHED, id).await;
        assert!(reports >= 1, "{id}");
    }
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
