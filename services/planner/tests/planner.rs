//! The planner on the in-memory bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::cloudevents::{Data, EventBuilder as _, EventBuilderV10};
use ferry_event::payload::{FlowSource, JobPlanned, JobRejected, JobSubmitted};
use ferry_event::template::Part;
use ferry_event::{AttributesReader, Event, Topic, kind};
use ferry_planner::{Config, GROUP, run, submission_event};
use ferry_runtime::CancellationToken;
use serde_json::{Map, json};
use tokio::task::JoinHandle;

const FLOW: &str = "id: greet
inputs:
  who: { type: string, required: true }
  times: { type: integer, default: 1 }
tasks:
  - id: hello
    runner: local
    command: [echo, 'hello {{ inputs.who }}', '{{ inputs.times }}']
";

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    bus: MemoryBus,
    out: Subscription,
    shutdown: CancellationToken,
    planner: JoinHandle<ferry_planner::Result<()>>,
}

async fn start_on(bus: MemoryBus, dyn_bus: Arc<dyn Bus>) -> Result<Harness> {
    // The planner's queue exists before anything is published, as a declared broker queue would.
    drop(bus.subscribe(Subscribe::new(GROUP, [Topic::Intake])).await?);
    let out = bus
        .subscribe(Subscribe::new("observer", [Topic::Control, Topic::Lifecycle]))
        .await?;
    let shutdown = CancellationToken::new();
    let config = Config {
        source: "ferry/planner/test".into(),
        prefetch: 4,
        ..Config::default()
    };
    let planner = tokio::spawn(run(config, dyn_bus, shutdown.clone()));
    Ok(Harness {
        bus,
        out,
        shutdown,
        planner,
    })
}

async fn start() -> Result<Harness> {
    let bus = MemoryBus::new();
    start_on(bus.clone(), Arc::new(bus)).await
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

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.planner)
            .await
            .context("planner did not stop")???;
        Ok(())
    }
}

fn submission(flow: &str, inputs: serde_json::Value, job_id: Option<&str>) -> JobSubmitted {
    JobSubmitted {
        job_id: job_id.map(str::to_string),
        flow: FlowSource::Text(flow.into()),
        flow_name: Some("greet.yaml".into()),
        inputs: match inputs {
            serde_json::Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

#[tokio::test]
async fn a_good_submission_is_planned_with_its_inputs_filled() -> Result<()> {
    let mut h = start().await?;
    let sub = submission(
        FLOW,
        json!({"who": "world; rm -rf /", "times": "3"}),
        Some("job-1"),
    );
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_PLANNED);
    assert_eq!(event.subject(), Some("job-1"));
    let planned: JobPlanned = ferry_event::decode(&event)?;
    assert_eq!(planned.job_id, "job-1");
    assert_eq!(planned.flow_id, "greet");
    let cmd = &planned.tasks[0].command;
    assert_eq!(cmd[1].0, [Part::Text("hello world; rm -rf /".into())]);
    assert_eq!(cmd[2].0, [Part::Text("3".into())]);
    assert_eq!(h.bus.depth(GROUP), 0);
    h.stop().await
}

#[tokio::test]
async fn a_flow_given_as_an_object_is_planned_too() -> Result<()> {
    let mut h = start().await?;
    let flow = json!({"id": "obj", "tasks": [{"id": "a", "runner": "local", "command": ["true"]}]});
    let sub = JobSubmitted {
        job_id: Some("job-obj".into()),
        flow: FlowSource::Object(flow.as_object().cloned().unwrap_or_default()),
        flow_name: None,
        inputs: Map::new(),
    };
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_PLANNED);
    h.stop().await
}

#[tokio::test]
async fn a_bad_submission_is_rejected_with_every_problem() -> Result<()> {
    let mut h = start().await?;
    let bad_flow = "id: greet
tasks:
  - id: a
    runner: dokcer
    command: ['{{ inputs.nobody }}']
    dependsOn: [ghost]
";
    let sub = submission(bad_flow, json!({}), Some("job-2"));
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_REJECTED);
    let rejected: JobRejected = ferry_event::decode(&event)?;
    assert_eq!(rejected.job_id, "job-2");
    let located: Vec<String> = rejected
        .problems
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.location.as_deref().unwrap_or(""),
                p.field.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        located,
        [
            "greet.yaml:4:13 tasks[0].runner",
            "greet.yaml:5:15 tasks[0].command[0]",
            "greet.yaml:6:17 tasks[0].dependsOn[0]"
        ]
    );

    // Input problems of a valid flow are rejections too.
    let sub = submission(FLOW, json!({"times": "many", "whom": "x"}), Some("job-3"));
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    let rejected: JobRejected = ferry_event::decode(&h.next_out().await?)?;
    let fields: Vec<&str> = rejected
        .problems
        .iter()
        .filter_map(|p| p.field.as_deref())
        .collect();
    assert_eq!(fields, ["inputs.whom", "inputs.times", "inputs.who"]);
    h.stop().await
}

