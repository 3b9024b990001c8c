//! ferry's local launcher: runs each dispatched attempt as a process on this machine.
//!
//! [`run`] joins a consumer group on the `dispatch.local` topic and handles
//! `dev.ferry.task.dispatched` and `dev.ferry.task.cancel`. Each attempt borrows a slot, whose
//! working directory `data_dir/slots/<n>/work` is empty when it starts, gets its input files
//! written there, runs
//! with its command as a plain argument vector (no shell) in its own process group, and reports
//! `task.started`, `task.heartbeat`, `task.log` batches and `task.finished`. Timeouts, cancels
//! and shutdown stop the whole process group (SIGTERM, a grace period, SIGKILL); so does the
//! end of the group leader, and with it every process the attempt started that left the group
//! (a cgroup per slot where the machine allows, else a search by `FERRY_ATTEMPT_ID`), before
//! the slot is wiped for the next attempt.
//!
//! A task sees only what it was given: an environment built from scratch (an allow-list of the
//! launcher's variables, its own `env`, `FERRY_*`), secrets only where its templates name them.
//! The launcher makes itself non-dumpable, and can run tasks as another user (`run_as`).
//! `docs/security.md` says what is covered and what is not.
//!
//! - [`Config`], [`run`]: the service, which is the launcher runtime (`ferry_launcher`: intake,
//!   in-flight window, journal, heartbeats, logs, secrets, outputs, reports, reconcile) driving
//!   the `local` backend (`backend`: slots, process groups, containment, `PATH` lookup);
//! - [`Secrets`]: the values behind `{{ secret('NAME') }}`, masked as `****` in everything the
//!   launcher sends;
//! - [`state`]: the slots, and the journal's records as the local backend writes them;
//! - [`agent`]: `ferry agent`, this launcher serving the registered tasks of one cluster.

pub mod agent;
mod backend;
mod contain;
mod flags;
pub mod prepare;
mod process;
mod resolve;
mod spawn;
pub mod state;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_bus::Bus;
pub use ferry_launcher::{Error, MIN_SECRET_BYTES, Masker, Result, Secrets, Service, secrets};
use tokio_util::sync::CancellationToken;

pub use contain::slots_cgroup;
pub use flags::Flags;
pub use prepare::{DEFAULT_PASS_ENV, DEFAULT_PATH};
pub use process::{is_alive, start_time};

use crate::backend::Local;
use crate::contain::Contain;
use crate::state::{Journal, Owner, RunningRecord, Slots, Status};

/// The backend name this launcher serves; dispatches arrive on `dispatch.local`.
pub const BACKEND: &str = "local";

/// How the local launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// What every launcher service has; its data directory also holds `slots/<n>/…`.
    /// `kill_grace` is the time between SIGTERM and SIGKILL when stopping a process group.
    pub service: Service,
    /// Variables of the launcher's environment passed to tasks besides [`DEFAULT_PASS_ENV`]
    /// (a name, or a prefix followed by `*`). `FERRY_SECRET_*` never passes.
    pub pass_env: Vec<String>,
    /// Run tasks as this user (a name, a uid, or `uid:gid`) rather than the launcher's. The
    /// launcher must be root to do so; tasks then cannot read the launcher's environment, its
    /// journal or its secrets file.
    pub run_as: Option<String>,
    /// Put each slot's processes in a cgroup of its own where the machine allows (see
    /// `contain`); when false, or not allowed, processes that leave a task's process group are
    /// found by their `FERRY_ATTEMPT_ID`.
    pub cgroups: bool,
}

impl Config {
    /// Defaults: those of [`Service::new`], group `launcher-local`, variables passed to tasks
    /// besides the default ones from `FERRY_PASS_ENV` (comma-separated), the tasks' user from
    /// `FERRY_RUN_AS`, cgroups where allowed unless `FERRY_NO_CGROUPS` is set.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Config {
            service: Service::new(data_dir, "launcher-local"),
            pass_env: var("FERRY_PASS_ENV")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            run_as: var("FERRY_RUN_AS"),
            cgroups: var("FERRY_NO_CGROUPS").is_none(),
        }
    }

    /// Checks the configuration, reads the secrets file and makes the directories absolute,
    /// creating them.
    fn resolve(mut self) -> Result<(Config, Resolved)> {
        self.service.runtime().check()?;
        for name in &self.pass_env {
            if name.is_empty()
                || name.contains(['=', '\0'])
                || name.strip_suffix('*').unwrap_or(name).contains('*')
            {
                return Err(Error::Config(format!(
                    "cannot pass {name:?} to tasks: give a variable name, or a prefix followed by `*`"
                )));
            }
        }
        let service = &mut self.service;
        if let Some(path) = &service.secrets_file {
            service.secrets.extend(Secrets::from_file(path)?);
        }
        service.secrets.check().map_err(Error::Config)?;
        let run_as = self.run_as.as_deref().map(RunAs::lookup).transpose()?;
        let owner = run_as.as_ref().map(|r| r.owner);
        service.data_dir = make_dir(&service.data_dir, "data directory", owner)?;
        if let Some(r) = &run_as {
            r.check_can_reach(&service.data_dir)?;
        }
        if service.data_dir.to_str().is_none() {
            return Err(Error::Config(format!(
                "the data directory {} is not valid UTF-8; tasks receive their working directory as text",
                service.data_dir.display()
            )));
        }
        let artifacts = make_dir(&service.artifacts(), "artifact directory", None)?;
        Ok((self, Resolved { artifacts, run_as }))
    }
}

