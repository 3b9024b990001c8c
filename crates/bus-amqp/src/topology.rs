//! The exchanges and queues of one namespace, declared idempotently.
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `NS` | durable topic exchange | every event, routing key [`Topic::name`]; unroutable events go to `NS.unrouted` |
//! | `NS.<group>` | durable quorum queue | one per consumer group, bound with each of its topics; dead-letters to `NS.dead` after [`DELIVERY_LIMIT`] deliveries |
//! | `NS.<group>.<random>` | exclusive, auto-deleted classic queue | an ephemeral group ([`Subscribe::ephemeral`]), gone with its subscription or connection |
//! | `NS.dead` | durable fanout exchange | where dead letters go, by the broker or by ferry |
//! | `NS:dead` | durable quorum queue bound to `NS.dead` | dead letters, with the `x-ferry-dead-reason` header when ferry moved them |
//! | `NS.unrouted` | durable fanout exchange, the alternate exchange of `NS` | events no group is bound for |
//! | `NS:unrouted` | durable classic queue bound to `NS.unrouted` | the newest [`UNROUTED_MAX`] of them |
//!
//! The `:` in ferry's own queue names keeps them apart from every group's `NS.<group>`.

use ferry_bus::Subscribe;
use ferry_event::Topic;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::error::{Error, Result};

/// Deliveries of one message (counting redeliveries after a nack or a lost consumer) after
/// which the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 20;
/// Most events kept in `NS:unrouted`; older ones are dropped.
pub const UNROUTED_MAX: i64 = 10_000;
/// The header that says why ferry dead-lettered a message.
pub const DEAD_REASON_HEADER: &str = "x-ferry-dead-reason";
/// The header that carries the topic's routing key of events given back from a batch message,
/// which are published straight to their group's queue.
pub const ROUTING_KEY_HEADER: &str = "x-ferry-routing-key";

/// The groups whose queues [`crate::AmqpBus::connect`] declares, so that work published before
/// the consuming service starts is kept.
pub fn standard_groups() -> Vec<Subscribe> {
    vec![
        Subscribe::new("planner", [Topic::Intake]),
        Subscribe::new("scheduler", [Topic::Control]),
        Subscribe::new("log-collector", [Topic::Logs]),
        Subscribe::new("launcher-local", [Topic::Dispatch("local".into())]),
    ]
}

/// The broker-side names of a namespace.
#[derive(Debug, Clone)]
pub struct Names {
    ns: String,
}

impl Names {
    pub fn new(ns: &str) -> Self {
        Names { ns: ns.to_string() }
    }

    /// The topic exchange every event is published to.
    pub fn exchange(&self) -> String {
        self.ns.clone()
    }

    /// The dead-letter exchange, every group queue's `x-dead-letter-exchange`.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.ns)
    }

    /// The queue of dead letters. Its separator is `:` so that it can never be the queue of a
    /// group (`NS.<group>`), not even of one named `dead`.
    pub fn dead_queue(&self) -> String {
        format!("{}:dead", self.ns)
    }

    /// The alternate exchange of events no group is bound for.
    pub fn unrouted(&self) -> String {
        format!("{}.unrouted", self.ns)
    }

    /// The queue keeping the newest unrouted events.
    pub fn unrouted_queue(&self) -> String {
        format!("{}:unrouted", self.ns)
    }

    /// The queue of a consumer group.
    pub fn queue(&self, group: &str) -> String {
        format!("{}.{group}", self.ns)
    }
}

/// An AMQP name, or an error naming what it is for.
pub(crate) fn short(what: &str, s: String) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|e| Error::Topology {
        what: what.to_string(),
        reason: format!("{e}: AMQP names are at most 255 bytes"),
    })
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![("x-queue-type", AMQPValue::LongString("quorum".into()))];
    pairs.extend_from_slice(extra);
    args(&pairs)
}

/// Declares the namespace's exchanges and the dead-letter and unrouted queues.
pub(crate) async fn declare_base(ch: &Channel, names: &Names, endpoint: &str) -> Result<()> {
    let fail = |what: String| move |e| Error::from_lapin(endpoint, what, e);
    for (name, queue, queue_args) in [
        (names.dead(), names.dead_queue(), quorum(&[])),
        (
            names.unrouted(),
            names.unrouted_queue(),
            args(&[("x-max-length", AMQPValue::LongLongInt(UNROUTED_MAX))]),
        ),
    ] {
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(fail(format!("exchange {name}")))?;
        ch.queue_declare(queue.as_str().into(), durable(), queue_args)
            .await
            .map_err(fail(format!("queue {queue}")))?;
        ch.queue_bind(
            queue.as_str().into(),
            name.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail(format!("binding of queue {queue}")))?;
    }
    let ex = names.exchange();
    ch.exchange_declare(
        ex.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange(),
        args(&[(
            "alternate-exchange",
            AMQPValue::LongString(names.unrouted().into()),
        )]),
    )
    .await
    .map_err(fail(format!("exchange {ex}")))?;
    Ok(())
}

/// Declares a group's queue and binds it with each of its topics.
pub(crate) async fn declare_group(
    ch: &Channel,
    names: &Names,
    spec: &Subscribe,
    endpoint: &str,
) -> Result<()> {
    let queue = names.queue(&spec.group);
    let qname = short("the queue of a consumer group", queue.clone())?;
    let (options, arguments) = if spec.ephemeral {
        // Gone with its consumer (auto-delete) or its connection (exclusive); quorum queues
        // cannot be either, so it is a classic one.
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        (options, FieldTable::default())
    } else {
        let arguments = quorum(&[
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(names.dead().into()),
            ),
            ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
        ]);
        (durable(), arguments)
    };
    ch.queue_declare(qname.clone(), options, arguments)
        .await
        .map_err(|e| Error::from_lapin(endpoint, format!("queue {queue}"), e))?;
    for topic in &spec.topics {
        let key = short("a routing key", topic.name())?;
        ch.queue_bind(
            qname.clone(),
            names.exchange().as_str().into(),
            key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::from_lapin(endpoint, format!("binding {queue} to {topic}"), e))?;
    }
    Ok(())
}
