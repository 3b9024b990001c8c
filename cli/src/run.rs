//! `ferry run`: one flow, end to end, on the embedded system.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_bus::{Bus, Subscribe};
use ferry_event::payload::{
    FlowSource, JobCancel, JobRejected, JobState, JobSubmitted, OutputFile, Stream, TaskAccepted,
    TaskFinished, TaskStarted, TaskState, TasksState,
};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_log_collector::{LogQuery, LogRecord};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::signal::unix::{SignalKind, signal};

use crate::embedded::{Embedded, Options};
use crate::output::{Closed, EXIT_CLOSED, task_text, visible};
use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, parse_inputs, print_problems, read_flow};

/// What `ferry run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub flow: PathBuf,
    pub inputs: Vec<String>,
    pub data_dir: PathBuf,
    pub kill_grace: Duration,
    /// Print task output as it is, control sequences included.
    pub raw: bool,
    /// Run every container task (docker, kubernetes, aws-batch, google-batch) on this
    /// runner instead: `docker` runs them on the local Docker engine.
    pub runner: Option<String>,
    /// Serve the operations endpoint (`ferry_connect::endpoint`) here while the flow runs.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The operations endpoint of a run: ready while the job runs, refused from the moment the
/// services stop, and gone with the run (dropping it stops the server).
struct Endpoint {
    draining: ferry_runtime::CancellationToken,
    stop: ferry_runtime::CancellationToken,
}

impl Endpoint {
    /// Serves `listener` with the readiness of `bus` (and of every store the services opened).
    fn serve(listener: tokio::net::TcpListener, bus: std::sync::Arc<dyn Bus>) -> Endpoint {
        let endpoint = Endpoint {
            draining: ferry_runtime::CancellationToken::new(),
            stop: ferry_runtime::CancellationToken::new(),
        };
        let (draining, stop) = (endpoint.draining.clone(), endpoint.stop.clone());
        tokio::spawn(async move {
            if let Err(e) = ferry_connect::endpoint::serve(listener, bus, draining, stop).await {
                tracing::error!(error = %e, "the metrics endpoint failed");
            }
        });
        endpoint
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.draining.cancel();
        self.stop.cancel();
    }
}

