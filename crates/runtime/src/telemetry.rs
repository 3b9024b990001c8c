//! `tracing` set-up shared by every binary.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// Installs a global subscriber writing to stderr. The filter comes from `FERRY_LOG` (then
/// `RUST_LOG`), falling back to `default_filter`; `FERRY_LOG_FORMAT=json` selects JSON lines.
/// Calling it twice is harmless.
pub fn init(default_filter: &str) {
    let filter = std::env::var("FERRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_string());
    let format = match std::env::var("FERRY_LOG_FORMAT").as_deref() {
        Ok("json") => Format::Json,
        _ => Format::Human,
    };
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing::subscriber::set_global_default(subscriber(&filter, format, ansi, std::io::stderr));
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(
    filter: &str,
    format: Format,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        Format::Json => Box::new(builder.json().finish()),
        Format::Human => Box::new(
            builder
                .with_target(false)
                .fmt_fields(Visible(DefaultFields::new()))
                .finish(),
        ),
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
        let sub = subscriber("info", format, ansi, out.clone());
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
