//! OpenTelemetry export for real, to OTLP receivers of the test's own (HTTP and gRPC).
//!
//! Traces: a job run through the services is one trace, whose spans from planner, scheduler,
//! launcher and log collector form one tree under the job's root, with the job, task and
//! attempt ids as attributes. Metrics: the run's metrics arrive with the names, kinds, units,
//! buckets and labels of `ferry_runtime::metrics::DEFS`, the one definition the Prometheus
//! endpoint shows too, and values the run accounts for.

mod common;

use std::collections::{HashMap, HashSet};

use common::otlp::*;
use common::*;
use ferry_runtime::metrics::{DEFS, Kind};

/// `ferry run examples/diamond.yaml` exporting to `endpoint` with `protocol` and `env` besides;
/// returns the stderr (JSON log lines).
async fn run_exporting(endpoint: String, protocol: &str, env: &[(&str, &str)]) -> String {
    let protocol = protocol.to_string();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
            .env("FERRY_LOG_FORMAT", "json");
        for var in [
            "OTEL_TRACES_EXPORTER",
            "OTEL_TRACES_SAMPLER",
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_METRICS_EXPORTER",
            "OTEL_METRIC_EXPORT_INTERVAL",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            c.env_remove(var);
        }
        c.envs(env);
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
    let log = run_exporting(format!("http://{addr}"), "http/protobuf", &[]).await;
    check_job_trace(&received.spans(), &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_across_the_services_over_otlp_grpc() {
    let received = Received::default();
    let addr = grpc_receiver(received.clone()).await;
    let log = run_exporting(format!("http://{addr}"), "grpc", &[]).await;
    check_job_trace(&received.spans(), &log);
}

/// The name a metric of [`DEFS`] has over OTLP: a counter's lacks the `_total` Prometheus adds.
fn otlp_name(exposed: &str) -> &str {
    exposed.strip_suffix("_total").unwrap_or(exposed)
}

/// The checks every metrics export of a `ferry run examples/diamond.yaml` passes: every metric
/// is one of [`DEFS`], with its kind, unit, buckets and labels, from one process named `ferry`;
/// the values are the run's.
fn check_run_metrics(points: &[Point]) {
    assert!(!points.is_empty(), "no metric arrived");
    for p in points {
        let def = DEFS
            .iter()
            .find(|d| otlp_name(d.name) == p.metric)
            .unwrap_or_else(|| panic!("{} is not a metric of DEFS: {p:#?}", p.metric));
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(buckets) => {
                assert_eq!(p.bounds, buckets.bounds(), "{}: the buckets of DEFS", p.metric);
                "histogram"
            }
        };
        assert_eq!(p.kind, kind, "{}", p.metric);
        assert_eq!(p.unit, def.unit, "{}: the unit of DEFS", p.metric);
        let mut keys: Vec<&str> = p.attributes.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut labels = def.labels.to_vec();
        labels.sort_unstable();
        assert_eq!(keys, labels, "{}: the labels of DEFS, and only those", p.metric);
        assert_eq!(p.service, "ferry", "the CLI exports as `ferry`");
        assert!(!p.instance.is_empty(), "the resource names the instance");
        assert_eq!(p.instance, points[0].instance, "one process");
    }
    // The last value of a series (exports are cumulative: the last is the total).
    let value = |metric: &str, attributes: &[(&str, &str)]| -> f64 {
        points
            .iter()
            .rev()
            .find(|p| {
                p.metric == metric
                    && p.attributes.len() == attributes.len()
                    && attributes
                        .iter()
                        .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {metric} {attributes:?} arrived"))
            .value
    };
    assert_eq!(value("ferry_tasks_ended", &[("outcome", "succeeded")]), 4.0);
    assert_eq!(
        value("ferry_tasks_ended", &[("outcome", "failed")]),
        0.0,
        "known series are there at zero"
    );
    assert_eq!(value("ferry_jobs_planned", &[("outcome", "planned")]), 1.0);
    assert_eq!(value("ferry_jobs_started", &[]), 1.0);
    assert_eq!(value("ferry_jobs_ended", &[("outcome", "succeeded")]), 1.0);
    assert_eq!(
        value("ferry_dispatch_latency_seconds", &[("backend", "local")]),
        4.0,
        "one dispatch latency per task"
    );
    assert!(value("ferry_log_lines_stored", &[]) >= 4.0, "each task printed");
    assert!(value("ferry_bus_published", &[("topic", "lifecycle")]) > 0.0);
    assert!(
        value(
            "ferry_compute_seconds",
            &[
                ("backend", "local"),
                ("namespace", "examples"),
                ("flow", "diamond")
            ]
        ) >= 0.0
    );
    assert_eq!(
        value("ferry_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_metrics_arrive_over_otlp_http_as_defined_once() {
    let received = Received::default();
    let addr = http_receiver(received.clone()).await;
    // Metrics only: traces are turned off, and the periodic export runs too.
    run_exporting(
        format!("http://{addr}"),
        "http/protobuf",
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    )
    .await;
    assert!(received.spans().is_empty(), "traces were turned off");
    check_run_metrics(&received.points());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_metrics_arrive_over_otlp_grpc_as_defined_once() {
    let received = Received::default();
    let addr = grpc_receiver(received.clone()).await;
    // The metrics' own variables: the general endpoint is the HTTP one of no receiver.
    run_exporting(
        "http://127.0.0.1:9".to_string(),
        "http/protobuf",
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ],
    )
    .await;
    check_run_metrics(&received.points());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_metrics_exporter_none_keeps_the_metrics_home_and_the_traces_flowing() {
    let received = Received::default();
    let addr = http_receiver(received.clone()).await;
    run_exporting(
        format!("http://{addr}"),
        "http/protobuf",
        &[("OTEL_METRICS_EXPORTER", "none")],
    )
    .await;
    assert!(!received.spans().is_empty(), "the traces still arrive");
    assert!(
        received.points().is_empty(),
        "OTEL_METRICS_EXPORTER=none: no metric is sent"
    );
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
