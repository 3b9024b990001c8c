//! ferry's load test, on the embedded system (in-memory bus, SQLite with durable commits, the
//! local launcher running real processes) or, with `--bus URL`, on a deployment on a real broker
//! with each service in its own process ([`deployment`]).
//!
//! - `fanout`: one job, a root task releasing N no-op workers, as fast as ferry goes;
//! - `paced`: single-task jobs submitted at a fixed rate, for dispatch latency at a steady load;
//! - `triggered` (`--bus` only): plain CloudEvents published at a fixed rate, each starting a
//!   single-task job of a deployed flow through its trigger ([`trigger`]);
//! - `agent` (`--bus` only): single-task jobs submitted at a fixed rate whose task runs on a warm
//!   `ferry agent` ([`agent`]): dispatch latency through an agent;
//! - `agent-fanout` (`--bus` only): the same flat fan-out of a no-op through the local launcher
//!   and through one agent of the same capacity (`--parallel`), one after the other in one run;
//! - `shape`: one job of a given DAG shape (fan-out, fan-in, chain, diamond lattice, grid), the
//!   flows users write ([`shape`]); with `--via run` it times the `ferry run` command itself, end
//!   to end, as a user runs it, rather than the services inside this process;
//! - `api-reads`: `GET /jobs` latency alone and during a burst of concurrent submissions, against
//!   `ferry up` started as a process ([`api_reads`]);
//! - `submit-wait`: `ferry submit FLOW --wait` of one job of a shape, as a user runs it against
//!   `ferry up`, and how long after the job's last task it returns ([`submit_wait`]);
//! - `docker`: ferry's docker launcher against `docker run` in a shell loop on one engine
//!   ([`docker`]);
//! - `aws-batch`: ferry's aws-batch launcher with many jobs in flight on moto, its AWS calls
//!   per attempt counted ([`aws_batch`]);
//! - `google-batch`: ferry's google-batch launcher with many jobs in flight on the Google Batch
//!   test server, its Batch and Cloud Logging calls per attempt counted ([`google_batch`]).
//!
//! It reports throughput, dispatch latency (task ready → its process started, as stamped by the
//! scheduler and the launcher), ferry's own CPU per task (this process's user+sys time; the task
//! processes are children and not counted), peak memory (VmHWM), events per task and, on RabbitMQ,
//! broker messages per task.

mod agent;
#[cfg(feature = "amqp")]
mod amqp_count;
mod api_reads;
#[cfg(feature = "aws-batch")]
mod aws_batch;
mod deployment;
#[cfg(feature = "docker")]
mod docker;
#[cfg(feature = "google-batch")]
mod google_batch;
mod shape;
mod submit_wait;
mod trigger;
mod via_run;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::Runner;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ferry_bus::{Bus, Subscribe};
use ferry_cli::embedded::{Embedded, Options};
use ferry_event::payload::{FlowSource, JobSubmitted, TaskStarted};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};

#[derive(Parser)]
#[command(about = "Load test ferry's embedded system and report throughput, latency, CPU and memory")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// State directory; a fresh temporary one by default.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The no-op each task runs.
    #[arg(long, global = true, default_value = "/bin/true")]
    command: String,
    /// Attempts the launcher runs at once.
    #[arg(long, global = true, default_value_t = 64)]
    parallel: usize,
    /// Run on a broker (amqp://… or kafka://…) with every service in its own `ferry service`
    /// process, instead of the embedded system.
    #[arg(long, global = true)]
    bus: Option<String>,
    /// The `ferry` binary for `--bus` and `--via run` runs [default: beside this program].
    #[arg(long, global = true)]
    ferry: Option<PathBuf>,
    /// What runs the job: the services in this process (or, with `--bus`, as processes), or
    /// `ferry run FLOW` as a user runs it (embedded only).
    #[arg(long, global = true, value_enum, default_value_t = Via::Services)]
    via: Via,
    /// Embedded only: sync the scheduler's and the log store's SQLite at every commit, as the
    /// services on a broker do, instead of `ferry run`'s `normal` (its bus is in memory).
    #[arg(long, global = true)]
    sync_every_commit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    Services,
    Run,
}

