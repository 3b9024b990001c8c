//! Dispatch and cancel intake: which deliveries start an attempt, which are duplicates, which
//! wait for room in the in-flight window.
//!
//! At most [`Config::max_parallel`](crate::Config::max_parallel) attempts run at once. The
//! subscription's prefetch window is the same size and a dispatch is acked once its start is
//! confirmed, so while the window is full the consumer still reads (and so still receives
//! cancels) but the dispatches it reads wait, unacknowledged, for room; once `max_parallel` of
//! them wait it reads nothing more. A cancel for an attempt this instance does not know records
//! a tombstone, so that a dispatch arriving later does not start it.
//!
//! One attempt of a task at a time: the scheduler dispatches a task's next attempt only once
//! it has given up on the last (a lapsed lease, say), and sends that one a cancel with it. The
//! cancel and the dispatch come on two subscriptions that nothing orders, so a dispatch of a
//! task whose earlier attempt still runs here stops that attempt first, and starts once it has
//! ended: the two never overlap on one launcher.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use ferry_bus::Delivery;
use ferry_event::payload::{Outcome, TaskCancel, TaskDispatched};
use ferry_event::{AttributesReader, kind};
use ferry_runtime::metrics;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::journal::{self, Status, check_id};
use crate::runtime::Runtime;
use crate::{attempt, reconcile};

/// An attempt this launcher is busy with.
struct Entry {
    /// Set for a running attempt: sends the error a cancel reports.
    cancel: Option<watch::Sender<Option<String>>>,
    /// Whether it holds one of the `max_parallel` places in the window (reports of attempts
    /// that never start do not).
    counted: bool,
    /// The job and task it is an attempt of.
    task: (String, String),
}

/// What stops an attempt that a later attempt of its task supersedes.
const SUPERSEDED: &str = "a later attempt of the task was dispatched: the scheduler gave up on this one";

/// Dispatch and cancel intake: the in-flight window, idempotency per attempt id, tombstones.
pub(crate) struct Intake {
    rt: Arc<Runtime>,
    running: usize,
    entries: HashMap<String, Entry>,
    pub(crate) pending: VecDeque<(TaskDispatched, Delivery)>,
    pub(crate) tasks: JoinSet<()>,
    task_attempts: HashMap<tokio::task::Id, String>,
}

impl Intake {
    /// Attempts running now (adopted ones included).
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    pub(crate) fn new(rt: Arc<Runtime>) -> Self {
        Intake {
            rt,
            running: 0,
            entries: HashMap::new(),
            pending: VecDeque::new(),
            tasks: JoinSet::new(),
            task_attempts: HashMap::new(),
        }
    }

