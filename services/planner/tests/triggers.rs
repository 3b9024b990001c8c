//! Deployed flows and their triggers, on the in-memory bus: deploy, match, start, reject,
//! undeploy, and a registry that outlives the planner.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::cloudevents::{EventBuilder as _, EventBuilderV10};
use ferry_event::payload::{
    FlowDeploy, FlowDeployed, FlowRejected, FlowSource, FlowUndeploy, FlowUndeployed, JobPlanned,
    JobRejected, JobSubmitted,
};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_planner::{Config, GROUP, run, submission_event};
use ferry_runtime::CancellationToken;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const FLOW: &str = r#"id: ingest
namespace: landing
inputs:
  file: { type: string, required: true }
  rows: { type: integer, required: true }
triggers:
  - on:
      type: com.acme.file.uploaded
      source: { prefix: "s3://landing/" }
      subject: "*.csv"
      data: { kind: report }
    inputs:
      file: "{{ event.source }}/{{ event.subject }}"
      rows: "{{ event.data.rows }}"
tasks:
  - id: load
    runner: local
    command: [echo, '{{ inputs.file }}', '{{ inputs.rows }}']
"#;

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    bus: MemoryBus,
    out: Subscription,
    shutdown: CancellationToken,
    planner: JoinHandle<ferry_planner::Result<()>>,
}

async fn start(bus: MemoryBus, db_url: &str) -> Result<Harness> {
    drop(bus.subscribe(Subscribe::new(GROUP, [Topic::Intake])).await?);
    let out = bus
        .subscribe(Subscribe::new("observer", [Topic::Control, Topic::Lifecycle]))
        .await?;
    let shutdown = CancellationToken::new();
    let config = Config {
        source: "ferry/planner/test".into(),
        prefetch: 4,
        db_url: db_url.into(),
        ..Config::default()
    };
    let planner = tokio::spawn(run(
        config,
        Arc::new(bus.clone()) as Arc<dyn Bus>,
        shutdown.clone(),
    ));
    Ok(Harness {
        bus,
        out,
        shutdown,
        planner,
    })
}

impl Harness {
    async fn next_out(&mut self) -> Result<Event> {
        let d = tokio::time::timeout(WAIT, self.out.next())
            .await
            .context("no event from the planner in time")?
            .context("bus closed")??;
        let event = d.event.clone();
        d.ack().await?;
        Ok(event)
    }

    async fn publish(&self, events: &[Event]) -> Result<()> {
        self.bus.publish(events).await?;
        Ok(())
    }

    /// Publishes a submission of a one-task flow and waits for its plan: every event published
    /// before it has been handled by then, and whatever it published came first.
    async fn barrier(&mut self, name: &str) -> Result<Vec<Event>> {
        let sub = JobSubmitted {
            job_id: Some(name.into()),
            flow: FlowSource::Text("id: marker\ntasks: [{id: a, runner: local, command: [echo]}]\n".into()),
            flow_name: None,
            inputs: Default::default(),
        };
        self.publish(&[submission_event("test", &sub)]).await?;
        let mut before = Vec::new();
        loop {
            let e = self.next_out().await?;
            if e.ty() == kind::JOB_PLANNED && ferry_event::envelope::job_of(&e).as_deref() == Some(name) {
                return Ok(before);
            }
            before.push(e);
        }
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.planner)
            .await
            .context("planner did not stop")???;
        Ok(())
    }
}

fn deploy_event(flow: &str) -> Event {
    EventBuilder::new("test").flow(
        kind::FLOW_DEPLOY,
        "landing/ingest",
        &FlowDeploy {
            flow: FlowSource::Text(flow.into()),
            flow_name: Some("ingest.yaml".into()),
        },
    )
}

fn undeploy_event() -> Event {
    EventBuilder::new("test").flow(
        kind::FLOW_UNDEPLOY,
        "landing/ingest",
        &FlowUndeploy {
            namespace: Some("landing".into()),
            flow_id: "ingest".into(),
        },
    )
}

/// A plain CloudEvent, as any outside system would publish it.
fn upload(id: &str, source: &str, subject: &str, data: Value) -> Result<Event> {
    Ok(EventBuilderV10::new()
        .id(id)
        .ty("com.acme.file.uploaded")
        .source(source)
        .subject(subject)
        .data("application/json", data)
        .build()?)
}

fn temp_db() -> Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("planner.db").display());
    Ok((dir, url))
}

