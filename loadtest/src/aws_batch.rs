//! `aws-batch`: ferry's aws-batch launcher against moto (a local server of the AWS APIs that
//! runs each Batch job as a container on the Docker engine in its environment), with many jobs
//! in flight at once: what the launcher asks of the Batch API per attempt, and what it costs.
//!
//! The launcher runtime and its aws-batch backend run in this process on the in-memory bus, fed
//! `task.dispatched` events as the scheduler sends them; every HTTP request the backend makes is
//! counted by operation on its way to moto. `N` jobs (`sleep S` on EC2, sized 1 vCPU and 2 GiB)
//! are dispatched at once; once all run, the DescribeJobs calls of a window of
//! `--window` seconds give the calls per attempt in flight and minute. Also reported: dispatch
//! published → SubmitJob sent (p50, p90), job definitions registered, the other calls per
//! attempt, and this process's CPU per attempt (moto's and the containers' excluded).
//!
//! moto must have the Docker engine (`DOCKER_HOST`) and `MOTO_DOCKER_NETWORK_MODE=host` in its
//! environment, as `scripts/services.sh`'s `moto_up` starts it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_batch::config::{HttpClient, RuntimeComponents, SharedHttpClient};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{AwsBatchPlatform, AwsBatchRunner, Outcome, Runner, TaskDispatched, TaskFinished};
use ferry_event::template::Template;
use ferry_event::{AttributesReader, EventBuilder, Topic, envelope, kind};
use tokio_util::sync::CancellationToken;

use crate::{cpu_time, loadavg};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// moto's URL.
    pub endpoint: String,
    pub jobs: usize,
    /// How long each job sleeps.
    pub run_for: Duration,
    /// The window DescribeJobs calls are counted in, once every job runs.
    pub window: Duration,
    pub poll_interval: Duration,
    pub image: String,
    /// Jobs dispatched one at a time first, for the latency of a dispatch alone.
    pub samples: usize,
}

const GROUP: &str = "loadtest-aws-batch";
const REGION: &str = "us-east-1";

/// The requests made, by operation, and when each SubmitJob left, by job name.
#[derive(Debug, Default)]
struct Calls {
    by_operation: HashMap<String, u64>,
    submitted: HashMap<String, Instant>,
}

#[derive(Debug, Clone)]
struct Counting {
    inner: SharedHttpClient,
    calls: Arc<Mutex<Calls>>,
}

impl HttpClient for Counting {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(CountingConnector {
            inner: self.inner.http_connector(settings, components),
            calls: self.calls.clone(),
        })
    }
}

#[derive(Debug)]
struct CountingConnector {
    inner: SharedHttpConnector,
    calls: Arc<Mutex<Calls>>,
}

impl HttpConnector for CountingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        // Batch's REST paths name the operation (`/v1/describejobs`); the other services'
        // JSON protocols name it in `X-Amz-Target`.
        let operation = request
            .headers()
            .get("x-amz-target")
            .map(str::to_string)
            .unwrap_or_else(|| request.uri().rsplit('/').next().unwrap_or("").to_string());
        {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            *calls.by_operation.entry(operation.clone()).or_default() += 1;
            if operation == "submitjob"
                && let Some(body) = request.body().bytes()
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
                && let Some(name) = v["jobName"].as_str()
            {
                calls.submitted.insert(name.to_string(), Instant::now());
            }
        }
        self.inner.call(request)
    }
}

