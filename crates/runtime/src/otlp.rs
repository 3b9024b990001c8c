//! What the OTLP export of traces ([`crate::trace`]) and of metrics ([`crate::metrics`]) share:
//! reading the standard variables that turn a signal's export on and choose its protocol, the
//! resource naming the process, and the runtime of the gRPC client.

/// A signal ferry exports over OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The signal's word in the names of the standard variables (`OTEL_EXPORTER_OTLP_TRACES_…`).
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The variable choosing the signal's exporter: `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`.
    pub(crate) fn exporter_var(self) -> String {
        format!("OTEL_{}_EXPORTER", self.upper())
    }
}

/// Why a signal cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{var}={value:?} is not a protocol ferry exports with: use http/protobuf (the default) or grpc")]
    Protocol { var: String, value: String },
    #[error("cannot make the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot start the runtime of the gRPC exporter: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Reads whether and how to export `signal` from `var` (the process environment in
/// production): off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or the signal's own endpoint is set,
/// or the signal's exporter variable says `otlp`; that variable at `none` turns it off
/// whatever else is set. The protocol is the signal's own (`OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`),
/// else `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
pub(crate) fn config(
    signal: Signal,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Protocol>, Error> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let upper = signal.upper();
    match set(&signal.exporter_var()).as_deref().map(str::trim) {
        Some("none") => return Ok(None),
        Some("otlp") => {}
        _ if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && set(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")).is_none() =>
        {
            return Ok(None);
        }
        _ => {}
    }
    let own = format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL");
    let (name, value) = match set(&own) {
        Some(v) => (own, v),
        None => match set("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), v),
            None => return Ok(Some(Protocol::HttpProtobuf)),
        },
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "http/protobuf" => Ok(Some(Protocol::HttpProtobuf)),
        "grpc" => Ok(Some(Protocol::Grpc)),
        _ => Err(Error::Protocol { var: name, value }),
    }
}

/// The resource naming this process: `service.name` is `service` unless `OTEL_SERVICE_NAME`
/// says otherwise, and `service.instance.id` is `HOST/PID` unless `OTEL_RESOURCE_ATTRIBUTES`
/// names one (the SDK's detectors read both variables).
pub(crate) fn resource(service: &str) -> opentelemetry_sdk::Resource {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty()) {
        resource = resource.with_service_name(service.to_string());
    }
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    if !attributes
        .split(',')
        .any(|kv| kv.split('=').next().map(str::trim) == Some("service.instance.id"))
    {
        let instance = crate::instance_source(service);
        // `ferry/SERVICE/HOST/PID`: the service is already the resource's name.
        let instance = instance.splitn(3, '/').nth(2).unwrap_or(&instance).to_string();
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance));
    }
    resource.build()
}

/// The runtime a gRPC exporter's client lives on. tonic's channel needs a Tokio runtime; one of
/// its own outlives the service's, so that what is still buffered is sent after the service's
/// runtime has stopped.
pub(crate) fn grpc_runtime(signal: Signal) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(match signal {
            Signal::Traces => "otlp-grpc",
            Signal::Metrics => "otlp-grpc-metrics",
        })
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn each_signal_is_off_unless_the_standard_variables_ask() {
        for (signal, s) in [(Signal::Traces, "TRACES"), (Signal::Metrics, "METRICS")] {
            let own_endpoint = format!("OTEL_EXPORTER_OTLP_{s}_ENDPOINT");
            let own_protocol = format!("OTEL_EXPORTER_OTLP_{s}_PROTOCOL");
            let exporter = format!("OTEL_{s}_EXPORTER");
            let c = |vars: &[(&str, &str)]| config(signal, env(vars));
            assert_eq!(c(&[]).unwrap(), None);
            assert_eq!(c(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(), None);
            let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
            assert_eq!(c(&[endpoint]).unwrap(), Some(Protocol::HttpProtobuf));
            assert_eq!(
                c(&[(&own_endpoint, "http://h:4318/v1/x")]).unwrap(),
                Some(Protocol::HttpProtobuf)
            );
            assert_eq!(c(&[(&exporter, "otlp")]).unwrap(), Some(Protocol::HttpProtobuf));
            assert_eq!(c(&[endpoint, (&exporter, "none")]).unwrap(), None);
            assert_eq!(
                c(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(),
                Some(Protocol::Grpc)
            );
            assert_eq!(
                c(&[
                    endpoint,
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    (&own_protocol, "http/protobuf"),
                ])
                .unwrap(),
                Some(Protocol::HttpProtobuf)
            );
            let e = c(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
            assert!(e.to_string().contains("http/protobuf"), "{e}");
            assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
            let e = c(&[endpoint, (&own_protocol, "udp")]).unwrap_err();
            assert!(
                e.to_string().contains(&own_protocol),
                "the error names the variable: {e}"
            );
        }
        // One signal's settings leave the other alone.
        let traces_only = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://h:4318/v1/traces"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ];
        assert_eq!(config(Signal::Metrics, env(&traces_only)).unwrap(), None);
        assert_eq!(
            config(Signal::Traces, env(&traces_only)).unwrap(),
            Some(Protocol::HttpProtobuf)
        );
    }
}
