//! Jobs started by events: a flow with a trigger is deployed (`flow.deploy` on intake, then
//! `flow.deployed` awaited), and each plain CloudEvent published afterwards starts one
//! single-task job of it. The job id a trigger gives an event is known beforehand
//! ([`ferry_planner::triggers::job_id`]), so the deployment run times each job from its
//! event's publish, as it times a submission's.

use anyhow::{Context, Result, bail};
use ferry_bus::{Bus, Subscription};
use ferry_event::cloudevents::{EventBuilder as _, EventBuilderV10};
use ferry_event::payload::{FlowDeploy, FlowSource};
use ferry_event::{AttributesReader, Event, EventBuilder, kind};
use serde_json::json;

const FLOW: &str = "loadtest-trigger";
const TYPE: &str = "dev.loadtest.tick";
const SOURCE: &str = "ferry-loadtest/trigger";

/// The flow: a trigger on [`TYPE`] giving `n` from the event's data, one task running `command`.
fn flow(command: &str) -> String {
    format!(
        "id: {FLOW}\n\
         inputs:\n  n: {{ type: integer, required: true }}\n\
         triggers:\n  - on: {{ type: {TYPE} }}\n    inputs: {{ n: \"{{{{ event.data.n }}}}\" }}\n\
         tasks:\n  - {{ id: t, runner: local, command: [{}] }}\n",
        serde_json::to_string(command).expect("a string serializes")
    )
}

/// Deploys the flow and waits, on `watch` (which sees the lifecycle topic), until it is.
pub async fn deploy(bus: &dyn Bus, watch: &mut Subscription, command: &str) -> Result<()> {
    let deploy = EventBuilder::new("ferry/loadtest").flow(
        kind::FLOW_DEPLOY,
        FLOW,
        &FlowDeploy {
            flow: FlowSource::Text(flow(command)),
            flow_name: Some("loadtest-trigger.yaml".into()),
        },
    );
    bus.publish(&[deploy]).await.context("publishing flow.deploy")?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let batch = tokio::time::timeout_at(deadline, watch.next_batch(4096))
            .await
            .context("the flow was not deployed within a minute")?
            .context("the bus closed")??;
        let mut deployed = false;
        for d in &batch {
            match d.event.ty() {
                kind::FLOW_DEPLOYED => deployed = true,
                kind::FLOW_REJECTED => bail!("the planner rejected the flow: {:?}", d.event.data()),
                _ => {}
            }
        }
        ferry_bus::ack_all(batch).await?;
        if deployed {
            return Ok(());
        }
    }
}

/// `n` plain CloudEvents matching the trigger, each with the job it starts.
pub fn events(n: usize) -> Vec<(String, Event)> {
    let run = &ferry_event::new_id()[..8];
    (0..n)
        .map(|i| {
            let id = format!("{run}-{i}");
            let job = ferry_planner::triggers::job_id(None, FLOW, 0, SOURCE, &id);
            let event = EventBuilderV10::new()
                .id(id)
                .source(SOURCE)
                .ty(TYPE)
                .time(chrono::Utc::now())
                .data("application/json", json!({ "n": i }))
                .build()
                .expect("a valid event");
            (job, event)
        })
        .collect()
}
