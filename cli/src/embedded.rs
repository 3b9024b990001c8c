//! The whole system in one process: the in-memory bus, the planner, the scheduler on SQLite,
//! the local launcher and the log collector, all under one shutdown token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use ferry_bus::{Bus, MemoryBus};
use ferry_connect::service::Common;
use ferry_event::Topic;
use ferry_log_collector::LogStore;
use ferry_runtime::db::Synchronous;
use ferry_runtime::{instance_source, sqlite_url};

use crate::launchers::Launcher;

/// How long a task of a backend no launcher here serves waits before it fails.
const NO_LAUNCHER_AFTER: Duration = Duration::from_secs(3);
use crate::services::{Plan, Running};

/// Settings of the embedded system.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds `scheduler.db`, `logs.db`, the launcher's `journal` and `slots/`, and `artifacts/`.
    pub data_dir: PathBuf,
    /// Grace between SIGTERM and SIGKILL when a task is stopped.
    pub kill_grace: Duration,
    /// Attempts running at once.
    pub max_parallel: usize,
    /// Serve `runner: docker` tasks on the local Docker engine (`DOCKER_HOST`, or the local
    /// socket); when none answers, they fail saying so.
    pub docker: bool,
    /// When the scheduler's and the log store's commits are on disk. `Normal` by default: the
    /// in-process bus holds the events in flight in memory, so a power cut loses them whatever
    /// the databases keep, and a sync per commit would protect nothing the run can get back;
    /// a killed process loses no commit either way.
    pub synchronous: Synchronous,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Options {
            data_dir: data_dir.into(),
            kill_grace: Duration::from_secs(5),
            max_parallel: 64,
            docker: false,
            synchronous: Synchronous::Normal,
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

impl Embedded {
    /// Starts every service and waits until each one's queue is bound, so that what is
    /// published next reaches them.
    pub async fn start(opts: &Options) -> Result<Embedded> {
        let mut common = Common {
            bus: "memory://".into(),
            data_dir: opts.data_dir.clone(),
            bus_key_file: None,
            insecure_unsigned_bus: false,
            metrics: None,
        };
        common.prepare()?;
        let data_dir = common.data_dir;
        let mut plan = Plan::new(&data_dir);
        plan.log_db = opts.synchronous.on(&plan.log_db);
        plan.planner = Some(ferry_planner::Config {
            source: instance_source("planner"),
            ..Default::default()
        });
        let mut scheduler = ferry_scheduler::Config::new(
            opts.synchronous.on(&sqlite_url(&data_dir.join("scheduler.db"))),
            instance_source("scheduler"),
        );
        // Every launcher there will be starts here, and announces itself as it does: a task of
        // a backend none serves (a kubernetes task without `--runner docker`) fails soon,
        // saying so, instead of after the minute a deployment gives launchers to come up.
        scheduler.no_launcher_after = Some(NO_LAUNCHER_AFTER);
        plan.scheduler = Some(scheduler);
        let mut launcher = Launcher::Local(ferry_launcher_local::Config::new(&data_dir));
        launcher.tune(opts.kill_grace, opts.max_parallel);
        plan.launchers.push(launcher);
        #[cfg(feature = "docker")]
        if opts.docker {
            // Docker tasks run on the local engine; without one they fail, saying so.
            let mut docker = ferry_launcher_docker::Config::new(crate::launchers::docker_data_dir(&data_dir));
            docker.service.artifact_dir = Some(data_dir.join("artifacts"));
            docker.require_engine = false;
            // The job ends with `ferry run`: nothing may outlive it, as with local processes.
            docker.detach = false;
            let mut docker = Launcher::Docker(docker);
            docker.tune(opts.kill_grace, opts.max_parallel);
            plan.launchers.push(docker);
        }
        plan.log_collector = Some(ferry_log_collector::Flags {
            log_collector_group: ferry_log_collector::DEFAULT_GROUP.into(),
            log_collector_batch_max: ferry_log_collector::DEFAULT_BATCH_MAX,
            log_retention: None,
            namespace_log_quotas: Vec::new(),
        });
        let bus = MemoryBus::new();
        // Only the groups of the services running here: a queue nobody consumes would keep
        // every event routed to it in memory for as long as the process lives.
        for service in plan.services() {
            if service != crate::services::Service::Launcher {
                bus.declare(&crate::services::group_of(service)).await?;
            }
        }
        for launcher in &plan.launchers {
            for group in launcher.groups() {
                bus.declare(&group).await?;
            }
        }
        let backends: Vec<&'static str> = plan.launchers.iter().map(Launcher::backend).collect();
        // Counted as a broker's traffic is: `ferry run --metrics` shows the bus metrics too.
        let metered = ferry_bus::metered::Metered::new(Arc::new(bus.clone()));
        let shared: Arc<dyn Bus> = ferry_connect::traced(Arc::new(metered));
        let (mut running, logs) = Running::start(plan, shared).await?;
        // The launcher hears cancels only once it listens; a job cancelled right away must not
        // race it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while backends
            .iter()
            .any(|b| bus.groups_on(&Topic::Cancel(b.to_string())) == 0)
        {
            if let Some(err) = running.try_failed() {
                return Err(err);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow!("the launchers did not start within 30s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let logs = logs.expect("the log collector runs here");
        Ok(Embedded {
            bus,
            logs,
            data_dir,
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
