//! The W3C trace context events carry in their `traceparent` extension: one job is one trace.
//!
//! A job's trace id is derived from its id ([`trace_id`]), so every service agrees on it without
//! coordination, and so does its root span's id ([`root_span_id`]): the span of the moment the
//! job was submitted. An event carries the span of whoever published it: the service span it was
//! built in when the process exports traces ([`TraceParent::current`], read from the
//! OpenTelemetry context the tracing layer activates), and otherwise the job's root span. A
//! service handling an event makes its span a child of the span the event names, so that a job's
//! spans across every service form one tree under its root.

use opentelemetry::trace::TraceContextExt as _;

/// A parsed `traceparent` (version `00`): `00-TRACE_ID-SPAN_ID-FLAGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    /// The trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` value. Versions other than `00` are read by their first four
    /// fields, as the W3C recommendation asks; all-zero ids are invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || (version == "00" && parts.next().is_some())
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
            return None;
        }
        let parsed = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.span_id != 0).then_some(parsed)
    }

    /// The root span of a job's trace: the moment it was submitted. Sampled.
    pub fn job_root(job_id: &str) -> TraceParent {
        TraceParent {
            trace_id: trace_id_u128(job_id),
            span_id: root_span_id(job_id),
            flags: 1,
        }
    }

    /// The span of the current OpenTelemetry context (the tracing span entered, when the
    /// process exports traces), if there is a valid one.
    pub fn current() -> Option<TraceParent> {
        opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid().then(|| TraceParent {
                trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
                span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
                flags: sc.trace_flags().to_u8(),
            })
        })
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// The W3C trace id of a job, as 32 hex digits: derived from its id so every service agrees
/// without coordination.
pub fn trace_id(job_id: &str) -> String {
    format!("{:032x}", trace_id_u128(job_id))
}

fn trace_id_u128(job_id: &str) -> u128 {
    match uuid::Uuid::parse_str(job_id) {
        Ok(u) if !u.is_nil() => u.as_u128(),
        _ => {
            // Not a UUID (an id chosen by an external submitter): hash it into 128 bits.
            let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
            for b in job_id.bytes() {
                h ^= b as u128;
                h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
            }
            h.max(1)
        }
    }
}

/// The id of a job's root span, derived from its trace id (never zero).
pub fn root_span_id(job_id: &str) -> u64 {
    let t = trace_id_u128(job_id);
    // Mixed so that it looks nothing like either half of the trace id (splitmix64's finaliser).
    let mut z = ((t >> 64) as u64) ^ (t as u64).rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}

/// The `traceparent` an event of the job gets now: the current span's when it belongs to the
/// job's trace, otherwise the job's root span's.
pub fn traceparent(job_id: &str) -> String {
    let root = TraceParent::job_root(job_id);
    match TraceParent::current() {
        Some(current) if current.trace_id == root.trace_id => current.to_string(),
        _ => root.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip() {
        let job = crate::new_id();
        let tp = TraceParent::job_root(&job);
        let text = tp.to_string();
        assert_eq!(text.len(), 55);
        assert_eq!(TraceParent::parse(&text), Some(tp));
        assert!(text.starts_with(&format!("00-{}-", trace_id(&job))), "{text}");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let parsed = TraceParent::parse(unsampled).unwrap();
        assert!(!parsed.sampled());
        assert_eq!(parsed.to_string(), unsampled);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version is read by its first fields.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }

    #[test]
    fn without_a_current_span_events_name_the_jobs_root() {
        let job = crate::new_id();
        assert_eq!(traceparent(&job), TraceParent::job_root(&job).to_string());
        assert_ne!(root_span_id(&job), root_span_id(&crate::new_id()));
    }

    #[test]
    fn events_built_in_a_span_of_the_jobs_trace_name_that_span() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let job = crate::new_id();
        let root = TraceParent::job_root(&job);
        let span = SpanContext::new(
            TraceId::from_bytes(root.trace_id.to_be_bytes()),
            SpanId::from_bytes(0x1234_5678_9abc_def0u64.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let _in = opentelemetry::Context::new()
            .with_remote_span_context(span)
            .attach();
        let builder = crate::EventBuilder::new("ferry/test");
        let event = builder.job(crate::kind::JOB_CANCEL, &job, &());
        let tp = crate::envelope::extension(&event, crate::envelope::EXT_TRACEPARENT).unwrap();
        assert_eq!(tp, format!("00-{}-123456789abcdef0-01", trace_id(&job)));
        // An event of another job does not join this trace.
        let other = crate::new_id();
        let event = builder.job(crate::kind::JOB_CANCEL, &other, &());
        let tp = crate::envelope::extension(&event, crate::envelope::EXT_TRACEPARENT).unwrap();
        assert_eq!(tp, TraceParent::job_root(&other).to_string());
    }
}
