//! Building and reading ferry's CloudEvents.

use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Data, Event, EventBuilder as _, EventBuilderV10};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::kind::EXT_BACKEND;
pub use crate::trace::{trace_id, traceparent};

/// Partitioning extension: the job id, used as the Kafka message key.
pub const EXT_PARTITION_KEY: &str = "partitionkey";
/// Distributed tracing extension (W3C trace context). One job is one trace ([`crate::trace`]).
pub const EXT_TRACEPARENT: &str = "traceparent";
/// The job an event belongs to.
pub const EXT_JOB: &str = "ferryjob";
/// The attempt an event belongs to, where there is one.
pub const EXT_ATTEMPT: &str = "ferryattempt";
/// The launcher an attempt's events come from, or a `task.cancel` is for: the launcher's
/// identity, stable across its restarts (it is kept beside its journal). The scheduler accepts an
/// attempt's reports only from the launcher that first took it up (fencing), and a launcher acts
/// only on cancels addressed to it or to every launcher.
pub const EXT_LAUNCHER: &str = "ferrylauncher";
/// The signature of the service that published the event: `v1:KEY-ID:SIGNATURE` (base64 of an
/// HMAC-SHA256 over the other attributes and the data). Set and checked by the bus layer
/// (`ferry_bus::signing`), never by a service itself.
pub const EXT_SIGNATURE: &str = "ferrysig";

/// A new unique, time-ordered id (UUID v7) for events, jobs and attempts.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How a deployed flow is named in events and listings: `NAMESPACE/ID`, or `ID` alone for a
/// flow without a namespace.
pub fn flow_key(namespace: Option<&str>, flow_id: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{flow_id}"),
        None => flow_id.to_string(),
    }
}

/// Builds a ferry event: `type`, `source`, `subject`, a fresh `id`, `time`, JSON `data` and
/// ferry's extensions.
#[derive(Debug, Clone)]
pub struct EventBuilder {
    source: String,
    /// Set on every event built ([`EXT_LAUNCHER`]): a launcher's identity.
    launcher: Option<String>,
}

impl EventBuilder {
    /// `source` names the emitting service instance, e.g. `ferry/scheduler/host-1234`.
    pub fn new(source: impl Into<String>) -> Self {
        EventBuilder {
            source: source.into(),
            launcher: None,
        }
    }

    /// A builder of a launcher's events: each carries its identity ([`EXT_LAUNCHER`]).
    pub fn with_launcher(mut self, identity: impl Into<String>) -> Self {
        self.launcher = Some(identity.into());
        self
    }

