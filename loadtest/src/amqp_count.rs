//! Counts the AMQP messages (not events: a batch message carries several) that RabbitMQ routes
//! on the watched topics, with an exclusive queue of its own that takes them without acks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// Messages counted so far; counting stops when it is dropped.
pub struct Counter {
    count: Arc<AtomicU64>,
    _conn: Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts counting messages with these routing keys in the namespace `bus_url` names.
pub async fn start(bus_url: &str, routing_keys: &[String]) -> Result<Counter> {
    let ns = ferry_bus::namespace_of(bus_url)?;
    let base = bus_url.split_once('?').map_or(bus_url, |(b, _)| b);
    let conn = Connection::connect(base, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ to count messages")?;
    let ch = conn.create_channel().await?;
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in routing_keys {
        ch.queue_bind(
            queue.name().clone(),
            ns.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(_)) = consumer.next().await {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(Counter {
        count,
        _conn: conn,
        task,
    })
}
