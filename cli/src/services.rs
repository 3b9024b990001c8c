//! Starting ferry's services in this process: one (`ferry service NAME`), all of them on a broker
//! (`ferry up`), or all but the api on the in-memory bus (`ferry run`).
//!
//! The flags of each service are defined once, in its crate, and flattened here into `ferry up`
//! and `ferry service NAME` as into the service's own binary.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use ferry_bus::{Bus, Subscribe};
use ferry_connect::service::Common;
use ferry_event::Topic;
use ferry_log_collector::{LogDb, LogStore};
use ferry_runtime::CancellationToken;
use nix::fcntl::{Flock, FlockArg};
use tokio::task::JoinSet;

use crate::launchers::Launcher;

/// One of ferry's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Planner,
    Scheduler,
    Launcher,
    LogCollector,
    Api,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Planner,
        Service::Scheduler,
        Service::Launcher,
        Service::LogCollector,
        Service::Api,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Planner => "planner",
            Service::Scheduler => "scheduler",
            Service::Launcher => "launcher",
            Service::LogCollector => "log-collector",
            Service::Api => "api",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
                format!("unknown service {s:?}; choose one of {}", names.join(", "))
            })
    }
}

/// `ferry up`: every service in this process, with every service's flags.
#[derive(Debug, Clone, Args)]
pub struct Up {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub planner: ferry_planner::Flags,
    #[command(flatten)]
    pub scheduler: ferry_scheduler::Flags,
    #[command(flatten)]
    pub launcher: ferry_launcher_local::Flags,
    #[command(flatten)]
    pub log_db: LogDb,
    #[command(flatten)]
    pub log_collector: ferry_log_collector::Flags,
    #[command(flatten)]
    pub api: ferry_api::Flags,
}

impl Up {
    /// Every service, configured by its flags; `data_dir` is the prepared data directory.
    pub fn plan(&self, data_dir: &Path) -> Result<Plan> {
        let log_db = self.log_db.url(data_dir);
        let mut api = self.api.config(data_dir, log_db.clone())?;
        // The api serves the output files of the launchers beside it.
        let artifacts = self
            .launcher
            .artifact_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("artifacts"));
        let artifacts = std::path::absolute(&artifacts).unwrap_or(artifacts);
        api.artifact_stores.push(artifacts.to_string_lossy().into_owned());
        api.artifact_stores.extend(self.launcher.artifact_store.clone());
        Ok(Plan {
            data_dir: data_dir.to_path_buf(),
            planner: Some(self.planner.config(data_dir)),
            scheduler: Some(self.scheduler.config(data_dir)),
            launchers: up_launchers(&self.launcher, data_dir)?,
            optional_platforms: true,
            log_collector: Some(self.log_collector.clone()),
            api: Some(api),
            log_db,
        })
    }
}

/// `ferry service NAME`: one service alone, with the same flags as its own binary
/// (`ferry-scheduler`, …) and as `ferry up`.
// Parsed once, at startup, and never moved in a loop: the launcher's flags, the largest, are
// kept inline rather than boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub enum One {
    /// Turns job submissions into planned or rejected jobs.
    Planner {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flags: ferry_planner::Flags,
    },
    /// Job and task state, release, retries, leases.
    Scheduler {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flags: ferry_scheduler::Flags,
    },
    /// Runs dispatched task attempts as local processes.
    Launcher {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flags: ferry_launcher_local::Flags,
    },
    /// Stores task.log events in the log store.
    LogCollector {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flags: ferry_log_collector::ProcessFlags,
    },
    /// CloudEvents intake over HTTP and the read model of jobs, tasks and logs.
    Api {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flags: ferry_api::ProcessFlags,
    },
}

impl One {
    pub fn common(&self) -> &Common {
        match self {
            One::Planner { common, .. }
            | One::Scheduler { common, .. }
            | One::Launcher { common, .. }
            | One::LogCollector { common, .. }
            | One::Api { common, .. } => common,
        }
    }