pub async fn run(plan: Plan) -> Result<()> {
    println!(
        "ferry loadtest aws-batch: {} jobs of `sleep {}` on moto at {}, poll interval {:?}",
        plan.jobs,
        plan.run_for.as_secs(),
        plan.endpoint,
        plan.poll_interval
    );
    println!("  load average before   {}", loadavg());
    let calls = Arc::new(Mutex::new(Calls::default()));
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(&plan.endpoint)
        .credentials_provider(aws_sdk_batch::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "ferry-loadtest",
        ))
        .load()
        .await;
    // The client the SDK makes by default (rustls on aws-lc-rs), wrapped.
    let inner = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .build_https();
    let sdk = base
        .to_builder()
        .http_client(SharedHttpClient::new(Counting {
            inner,
            calls: calls.clone(),
        }))
        .build();
    let compute_environment = compute_environment(&plan.endpoint, &aws_sdk_batch::Client::new(&base)).await?;

    let data = tempfile::tempdir()?;
    let bus = MemoryBus::new();
    let mut control = bus
        .subscribe(Subscribe::new("observer", [Topic::Control]).prefetch(8192))
        .await?;
    drop(
        bus.subscribe(Subscribe::new(GROUP, [Topic::Dispatch("aws-batch".into())]))
            .await?,
    );
    let mut service = ferry_launcher::Service::new(data.path(), GROUP);
    service.max_parallel = plan.jobs;
    service.secrets_file = None;
    let ferry_launcher::Prepared { runtime, journal, .. } = service.prepare()?;
    let launcher = journal.identity().context("the launcher's identity")?;
    let mut settings = ferry_launcher_aws_batch::Settings::new(launcher);
    settings.poll_interval = plan.poll_interval;
    settings.compute_environment = Some(compute_environment.clone());
    let backend = ferry_launcher_aws_batch::AwsBatch::new(&sdk, settings).kill_on_shutdown();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ferry_launcher::run(
        runtime,
        journal,
        Arc::new(backend),
        Arc::new(bus.clone()) as Arc<dyn Bus>,
        shutdown.clone(),
    ));
    let cancels = Topic::Cancel("aws-batch".into());
    let deadline = Instant::now() + Duration::from_secs(30);
    while bus.groups_on(&cancels) == 0 {
        ensure!(Instant::now() < deadline, "the aws-batch launcher did not start");
        if handle.is_finished() {
            bail!("the aws-batch launcher stopped: {:?}", handle.await);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let events = EventBuilder::new("ferry/scheduler/loadtest");
    let job = format!("ab{}", &ferry_event::new_id()[..8]);
    let runner = AwsBatchRunner {
        image: plan.image.clone(),
        compute_environment: Some(compute_environment),
        platform: Some(AwsBatchPlatform::Ec2),
        ..AwsBatchRunner::default()
    };
    let tasks: Vec<TaskDispatched> = (0..plan.jobs)
        .map(|i| TaskDispatched {
            job_id: job.clone(),
            task_id: format!("t{i}"),
            attempt_id: format!("{job}-{i}"),
            attempt: 1,
            runner: Runner::AwsBatch(runner.clone()),
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
    // One job first, so that the queue and the job definition ferry makes on first use are
    // there: what follows is the steady state.
    let warm = TaskDispatched {
        attempt_id: format!("{job}-warm"),
        task_id: "warm".into(),
        command: vec![Template::text("true")],
        ..tasks[0].clone()
    };
    let warmed = Instant::now();
    dispatch(&bus, &events, &warm).await?;
    until(&mut control, kind::TASK_STARTED, &warm.attempt_id).await?;
    println!(
        "  first job started      {:.0} ms after its dispatch (the job queue made and the definition registered)",
        warmed.elapsed().as_secs_f64() * 1000.0
    );
    // One at a time, so that nothing queues (moto answers one request at a time): dispatch
    // published → SubmitJob sent, which is ferry's own work and the ListJobs that looks for an
    // earlier try's job first.
    let mut alone = Vec::with_capacity(plan.samples);
    for i in 0..plan.samples {
        let d = TaskDispatched {
            attempt_id: format!("{job}-alone-{i}"),
            task_id: format!("alone-{i}"),
            command: vec![Template::text("true")],
            ..tasks[0].clone()
        };
        let name = ferry_launcher_aws_batch::names::job_name(&d.attempt_id);
        let at = Instant::now();
        dispatch(&bus, &events, &d).await?;
        let sent = loop {
            if let Some(sent) = calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .submitted
                .get(&name)
            {
                break *sent;
            }
            ensure!(
                at.elapsed() < Duration::from_secs(60),
                "{name} was not submitted within a minute"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        alone.push(sent.duration_since(at).as_secs_f64() * 1000.0);
        until(&mut control, kind::TASK_FINISHED, &d.attempt_id).await?;
    }
    alone.sort_by(f64::total_cmp);
    if !alone.is_empty() {
        let q = |v: &[f64], q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "  dispatch → SubmitJob   p50 {:.1} ms, p90 {:.1} ms, one at a time ({} jobs)",
            q(&alone, 0.5),
            q(&alone, 0.9),
            alone.len()
        );
    }
    calls.lock().unwrap_or_else(|e| e.into_inner()).submitted.clear();

    let (cpu0, _) = cpu_time();
    let started = Instant::now();
    let mut published = HashMap::with_capacity(tasks.len());
    for d in &tasks {
        published.insert(
            ferry_launcher_aws_batch::names::job_name(&d.attempt_id),
            Instant::now(),
        );
        dispatch(&bus, &events, d).await?;
    }
    let mut waiting: HashSet<String> = tasks.iter().map(|d| d.attempt_id.clone()).collect();
    while !waiting.is_empty() {
        let (ty, attempt, event) = next(&mut control).await?;
        match ty.as_str() {
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
    let count = |op: &str| {
        calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_operation
            .get(op)
            .copied()
            .unwrap_or(0)
    };
    let described_before = count("describejobs");
    let window_started = Instant::now();
    tokio::time::sleep(plan.window).await;
    let described = count("describejobs") - described_before;
    let window = window_started.elapsed();

    let mut ids: HashSet<String> = tasks.iter().map(|d| d.attempt_id.clone()).collect();
    while !ids.is_empty() {
        let (ty, attempt, event) = next(&mut control).await?;
        if ty == kind::TASK_FINISHED && ids.remove(&attempt) {
            let f: TaskFinished = ferry_event::decode(&event)?;
            ensure!(
                f.outcome == Outcome::Succeeded,
                "{attempt} did not succeed: {f:?}"
            );
        }
    }
    let elapsed = started.elapsed();
    let (cpu1, _) = cpu_time();
    shutdown.cancel();
    handle.await??;

    let calls = calls.lock().unwrap_or_else(|e| e.into_inner());
    let mut latencies: Vec<f64> = calls
        .submitted
        .iter()
        .filter_map(|(name, at)| {
            published
                .get(name)
                .map(|p| at.duration_since(*p).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let n = plan.jobs as f64;
    println!(
        "  every job running after {:.1} s; all ended after {:.1} s",
        all_running.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  DescribeJobs           {described} calls in {:.0} s with {} attempts in flight: {:.3} per attempt per minute",
        window.as_secs_f64(),
        plan.jobs,
        described as f64 / n / (window.as_secs_f64() / 60.0)
    );
    println!(
        "  dispatch → SubmitJob   p50 {:.1} ms, p90 {:.1} ms, {} jobs dispatched at once",
        p(0.5),
        p(0.9),
        latencies.len()
    );
    let mut ops: Vec<(&String, &u64)> = calls.by_operation.iter().collect();
    ops.sort();
    for (op, c) in ops {
        println!("  {op:<22} {c} calls, {:.2} per attempt", *c as f64 / n);
    }
    println!(
        "  ferry CPU              {:.2} ms per attempt ({:.2} s user+sys over the run; moto and the containers excluded)",
        (cpu1 - cpu0).as_secs_f64() * 1000.0 / n,
        (cpu1 - cpu0).as_secs_f64()
    );
    println!("  load average after    {}", loadavg());
    Ok(())
}

/// Publishes `d`'s `task.dispatched` as the scheduler does.
async fn dispatch(bus: &MemoryBus, events: &EventBuilder, d: &TaskDispatched) -> Result<()> {
    let e = events.dispatch(
        kind::TASK_DISPATCHED,
        &d.job_id,
        &d.task_id,
        &d.attempt_id,
        "aws-batch",
        d,
    );
    bus.publish(&[e]).await?;
    Ok(())
}

/// Waits for the control event `ty` of `attempt`.
async fn until(control: &mut Subscription, ty: &str, attempt: &str) -> Result<()> {
    loop {
        let (t, a, _) = next(control).await?;
        if t == ty && a == attempt {
            return Ok(());
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

/// An unmanaged compute environment of this run's own, with the service role moto asks for
/// (made with one IAM call written by hand: moto checks no signature).
async fn compute_environment(endpoint: &str, batch: &aws_sdk_batch::Client) -> Result<String> {
    let name = format!("loadtest-{}", &ferry_event::new_id()[..8]);
    let role = format!("{name}-service");
    let body =
        format!("Action=CreateRole&Version=2010-05-08&RoleName={role}&AssumeRolePolicyDocument=%7B%7D");
    let answer = reqwest::Client::new()
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/iam/aws4_request, SignedHeaders=host, Signature=0"
            ),
        )
        .body(body)
        .send()
        .await
        .context("CreateRole on moto")?
        .text()
        .await?;
    let arn = answer
        .split("<Arn>")
        .nth(1)
        .and_then(|s| s.split("</Arn>").next())
        .with_context(|| format!("moto did not create role {role}: {answer}"))?
        .to_string();
    batch
        .create_compute_environment()
        .compute_environment_name(&name)
        .r#type(aws_sdk_batch::types::CeType::Unmanaged)
        .state(aws_sdk_batch::types::CeState::Enabled)
        .service_role(arn)
        .send()
        .await
        .context("create a compute environment on moto")?;
    Ok(name)
}
