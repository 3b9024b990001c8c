//! The scheduler's share of a dynamic fan-out: a job of `split` and `reduce` (after `split`) is
//! planned and `split` dispatched; then `split`'s attempt reports success with SUBTASKS
//! subtasks (10,000 by default), in the flow's task format as a launcher sends them. Timed from
//! publishing that report to the scheduler having validated the subtasks, added them to the
//! job and published a dispatch for every one of them. The process's resident memory is read
//! before the report and after (the published events drained and dropped): its growth per
//! subtask is the scheduler's.
//!
//! Nothing else runs: no launcher, so the bound on dispatches not yet started
//! (`max_waiting`) is raised above SUBTASKS for the whole fan-out to be dispatched at once.
//!
//! `cargo bench -p ferry-scheduler --bench subtask_fan_out` (SUBTASKS and RUNS in the
//! environment).

mod rig;

use std::time::{Duration, Instant};

use ferry_event::payload::{JobPlanned, Outcome, PlannedTask, TaskDispatched, TaskFinished};
use ferry_event::{AttributesReader, kind};
use rig::{Rig, count, env};
use serde_json::{Map, Value, json};

ferry_runtime::global_allocator!();

/// Resident and peak resident memory of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn job() -> JobPlanned {
    let task = |v: Value| serde_json::from_value::<PlannedTask>(v).expect("a valid task");
    JobPlanned {
        job_id: "fan".into(),
        flow_id: "bench".into(),
        namespace: None,
        concurrency: None,
        inputs: Map::new(),
        tasks: vec![
            task(json!({"id": "split", "runner": {"type": "local"}, "command": ["true"]})),
            task(
                json!({"id": "reduce", "runner": {"type": "local"}, "command": ["true"], "dependsOn": ["split"]}),
            ),
        ],
    }
}

/// `n` subtasks as a task writes them: each runs a command over its part.
fn subtasks(n: usize) -> Vec<Map<String, Value>> {
    (0..n)
        .map(|i| {
            let v = json!({"id": format!("part-{i}"), "runner": "local", "command": ["sh", "-c", "work \"$1\"", "part", i.to_string()]});
            match v {
                Value::Object(m) => m,
                _ => unreachable!("an object"),
            }
        })
        .collect()
}

struct Measured {
    took: Duration,
    dispatched: usize,
    rss_growth_kib: i64,
    peak_growth_kib: i64,
}

async fn run(n: usize) -> Measured {
    let mut r = Rig::new(1024, |cfg| {
        cfg.max_waiting = n + 16;
        cfg.max_subtasks_per_attempt = n.max(cfg.max_subtasks_per_attempt);
    })
    .await;
    let plan = r.events.job(kind::JOB_PLANNED, "fan", &job());
    let out = r.apply(vec![plan]).await;
    let split: TaskDispatched = out
        .iter()
        .find(|e| e.ty() == kind::TASK_DISPATCHED)
        .map(|e| ferry_event::decode(e).expect("a dispatch"))
        .expect("split is dispatched");
    drop(out);
    let report = TaskFinished {
        subtasks: subtasks(n),
        ..TaskFinished::unreported(
            "fan",
            "split",
            split.attempt_id.clone(),
            1,
            Outcome::Succeeded,
            "",
            ferry_event::now_ms(),
        )
    };
    let report = r.events.task(
        kind::TASK_FINISHED,
        "fan",
        "split",
        Some(&split.attempt_id),
        &TaskFinished {
            error: None,
            ..report
        },
    );
    let (rss_before, peak_before) = memory_kib();
    let t = Instant::now();
    let out = r.apply(vec![report]).await;
    let took = t.elapsed();
    let dispatched = count(&out, kind::TASK_DISPATCHED);
    drop(out);
    let (rss_after, peak_after) = memory_kib();
    Measured {
        took,
        dispatched,
        rss_growth_kib: rss_after as i64 - rss_before as i64,
        peak_growth_kib: peak_after as i64 - peak_before as i64,
    }
}

fn main() {
    ferry_runtime::memory::set_up();
    let n = env("SUBTASKS", 10_000);
    let runs = env("RUNS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    for i in 0..runs {
        let m = rt.block_on(run(n));
        assert_eq!(m.dispatched, n, "every subtask is dispatched");
        println!(
            "run {}: {n} subtasks accepted and all dispatched in {:.3} s; resident memory {:+} KiB ({:+.0} B per subtask), peak {:+} KiB ({:+.0} B per subtask)",
            i + 1,
            m.took.as_secs_f64(),
            m.rss_growth_kib,
            m.rss_growth_kib as f64 * 1024.0 / n as f64,
            m.peak_growth_kib,
            m.peak_growth_kib as f64 * 1024.0 / n as f64,
        );
    }
}