    /// The launcher identity its events carry, if any.
    pub fn launcher(&self) -> Option<&str> {
        self.launcher.as_deref()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// A job-level event.
    pub fn job<T: Serialize>(&self, ty: &str, job_id: &str, data: &T) -> Event {
        self.build(ty, Some(job_id), job_id, None, None, data)
    }

    /// An event of this service instance rather than of a job (`launcher.presence`): its
    /// subject and partition key are the instance, and it carries no job or trace.
    pub fn instance<T: Serialize>(&self, ty: &str, data: &T) -> Event {
        let source = self.source.clone();
        self.build(ty, None, &source, None, None, data)
    }

    /// An event about a deployed flow (`flow.deployed`, …): its subject and partition key
    /// are `key`, the flow's [`flow_key`], so that a flow's events stay in order; it carries
    /// no job.
    pub fn flow<T: Serialize>(&self, ty: &str, key: &str, data: &T) -> Event {
        self.build(ty, None, key, None, None, data)
    }

    /// A task-level event; the subject is `JOB/TASK`.
    pub fn task<T: Serialize>(
        &self,
        ty: &str,
        job_id: &str,
        task_id: &str,
        attempt_id: Option<&str>,
        data: &T,
    ) -> Event {
        let subject = format!("{job_id}/{task_id}");
        self.build(ty, Some(job_id), &subject, attempt_id, None, data)
    }

    /// A dispatch-class event (`task.dispatched`, `task.cancel`) for one backend.
    pub fn dispatch<T: Serialize>(
        &self,
        ty: &str,
        job_id: &str,
        task_id: &str,
        attempt_id: &str,
        backend: &str,
        data: &T,
    ) -> Event {
        let subject = format!("{job_id}/{task_id}");
        self.build(ty, Some(job_id), &subject, Some(attempt_id), Some(backend), data)
    }

    fn build<T: Serialize>(
        &self,
        ty: &str,
        job_id: Option<&str>,
        subject: &str,
        attempt_id: Option<&str>,
        backend: Option<&str>,
        data: &T,
    ) -> Event {
        let bytes = serde_json::to_vec(data).expect("event payloads serialize to JSON");
        let mut b = EventBuilderV10::new()
            .id(new_id())
            .ty(ty)
            .source(self.source.clone())
            .subject(subject)
            .time(chrono::Utc::now())
            .extension(EXT_PARTITION_KEY, job_id.unwrap_or(subject));
        if let Some(job_id) = job_id {
            b = b
                .extension(EXT_JOB, job_id)
                .extension(EXT_TRACEPARENT, traceparent(job_id));
        }
        if let Some(a) = attempt_id {
            b = b.extension(EXT_ATTEMPT, a);
        }
        if let Some(be) = backend {
            b = b.extension(EXT_BACKEND, be);
        }
        if let Some(l) = &self.launcher {
            b = b.extension(EXT_LAUNCHER, l.as_str());
        }
        let mut event = b.build().expect("all required CloudEvent attributes are set");
        event.set_data("application/json", Data::Binary(bytes));
        event
    }
}

/// Why an event's payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event {id} ({ty}) has no data")]
    NoData { id: String, ty: String },
    #[error("event {id} ({ty}) has data that is not valid for its type: {source}")]
    Invalid {
        id: String,
        ty: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes the JSON `data` of an event into its payload type.
pub fn decode<T: DeserializeOwned>(event: &Event) -> Result<T, DecodeError> {
    let invalid = |source| DecodeError::Invalid {
        id: event.id().to_string(),
        ty: event.ty().to_string(),
        source,
    };
    match event.data() {
        Some(Data::Binary(b)) => serde_json::from_slice(b).map_err(invalid),
        Some(Data::String(s)) => serde_json::from_str(s).map_err(invalid),
        Some(Data::Json(v)) => T::deserialize(v).map_err(invalid),
        None => Err(DecodeError::NoData {
            id: event.id().to_string(),
            ty: event.ty().to_string(),
        }),
    }
}

/// A string extension of an event, if present.
pub fn extension(event: &Event, name: &str) -> Option<String> {
    event.extension(name).map(|v| match v {
        ExtensionValue::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The launcher an event comes from or is addressed to ([`EXT_LAUNCHER`]).
pub fn launcher_of(event: &Event) -> Option<String> {
    extension(event, EXT_LAUNCHER).filter(|l| !l.is_empty())
}

/// The job an event belongs to (`ferryjob`, falling back to `partitionkey`).
pub fn job_of(event: &Event) -> Option<String> {
    extension(event, EXT_JOB).or_else(|| extension(event, EXT_PARTITION_KEY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind;

    #[test]
    fn events_carry_partition_key_and_trace_of_their_job() {
        let b = EventBuilder::new("ferry/test");
        let job = new_id();
        let e = b.job(kind::JOB_CANCEL, &job, &serde_json::json!({"jobId": job}));
        assert_eq!(extension(&e, EXT_PARTITION_KEY).as_deref(), Some(job.as_str()));
        let tp = extension(&e, EXT_TRACEPARENT).unwrap();
        assert!(tp.starts_with(&format!("00-{}-", trace_id(&job))), "{tp}");
        assert_eq!(tp.len(), 55);
        let v: serde_json::Value = decode(&e).unwrap();
        assert_eq!(v["jobId"], job.as_str());
    }

    #[test]
    fn trace_ids_of_non_uuid_jobs_are_stable_and_valid() {
        let a = trace_id("nightly-2026-01-01");
        assert_eq!(a, trace_id("nightly-2026-01-01"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, trace_id("nightly-2026-01-02"));
    }
}
