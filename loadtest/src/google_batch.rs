//! `google-batch`: ferry's google-batch launcher against the Google Batch test server
//! (`ferry-google-batch-test-server`, which runs each Batch job as a container on the Docker
//! engine `DOCKER_HOST` names), with many jobs in flight at once: what the launcher asks of the
//! Batch and Cloud Logging APIs per attempt, and what it costs.
//!
//! The launcher runtime and its google-batch backend run in this process on the in-memory bus,
//! fed `task.dispatched` events as the scheduler sends them; the test server runs in this
//! process too, on a tokio runtime of its own on threads of its own, and counts every request
//! it serves by collection and method. `N` jobs (`sleep S`, no files: nothing is staged) are
//! dispatched at once; once all run, the calls of a window of `--window` seconds give the
//! `jobs.list` calls per attempt in flight and minute (the poller's one listing per location
//! and interval) and the `entries.list` calls of jobs that write nothing. Also reported:
//! dispatch published → `task.accepted` (which the launcher runtime publishes once the backend's
//! `jobs.get` and `jobs.create` have returned and its journal holds the job), the other calls
//! per attempt over the run, every outcome, and this process's CPU per attempt with the test
//! server's threads' share taken out (the containers, run by dockerd, are not this process's).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{GoogleBatchRunner, Outcome, Runner, TaskDispatched, TaskFinished};
use ferry_event::template::Template;
use ferry_event::{AttributesReader, EventBuilder, Topic, envelope, kind};
use ferry_google_batch_test_server::{Counts, Options, TestServer};
use ferry_launcher_google_batch::google::{Auth, Endpoints, Google};
use ferry_launcher_google_batch::stage::Staging;
use tokio_util::sync::CancellationToken;

use crate::{cpu_time, loadavg};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub jobs: usize,
    /// How long each job sleeps.
    pub run_for: Duration,
    /// The window the calls are counted in, once every job runs.
    pub window: Duration,
    pub poll_interval: Duration,
    pub image: String,
    /// Jobs dispatched one at a time first, for the latency of a dispatch alone.
    pub samples: usize,
}

const GROUP: &str = "loadtest-google-batch";
const PROJECT: &str = "ferry-load";
const REGION: &str = "load-region1";

/// The prefix of the names of the test server's threads (its runtime's own and its blocking
/// pool's): their CPU is the server's share of this process's.
const SERVER_THREADS: &str = "gbts";

