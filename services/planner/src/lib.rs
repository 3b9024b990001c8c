//! ferry's planner service.
//!
//! The planner consumes the intake topic as consumer group `planner`. For each
//! `dev.ferry.job.submitted` it validates the flow ([`ferry_flow::validate`]), checks and fills
//! the inputs ([`ferry_flow::plan`]) and publishes either `dev.ferry.job.planned` (for the
//! scheduler) or `dev.ferry.job.rejected` with every problem found, then acks the submission.
//!
//! - The job id is the submission's `jobId`, or else the event's own id, so a redelivered
//!   submission plans the same job again rather than a second one.
//! - A submission whose data cannot be decoded is dead-lettered with the reason.
//! - One request cannot cost everyone: a flow that expands (YAML aliases) past
//!   [`ferry_flow`]'s limits, or a plan larger than the bus carries in one message
//!   ([`ferry_bus::Bus::max_event_bytes`], at most [`MAX_PLAN_BYTES`]), is rejected naming the
//!   limit, before anything is published; the plan is written only up to the limit. A job the
//!   planner cannot plan always ends `rejected`, never left `submitted`.
//! - `dev.ferry.flow.deploy` and `dev.ferry.flow.undeploy` change the durable flow registry
//!   ([`registry`]) and publish `dev.ferry.flow.deployed`, `…undeployed` or `…rejected`.
//! - Any other event on intake that is not ferry's own is a trigger candidate ([`triggers`]):
//!   each trigger of a deployed flow that matches it starts a job, with inputs filled from the
//!   event and checked like a submission's. The job id is derived from the flow, the trigger
//!   and the event's `source` and `id`, so a redelivered or re-published event plans the same
//!   job again, which the scheduler and the api treat as the one job it is; a job whose inputs
//!   fail is `dev.ferry.job.rejected` naming the flow, the trigger and the event.
//! - Between deliveries, the schedules of deployed flows tick ([`schedules`]): each tick starts
//!   one job, named by the flow, the trigger and the tick, however many planners run and however
//!   often they restart; ticks missed while no planner ran are fired within the catch-up
//!   window ([`Config::catch_up`]). The clock is [`Config::clock`].
//! - When publishing fails transiently the submission is nacked after a short backoff and
//!   comes back; nothing is acked before its outcome is published.

mod flags;
pub mod registry;
pub mod schedules;
pub mod triggers;

use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, Delivery, Subscribe};
use ferry_event::cloudevents::{AttributesWriter, Data};
use ferry_event::payload::{
    FlowDeploy, FlowRejected, FlowSource, FlowUndeploy, JobRejected, JobSubmitted, Problem, TriggeredBy,
};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, envelope, kind};
use ferry_runtime::{Backoff, CancellationToken};
use tracing::{Instrument, debug, info, info_span, warn};

pub use flags::Flags;
pub use registry::Registry;
pub use schedules::{Clock, ManualClock};

/// The planner's consumer group.
pub const GROUP: &str = "planner";

/// The largest plan the planner writes, whatever the bus carries: far above any job a person
/// writes (a 100,000-task job plans to about 8 MB), well below what strains its memory.
pub const MAX_PLAN_BYTES: usize = 64 * 1024 * 1024;
/// Room left in a bus message for the event's attributes besides the plan.
const ENVELOPE_ROOM: usize = 4096;
/// Most problems a rejection lists; a longer list is cut, saying how many more there are.
const MAX_PROBLEMS: usize = 1000;

/// Waits after a failed publish or receive: the first, doubling up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bus failed in a way retrying will not fix (e.g. misconfiguration).
    #[error("planner stopped: {0}")]
    Bus(#[from] ferry_bus::Error),
    /// The registry's database URL can never work.
    #[error("planner database: {0}")]
    Config(String),
    /// The registry's database did not answer or failed.
    #[error("planner database: {0}")]
    Db(#[from] sqlx::Error),
}

/// How a planner instance runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The CloudEvents `source` of this instance (see [`ferry_runtime::instance_source`]).
    pub source: String,
    /// Most submissions held unacknowledged at once.
    pub prefetch: usize,
    /// The flow registry's database (`sqlite://PATH`, `sqlite::memory:`, `postgres://…`).
    /// Planners that share one registry must share this database.
    pub db_url: String,
    /// How far back ticks missed while no planner ran are still fired; older ones are skipped
    /// (and logged).
    pub catch_up: Duration,
    /// Where schedules read the time.
    pub clock: Clock,
}

