//! How long the api's read model takes to record a planned 100,000-task job: from the
//! `job.planned` published on the embedded bus to the job, with all its tasks, committed.
//!
//! `cargo bench -p ferry-api --bench plan_read_model` (TASKS and RUNS in the environment change
//! the job's size and the number of runs). Each run starts the api service on a fresh SQLite
//! database, so that every run inserts into empty tables.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_bus::{Bus, MemoryBus, Subscribe};
use ferry_event::payload::{JobPlanned, PlannedTask};
use ferry_event::{EventBuilder, Topic, kind};
use ferry_runtime::CancellationToken;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn job(tasks: usize) -> JobPlanned {
    let tasks = (0..tasks)
        .map(|i| {
            serde_json::from_value::<PlannedTask>(serde_json::json!({
                "id": format!("t{i}"), "runner": {"type": "local"}, "command": ["true"]
            }))
            .expect("a valid task")
        })
        .collect();
    JobPlanned {
        job_id: "bench".into(),
        flow_id: "bench".into(),
        namespace: None,
        concurrency: None,
        inputs: Default::default(),
        tasks,
    }
}

/// One run: the time from publishing the planned job to finding it committed.
async fn run(planned: &JobPlanned) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db_url = format!("sqlite://{}", dir.path().join("api.db").display());
    let logs_url = format!("sqlite://{}", dir.path().join("logs.db").display());
    let bus = MemoryBus::new();
    let mut config = ferry_api::Config::new(db_url.clone(), logs_url);
    config.follow_poll = Duration::from_secs(60);
    // Keep what is published for the read model until it subscribes.
    bus.declare(&Subscribe::new(
        config.group.clone(),
        [Topic::Control, Topic::Lifecycle],
    ))
    .await
    .expect("declaring the api's group");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let stop = CancellationToken::new();
    let bus_dyn: Arc<dyn Bus> = Arc::new(bus.clone());
    let api = tokio::spawn(ferry_api::serve(config, bus_dyn, listener, stop.clone()));
    let reader = ferry_api::ReadModel::open(&db_url)
        .await
        .expect("opening the read model to watch it");
    let event = EventBuilder::new("ferry/bench").job(kind::JOB_PLANNED, "bench", planned);
    let start = Instant::now();
    bus.publish(&[event]).await.expect("publishing");
    // The job's row is written in the transaction that writes its tasks.
    while !reader.job_exists("bench").await.expect("reading the read model") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed();
    let job = reader.job("bench").await.unwrap().expect("the job");
    assert_eq!(job.state, "planned");
    assert_eq!(
        job.counts.get("pending").copied(),
        Some(planned.tasks.len() as u64)
    );
    stop.cancel();
    api.await.expect("the api task").expect("the api service");
    reader.close().await;
    took
}

fn main() {
    let tasks = env("TASKS", 100_000);
    let runs = env("RUNS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let planned = job(tasks);
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = rt.block_on(run(&planned));
        println!(
            "run {}: {tasks} tasks planned into the read model in {:.3} s",
            i + 1,
            t.as_secs_f64()
        );
        times.push(t);
    }
    times.sort();
    println!(
        "{tasks} tasks, {runs} runs: median {:.3} s, fastest {:.3} s, slowest {:.3} s",
        times[runs / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[runs - 1].as_secs_f64()
    );
}