#[tokio::test]
async fn undecodable_submissions_are_dead_lettered_and_others_ignored() -> Result<()> {
    let mut h = start().await?;
    let mut garbage = EventBuilderV10::new()
        .id("garbage-1")
        .ty(kind::JOB_SUBMITTED)
        .source("test")
        .build()?;
    garbage.set_data("application/json", Data::Binary(b"{not json".to_vec()));
    let foreign = EventBuilderV10::new()
        .id("foreign-1")
        .ty("com.acme.file.uploaded")
        .source("test")
        .build()?;
    let good = submission_event("test", &submission(FLOW, json!({"who": "x"}), Some("job-4")));
    h.bus.publish(&[garbage, foreign, good]).await?;
    // Deliveries are handled in order: once the good one is planned, the others are settled.
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_PLANNED);
    let dead = h.bus.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event.id(), "garbage-1");
    assert_eq!(dead[0].group, GROUP);
    assert!(
        dead[0].reason.contains("not valid for its type"),
        "{}",
        dead[0].reason
    );
    assert_eq!(h.bus.depth(GROUP), 0, "the foreign event was acked");
    h.stop().await
}

#[tokio::test]
async fn a_redelivered_submission_is_the_same_job() -> Result<()> {
    let mut h = start().await?;
    let event = submission_event("test", &submission(FLOW, json!({"who": "x"}), None));
    h.bus.publish(&[event.clone(), event.clone()]).await?;
    let first: JobPlanned = ferry_event::decode(&h.next_out().await?)?;
    let second: JobPlanned = ferry_event::decode(&h.next_out().await?)?;
    assert_eq!(first.job_id, event.id());
    assert_eq!(ferry_event::envelope::job_of(&event).as_deref(), Some(event.id()));
    assert_eq!(second.job_id, first.job_id);
    h.stop().await
}

/// A bus whose next publishes fail as if the broker were unreachable.
struct FlakyBus {
    inner: MemoryBus,
    failures_left: AtomicUsize,
    attempts: AtomicUsize,
}

#[async_trait]
impl Bus for FlakyBus {
    async fn publish(&self, events: &[Event]) -> ferry_bus::Result<()> {
        if events.iter().any(|e| e.ty() != kind::JOB_SUBMITTED) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let left = self.failures_left.load(Ordering::SeqCst);
            if left > 0 {
                self.failures_left.store(left - 1, Ordering::SeqCst);
                return Err(ferry_bus::Error::Unavailable("broker unreachable".into()));
            }
        }
        self.inner.publish(events).await
    }

    async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
        self.inner.subscribe(spec).await
    }
}

#[tokio::test]
async fn a_failed_publish_is_retried_through_redelivery() -> Result<()> {
    let bus = MemoryBus::new();
    let flaky = Arc::new(FlakyBus {
        inner: bus.clone(),
        failures_left: AtomicUsize::new(2),
        attempts: AtomicUsize::new(0),
    });
    let mut h = start_on(bus, flaky.clone()).await?;
    let sub = submission(FLOW, json!({"who": "x"}), Some("job-5"));
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_PLANNED);
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 3);
    assert!(h.bus.dead_letters().is_empty());
    h.stop().await
}

#[tokio::test]
async fn shutdown_stops_an_idle_planner_promptly() -> Result<()> {
    let h = start().await?;
    let started = std::time::Instant::now();
    h.stop().await?;
    assert!(started.elapsed() < Duration::from_secs(2));
    Ok(())
}

/// A bus that carries messages of at most `limit` bytes of data, as a broker does.
struct SmallBus {
    inner: MemoryBus,
    limit: usize,
}

#[async_trait]
impl Bus for SmallBus {
    async fn publish(&self, events: &[Event]) -> ferry_bus::Result<()> {
        for e in events {
            let size = match e.data() {
                Some(Data::Binary(b)) => b.len(),
                Some(Data::String(s)) => s.len(),
                Some(Data::Json(v)) => v.to_string().len(),
                None => 0,
            };
            if size > self.limit {
                return Err(ferry_bus::Error::TooLarge {
                    event_id: e.id().to_string(),
                    size,
                    limit: Some(self.limit),
                });
            }
        }
        self.inner.publish(events).await
    }