    /// The name it exports traces under, as its own binary does (`ferry-planner`, …).
    pub fn telemetry_name(&self) -> &'static str {
        match self {
            One::Planner { .. } => "ferry-planner",
            One::Scheduler { .. } => "ferry-scheduler",
            One::Launcher { .. } => "ferry-launcher",
            One::LogCollector { .. } => "ferry-log-collector",
            One::Api { .. } => "ferry-api",
        }
    }

    /// The service, configured by its flags; `data_dir` is the prepared data directory.
    pub fn plan(&self, data_dir: &Path) -> Result<Plan> {
        let mut plan = Plan::new(data_dir);
        match self {
            One::Planner { flags, .. } => plan.planner = Some(flags.config(data_dir)),
            One::Scheduler { flags, .. } => plan.scheduler = Some(flags.config(data_dir)),
            One::Launcher { flags, .. } => {
                plan.launchers = vec![Launcher::from_flags(&flags.backend, flags, data_dir)?]
            }
            One::LogCollector { flags, .. } => {
                plan.log_db = flags.store.url(data_dir);
                plan.log_collector = Some(flags.collector.clone());
            }
            One::Api { flags, .. } => {
                plan.log_db = flags.logs.url(data_dir);
                plan.api = Some(flags.config(data_dir)?);
            }
        }
        Ok(plan)
    }
}

/// The services to start in this process, each with its configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The data directory; a launcher locks it.
    pub data_dir: PathBuf,
    pub planner: Option<ferry_planner::Config>,
    pub scheduler: Option<ferry_scheduler::Config>,
    /// The launchers, one per backend served.
    pub launchers: Vec<Launcher>,
    /// The docker, kubernetes, ray, aws-batch and google-batch launchers run only if their
    /// platform (a Docker engine, a Kubernetes API, a Ray Jobs API, the AWS or Google Batch API)
    /// answers when the services start (`ferry up`); otherwise they are left out, saying why.
    pub optional_platforms: bool,
    /// The log collector's flags; [`Running::start`] opens its store, [`Plan::log_db`].
    pub log_collector: Option<ferry_log_collector::Flags>,
    pub api: Option<ferry_api::Config>,
    /// The log store, written by the log collector and read by the api.
    pub log_db: String,
}

impl Plan {
    /// No service yet; the log store in `data_dir`.
    pub fn new(data_dir: &Path) -> Plan {
        Plan {
            data_dir: data_dir.to_path_buf(),
            planner: None,
            scheduler: None,
            launchers: Vec::new(),
            optional_platforms: false,
            log_collector: None,
            api: None,
            log_db: ferry_runtime::sqlite_url(&data_dir.join("logs.db")),
        }
    }

    /// The services planned, in [`Service::ALL`]'s order.
    pub fn services(&self) -> Vec<Service> {
        let planned = [
            self.planner.is_some(),
            self.scheduler.is_some(),
            !self.launchers.is_empty(),
            self.log_collector.is_some(),
            self.api.is_some(),
        ];
        Service::ALL
            .into_iter()
            .zip(planned)
            .filter_map(|(s, p)| p.then_some(s))
            .collect()
    }
}

/// Services running in this process.
pub struct Running {
    pub shutdown: CancellationToken,
    set: JoinSet<(Service, Result<()>)>,
    _lock: Option<Flock<File>>,
}

impl Running {
    /// Starts what `plan` names on `bus`. The log store is shared by the log collector and the
    /// api, and returned for in-process readers.
    pub async fn start(plan: Plan, bus: Arc<dyn Bus>) -> Result<(Running, Option<LogStore>)> {
        let lock = match plan.launchers.is_empty() {
            false => Some(lock(&plan.data_dir)?),
            true => None,
        };
        let shutdown = CancellationToken::new();
        let mut set: JoinSet<(Service, Result<()>)> = JoinSet::new();
        let logs = match plan.log_collector.is_some() || plan.api.is_some() {
            true => Some(
                LogStore::open(&plan.log_db)
                    .await
                    .context("the log collector and the api need the log store")?,
            ),
            false => None,
        };
        let token = || shutdown.child_token();
        if let Some(config) = plan.planner {
            let run = ferry_planner::run(config, bus.clone(), token());
            set.spawn(async move { (Service::Planner, run.await.map_err(Into::into)) });
        }
        if let Some(config) = plan.scheduler {
            let run = ferry_scheduler::run(config, bus.clone(), token());
            set.spawn(async move { (Service::Scheduler, run.await.map_err(Into::into)) });
        }
        for launcher in plan.launchers {
            let run = launcher.run(bus.clone(), token());
            set.spawn(async move { (Service::Launcher, run.await) });
        }
        if let (Some(flags), Some(store)) = (plan.log_collector, &logs) {
            let run = ferry_log_collector::run(flags.config(store.clone()), bus.clone(), token());
            set.spawn(async move { (Service::LogCollector, run.await.map_err(Into::into)) });
        }
        if let Some(config) = plan.api {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("the api cannot listen on {}", config.listen))?;
            let run = ferry_api::serve(config, bus.clone(), listener, token());
            set.spawn(async move { (Service::Api, run.await.map_err(Into::into)) });
        }
        Ok((
            Running {
                shutdown,
                set,
                _lock: lock,
            },
            logs,
        ))
    }

    /// Resolves when a service stops on its own: something is wrong.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.set.join_next().await {
            Some(Ok((svc, Ok(())))) => anyhow!("the {svc} service stopped unexpectedly"),
            Some(Ok((svc, Err(e)))) => e.context(format!("the {svc} service failed")),
            Some(Err(e)) => anyhow!("a service panicked: {e}"),
            None => std::future::pending().await,
        }
    }

    /// A service that already stopped, if any.
    pub fn try_failed(&mut self) -> Option<anyhow::Error> {
        match self.set.try_join_next()? {
            Ok((svc, Ok(()))) => Some(anyhow!("the {svc} service stopped unexpectedly")),
            Ok((svc, Err(e))) => Some(e.context(format!("the {svc} service failed"))),
            Err(e) => Some(anyhow!("a service panicked: {e}")),
        }
    }

    /// Stops every service and waits for them: the launcher ends whatever still runs.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let mut first_error = None;
        while let Some(joined) = self.set.join_next().await {
            let err = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((svc, Err(e))) => e.context(format!("the {svc} service failed while stopping")),
                Err(e) => anyhow!("a service panicked: {e}"),
            };
            first_error.get_or_insert(err);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// One launcher per data directory: a second one would reconcile (and so kill) the first one's
