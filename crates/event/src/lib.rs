//! ferry's event contract.
//!
//! Every message between ferry's services is a CloudEvent 1.0 ([`cloudevents::Event`]). This crate
//! holds everything the services agree on:
//!
//! - [`kind`]: the event `type` strings (`dev.ferry.job.submitted`, …) and the topic each one
//!   travels on ([`Topic`], [`route`]);
//! - [`payload`]: the typed `data` of every event, with JSON Schemas derived from the same types
//!   (see `schemas/` at the repository root);
//! - [`template`]: the structured argument templates carried by planned and dispatched tasks, so
//!   that no service ever re-parses a value that came from data;
//! - [`envelope`]: building an event with ferry's extensions (`partitionkey`, `traceparent`,
//!   `ferryjob`, `ferryattempt`, `ferrybackend`; `ferrysig`, the signature the bus layer adds)
//!   and decoding its payload with a precise error;
//! - [`trace`]: the W3C trace context events carry, one trace per job;
//! - [`agent`]: agent task names and versions, and the dispatch topics they route to.

pub mod agent;
pub mod envelope;
pub mod kind;
pub mod payload;
pub mod template;
pub mod trace;

pub use cloudevents;
pub use cloudevents::{AttributesReader, Event};
pub use envelope::{DecodeError, EventBuilder, decode, new_id, now_ms};
pub use kind::{Topic, route};