/// The test server on a current-thread tokio runtime of its own, on a thread of its own.
struct Server {
    server: Option<TestServer>,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    async fn start(options: Options) -> Result<Server> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{SERVER_THREADS}-server"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(format!("{SERVER_THREADS}-blocking"))
                    // Blocking threads that exit take their CPU time out of /proc: keep them.
                    .thread_keep_alive(Duration::from_secs(24 * 3600))
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = tx.send(Ok(runtime.handle().clone()));
                        let _ = runtime.block_on(stopped);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let runtime = rx
            .recv()
            .context("the test server's thread ended")?
            .context("the test server's runtime")?;
        let server = runtime
            .spawn(TestServer::start(options))
            .await?
            .context("start the Google Batch test server (is DOCKER_HOST's engine up?)")?;
        Ok(Server {
            server: Some(server),
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn get(&self) -> &TestServer {
        self.server.as_ref().expect("the server runs until shut down")
    }

    fn url(&self) -> String {
        self.get().url()
    }

    fn counts(&self) -> Counts {
        self.get().counts()
    }

    /// Stops the server (its containers removed), then its runtime and thread.
    async fn shutdown(mut self) -> Result<()> {
        if let Some(server) = self.server.take() {
            self.runtime.spawn(server.shutdown()).await?;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the test server's thread panicked"))?;
        }
        Ok(())
    }
}

/// User+system CPU time of this process's live threads whose name starts with `prefix`, from
/// `/proc/self/task/*/stat` (in clock ticks, 10 ms on Linux).
fn threads_cpu(prefix: &str) -> Duration {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut ticks = 0u64;
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `tid (comm) state ppid …`: the name may hold spaces and parentheses; the fields
        // after the last `)` do not. utime and stime are the 14th and 15th fields.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(11) + field(12);
    }
    Duration::from_secs_f64(ticks as f64 / tick)
}

fn count(counts: &Counts, collection: &str, method: &str) -> u64 {
    counts
        .get(&(collection.to_string(), method.to_string()))
        .copied()
        .unwrap_or(0)
}

/// `after` less `before`, by key.
fn since(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

pub async fn run(plan: Plan) -> Result<()> {
    ensure!(plan.jobs > 0, "--jobs must be at least 1");
    ensure!(
        !plan.poll_interval.is_zero(),
        "--poll-interval must be more than 0"
    );
    let docker = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    println!(
        "ferry loadtest google-batch: {} jobs of `sleep {}` ({}) on the Google Batch test server, containers on {docker}, poll interval {:?}",
        plan.jobs,
        plan.run_for.as_secs(),
        plan.image,
        plan.poll_interval
    );
    println!("  load average before   {}", loadavg());
    let server = Server::start(Options {
        stop_grace: Duration::from_secs(1),
        ..Options::default()
    })
    .await?;
    let result = measure(&plan, &server).await;
    server.shutdown().await?;
    result?;
    println!("  load average after    {}", loadavg());
    Ok(())
}

async fn measure(plan: &Plan, server: &Server) -> Result<()> {
    let url = server.url();
    let google = Google::new(
        Endpoints {
            batch: url.clone(),
            logging: url.clone(),
            // Nothing is staged: no call goes to Cloud Storage.
            storage: url.clone(),
            // The rest (Pub/Sub) is not called: the backend polls, with no notifications.
            ..Endpoints::default()
        },
        Auth::Anonymous,
    )
    .map_err(anyhow::Error::msg)?;

    let data = tempfile::tempdir()?;
    let bus = MemoryBus::new();
    let mut control = bus
        .subscribe(Subscribe::new("observer", [Topic::Control]).prefetch(8192))
        .await?;
    drop(
        bus.subscribe(Subscribe::new(
            GROUP,
            [Topic::Dispatch(ferry_launcher_google_batch::BACKEND.into())],
        ))
        .await?,
    );
    let mut service = ferry_launcher::Service::new(data.path(), GROUP);
    service.max_parallel = plan.jobs.max(plan.samples).max(1);
    service.secrets_file = None;
    let ferry_launcher::Prepared {
        runtime,
        journal,
        artifacts,
        ..
    } = service.prepare()?;
    let launcher = journal.identity().context("the launcher's identity")?;
    let staging =
        Staging::new(None, Vec::new(), artifacts, Default::default()).map_err(anyhow::Error::msg)?;
    let mut settings = ferry_launcher_google_batch::Settings::new(launcher, staging);
    settings.poll_interval = plan.poll_interval;
    let backend = ferry_launcher_google_batch::GoogleBatch::new(google, settings).kill_on_shutdown();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ferry_launcher::run(
        runtime,
        journal,
        Arc::new(backend),
        Arc::new(bus.clone()) as Arc<dyn Bus>,
        shutdown.clone(),
    ));
    let result = drive(plan, server, &bus, &mut control, &handle).await;
    shutdown.cancel();
    let stopped = handle.await;
    result?;
    stopped??;
    Ok(())
}

async fn drive(
    plan: &Plan,
    server: &Server,
    bus: &MemoryBus,
    control: &mut Subscription,
    handle: &tokio::task::JoinHandle<ferry_launcher::Result<()>>,
) -> Result<()> {
    let cancels = Topic::Cancel(ferry_launcher_google_batch::BACKEND.into());
    let deadline = Instant::now() + Duration::from_secs(30);
    while bus.groups_on(&cancels) == 0 {
        ensure!(
            Instant::now() < deadline,
            "the google-batch launcher did not start"
        );
        ensure!(
            !handle.is_finished(),
            "the google-batch launcher stopped before it started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let events = EventBuilder::new("ferry/scheduler/loadtest");
    let job = format!("gb{}", &ferry_event::new_id()[..8]);
    let runner = GoogleBatchRunner {
        image: plan.image.clone(),
        project: Some(PROJECT.into()),
        region: Some(REGION.into()),
        ..GoogleBatchRunner::default()
    };
    let tasks: Vec<TaskDispatched> = (0..plan.jobs)
        .map(|i| TaskDispatched {
            job_id: job.clone(),
            task_id: format!("t{i}"),
            attempt_id: format!("{job}-{i}"),
            attempt: 1,
            runner: Runner::GoogleBatch(runner.clone()),
            command: ["sleep".to_string(), plan.run_for.as_secs().to_string()]
                .iter()
                .map(|a| Template::text(a.as_str()))
                .collect(),
            env: BTreeMap::new(),
            input_files: BTreeMap::new(),
            output_files: Vec::new(),
            resources: Default::default(),
            timeout_ms: None,
            lease_ms: 120_000,
            ready_at_ms: ferry_event::now_ms(),
            flow_id: Some("loadtest".into()),
            namespace: None,
            priority: 0,
        })
        .collect();

    // One job first, to its end: the image is on the engine and everything runs.
    let warm = TaskDispatched {
        attempt_id: format!("{job}-warm"),
        task_id: "warm".into(),
        command: vec![Template::text("true")],
        ..tasks[0].clone()
    };
    let warmed = Instant::now();
    dispatch(bus, &events, &warm).await?;
    finished_ok(control, &warm.attempt_id).await?;
    println!(
        "  first job finished     {:.0} ms after its dispatch (`true`, poll interval {:?})",
        warmed.elapsed().as_secs_f64() * 1000.0,
        plan.poll_interval
    );

    // One at a time, so that nothing queues: dispatch published → task.accepted, which is
    // ferry's own work and the jobs.get (an earlier try's job?) and jobs.create it waits on.
    let mut alone = Vec::with_capacity(plan.samples);
    for i in 0..plan.samples {
        let d = TaskDispatched {
            attempt_id: format!("{job}-alone-{i}"),
            task_id: format!("alone-{i}"),
            command: vec![Template::text("true")],
            ..tasks[0].clone()
        };
        let at = Instant::now();
        dispatch(bus, &events, &d).await?;
        until(control, kind::TASK_ACCEPTED, &d.attempt_id).await?;
        alone.push(at.elapsed().as_secs_f64() * 1000.0);
        finished_ok(control, &d.attempt_id).await?;
    }
    alone.sort_by(f64::total_cmp);
    if !alone.is_empty() {
        println!(
            "  dispatch → accepted    p50 {:.1} ms, p90 {:.1} ms, one at a time ({} jobs)",
            quantile(&alone, 0.5),
            quantile(&alone, 0.9),
            alone.len()
        );
    }

    // The run proper: every count from here.
    let before = server.counts();
    let (cpu0, _) = cpu_time();
    let server_cpu0 = threads_cpu(SERVER_THREADS);
    let started = Instant::now();
    let mut published = HashMap::with_capacity(tasks.len());
    for d in &tasks {
        published.insert(d.attempt_id.clone(), Instant::now());
        dispatch(bus, &events, d).await?;
    }
    let mut accepted: Vec<f64> = Vec::with_capacity(tasks.len());
    let mut waiting: HashSet<String> = tasks.iter().map(|d| d.attempt_id.clone()).collect();
    while !waiting.is_empty() {
        let (ty, attempt, event) = next(control).await?;
        match ty.as_str() {
            kind::TASK_ACCEPTED => {
                if let Some(p) = published.get(&attempt) {
                    accepted.push(p.elapsed().as_secs_f64() * 1000.0);
                }
            }
            kind::TASK_STARTED => {
                waiting.remove(&attempt);
            }
            kind::TASK_FINISHED if waiting.contains(&attempt) => {
                bail!("{attempt} ended before every job ran (make --run-for longer): {event:?}");
            }
            _ => {}
        }
    }
    let all_running = started.elapsed();
    let window_before = server.counts();
    let window_started = Instant::now();
    tokio::time::sleep(plan.window).await;
    let window_counts = since(&server.counts(), &window_before);
    let window = window_started.elapsed();
    let window_end_ms = ferry_event::now_ms();

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut early = 0usize;
    let mut ids: HashSet<String> = tasks.iter().map(|d| d.attempt_id.clone()).collect();
    while !ids.is_empty() {
        let (ty, attempt, event) = next(control).await?;
        if ty == kind::TASK_FINISHED && ids.remove(&attempt) {
            let f: TaskFinished = ferry_event::decode(&event)?;
            if f.finished_at_ms < window_end_ms {
                early += 1;
            }
            *outcomes.entry(format!("{:?}", f.outcome)).or_default() += 1;
            ensure!(
                f.outcome == Outcome::Succeeded,
                "{attempt} did not succeed: {f:?}"
            );
        }
    }
    let elapsed = started.elapsed();
    let (cpu1, _) = cpu_time();
    let server_cpu = threads_cpu(SERVER_THREADS).saturating_sub(server_cpu0);
    // The last jobs' deletes are made before their task.finished: the run's counts are whole.
    let run_counts = since(&server.counts(), &before);

    accepted.sort_by(f64::total_cmp);
    let n = plan.jobs as f64;
    let minutes = window.as_secs_f64() / 60.0;
    println!(
        "  every job running after {:.1} s; all ended after {:.1} s; outcomes {}",
        all_running.as_secs_f64(),
        elapsed.as_secs_f64(),
        outcomes
            .iter()
            .map(|(o, c)| format!("{o} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let listed = count(&window_counts, "jobs", "list");
    println!(
        "  jobs.list              {listed} calls in {:.0} s with {} attempts in flight: {:.4} per attempt per minute",
        window.as_secs_f64(),
        plan.jobs,
        listed as f64 / n / minutes
    );
    for (collection, method) in [("jobs", "get"), ("entries", "list")] {
        let c = count(&window_counts, collection, method);
        println!(
            "  {:<22} {c} calls in the window: {:.3} per attempt per minute",
            format!("{collection}.{method}"),
            c as f64 / n / minutes
        );
    }
    println!(
        "  dispatch → accepted    p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, {} jobs dispatched at once",
        quantile(&accepted, 0.5),
        quantile(&accepted, 0.9),
        accepted.last().copied().unwrap_or(f64::NAN),
        accepted.len()
    );
    println!("  over the run ({:.1} s):", elapsed.as_secs_f64());
    for ((collection, method), c) in &run_counts {
        println!(
            "    {:<20} {c} calls, {:.2} per attempt",
            format!("{collection}.{method}"),
            *c as f64 / n
        );
    }
    let total = cpu1.saturating_sub(cpu0);
    let ferry = total.saturating_sub(server_cpu);
    println!(
        "  ferry CPU              {:.2} ms per attempt ({:.2} s user+sys over the run: this process's {:.2} s less the test server's threads' {:.2} s; containers excluded)",
        ferry.as_secs_f64() * 1000.0 / n,
        ferry.as_secs_f64(),
        total.as_secs_f64(),
        server_cpu.as_secs_f64()
    );
    println!(
        "  test server CPU        {:.2} ms per attempt (its threads, in this process)",
        server_cpu.as_secs_f64() * 1000.0 / n
    );
    ensure!(
        early == 0,
        "{early} jobs ended before the end of the {} s window, which counted fewer attempts in flight than \
         it says: make --run-for longer",
        plan.window.as_secs()
    );
    Ok(())
}

/// Publishes `d`'s `task.dispatched` as the scheduler does.
async fn dispatch(bus: &MemoryBus, events: &EventBuilder, d: &TaskDispatched) -> Result<()> {
    let e = events.dispatch(
        kind::TASK_DISPATCHED,
        &d.job_id,
        &d.task_id,
        &d.attempt_id,
        ferry_launcher_google_batch::BACKEND,
        d,
    );
    bus.publish(&[e]).await?;
    Ok(())
}

/// Waits for `attempt` to finish, and fails unless it succeeded.
async fn finished_ok(control: &mut Subscription, attempt: &str) -> Result<()> {
    loop {
        let (t, a, event) = next(control).await?;
        if t == kind::TASK_FINISHED && a == attempt {
            let f: TaskFinished = ferry_event::decode(&event)?;
            if f.outcome != Outcome::Succeeded {
                bail!(
                    "{attempt} did not succeed (is the image on the engine? --image, FERRY_TEST_DOCKER_IMAGE): {f:?}"
                );
            }
            return Ok(());
        }
    }
}

/// Waits for the control event `ty` of `attempt`.
async fn until(control: &mut Subscription, ty: &str, attempt: &str) -> Result<()> {
    loop {
        let (t, a, event) = next(control).await?;
        if t == ty && a == attempt {
            return Ok(());
        }
        if t == kind::TASK_FINISHED && a == attempt {
            bail!("{attempt} finished before {ty}: {event:?}");
        }
    }
}

/// The next control event: its type, attempt id and the event.
async fn next(control: &mut Subscription) -> Result<(String, String, ferry_event::Event)> {
    let d = tokio::time::timeout(Duration::from_secs(600), control.next())
        .await
        .context("no event from the launcher for 10 minutes")?
        .context("the bus closed")??;
    let event = d.event.clone();
    d.ack().await?;
    let attempt = envelope::extension(&event, envelope::EXT_ATTEMPT).unwrap_or_default();
    Ok((event.ty().to_string(), attempt, event))
}