/// The default [`Config::catch_up`].
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(3600);

impl Default for Config {
    fn default() -> Self {
        Config {
            source: "ferry/planner".into(),
            prefetch: 16,
            db_url: "sqlite::memory:".into(),
            catch_up: DEFAULT_CATCH_UP,
            clock: Clock::System,
        }
    }
}

/// What handling one delivery needs.
struct Planner<'a> {
    builder: EventBuilder,
    bus: &'a dyn Bus,
    registry: Registry,
    clock: Clock,
    catch_up: Duration,
}

/// Plans submissions until `shutdown` is cancelled or the bus closes.
pub async fn run(config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let registry = Registry::open(&config.db_url).await?;
    let mut sub = bus
        .subscribe(Subscribe::new(GROUP, [Topic::Intake]).prefetch(config.prefetch))
        .await?;
    let mut planner = Planner {
        builder: EventBuilder::new(config.source),
        bus: bus.as_ref(),
        registry,
        clock: config.clock,
        catch_up: config.catch_up,
    };
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    // The first pass over the schedules comes at once: it fires what was missed.
    let clock = planner.clock.clone();
    let mut schedules_at = clock.now();
    info!(group = GROUP, "planner started");
    'run: loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            () = clock.sleep_until(schedules_at) => {
                schedules_at = schedules::fire_due(&mut planner).await;
                continue;
            }
            next = sub.next_batch(config.prefetch) => next,
        };
        let batch = match next {
            None => break,
            Some(Ok(batch)) => batch,
            Some(Err(e)) if e.is_transient() => {
                warn!(error = %e, "receiving from the bus failed; retrying");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
            Some(Err(ferry_bus::Error::Closed)) => break,
            Some(Err(e)) => return Err(e.into()),
        };
        // In delivery order; trigger candidates that arrive one after the other are handled
        // together, everything else one by one (a deploy before an event applies to it).
        let mut deliveries = batch.into_iter().peekable();
        while let Some(delivery) = deliveries.next() {
            let handled = if triggers::is_candidate(&delivery.event) {
                let mut group = vec![delivery];
                while let Some(d) = deliveries.next_if(|d| triggers::is_candidate(&d.event)) {
                    group.push(d);
                }
                let span = info_span!("trigger_candidates", events = group.len());
                triggers::handle_candidates(&mut planner, group)
                    .instrument(span)
                    .await
            } else {
                let span = info_span!(
                    "submission",
                    event_id = %delivery.event.id(),
                    event_type = %delivery.event.ty(),
                    job_id = tracing::field::Empty,
                );
                ferry_runtime::trace::follow(&span, &delivery.event);
                handle(&mut planner, delivery).instrument(span).await
            };
            match handled {
                Ok(Handled::Done) => backoff.reset(),
                Ok(Handled::Retry(mut given_back)) => {
                    // The rest of the batch goes back with them, in order: what failed now would
                    // likely fail too. Held through the backoff so they are not redelivered at once.
                    given_back.extend(deliveries.by_ref());
                    let stop = !backoff.wait(&shutdown).await;
                    for delivery in given_back {
                        match delivery.nack().await {
                            Ok(()) | Err(ferry_bus::Error::Closed) => {}
                            // It comes back anyway once the broker notices the channel is gone.
                            Err(e) if e.is_transient() => {
                                warn!(error = %e, "cannot give the submission back")
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if stop {
                        break 'run;
                    }
                }
                Err(ferry_bus::Error::Closed) => break 'run,
                Err(e) => return Err(e.into()),
            }
        }
    }
    info!("planner stopped");
    Ok(())
}

enum Handled {
    Done,
    /// Publishing failed transiently: give the deliveries back after a backoff.
    Retry(Vec<Delivery>),
}

async fn handle(planner: &mut Planner<'_>, delivery: Delivery) -> Result<Handled, ferry_bus::Error> {
    match delivery.event.ty() {
        kind::JOB_SUBMITTED => handle_submission(&planner.builder, planner.bus, delivery).await,
        kind::FLOW_DEPLOY | kind::FLOW_UNDEPLOY => handle_request(planner, delivery).await,
        t if t.starts_with(kind::PREFIX) => {
            debug!("a ferry event on intake that the planner does not take; ignored");
            settled("ack", delivery.ack().await)
        }
        _ => triggers::handle_candidates(planner, vec![delivery]).await,
    }
}

async fn handle_submission(
    builder: &EventBuilder,
    bus: &dyn Bus,
    delivery: Delivery,
) -> Result<Handled, ferry_bus::Error> {
    let submitted: JobSubmitted = match ferry_event::decode(&delivery.event) {
        Ok(s) => s,
        Err(e) => return settled("dead-letter", delivery.dead_letter(&e.to_string()).await),
    };
    // The decoded submission is all planning needs: the encoded copy goes now rather than
    // with the delivery (settling does not use it; the broker keeps its own until the ack).
    let mut delivery = delivery;
    delivery.event.take_data();
    let job_id = submitted
        .job_id
        .clone()
        .unwrap_or_else(|| delivery.event.id().to_string());
    tracing::Span::current().record("job_id", job_id.as_str());
    let max_bytes = plan_limit(bus);
    let outcome = {
        let job_id = job_id.clone();
        tokio::task::spawn_blocking(move || plan_within(submitted, &job_id, max_bytes)).await
    };
    let event = match outcome {
        Ok(outcome) => outcome_event(builder, &job_id, outcome, None),
        Err(e) => {
            // A defect: it would fail the same way on every redelivery. The job ends rejected
            // and the submission is set aside for a person to look at.
            let reason = format!("planning the submission failed unexpectedly: {e}");
            warn!(%reason, "job rejected");
            let problem = Problem {
                location: None,
                field: None,
                message: format!("{reason}; this is a defect in ferry, please report it"),
            };
            return match bus
                .publish(&[rejection(builder, &job_id, vec![problem], None)])
                .await
            {
                Ok(()) => {
                    ferry_runtime::metrics::job_planned("rejected");
                    settled("dead-letter", delivery.dead_letter(&reason).await)
                }
                Err(e) if e.is_transient() => Ok(Handled::Retry(vec![delivery])),
                Err(e) => Err(e),
            };
        }
    };
    match publish_outcome(builder, bus, &job_id, event, None).await {
        Ok(()) => settled("ack", delivery.ack().await),
        Err(e) if e.is_transient() => {
            warn!(error = %e, "publishing the outcome failed; the submission will be retried");
            Ok(Handled::Retry(vec![delivery]))
        }
        Err(e) => Err(e),
    }
}

/// The `job.planned` or `job.rejected` event of a planning outcome.
fn outcome_event(
    builder: &EventBuilder,
    job_id: &str,
    outcome: Result<Planned, Vec<Problem>>,
    trigger: Option<TriggeredBy>,
) -> Event {
    match outcome {
        Ok(planned) => {
            info!(
                job_id,
                tasks = planned.tasks,
                bytes = planned.json.len(),
                "job planned"
            );
            let mut event = builder.job(kind::JOB_PLANNED, job_id, &());
            event.set_data("application/json", Data::Binary(planned.json));
            event
        }
        Err(problems) => {
            info!(job_id, problems = problems.len(), "job rejected");
            rejection(builder, job_id, problems, trigger)
        }
    }
}

/// Publishes a job's `job.planned` or `job.rejected`. One that the bus refuses as too large is
/// replaced by a rejection that says so, which fits. A transient failure is returned for the
/// caller to retry the whole delivery.
async fn publish_outcome(
    builder: &EventBuilder,
    bus: &dyn Bus,
    job_id: &str,
    event: Event,
    trigger: Option<&TriggeredBy>,
) -> Result<(), ferry_bus::Error> {
    let event = match bus.publish(std::slice::from_ref(&event)).await {
        Ok(()) => {
            count(&event);
            return Ok(());
        }
        // The job is valid but its plan does not fit in one message of this bus.
        Err(ferry_bus::Error::TooLarge { size, limit, .. }) if event.ty() == kind::JOB_PLANNED => {
            info!(
                bytes = size,
                limit, "job rejected: its plan is too large for the bus"
            );
            let carries = match limit {
                Some(n) => format!("{n} bytes"),
                None => "its broker's limit".to_string(),
            };
            let problem = Problem {
                location: None,
                field: Some("tasks".into()),
                message: format!(
                    "the planned job is {size} bytes, more than the bus carries in one message ({carries}); \
                     split the flow into smaller jobs"
                ),
            };
            rejection(builder, job_id, vec![problem], trigger.cloned())
        }
        // A rejection too large for the bus (its problems quote the flow): one that says so
        // fits.
        Err(ferry_bus::Error::TooLarge { size, .. }) if event.ty() == kind::JOB_REJECTED => {
            let count = ferry_event::decode::<JobRejected>(&event).map_or(0, |r| r.problems.len());
            let problem = Problem {
                location: None,
                field: None,
                message: format!(
                    "the flow has {count} problems, whose list ({size} bytes) is more than the bus carries; \
                     run `ferry validate` on it to see them"
                ),
            };
            rejection(builder, job_id, vec![problem], trigger.cloned())
        }
        Err(e) => return Err(e),
    };
    bus.publish(std::slice::from_ref(&event)).await?;
    count(&event);
    Ok(())
}

/// A `flow.deploy` or `flow.undeploy` request: applied to the registry once, its outcome
/// published (again, for a redelivered request).
async fn handle_request(planner: &mut Planner<'_>, delivery: Delivery) -> Result<Handled, ferry_bus::Error> {
    let event_id = delivery.event.id().to_string();
    let recorded = match planner.registry.applied(&event_id).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "the flow registry cannot be read; the request will be retried");
            return Ok(Handled::Retry(vec![delivery]));
        }
    };
    let outcome = match recorded {
        Some(outcome) => Ok(outcome),
        None if delivery.event.ty() == kind::FLOW_DEPLOY => {
            let request: FlowDeploy = match ferry_event::decode(&delivery.event) {
                Ok(r) => r,
                Err(e) => return settled("dead-letter", delivery.dead_letter(&e.to_string()).await),
            };
            let now_ms = planner.clock.now().timestamp_millis();
            match deploy(&planner.registry, &event_id, request, now_ms).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    warn!(error = %e, "the flow registry cannot be changed; the request will be retried");
                    return Ok(Handled::Retry(vec![delivery]));
                }
            }
        }
        None => {
            let request: FlowUndeploy = match ferry_event::decode(&delivery.event) {
                Ok(r) => r,
                Err(e) => return settled("dead-letter", delivery.dead_letter(&e.to_string()).await),
            };
            let key = ferry_event::envelope::flow_key(request.namespace.as_deref(), &request.flow_id);
            match planner
                .registry
                .undeploy(&event_id, request.namespace.as_deref(), &request.flow_id)
                .await
            {
                Ok(Some(outcome)) => Ok(outcome),
                Ok(None) => Err(FlowRejected {
                    namespace: request.namespace,
                    flow_id: Some(request.flow_id),
                    problems: vec![Problem {
                        location: None,
                        field: Some("flowId".into()),
                        message: format!(
                            "flow `{key}` is not deployed; `ferry flows` lists the deployed flows"
                        ),
                    }],
                }),
                Err(e) => {
                    warn!(error = %e, "the flow registry cannot be changed; the request will be retried");
                    return Ok(Handled::Retry(vec![delivery]));
                }
            }
        }
    };
    let event = match outcome {
        Ok(outcome) => {
            let key = outcome_key(&outcome.data);
            info!(flow = %key, outcome = %outcome.ty, "flow registry changed");
            planner.builder.flow(&outcome.ty, &key, &outcome.data)
        }
        Err(rejected) => {
            let key = rejected
                .flow_id
                .as_deref()
                .map(|id| ferry_event::envelope::flow_key(rejected.namespace.as_deref(), id))
                .unwrap_or_default();
            info!(flow = %key, problems = rejected.problems.len(), "flow request rejected");
            planner.builder.flow(kind::FLOW_REJECTED, &key, &rejected)
        }
    };
    match planner.bus.publish(std::slice::from_ref(&event)).await {
        Ok(()) => settled("ack", delivery.ack().await),
        Err(e) if e.is_transient() => {
            warn!(error = %e, "publishing the registry change failed; the request will be retried");
            Ok(Handled::Retry(vec![delivery]))
        }
        Err(e) => Err(e),
    }
}

