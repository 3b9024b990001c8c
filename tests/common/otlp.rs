//! OTLP receivers of the tests' own, HTTP and gRPC, keeping the spans and metric data points
//! they receive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use prost::Message as _;

/// One span as received, with what the test looks at.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent: Vec<u8>,
    pub name: String,
    pub service: String,
    pub attributes: HashMap<String, String>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One data point of a metric as received.
#[derive(Debug, Clone)]
pub struct Point {
    pub metric: String,
    pub unit: String,
    /// `counter` (a monotonic cumulative sum), `gauge`, `histogram`, or what else came.
    pub kind: String,
    pub service: String,
    pub instance: String,
    pub attributes: HashMap<String, String>,
    /// A number's value; a histogram's count.
    pub value: f64,
    /// A histogram's bucket bounds.
    pub bounds: Vec<f64>,
}

/// What the receivers got, spans and metric data points, in order of arrival.
#[derive(Clone, Default)]
pub struct Received {
    pub spans: Arc<Mutex<Vec<Span>>>,
    pub points: Arc<Mutex<Vec<Point>>>,
}

pub fn resource_attr(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
        .unwrap_or_default()
}

impl Received {
    pub fn add_metrics(&self, request: ExportMetricsServiceRequest) {
        let mut points = self.points.lock().unwrap();
        for rm in request.resource_metrics {
            let attributes = rm.resource.map(|r| r.attributes).unwrap_or_default();
            let service = resource_attr(&attributes, "service.name");
            let instance = resource_attr(&attributes, "service.instance.id");
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let point = |kind: &str, attrs: &[KeyValue], value: f64, bounds: Vec<f64>| Point {
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        kind: kind.to_string(),
                        service: service.clone(),
                        instance: instance.clone(),
                        attributes: attrs
                            .iter()
                            .filter_map(|kv| {
                                Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                            })
                            .collect(),
                        value,
                        bounds,
                    };
                    let number = |v: &Option<number_data_point::Value>| match v {
                        Some(number_data_point::Value::AsDouble(d)) => *d,
                        Some(number_data_point::Value::AsInt(i)) => *i as f64,
                        None => f64::NAN,
                    };
                    match &m.data {
                        Some(Data::Sum(sum)) => {
                            // 2: cumulative, as Prometheus counts.
                            let kind = match (sum.is_monotonic, sum.aggregation_temporality) {
                                (true, 2) => "counter",
                                _ => "sum (not a monotonic cumulative one)",
                            };
                            for p in &sum.data_points {
                                points.push(point(kind, &p.attributes, number(&p.value), Vec::new()));
                            }
                        }
                        Some(Data::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                points.push(point("gauge", &p.attributes, number(&p.value), Vec::new()));
                            }
                        }
                        Some(Data::Histogram(h)) => {
                            for p in &h.data_points {
                                points.push(point(
                                    "histogram",
                                    &p.attributes,
                                    p.count as f64,
                                    p.explicit_bounds.clone(),
                                ));
                            }
                        }
                        other => points.push(point(&format!("{other:?}"), &[], f64::NAN, Vec::new())),
                    }
                }
            }
        }
    }

    pub fn points(&self) -> Vec<Point> {
        self.points.lock().unwrap().clone()
    }

    pub fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
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

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Answers an OTLP/HTTP export: `decoded` the body, or 400 naming why not.
pub fn http_answer<M: prost::Message + Default>(
    body: &[u8],
    keep: impl FnOnce(M),
    response: Vec<u8>,
) -> (axum::http::StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    use axum::http::StatusCode;
    match M::decode(body) {
        Ok(request) => {
            keep(request);
            (
                StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                response,
            )
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces` and `/v1/metrics`, protobuf) on a free port.
pub async fn http_receiver(received: Received) -> SocketAddr {
    use axum::body::Bytes;
    let traces = received.clone();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let received = traces.clone();
                async move {
                    http_answer(
                        &body,
                        |r: ExportTraceServiceRequest| received.add(r),
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |body: Bytes| {
                let received = received.clone();
                async move {
                    http_answer(
                        &body,
                        |r: ExportMetricsServiceRequest| received.add_metrics(r),
                        ExportMetricsServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub struct Grpc(pub Received);

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

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.add_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver (traces and metrics) on a free port.
pub async fn grpc_receiver(received: Received) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_of(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(received.clone())))
            .add_service(MetricsServiceServer::new(Grpc(received)))
            .serve_with_incoming(incoming),
    );
    addr
}

pub fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    })
}

/// The spans of `job`'s trace, when they form one tree under the job's root span `ferry.job`
/// and every span naming the job is in it; `Err` says what is not so (yet: spans arrive in
/// batches).
pub fn job_tree<'a>(spans: &'a [Span], job: &str) -> Result<Vec<&'a Span>, String> {
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "ferry.job" && s.attr("ferry.job.id") == Some(job))
        .collect();
    let [root] = roots[..] else {
        return Err(format!("{} root spans of job {job}", roots.len()));
    };
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    if let Some(stray) = spans
        .iter()
        .find(|s| s.attr("ferry.job.id") == Some(job) && s.trace_id != root.trace_id)
    {
        return Err(format!("a span of the job in another trace: {stray:?}"));
    }
    let ids: std::collections::HashSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
    if ids.len() != trace.len() {
        return Err("span ids repeat".into());
    }
    let parentless = trace.iter().filter(|s| s.parent.is_empty()).count();
    if parentless != 1 {
        return Err(format!("{parentless} spans without a parent"));
    }
    if let Some(orphan) = trace
        .iter()
        .find(|s| !s.parent.is_empty() && !ids.contains(s.parent.as_slice()))
    {
        return Err(format!(
            "the parent of {} ({} {:?}) is not in the trace",
            orphan.name,
            orphan.service,
            orphan.attr("target")
        ));
    }
    Ok(trace)
}
