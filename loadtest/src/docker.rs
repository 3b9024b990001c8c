//! `docker`: ferry's docker launcher against the Docker engine's own client, side by side on one
//! engine in one run.
//!
//! - **Throughput**: `N` no-op containers (`true` in the image) through ferry's docker launcher
//!   (the launcher runtime and its docker backend, in this process on the in-memory bus, fed
//!   `task.dispatched` events as the scheduler sends them), against a plain shell loop running
//!   `docker run --rm` at the same parallelism (`xargs -P`).
//! - **Latency**: containers one at a time, so that nothing queues: `task.dispatched` published
//!   → `task.started` received, against the engine's own create + start (the two API calls
//!   alone, timed here the same way). The difference is what ferry adds.
//! - **CPU**: this process's user + system time over the throughput run, per container: the
//!   launcher, the bus and the little the observer does. The engine's and the containers' CPU
//!   are not counted.
//! - **Memory**: the launcher following `M` running containers (`sleep`), all started: this
//!   process's resident memory then.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{
    ImageRunner, Outcome, PullPolicy, Runner, TaskCancel, TaskDispatched, TaskFinished,
};
use ferry_event::template::Template;
use ferry_event::{AttributesReader, EventBuilder, Topic, envelope, kind};
use tokio_util::sync::CancellationToken;

use crate::{cpu_time, loadavg};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub image: String,
    pub containers: usize,
    pub parallel: usize,
    /// Containers timed one at a time.
    pub samples: usize,
    /// Containers the launcher follows at once for the memory figure (0: skip).
    pub follow: usize,
}

const GROUP: &str = "loadtest-docker";

pub async fn run(plan: Plan) -> Result<()> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| ferry_launcher_docker::DEFAULT_HOST.into());
    let engine = bollard::Docker::connect_with_host(&host)
        .with_context(|| format!("no Docker engine at {host}"))?
        .negotiate_version()
        .await
        .with_context(|| format!("the Docker engine at {host} does not answer"))?;
    engine
        .inspect_image(&plan.image)
        .await
        .with_context(|| format!("the image {} is not on the engine at {host}", plan.image))?;
    println!(
        "ferry loadtest docker: {} no-op containers of {} at parallelism {}, on {host}",
        plan.containers, plan.image, plan.parallel
    );
    println!("  load average before   {}", loadavg());

    if plan.containers > 0 {
        // The engine's own client first, then ferry, on the engine the loop warmed.
        let shell = shell_loop(&plan).await?;
        let mut launcher = Launcher::start(&plan).await?;
        let ferry = launcher.throughput(&plan).await?;
        launcher.stop().await?;
        let rate = |d: Duration| plan.containers as f64 / d.as_secs_f64();
        println!(
            "  docker run loop       {:.2} s, {:.1} containers/s",
            shell.as_secs_f64(),
            rate(shell)
        );
        println!(
            "  ferry                 {:.2} s, {:.1} containers/s ({:.2}x the loop)",
            ferry.elapsed.as_secs_f64(),
            rate(ferry.elapsed),
            shell.as_secs_f64() / ferry.elapsed.as_secs_f64()
        );
        println!(
            "  ferry CPU             {:.3} ms/container ({:.2} s user+sys, of which system {:.2} s; engine and containers excluded)",
            ferry.cpu.as_secs_f64() * 1000.0 / plan.containers as f64,
            ferry.cpu.as_secs_f64(),
            ferry.sys.as_secs_f64()
        );
        println!("  load average after    {}", loadavg());
    }

    if plan.samples > 0 {
        // One at a time, the three interleaved so that they see the same engine: a minimal
        // container, the container ferry makes (its init, labels, log driver, working
        // directory and outputs volume), and ferry's dispatch of a no-op.
        let mut launcher = Launcher::start(&plan).await?;
        let (mut minimal, mut same, mut ferry) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..plan.samples {
            minimal.push(engine_create_start(&engine, &plan.image, i, false).await?);
            same.push(engine_create_start(&engine, &plan.image, i, true).await?);
            ferry.push(launcher.latency_once(i).await?);
        }
        launcher.stop().await?;
        for v in [&mut minimal, &mut same, &mut ferry] {
            v.sort_by(f64::total_cmp);
        }
        let p = |v: &[f64], q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        let show = |what: &str, v: &[f64]| {
            println!("  {what:<40} p50 {:.1} ms, p90 {:.1} ms", p(v, 0.5), p(v, 0.9));
        };
        show("engine create+start, minimal container", &minimal);
        show("engine create+start, ferry's container", &same);
        show("ferry task.dispatched → task.started", &ferry);
        println!(
            "  ferry adds            {:.1} ms at p50 over the engine's create+start of the same container ({} samples, one at a time)",
            p(&ferry, 0.5) - p(&same, 0.5),
            plan.samples
        );
    }

    if plan.follow > 0 {
        let mut launcher = Launcher::start(&Plan {
            parallel: plan.follow,
            ..plan.clone()
        })
        .await?;
        launcher.follow_many(&plan).await?;
        launcher.stop().await?;
    }
    Ok(())
}

