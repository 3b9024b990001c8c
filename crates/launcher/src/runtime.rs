//! The launcher as a service: its configuration, what its attempts share, and [`run`].

use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, Delivery, Subscribe, Subscription};
use ferry_event::payload::LauncherPresence;
use ferry_event::{EventBuilder, Topic, kind};
use ferry_runtime::Backoff;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::intake::Intake;
use crate::journal::Journal;
use crate::publish::Publisher;
use crate::quota::ArtifactQuotas;
use crate::retention::{self, ArtifactRetention};
use crate::secrets::{Masker, Secrets};
use crate::{Error, Result, reconcile};

/// How often what each namespace's output files hold is counted again.
const QUOTA_RECOUNT_EVERY: Duration = Duration::from_secs(60);

/// How the runtime runs, whatever the backend.
#[derive(Debug, Clone)]
pub struct Config {
    /// Attempts running at once, and the dispatch subscription's prefetch.
    pub max_parallel: usize,
    /// Time a stopped compute gets between the request to end and the end for good.
    pub kill_grace: Duration,
    /// Most lines in one `task.log` event.
    pub log_batch_lines: usize,
    /// A `task.log` event is sent at least this often while lines flow.
    pub log_batch_interval: Duration,
    /// Every secret the launcher holds: filled into templates, masked in everything it sends.
    pub secrets: Secrets,
    /// The CloudEvents `source` of this instance.
    pub source: String,
    /// The consumer group of the dispatch topic.
    pub group: String,
    /// Output files to remove from the artifact directory once old, if any.
    pub artifact_retention: Option<ArtifactRetention>,
    /// Bytes of output files each namespace may keep in the artifact directory, if limited.
    pub artifact_quotas: Option<Arc<ArtifactQuotas>>,
    /// The bucket output files go to once collected (`s3://…`, `gs://…`), if not the artifact
    /// directory; the directory then holds them only until they are stored.
    pub artifact_store: Option<ferry_artifacts::Store>,
}

impl Config {
    /// Fails on a configuration that can never work, saying which setting is wrong.
    pub fn check(&self) -> Result<()> {
        if self.max_parallel == 0 {
            return Err(Error::Config("max_parallel must be at least 1".into()));
        }
        if self.log_batch_lines == 0 {
            return Err(Error::Config("log_batch_lines must be at least 1".into()));
        }
        if self.group.is_empty() {
            return Err(Error::Config("the consumer group name is empty".into()));
        }
        self.secrets.check().map_err(Error::Config)
    }
}

/// What every attempt of one launcher shares.
pub(crate) struct Runtime {
    pub(crate) config: Config,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) journal: Journal,
    pub(crate) builder: EventBuilder,
    pub(crate) publisher: Publisher,
    pub(crate) masker: Masker,
    /// Cancelled when the launcher stops (shutdown, or the bus closed).
    pub(crate) stop: CancellationToken,
}

