//! Which messages carry a batch of events.
//!
//! On topics whose only consumers are ferry's own services (`control`, `dispatch.*`,
//! `cancel.*`, `logs`), events published together travel as batch messages
//! (`application/cloudevents-batch+json`) of up to [`events_per_message`] events and
//! [`BATCH_BYTES`]: RabbitMQ's work and a consumer's are mostly per message, and a task's
//! dispatch, start and end each cost one otherwise. Events on `lifecycle`, which other systems
//! subscribe to, and on `intake`, travel one per message in binary mode.

use ferry_event::{AttributesReader, Event, Topic, route};
use lapin::types::ShortString;

use crate::error::Result;
use crate::mapping::{self, AmqpMessage};
use crate::topology::short;

/// Most bytes of events in one batch message; a larger event travels alone.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Most events one message on `topic` carries. Dispatches come in smaller batches: a launcher
/// holds the events of its messages until each has started, and so keeps work from the other
/// launchers of its backend for as long.
pub fn events_per_message(topic: &Topic) -> usize {
    match topic {
        Topic::Control | Topic::Cancel(_) | Topic::Logs => 64,
        Topic::Dispatch(_) => 8,
        Topic::Intake | Topic::Lifecycle => 1,
    }
}

/// One message to publish.
pub(crate) struct Outbound {
    pub key: ShortString,
    pub message: AmqpMessage,
    /// The index of its first event, named when the broker does not take the message.
    pub first: usize,
}

/// Events of one topic collected for its next batch message.
struct Open {
    topic: Topic,
    /// Each event's index and JSON.
    items: Vec<(usize, Vec<u8>)>,
    bytes: usize,
}

/// The messages that carry `events`, keeping their order per topic: on batched topics the
/// events of each topic in batch messages, every other event in a binary-mode message of its
/// own.
pub(crate) fn messages(events: &[Event]) -> Result<Vec<Outbound>> {
    let mut out = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let topic = route(event);
        let most = events_per_message(&topic);
        if most == 1 {
            out.push(Outbound {
                key: short("a routing key", topic.name())?,
                message: mapping::to_amqp(event)?,
                first: i,
            });
            continue;
        }
        let json = mapping::to_json(event)?;
        let slot = match open.iter().position(|o| o.topic == topic) {
            Some(p) => p,
            None => {
                open.push(Open {
                    topic,
                    items: Vec::new(),
                    bytes: 0,
                });
                open.len() - 1
            }
        };
        let o = &mut open[slot];
        if !o.items.is_empty() && (o.items.len() >= most || o.bytes + json.len() > BATCH_BYTES) {
            seal(&mut out, o, events)?;
        }
        o.bytes += json.len() + 1;
        o.items.push((i, json));
    }
    for mut o in open {
        seal(&mut out, &mut o, events)?;
    }
    Ok(out)
}

/// Turns the events collected for a topic into a message: a batch message, or a binary-mode
/// one when there is only one.
fn seal(out: &mut Vec<Outbound>, o: &mut Open, events: &[Event]) -> Result<()> {
    let items = std::mem::take(&mut o.items);
    o.bytes = 0;
    let Some(&(first, _)) = items.first() else {
        return Ok(());
    };
    let message = if items.len() == 1 {
        mapping::to_amqp(&events[first])?
    } else {
        mapping::to_amqp_batch(Some(events[first].id()), items.iter().map(|(_, j)| j.as_slice()))
    };
    out.push(Outbound {
        key: short("a routing key", o.topic.name())?,
        message,
        first,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use ferry_event::{EventBuilder, kind};

    use super::*;

    fn dispatch(n: usize) -> Event {
        dispatch_with(n, &serde_json::json!({"n": n}))
    }

    fn dispatch_with(n: usize, data: &serde_json::Value) -> Event {
        EventBuilder::new("test").dispatch(
            kind::TASK_DISPATCHED,
            "job-1",
            &format!("t{n}"),
            &format!("a{n}"),
            "local",
            data,
        )
    }

    fn lifecycle(n: usize) -> Event {
        EventBuilder::new("test").job(
            kind::JOB_SUCCEEDED,
            &format!("job-{n}"),
            &serde_json::json!({"n": n}),
        )
    }

    #[test]
    fn batched_topics_share_messages_in_order_and_lifecycle_events_travel_alone() {
        let mut events: Vec<Event> = (0..20).map(dispatch).collect();
        events.insert(3, lifecycle(0));
        events.push(lifecycle(1));
        let out = messages(&events).unwrap();
        let keys: Vec<&str> = out.iter().map(|m| m.key.as_str()).collect();
        // Lifecycle events go out where they come; dispatches in messages of 8, 8, then 4.
        assert_eq!(
            keys,
            [
                "lifecycle",
                "dispatch.local",
                "dispatch.local",
                "lifecycle",
                "dispatch.local"
            ]
        );
        let batch = mapping::from_amqp_batch(&out[1].message.body).unwrap();
        assert!(mapping::is_batch(&out[1].message.properties));
        assert_eq!(batch.len(), 8);
        let ids: Vec<String> = batch
            .into_iter()
            .map(|(_, e)| e.unwrap().id().to_string())
            .collect();
        let expected: Vec<String> = events
            .iter()
            .filter(|e| route(e) == Topic::Dispatch("local".into()))
            .take(8)
            .map(|e| e.id().to_string())
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(mapping::from_amqp_batch(&out[4].message.body).unwrap().len(), 4);
        assert!(!mapping::is_batch(&out[0].message.properties));
    }

    #[test]
    fn a_lone_event_travels_in_binary_mode() {
        let sent = dispatch(0);
        let out = messages(std::slice::from_ref(&sent)).unwrap();
        assert_eq!(out.len(), 1);
        assert!(!mapping::is_batch(&out[0].message.properties));
        let event = mapping::from_amqp(&out[0].message.properties, &out[0].message.body).unwrap();
        assert_eq!(event, sent);
    }

    #[test]
    fn batches_stop_short_of_the_byte_limit() {
        let big = "x".repeat(100 * 1024);
        let events: Vec<Event> = (0..5)
            .map(|n| dispatch_with(n, &serde_json::json!({"pad": big})))
            .collect();
        let out = messages(&events).unwrap();
        let sizes: Vec<usize> = out
            .iter()
            .map(|m| mapping::from_amqp_batch(&m.message.body).map_or(1, |b| b.len()))
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(out.iter().all(|m| m.message.body.len() <= BATCH_BYTES + 2));
    }
}