/// Runs the flow and returns the process exit code.
pub async fn run(args: RunArgs) -> Result<i32> {
    let (source, name) = match read_flow(&args.flow) {
        Ok(s) => s,
        Err(e) => {
            errln!("error: {e:#}");
            return Ok(EXIT_INVALID);
        }
    };
    let valid = match ferry_flow::validate(&source, &name) {
        Ok(v) => v,
        Err(problems) => {
            print_problems(&name, &problems);
            return Ok(EXIT_INVALID);
        }
    };
    let (source, valid) = match args.runner.as_deref() {
        None => (source, valid),
        Some("docker") => {
            let moved = on_docker(&valid)?;
            match ferry_flow::validate(&moved, &name) {
                Ok(v) => (moved, v),
                Err(problems) => {
                    print_problems(&name, &problems);
                    return Ok(EXIT_INVALID);
                }
            }
        }
        Some(other) => {
            errln!("error: --runner {other} is not supported: container tasks can be run on `docker`");
            return Ok(EXIT_INVALID);
        }
    };
    // The runners, read from the flow's source once (a large flow is not kept typed).
    let mut disabled = None;
    let mut agent = None;
    let mut docker = false;
    for runner in valid.runners() {
        let backend = runner.backend();
        docker |= backend == "docker";
        if disabled.is_none()
            && crate::launchers::BACKENDS.contains(&backend)
            && !crate::launchers::enabled(backend)
        {
            disabled = Some(backend);
        }
        if let (None, ferry_event::payload::Runner::Agent(a)) = (&agent, runner) {
            agent = Some(a);
        }
    }
    if let Some(backend) = disabled {
        errln!("error: {}", crate::launchers::not_enabled(backend));
        return Ok(EXIT_FAILED);
    }
    if let Some(agent) = agent {
        errln!(
            "error: the flow has tasks that run on agents (cluster {}, task {}), which `ferry run` cannot \
             start in this process: run it on a deployment (`ferry up`, then `ferry submit`) with \
             `ferry agent --cluster {} --config FILE` running",
            agent.cluster,
            agent.task,
            agent.cluster
        );
        return Ok(EXIT_INVALID);
    }
    let inputs = match parse_inputs(&args.inputs) {
        Ok(i) => i,
        Err(e) => {
            errln!("error: {e}");
            return Ok(EXIT_INVALID);
        }
    };
    let job_id = ferry_event::new_id();
    // The planner checks the inputs too; checking here first answers before anything starts.
    if let Err(problems) = ferry_flow::plan(&valid, &job_id, &inputs) {
        print_problems(&name, &problems);
        return Ok(EXIT_INVALID);
    }
    let task_ids = valid.task_ids();
    // What the run needs of the flow is taken: the planner has its source.
    drop(valid);

    // Bound before anything starts: a taken address fails the run at once, naming it.
    let listener = match args.metrics {
        Some(addr) => Some(ferry_connect::endpoint::bind(addr).await?),
        None => None,
    };
    let mut opts = Options::new(&args.data_dir);
    opts.kill_grace = args.kill_grace;
    opts.docker = docker;
    let mut system = Embedded::start(&opts).await?;
    let endpoint = listener.map(|l| Endpoint::serve(l, std::sync::Arc::new(system.bus.clone())));
    let mut watch = system
        .bus
        .subscribe(Subscribe::new(
            format!("ferry-run-{job_id}"),
            [Topic::Control, Topic::Lifecycle],
        ))
        .await?;
    let mut logs = Box::pin(system.logs.follow(LogQuery::job(job_id.clone())));
    let events = EventBuilder::new(ferry_runtime::instance_source("cli"));
    let submitted = JobSubmitted {
        job_id: Some(job_id.clone()),
        flow: FlowSource::Text(source),
        flow_name: Some(name.clone()),
        inputs,
    };
    system
        .bus
        .publish(&[events.job(kind::JOB_SUBMITTED, &job_id, &submitted)])
        .await?;
    errln!(
        "ferry: job {job_id} ({} tasks) — data in {}",
        task_ids.len(),
        system.data_dir.display()
    );

    let mut view = View::new(task_ids, args.raw);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut cancelling = false;
    let mut end: Option<(JobStatus, Option<String>)> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    // Set when the job ended but not all of its output was stored within the drain.
    let mut output_missing = false;
    let started = Instant::now();

    let outcome: Result<i32> = loop {
        if end.is_some() && view.logs_complete() {
            break Ok(0);
        }
        let drain = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            d = watch.next() => {
                let Some(d) = d else { break Err(anyhow::anyhow!("the bus closed")) };
                let d = d?;
                if ferry_event::envelope::job_of(&d.event).as_deref() == Some(job_id.as_str()) {
                    match view.apply(&d.event) {
                        Some(Applied::Ended(state, reason)) => {
                            end = Some((state, reason));
                            drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                        }
                        Some(Applied::Rejected(problems)) => {
                            d.ack().await?;
                            print_problems(&name, &problems);
                            system.stop().await?;
                            return Ok(EXIT_INVALID);
                        }
                        None => {}
                    }
                }
                d.ack().await?;
            }
            line = logs.next() => match line {
                // The reader went away (`ferry run FLOW | head`): stop, ending every task.
                Some(Ok(line)) if view.print_line(&line).is_err() => break Ok(EXIT_CLOSED),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading logs")),
                None => {}
            },
            _ = drain => {
                output_missing = true;
                break Ok(0);
            }
            _ = sigint.recv() => {
                if cancel(&system, &events, &job_id, &mut cancelling).await? { break Ok(130) }
            }
            _ = sigterm.recv() => {
                if cancel(&system, &events, &job_id, &mut cancelling).await? { break Ok(130) }
            }
            err = system.failed() => break Err(err),
        }
    };
    drop(logs);
    let data_dir = system.data_dir.clone();
    if let Some(endpoint) = &endpoint {
        endpoint.draining.cancel();
    }
    let stopped = system.stop().await;
    drop(endpoint);
    let code = outcome?;
    stopped?;
    if code == EXIT_CLOSED {
        return Ok(EXIT_CLOSED);
    }
    if code == 130 {
        errln!("ferry: stopped; every task process was ended");
        return Ok(130);
    }
    let (state, reason) = end.expect("the loop ends with the job's end");
    view.summary()?;
    let took = started.elapsed();
    if output_missing {
        // A job whose output was not kept is no success to report as one: the lines are gone
        // with this process's bus.
        errln!(
            "ferry: error: not every line of the job's output was stored in {}{}",
            data_dir.join("logs.db").display(),
            disk_full_hint(&data_dir)
        );
        if state == JobStatus::Succeeded {
            errln!(
                "ferry: job {job_id} succeeded, but its output is incomplete ({})",
                fmt_duration(took.as_millis() as i64)
            );
            return Ok(EXIT_FAILED);
        }
    }
    match state {
        JobStatus::Succeeded => {
            errln!(
                "ferry: job {job_id} succeeded in {}",
                fmt_duration(took.as_millis() as i64)
            );
            Ok(EXIT_OK)
        }
        _ => {
            let reason = reason.map(|r| format!(": {r}")).unwrap_or_default();
            errln!("ferry: job {job_id} {}{}", state.as_str(), visible(&reason));
            Ok(EXIT_FAILED)
        }
    }
}