/// `seq N | xargs -P P docker run --rm IMAGE true`: how long it took.
async fn shell_loop(plan: &Plan) -> Result<Duration> {
    let script = format!(
        "seq 1 {n} | xargs -P {p} -I{{}} docker run --rm --network none {image} true",
        n = plan.containers,
        p = plan.parallel,
        image = plan.image
    );
    println!("  shell loop: sh -c '{script}'");
    let started = Instant::now();
    let status = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .status()
        .await
        .context("running the shell loop")?;
    ensure!(status.success(), "the shell loop failed: {status}");
    Ok(started.elapsed())
}

/// The engine's own create + start of a no-op container, in ms: a minimal one, or one made as
/// ferry makes its containers (`as_ferry`). The two API calls alone.
async fn engine_create_start(engine: &bollard::Docker, image: &str, i: usize, as_ferry: bool) -> Result<f64> {
    let name = format!("ferry-loadtest-{}-{i}-{as_ferry}", std::process::id());
    let mut body = bollard::models::ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["true".into()]),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    if as_ferry {
        body.working_dir = Some("/ferry".into());
        body.volumes = Some(vec!["/ferry-outputs".into()]);
        body.labels = Some(
            [
                ("dev.ferry.job", "loadtest"),
                ("dev.ferry.attempt-id", name.as_str()),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        );
        if let Some(h) = body.host_config.as_mut() {
            h.init = Some(true);
            h.log_config = Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(Default::default()),
            });
        }
    }
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let at = Instant::now();
    engine.create_container(Some(options), body).await?;
    engine.start_container(&name, None).await?;
    let ms = at.elapsed().as_secs_f64() * 1000.0;
    let remove = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    engine.remove_container(&name, Some(remove)).await?;
    Ok(ms)
}

/// What the throughput run measured.
struct Run {
    elapsed: Duration,
    cpu: Duration,
    sys: Duration,
}

/// ferry's docker launcher in this process on an in-memory bus, and an observer of what it
/// publishes.
struct Launcher {
    bus: MemoryBus,
    control: Subscription,
    events: EventBuilder,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<ferry_launcher::Result<()>>,
    _data: tempfile::TempDir,
    image: String,
}

impl Launcher {
    async fn start(plan: &Plan) -> Result<Launcher> {
        let data = tempfile::tempdir()?;
        let bus = MemoryBus::new();
        let control = bus
            .subscribe(Subscribe::new("observer", [Topic::Control]).prefetch(8192))
            .await?;
        // Task logs are not looked at: a consumer group drops them as they come.
        let mut logs = bus
            .subscribe(Subscribe::new("logs", [Topic::Logs]).prefetch(8192))
            .await?;
        tokio::spawn(async move {
            while let Some(Ok(d)) = logs.next().await {
                let _ = d.ack().await;
            }
        });
        drop(
            bus.subscribe(Subscribe::new(GROUP, [Topic::Dispatch("docker".into())]))
                .await?,
        );
        let mut config = ferry_launcher_docker::Config::new(data.path());
        config.service.max_parallel = plan.parallel;
        config.service.kill_grace = Duration::from_secs(1);
        config.service.group = GROUP.into();
        config.detach = false;
        config.service.secrets_file = None;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ferry_launcher_docker::run(
            config,
            Arc::new(bus.clone()) as Arc<dyn Bus>,
            shutdown.clone(),
        ));
        let cancels = Topic::Cancel("docker".into());
        let deadline = Instant::now() + Duration::from_secs(30);
        while bus.groups_on(&cancels) == 0 {
            ensure!(Instant::now() < deadline, "the docker launcher did not start");
            if handle.is_finished() {
                bail!("the docker launcher stopped: {:?}", handle.await);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Launcher {
            bus,
            control,
            events: EventBuilder::new("ferry/scheduler/loadtest"),
            shutdown,
            handle,
            _data: data,
            image: plan.image.clone(),
        })
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }

    fn dispatch(&self, job: &str, i: usize, argv: &[&str]) -> TaskDispatched {
        let mut runner = ImageRunner::new(self.image.clone());
        runner.pull_policy = Some(PullPolicy::Never);
        runner.network = Some("none".into());
        TaskDispatched {
            job_id: job.into(),
            task_id: format!("t{i}"),
            attempt_id: format!("{job}-{i}"),
            attempt: 1,
            runner: Runner::Docker(runner),
            command: argv.iter().map(|a| Template::text(*a)).collect(),
            env: BTreeMap::new(),
            input_files: BTreeMap::new(),
            output_files: Vec::new(),
            resources: Default::default(),
            timeout_ms: None,
            lease_ms: 60_000,
            ready_at_ms: ferry_event::now_ms(),
            flow_id: Some("loadtest".into()),
            namespace: None,
            priority: 0,
        }
    }

