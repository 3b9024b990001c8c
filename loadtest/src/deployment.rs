//! A deployment on a real broker: the planner, scheduler, launcher, log collector and api each
//! run as their own `ferry service` process; this process submits work on the same bus and
//! watches ferry's events on ephemeral subscriptions of its own. The run's namespace is removed
//! from RabbitMQ afterwards.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_bus::{Bus, Subscribe};
use ferry_event::payload::TaskStarted;
use ferry_event::{AttributesReader, Topic, kind};

use crate::agent::Runner;
use crate::shape::Shape;
use crate::{Published, Report, single_flow, spawn_submitter, submissions};

/// The service processes, stopped (SIGTERM, then SIGKILL) when dropped.
struct Services {
    children: Vec<(String, Child)>,
}

impl Services {
    /// The services, and the tasks' runner: the local launcher, or one agent (`ferry agent`,
    /// registering the no-op as [`crate::agent::TASK`]) in its place, with the same capacity.
    fn start(
        ferry: &Path,
        bus: &str,
        dir: &Path,
        parallel: usize,
        runner: Runner,
        command: &str,
    ) -> Result<Services> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let db = |f: &str| format!("sqlite://{}", dir.join(f).display());
        // The api keeps its read model up to date from the same events as in any deployment.
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut children = Vec::new();
        let runner_spec: (&str, Vec<String>) = match runner {
            Runner::Local => ("launcher", vec!["--max-parallel".into(), parallel.to_string()]),
            // In the launcher's place, so it keeps the data directory to itself.
            Runner::Agent => {
                let config = dir.join("agent.yaml");
                std::fs::write(&config, crate::agent::config(command))?;
                (
                    "agent",
                    vec![
                        "--cluster".into(),
                        crate::agent::CLUSTER.into(),
                        "--config".into(),
                        config.display().to_string(),
                        "--max-parallel".into(),
                        parallel.to_string(),
                    ],
                )
            }
        };
        let specs: Vec<(&str, Vec<String>)> = vec![
            ("planner", vec![]),
            ("scheduler", vec!["--db".into(), db("scheduler.db")]),
            runner_spec,
            ("log-collector", vec!["--log-db".into(), db("logs.db")]),
            (
                "api",
                vec![
                    "--api-db".into(),
                    db("api.db"),
                    "--log-db".into(),
                    db("logs.db"),
                    "--listen".into(),
                    listen.to_string(),
                ],
            ),
        ];
        for (name, extra) in specs {
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            // `ferry agent` is a command of its own; the others are `ferry service NAME`.
            let command: &[&str] = if name == "agent" {
                &["agent"]
            } else {
                &["service", name]
            };
            let child = Command::new(ferry)
                .args(command)
                .args(["--bus", bus, "--bus-key-file"])
                .arg(dir.join("bus.keys"))
                .arg("--data-dir")
                .arg(&data)
                .args(extra)
                .env(
                    "FERRY_LOG",
                    std::env::var("FERRY_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {} service {name}", ferry.display()))?;
            children.push((name.to_string(), child));
        }
        Ok(Services { children })
    }

    /// User+system CPU of each service process itself (not its children), and the system part.
    fn cpu(&self) -> Vec<(String, Duration, Duration)> {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let mut out = Vec::new();
        for (name, c) in &self.children {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", c.id())) else {
                continue;
            };
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            // After the command name: state is field 3, utime 14, stime 15 (1-based).
            let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            out.push((
                name.clone(),
                Duration::from_secs_f64((utime + stime) / ticks),
                Duration::from_secs_f64(stime / ticks),
            ));
        }
        out
    }

    fn check(&mut self) -> Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!("the {name} service exited ({status}); see its log");
            }
        }
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the deployment run is asked to do.
pub struct Plan {
    pub ferry: PathBuf,
    pub bus_url: String,
    pub parallel: usize,
    pub command: String,
    /// `None`: one job of `shape` as fast as possible; `Some(rate)`: single-task jobs at that rate.
    pub rate: Option<f64>,
    pub tasks: usize,
    pub shape: Option<Shape>,
    /// With a rate: each job is started by a plain CloudEvent matching a deployed flow's
    /// trigger, not submitted.
    pub triggered: bool,
    /// What runs the tasks: the local launcher or an agent.
    pub runner: Runner,
}