    pub(crate) async fn on_delivery(&mut self, delivery: Delivery) {
        let ty = delivery.event.ty().to_string();
        match ty.as_str() {
            kind::TASK_DISPATCHED => self.on_dispatch(delivery).await,
            kind::TASK_CANCEL => self.on_cancel(delivery).await,
            other => {
                let reason = format!(
                    "the {} launcher handles {} and {}, not {other}",
                    self.rt.backend.name(),
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
        if let Err(why) = check_id(&d.attempt_id) {
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
        match self.rt.journal.status(&d.attempt_id) {
            Status::Finished => {
                span.in_scope(|| tracing::info!("duplicate dispatch of a finished attempt; acking it"));
                ack(delivery).await;
            }
            Status::Running(record) => {
                span.in_scope(|| {
                    tracing::warn!(
                        compute = %record.compute.name,
                        "duplicate dispatch of an attempt whose compute is in the journal; acking it"
                    )
                });
                ack(delivery).await;
            }
            Status::ResultPending(report) => {
                let id = d.attempt_id.clone();
                let task = (d.job_id.clone(), d.task_id.clone());
                ferry_runtime::trace::follow(&span, &delivery.event);
                let fut = attempt::settle_pending(self.rt.clone(), *report, Some(delivery));
                self.spawn(id, task, None, false, fut, span);
            }
            Status::Tombstone(error) => {
                span.in_scope(|| tracing::info!("attempt was cancelled before its dispatch arrived"));
                let report = attempt::unstarted(&d, Outcome::Cancelled, error);
                let task = (d.job_id.clone(), d.task_id.clone());
                ferry_runtime::trace::follow(&span, &delivery.event);
                let fut = attempt::settle_unstarted(self.rt.clone(), report, delivery);
                self.spawn(d.attempt_id.clone(), task, None, false, fut, span);
            }
            Status::Fresh => {
                self.pending.push_back((d, delivery));
                self.fill_window();
            }
        }
    }

    async fn on_cancel(&mut self, delivery: Delivery) {
        let c: TaskCancel = match ferry_event::decode(&delivery.event) {
            Ok(c) => c,
            Err(e) => return dead_letter(delivery, &e.to_string()).await,
        };
        if let Err(why) = check_id(&c.attempt_id) {
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
        ferry_runtime::trace::follow(&span, &delivery.event);
        // A cancel addressed to another launcher (fencing one that took up an attempt already
        // running elsewhere) is not this one's to act on, nor to remember as a tombstone.
        if let Some(to) = ferry_event::envelope::launcher_of(&delivery.event)
            && Some(to.as_str()) != self.rt.builder.launcher()
        {
            span.in_scope(|| tracing::debug!(launcher = %to, "a cancel for another launcher ignored"));
            return ack(delivery).await;
        }
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
            self.measure();
            span.in_scope(|| {
                tracing::info!("cancelling an attempt waiting for room in the in-flight window")
            });
            let report = attempt::unstarted(&d, Outcome::Cancelled, error);
            let task = (d.job_id.clone(), d.task_id.clone());
            let fut = attempt::settle_unstarted(self.rt.clone(), report, dispatch);
            self.spawn(d.attempt_id.clone(), task, None, false, fut, span);
            return ack(delivery).await;
        }
        match self.rt.journal.status(&c.attempt_id) {
            Status::Fresh | Status::Tombstone(_) => {
                match self
                    .rt
                    .journal
                    .record(&c.attempt_id, journal::Entry::Cancelled { reason: error })
                {
                    Ok(()) => {
                        span.in_scope(|| tracing::info!("cancel arrived before the dispatch; recorded it"));
                        ack(delivery).await;
                    }
                    Err(e) => {
                        let reason = format!(
                            "cannot record the cancel of attempt {} in {}: {e}",
                            c.attempt_id,
                            self.rt.journal.path().display()
                        );
                        dead_letter(delivery, &reason).await;
                    }
                }
            }
            _ => ack(delivery).await,
        }
    }

    /// Starts waiting dispatches while the in-flight window has room.
    /// Follows compute a previous run left running ([`reconcile::follow_adopted`]).
    pub(crate) fn adopt(&mut self, adopted: reconcile::Adopted) {
        let r = &adopted.record;
        let task = (r.job_id.clone(), r.task_id.clone());
        let span = tracing::info_span!(
            "attempt",
            job_id = %r.job_id,
            task_id = %r.task_id,
            attempt_id = %r.attempt_id,
            attempt = r.attempt
        );
        let id = r.attempt_id.clone();
        let (tx, rx) = watch::channel(None);
        let fut = reconcile::follow_adopted(self.rt.clone(), adopted, rx);
        self.spawn(id, task, Some(tx), true, fut, span);
    }

    /// Starts waiting dispatches, in order, while the in-flight window has room; one whose
    /// task has an earlier attempt still running here stops that attempt and waits for it.
    fn fill_window(&mut self) {
        let mut i = 0;
        while i < self.pending.len()
            && self.running < self.rt.config.max_parallel
            && !self.rt.stop.is_cancelled()
        {
            let d = &self.pending[i].0;
            let earlier = self
                .entries
                .values()
                .find(|e| e.cancel.is_some() && e.task.0 == d.job_id && e.task.1 == d.task_id);
            if let Some(e) = earlier {
                if let Some(tx) = &e.cancel
                    && tx.borrow().is_none()
                {
                    attempt_span(d).in_scope(|| {
                        tracing::info!("an earlier attempt of the task still runs here; stopping it first")
                    });
                    tx.send_replace(Some(SUPERSEDED.to_string()));
                }
                i += 1;
                continue;
            }
            let Some((d, delivery)) = self.pending.remove(i) else {
                break;
            };
            let (tx, rx) = watch::channel(None);
            let span = attempt_span(&d);
            ferry_runtime::trace::follow(&span, &delivery.event);
            let id = d.attempt_id.clone();
            let task = (d.job_id.clone(), d.task_id.clone());
            let fut = attempt::run(self.rt.clone(), d, delivery, rx);
            self.spawn(id, task, Some(tx), true, fut, span);
        }
        self.measure();
    }

    /// Attempts in flight and queued, in the metrics.
    fn measure(&self) {
        metrics::attempts(self.rt.backend.name(), self.running, self.pending.len());
    }

    fn spawn(
        &mut self,
        attempt_id: String,
        task: (String, String),
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
        self.entries.insert(
            attempt_id,
            Entry {
                cancel,
                counted,
                task,
            },
        );
    }

    pub(crate) fn on_done(
        &mut self,
        done: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
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
        self.fill_window();
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
