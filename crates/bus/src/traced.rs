//! A bus whose publishes are spans of the trace they happen in: [`Traced`] wraps any bus of a
//! process that exports traces.

use std::sync::Arc;

use async_trait::async_trait;
use ferry_event::trace::TraceParent;
use ferry_event::{AttributesReader as _, Event};
use tracing::Instrument as _;

use crate::{Bus, Result, Subscribe, Subscription};

/// Each publish made inside a span of a trace is a `bus.publish` span, a child of that span,
/// with the number of events and, for one event, its type and id; a publish outside any trace
/// starts none (it would be a trace of its own, about nothing).
pub struct Traced {
    inner: Arc<dyn Bus>,
}

impl Traced {
    pub fn new(inner: Arc<dyn Bus>) -> Self {
        Traced { inner }
    }
}

#[async_trait]
impl Bus for Traced {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        if TraceParent::current().is_none() {
            return self.inner.publish(events).await;
        }
        let one = (events.len() == 1).then(|| &events[0]);
        let span = tracing::info_span!(
            "bus.publish",
            events = events.len(),
            "ferry.event.type" = one.map(|e| e.ty()),
            "ferry.event.id" = one.map(|e| e.id()),
        );
        self.inner.publish(events).instrument(span).await
    }

    async fn subscribe(&self, spec: Subscribe) -> Result<Subscription> {
        self.inner.subscribe(spec).await
    }

    async fn declare(&self, spec: &Subscribe) -> Result<()> {
        self.inner.declare(spec).await
    }

    fn max_event_bytes(&self) -> Option<usize> {
        self.inner.max_event_bytes()
    }
}