    async fn publish(&self, ty: &str, d: &TaskDispatched, payload: &impl serde::Serialize) -> Result<()> {
        let e = self
            .events
            .dispatch(ty, &d.job_id, &d.task_id, &d.attempt_id, "docker", payload);
        self.bus.publish(&[e]).await?;
        Ok(())
    }

    /// The next control event: its type, attempt id and the event.
    async fn next(&mut self) -> Result<(String, String, ferry_event::Event)> {
        let d = tokio::time::timeout(Duration::from_secs(300), self.control.next())
            .await
            .context("no event from the launcher for 5 minutes")?
            .context("the bus closed")??;
        let event = d.event.clone();
        d.ack().await?;
        let attempt = envelope::extension(&event, envelope::EXT_ATTEMPT).unwrap_or_default();
        Ok((event.ty().to_string(), attempt, event))
    }

    /// Waits for the report of each of `ids`; fails on one that did not succeed.
    async fn until_finished(&mut self, ids: &mut HashSet<String>) -> Result<()> {
        while !ids.is_empty() {
            let (ty, attempt, event) = self.next().await?;
            if ty == kind::TASK_FINISHED && ids.remove(&attempt) {
                let f: TaskFinished = ferry_event::decode(&event)?;
                ensure!(
                    f.outcome == Outcome::Succeeded,
                    "{attempt} did not succeed: {f:?}"
                );
            }
        }
        Ok(())
    }

    async fn throughput(&mut self, plan: &Plan) -> Result<Run> {
        let job = format!("tp{}", &ferry_event::new_id()[..8]);
        let tasks: Vec<TaskDispatched> = (0..plan.containers)
            .map(|i| self.dispatch(&job, i, &["true"]))
            .collect();
        let mut ids: HashSet<String> = tasks.iter().map(|d| d.attempt_id.clone()).collect();
        let (cpu0, sys0) = cpu_time();
        let started = Instant::now();
        for d in &tasks {
            self.publish(kind::TASK_DISPATCHED, d, d).await?;
        }
        self.until_finished(&mut ids).await?;
        let elapsed = started.elapsed();
        let (cpu1, sys1) = cpu_time();
        Ok(Run {
            elapsed,
            cpu: cpu1 - cpu0,
            sys: sys1 - sys0,
        })
    }

    /// task.dispatched published → task.started received of one no-op container, in ms; then
    /// waits for its report.
    async fn latency_once(&mut self, i: usize) -> Result<f64> {
        let job = format!("lat{}", std::process::id());
        let d = self.dispatch(&job, i, &["true"]);
        let at = Instant::now();
        self.publish(kind::TASK_DISPATCHED, &d, &d).await?;
        let ms = loop {
            let (ty, attempt, _) = self.next().await?;
            if ty == kind::TASK_STARTED && attempt == d.attempt_id {
                break at.elapsed().as_secs_f64() * 1000.0;
            }
        };
        self.until_finished(&mut HashSet::from([d.attempt_id.clone()]))
            .await?;
        Ok(ms)
    }

    /// Starts `plan.follow` long-running containers, reports this process's memory once all
    /// run, then cancels them.
    async fn follow_many(&mut self, plan: &Plan) -> Result<()> {
        let job = format!("fl{}", &ferry_event::new_id()[..8]);
        let tasks: Vec<TaskDispatched> = (0..plan.follow)
            .map(|i| self.dispatch(&job, i, &["sleep", "3600"]))
            .collect();
        let rss_before = rss_kib();
        let started = Instant::now();
        for d in &tasks {
            self.publish(kind::TASK_DISPATCHED, d, d).await?;
        }
        let mut waiting: HashSet<String> = tasks.iter().map(|d| d.attempt_id.clone()).collect();
        while !waiting.is_empty() {
            let (ty, attempt, event) = self.next().await?;
            match ty.as_str() {
                kind::TASK_STARTED => {
                    waiting.remove(&attempt);
                }
                kind::TASK_FINISHED if waiting.contains(&attempt) => {
                    bail!("{attempt} ended before all had started: {event:?}");
                }
                _ => {}
            }
        }
        let all_started = started.elapsed();
        // A few heartbeat periods with every container running and followed.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let rss = rss_kib();
        println!(
            "  following {} running containers: {:.1} MiB resident (VmRSS; {:.1} MiB before they started; all started in {:.1} s)",
            plan.follow,
            rss as f64 / 1024.0,
            rss_before as f64 / 1024.0,
            all_started.as_secs_f64()
        );
        let mut ids = HashSet::new();
        for d in &tasks {
            let c = TaskCancel {
                job_id: d.job_id.clone(),
                task_id: d.task_id.clone(),
                attempt_id: d.attempt_id.clone(),
                reason: Some("the load test is over".into()),
            };
            self.publish(kind::TASK_CANCEL, d, &c).await?;
            ids.insert(d.attempt_id.clone());
        }
        while !ids.is_empty() {
            let (ty, attempt, _) = self.next().await?;
            if ty == kind::TASK_FINISHED {
                ids.remove(&attempt);
            }
        }
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