/// What a run measured.
pub struct Report {
    pub tasks: usize,
    pub elapsed: Duration,
    pub latencies: Vec<i64>,
    pub cpu: Duration,
    /// The system part of `cpu`, where it is known.
    pub sys: Option<Duration>,
    /// Tasks on the longest path, for a shape with hops (the per-hop time is the elapsed time
    /// over it).
    pub hops: Option<usize>,
    /// The same, per service process (deployment runs only).
    pub cpu_by_service: Vec<(String, Duration)>,
    pub peak_rss_kib: Option<u64>,
    /// Events on the control, lifecycle, dispatch and cancel topics.
    pub events: u64,
    /// Broker messages carrying them, where a message can carry several (RabbitMQ).
    pub broker_messages: Option<u64>,
    pub failed: usize,
    pub latency_label: &'static str,
    /// The latency split into the stages between services (paced deployment runs only): each
    /// stage's name and its samples, in ms.
    pub stages: Vec<(&'static str, Vec<i64>)>,
}

/// The value at quantile `p` of sorted samples.
fn quantile(sorted: &[i64], p: f64) -> i64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0)
}

impl Report {
    fn print(mut self) -> Result<()> {
        let total = self.tasks as f64;
        self.latencies.sort_unstable();
        let l = &self.latencies;
        let pct = |p: f64| quantile(l, p);
        println!("  elapsed               {:.2} s", self.elapsed.as_secs_f64());
        println!(
            "  tasks                 {} ({} jobs not succeeded)",
            self.tasks, self.failed
        );
        println!(
            "  throughput            {:.0} tasks/s",
            total / self.elapsed.as_secs_f64()
        );
        if let Some(hops) = self.hops.filter(|h| *h > 1) {
            println!(
                "  per hop               {:.2} ms ({} tasks on the longest path)",
                self.elapsed.as_secs_f64() * 1000.0 / (hops - 1) as f64,
                hops
            );
        }
        if !l.is_empty() {
            println!(
                "  latency               p50 {} ms, p99 {} ms, max {} ms ({})",
                pct(0.5),
                pct(0.99),
                l.last().copied().unwrap_or(0),
                self.latency_label
            );
        }
        for (stage, samples) in &mut self.stages {
            samples.sort_unstable();
            println!(
                "    {stage:<21} p50 {} ms, p99 {} ms",
                quantile(samples, 0.5),
                quantile(samples, 0.99)
            );
        }
        println!(
            "  ferry CPU             {:.3} ms/task ({:.2} s user+sys in all; task processes excluded)",
            self.cpu.as_secs_f64() * 1000.0 / total,
            self.cpu.as_secs_f64()
        );
        if let Some(sys) = self.sys {
            println!(
                "  of which system       {:.3} ms/task ({:.2} s)",
                sys.as_secs_f64() * 1000.0 / total,
                sys.as_secs_f64()
            );
        }
        if !self.cpu_by_service.is_empty() {
            let parts: Vec<String> = self
                .cpu_by_service
                .iter()
                .map(|(name, d)| format!("{name} {:.3}", d.as_secs_f64() * 1000.0 / total))
                .collect();
            println!("  CPU by service        {} ms/task", parts.join(", "));
        }
        if let Some(kib) = self.peak_rss_kib {
            println!(
                "  peak memory           {:.1} MiB (VmHWM of the whole process)",
                kib as f64 / 1024.0
            );
        }
        if self.events > 0 {
            println!(
                "  events/task           {:.2} (control, lifecycle, dispatch and cancel; logs apart)",
                self.events as f64 / total
            );
        }
        if let Some(m) = self.broker_messages {
            println!(
                "  broker messages/task  {:.2} (RabbitMQ messages carrying those events)",
                m as f64 / total
            );
        }
        println!("  load average after    {}", loadavg());
        if self.failed > 0 {
            bail!("{} jobs did not succeed", self.failed);
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Mode {
    /// One job: a root task fanning out to N workers, as fast as possible.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
    },
    /// Single-task jobs submitted at a fixed rate.
    Paced {
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 2_000)]
        tasks: usize,
    },
    /// Plain CloudEvents published at a fixed rate onto intake, each starting a single-task
    /// job of a deployed flow through its trigger (`--bus` only).
    Triggered {
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 1_000)]
        events: usize,
    },
    /// Single-task jobs submitted at a fixed rate, each task run by a warm `ferry agent`
    /// (`--bus` only).
    Agent {
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 1_000)]
        tasks: usize,
    },
    /// The same flat fan-out (a root and N no-op workers) through the local launcher, then
    /// through one agent with the same capacity (`--parallel`), in one run (`--bus` only).
    AgentFanout {
        #[arg(long, default_value_t = 2_000)]
        tasks: usize,
        /// Pairs of runs (local launcher, then agent).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// One job of a DAG shape, as fast as possible.
    Shape {
        #[arg(value_enum)]
        kind: shape::Kind,
        /// Workers of a fan-out or fan-in, tasks per lattice layer, columns of a grid.
        #[arg(long, default_value_t = 2_000)]
        width: usize,
        /// Tasks of a chain, layers of a lattice, rows of a grid.
        #[arg(long, default_value_t = 300)]
        depth: usize,
    },
    /// `ferry submit --wait` of one job of a shape against `ferry up`, timed from outside.
    SubmitWait {
        #[arg(value_enum)]
        kind: shape::Kind,
        /// As for `shape`.
        #[arg(long, default_value_t = 2_000)]
        width: usize,
        /// As for `shape`.
        #[arg(long, default_value_t = 300)]
        depth: usize,
        /// Runs, each on a fresh `ferry up`.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// ferry's docker launcher against `docker run` in a shell loop, on the engine at
    /// DOCKER_HOST: throughput, dispatch → started latency, CPU per container, and memory
    /// while following many running containers.
    Docker {
        /// No-op containers in the throughput runs.
        #[arg(long, default_value_t = 300)]
        containers: usize,
        /// Containers timed one at a time for latency.
        #[arg(long, default_value_t = 50)]
        samples: usize,
        /// Running containers the launcher follows for the memory figure (0: skip).
        #[arg(long, default_value_t = 1000)]
        follow: usize,
        /// The image (busybox or any with `true` and `sleep`), already on the engine.
        #[arg(long, env = "FERRY_TEST_DOCKER_IMAGE", default_value = "ferry-test/busybox:1")]
        image: String,
    },
    /// ferry's aws-batch launcher against moto with many jobs in flight: DescribeJobs calls
    /// per attempt and minute, dispatch → SubmitJob latency, the other calls and CPU per
    /// attempt. moto must run jobs on a Docker engine (scripts/services.sh `moto_up`).
    AwsBatch {
        /// moto's URL.
        #[arg(long, env = "FERRY_TEST_MOTO")]
        endpoint: String,
        /// Jobs dispatched at once.
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        /// How long each job runs (`sleep`), in seconds.
        #[arg(long, default_value_t = 120)]
        run_for: u64,
        /// The window, once every job runs, in which DescribeJobs calls are counted, in seconds.
        #[arg(long, default_value_t = 60)]
        window: u64,
        /// The launcher's --aws-batch-poll-interval, in seconds.
        #[arg(long, default_value_t = 2.0)]
        poll_interval: f64,
        /// The image (with `sleep`), already on moto's Docker engine.
        #[arg(long, env = "FERRY_TEST_DOCKER_IMAGE", default_value = "ferry-test/busybox:1")]
        image: String,
        /// Jobs dispatched one at a time first, for dispatch → SubmitJob with nothing queued.
        #[arg(long, default_value_t = 20)]
        samples: usize,
    },
    /// ferry's google-batch launcher against the Google Batch test server (started in this
    /// process, each job a container on the Docker engine at DOCKER_HOST) with many jobs in
    /// flight: jobs.list calls per attempt and minute, entries.list and the other calls per
    /// attempt, dispatch → task.accepted latency, CPU per attempt.
    GoogleBatch {
        /// Jobs dispatched at once.
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        /// How long each job runs (`sleep`), in seconds.
        #[arg(long, default_value_t = 45)]
        run_for: u64,
        /// The window, once every job runs, in which the calls are counted, in seconds.
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// The launcher's --google-batch-poll-interval, in seconds.
        #[arg(long, default_value_t = 2.0)]
        poll_interval: f64,
        /// The image (with `sleep` and `true`), already on the Docker engine.
        #[arg(long, env = "FERRY_TEST_DOCKER_IMAGE", default_value = "ferry-test/busybox:1")]
        image: String,
        /// Jobs dispatched one at a time first, for dispatch → task.accepted with nothing queued.
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
    /// `GET /jobs` latency while one-task jobs are submitted all at once, on `ferry up`.
    ApiReads {
        /// Jobs submitted at once (at most 990, so that one `GET /jobs` sees them all).
        #[arg(long, default_value_t = 500)]
        jobs: usize,
        /// Clients reading `GET /jobs?limit=20` in a loop meanwhile.
        #[arg(long, default_value_t = 4)]
        readers: usize,
    },
}

impl Mode {
    /// The one job of a shape run, and its shape (fan-out and shape runs).
    fn shape(&self) -> Option<shape::Shape> {
        match *self {
            Mode::Fanout { tasks } => Some(shape::Shape {
                kind: shape::Kind::Fanout,
                width: tasks,
                depth: 2,
            }),
            Mode::Shape { kind, width, depth } => Some(shape::Shape { kind, width, depth }),
            Mode::Paced { .. }
            | Mode::Triggered { .. }
            | Mode::Agent { .. }
            | Mode::AgentFanout { .. }
            | Mode::ApiReads { .. }
            | Mode::SubmitWait { .. }
            | Mode::Docker { .. }
            | Mode::AwsBatch { .. }
            | Mode::GoogleBatch { .. } => None,
        }
    }
}

#[global_allocator]
static ALLOCATOR: ferry_runtime::memory::Allocator = ferry_runtime::memory::ALLOCATOR;

fn main() -> Result<()> {
    // The embedded system runs in this process: set up as `ferry` sets itself up.
    ferry_runtime::memory::set_up();
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    if let Mode::Docker {
        containers,
        samples,
        follow,
        ref image,
    } = args.mode
    {
        #[cfg(feature = "docker")]
        return docker::run(docker::Plan {
            image: image.clone(),
            containers,
            parallel: args.parallel,
            samples,
            follow,
        })
        .await;
        #[cfg(not(feature = "docker"))]
        {
            let _ = (containers, samples, follow, image);
            bail!("ferry-loadtest was built without the `docker` feature");
        }
    }
    if let Mode::AwsBatch {
        ref endpoint,
        jobs,
        run_for,
        window,
        poll_interval,
        ref image,
        samples,
    } = args.mode
    {
        #[cfg(feature = "aws-batch")]
        return aws_batch::run(aws_batch::Plan {
            endpoint: endpoint.clone(),
            jobs,
            run_for: Duration::from_secs(run_for),
            window: Duration::from_secs(window),
            poll_interval: Duration::from_secs_f64(poll_interval),
            image: image.clone(),
            samples,
        })
        .await;
        #[cfg(not(feature = "aws-batch"))]
        {
            let _ = (endpoint, jobs, run_for, window, poll_interval, image, samples);
            bail!("ferry-loadtest was built without the `aws-batch` feature");
        }
    }
    if let Mode::GoogleBatch {
        jobs,
        run_for,
        window,
        poll_interval,
        ref image,
        samples,
    } = args.mode
    {
        if !(poll_interval.is_finite() && poll_interval > 0.0) {
            bail!("--poll-interval must be a number of seconds more than 0");
        }
        #[cfg(feature = "google-batch")]
        return google_batch::run(google_batch::Plan {
            jobs,
            run_for: Duration::from_secs(run_for),
            window: Duration::from_secs(window),
            poll_interval: Duration::from_secs_f64(poll_interval),
            image: image.clone(),
            samples,
        })
        .await;
        #[cfg(not(feature = "google-batch"))]
        {
            let _ = (jobs, run_for, window, image, samples);
            bail!("ferry-loadtest was built without the `google-batch` feature");
        }
    }
    if let Mode::SubmitWait {
        kind,
        width,
        depth,
        runs,
    } = args.mode
    {
        let ferry = match &args.ferry {
            Some(f) => f.clone(),
            None => std::env::current_exe()?.with_file_name("ferry"),
        };
        let plan = submit_wait::Plan {
            ferry,
            bus: args.bus.clone().unwrap_or_else(|| "memory://".into()),
            shape: shape::Shape { kind, width, depth },
            command: args.command.clone(),
            parallel: args.parallel,
            runs,
        };
        return submit_wait::run(plan).await;
    }
    if let Mode::ApiReads { jobs, readers } = args.mode {
        if jobs > 990 {
            bail!("--jobs {jobs}: at most 990, so that one GET /jobs sees them all");
        }
        let ferry = match &args.ferry {
            Some(f) => f.clone(),
            None => std::env::current_exe()?.with_file_name("ferry"),
        };
        let plan = api_reads::Plan {
            ferry,
            bus: args.bus.clone().unwrap_or_else(|| "memory://".into()),
            jobs,
            readers,
            command: args.command.clone(),
            parallel: args.parallel,
        };
        return api_reads::run(plan).await;
    }
    if let Some(bus) = &args.bus {
        let ferry = match &args.ferry {
            Some(f) => f.clone(),
            None => std::env::current_exe()?.with_file_name("ferry"),
        };
        if args.via == Via::Run {
            bail!("--via run runs `ferry run`, which is embedded: leave out --bus");
        }
        if let Mode::AgentFanout { tasks, rounds } = args.mode {
            return agent_fanout(&args, &ferry, bus, tasks, rounds).await;
        }
        let (rate, tasks, label, flow) = match (&args.mode, args.mode.shape()) {
            (Mode::Paced { rate, tasks }, _) => (
                Some(*rate),
                *tasks,
                format!("paced, {tasks} jobs at {rate}/s"),
                None,
            ),
            (Mode::Agent { rate, tasks }, _) => (
                Some(*rate),
                *tasks,
                format!("paced through an agent, {tasks} jobs at {rate}/s"),
                None,
            ),
            (Mode::Triggered { rate, events }, _) => (
                Some(*rate),
                *events,
                format!("triggered, {events} events at {rate}/s, each a job of a deployed flow"),
                None,
            ),
            (_, Some(shape)) => (None, shape.tasks(), shape.label(), Some(shape)),
            (_, None) => unreachable!(
                "api-reads and submit-wait returned above; every other mode but paced has a shape"
            ),
        };
        println!(
            "ferry loadtest on {}: {label}; services as processes; command {}; launcher parallelism {}",
            bus.split('@').next_back().unwrap_or(bus),
            args.command,
            args.parallel
        );
        println!("  load average before   {}", loadavg());
        let plan = deployment::Plan {
            ferry,
            bus_url: bus.clone(),
            parallel: args.parallel,
            command: args.command.clone(),
            rate,
            tasks,
            shape: flow,
            triggered: matches!(args.mode, Mode::Triggered { .. }),
            runner: if matches!(args.mode, Mode::Agent { .. }) {
                Runner::Agent
            } else {
                Runner::Local
            },
        };
        return deployment::run(plan).await?.print();
    }
    if matches!(
        args.mode,
        Mode::Triggered { .. } | Mode::Agent { .. } | Mode::AgentFanout { .. }
    ) {
        bail!("this mode runs on a deployment: give --bus amqp://… or kafka://…");
    }
    if args.via == Via::Run {
        let Some(shape) = args.mode.shape() else {
            bail!("--via run times one job of a shape: use `fanout` or `shape`");
        };
        let ferry = match &args.ferry {
            Some(f) => f.clone(),
            None => std::env::current_exe()?.with_file_name("ferry"),
        };
        return via_run::run(&ferry, shape, &args.command, args.parallel)?.print();
    }
    let tmp = tempfile::tempdir()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let mut opts = Options::new(&data_dir);
    opts.max_parallel = args.parallel;
    if args.sync_every_commit {
        opts.synchronous = ferry_runtime::db::Synchronous::Full;
    }
    let load_before = loadavg();
    let mut system = Embedded::start(&opts).await?;
    let topics = [Topic::Control, Topic::Lifecycle, Topic::Dispatch("local".into())];
    let mut watch = system
        .bus
        .subscribe(Subscribe::new("loadtest", topics).prefetch(4096))
        .await?;

    let (jobs, label): (Vec<(String, String)>, String) = match (&args.mode, args.mode.shape()) {
        (_, Some(shape)) => (
            vec![(ferry_event::new_id(), shape.flow(&args.command))],
            shape.label(),
        ),
        (Mode::Paced { tasks, rate }, None) => {
            let flow = single_flow(&Runner::Local.fields(&args.command));
            (
                (0..*tasks)
                    .map(|_| (ferry_event::new_id(), flow.clone()))
                    .collect(),
                format!("paced, {tasks} jobs at {rate}/s"),
            )
        }
        (_, None) => {
            unreachable!("api-reads and submit-wait returned above; every other mode but paced has a shape")
        }
    };
    let rate = match args.mode {
        Mode::Paced { rate, .. } => Some(rate),
        _ => None,
    };
    let total_tasks: usize = match (&args.mode, args.mode.shape()) {
        (_, Some(shape)) => shape.tasks(),
        (Mode::Paced { tasks, .. }, None) => *tasks,
        (_, None) => {
            unreachable!("api-reads and submit-wait returned above; every other mode but paced has a shape")
        }
    };
    println!(
        "ferry loadtest: {label}; command {}; launcher parallelism {}",
        args.command, args.parallel
    );
    println!("  load average before   {load_before}");

    let (cpu_start, sys_start) = cpu_time();
    let started = Instant::now();
    let mut pending: HashSet<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    let submit_bus: Arc<dyn Bus> = Arc::new(system.bus.clone());
    let submitter = spawn_submitter(submit_bus, submissions(jobs), rate, Default::default());

    let mut latencies: Vec<i64> = Vec::with_capacity(total_tasks);
    let mut messages: u64 = 0;
    let mut failed = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
    while !pending.is_empty() {
        let d = tokio::select! {
            d = watch.next() => d.context("the bus closed")??,
            e = system.failed() => return Err(e),
            _ = tokio::time::sleep_until(deadline) => bail!("gave up after 30 minutes with {} jobs unfinished", pending.len()),
        };
        messages += 1;
        match d.event.ty() {
            kind::TASK_STARTED => {
                let s: TaskStarted = ferry_event::decode(&d.event)?;
                latencies.push(s.started_at_ms - s.ready_at_ms);
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
        d.ack().await?;
    }
    let elapsed = started.elapsed();
    let (cpu_end, sys_end) = cpu_time();
    submitter.await??;
    system.stop().await?;

    Report {
        tasks: total_tasks,
        elapsed,
        latencies,
        cpu: cpu_end - cpu_start,
        sys: Some(sys_end - sys_start),
        hops: args.mode.shape().and_then(|s| s.hops()),
        cpu_by_service: Vec::new(),
        peak_rss_kib: Some(peak_rss_kib()),
        events: messages,
        broker_messages: None,
        failed,
        latency_label: "task ready -> process started",
        stages: Vec::new(),
    }
    .print()
}

/// When each job's submission was published, by job id (ms since the epoch).
pub(crate) type Published = Arc<Mutex<HashMap<String, i64>>>;

/// Submissions of the jobs (id, flow text), each with the job it starts.
pub(crate) fn submissions(jobs: Vec<(String, String)>) -> Vec<(String, Event)> {
    let events = EventBuilder::new("ferry/loadtest");
    jobs.into_iter()
        .map(|(job_id, flow)| {
            let data = JobSubmitted {
                job_id: Some(job_id.clone()),
                flow: FlowSource::Text(flow),
                flow_name: None,
                inputs: Default::default(),
            };
            let e = events.job(kind::JOB_SUBMITTED, &job_id, &data);
            (job_id, e)
        })
        .collect()
}

/// Publishes the events, each starting the job given with it: every `1/rate` seconds, or all
/// at once without a rate, noting when each went out. A publish the bus refuses is retried for
/// a few seconds.
pub(crate) fn spawn_submitter(
    bus: Arc<dyn Bus>,
    jobs: Vec<(String, Event)>,
    rate: Option<f64>,
    published: Published,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let every = rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let t0 = tokio::time::Instant::now();
        for (i, (job_id, e)) in jobs.into_iter().enumerate() {
            if let Some(every) = every {
                tokio::time::sleep_until(t0 + every * i as u32).await;
            }
            published.lock().unwrap().insert(job_id, ferry_event::now_ms());
            let mut tries = 0;
            while let Err(err) = bus.publish(std::slice::from_ref(&e)).await {
                tries += 1;
                if tries > 50 {
                    bail!("publishing {} failed: {err}", e.ty());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    })
}

/// A one-task flow, its task with these fields ([`Runner::fields`]).
pub(crate) fn single_flow(fields: &str) -> String {
    format!("id: loadtest-single\ntasks:\n  - {{ id: t, {fields} }}\n")
}

/// The same flat fan-out through the local launcher and then through one agent with the same
/// capacity, `rounds` times, each on a fresh deployment; each run's report, then the agent's
/// throughput against the launcher's.
async fn agent_fanout(
    args: &Args,
    ferry: &std::path::Path,
    bus: &str,
    tasks: usize,
    rounds: usize,
) -> Result<()> {
    let shape = shape::Shape {
        kind: shape::Kind::Fanout,
        width: tasks,
        depth: 2,
    };
    let mut rates: Vec<(Runner, f64)> = Vec::new();
    for _ in 0..rounds {
        for runner in [Runner::Local, Runner::Agent] {
            println!(
                "ferry loadtest on {}: {} through the {}; services as processes; command {}; parallelism {}",
                bus.split('@').next_back().unwrap_or(bus),
                shape.label(),
                runner.name(),
                args.command,
                args.parallel
            );
            println!("  load average before   {}", loadavg());
            let plan = deployment::Plan {
                ferry: ferry.to_path_buf(),
                bus_url: bus.to_string(),
                parallel: args.parallel,
                command: args.command.clone(),
                rate: None,
                tasks: shape.tasks(),
                shape: Some(shape),
                triggered: false,
                runner,
            };
            let report = deployment::run(plan).await?;
            rates.push((runner, report.tasks as f64 / report.elapsed.as_secs_f64()));
            report.print()?;
            // The machine settles (the last run's processes, the broker's queues) before the next.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }
    let of = |which: Runner| -> Vec<String> {
        rates
            .iter()
            .filter(|(r, _)| *r == which)
            .map(|(_, t)| format!("{t:.0}"))
            .collect()
    };
    let sum = |which: Runner| -> f64 { rates.iter().filter(|(r, _)| *r == which).map(|(_, t)| t).sum() };
    println!(
        "throughput: local launcher {} tasks/s, agent {} tasks/s; agent/launcher {:.2} (mean over {rounds} rounds)",
        of(Runner::Local).join(", "),
        of(Runner::Agent).join(", "),
        sum(Runner::Agent) / sum(Runner::Local)
    );
    Ok(())
}

/// This process's user+system CPU time, and the system part of it.
fn cpu_time() -> (Duration, Duration) {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let us = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            (us(u.user_time()) + us(u.system_time()), us(u.system_time()))
        }
        Err(_) => (Duration::ZERO, Duration::ZERO),
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
