//! Batch's job state changes as hints: a job created with a Pub/Sub topic in its
//! `notifications` (type `JOB_STATE_CHANGED`) has each of its state changes published there, with
//! the job's name in the `JobName` attribute; one task pulls the launcher's subscription of that
//! topic and hands the names to the [`Poller`], which reads those jobs at once instead of at its
//! next listing. `jobs.get` stays the truth: a notification is never taken for a job's state, a
//! lost or late one only leaves the job to the poller's interval, and a duplicate costs one
//! more read.
//!
//! Every message pulled is acknowledged once read, whatever it holds: a hint is worth nothing
//! later, and one that cannot be read would otherwise come back for ever.

use std::sync::Arc;
use std::time::Duration;

use ferry_runtime::Backoff;
use tokio_util::sync::CancellationToken;

use crate::google::Google;
use crate::poller::Poller;

/// The attribute Batch names the job in.
pub const JOB_NAME: &str = "JobName";

/// The most messages one pull takes.
const PULL_MAX: u32 = 100;

/// Pulls `subscription` (`projects/P/subscriptions/S`) until `stop`, hinting `poller` with
/// every job named. A subscription that cannot be read is tried again with a growing wait (the
/// poller goes on at its interval meanwhile).
pub fn listen(google: Google, subscription: String, poller: Arc<Poller>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).jittered();
        tracing::info!(subscription = %subscription, "reading Google Batch job state changes from Pub/Sub");
        loop {
            let pulled = tokio::select! {
                _ = stop.cancelled() => return,
                r = google.pull(&subscription, PULL_MAX) => r,
            };
            let messages = match pulled {
                Ok(m) => {
                    backoff.reset();
                    m
                }
                Err(e) => {
                    tracing::warn!(subscription = %subscription, error = %e, "cannot pull Google Batch's job state changes; the poller's interval decides meanwhile");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            let hinted = poller.hint(
                messages
                    .iter()
                    .filter_map(|(_, a)| a.get(JOB_NAME).map(String::as_str)),
            );
            tracing::debug!(
                received = messages.len(),
                hinted,
                "Google Batch job state changes"
            );
            let ids: Vec<String> = messages.into_iter().map(|(id, _)| id).collect();
            if let Err(e) = google.acknowledge(&subscription, &ids).await {
                tracing::warn!(subscription = %subscription, error = %e, "cannot acknowledge Google Batch's job state changes; they come again");
            }
        }
    });
}