#[tokio::test]
async fn a_matching_event_starts_one_job_with_inputs_from_the_event() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut h = start(MemoryBus::new(), &db).await?;
    h.publish(&[deploy_event(FLOW)]).await?;
    let deployed = h.next_out().await?;
    ensure!(deployed.ty() == kind::FLOW_DEPLOYED, "{deployed}");
    let d: FlowDeployed = ferry_event::decode(&deployed)?;
    assert_eq!(
        (d.namespace.as_deref(), d.flow_id.as_str(), d.version),
        (Some("landing"), "ingest", 1)
    );
    assert_eq!(d.triggers.len(), 1);
    assert_eq!(deployed.subject(), Some("landing/ingest"));

    let event = upload(
        "up-1",
        "s3://landing/2026",
        "day.csv",
        json!({"kind": "report", "rows": 42}),
    )?;
    // Published twice, as a redelivery or a second publisher would: the same job both times.
    h.publish(&[event.clone(), event]).await?;
    let first = h.next_out().await?;
    let second = h.next_out().await?;
    for e in [&first, &second] {
        ensure!(e.ty() == kind::JOB_PLANNED, "{e}");
    }
    let planned: JobPlanned = ferry_event::decode(&first)?;
    let again: JobPlanned = ferry_event::decode(&second)?;
    assert_eq!(planned.job_id, again.job_id);
    assert_eq!(
        planned.job_id,
        ferry_planner::triggers::job_id(Some("landing"), "ingest", 0, "s3://landing/2026", "up-1")
    );
    assert_eq!(planned.namespace.as_deref(), Some("landing"));
    assert_eq!(
        planned.inputs.get("file"),
        Some(&json!("s3://landing/2026/day.csv"))
    );
    assert_eq!(planned.inputs.get("rows"), Some(&json!(42)));
    assert_eq!(
        planned.tasks[0].command[1].as_text().as_deref(),
        Some("s3://landing/2026/day.csv")
    );

    // Another event id is another job.
    let other = upload(
        "up-2",
        "s3://landing/2026",
        "day.csv",
        json!({"kind": "report", "rows": 1}),
    )?;
    h.publish(&[other]).await?;
    let third: JobPlanned = ferry_event::decode(&h.next_out().await?)?;
    assert_ne!(third.job_id, planned.job_id);
    h.stop().await
}

#[tokio::test]
async fn events_that_do_not_match_start_nothing() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut h = start(MemoryBus::new(), &db).await?;
    h.publish(&[deploy_event(FLOW)]).await?;
    ensure!(h.next_out().await?.ty() == kind::FLOW_DEPLOYED);
    let good = json!({"kind": "report", "rows": 1});
    let misses = [
        // Another source, subject, data field and type.
        upload("m-1", "s3://other/x", "day.csv", good.clone())?,
        upload("m-2", "s3://landing/x", "day.json", good.clone())?,
        upload(
            "m-3",
            "s3://landing/x",
            "day.csv",
            json!({"kind": "audit", "rows": 1}),
        )?,
        upload("m-4", "s3://landing/x", "day.csv", json!({"rows": 1}))?,
        EventBuilderV10::new()
            .id("m-5")
            .ty("com.acme.file.deleted")
            .source("s3://landing/x")
            .subject("day.csv")
            .data("application/json", good)
            .build()?,
    ];
    h.publish(&misses).await?;
    let published = h.barrier("marker-1").await?;
    assert!(
        published.is_empty(),
        "non-matching events started jobs: {published:?}"
    );
    h.stop().await
}

#[tokio::test]
async fn an_event_whose_inputs_fail_is_rejected_naming_the_flow_and_nothing_else_is_affected() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut h = start(MemoryBus::new(), &db).await?;
    h.publish(&[deploy_event(FLOW)]).await?;
    ensure!(h.next_out().await?.ty() == kind::FLOW_DEPLOYED);
    // `rows` is not an integer; then `rows` is missing; then a good one.
    h.publish(&[
        upload(
            "bad-1",
            "s3://landing/a",
            "a.csv",
            json!({"kind": "report", "rows": "many"}),
        )?,
        upload("bad-2", "s3://landing/a", "a.csv", json!({"kind": "report"}))?,
        upload(
            "ok-1",
            "s3://landing/a",
            "a.csv",
            json!({"kind": "report", "rows": 3}),
        )?,
    ])
    .await?;
    for (event_id, expected) in [("bad-1", "rows"), ("bad-2", "the event has no `data.rows`")] {
        let e = h.next_out().await?;
        ensure!(e.ty() == kind::JOB_REJECTED, "{e}");
        let r: JobRejected = ferry_event::decode(&e)?;
        let t = r.trigger.as_ref().context("the rejection names the trigger")?;
        assert_eq!(
            (t.flow_id.as_str(), t.namespace.as_deref(), t.version, t.trigger),
            ("ingest", Some("landing"), 1, 0)
        );
        assert_eq!(
            (t.event_id.as_str(), t.event_source.as_str()),
            (event_id, "s3://landing/a")
        );
        let message = &r.problems[0].message;
        assert!(
            message.contains("flow `landing/ingest`") && message.contains(expected),
            "{message}"
        );
    }
    let ok = h.next_out().await?;
    ensure!(ok.ty() == kind::JOB_PLANNED, "{ok}");
    h.stop().await
}

