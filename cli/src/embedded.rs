//! The whole system in one process: the in-memory bus, the planner, the scheduler on SQLite,
//! the local launcher and the log collector, all under one shutdown token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use ferry_bus::{Bus, MemoryBus};
use ferry_event::Topic;
use ferry_log_collector::LogStore;

use crate::services::{Running, Service, Settings};

/// Settings of the embedded system.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds `scheduler.db`, `logs.db`, the launcher's `journal` and `slots/`, and `artifacts/`.
    pub data_dir: PathBuf,
    /// Grace between SIGTERM and SIGKILL when a task is stopped.
    pub kill_grace: Duration,
    /// Attempts running at once.
    pub max_parallel: usize,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Options {
            data_dir: data_dir.into(),
            kill_grace: Duration::from_secs(5),
            max_parallel: 64,
        }
    }
}

/// A running embedded system.
pub struct Embedded {
    pub bus: MemoryBus,
    pub logs: LogStore,
    pub data_dir: PathBuf,
    running: Running,
}

const SERVICES: [Service; 4] = [
    Service::Planner,
    Service::Scheduler,
    Service::Launcher,
    Service::LogCollector,
];

impl Embedded {
    /// Starts every service and waits until each one's queue is bound, so that what is
    /// published next reaches them.
    pub async fn start(opts: &Options) -> Result<Embedded> {
        let mut settings = Settings::new(&opts.data_dir);
        settings.kill_grace = opts.kill_grace;
        settings.max_parallel = opts.max_parallel;
        settings.prepare()?;
        let bus = MemoryBus::new();
        // Only the groups of the services running here: a queue nobody consumes would keep
        // every event routed to it in memory for as long as the process lives.
        for service in SERVICES {
            bus.declare(&crate::services::group_of(service)).await?;
        }
        let shared: Arc<dyn Bus> = Arc::new(bus.clone());
        let (mut running, logs) = Running::start(&SERVICES, &settings, shared).await?;
        // The launcher hears cancels only once it listens; a job cancelled right away must not
        // race it.
        let cancels = Topic::Cancel("local".into());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while bus.groups_on(&cancels) == 0 {
            if let Some(err) = running.try_failed() {
                return Err(err);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow!("the local launcher did not start within 30s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let logs = logs.expect("the log collector runs here");
        Ok(Embedded {
            bus,
            logs,
            data_dir: settings.data_dir,
            running,
        })
    }

    /// Resolves when a service stops on its own: something is wrong.
    pub async fn failed(&mut self) -> anyhow::Error {
        self.running.failed().await
    }

    /// Stops every service and waits for them: the launcher ends whatever still runs.
    pub async fn stop(self) -> Result<()> {
        self.running.stop().await
    }
}
