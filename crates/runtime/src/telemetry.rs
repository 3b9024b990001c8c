//! `tracing` set-up shared by every binary: the log on stderr and, when configured, the
//! export of traces ([`crate::trace`]) and of metrics ([`crate::metrics`]) over OTLP.

use std::io::{IsTerminal, Write as _};

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// What [`init`] set up; keep it until the process ends. Dropping it (or [`Telemetry::shutdown`])
/// exports the spans not yet sent, so that those of the last events handled are not lost, and
/// the metrics a last time.
#[must_use = "dropping it stops the export of traces and metrics"]
#[derive(Default)]
pub struct Telemetry {
    traces: Option<crate::trace::Exporter>,
    metrics: Option<crate::metrics::Exporter>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.traces.is_some())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Exports the metrics over OTLP too, as `service` unless `OTEL_SERVICE_NAME` says
    /// otherwise, when the standard variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` set, or `OTEL_METRICS_EXPORTER=otlp`
    /// (`OTEL_METRICS_EXPORTER=none` turns it off whatever else is set); protocol, headers,
    /// timeout and interval as for traces, from the `…_METRICS_…` variables or the general
    /// ones. For processes that run services; a command that only talks to a deployment has
    /// no metrics of its own. Otherwise nothing of it is installed and recording a metric costs
    /// what it did.
    pub fn export_metrics(&mut self, service: &str) {
        if self.metrics.is_some() {
            return;
        }
        match crate::metrics::Exporter::from_env(service) {
            Ok(exporter) => self.metrics = exporter,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "warning: metrics are not exported: {e}");
            }
        }
    }

    /// Exports the spans not yet sent and the metrics a last time, and stops exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.shutdown();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs a global subscriber writing to stderr. The filter comes from `FERRY_LOG` (then
/// `RUST_LOG`), falling back to `default_filter`; `FERRY_LOG_FORMAT=json` selects JSON lines.
///
/// When the standard OpenTelemetry variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_TRACES_EXPORTER=otlp`; see [`crate::trace`])
/// spans are also exported over OTLP, as `service` unless `OTEL_SERVICE_NAME` says otherwise, and
/// JSON log records inside a span carry its `trace_id` and `span_id`. Otherwise nothing of
/// OpenTelemetry is installed. Calling it twice is harmless: the second call changes nothing.
pub fn init(default_filter: &str, service: &str) -> Telemetry {
    let filter = std::env::var("FERRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_string());
    let format = match std::env::var("FERRY_LOG_FORMAT").as_deref() {
        Ok("json") => Format::Json,
        _ => Format::Human,
    };
    let ansi = std::io::stderr().is_terminal();
    let exporter = match crate::trace::Exporter::from_env(service) {
        Ok(exporter) => exporter,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "warning: traces are not exported: {e}");
            None
        }
    };
    let layer = exporter.as_ref().map(|e| e.layer());
    let sub = subscriber(&filter, format, ansi, std::io::stderr, layer);
    if tracing::subscriber::set_global_default(sub).is_err() {
        // Already set up: this exporter would receive nothing.
        return Telemetry::default();
    }
    if exporter.is_some() {
        crate::trace::enable();
    }
    Telemetry {
        traces: exporter,
        metrics: None,
    }
}

/// The subscriber [`init`] installs, writing to `writer`, with `traces` (the OpenTelemetry
/// layer) beside the log when there is one.
fn subscriber<W>(
    filter: &str,
    format: Format,
    ansi: bool,
    writer: W,
    traces: Option<crate::trace::Layer>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let with_ids = traces.is_some();
    let log: Box<dyn Layer<Registry> + Send + Sync> = match format {
        Format::Json => {
            let json = tracing_subscriber::fmt::layer().json().with_writer(writer);
            if with_ids {
                let json = json.map_event_format(TraceIds);
                json.with_filter(EnvFilter::new(filter)).boxed()
            } else {
                json.with_filter(EnvFilter::new(filter)).boxed()
            }
        }
        Format::Human => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .with_target(false)
            .fmt_fields(Visible(DefaultFields::new()))
            .with_filter(EnvFilter::new(filter))
            .boxed(),
    };
    let mut layers = vec![log];
    layers.extend(traces);
    Box::new(Registry::default().with(layers))
}

/// JSON log records inside a span of an exported trace start with its `trace_id` and
/// `span_id`, so that a record leads to its trace and back.
struct TraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for TraceIds<F>
where
    F: FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(span) = ferry_event::trace::TraceParent::current() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut record = String::new();
        self.0.format_event(ctx, Writer::new(&mut record), event)?;
        match record.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{:032x}\",\"span_id\":\"{:016x}\",{rest}",
                span.trace_id, span.span_id
            ),
            None => writer.write_str(&record),
        }
    }
}

/// Fields as tracing-subscriber writes them, with control characters shown as escapes: a
/// value from outside (an event id, a task's error) cannot start a forged record with a
/// newline nor colour the log. JSON lines need none of this: JSON strings escape them.
struct Visible(DefaultFields);

impl<'w> FormatFields<'w> for Visible {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut text = String::new();
        self.0.format_fields(Writer::new(&mut text), fields)?;
        writer.write_str(&crate::text::visible(&text))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;

        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    fn log_with(format: Format, ansi: bool) -> String {
        let out = Captured::default();
        let sub = subscriber("info", format, ansi, out.clone(), None);
        // An event id and a reason as a publisher could send them: a forged line and a colour.
        let id = "e1\n2026-01-01T00:00:00Z  INFO forged: all is well\x1b[31m";
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("delivery", event_id = %id);
            let _in = span.enter();
            tracing::warn!(event_id = %id, reason = ?id, "event {id} refused");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn outside_strings_cannot_forge_lines_or_colours_in_the_service_log() {
        for format in [Format::Human, Format::Json] {
            let text = log_with(format, false);
            assert_eq!(
                text.matches('\n').count(),
                1,
                "{format:?}: one record, one line:\n{text}"
            );
            assert!(
                !text.contains('\x1b'),
                "{format:?}: a raw ESC reached the log: {text:?}"
            );
            assert!(
                text.contains("forged"),
                "{format:?}: the value is still shown: {text}"
            );
        }
        // On a terminal the log has colours of its own, and still none from the value.
        let text = log_with(Format::Human, true);
        assert_eq!(text.matches('\n').count(), 1, "one record, one line:\n{text}");
        assert!(
            !text.contains("\x1b[31m"),
            "the value's colour reached the log: {text:?}"
        );
    }
}
