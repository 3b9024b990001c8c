//! The whole system in one process: the in-memory bus, the planner, the scheduler on SQLite,
//! the local launcher and the log collector, all under one shutdown token.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use ferry_bus::{Bus, MemoryBus, Subscribe};
use ferry_event::Topic;
use ferry_log_collector::LogStore;
use ferry_runtime::{CancellationToken, instance_source};
use nix::fcntl::{Flock, FlockArg};
use tokio::task::JoinSet;

/// Settings of the embedded system.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds `scheduler.db`, `logs.db`, `attempts/` and `artifacts/`.
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
    shutdown: CancellationToken,
    services: JoinSet<(&'static str, Result<()>)>,
    _lock: Flock<File>,
}

impl Embedded {
    /// Starts every service and waits until each one's queue is bound, so that what is
    /// published next reaches them.
    pub async fn start(opts: &Options) -> Result<Embedded> {
        let dir = &opts.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("data directory {}", dir.display()))?;
        let lock = lock(&dir)?;
        let bus = MemoryBus::new();
        for (group, topic) in [
            (ferry_planner::GROUP, Topic::Intake),
            ("scheduler", Topic::Control),
            ("launcher-local", Topic::Dispatch("local".into())),
            (ferry_log_collector::DEFAULT_GROUP, Topic::Logs),
        ] {
            bus.declare(&Subscribe::new(group, [topic])).await?;
        }
        let logs = LogStore::open(&sqlite_url(&dir.join("logs.db")))
            .await
            .with_context(|| format!("cannot open the log store in {}", dir.display()))?;
        let shutdown = CancellationToken::new();
        let shared: Arc<dyn Bus> = Arc::new(bus.clone());
        let mut services = JoinSet::new();

        let planner = ferry_planner::Config {
            source: instance_source("planner"),
            ..Default::default()
        };
        let (b, t) = (shared.clone(), shutdown.child_token());
        services.spawn(async move {
            (
                "planner",
                ferry_planner::run(planner, b, t)
                    .await
                    .map_err(anyhow::Error::from),
            )
        });

        let scheduler = ferry_scheduler::Config::new(
            sqlite_url(&dir.join("scheduler.db")),
            instance_source("scheduler"),
        );
        let (b, t) = (shared.clone(), shutdown.child_token());
        services.spawn(async move {
            (
                "scheduler",
                ferry_scheduler::run(scheduler, b, t)
                    .await
                    .map_err(anyhow::Error::from),
            )
        });

        let mut launcher = ferry_launcher_local::Config::new(&dir);
        launcher.kill_grace = opts.kill_grace;
        launcher.max_parallel = opts.max_parallel;
        launcher.source = instance_source("launcher-local");
        let (b, t) = (shared.clone(), shutdown.child_token());
        services.spawn(async move {
            (
                "launcher",
                ferry_launcher_local::run(launcher, b, t)
                    .await
                    .map_err(anyhow::Error::from),
            )
        });

        let collector = ferry_log_collector::Config::new(logs.clone());
        let (b, t) = (shared.clone(), shutdown.child_token());
        services.spawn(async move {
            (
                "log-collector",
                ferry_log_collector::run(collector, b, t)
                    .await
                    .map_err(anyhow::Error::from),
            )
        });

        // The launcher hears cancels only once it listens; a job cancelled right away must
        // not race it.
        let cancels = Topic::Cancel("local".into());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while bus.groups_on(&cancels) == 0 {
            if let Some(Ok((name, result))) = services.try_join_next() {
                let err = result.err().unwrap_or_else(|| anyhow!("it stopped"));
                return Err(err.context(format!("the {name} service did not start")));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow!("the local launcher did not start within 30s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(Embedded {
            bus,
            logs,
            data_dir: dir,
            shutdown,
            services,
            _lock: lock,
        })
    }

    /// Resolves when a service stops on its own: something is wrong.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.services.join_next().await {
            Some(Ok((name, Ok(())))) => anyhow!("the {name} service stopped unexpectedly"),
            Some(Ok((name, Err(e)))) => e.context(format!("the {name} service failed")),
            Some(Err(e)) => anyhow!("a service panicked: {e}"),
            None => std::future::pending().await,
        }
    }

    /// Stops every service and waits for them: the launcher ends whatever still runs.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let mut first_error = None;
        while let Some(joined) = self.services.join_next().await {
            let err = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((name, Err(e))) => e.context(format!("the {name} service failed while stopping")),
                Err(e) => anyhow!("a service panicked: {e}"),
            };
            first_error.get_or_insert(err);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// One embedded system per data directory: a second one would reconcile (and so kill) the
/// first one's processes.
fn lock(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow!(
            "another ferry is using the data directory {} ({errno}); wait for it or pass a different --data-dir",
            dir.display()
        )
    })
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}
