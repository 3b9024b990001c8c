//! `api-reads`: how long `GET /jobs` takes while a burst of submissions arrives.
//!
//! Starts `ferry up` as a process (on the in-memory bus unless `--bus` names a broker), on a
//! fresh data directory, with the api on a free loopback port. First `GET /jobs?limit=20` is
//! timed alone (the baseline); then `jobs` submissions are posted at once, each a one-task job,
//! while `readers` clients keep asking `GET /jobs?limit=20` until every job has ended. Reports
//! each phase's read latency percentiles, how long the burst took to be accepted and to end, and
//! stops `ferry up` (SIGTERM, then SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::quantile;

/// What this run needs.
pub struct Plan {
    pub ferry: PathBuf,
    /// The bus `ferry up` runs on.
    pub bus: String,
    pub jobs: usize,
    pub readers: usize,
    pub command: String,
    pub parallel: usize,
}

/// `ferry up`, ended when dropped.
pub(crate) struct Up {
    child: Child,
}

impl Drop for Up {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `ferry up` on `bus` with its data in `data_dir` and its api on `port`; its log goes
/// beside the data directory.
pub(crate) fn start(ferry: &Path, bus: &str, parallel: usize, data_dir: &Path, port: u16) -> Result<Up> {
    let log = std::fs::File::create(data_dir.with_extension("log"))?;
    let child = Command::new(ferry)
        .arg("up")
        .args(["--bus", bus])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--max-parallel", &parallel.to_string()])
        .env(
            "FERRY_LOG",
            std::env::var("FERRY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {} up", ferry.display()))?;
    Ok(Up { child })
}

/// The api's base URL and a client that sends the admin token `ferry up` wrote.
pub(crate) async fn connect(up: &mut Up, data_dir: &Path, port: u16) -> Result<(String, reqwest::Client)> {
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = up.child.try_wait()? {
            bail!(
                "ferry up exited ({status}) before its api answered; see {}",
                data_dir.with_extension("log").display()
            );
        }
        if let Ok(token) = std::fs::read_to_string(data_dir.join("admin.token")) {
            let mut headers = reqwest::header::HeaderMap::new();
            let value = format!("Bearer {}", token.trim());
            headers.insert(reqwest::header::AUTHORIZATION, value.parse()?);
            let client = reqwest::Client::builder().default_headers(headers).build()?;
            if client
                .get(format!("{base}/jobs?limit=1"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok((base, client));
            }
        }
        if Instant::now() > deadline {
            bail!("the api of ferry up did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `GET /jobs?limit=20`, timed; fails on anything but a success.
async fn read(client: &reqwest::Client, base: &str) -> Result<Duration> {
    let t = Instant::now();
    let r = client.get(format!("{base}/jobs?limit=20")).send().await?;
    let status = r.status();
    r.bytes().await?;
    if !status.is_success() {
        bail!("GET /jobs answered {status}");
    }
    Ok(t.elapsed())
}

/// Percentiles of read times in microseconds, printed in ms.
fn summary(samples: &mut [i64]) -> String {
    samples.sort_unstable();
    let ms = |us: i64| us as f64 / 1000.0;
    format!(
        "{} reads, p50 {:.1} / p99 {:.1} / max {:.1} ms",
        samples.len(),
        ms(quantile(samples, 0.50)),
        ms(quantile(samples, 0.99)),
        ms(samples.last().copied().unwrap_or(0))
    )
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub async fn run(plan: Plan) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let port = free_port()?;
    println!(
        "ferry loadtest api-reads: {} one-task jobs submitted at once, {} readers of GET /jobs?limit=20; ferry up on {}",
        plan.jobs,
        plan.readers,
        plan.bus.split('@').next_back().unwrap_or(&plan.bus)
    );
    println!("  load average before   {}", crate::loadavg());
    let mut up = start(&plan.ferry, &plan.bus, plan.parallel, &data_dir, port)?;
    let (base, client) = connect(&mut up, &data_dir, port).await?;

    // Baseline: reads alone.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(us(read(&client, &base).await?));
    }

    // The burst, with readers reading until every job has ended.
    let flow = format!(
        "id: burst\ntasks:\n  - id: t\n    runner: local\n    command: [{}]\n",
        serde_json::to_string(&plan.command)?
    );
    let done = ferry_runtime::CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..plan.readers {
        let (client, base, done) = (client.clone(), base.clone(), done.clone());
        readers.spawn(async move {
            let mut samples = Vec::new();
            while !done.is_cancelled() {
                samples.push(us(read(&client, &base).await?));
            }
            anyhow::Ok(samples)
        });
    }
    let started = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..plan.jobs {
        let (client, base, flow) = (client.clone(), base.clone(), flow.clone());
        posts.spawn(async move {
            let body = json!({
                "specversion": "1.0", "id": format!("burst-{i}"), "source": "/loadtest",
                "type": "dev.ferry.job.submitted",
                "data": {"jobId": format!("burst-{i}"), "flow": flow, "inputs": {}}
            });
            let r = client
                .post(format!("{base}/events"))
                .header("content-type", "application/cloudevents+json")
                .body(body.to_string())
                .send()
                .await?;
            let status = r.status();
            if !status.is_success() {
                bail!(
                    "submission {i} answered {status}: {}",
                    r.text().await.unwrap_or_default()
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = posts.join_next().await {
        r??;
    }
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let limit = (plan.jobs + 10).min(1000);
    loop {
        let r = client.get(format!("{base}/jobs?limit={limit}")).send().await?;
        let jobs: Value = r.json().await?;
        let ended = jobs
            .as_array()
            .or_else(|| jobs.get("jobs").and_then(Value::as_array))
            .map(|js| {
                js.iter()
                    .filter(|j| {
                        matches!(
                            j.get("state").and_then(Value::as_str),
                            Some("succeeded" | "failed" | "cancelled")
                        )
                    })
                    .count()
            })
            .unwrap_or(0);
        if ended >= plan.jobs {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ended} of {} jobs ended within 600 s", plan.jobs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = started.elapsed();
    done.cancel();
    let mut during = Vec::new();
    while let Some(r) = readers.join_next().await {
        during.extend(r??);
    }
    drop(up);

    println!("  reads alone           {}", summary(&mut idle));
    println!("  reads during burst    {}", summary(&mut during));
    println!(
        "  burst                 {} submissions accepted in {:.2} s, all ended in {:.2} s",
        plan.jobs,
        accepted.as_secs_f64(),
        ended.as_secs_f64()
    );
    println!("  load average after    {}", crate::loadavg());
    Ok(())
}