use ferry_event::payload::JobStatus;

/// `: the disk holding DIR is full …` when it is (less than 1 MiB free), else a pointer to the
/// log collector's messages.
fn disk_full_hint(data_dir: &std::path::Path) -> String {
    let free = nix::sys::statvfs::statvfs(data_dir)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size());
    match free {
        Some(free) if free < 1024 * 1024 => format!(
            ": the disk holding {} is full ({free} bytes free); free space there and run the flow again",
            data_dir.display()
        ),
        _ => "; the log collector's messages above say why".to_string(),
    }
}

/// The flow with every container task moved to the docker runner, with the same image (and the
/// same command, files, env and resources, which are the task's own): `ferry run FLOW --runner
/// docker` develops on the local engine what runs as pods or batch jobs elsewhere. Tasks of
/// other runners are left as they are.
fn on_docker(valid: &ferry_flow::ValidFlow) -> Result<String> {
    use ferry_event::payload::Runner;
    let mut flow = valid.flow().clone();
    for (task, runner) in flow.tasks.iter_mut().zip(valid.runners()) {
        let mut params = serde_json::Map::new();
        params.insert("type".into(), "docker".into());
        let image = match &runner {
            Runner::Kubernetes(r) => &r.image,
            Runner::AwsBatch(r) => &r.image,
            Runner::GoogleBatch(r) => &r.image,
            Runner::Docker(_) | Runner::Local(_) | Runner::Agent(_) | Runner::Ray(_) => continue,
        };
        params.insert("image".into(), image.clone().into());
        if let Runner::Kubernetes(r) = &runner {
            // What the container sees is kept: its working directory and pull policy.
            if let Some(dir) = &r.working_dir {
                params.insert("workingDir".into(), dir.clone().into());
            }
            if let Some(pull) = r.pull_policy {
                params.insert("pullPolicy".into(), serde_json::to_value(pull)?);
            }
        }
        task.runner = ferry_flow::RunnerSpec::Params(params);
    }
    Ok(serde_json::to_string_pretty(&flow)?)
}

/// First signal: cancel the job (its processes are ended, the run finishes normally). Second:
/// stop at once (the launcher's shutdown ends whatever still runs). Returns true to stop now.
async fn cancel(
    system: &Embedded,
    events: &EventBuilder,
    job_id: &str,
    cancelling: &mut bool,
) -> Result<bool> {
    if *cancelling {
        errln!("\nferry: stopping now");
        return Ok(true);
    }
    *cancelling = true;
    errln!("\nferry: cancelling job {job_id} (interrupt again to stop at once)");
    let data = JobCancel {
        job_id: job_id.into(),
        reason: Some("interrupted".into()),
    };
    system
        .bus
        .publish(&[events.job(kind::JOB_CANCEL, job_id, &data)])
        .await
        .context("publishing the cancel")?;
    Ok(false)
}