/// `NAMESPACE/ID` of a `flow.deployed` or `flow.undeployed` payload.
fn outcome_key(data: &serde_json::Value) -> String {
    let text = |k: &str| data.get(k).and_then(serde_json::Value::as_str);
    ferry_event::envelope::flow_key(text("namespace"), text("flowId").unwrap_or_default())
}

/// Validates a flow to deploy and deploys it. A flow that is not valid changes nothing; a
/// database failure is returned to retry the request.
async fn deploy(
    registry: &Registry,
    event_id: &str,
    request: FlowDeploy,
    now_ms: i64,
) -> Result<Result<registry::Outcome, FlowRejected>, sqlx::Error> {
    let name = request.flow_name.unwrap_or_else(|| "flow".into());
    let source = match request.flow {
        FlowSource::Text(text) => text,
        FlowSource::Object(obj) => serde_json::to_string_pretty(&obj).unwrap_or_default(),
    };
    let checked = {
        let (source, name) = (source.clone(), name.clone());
        tokio::task::spawn_blocking(move || ferry_flow::validate(&source, &name).map(|v| v.flow().clone()))
            .await
    };
    let flow = match checked {
        Ok(Ok(flow)) => flow,
        Ok(Err(problems)) => {
            let head = ferry_flow::to_json(&source, &name).ok();
            let text = |k: &str| {
                head.as_ref()
                    .and_then(|h| h.get(k))
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
            };
            return Ok(Err(FlowRejected {
                namespace: text("namespace"),
                flow_id: text("id"),
                problems: problems.into_iter().take(MAX_PROBLEMS).collect(),
            }));
        }
        Err(e) => {
            return Ok(Err(FlowRejected {
                namespace: None,
                flow_id: None,
                problems: vec![Problem {
                    location: None,
                    field: None,
                    message: format!(
                        "checking the flow failed unexpectedly: {e}; this is a defect in ferry, please report it"
                    ),
                }],
            }));
        }
    };
    registry
        .deploy(event_id, &flow, &source, &name, now_ms)
        .await
        .map(Ok)
}

