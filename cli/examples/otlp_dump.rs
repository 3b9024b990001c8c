//! An OTLP/HTTP receiver writing the spans it receives as JSON lines: a look at ferry's traces
//! without a trace viewer. `scripts/observe-pictures.sh` draws docs/img/trace.png from it.
//!
//! ```sh
//! cargo run -p ferry-cli --example otlp_dump -- 127.0.0.1:4318 spans.jsonl &
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_METRICS_EXPORTER=none \
//!     ferry run examples/diamond.yaml
//! ```
//!
//! Each line: `trace_id`, `span_id`, `parent` (hex, empty for a root), `name`, `service`,
//! `start` and `end` (Unix nanoseconds) and `attributes` (strings, numbers and booleans as
//! text). Only `POST /v1/traces` with a protobuf body is answered; it listens until killed.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use serde_json::{Map, json};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The request's spans, one JSON object each.
fn lines(request: ExportTraceServiceRequest) -> Vec<String> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            let attributes: Map<String, serde_json::Value> = span
                .attributes
                .iter()
                .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref())?.into())))
                .collect();
            let line = json!({
                "trace_id": hex(&span.trace_id),
                "span_id": hex(&span.span_id),
                "parent": hex(&span.parent_span_id),
                "name": span.name,
                "service": service,
                "start": span.start_time_unix_nano,
                "end": span.end_time_unix_nano,
                "attributes": attributes,
            });
            out.push(line.to_string());
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(path)) = (args.next(), args.next()) else {
        return Err("usage: otlp_dump ADDR FILE (e.g. 127.0.0.1:4318 spans.jsonl)".into());
    };
    let file = std::fs::File::create(&path).map_err(|e| format!("cannot create {path}: {e}"))?;
    let file = Arc::new(Mutex::new(file));
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let file = file.clone();
            async move {
                let request = match ExportTraceServiceRequest::decode(body) {
                    Ok(r) => r,
                    Err(e) => return (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
                };
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                for line in lines(request) {
                    if let Err(e) = writeln!(file, "{line}") {
                        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string().into_bytes());
                    }
                }
                (
                    StatusCode::OK,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
