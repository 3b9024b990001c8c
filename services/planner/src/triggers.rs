//! Trigger candidates: events on intake that are not ferry's own.
//!
//! Each trigger of each deployed flow that matches the event ([`ferry_flow::trigger`]) starts a
//! job: its inputs are filled from the event, and the flow is planned with them exactly as a
//! submission would be. The job's id is [`job_id`] of the flow, the trigger and the event's
//! `source` and `id` (the CloudEvents identity of an event), so that however often the event
//! is delivered or published, and by however many planners, it is one job. An event that
//! matches nothing is acknowledged and forgotten.
//!
//! Candidates delivered one after another are handled together ([`handle_candidates`]): one
//! read of the registry's generation, the jobs planned from the deployed flows as this
//! instance validated them once per version ([`crate::registry::Deployed`]), every outcome
//! published in one call whose confirms are awaited together, then the events acked together.

use ferry_bus::Delivery;
use ferry_event::cloudevents::{AttributesReader, Data};
use ferry_event::payload::{Problem, TriggeredBy};
use ferry_event::{Event, envelope};
use ferry_flow::trigger::EventFacts;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::registry::Deployed;
use crate::{Handled, Planner, count, outcome_event, plan_limit, plan_valid, publish_outcome, settled};

/// The id of the job that trigger `trigger` (its place in the flow's `triggers`) of a flow
/// starts for the event with this `source` and `id`: the flow's id (at most 64 characters)
/// and 32 hex digits of a SHA-256 over all of them. A valid job id whatever the event says.
pub fn job_id(
    namespace: Option<&str>,
    flow_id: &str,
    trigger: usize,
    event_source: &str,
    event_id: &str,
) -> String {
    let mut hash = Sha256::new();
    let trigger = trigger.to_string();
    for part in [
        namespace.unwrap_or_default(),
        flow_id,
        &trigger,
        event_source,
        event_id,
    ] {
        // Each part prefixed by its length, so that no two lists of parts hash alike.
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let stem: String = flow_id.trim_start_matches('.').chars().take(64).collect();
    if stem.is_empty() {
        hex
    } else {
        format!("{stem}-{hex}")
    }
}

/// What a trigger may look at in a CloudEvent. Data is JSON when its content type says so or
/// when it reads as JSON; other text data is a string.
pub fn facts(event: &Event) -> EventFacts {
    let data = event.data().map(|d| match d {
        Data::Json(v) => v.clone(),
        Data::String(s) => serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone())),
        Data::Binary(b) => serde_json::from_slice(b).unwrap_or_else(|_| match std::str::from_utf8(b) {
            Ok(s) => serde_json::Value::String(s.to_string()),
            Err(_) => serde_json::Value::Null,
        }),
    });
    EventFacts {
        id: event.id().to_string(),
        source: event.source().to_string(),
        ty: event.ty().to_string(),
        subject: event.subject().map(str::to_string),
        time: event
            .time()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        data,
    }
}

/// A job one trigger starts: its id, what started it and its planning outcome.
struct Start {
    job_id: String,
    trigger: TriggeredBy,
    outcome: Result<crate::Planned, Vec<Problem>>,
}

/// Whether an event on intake is a trigger candidate: not one of ferry's own.
pub(crate) fn is_candidate(event: &Event) -> bool {
    !event.ty().starts_with(ferry_event::kind::PREFIX)
}

/// Whether any trigger of the deployed flows matches the event.
fn matches_any(flows: &[Deployed], event: &EventFacts) -> bool {
    flows.iter().any(|d| {
        d.flow()
            .triggers
            .iter()
            .any(|t| t.on.as_ref().is_some_and(|on| on.matches(event)))
    })
}

/// Plans the job each matching trigger starts, from the deployed flows as validated when
/// this instance read them: no flow is parsed again per event.
fn plan_matches(flows: &[Deployed], event: &EventFacts, max_bytes: usize) -> Vec<Start> {
    let mut starts = Vec::new();
    for deployed in flows {
        let flow = deployed.flow();
        for (i, trigger) in flow.triggers.iter().enumerate() {
            if !trigger.on.as_ref().is_some_and(|on| on.matches(event)) {
                continue;
            }
            let job_id = job_id(flow.namespace.as_deref(), &flow.id, i, &event.source, &event.id);
            let key = envelope::flow_key(flow.namespace.as_deref(), &flow.id);
            let named = |mut p: Problem| {
                p.message = format!(
                    "trigger {i} of flow `{key}` (version {}), event {} from {}: {}",
                    deployed.version, event.id, event.source, p.message
                );
                p
            };
            let outcome = match ferry_flow::trigger::inputs(&trigger.inputs, event) {
                Ok(inputs) => plan_valid(&deployed.valid, &job_id, &inputs, max_bytes)
                    .map_err(|problems| problems.into_iter().map(named).collect()),
                Err(message) => Err(vec![named(Problem {
                    location: None,
                    field: Some(format!("triggers[{i}].inputs")),
                    message,
                })]),
            };
            starts.push(Start {
                job_id,
                trigger: TriggeredBy {
                    namespace: flow.namespace.clone(),
                    flow_id: flow.id.clone(),
                    version: deployed.version,
                    trigger: u32::try_from(i).unwrap_or(u32::MAX),
                    event_id: event.id.clone(),
                    event_source: event.source.clone(),
                    event_type: event.ty.clone(),
                },
                outcome,
            });
        }
    }
    starts
}