/// processes.
fn lock(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow!(
            "another ferry launcher is using the data directory {} ({errno}); wait for it or pass a different --data-dir",
            dir.display()
        )
    })
}

/// The name of the key file `ferry up` keeps in its data directory.
pub const DATA_DIR_KEYS: &str = "bus.keys";

/// For every service in one process (`ferry up`) on a broker, without a key setting: signs
/// with `DATA_DIR/bus.keys`, created on the first start. A service alone on a broker (`ferry
/// service`) needs the deployment's key file: one made up here would make it refuse the
/// others' events and they its.
fn keep_keys_in_data_dir(common: &mut Common) -> Result<()> {
    if !common.keys_unset() {
        return Ok(());
    }
    let path = common.data_dir.join(DATA_DIR_KEYS);
    let (ring, created) = crate::keys::load_or_create(&path)?;
    if created {
        errln!(
            "ferry: created the bus key file {}; give it to any `ferry service` joining this deployment (--bus-key-file)",
            path.display()
        );
    }
    tracing::info!(key_file = %path.display(), signing_key = ring.signing_id(), "signing events on the bus");
    common.use_key_file(&path);
    Ok(())
}

/// Runs services until SIGINT/SIGTERM (graceful: in-flight work drains, the launcher ends what
/// runs) or until one of them fails. `plan` configures them once the data directory is made.
pub async fn serve(mut common: Common, plan: impl FnOnce(&Path) -> Result<Plan>) -> Result<()> {
    common.prepare()?;
    let mut plan = plan(&common.data_dir)?;
    let launchers = settle_platforms(&mut plan).await;
    if plan.services() == Service::ALL {
        keep_keys_in_data_dir(&mut common)?;
    }
    let bus = common.open_bus().await.map_err(|e| anyhow!(e))?;
    // Every service's queue exists before any of them publishes, whichever run where.
    for spec in standard_groups() {
        bus.declare(&spec)
            .await
            .with_context(|| format!("cannot declare the {} queue", spec.group))?;
    }
    // Serves until every service has stopped, so that a probe sees the drain.
    let (draining, endpoint_stop) = (CancellationToken::new(), CancellationToken::new());
    let endpoint = common.serve_metrics(&bus, &draining, &endpoint_stop).await?;
    let services = plan.services();
    let listen = plan
        .api
        .as_ref()
        .map(|api| (if api.tls.is_some() { "https" } else { "http" }, api.listen));
    let (mut running, _) = Running::start(plan, bus).await?;
    let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
    tracing::info!(services = %names.join(", "), launchers = %launchers, bus = %ferry_connect::redact(&common.bus), data_dir = %common.data_dir.display(), "ferry running");
    if let Some((scheme, listen)) = listen {
        errln!("ferry: api listening on {scheme}://{listen}");
    }
    let outcome = tokio::select! {
        _ = ferry_runtime::shutdown::wait_for_signal() => Ok(()),
        err = running.failed() => Err(err),
    };
    draining.cancel();
    // A second signal while draining exits at once.
    tokio::spawn(async {
        ferry_runtime::shutdown::wait_for_signal().await;
        std::process::exit(130);
    });
    let stopped = running.stop().await;
    endpoint_stop.cancel();
    if let Some(endpoint) = endpoint {
        let _ = endpoint.await;
    }
    outcome.and(stopped)
}

