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
//! - [`Config`], [`run`]: the service;
//! - [`Secrets`]: the values behind `{{ secret('NAME') }}`, masked as `****` in everything the
//!   launcher sends;
//! - [`state`]: the journal that makes the launcher idempotent per attempt id and lets it
//!   reconcile, on start, the processes and output a previous run left behind.
//!
//! Cancels arrive on `cancel.local`, which every instance hears through an ephemeral group of
//! its own; an instance that does not know the attempt records a tombstone, so that a dispatch
//! arriving later does not start it.
//!
//! At most [`Config::max_parallel`] attempts run at once. The subscription's prefetch window
//! is the same size and a dispatch is acked once its start is confirmed, so while every slot is
//! busy the consumer still reads (and so still receives cancels) but the dispatches it reads
//! wait, unacknowledged, for a free slot; once `max_parallel` of them wait it reads nothing more.

mod attempt;
mod contain;
mod flags;
mod logs;
mod prepare;
mod process;
mod reconcile;
mod resolve;
pub mod state;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, Delivery, Subscribe, Subscription};
use ferry_event::payload::{Outcome, TaskCancel, TaskDispatched};
use ferry_event::{AttributesReader, EventBuilder, Topic, kind};
use ferry_runtime::metrics;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use ferry_launcher::{Error, MIN_SECRET_BYTES, Masker, Result, Secrets, secrets};
pub use flags::Flags;
pub use prepare::{DEFAULT_PASS_ENV, DEFAULT_PATH};
pub use process::{is_alive, start_time};

use crate::contain::Contain;
use crate::resolve::Resolver;
use crate::state::{Journal, Owner, Slots, Status};
use ferry_launcher::publish::Publisher;

/// The backend name this launcher serves; dispatches arrive on `dispatch.local`.
pub const BACKEND: &str = "local";

/// How the local launcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the journal and `slots/<n>/…`; output files go to `artifacts/` in it by default.
    pub data_dir: PathBuf,
    /// Where output files are copied, as `<job>/<task>/<attempt>/<path>`.
    pub artifact_dir: Option<PathBuf>,
    /// Attempts running at once, and the subscription's prefetch.
    pub max_parallel: usize,
    /// Time between SIGTERM and SIGKILL when stopping a process group.
    pub kill_grace: Duration,
    /// Most lines in one `task.log` event.
    pub log_batch_lines: usize,
    /// A `task.log` event is sent at least this often while lines flow.
    pub log_batch_interval: Duration,
    /// Secrets read when the configuration was made (`FERRY_SECRET_*`), to which [`run`] adds
    /// those of `secrets_file`.
    pub secrets: Secrets,
    /// A secrets file read when the launcher starts (see [`Secrets::from_file`]).
    pub secrets_file: Option<PathBuf>,
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
    /// The CloudEvents `source` of this instance.
    pub source: String,
    /// The consumer group.
    pub group: String,
}

impl Config {
    /// Defaults: 64 attempts at once, 10 s grace, batches of 256 lines or 20 ms, secrets from
    /// `FERRY_SECRET_*` and the file `FERRY_SECRETS_FILE` names, variables passed to tasks
    /// besides the default ones from `FERRY_PASS_ENV` (comma-separated), the tasks'
    /// user from `FERRY_RUN_AS`, cgroups where allowed unless `FERRY_NO_CGROUPS` is set, group
    /// `launcher-local`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Config {
            data_dir: data_dir.into(),
            artifact_dir: None,
            max_parallel: 64,
            kill_grace: Duration::from_secs(10),
            log_batch_lines: 256,
            log_batch_interval: Duration::from_millis(20),
            secrets: Secrets::from_env(),
            secrets_file: var("FERRY_SECRETS_FILE").map(PathBuf::from),
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
            source: ferry_runtime::instance_source("launcher-local"),
            group: "launcher-local".to_string(),
        }
    }

    /// Checks the configuration, reads the secrets file and makes the directories absolute,
    /// creating them.
    fn resolve(mut self) -> Result<(Config, Resolved)> {
        if self.max_parallel == 0 {
            return Err(Error::Config("max_parallel must be at least 1".into()));
        }
        if self.log_batch_lines == 0 {
            return Err(Error::Config("log_batch_lines must be at least 1".into()));
        }
        if self.group.is_empty() {
            return Err(Error::Config("the consumer group name is empty".into()));
        }
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
        if let Some(path) = &self.secrets_file {
            self.secrets.extend(Secrets::from_file(path)?);
        }
        self.secrets.check().map_err(Error::Config)?;
        let run_as = self.run_as.as_deref().map(RunAs::lookup).transpose()?;
        let owner = run_as.as_ref().map(|r| r.owner);
        self.data_dir = make_dir(&self.data_dir, "data directory", owner)?;
        if let Some(r) = &run_as {
            r.check_can_reach(&self.data_dir)?;
        }
        if self.data_dir.to_str().is_none() {
            return Err(Error::Config(format!(
                "the data directory {} is not valid UTF-8; tasks receive their working directory as text",
                self.data_dir.display()
            )));
        }
        let artifacts = self
            .artifact_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("artifacts"));
        let artifacts = make_dir(&artifacts, "artifact directory", None)?;
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

