//! OpenTelemetry traces: a job run through the services is one trace, exported over OTLP to a
//! receiver of the test's own, whose spans from planner, scheduler, launcher and log collector
//! form one tree under the job's root, with the job, task and attempt ids as attributes.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

/// One span as received, with what the test looks at.
#[derive(Debug, Clone)]
struct Span {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    service: String,
    attributes: HashMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attributes = s
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?)))
                        .collect();
                    spans.push(Span {
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        name: s.name,
                        service: service.clone(),
                        attributes,
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on a free port.
async fn http_receiver(received: Received) -> SocketAddr {
    use axum::body::Bytes;
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let received = received.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        received.add(request);
                        (
                            StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(e) => (
                        StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        e.to_string().into_bytes(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port.
async fn grpc_receiver(received: Received) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_of(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(received)))
            .serve_with_incoming(incoming),
    );
    addr
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    })
}

/// `ferry run examples/diamond.yaml` exporting to `endpoint` with `protocol`; returns the
/// stderr (JSON log lines).
async fn run_exporting(endpoint: String, protocol: &str) -> String {
    let protocol = protocol.to_string();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ferry();
        c.arg("run")
            .arg(example("diamond.yaml"))
            .arg("--data-dir")
            .arg(dir.path())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("FERRY_LOG", "info")
            .env("FERRY_LOG_FORMAT", "json")
            .env_remove("OTEL_TRACES_EXPORTER")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_SERVICE_NAME");
        let ran = output(c);
        assert_eq!(ran.code, 0, "the job succeeds: {}", ran.stderr);
        ran.stderr
    })
    .await
    .unwrap()
}

/// The checks every export passes: one trace for the job, a tree with one root, spans of every
/// service, ids as attributes.
fn check_job_trace(spans: &[Span], log: &str) {
    let roots: Vec<&Span> = spans.iter().filter(|s| s.name == "ferry.job").collect();
    assert_eq!(roots.len(), 1, "one job, one root span: {roots:#?}");
    let root = roots[0];
    let job = root.attr("ferry.job.id").expect("the root names its job");
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let names: HashMap<&[u8], &str> = trace
        .iter()
        .map(|s| (s.span_id.as_slice(), s.name.as_str()))
        .collect();
    for s in &trace {
        eprintln!(
            "span {} ({}) {:?} under {:?}",
            s.name,
            s.attr("target").unwrap_or(""),
            s.attr("ferry.event.type"),
            names.get(s.parent.as_slice())
        );
    }
    // Every span about the job is in its trace.
    for s in spans.iter().filter(|s| s.attr("ferry.job.id") == Some(job)) {
        assert_eq!(
            s.trace_id, root.trace_id,
            "a span of the job in another trace: {s:#?}"
        );
    }
    // A tree: one root, every other span's parent in the trace.
    let ids: HashSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
    assert_eq!(ids.len(), trace.len(), "span ids are unique");
    let trace_roots: Vec<&&Span> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(trace_roots.len(), 1, "one root: {trace_roots:#?}");
    for s in &trace {
        assert!(
            s.parent.is_empty() || ids.contains(s.parent.as_slice()),
            "the parent of {} ({:?}) is not in the trace",
            s.name,
            s.attr("target")
        );
    }
    // Spans of every service, by the crate that made them.
    let targets: HashSet<&str> = trace.iter().filter_map(|s| s.attr("target")).collect();
    for service in [
        "ferry_planner",
        "ferry_scheduler",
        "ferry_launcher",
        "ferry_log_collector",
    ] {
        assert!(
            targets.iter().any(|t| t.starts_with(service)),
            "no span of {service} in the trace: {targets:?}"
        );
    }
    assert!(
        trace.iter().all(|s| s.service == "ferry"),
        "the CLI exports as `ferry`"
    );
    // Each task's attempt span carries its ids, and the compute it created is under it.
    for task in ["extract", "count", "sample", "report"] {
        let attempt = trace
            .iter()
            .find(|s| s.name == "attempt" && s.attr("ferry.task.id") == Some(task))
            .unwrap_or_else(|| panic!("no attempt span of {task}"));
        assert_eq!(attempt.attr("ferry.job.id"), Some(job));
        assert!(attempt.attr("ferry.attempt.id").is_some_and(|a| !a.is_empty()));
        assert!(
            trace
                .iter()
                .any(|s| s.name == "compute.create" && s.parent == attempt.span_id),
            "the compute of {task} is created under its attempt"
        );
    }
    // The dependents were dispatched from the scheduler's handling of their dependency's end:
    // a launcher span under a scheduler span under a launcher span.
    let by_id: HashMap<&[u8], &&Span> = trace.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let report = trace
        .iter()
        .find(|s| s.name == "attempt" && s.attr("ferry.task.id") == Some("report"))
        .unwrap();
    let mut up = Vec::new();
    let mut at = Some(*report);
    while let Some(s) = at {
        up.push(s.name.clone());
        at = by_id.get(s.parent.as_slice()).copied().copied();
    }
    assert!(
        up.iter().filter(|n| *n == "attempt").count() >= 3,
        "report's attempt descends from its dependencies' attempts: {up:?}"
    );
    assert_eq!(up.last().map(String::as_str), Some("ferry.job"));
    // JSON log records inside a span carry the trace id.
    let trace_hex: String = root.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("\"trace_id\":\"{trace_hex}\"")) && l.contains("\"span_id\":\"")),
        "no log record carries the job's trace id:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_across_the_services_over_otlp_http() {
    let received = Received::default();
    let addr = http_receiver(received.clone()).await;
    let log = run_exporting(format!("http://{addr}"), "http/protobuf").await;
    check_job_trace(&received.spans(), &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_across_the_services_over_otlp_grpc() {
    let received = Received::default();
    let addr = grpc_receiver(received.clone()).await;
    let log = run_exporting(format!("http://{addr}"), "grpc").await;
    check_job_trace(&received.spans(), &log);
}

#[test]
fn without_otel_settings_nothing_is_exported_and_logs_are_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ferry();
    c.arg("run")
        .arg(example("hello.yaml"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("FERRY_LOG", "info")
        .env("FERRY_LOG_FORMAT", "json")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_TRACES_EXPORTER");
    let ran = output(c);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(!ran.stderr.contains("\"trace_id\""), "{}", ran.stderr);
}
