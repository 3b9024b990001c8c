//! OpenTelemetry traces: one job is one trace across every service.
//!
//! Off unless the standard variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, or `OTEL_TRACES_EXPORTER=otlp`
//! (`OTEL_TRACES_EXPORTER=none` turns it off whatever else is set). Then [`crate::telemetry::init`]
//! installs a `tracing-opentelemetry` layer beside the log, exporting the spans of ferry's own
//! code over OTLP: `OTEL_EXPORTER_OTLP_PROTOCOL` (or `…_TRACES_PROTOCOL`) `http/protobuf` (the
//! default) or `grpc`; endpoint, headers and timeout as the OTLP exporter reads them;
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` as the SDK reads them
//! (`parentbased_always_on` by default). When it is off, nothing here does any work: the
//! helpers return at once and no layer sees a span.
//!
//! A service handling an event makes a span and calls [`follow`] on it before entering it: the
//! span's parent becomes the span the event's `traceparent` names, and it gets the job, task and
//! attempt ids as attributes (`ferry.job.id`, `ferry.task.id`, `ferry.attempt.id`) with the
//! event's type and id. Events built while the span is entered carry a `traceparent` naming it
//! ([`ferry_event::trace`]), so a job's spans form a tree across services. The job's trace id and
//! its root span's id are derived from the job id; the first service that handles a job's
//! submission records that root span ([`follow`] does it), so the tree has one root whoever
//! submitted the job, and events published later outside any handled event (a CLI's cancel, a
//! timer's retry) hang under the same root.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_event::trace::TraceParent;
use ferry_event::{AttributesReader as _, Event, envelope};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;

/// Whether spans are exported: set once by [`crate::telemetry::init`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces. Code that would do work only for a trace checks it.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The attribute naming a job.
pub const JOB_ID: &str = "ferry.job.id";
/// The attribute naming a task (its id within the job).
pub const TASK_ID: &str = "ferry.task.id";
/// The attribute naming an attempt.
pub const ATTEMPT_ID: &str = "ferry.attempt.id";
/// The attribute giving an event's type.
pub const EVENT_TYPE: &str = "ferry.event.type";
/// The attribute giving an event's id.
pub const EVENT_ID: &str = "ferry.event.id";

pub use crate::otlp::Error;
use crate::otlp::{Protocol, Signal};

/// The OpenTelemetry layer [`crate::telemetry::init`] puts beside the log.
pub(crate) type Layer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The SDK's tracer provider and, for gRPC, the runtime its client lives on.
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
    /// tonic's channel needs a Tokio runtime; one of its own outlives the service's, so that
    /// the last spans are still sent after the service's runtime has stopped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    /// An exporter as the environment configures one, or `None` when traces are off.
    pub(crate) fn from_env(service: &str) -> Result<Option<Exporter>, Error> {
        let Some(protocol) = crate::otlp::config(Signal::Traces, |name| std::env::var(name).ok())? else {
            return Ok(None);
        };
        let (exporter, runtime) = match protocol {
            Protocol::HttpProtobuf => (
                opentelemetry_otlp::SpanExporter::builder().with_http().build()?,
                None,
            ),
            Protocol::Grpc => {
                let runtime = crate::otlp::grpc_runtime(Signal::Traces)?;
                let exporter = {
                    let _in = runtime.enter();
                    opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?
                };
                (exporter, Some(runtime))
            }
        };
        // The sampler is the SDK's default configuration, which reads OTEL_TRACES_SAMPLER.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(JobIds)
            .with_resource(crate::otlp::resource(service))
            .build();
        Ok(Some(Exporter { provider, runtime }))
    }

    /// The layer turning ferry's spans into OpenTelemetry spans: only spans of ferry's own
    /// crates, at info level and above, whatever the log's filter.
    pub(crate) fn layer(&self) -> Layer {
        let tracer = self.provider.tracer("ferry");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target("ferry", tracing::Level::INFO))
            .boxed()
    }

    /// Sends what is still buffered and stops.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("warning: the last spans may not have been exported: {e}\n").as_bytes(),
            );
        }
        if let Some(runtime) = self.runtime {
            runtime.shutdown_background();
        }
    }
}

thread_local! {
    /// Ids the next span started on this thread takes: a job's root span, whose ids are
    /// derived from the job id.
    static FORCED: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

/// Random ids, except for a job's root span ([`record_root`]).
#[derive(Debug)]
struct JobIds;

impl IdGenerator for JobIds {
    fn new_trace_id(&self) -> TraceId {
        match FORCED.with(Cell::get) {
            Some((trace, _)) => TraceId::from(trace),
            None => RandomIdGenerator::default().new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match FORCED.with(Cell::get) {
            Some((_, span)) => SpanId::from(span),
            None => RandomIdGenerator::default().new_span_id(),
        }
    }
}

fn span_context(tp: TraceParent, remote: bool) -> SpanContext {
    SpanContext::new(
        TraceId::from(tp.trace_id),
        SpanId::from(tp.span_id),
        TraceFlags::new(tp.flags),
        remote,
        TraceState::default(),
    )
}

/// The job an event belongs to: its `ferryjob` (or `partitionkey`), or for a submission
/// without one, the event's id (the job's id then).
fn job_of(event: &Event) -> Option<String> {
    envelope::job_of(event)
        .filter(|j| !j.is_empty())
        .or_else(|| (event.ty() == ferry_event::kind::JOB_SUBMITTED).then(|| event.id().to_string()))
}

/// Makes `span`, a span made for handling `event` and not yet entered, continue the trace the
/// event carries, and sets the ids of its job, task and attempt and the event's type as its
/// attributes. The parent is the span the event's `traceparent` names when it is in the job's
/// trace; otherwise (a submitter's own trace, or none) the job's root span, with a link to the
/// foreign one. Handling a submission whose trace nobody has started yet (its `traceparent` is
/// missing, foreign, or names the root itself) records the job's root span first.
pub fn follow(span: &tracing::Span, event: &Event) {
    if !enabled() {
        return;
    }
    span.set_attribute(EVENT_TYPE, event.ty().to_string());
    span.set_attribute(EVENT_ID, event.id().to_string());
    let Some(job) = job_of(event) else {
        return;
    };
    let root = TraceParent::job_root(&job);
    let carried = envelope::extension(event, envelope::EXT_TRACEPARENT).and_then(|v| TraceParent::parse(&v));
    let parent = match carried {
        Some(tp) if tp.trace_id == root.trace_id && tp.span_id != root.span_id => {
            opentelemetry::Context::new().with_remote_span_context(span_context(tp, true))
        }
        other => {
            if let Some(foreign) = other.filter(|tp| tp.trace_id != root.trace_id) {
                span.add_link(span_context(foreign, true));
            }
            if event.ty() == ferry_event::kind::JOB_SUBMITTED {
                record_root(&job, other.filter(|tp| tp.trace_id != root.trace_id))
            } else {
                opentelemetry::Context::new().with_remote_span_context(span_context(root, true))
            }
        }
    };
    let _ = span.set_parent(parent);
    span.set_attribute(JOB_ID, job);
    let task = event
        .subject()
        .and_then(|s| s.split_once('/'))
        .map(|(_, task)| task.to_string());
    if let Some(task) = task {
        span.set_attribute(TASK_ID, task);
    }
    if let Some(attempt) = envelope::extension(event, envelope::EXT_ATTEMPT) {
        span.set_attribute(ATTEMPT_ID, attempt);
    }
}

/// Sets the job, task and attempt ids on `span` (where a span is about one of them without
/// an event to [`follow`]).
pub fn ids(span: &tracing::Span, job: &str, task: Option<&str>, attempt: Option<&str>) {
    if !enabled() {
        return;
    }
    span.set_attribute(JOB_ID, job.to_string());
    if let Some(task) = task {
        span.set_attribute(TASK_ID, task.to_string());
    }
    if let Some(attempt) = attempt {
        span.set_attribute(ATTEMPT_ID, attempt.to_string());
    }
}

/// A span for one event of a batch that is handled as a whole (in one transaction): made,
/// continuing the event's trace ([`follow`]), only when traces are exported.
pub fn event_span(event: &Event) -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: "ferry",
        "ferry.event",
        event_id = %event.id(),
        event_type = %event.ty(),
    );
    follow(&span, event);
    Some(span)
}

/// Places `span`, the work on a whole batch (its transaction), in the trace of the batch's
/// first event, as a child of that event's span, and links the spans of the others: the tree
/// of each job stays a tree, and the batch is found from any of its events.
pub fn batch(span: &tracing::Span, events: &[tracing::Span]) {
    let Some((first, rest)) = events.split_first() else {
        return;
    };
    if !enabled() {
        return;
    }
    let _ = span.set_parent(first.context());
    for other in rest {
        span.add_link(other.context().span().span_context().clone());
    }
}

/// Records the root span of a job's trace, `ferry.job`, with the ids derived from the job id,
/// and returns its context for the span that continues from it. A trace the submitter had
/// (`foreign`) is linked.
fn record_root(job: &str, foreign: Option<TraceParent>) -> opentelemetry::Context {
    let root = TraceParent::job_root(job);
    let span = tracing::info_span!(target: "ferry", parent: None, "ferry.job");
    // A root: whatever span is current, the job's trace starts here.
    let _ = span.set_parent(opentelemetry::Context::new());
    span.set_attribute(JOB_ID, job.to_string());
    if let Some(foreign) = foreign {
        span.add_link(span_context(foreign, true));
    }
    FORCED.with(|f| f.set(Some((root.trace_id, root.span_id))));
    // Starts the span now, on this thread, so that it takes the forced ids.
    let cx = span.context();
    FORCED.with(|f| f.set(None));
    if cx.span().span_context().is_valid() {
        cx
    } else {
        opentelemetry::Context::new().with_remote_span_context(span_context(root, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what is exported.
    #[derive(Debug, Clone, Default)]
    struct Collected(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Collected {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Runs `f` with a subscriber exporting to the returned spans, as [`crate::telemetry::init`]
    /// sets one up.
    fn traced(f: impl FnOnce()) -> Vec<opentelemetry_sdk::trace::SpanData> {
        use tracing_subscriber::layer::SubscriberExt as _;
        enable();
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .with_id_generator(JobIds)
            .build();
        let exporter = Exporter {
            provider,
            runtime: None,
        };
        let sub = tracing_subscriber::Registry::default().with(vec![exporter.layer()]);
        tracing::subscriber::with_default(sub, f);
        exporter.shutdown();
        collected.0.lock().unwrap().clone()
    }

    fn attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn a_handling_span_continues_the_events_trace_and_what_it_publishes_names_it() {
        let job = ferry_event::new_id();
        let upstream = TraceParent {
            span_id: 0x0123_4567_89ab_cdef,
            ..TraceParent::job_root(&job)
        };
        let builder = ferry_event::EventBuilder::new("ferry/test");
        let mut dispatched = builder.dispatch(
            ferry_event::kind::TASK_DISPATCHED,
            &job,
            "extract",
            "attempt-1",
            "local",
            &(),
        );
        dispatched.set_extension(envelope::EXT_TRACEPARENT, upstream.to_string());
        let mut published = None;
        let spans = traced(|| {
            let span = tracing::info_span!("attempt");
            follow(&span, &dispatched);
            span.in_scope(|| {
                published = Some(builder.task(
                    ferry_event::kind::TASK_STARTED,
                    &job,
                    "extract",
                    Some("attempt-1"),
                    &(),
                ));
            });
        });
        let [span] = &spans[..] else {
            panic!("one span: {spans:#?}")
        };
        assert_eq!(span.span_context.trace_id(), TraceId::from(upstream.trace_id));
        assert_eq!(span.parent_span_id, SpanId::from(upstream.span_id));
        assert_eq!(attr(span, JOB_ID), Some(job.clone()));
        assert_eq!(attr(span, TASK_ID).as_deref(), Some("extract"));
        assert_eq!(attr(span, ATTEMPT_ID).as_deref(), Some("attempt-1"));
        assert_eq!(
            attr(span, EVENT_TYPE).as_deref(),
            Some(ferry_event::kind::TASK_DISPATCHED)
        );
        let carried = envelope::extension(&published.unwrap(), envelope::EXT_TRACEPARENT).unwrap();
        let carried = TraceParent::parse(&carried).unwrap();
        assert_eq!(carried.trace_id, upstream.trace_id);
        assert_eq!(
            SpanId::from(carried.span_id),
            span.span_context.span_id(),
            "the published event names the handling span"
        );
    }

    #[test]
    fn the_first_handler_of_a_submission_records_the_jobs_root() {
        let job = ferry_event::new_id();
        let builder = ferry_event::EventBuilder::new("ferry/test");
        // As a client without traces sends it: naming the job's root, which nobody recorded.
        let submitted = builder.job(ferry_event::kind::JOB_SUBMITTED, &job, &());
        let spans = traced(|| {
            let span = tracing::info_span!("submission");
            follow(&span, &submitted);
            span.in_scope(|| {});
        });
        let root = spans.iter().find(|s| s.name == "ferry.job").expect("a root span");
        let expected = TraceParent::job_root(&job);
        assert_eq!(root.span_context.trace_id(), TraceId::from(expected.trace_id));
        assert_eq!(root.span_context.span_id(), SpanId::from(expected.span_id));
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        let handling = spans.iter().find(|s| s.name == "submission").unwrap();
        assert_eq!(handling.parent_span_id, root.span_context.span_id());
        assert_eq!(handling.span_context.trace_id(), root.span_context.trace_id());

        // Another event naming the root (a cancel from a client) hangs under it: no second root.
        let cancel = builder.job(ferry_event::kind::JOB_CANCEL, &job, &());
        let spans = traced(|| {
            let span = tracing::info_span!("command");
            follow(&span, &cancel);
            span.in_scope(|| {});
        });
        let [span] = &spans[..] else {
            panic!("one span: {spans:#?}")
        };
        assert_eq!(span.parent_span_id, SpanId::from(expected.span_id));
    }

    #[test]
    fn a_foreign_trace_is_linked_and_the_job_keeps_its_own() {
        let job = ferry_event::new_id();
        let builder = ferry_event::EventBuilder::new("ferry/test");
        let mut submitted = builder.job(ferry_event::kind::JOB_SUBMITTED, &job, &());
        let foreign = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        submitted.set_extension(envelope::EXT_TRACEPARENT, foreign);
        let spans = traced(|| {
            let span = tracing::info_span!("intake");
            follow(&span, &submitted);
            span.in_scope(|| {});
        });
        let handling = spans.iter().find(|s| s.name == "intake").unwrap();
        let expected = TraceParent::job_root(&job);
        assert_eq!(handling.span_context.trace_id(), TraceId::from(expected.trace_id));
        let linked: Vec<_> = handling.links.iter().map(|l| l.span_context.trace_id()).collect();
        assert_eq!(linked, [TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128)]);
    }
}