/// What every attempt of one launcher shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) artifact_dir: PathBuf,
    pub(crate) builder: EventBuilder,
    pub(crate) publisher: Publisher,
    pub(crate) masker: Masker,
    /// The part of the launcher's environment tasks receive, read once: every task's
    /// environment starts from it.
    pub(crate) base_env: Vec<(OsString, OsString)>,
    pub(crate) run_as: Option<RunAs>,
    pub(crate) contain: Contain,
    pub(crate) resolver: Resolver,
    /// Cancelled when the launcher stops (shutdown, or the bus closed).
    pub(crate) stop: CancellationToken,
    pub(crate) journal: Journal,
    pub(crate) slots: Slots,
}

/// Runs the local launcher until `shutdown` is cancelled (or the bus closes). On the way out
/// every running attempt's process group is stopped and the attempt reported `lost`; when this
/// returns, no process it started is alive.
pub async fn run(config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
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
    if config.data_dir.join("attempts").is_dir() {
        tracing::warn!(
            dir = %config.data_dir.join("attempts").display(),
            "this data directory holds attempts in the layout of an earlier version, which are not reconciled; \
             their dispatches, if unfinished, are retried by the scheduler once their leases lapse"
        );
    }
    let journal = Journal::open(&config.data_dir).map_err(|source| Error::Io {
        what: format!("cannot read the journal in {}", config.data_dir.display()),
        source,
    })?;
    let busy: Vec<u32> = journal
        .unfinished()
        .iter()
        .filter_map(|(_, o)| match &o.status {
            Status::Running(r) => Some(r.slot),
            _ => None,
        })
        .collect();
    let contain = Contain::detect(&config.data_dir, config.cgroups);
    // A previous run's daemons in idle slots' cgroups end before those slots are wiped.
    contain.clear_idle(&busy).await;
    let owner = run_as.as_ref().map(|r| r.owner);
    let slots = Slots::open(&config.data_dir, &busy, owner).map_err(|source| Error::Io {
        what: format!(
            "cannot prepare the slots in {}",
            config.data_dir.join("slots").display()
        ),
        source,
    })?;
    let stop = shutdown.child_token();
    let shared = Arc::new(Shared {
        journal,
        slots,
        masker: config.secrets.masker(),
        base_env: {
            let mut env: std::collections::BTreeMap<OsString, OsString> =
                prepare::base_env(std::env::vars_os(), &config.pass_env)
                    .into_iter()
                    .collect();
            env.extend(run_as.iter().flat_map(RunAs::env));
            env.into_iter().collect()
        },
        run_as,
        contain,
        resolver: Resolver::new(),
        builder: EventBuilder::new(config.source.clone()),
        publisher: Publisher::new(bus.clone(), stop.clone()),
        stop: stop.clone(),
        artifact_dir,
        config,
    });
    tracing::info!(
        data_dir = %shared.config.data_dir.display(),
        group = %shared.config.group,
        max_parallel = shared.config.max_parallel,
        secrets = shared.config.secrets.len(),
        run_as = shared.run_as.as_ref().map(|r| r.name.as_str()),
        containment = %shared.contain.describe(),
        "local launcher starting"
    );
    let reconciled = reconcile::reconcile(&shared).await;
    if reconciled > 0 {
        tracing::info!(attempts = reconciled, "reconciled attempts of a previous run");
    }
    if stop.is_cancelled() {
        return Ok(());
    }
    let subscription = bus
        .subscribe(
            Subscribe::new(
                shared.config.group.clone(),
                [Topic::Dispatch(BACKEND.to_string())],
            )
            .prefetch(shared.config.max_parallel),
        )
        .await?;
    // Every instance hears every cancel: only the one running the attempt can stop it.
    let cancels = bus
        .subscribe(
            Subscribe::new(
                format!("{}-cancel-{}", shared.config.group, ferry_event::new_id()),
                [Topic::Cancel(BACKEND.to_string())],
            )
            .ephemeral(),
        )
        .await?;
    let (tx, mut rx) = mpsc::channel(1);
    let reader = tokio::spawn(read_deliveries(subscription, tx.clone(), stop.clone()));
    let cancel_reader = tokio::spawn(read_deliveries(cancels, tx, stop.clone()));

    let mut launcher = Launcher::new(shared.clone());
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            Some(done) = launcher.tasks.join_next_with_id() => launcher.on_done(done),
            received = rx.recv() => match received {
                Some(Ok(delivery)) => launcher.on_delivery(delivery).await,
                Some(Err(e)) if e.is_transient() => {
                    tracing::warn!(error = %e, "receiving from the bus failed; retrying");
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "receiving from the bus failed; stopping");
                    break Err(Error::Bus(e));
                }
                None => {
                    tracing::info!("the bus closed; stopping");
                    break Ok(());
                }
            },
        }
    };
    stop.cancel();
    reader.abort();
    cancel_reader.abort();
    let _ = reader.await;
    let _ = cancel_reader.await;
    // Dispatches not started go back to the broker unacknowledged.
    launcher.pending.clear();
    while let Some(done) = launcher.tasks.join_next_with_id().await {
        launcher.on_done(done);
    }
    shared.contain.remove();
    tracing::info!("local launcher stopped");
    result
}