pub async fn run(plan: Plan) -> Result<Report> {
    // A namespace of its own: nothing else on the broker sees this run.
    let ns = format!("load{}", &ferry_event::new_id().replace('-', "")[..12]);
    let sep = if plan.bus_url.contains('?') { '&' } else { '?' };
    let bus_url = format!("{}{sep}namespace={ns}", plan.bus_url);
    // Whatever the outcome: the services are stopped when `run_in` returns, then the
    // namespace goes.
    let report = run_in(&plan, &bus_url).await;
    remove_namespace(&bus_url, plan.runner).await;
    report
}

async fn run_in(plan: &Plan, bus_url: &str) -> Result<Report> {
    let bus_url = bus_url.to_string();
    let dir = tempfile::tempdir()?;
    // The services and this process sign with one key, as a deployment's do: the cost of
    // signing and checking is part of what is measured.
    let keys_file = dir.path().join("bus.keys");
    ferry_cli::keys::create(&keys_file)?;
    let keys = ferry_bus::signing::Keyring::load(&keys_file)?;
    let bus: Arc<dyn Bus> = ferry_connect::open(&bus_url, ferry_connect::Auth::Signed(keys))
        .await
        .context("connecting to the broker")?;
    // Watch every class of control traffic (logs apart) on an ephemeral group, in batches
    // acked together, so that watching costs the broker and the machine little.
    let topics = plan.runner.topics();
    let mut watch = bus
        .subscribe(
            Subscribe::new("loadtest", topics.clone())
                .prefetch(4096)
                .ephemeral(),
        )
        .await?;
    let counter = count_messages(&bus_url, &topics).await?;
    let mut services = Services::start(
        &plan.ferry,
        &bus_url,
        dir.path(),
        plan.parallel,
        plan.runner,
        &plan.command,
    )?;
    // Let the services join their groups before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    services.check()?;

    let fields = plan.runner.fields(&plan.command);
    let jobs = match (plan.rate, plan.shape) {
        (None, Some(shape)) => submissions(vec![(ferry_event::new_id(), shape.flow_on(&fields))]),
        (None, None) => bail!("a run without a rate needs a shape"),
        (Some(_), _) if plan.triggered => {
            crate::trigger::deploy(bus.as_ref(), &mut watch, &plan.command).await?;
            crate::trigger::events(plan.tasks)
        }
        (Some(_), _) => {
            let flow = single_flow(&fields);
            submissions(
                (0..plan.tasks)
                    .map(|_| (ferry_event::new_id(), flow.clone()))
                    .collect(),
            )
        }
    };
    let mut pending: HashSet<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    let published: Published = Default::default();
    let cpu_start = services.cpu();
    let started = Instant::now();
    let submitter = spawn_submitter(bus.clone(), jobs, plan.rate, published.clone());

    let mut latencies = Vec::with_capacity(plan.tasks);
    // Paced runs: when each job's `job.planned` and `task.dispatched` were made (their
    // CloudEvents `time`), to split the latency between the services.
    let mut planned_at: HashMap<String, i64> = HashMap::new();
    let mut dispatched_at: HashMap<String, i64> = HashMap::new();
    let mut stages: Vec<(&'static str, Vec<i64>)> = vec![
        (
            if plan.triggered {
                "published -> planned"
            } else {
                "submitted -> planned"
            },
            Vec::new(),
        ),
        ("planned -> dispatched", Vec::new()),
        ("dispatched -> started", Vec::new()),
    ];
    let mut messages = 0u64;
    let mut failed = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
    let mut check = tokio::time::interval(Duration::from_secs(2));
    while !pending.is_empty() {
        let batch = tokio::select! {
            b = watch.next_batch(4096) => b.context("the bus closed")??,
            _ = check.tick() => { services.check()?; continue }
            _ = tokio::time::sleep_until(deadline) => bail!("gave up after 30 minutes with {} jobs unfinished", pending.len()),
        };
        messages += batch.len() as u64;
        for d in &batch {
            match d.event.ty() {
                kind::TASK_STARTED => {
                    let s: TaskStarted = ferry_event::decode(&d.event)?;
                    let from = match plan.rate {
                        // Paced: from the submission's publish to the process start.
                        Some(_) => published
                            .lock()
                            .unwrap()
                            .get(&s.job_id)
                            .copied()
                            .unwrap_or(s.ready_at_ms),
                        // Fan-out: from the task becoming ready.
                        None => s.ready_at_ms,
                    };
                    latencies.push(s.started_at_ms - from);
                    if plan.rate.is_some()
                        && let (Some(p), Some(d)) = (planned_at.get(&s.job_id), dispatched_at.get(&s.job_id))
                    {
                        stages[0].1.push(p - from);
                        stages[1].1.push(d - p);
                        stages[2].1.push(s.started_at_ms - d);
                    }
                }
                kind::JOB_PLANNED | kind::TASK_DISPATCHED if plan.rate.is_some() => {
                    if let (Some(job), Some(time)) = (ferry_event::envelope::job_of(&d.event), d.event.time())
                    {
                        let at = if d.event.ty() == kind::JOB_PLANNED {
                            &mut planned_at
                        } else {
                            &mut dispatched_at
                        };
                        at.insert(job, time.timestamp_millis());
                    }
                }
                kind::JOB_SUCCEEDED | kind::JOB_FAILED | kind::JOB_CANCELLED | kind::JOB_REJECTED => {
                    if d.event.ty() != kind::JOB_SUCCEEDED {
                        failed += 1;
                    }
                    if let Some(job) = ferry_event::envelope::job_of(&d.event) {
                        pending.remove(&job);
                    }
                }
                _ => {}
            }
        }
        ferry_bus::ack_all(batch).await?;
    }
    let elapsed = started.elapsed();
    let mut sys = Duration::ZERO;
    let cpu_by_service: Vec<(String, Duration)> = services
        .cpu()
        .into_iter()
        .map(|(name, end, end_sys)| {
            let start = cpu_start.iter().find(|(n, ..)| *n == name);
            let (cpu0, sys0) = start.map(|(_, c, s)| (*c, *s)).unwrap_or_default();
            sys += end_sys.saturating_sub(sys0);
            (name, end.saturating_sub(cpu0))
        })
        .collect();
    let cpu = cpu_by_service.iter().map(|(_, d)| *d).sum();
    submitter.await??;
    // The counter's queue gets the last messages about when the watcher does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Report {
        tasks: plan.tasks,
        elapsed,
        latencies,
        cpu,
        sys: Some(sys),
        hops: plan.shape.and_then(|s| s.hops()),
        cpu_by_service,
        peak_rss_kib: None,
        events: messages,
        broker_messages: counter.as_ref().map(message_count),
        failed,
        latency_label: match plan.rate {
            Some(_) if plan.triggered => "event published -> process started",
            Some(_) => "submission published -> process started",
            None => "task ready -> process started",
        },
        stages: if plan.rate.is_some() { stages } else { Vec::new() },
    })
}