/// The launchers of `ferry up`: every backend built, unless `--no-docker` or
/// `--no-kubernetes`; ray when `--ray-address` names a cluster; aws-batch when
/// `--aws-batch-job-queue` or `--aws-batch-compute-environment` names where its jobs go;
/// google-batch when `--google-project` and `--google-region` do.
fn up_launchers(flags: &ferry_launcher_local::Flags, data_dir: &Path) -> Result<Vec<Launcher>> {
    let mut launchers = vec![Launcher::from_flags("local", flags, data_dir)?];
    if !flags.no_docker && crate::launchers::enabled("docker") {
        launchers.push(Launcher::from_flags("docker", flags, data_dir)?);
    }
    if !flags.no_kubernetes && crate::launchers::enabled("kubernetes") {
        launchers.push(Launcher::from_flags("kubernetes", flags, data_dir)?);
    }
    if flags.ray_address.as_deref().is_some_and(|a| !a.trim().is_empty()) && crate::launchers::enabled("ray")
    {
        launchers.push(Launcher::from_flags("ray", flags, data_dir)?);
    }
    let named = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    if (named(&flags.aws_batch_job_queue) || named(&flags.aws_batch_compute_environment))
        && crate::launchers::enabled("aws-batch")
    {
        launchers.push(Launcher::from_flags("aws-batch", flags, data_dir)?);
    }
    if named(&flags.google_project)
        && named(&flags.google_region)
        && crate::launchers::enabled("google-batch")
    {
        launchers.push(Launcher::from_flags("google-batch", flags, data_dir)?);
    }
    Ok(launchers)
}

/// Leaves an optional container launcher out when its platform does not answer (no Docker
/// engine, no Kubernetes cluster configured or reachable). Returns the backends served, and
/// where, for the startup line.
async fn settle_platforms(plan: &mut Plan) -> String {
    let mut served = Vec::new();
    let mut kept = Vec::new();
    for launcher in std::mem::take(&mut plan.launchers) {
        let backend = launcher.backend();
        let platform: Option<Result<String, String>> = match &launcher {
            Launcher::Local(_) | Launcher::Agent(_) => None,
            #[cfg(feature = "docker")]
            Launcher::Docker(c) => Some(crate::launchers::docker_engine(c.docker_host.as_deref()).await),
            #[cfg(feature = "kubernetes")]
            Launcher::Kubernetes(c) => Some(crate::launchers::kubernetes_cluster(c.context.as_deref()).await),
            #[cfg(feature = "ray")]
            Launcher::Ray(c) => Some(crate::launchers::ray_cluster(c.address.as_deref()).await),
            #[cfg(feature = "aws-batch")]
            Launcher::AwsBatch(c) => Some(crate::launchers::aws_batch_api(c).await),
            #[cfg(feature = "google-batch")]
            Launcher::GoogleBatch(c) => Some(crate::launchers::google_batch_api(c).await),
        };
        match platform {
            None => served.push(backend.to_string()),
            Some(Ok(at)) => served.push(format!("{backend} ({at})")),
            Some(Err(why)) if plan.optional_platforms => {
                served.push(format!("not {backend}: {why}"));
                continue;
            }
            Some(Err(_)) => served.push(backend.to_string()),
        }
        kept.push(launcher);
    }
    plan.launchers = kept;
    served.join("; ")
}

/// The consumer groups of ferry's services, as they subscribe.
pub fn standard_groups() -> Vec<Subscribe> {
    Service::ALL.into_iter().map(group_of).collect()
}

/// The consumer group a service subscribes as.
pub fn group_of(service: Service) -> Subscribe {
    match service {
        Service::Planner => Subscribe::new(ferry_planner::GROUP, [Topic::Intake]),
        Service::Scheduler => Subscribe::new("scheduler", [Topic::Control]),
        Service::Launcher => Subscribe::new(
            "launcher-local",
            [Topic::Dispatch(ferry_launcher_local::BACKEND.into())],
        ),
        Service::LogCollector => Subscribe::new(ferry_log_collector::DEFAULT_GROUP, [Topic::Logs]),
        Service::Api => Subscribe::new(ferry_api::DEFAULT_GROUP, [Topic::Control, Topic::Lifecycle]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_like_the_command_line() {
        for s in Service::ALL {
            assert_eq!(s.name().parse::<Service>().unwrap(), s);
        }
        assert!("schedular".parse::<Service>().unwrap_err().contains("scheduler"));
    }
}
