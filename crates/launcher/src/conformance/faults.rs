//! A launcher killed again and again while its compute runs, and started again on its journal
//! each time: what the fault suites of backends whose compute outlives the launcher share (the
//! batch backends run it on their emulators). Each backend adds what only its platform can
//! show: that no compute was made twice.

use std::sync::Arc;
use std::time::Duration;

use ferry_event::kind;
use ferry_event::payload::Outcome;
use ferry_event::template::Template;

use super::{Harness, Launcher, Program, Step, Target};

/// What [`killed_mid_job`] leaves for the backend's own checks: the harness, the launcher
/// running now, and each task's number and attempt id.
pub struct KilledRun {
    pub harness: Harness,
    pub launcher: Launcher,
    pub ids: Vec<(usize, String)>,
}

/// `name` as a number, else `default`: how many tasks and kills a run makes.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `tasks` tasks at once, each reading an input file, writing 40 lines, running for a
/// while and leaving outputs and a file, and kills the launcher `kills` times once all run (so
/// that kills land while jobs run, as they end and while their files are collected). Holds
/// that every attempt ends in one report with its true outcome, its output complete and its
/// file back. A kill while an attempt is being started would end it `lost` by the runtime's
/// rule: the conformance suite's crash case holds that.
pub async fn killed_mid_job(target: Arc<dyn Target>, tasks: usize, kills: usize) -> KilledRun {
    let mut h = Harness::new(target).await;
    h.max_parallel = tasks;
    let mut launcher = h.start().await;
    let mut ids = Vec::with_capacity(tasks);
    for n in 0..tasks {
        let id = h.id(&format!("fault-{n}"));
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
    KilledRun {
        harness: h,
        launcher,
        ids,
    }
}
