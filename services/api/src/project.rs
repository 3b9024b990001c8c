//! Building the read model from the control and lifecycle topics.
//!
//! Deliveries are taken in batches; each batch is applied in one transaction (which records the
//! event ids in the inbox) and acked only after the commit. An event whose data cannot be read
//! is dead-lettered after the commit, with the reason. When the database fails the batch is
//! held and applied again after a backoff; nothing is acked that is not applied.

use std::time::Duration;

use ferry_bus::{Delivery, Subscription};
use ferry_event::{AttributesReader, Event};
use ferry_runtime::{Backoff, CancellationToken};
use tokio::sync::watch;
use tracing::{Instrument as _, debug, info, warn};

use crate::store::{Applied, ReadModel};
use crate::{Config, Error, Result};

/// Waits while the bus or the database fails: the first, doubling up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often old inbox entries are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Applies deliveries until `shutdown` is cancelled or the bus closes.
pub(crate) async fn project(
    config: &Config,
    model: ReadModel,
    mut sub: Subscription,
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    let mut pruned_at = tokio::time::Instant::now();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = sub.next_batch_within(config.batch_max.max(1), config.batch_linger) => next,
        };
        let batch = match next {
            None | Some(Err(ferry_bus::Error::Closed)) => break,
            Some(Ok(batch)) => batch,
            Some(Err(e)) if e.is_transient() => {
                warn!(error = %e, "receiving from the bus failed; retrying");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
            Some(Err(e)) => return Err(e.into()),
        };
        // Deliveries are not `Sync`: apply copies of their events.
        let events: Vec<Event> = batch.iter().map(|d| d.event.clone()).collect();
        // With traces exported: a span per event, and the batch's transaction under the first.
        let spans: Vec<tracing::Span> = events
            .iter()
            .filter_map(ferry_runtime::trace::event_span)
            .collect();
        let transaction = tracing::info_span!("db.transaction", events = events.len());
        ferry_runtime::trace::batch(&transaction, &spans);
        let applied = apply(&model, &events, &shutdown, &mut backoff)
            .instrument(transaction)
            .await;
        let Some(applied) = applied else {
            break; // shutting down: the unacked batch goes back to the bus
        };
        settle(batch, applied).await?;
        changed.send_modify(|n| *n = n.wrapping_add(1));
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = tokio::time::Instant::now();
            let cutoff =
                ferry_event::now_ms() - i64::try_from(config.inbox_retention.as_millis()).unwrap_or(i64::MAX);
            match model.prune_inbox(cutoff).await {
                Ok(n) => debug!(removed = n, "inbox pruned"),
                Err(e) => warn!(error = %e, "pruning the inbox failed; trying again later"),
            }
        }
    }
    info!("read model stopped");
    Ok(())
}

/// Applies a batch, retrying while the database fails; `None` when shutdown came first.
async fn apply(
    model: &ReadModel,
    events: &[Event],
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Option<Vec<Applied>> {
    let events: Vec<&Event> = events.iter().collect();
    loop {
        match model.apply(&events).await {
            Ok(applied) => {
                backoff.reset();
                debug!(events = events.len(), "batch applied");
                return Some(applied);
            }
            Err(e) => {
                warn!(error = %e, events = events.len(), "applying a batch failed; retrying");
                if !backoff.wait(shutdown).await {
                    return None;
                }
            }
        }
    }
}

async fn settle(batch: Vec<Delivery>, applied: Vec<Applied>) -> Result<()> {
    let mut done = Vec::with_capacity(batch.len());
    for (d, a) in batch.into_iter().zip(applied) {
        match a {
            Applied::Done => done.push(d),
            Applied::Invalid(reason) => {
                warn!(event_id = %d.event.id(), event_type = %d.event.ty(), %reason, "unreadable event");
                settled(d.dead_letter(&reason).await)?;
            }
        }
    }
    settled(ferry_bus::ack_all(done).await)
}

/// What settling a delivery that is applied already came to: an error only when the bus can
/// never work.
fn settled(result: ferry_bus::Result<()>) -> Result<()> {
    match result {
        Ok(()) | Err(ferry_bus::Error::Closed) => Ok(()),
        Err(e) if e.is_transient() => {
            // Applied already: a redelivery is skipped by the inbox.
            warn!(error = %e, "acknowledging deliveries failed; they will be redelivered and skipped");
            Ok(())
        }
        Err(e) => Err(Error::Bus(e)),
    }
}