enum Applied {
    Ended(JobStatus, Option<String>),
    Rejected(Vec<ferry_event::payload::Problem>),
}

/// A task as the summary shows it. Kept small (a run holds one per task): a succeeded task's
/// outputs and files, which most tasks do not have, are boxed.
#[derive(Debug, Clone, Default)]
struct TaskView {
    state: &'static str,
    attempts: u32,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    outputs: Option<Box<Map<String, Value>>>,
    files: Box<[OutputFile]>,
}

/// What the user sees: progress on stderr, log lines on stdout, a summary at the end.
struct View {
    order: Vec<String>,
    tasks: HashMap<String, TaskView>,
    running: HashSet<String>,
    width: usize,
    /// Lines each finished attempt logged, and lines printed so far.
    expected: HashMap<String, u64>,
    printed: HashMap<String, u64>,
    /// Finished attempts not all of whose lines were printed yet.
    incomplete: usize,
    /// Tasks in a final state: kept as events arrive, so that each event costs the same
    /// whatever the job's size.
    done: usize,
    /// A line per task event for a job of at most [`DETAIL_UP_TO`] tasks; a larger one gets a
    /// line a second (and one for each failure and retry), which is what a person can read.
    per_event: bool,
    last_progress: Option<Instant>,
    /// Task output as it is, control sequences included.
    raw: bool,
}

/// Jobs of at most this many tasks get a progress line per task event and a table of every
/// task at the end.
const DETAIL_UP_TO: usize = 1000;

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