/// Counts a published `job.planned` or `job.rejected` in the metrics.
fn count(event: &Event) {
    match event.ty() {
        kind::JOB_PLANNED => ferry_runtime::metrics::job_planned("planned"),
        kind::JOB_REJECTED => ferry_runtime::metrics::job_planned("rejected"),
        _ => {}
    }
}

/// A `job.rejected` event, its list of problems cut at [`MAX_PROBLEMS`].
fn rejection(
    builder: &EventBuilder,
    job_id: &str,
    mut problems: Vec<Problem>,
    trigger: Option<TriggeredBy>,
) -> Event {
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(Problem {
            location: None,
            field: None,
            message: format!(
                "{more} more problems are not listed; run `ferry validate` on the flow to see them"
            ),
        });
    }
    builder.job(
        kind::JOB_REJECTED,
        job_id,
        &JobRejected {
            job_id: job_id.to_string(),
            problems,
            trigger,
        },
    )
}

/// The most bytes a plan may have to be published on `bus`.
fn plan_limit(bus: &dyn Bus) -> usize {
    bus.max_event_bytes()
        .map_or(MAX_PLAN_BYTES, |n| n.saturating_sub(ENVELOPE_ROOM))
        .min(MAX_PLAN_BYTES)
}

/// A submission that cannot be settled because the broker went away comes again and is
/// planned again as the same job: worth a warning, not a stop.
fn settled(what: &str, result: Result<(), ferry_bus::Error>) -> Result<Handled, ferry_bus::Error> {
    match result {
        Ok(()) => Ok(Handled::Done),
        Err(e) if e.is_transient() => {
            warn!(error = %e, "cannot {what} the submission; it will be delivered again");
            Ok(Handled::Done)
        }
        Err(e) => Err(e),
    }
}