/// What [`Config::resolve`] found out.
struct Resolved {
    artifacts: PathBuf,
    run_as: Option<RunAs>,
}

/// Creates a directory of the launcher's, private to its user (0700), or passable by `owner`
/// (0711) when tasks run as another user; returns it absolute.
fn make_dir(path: &Path, what: &str, owner: Option<Owner>) -> Result<PathBuf> {
    let io = |source| Error::Io {
        what: format!("cannot create the {what} {}", path.display()),
        source,
    };
    let mode = if owner.is_some() { 0o711 } else { 0o700 };
    if path.is_dir() {
        // The operator's directory keeps its mode, except that the tasks' user must pass it.
        if owner.is_some() {
            use std::os::unix::fs::PermissionsExt;
            let current = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if current & 0o001 == 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode((current & 0o7777) | 0o001))
                    .map_err(io)?;
            }
        }
    } else {
        state::make_private_dir(path, mode).map_err(io)?;
    }
    path.canonicalize().map_err(io)
}

/// The user tasks run as, when not the launcher's.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub(crate) name: String,
    pub(crate) owner: Owner,
    pub(crate) home: Option<PathBuf>,
}

impl RunAs {
    /// A user name, a uid, or `uid:gid`.
    fn lookup(spec: &str) -> Result<RunAs> {
        use nix::unistd::{Uid, User};
        let bad = |why: String| Error::Config(format!("cannot run tasks as {spec:?}: {why}"));
        let (user, gid) = match spec.split_once(':') {
            Some((u, g)) => {
                let gid: u32 = g
                    .parse()
                    .map_err(|_| bad("write a user name, a uid, or uid:gid".into()))?;
                (u, Some(gid))
            }
            None => (spec, None),
        };
        let found = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| bad(format!("cannot look the user up: {e}")))?;
        let run_as = match (found, user.parse::<u32>()) {
            (Some(u), _) => RunAs {
                name: u.name.clone(),
                owner: Owner {
                    uid: u.uid.as_raw(),
                    gid: gid.unwrap_or(u.gid.as_raw()),
                },
                home: Some(u.dir),
            },
            (None, Ok(uid)) => RunAs {
                name: uid.to_string(),
                owner: Owner {
                    uid,
                    gid: gid.unwrap_or(uid),
                },
                home: None,
            },
            (None, Err(_)) => return Err(bad("no such user".into())),
        };
        let me = Uid::effective();
        if !me.is_root() && run_as.owner.uid != me.as_raw() {
            return Err(bad(format!(
                "the launcher runs as uid {me}, and only root can start processes as another user"
            )));
        }
        if run_as.owner.uid == 0 {
            return Err(bad(
                "that is root: run-as is for running tasks with fewer rights".into()
            ));
        }
        Ok(run_as)
    }

    /// Fails when a directory above `data_dir` does not let others pass: the tasks' user could
    /// not reach its working directory.
    fn check_can_reach(&self, data_dir: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        for dir in data_dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let passable = meta.mode() & 0o001 != 0
                || (meta.uid() == self.owner.uid && meta.mode() & 0o100 != 0)
                || (meta.gid() == self.owner.gid && meta.mode() & 0o010 != 0);
            if !passable {
                return Err(Error::Config(format!(
                    "tasks run as {} could not reach their working directories: {} (mode {:o}) does not let \
                     them pass; give others the search permission (`chmod o+x {}`) or choose a data directory elsewhere",
                    self.name,
                    dir.display(),
                    meta.mode() & 0o7777,
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The variables that describe the user to its processes.
    fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env = vec![
            ("USER".into(), self.name.clone().into()),
            ("LOGNAME".into(), self.name.clone().into()),
        ];
        if let Some(home) = &self.home {
            env.push(("HOME".into(), home.clone().into()));
        }
        env
    }
}

/// Runs the local launcher until `shutdown` is cancelled (or the bus closes). On the way out
/// every running attempt's process group is stopped and the attempt reported `lost`; when this
/// returns, no process it started is alive.
pub async fn run(config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    serve(config, bus, shutdown, |local| Arc::new(local)).await
}

/// Runs the launcher runtime on the local backend as `wrap` makes it into a backend: the local
/// launcher itself, or an agent ([`agent`]).
async fn serve(
    config: Config,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    wrap: impl FnOnce(Local) -> Arc<dyn ferry_launcher::Backend>,
) -> Result<()> {
    let (
        config,
        Resolved {
            artifacts: artifact_dir,
            run_as,
        },
    ) = config.resolve()?;
    // Tasks of the launcher's own user lose the right to read its memory, environment and
    // command line through /proc (and to ptrace it): only a process with CAP_SYS_PTRACE may.
    // The kernel shows a process's environment as it was at exec, whatever the process removes
    // from it later, so this is what keeps FERRY_SECRET_* and a bus URL's password in there
    // from tasks.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the launcher non-dumpable; tasks of its user can read its environment");
    }
    let data_dir = &config.service.data_dir;
    if data_dir.join("attempts").is_dir() {
        tracing::warn!(
            dir = %data_dir.join("attempts").display(),
            "this data directory holds attempts in the layout of an earlier version, which are not reconciled; \
             their dispatches, if unfinished, are retried by the scheduler once their leases lapse"
        );
    }
    let journal = Journal::open(data_dir).map_err(|source| Error::Io {
        what: format!("cannot read the journal in {}", data_dir.display()),
        source,
    })?;
    let runtime = config.service.runtime_over(&artifact_dir, data_dir)?;
    let local = open_backend(&config, artifact_dir, run_as, &journal).await?;
    let result = ferry_launcher::run(runtime, journal, wrap(local.clone()), bus, shutdown).await;
    local.contain().remove();
    tracing::info!("launcher stopped");
    result
}

/// The local backend of `config`, over `journal` (the journal of its data directory), for a
/// caller that runs the launcher runtime itself: the conformance suite starts and crashes
/// launchers this way. [`run`] is the service.
pub async fn backend(config: Config, journal: &Journal) -> Result<Arc<dyn ferry_launcher::Backend>> {
    Ok(Arc::new(open_local(config, journal).await?))
}

/// The local backend of `config` over `journal`, its configuration resolved.
pub(crate) async fn open_local(config: Config, journal: &Journal) -> Result<Local> {
    let (
        config,
        Resolved {
            artifacts: artifact_dir,
            run_as,
        },
    ) = config.resolve()?;
    open_backend(&config, artifact_dir, run_as, journal).await
}

/// Opens the slots (those the journal holds running stay as they are, the others are
/// emptied) and makes the backend on them.
async fn open_backend(
    config: &Config,
    artifact_dir: PathBuf,
    run_as: Option<RunAs>,
    journal: &Journal,
) -> Result<Local> {
    let busy: Vec<u32> = journal
        .unfinished()
        .iter()
        .filter_map(|(_, o)| match &o.status {
            Status::Running(r) => RunningRecord::from_journal(r).map(|r| r.slot),
            _ => None,
        })
        .collect();
    let service = &config.service;
    let contain = Contain::detect(&service.data_dir, config.cgroups);
    // A previous run's daemons in idle slots' cgroups end before those slots are wiped.
    contain.clear_idle(&busy).await;
    let owner = run_as.as_ref().map(|r| r.owner);
    let slots = Slots::open(&service.data_dir, &busy, owner).map_err(|source| Error::Io {
        what: format!(
            "cannot prepare the slots in {}",
            service.data_dir.join("slots").display()
        ),
        source,
    })?;
    let base_env = {
        let mut env: std::collections::BTreeMap<OsString, OsString> =
            prepare::base_env(std::env::vars_os(), &config.pass_env)
                .into_iter()
                .collect();
        env.extend(run_as.iter().flat_map(RunAs::env));
        env.into_iter().collect()
    };
    tracing::info!(
        data_dir = %service.data_dir.display(),
        group = %service.group,
        max_parallel = service.max_parallel,
        secrets = service.secrets.len(),
        run_as = run_as.as_ref().map(|r| r.name.as_str()),
        containment = %contain.describe(),
        "local launcher starting"
    );
    Ok(Local::new(slots, contain, owner, base_env, artifact_dir))
}
