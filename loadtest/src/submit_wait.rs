//! `submit-wait`: `ferry submit FLOW --wait` as a user runs it, against `ferry up`.
//!
//! Starts `ferry up` as a process (in-memory bus unless `--bus`), writes the shape's flow to a
//! file and runs `ferry submit FLOW --wait` on it, timed from outside. Once it has returned, the
//! job's tasks are read from `GET /jobs/{id}`: the last `finishedAtMs` among them is when the
//! job's work ended, and the time from there to `submit --wait` returning is what the client
//! and the read model add on top. Each run is a fresh `ferry up` on a fresh data directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::api_reads::{connect, free_port, start};
use crate::shape::Shape;

pub struct Plan {
    pub ferry: PathBuf,
    pub bus: String,
    pub shape: Shape,
    pub command: String,
    pub parallel: usize,
    pub runs: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn run(plan: Plan) -> Result<()> {
    println!(
        "ferry loadtest submit-wait: {}; command {}; ferry up on {}, launcher parallelism {}",
        plan.shape.label(),
        plan.command,
        plan.bus.split('@').next_back().unwrap_or(&plan.bus),
        plan.parallel
    );
    println!("  load average before   {}", crate::loadavg());
    for run in 1..=plan.runs {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let port = free_port()?;
        let mut up = start(&plan.ferry, &plan.bus, plan.parallel, &data_dir, port)?;
        let (base, client) = connect(&mut up, &data_dir, port).await?;
        let flow = dir.path().join("flow.yaml");
        std::fs::write(&flow, plan.shape.flow(&plan.command))?;
        let job_id = format!("wait-{run}");

        let submitted_ms = now_ms();
        let t = Instant::now();
        let out = Command::new(&plan.ferry)
            .arg("submit")
            .arg(&flow)
            .args(["--job-id", &job_id, "--wait", "--api", &base])
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot start {} submit", plan.ferry.display()))?;
        let took = t.elapsed();
        let returned_ms = now_ms();
        if !out.status.success() {
            bail!(
                "ferry submit --wait exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let job: Value = client
            .get(format!("{base}/jobs/{job_id}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let tasks = job["tasks"].as_array().context("the job's tasks")?;
        let times = |field: &'static str| tasks.iter().filter_map(move |t| t[field].as_i64());
        let (Some(first_start), Some(last_finish)) =
            (times("startedAtMs").min(), times("finishedAtMs").max())
        else {
            bail!("job {job_id} has no task times: {job}");
        };
        drop(up);
        println!(
            "  run {run}: returned in {:.2} s; tasks ran {:.2} s (first start {:.2} s after submitting); \
             returned {} ms after the last task finished",
            took.as_secs_f64(),
            Duration::from_millis((last_finish - first_start).max(0) as u64).as_secs_f64(),
            Duration::from_millis((first_start - submitted_ms).max(0) as u64).as_secs_f64(),
            returned_ms - last_finish
        );
    }
    println!("  load average after    {}", crate::loadavg());
    Ok(())
}