/// A planned job, serialized: the `job.planned` payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// How many tasks the job has.
    pub tasks: usize,
    /// The [`JobPlanned`](ferry_event::payload::JobPlanned) as JSON.
    pub json: Vec<u8>,
}

/// Validates a submission's flow and plans its job; every problem found is returned. A plan
/// larger than [`MAX_PLAN_BYTES`] is a problem.
pub fn plan_submission(submitted: JobSubmitted, job_id: &str) -> Result<Planned, Vec<Problem>> {
    plan_within(submitted, job_id, MAX_PLAN_BYTES)
}

/// [`plan_submission`] with a plan of at most `max_bytes`: writing it stops there.
///
/// The submission is consumed so that the flow's text is dropped as soon as it is parsed, and
/// the job is written straight to JSON task by task ([`ferry_flow::plan_job`]): a large job is
/// never held whole besides its JSON.
pub fn plan_within(submitted: JobSubmitted, job_id: &str, max_bytes: usize) -> Result<Planned, Vec<Problem>> {
    let JobSubmitted {
        flow: source,
        flow_name,
        inputs,
        ..
    } = submitted;
    let name = flow_name.as_deref().unwrap_or("flow");
    let valid = match &source {
        FlowSource::Text(text) => ferry_flow::validate(text, name),
        FlowSource::Object(obj) => {
            let text = serde_json::to_string_pretty(obj).map_err(|e| {
                vec![Problem {
                    location: None,
                    field: Some("flow".into()),
                    message: format!("the flow object cannot be read as JSON: {e}"),
                }]
            })?;
            ferry_flow::validate(&text, name)
        }
    };
    drop(source);
    let flow = match valid {
        Ok(flow) => flow,
        Err(mut problems) => {
            if let Err(msg) = ferry_flow::check_job_id(job_id) {
                problems.insert(
                    0,
                    Problem {
                        location: None,
                        field: Some("jobId".into()),
                        message: msg,
                    },
                );
            }
            return Err(problems);
        }
    };
    plan_valid(&flow, job_id, &inputs, max_bytes)
}