#[tokio::test]
async fn deploys_version_undeploy_stops_triggers_and_a_redelivered_request_changes_nothing() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut h = start(MemoryBus::new(), &db).await?;
    let first = deploy_event(FLOW);
    h.publish(std::slice::from_ref(&first)).await?;
    let d1: FlowDeployed = ferry_event::decode(&h.next_out().await?)?;
    h.publish(&[deploy_event(FLOW)]).await?;
    let d2: FlowDeployed = ferry_event::decode(&h.next_out().await?)?;
    assert_eq!((d1.version, d2.version), (1, 2));
    // The first request again: its recorded outcome, not a third version.
    h.publish(&[first]).await?;
    let again: FlowDeployed = ferry_event::decode(&h.next_out().await?)?;
    assert_eq!(again, d1);

    h.publish(&[undeploy_event()]).await?;
    let e = h.next_out().await?;
    ensure!(e.ty() == kind::FLOW_UNDEPLOYED, "{e}");
    let u: FlowUndeployed = ferry_event::decode(&e)?;
    assert_eq!(u.version, 2);
    h.publish(&[upload(
        "after",
        "s3://landing/a",
        "a.csv",
        json!({"kind": "report", "rows": 3}),
    )?])
    .await?;
    let published = h.barrier("marker-2").await?;
    assert!(
        published.is_empty(),
        "an undeployed flow started a job: {published:?}"
    );

    // Undeploying what is not deployed is rejected, saying so.
    h.publish(&[undeploy_event()]).await?;
    let e = h.next_out().await?;
    ensure!(e.ty() == kind::FLOW_REJECTED, "{e}");
    let r: FlowRejected = ferry_event::decode(&e)?;
    assert!(r.problems[0].message.contains("is not deployed"), "{r:?}");

    // Deployed again, it continues its versions.
    h.publish(&[deploy_event(FLOW)]).await?;
    let d3: FlowDeployed = ferry_event::decode(&h.next_out().await?)?;
    assert_eq!(d3.version, 3);
    h.stop().await
}

#[tokio::test]
async fn an_invalid_flow_is_not_deployed() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut h = start(MemoryBus::new(), &db).await?;
    let bad = FLOW.replace(
        "rows: \"{{ event.data.rows }}\"",
        "lines: \"{{ event.data.rows }}\"",
    );
    h.publish(&[deploy_event(&bad)]).await?;
    let e = h.next_out().await?;
    ensure!(e.ty() == kind::FLOW_REJECTED, "{e}");
    let r: FlowRejected = ferry_event::decode(&e)?;
    assert_eq!(r.flow_id.as_deref(), Some("ingest"));
    assert!(
        r.problems
            .iter()
            .any(|p| p.message.contains("`lines`, which the flow does not declare")),
        "{r:?}"
    );
    h.publish(&[upload(
        "x",
        "s3://landing/a",
        "a.csv",
        json!({"kind": "report", "rows": 3}),
    )?])
    .await?;
    let published = h.barrier("marker-3").await?;
    assert!(published.is_empty(), "{published:?}");
    h.stop().await
}

#[tokio::test]
async fn the_registry_outlives_the_planner_and_is_shared_by_planners() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let bus = MemoryBus::new();
    let mut h = start(bus.clone(), &db).await?;
    h.publish(&[deploy_event(FLOW)]).await?;
    ensure!(h.next_out().await?.ty() == kind::FLOW_DEPLOYED);
    h.stop().await?;

    // A new planner on the same database knows the flow.
    let mut h = start(MemoryBus::new(), &db).await?;
    h.publish(&[upload(
        "later",
        "s3://landing/a",
        "a.csv",
        json!({"kind": "report", "rows": 3}),
    )?])
    .await?;
    let e = h.next_out().await?;
    ensure!(e.ty() == kind::JOB_PLANNED, "{e}");

    // A change made by another planner on the database is seen by this one.
    let mut other = start(MemoryBus::new(), &db).await?;
    other.publish(&[undeploy_event()]).await?;
    ensure!(other.next_out().await?.ty() == kind::FLOW_UNDEPLOYED);
    other.stop().await?;
    h.publish(&[upload(
        "gone",
        "s3://landing/a",
        "a.csv",
        json!({"kind": "report", "rows": 3}),
    )?])
    .await?;
    let published = h.barrier("marker-4").await?;
    assert!(published.is_empty(), "{published:?}");
    h.stop().await
}