/// Starts a job for each trigger each event matches, then acks the events together. The
/// events are trigger candidates delivered one after the other: the registry is read once for
/// them, their jobs are planned together off the async threads, and every job is published in
/// one call, its confirms awaited together. Nothing is acked before every job it starts is
/// published; a redelivery plans the same jobs again under the same ids.
pub(crate) async fn handle_candidates(
    planner: &mut Planner<'_>,
    deliveries: Vec<Delivery>,
) -> Result<Handled, ferry_bus::Error> {
    let flows = match planner.registry.deployed().await {
        Ok(flows) => flows,
        Err(e) => {
            warn!(error = %e, "the flow registry cannot be read; the events will be retried");
            return Ok(Handled::Retry(deliveries));
        }
    };
    // Events no trigger matches are acked with the rest; the others are planned. The
    // deliveries stay in their order, in which they are settled (or given back).
    let mut events = Vec::new();
    for delivery in &deliveries {
        let event = facts(&delivery.event);
        if matches_any(&flows, &event) {
            events.push(Some(event));
        } else {
            debug!(event_id = %event.id, event_type = %event.ty, "no deployed flow's trigger matches the event");
            events.push(None);
        }
    }
    if events.iter().all(Option::is_none) {
        return settled("ack", ferry_bus::ack_all(deliveries).await);
    }
    let max_bytes = plan_limit(planner.bus);
    let planning = tokio::task::spawn_blocking(move || {
        events
            .iter()
            .map(|event| {
                let event = event.as_ref()?;
                // A defect planning one event sets that event aside, not its neighbours.
                let planned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    plan_matches(&flows, event, max_bytes)
                }));
                Some(planned.map_err(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    format!("planning the triggered jobs failed unexpectedly: {what}")
                }))
            })
            .collect::<Vec<_>>()
    });
    let planned = match planning.await {
        Ok(planned) => planned,
        // Not a panic (each is caught): the runtime is shutting down. They come again.
        Err(e) => {
            warn!(error = %e, "planning the triggered jobs was interrupted; the events will be retried");
            return Ok(Handled::Retry(deliveries));
        }
    };
    let mut acked = Vec::with_capacity(deliveries.len());
    // Each job's outcome event, and its id and trigger beside it.
    let mut outcomes: Vec<Event> = Vec::new();
    let mut jobs: Vec<(String, TriggeredBy)> = Vec::new();
    for (delivery, starts) in deliveries.into_iter().zip(planned) {
        let starts = match starts {
            None => Vec::new(),
            Some(Ok(starts)) => starts,
            Some(Err(reason)) => {
                warn!(event_id = %delivery.event.id(), %reason, "event set aside");
                settled("dead-letter", delivery.dead_letter(&reason).await)?;
                continue;
            }
        };
        for start in starts {
            info!(
                job_id = %start.job_id,
                flow = %start.trigger.flow_id,
                trigger = start.trigger.trigger,
                event_id = %start.trigger.event_id,
                "trigger matched"
            );
            let trigger = start.trigger.clone();
            let event = outcome_event(
                &planner.builder,
                &start.job_id,
                start.outcome,
                Some(start.trigger),
            );
            outcomes.push(event);
            jobs.push((start.job_id, trigger));
        }
        acked.push(delivery);
    }
    match publish_all(planner, &outcomes, &jobs).await {
        Ok(()) => settled("ack", ferry_bus::ack_all(acked).await),
        Err(e) if e.is_transient() => {
            warn!(error = %e, "publishing triggered jobs failed; the events will be retried");
            Ok(Handled::Retry(acked))
        }
        Err(e) => Err(e),
    }
}

/// Publishes the jobs' `job.planned` or `job.rejected` events in one call. When the bus
/// refuses one as too large, each is published on its own, a too-large one replaced by a
/// rejection that says so ([`publish_outcome`]); publishing one again is harmless, it is the
/// same job.
async fn publish_all(
    planner: &Planner<'_>,
    events: &[Event],
    jobs: &[(String, TriggeredBy)],
) -> Result<(), ferry_bus::Error> {
    if events.is_empty() {
        return Ok(());
    }
    match planner.bus.publish(events).await {
        Ok(()) => {
            events.iter().for_each(count);
            Ok(())
        }
        Err(ferry_bus::Error::TooLarge { .. }) => {
            for (event, (job_id, trigger)) in events.iter().zip(jobs) {
                publish_outcome(
                    &planner.builder,
                    planner.bus,
                    job_id,
                    event.clone(),
                    Some(trigger),
                )
                .await?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_valid_and_differ_by_every_part() {
        let base = job_id(Some("ns"), "nightly", 0, "s3://landing", "e-1");
        assert!(base.starts_with("nightly-"), "{base}");
        assert_eq!(ferry_flow::check_job_id(&base), Ok(()));
        assert_eq!(base, job_id(Some("ns"), "nightly", 0, "s3://landing", "e-1"));
        for other in [
            job_id(None, "nightly", 0, "s3://landing", "e-1"),
            job_id(Some("ns"), "nightly2", 0, "s3://landing", "e-1"),
            job_id(Some("ns"), "nightly", 1, "s3://landing", "e-1"),
            job_id(Some("ns"), "nightly", 0, "s3://landing2", "e-1"),
            job_id(Some("ns"), "nightly", 0, "s3://landing", "e-2"),
            // The parts are not simply joined.
            job_id(Some("ns"), "nightly", 0, "s3://landinge", "-1"),
        ] {
            assert_ne!(base, other);
        }
        let long = job_id(None, &"x".repeat(128), 0, "s", "\u{1F600}/../..");
        assert_eq!(ferry_flow::check_job_id(&long), Ok(()));
        assert_eq!(
            ferry_flow::check_job_id(&job_id(None, ".hidden", 0, "s", "i")),
            Ok(())
        );
    }
}
