//! The scheduler's share of cancelling and retrying a big job: a flat job of TASKS tasks
//! (100,000 by default) is planned and dispatched up to the per-backend bound, then
//!
//! 1. `job.cancel` is applied: pending tasks cancelled, cancels sent for dispatched attempts;
//! 2. each of those attempts reports `task.finished` (cancelled), in batches, until the job is
//!    `cancelled`;
//! 3. `job.retry` is applied: every task queued again and the first ones dispatched.
//!
//! Each step is timed from publishing its events to the scheduler having applied them and
//! published what they caused on the embedded bus, with the events that made. Nothing else runs:
//! no launcher, no api, no planner.
//!
//! `cargo bench -p ferry-scheduler --bench cancel_big_job` (TASKS and RUNS in the environment).

mod rig;

use std::time::{Duration, Instant};

use ferry_event::payload::{JobCancel, JobPlanned, JobRetry, Outcome, PlannedTask, TaskFinished};
use ferry_event::{Event, kind};
use rig::{Rig, count, env};
use serde_json::{Map, json};

fn job(tasks: usize) -> JobPlanned {
    let tasks = (0..tasks)
        .map(|i| {
            serde_json::from_value::<PlannedTask>(json!({
                "id": format!("t{i}"), "runner": {"type": "local"}, "command": ["true"]
            }))
            .expect("a valid task")
        })
        .collect();
    JobPlanned {
        job_id: "big".into(),
        flow_id: "bench".into(),
        namespace: None,
        concurrency: None,
        inputs: Map::new(),
        tasks,
    }
}

struct Times {
    cancel: Duration,
    confirm: Duration,
    retry: Duration,
    cancelled_events: usize,
    confirmed: usize,
}

async fn run(planned: &JobPlanned) -> Times {
    let mut r = Rig::new(100_000, |_| {}).await;
    let plan = r.events.job(kind::JOB_PLANNED, "big", planned);
    let out = r.apply(vec![plan]).await;
    let dispatched: Vec<Event> = out
        .into_iter()
        .filter(|e| {
            use ferry_event::AttributesReader;
            e.ty() == kind::TASK_DISPATCHED
        })
        .collect();

    let t = Instant::now();
    let cancel = r.events.job(
        kind::JOB_CANCEL,
        "big",
        &JobCancel {
            job_id: "big".into(),
            reason: Some("bench".into()),
        },
    );
    let out = r.apply(vec![cancel]).await;
    let cancel_took = t.elapsed();
    let cancelled_events = count(&out, kind::TASKS_CANCELLED);

    // Every dispatched attempt confirms its cancel, as launchers do.
    let reports: Vec<Event> = dispatched
        .iter()
        .map(|e| {
            let d: ferry_event::payload::TaskDispatched = ferry_event::decode(e).expect("a dispatch");
            let f = TaskFinished {
                job_id: d.job_id.clone(),
                task_id: d.task_id.clone(),
                attempt_id: d.attempt_id.clone(),
                attempt: d.attempt,
                outcome: Outcome::Cancelled,
                exit_code: None,
                error: Some("cancelled before it started".into()),
                outputs: Map::new(),
                output_files: Vec::new(),
                log_lines: 0,
                started_at_ms: None,
                finished_at_ms: ferry_event::now_ms(),
                reason: None,
                compute_ms: None,
                subtasks: Vec::new(),
            };
            r.events.task(
                kind::TASK_FINISHED,
                &d.job_id,
                &d.task_id,
                Some(&d.attempt_id),
                &f,
            )
        })
        .collect();
    let confirmed = reports.len();
    let t = Instant::now();
    let out = r.apply(reports).await;
    let confirm_took = t.elapsed();
    assert_eq!(count(&out, kind::JOB_CANCELLED), 1, "the job ends cancelled");

    let t = Instant::now();
    let retry = r
        .events
        .job(kind::JOB_RETRY, "big", &JobRetry { job_id: "big".into() });
    let out = r.apply(vec![retry]).await;
    let retry_took = t.elapsed();
    assert_eq!(count(&out, kind::JOB_STARTED), 1, "the job runs again");
    Times {
        cancel: cancel_took,
        confirm: confirm_took,
        retry: retry_took,
        cancelled_events,
        confirmed,
    }
}

fn main() {
    let tasks = env("TASKS", 100_000);
    let runs = env("RUNS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let planned = job(tasks);
    for i in 0..runs {
        let t = rt.block_on(run(&planned));
        println!(
            "run {}: {tasks} tasks: job.cancel applied in {:.3} s ({} tasks.cancelled events), {} cancels confirmed in {:.3} s, job.retry applied in {:.3} s",
            i + 1,
            t.cancel.as_secs_f64(),
            t.cancelled_events,
            t.confirmed,
            t.confirm.as_secs_f64(),
            t.retry.as_secs_f64(),
        );
    }
}
