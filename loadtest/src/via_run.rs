//! `--via run`: the job as a user runs it, `ferry run FLOW`, timed from outside.
//!
//! The flow is written to a file and `ferry run` started on it with its output going to files
//! (what a user piping it or a CI log sees). While it runs, its CPU time and peak memory are
//! read from `/proc` every 50 ms; the last reading before it exits is what it used. Its task
//! processes are its children and are not counted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Report;
use crate::shape::Shape;

/// What `/proc` says of a process: user+system CPU, system CPU, peak resident memory (KiB).
#[derive(Default, Clone, Copy)]
struct Usage {
    cpu: Duration,
    sys: Duration,
    peak_kib: u64,
}

fn usage(pid: u32) -> Option<Usage> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command name: utime is field 14 and stime 15 (1-based), 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())?;
    Some(Usage {
        cpu: Duration::from_secs_f64((utime + stime) / ticks),
        sys: Duration::from_secs_f64(stime / ticks),
        peak_kib,
    })
}

pub fn run(ferry: &Path, shape: Shape, command: &str, parallel: usize) -> Result<Report> {
    if parallel != 64 {
        eprintln!("note: `ferry run` runs 64 attempts at once; --parallel {parallel} is not used");
    }
    let dir = tempfile::tempdir()?;
    let flow = dir.path().join("flow.yaml");
    std::fs::write(&flow, shape.flow(command))?;
    let out = std::fs::File::create(dir.path().join("run.out"))?;
    let err = std::fs::File::create(dir.path().join("run.err"))?;
    println!(
        "ferry loadtest via `ferry run`: {}; command {command}",
        shape.label()
    );
    println!("  load average before   {}", crate::loadavg());
    let started = Instant::now();
    let mut child = Command::new(ferry)
        .arg("run")
        .arg(&flow)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env(
            "FERRY_LOG",
            std::env::var("FERRY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {} run", ferry.display()))?;
    let mut last = Usage::default();
    let status = loop {
        if let Some(u) = usage(child.id()) {
            last = u;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            let _ = child.kill();
            bail!("`ferry run` did not end within 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    if !status.success() {
        let err = std::fs::read_to_string(dir.path().join("run.err")).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        bail!(
            "`ferry run` exited with {status}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Report {
        tasks: shape.tasks(),
        elapsed,
        latencies: Vec::new(),
        cpu: last.cpu,
        sys: Some(last.sys),
        hops: shape.hops(),
        cpu_by_service: Vec::new(),
        peak_rss_kib: Some(last.peak_kib),
        events: 0,
        broker_messages: None,
        failed: 0,
        latency_label: "",
        stages: Vec::new(),
    })
}