/// Deletes the run's queues and exchanges from RabbitMQ, so that runs do not pile up there.
/// Kafka topics stay: deleting topics is not something ferry's Kafka bus does.
async fn remove_namespace(bus_url: &str, runner: Runner) {
    // Every group's queue, the api's and an agent's included, is deleted with the namespace.
    let mut groups = ferry_cli::services::standard_groups();
    if runner == Runner::Agent {
        groups.extend(crate::agent::groups());
    }
    let removed = ferry_connect::remove_namespace(bus_url, &groups);
    match tokio::time::timeout(Duration::from_secs(30), removed).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: cannot remove the run's namespace from the broker: {e}"),
        Err(_) => eprintln!("warning: removing the run's namespace from the broker timed out"),
    }
}

#[cfg(feature = "amqp")]
type MessageCounter = crate::amqp_count::Counter;
#[cfg(not(feature = "amqp"))]
type MessageCounter = std::convert::Infallible;

#[cfg(feature = "amqp")]
fn message_count(c: &MessageCounter) -> u64 {
    c.get()
}

#[cfg(not(feature = "amqp"))]
fn message_count(c: &MessageCounter) -> u64 {
    match *c {}
}

/// On RabbitMQ, a count of the messages carrying the events on `topics`.
async fn count_messages(bus_url: &str, topics: &[Topic]) -> Result<Option<MessageCounter>> {
    #[cfg(feature = "amqp")]
    if bus_url.starts_with("amqp://") || bus_url.starts_with("amqps://") {
        let keys: Vec<String> = topics.iter().map(Topic::name).collect();
        return Ok(Some(crate::amqp_count::start(bus_url, &keys).await?));
    }
    let _ = (bus_url, topics);
    Ok(None)
}