/// Plans a job of a flow validated already (a deployed flow's, whose triggers start many):
/// checks the inputs and writes the plan, of at most `max_bytes`.
pub fn plan_valid(
    flow: &ferry_flow::ValidFlow,
    job_id: &str,
    inputs: &serde_json::Map<String, serde_json::Value>,
    max_bytes: usize,
) -> Result<Planned, Vec<Problem>> {
    let job = ferry_flow::plan_job(flow, job_id, inputs)?;
    let mut out = Bounded {
        json: Vec::new(),
        max: max_bytes,
    };
    match serde_json::to_writer(&mut out, &job) {
        Ok(()) => Ok(Planned {
            tasks: job.task_count(),
            json: out.json,
        }),
        Err(_) if out.json.len() >= max_bytes => Err(vec![Problem {
            location: None,
            field: Some("tasks".into()),
            message: format!(
                "the planned job is larger than {max_bytes} bytes, the most the bus carries in one message; \
                 split the flow into smaller jobs, or make the inputs it repeats in each task smaller"
            ),
        }]),
        // Validation resolved every task already; this is reported rather than trusted away.
        Err(e) => Err(vec![Problem {
            location: None,
            field: None,
            message: format!("the job cannot be planned: {e}"),
        }]),
    }
}

/// A writer that refuses to grow past `max` bytes, so that a plan that expands far beyond what
/// the bus carries is never held whole.
struct Bounded {
    json: Vec<u8>,
    max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.json.len() + buf.len() > self.max {
            let fits = self.max - self.json.len();
            self.json.extend_from_slice(&buf[..fits]);
            return Err(std::io::Error::other("the plan is larger than the bus carries"));
        }
        self.json.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `dev.ferry.job.submitted` event, as a client would publish it. Without a `jobId` the job
/// is keyed by the event's own id, which is then also the job's id.
pub fn submission_event(source: &str, submitted: &JobSubmitted) -> Event {
    let builder = EventBuilder::new(source);
    if let Some(job_id) = &submitted.job_id {
        return builder.job(kind::JOB_SUBMITTED, job_id, submitted);
    }
    let mut event = builder.job(kind::JOB_SUBMITTED, "", submitted);
    let id = event.id().to_string();
    event.set_subject(Some(id.clone()));
    event.set_extension(envelope::EXT_PARTITION_KEY, id.clone());
    event.set_extension(envelope::EXT_JOB, id.clone());
    event.set_extension(envelope::EXT_TRACEPARENT, envelope::traceparent(&id));
    event
}