    async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
        self.inner.subscribe(spec).await
    }
}

#[tokio::test]
async fn a_job_too_large_for_the_bus_is_rejected_saying_so() -> Result<()> {
    let bus = MemoryBus::new();
    let small = Arc::new(SmallBus {
        inner: bus.clone(),
        limit: 4096,
    });
    let mut h = start_on(bus, small).await?;
    let mut flow = String::from("id: wide\ntasks:\n");
    for i in 0..200 {
        flow.push_str(&format!(
            "  - {{ id: t{i}, runner: local, command: [\"true\"] }}\n"
        ));
    }
    let sub = submission(&flow, json!({}), Some("job-wide"));
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_REJECTED);
    let rejected: JobRejected = ferry_event::decode(&event)?;
    assert_eq!(rejected.job_id, "job-wide");
    let message = &rejected.problems[0].message;
    assert!(message.contains("more than the bus carries"), "{message}");
    assert!(message.contains("4096"), "{message}");
    assert_eq!(h.bus.depth(GROUP), 0, "the submission was acked");
    assert!(h.bus.dead_letters().is_empty());

    // A job that fits is planned as usual.
    let sub = submission(FLOW, json!({"who": "x"}), Some("job-small"));
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    assert_eq!(h.next_out().await?.ty(), kind::JOB_PLANNED);
    h.stop().await
}

/// A flow of about 100 KB whose YAML aliases repeat a long string a thousand times: 100 MB
/// written out.
fn alias_bomb() -> String {
    let long = "x".repeat(100 * 1024);
    format!(
        "id: bomb\n\
         x-s: &s '{long}'\n\
         x-l: &l [*s, *s, *s, *s, *s, *s, *s, *s, *s, *s]\n\
         x-m: &m [*l, *l, *l, *l, *l, *l, *l, *l, *l, *l]\n\
         tasks:\n  - id: t\n    runner: local\n    command: [echo, *m, *m, *m, *m, *m, *m, *m, *m, *m, *m]\n"
    )
}

#[tokio::test]
async fn an_expansion_bomb_is_rejected_and_the_next_submission_is_planned() -> Result<()> {
    let bus = MemoryBus::with_max_event_bytes(1024 * 1024);
    let mut h = start_on(bus.clone(), Arc::new(bus)).await?;
    let bomb = alias_bomb();
    assert!(bomb.len() < 110 * 1024);
    h.bus
        .publish(&[submission_event(
            "test",
            &submission(&bomb, json!({}), Some("job-bomb")),
        )])
        .await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_REJECTED);
    let rejected: JobRejected = ferry_event::decode(&event)?;
    assert_eq!(rejected.job_id, "job-bomb");
    let problem = &rejected.problems[0];
    assert!(problem.message.contains("more than 64 MiB of text"), "{problem}");
    assert!(problem.location.is_some(), "the alias is located: {problem}");

    // Inputs repeated in every task expand too: the plan is refused before it is published.
    let mut wide = String::from("id: wide\ninputs:\n  blob: { type: string, required: true }\ntasks:\n");
    for i in 0..200 {
        wide.push_str(&format!(
            "  - {{ id: t{i}, runner: local, command: [echo, '{{{{ inputs.blob }}}}'] }}\n"
        ));
    }
    let blob = "y".repeat(10 * 1024);
    h.bus
        .publish(&[submission_event(
            "test",
            &submission(&wide, json!({ "blob": blob }), Some("job-wide")),
        )])
        .await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_REJECTED);
    let rejected: JobRejected = ferry_event::decode(&event)?;
    let message = &rejected.problems[0].message;
    assert!(message.contains("the most the bus carries"), "{message}");
    assert!(
        message.contains(&(1024 * 1024 - 4096).to_string()),
        "names the limit: {message}"
    );

    let sub = submission(FLOW, json!({"who": "x"}), Some("job-good"));
    h.bus.publish(&[submission_event("test", &sub)]).await?;
    let event = h.next_out().await?;
    assert_eq!(event.ty(), kind::JOB_PLANNED);
    assert_eq!(h.bus.depth(GROUP), 0, "every submission was settled");
    assert!(h.bus.dead_letters().is_empty());
    h.stop().await
}