/// Runs a launcher of `backend` until `shutdown` is cancelled (or the bus closes): reconciles
/// what `journal` holds unfinished, then serves `task.dispatched` and `task.cancel` of the
/// backend's runner type. On the way out, running attempts are dealt with as the backend's
/// [`ShutdownPolicy`](crate::backend::ShutdownPolicy) says.
pub async fn run(
    config: Config,
    journal: Journal,
    backend: Arc<dyn Backend>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) -> Result<()> {
    config.check()?;
    let identity = journal.identity().map_err(|source| Error::Io {
        what: format!(
            "cannot read or make the launcher's identity beside {}",
            journal.path().display()
        ),
        source,
    })?;
    let stop = shutdown.child_token();
    let rt = Arc::new(Runtime {
        masker: config.secrets.masker(),
        builder: EventBuilder::new(config.source.clone()).with_launcher(identity),
        publisher: Publisher::new(bus.clone(), stop.clone()),
        stop: stop.clone(),
        journal,
        backend,
        config,
    });
    let (reconciled, adopted) = reconcile::reconcile(&rt).await;
    if reconciled > 0 || !adopted.is_empty() {
        tracing::info!(
            attempts = reconciled,
            adopted = adopted.len(),
            "reconciled attempts of a previous run"
        );
    }
    if stop.is_cancelled() {
        return Ok(());
    }
    let served = rt.backend.serves(&rt.config.group);
    let mut subscriptions = Vec::with_capacity(served.len());
    for (backend, group) in &served {
        subscriptions.push(
            bus.subscribe(
                Subscribe::new(group.clone(), [Topic::Dispatch(backend.clone())])
                    .prefetch(rt.config.max_parallel),
            )
            .await?,
        );
    }
    // Every instance hears every cancel: only the one running the attempt can stop it.
    let cancels = bus
        .subscribe(
            Subscribe::new(
                format!("{}-cancel-{}", rt.config.group, ferry_event::new_id()),
                served.iter().map(|(backend, _)| Topic::Cancel(backend.clone())),
            )
            .ephemeral(),
        )
        .await?;
    let sweeper = rt
        .config
        .artifact_retention
        .clone()
        .map(|r| tokio::spawn(retention::sweep_every(r, stop.clone())));
    // What the retention sweep (or an operator) removed stops counting against a quota.
    let recount = rt.config.artifact_quotas.clone().map(|q| {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(QUOTA_RECOUNT_EVERY) => {}
                }
                let q = q.clone();
                let _ = tokio::task::spawn_blocking(move || q.refresh()).await;
            }
        })
    });
    let (tx, mut rx) = mpsc::channel(1);
    let readers: Vec<_> = subscriptions
        .into_iter()
        .map(|subscription| tokio::spawn(read_deliveries(subscription, tx.clone(), stop.clone())))
        .collect();
    let cancel_reader = tokio::spawn(read_deliveries(cancels, tx, stop.clone()));

    let mut intake = Intake::new(rt.clone());
    // Compute a previous run left running is followed like an attempt of this run: it takes
    // its place in the in-flight window, hears cancels, and sends heartbeats.
    for a in adopted {
        intake.adopt(a);
    }
    // Announced at once, then every PRESENCE_INTERVAL_MS: the scheduler fails tasks of a
    // backend no launcher announces.
    let mut presence = tokio::time::interval(Duration::from_millis(
        ferry_event::payload::PRESENCE_INTERVAL_MS as u64,
    ));
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = presence.tick() => {
                tokio::spawn(announce(rt.clone(), intake.running(), false));
            }
            Some(done) = intake.tasks.join_next_with_id() => intake.on_done(done),
            received = rx.recv() => match received {
                Some(Ok(delivery)) => intake.on_delivery(delivery).await,
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
    // Taking no more work: said at once, so that the scheduler does not count on this one.
    let _ = tokio::time::timeout(LEAVING_WAIT, announce(rt.clone(), intake.running(), true)).await;
    for reader in &readers {
        reader.abort();
    }
    cancel_reader.abort();
    for reader in readers {
        let _ = reader.await;
    }
    let _ = cancel_reader.await;
    if let Some(sweeper) = sweeper {
        // Stopped by `stop`; a sweep under way finishes on its blocking thread.
        let _ = sweeper.await;
    }
    if let Some(recount) = recount {
        let _ = recount.await;
    }
    // Dispatches not started go back to the broker unacknowledged.
    intake.pending.clear();
    while let Some(done) = intake.tasks.join_next_with_id().await {
        intake.on_done(done);
    }
    result
}

/// The longest a stopping launcher waits to say it leaves.
const LEAVING_WAIT: Duration = Duration::from_secs(2);

/// Publishes this launcher's presence (`launcher.presence`); a failure is logged, and the next
/// announcement tries again.
async fn announce(rt: Arc<Runtime>, running: usize, leaving: bool) {
    let name = rt.backend.name();
    let served: Vec<String> = rt
        .backend
        .serves(&rt.config.group)
        .into_iter()
        .map(|(backend, _)| backend)
        .collect();
    let mut presence = LauncherPresence {
        backend: name.to_string(),
        instance: rt.builder.source().to_string(),
        capacity: u32::try_from(rt.config.max_parallel).unwrap_or(u32::MAX),
        running: u32::try_from(running).unwrap_or(u32::MAX),
        at_ms: ferry_event::now_ms(),
        leaving,
        serves: if served == [name] { Vec::new() } else { served },
        ..LauncherPresence::default()
    };
    rt.backend.describe_presence(&mut presence);
    let event = rt.builder.instance(kind::LAUNCHER_PRESENCE, &presence);
    if let Err(e) = rt.publisher.publish_once(&[event]).await {
        tracing::warn!(error = %e, leaving, "cannot announce the launcher's presence; trying again at the next announcement");
    }
}

/// Moves deliveries from the subscription to the main loop, so that the main loop only ever
/// waits on a channel (which is safe to abandon in `select!`). After a failure it waits before
/// reading again, longer while failures go on.
async fn read_deliveries(
    mut subscription: Subscription,
    tx: mpsc::Sender<ferry_bus::Result<Delivery>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
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
        if !failed {
            backoff.reset();
        } else if !backoff.wait(&stop).await {
            return;
        }
    }
}
