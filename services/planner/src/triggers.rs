//! Trigger candidates: events on intake that are not ferry's own.
//!
//! Each trigger of each deployed flow that matches the event ([`ferry_flow::trigger`]) starts a
//! job: its inputs are filled from the event, and the flow is planned with them exactly as a
//! submission would be. The job's id is [`job_id`] of the flow, the trigger and the event's
//! `source` and `id` (the CloudEvents identity of an event), so that however often the event
//! is delivered or published, and by however many planners, it is one job. An event that
//! matches nothing is acknowledged and forgotten.

use ferry_bus::Delivery;
use ferry_event::cloudevents::{AttributesReader, Data};
use ferry_event::payload::{FlowSource, JobSubmitted, Problem, TriggeredBy};
use ferry_event::{Event, envelope};
use ferry_flow::trigger::EventFacts;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::registry::Deployed;
use crate::{Handled, Planner, outcome_event, plan_limit, plan_within, publish_outcome, settled};

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

/// Plans the job each matching trigger starts.
fn plan_matches(flows: Vec<Deployed>, event: &EventFacts, max_bytes: usize) -> Vec<Start> {
    let mut starts = Vec::new();
    for deployed in flows {
        let flow = &deployed.flow;
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
                Ok(inputs) => {
                    let submitted = JobSubmitted {
                        job_id: Some(job_id.clone()),
                        flow: FlowSource::Text(deployed.source.clone()),
                        flow_name: Some(deployed.flow_name.clone()),
                        inputs,
                    };
                    plan_within(submitted, &job_id, max_bytes)
                        .map_err(|problems| problems.into_iter().map(named).collect())
                }
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

/// Starts a job for each trigger the event matches, then acks it. Nothing is acked before every
/// job it starts is published; a redelivery plans the same jobs again under the same ids.
pub(crate) async fn handle_candidate(
    planner: &mut Planner<'_>,
    delivery: Delivery,
) -> Result<Handled, ferry_bus::Error> {
    let flows = match planner.registry.deployed().await {
        Ok(flows) => flows,
        Err(e) => {
            warn!(error = %e, "the flow registry cannot be read; the event will be retried");
            return Ok(Handled::Retry(Box::new(delivery)));
        }
    };
    let event = facts(&delivery.event);
    let matching: Vec<Deployed> = flows
        .iter()
        .filter(|d| {
            d.flow
                .triggers
                .iter()
                .any(|t| t.on.as_ref().is_some_and(|on| on.matches(&event)))
        })
        .cloned()
        .collect();
    if matching.is_empty() {
        debug!("no deployed flow's trigger matches the event");
        return settled("ack", delivery.ack().await);
    }
    let max_bytes = plan_limit(planner.bus);
    let starts = match tokio::task::spawn_blocking(move || plan_matches(matching, &event, max_bytes)).await {
        Ok(starts) => starts,
        Err(e) => {
            let reason = format!("planning the triggered jobs failed unexpectedly: {e}");
            warn!(%reason, "event set aside");
            return settled("dead-letter", delivery.dead_letter(&reason).await);
        }
    };
    for start in starts {
        info!(
            job_id = %start.job_id,
            flow = %start.trigger.flow_id,
            trigger = start.trigger.trigger,
            "trigger matched"
        );
        let trigger = start.trigger.clone();
        let event = outcome_event(
            &planner.builder,
            &start.job_id,
            start.outcome,
            Some(start.trigger),
        );
        match publish_outcome(
            &planner.builder,
            planner.bus,
            &start.job_id,
            event,
            Some(&trigger),
        )
        .await
        {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                warn!(error = %e, "publishing a triggered job failed; the event will be retried");
                return Ok(Handled::Retry(Box::new(delivery)));
            }
            Err(e) => return Err(e),
        }
    }
    settled("ack", delivery.ack().await)
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