impl View {
    fn new(order: Vec<String>, raw: bool) -> View {
        let tasks = order
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    TaskView {
                        state: "pending",
                        ..Default::default()
                    },
                )
            })
            .collect();
        View {
            width: order.iter().map(String::len).max().unwrap_or(4).min(24),
            per_event: order.len() <= DETAIL_UP_TO,
            order,
            tasks,
            running: HashSet::new(),
            expected: HashMap::new(),
            printed: HashMap::new(),
            incomplete: 0,
            done: 0,
            last_progress: None,
            raw,
        }
    }

    /// The subtasks a task's success added to the job, pending, listed after the task and
    /// whatever it submitted before.
    fn add_subtasks(&mut self, parent: &str, subtasks: &[String]) {
        if subtasks.is_empty() {
            return;
        }
        let prefix = format!("{parent}{}", ferry_flow::SUBTASK_SEPARATOR);
        let at = match self.order.iter().position(|t| t == parent) {
            Some(i) => {
                i + 1
                    + self.order[i + 1..]
                        .iter()
                        .take_while(|t| t.starts_with(&prefix))
                        .count()
            }
            None => self.order.len(),
        };
        let new: Vec<String> = subtasks
            .iter()
            .filter(|id| !self.tasks.contains_key(*id))
            .cloned()
            .collect();
        for id in &new {
            self.tasks.insert(
                id.clone(),
                TaskView {
                    state: "pending",
                    ..Default::default()
                },
            );
        }
        self.order.splice(at..at, new);
        self.per_event = self.order.len() <= DETAIL_UP_TO;
    }

    /// Sets a task's state, keeping the count of tasks done.
    fn set_state(&mut self, task_id: &str, state: &'static str) {
        let t = self.tasks.entry(task_id.to_string()).or_default();
        match (is_final(t.state), is_final(state)) {
            (false, true) => self.done += 1,
            (true, false) => self.done -= 1,
            _ => {}
        }
        t.state = state;
    }

    /// A progress line; `always` for what a person must see whatever the job's size (failures,
    /// retries).
    fn progress(&mut self, what: &str, always: bool) {
        if !(self.per_event || always) {
            let now = Instant::now();
            if self
                .last_progress
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
            {
                return;
            }
            self.last_progress = Some(now);
            errln!(
                "ferry: [{}/{} done, {} running]",
                self.done,
                self.order.len(),
                self.running.len()
            );
            return;
        }
        // `what` carries task errors, which quote what tasks wrote.
        errln!(
            "ferry: [{}/{} done, {} running] {}",
            self.done,
            self.order.len(),
            self.running.len(),
            visible(what)
        );
    }

    fn apply(&mut self, e: &Event) -> Option<Applied> {
        match e.ty() {
            kind::TASK_ACCEPTED => {
                let p: TaskAccepted = ferry_event::decode(e).ok()?;
                self.set_state(&p.task_id, "accepted");
                let on = p.compute.map(|c| format!(" as {c}")).unwrap_or_default();
                self.progress(
                    &format!("{} accepted{on}; waiting for its platform to run it", p.task_id),
                    false,
                );
            }
            kind::TASK_STARTED => {
                let p: TaskStarted = ferry_event::decode(e).ok()?;
                self.running.insert(p.attempt_id.clone());
                self.set_state(&p.task_id, "running");
                let t = self.tasks.entry(p.task_id.clone()).or_default();
                t.attempts = t.attempts.max(p.attempt);
                t.started_ms = Some(p.started_at_ms);
                let attempt = if p.attempt > 1 {
                    format!(" (attempt {})", p.attempt)
                } else {
                    String::new()
                };
                self.progress(&format!("{} started{attempt}", p.task_id), false);
            }
            kind::TASK_FINISHED => {
                let p: TaskFinished = ferry_event::decode(e).ok()?;
                self.running.remove(&p.attempt_id);
                let printed = self.printed.get(&p.attempt_id).copied().unwrap_or(0);
                if self.expected.insert(p.attempt_id, p.log_lines).is_none() && printed < p.log_lines {
                    self.incomplete += 1;
                }
            }
            kind::TASK_RETRYING | kind::TASK_SUCCEEDED | kind::TASK_FAILED | kind::TASK_CANCELLED => {
                let s: TaskState = ferry_event::decode(e).ok()?;
                if let Some(a) = &s.attempt_id {
                    self.running.remove(a);
                }
                let state = match e.ty() {
                    kind::TASK_RETRYING => "retrying",
                    kind::TASK_SUCCEEDED => "succeeded",
                    kind::TASK_FAILED => "failed",
                    _ => "cancelled",
                };
                self.set_state(&s.task_id, state);
                let t = self.tasks.entry(s.task_id.clone()).or_default();
                t.attempts = t.attempts.max(s.attempts);
                let what = match e.ty() {
                    kind::TASK_RETRYING => {
                        let wait = s
                            .retry_at_ms
                            .map(|at| at - ferry_event::now_ms())
                            .unwrap_or(0)
                            .max(0);
                        format!(
                            "{} attempt {} failed: {}; retrying in {}",
                            s.task_id,
                            s.attempts,
                            s.error.as_deref().unwrap_or("?"),
                            fmt_duration(wait)
                        )
                    }
                    kind::TASK_SUCCEEDED => {
                        t.outputs = (!s.outputs.is_empty()).then(|| Box::new(s.outputs));
                        t.files = s.output_files.into_boxed_slice();
                        t.started_ms = s.started_at_ms.or(t.started_ms);
                        t.finished_ms = s.finished_at_ms;
                        let took = t.started_ms.zip(t.finished_ms).map(|(a, b)| fmt_duration(b - a));
                        let submitted = match s.subtasks.len() {
                            0 => String::new(),
                            n => format!("; {n} subtasks joined the job"),
                        };
                        self.add_subtasks(&s.task_id, &s.subtasks);
                        format!(
                            "{} succeeded{}{submitted}",
                            s.task_id,
                            took.map(|d| format!(" in {d}")).unwrap_or_default()
                        )
                    }
                    kind::TASK_FAILED => {
                        t.finished_ms = s.finished_at_ms;
                        format!("{} failed: {}", s.task_id, s.error.as_deref().unwrap_or("?"))
                    }
                    _ => {
                        t.finished_ms = s.finished_at_ms;
                        format!("{} cancelled", s.task_id)
                    }
                };
                self.progress(&what, matches!(state, "retrying" | "failed"));
            }
            kind::TASKS_CANCELLED | kind::TASKS_RETRYING => {
                let s: TasksState = ferry_event::decode(e).ok()?;
                let state = if e.ty() == kind::TASKS_CANCELLED {
                    "cancelled"
                } else {
                    "pending"
                };
                for task in &s.tasks {
                    self.set_state(&task.task_id, state);
                    let t = self.tasks.entry(task.task_id.clone()).or_default();
                    t.attempts = t.attempts.max(task.attempts);
                    if state == "cancelled" {
                        t.finished_ms = Some(s.at_ms);
                    }
                }
                let n = s.tasks.len();
                let what = format!("{n} task{} {state}", if n == 1 { "" } else { "s" });
                self.progress(&what, false);
            }
            kind::JOB_SUCCEEDED | kind::JOB_FAILED | kind::JOB_CANCELLED => {
                let s: JobState = ferry_event::decode(e).ok()?;
                return Some(Applied::Ended(s.state, s.reason));
            }
            kind::JOB_REJECTED => {
                let r: JobRejected = ferry_event::decode(e).ok()?;
                return Some(Applied::Rejected(r.problems));
            }
            _ => {}
        }
        None
    }

    fn print_line(&mut self, line: &LogRecord) -> Result<(), Closed> {
        let printed = self.printed.entry(line.attempt_id.clone()).or_default();
        *printed += 1;
        if self.expected.get(&line.attempt_id) == Some(&*printed) {
            self.incomplete -= 1;
        }
        let mark = match line.stream {
            Stream::Stdout => '|',
            Stream::Stderr => '!',
        };
        let text = task_text(&line.text, self.raw);
        outln!("{:>w$} {mark} {text}", line.task_id, w = self.width)
    }

    /// Every finished attempt's lines were printed.
    fn logs_complete(&self) -> bool {
        self.running.is_empty() && self.incomplete == 0
    }

    /// The table of tasks; outputs are shown as text like task output.
    fn summary(&self) -> Result<(), Closed> {
        let mut rows =
            vec![["TASK", "STATE", "ATTEMPTS", "DURATION", "OUTPUTS", "OUTPUT FILES"].map(String::from)];
        // A large job: the count per state, and the table of the tasks that did not succeed.
        let detail = self.order.len() <= DETAIL_UP_TO;
        if !detail {
            let mut counts: Vec<(&str, usize)> = Vec::new();
            for t in self.tasks.values() {
                match counts.iter_mut().find(|(s, _)| *s == t.state) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((t.state, 1)),
                }
            }
            counts.sort();
            let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            outln!()?;
            outln!("{} tasks: {}", self.order.len(), counts.join(", "))?;
        }
        for id in &self.order {
            let t = &self.tasks[id];
            if !detail && t.state == "succeeded" {
                continue;
            }
            let duration = t
                .started_ms
                .zip(t.finished_ms)
                .map(|(a, b)| fmt_duration(b - a))
                .unwrap_or("-".into());
            let outputs = match &t.outputs {
                None => "-".to_string(),
                Some(outputs) => {
                    let s = outputs
                        .iter()
                        .map(|(k, v)| match v {
                            Value::String(s) => format!("{k}={s}"),
                            other => format!("{k}={other}"),
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    truncate(&task_text(&s, self.raw), 60)
                }
            };
            let files = if t.files.is_empty() {
                "-".to_string()
            } else {
                t.files
                    .iter()
                    .map(|f| f.uri.clone())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            rows.push([
                id.clone(),
                t.state.to_string(),
                t.attempts.to_string(),
                duration,
                outputs,
                files,
            ]);
        }
        if rows.len() == 1 && !detail {
            return Ok(());
        }
        let widths: Vec<usize> = (0..6)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        outln!()?;
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            outln!("{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// `850ms`, `1.2s`, `3m05s`.
pub fn fmt_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}