/// Moves deliveries from the subscription to the main loop, so that the main loop only ever
/// waits on a channel (which is safe to abandon in `select!`).
async fn read_deliveries(
    mut subscription: Subscription,
    tx: mpsc::Sender<ferry_bus::Result<Delivery>>,
    stop: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = subscription.next() => r,
        };
        let Some(received) = received else {
            return;
        };
        let failed = received.is_err();
        if tx.send(received).await.is_err() {
            return;
        }
        if failed {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// An attempt this launcher is busy with.
struct Entry {
    /// Set for a running attempt: sends the error a cancel reports.
    cancel: Option<watch::Sender<Option<String>>>,
    /// Whether it holds one of the `max_parallel` slots (reports of attempts that never start
    /// do not).
    counted: bool,
}

struct Launcher {
    shared: Arc<Shared>,
    running: usize,
    entries: HashMap<String, Entry>,
    pending: VecDeque<(TaskDispatched, Delivery)>,
    tasks: JoinSet<()>,
    task_attempts: HashMap<tokio::task::Id, String>,
}

impl Launcher {
    fn new(shared: Arc<Shared>) -> Self {
        Launcher {
            shared,
            running: 0,
            entries: HashMap::new(),
            pending: VecDeque::new(),
            tasks: JoinSet::new(),
            task_attempts: HashMap::new(),
        }
    }

    async fn on_delivery(&mut self, delivery: Delivery) {
        let ty = delivery.event.ty().to_string();
        match ty.as_str() {
            kind::TASK_DISPATCHED => self.on_dispatch(delivery).await,
            kind::TASK_CANCEL => self.on_cancel(delivery).await,
            other => {
                let reason = format!(
                    "the local launcher handles {} and {}, not {other}",
                    kind::TASK_DISPATCHED,
                    kind::TASK_CANCEL
                );
                dead_letter(delivery, &reason).await;
            }
        }
    }

    async fn on_dispatch(&mut self, delivery: Delivery) {
        let d: TaskDispatched = match ferry_event::decode(&delivery.event) {
            Ok(d) => d,
            Err(e) => return dead_letter(delivery, &e.to_string()).await,
        };
        if let Err(why) = state::check_id(&d.attempt_id) {
            let reason = format!("attempt id {:?} cannot name a directory: {why}", d.attempt_id);
            return dead_letter(delivery, &reason).await;
        }
        let span = attempt_span(&d);
        let in_progress = self.entries.contains_key(&d.attempt_id)
            || self.pending.iter().any(|(p, _)| p.attempt_id == d.attempt_id);
        if in_progress {
            span.in_scope(|| tracing::info!("duplicate dispatch of an attempt in progress; acking it"));
            return ack(delivery).await;
        }
        match self.shared.journal.status(&d.attempt_id) {
            Status::Finished => {
                span.in_scope(|| tracing::info!("duplicate dispatch of a finished attempt; acking it"));
                ack(delivery).await;
            }
            Status::Running(record) => {
                span.in_scope(|| {
                    tracing::warn!(
                        pid = record.pid,
                        "duplicate dispatch of an attempt whose process is recorded on disk; acking it"
                    )
                });
                ack(delivery).await;
            }
            Status::ResultPending(report) => {
                let id = d.attempt_id.clone();
                let fut = attempt::settle_pending(self.shared.clone(), *report, Some(delivery));
                self.spawn(id, None, false, fut, span);
            }
            Status::Tombstone(error) => {
                span.in_scope(|| tracing::info!("attempt was cancelled before its dispatch arrived"));
                let report = attempt::unstarted(&d, Outcome::Cancelled, error);
                let fut = attempt::settle_unstarted(self.shared.clone(), report, delivery);
                self.spawn(d.attempt_id.clone(), None, false, fut, span);
            }
            Status::Fresh => {
                self.pending.push_back((d, delivery));
                self.fill_slots();
            }
        }
    }

    async fn on_cancel(&mut self, delivery: Delivery) {
        let c: TaskCancel = match ferry_event::decode(&delivery.event) {
            Ok(c) => c,
            Err(e) => return dead_letter(delivery, &e.to_string()).await,
        };
        if let Err(why) = state::check_id(&c.attempt_id) {
            let reason = format!("attempt id {:?} cannot name a directory: {why}", c.attempt_id);
            return dead_letter(delivery, &reason).await;
        }
        let error = attempt::cancel_error(c.reason.as_deref());
        let span = tracing::info_span!(
            "attempt",
            job_id = %c.job_id,
            task_id = %c.task_id,
            attempt_id = %c.attempt_id
        );
        if let Some(entry) = self.entries.get(&c.attempt_id) {
            if let Some(tx) = &entry.cancel {
                span.in_scope(|| tracing::info!("cancelling the attempt"));
                tx.send_replace(Some(error));
            }
            return ack(delivery).await;
        }
        let waiting = self
            .pending
            .iter()
            .position(|(p, _)| p.attempt_id == c.attempt_id);
        if let Some((d, dispatch)) = waiting.and_then(|pos| self.pending.remove(pos)) {
            span.in_scope(|| tracing::info!("cancelling an attempt waiting for a slot"));
            let report = attempt::unstarted(&d, Outcome::Cancelled, error);
            let fut = attempt::settle_unstarted(self.shared.clone(), report, dispatch);
            self.spawn(d.attempt_id.clone(), None, false, fut, span);
            return ack(delivery).await;
        }
        match self.shared.journal.status(&c.attempt_id) {
            Status::Fresh | Status::Tombstone(_) => {
                match self
                    .shared
                    .journal
                    .record(&c.attempt_id, state::Entry::Cancelled { reason: error })
                {
                    Ok(()) => {
                        span.in_scope(|| tracing::info!("cancel arrived before the dispatch; recorded it"));
                        ack(delivery).await;
                    }
                    Err(e) => {
                        let reason = format!(
                            "cannot record the cancel of attempt {} in {}: {e}",
                            c.attempt_id,
                            self.shared.journal.path().display()
                        );
                        dead_letter(delivery, &reason).await;
                    }
                }
            }
            _ => ack(delivery).await,
        }
    }

    /// Starts waiting dispatches while slots are free.
    fn fill_slots(&mut self) {
        while self.running < self.shared.config.max_parallel && !self.shared.stop.is_cancelled() {
            let Some((d, delivery)) = self.pending.pop_front() else {
                break;
            };
            let (tx, rx) = watch::channel(None);
            let span = attempt_span(&d);
            let id = d.attempt_id.clone();
            let fut = attempt::run(self.shared.clone(), d, delivery, rx);
            self.spawn(id, Some(tx), true, fut, span);
            tracing::debug!(metric = metrics::ATTEMPTS_IN_FLIGHT, value = self.running);
        }
    }

    fn spawn(
        &mut self,
        attempt_id: String,
        cancel: Option<watch::Sender<Option<String>>>,
        counted: bool,
        fut: impl Future<Output = ()> + Send + 'static,
        span: tracing::Span,
    ) {
        let handle = self.tasks.spawn(fut.instrument(span));
        self.task_attempts.insert(handle.id(), attempt_id.clone());
        if counted {
            self.running += 1;
        }
        self.entries.insert(attempt_id, Entry { cancel, counted });
    }

    fn on_done(&mut self, done: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                tracing::error!(error = %e, "an attempt's task failed");
                e.id()
            }
        };
        if let Some(attempt_id) = self.task_attempts.remove(&id)
            && let Some(entry) = self.entries.remove(&attempt_id)
            && entry.counted
        {
            self.running -= 1;
        }
        self.fill_slots();
    }
}

fn attempt_span(d: &TaskDispatched) -> tracing::Span {
    tracing::info_span!(
        "attempt",
        job_id = %d.job_id,
        task_id = %d.task_id,
        attempt_id = %d.attempt_id,
        attempt = d.attempt
    )
}

async fn ack(delivery: Delivery) {
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, "cannot ack a delivery; it may be delivered again");
    }
}

async fn dead_letter(delivery: Delivery, reason: &str) {
    if let Err(e) = delivery.dead_letter(reason).await {
        tracing::warn!(error = %e, reason, "cannot dead-letter a delivery");
    }
}
