//! Shared by the RabbitMQ tests: the broker from `FERRY_TEST_AMQP`, a fresh namespace per test,
//! and a lock that keeps the broker-restart test from running while others use the broker.

#![allow(dead_code)]

use std::fs::File;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_bus::{Bus, Subscribe, Subscription};
use ferry_bus_amqp::AmqpBus;
use ferry_event::Event;

/// The test vhost's URL. Fails (never skips) when the services are not running.
pub fn amqp_url() -> String {
    std::env::var("FERRY_TEST_AMQP").unwrap_or_else(|_| {
        panic!(
            "FERRY_TEST_AMQP is not set: run ./scripts/test.sh, which starts RabbitMQ and sets it \
             (or `source scripts/services.sh && services_up` first)"
        )
    })
}

/// A namespace no other test uses.
pub fn fresh_namespace() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// The bus URL of a namespace.
pub fn url_of(ns: &str) -> String {
    let base = amqp_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}namespace={ns}")
}

/// Held while a test uses the broker: shared by ordinary tests, exclusive for the one that
/// stops and starts RabbitMQ (test binaries may run in parallel).
pub async fn broker_lock(exclusive: bool) -> File {
    tokio::task::spawn_blocking(move || {
        let path = std::env::temp_dir().join("ferry-bus-amqp-tests.lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("the lock file opens");
        if exclusive {
            f.lock().expect("locking works");
        } else {
            f.lock_shared().expect("locking works");
        }
        f
    })
    .await
    .expect("the lock task ends")
}

/// A bus in a fresh namespace that deletes the namespace when dropped: every queue holds file
/// handles on the broker, and a run that left them all behind would exhaust them.
pub struct TestBus(pub AmqpBus);

impl std::ops::Deref for TestBus {
    type Target = AmqpBus;
    fn deref(&self) -> &AmqpBus {
        &self.0
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let bus = self.0.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            tokio::task::block_in_place(|| {
                let cleanup =
                    tokio::time::timeout(std::time::Duration::from_secs(20), bus.delete_namespace());
                if let Ok(Err(e)) = rt.block_on(cleanup) {
                    eprintln!("deleting the test namespace failed: {e}");
                }
            });
        }
    }
}

/// A bus in a fresh namespace, with its namespace.
pub async fn fresh_bus() -> (TestBus, String) {
    let ns = fresh_namespace();
    let bus = AmqpBus::connect(&url_of(&ns))
        .await
        .unwrap_or_else(|e| panic!("connecting to RabbitMQ at FERRY_TEST_AMQP failed: {e}"));
    (TestBus(bus), ns)
}

/// A bus that holds the shared broker lock for as long as it lives.
pub struct LockedBus {
    pub bus: TestBus,
    _lock: File,
}

impl LockedBus {
    pub async fn fresh() -> Arc<dyn Bus> {
        let lock = broker_lock(false).await;
        let (bus, _) = fresh_bus().await;
        Arc::new(LockedBus { bus, _lock: lock })
    }
}

#[async_trait]
impl Bus for LockedBus {
    async fn publish(&self, events: &[Event]) -> ferry_bus::Result<()> {
        self.bus.publish(events).await
    }

    async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
        self.bus.subscribe(spec).await
    }

    async fn declare(&self, spec: &Subscribe) -> ferry_bus::Result<()> {
        self.bus.declare(spec).await
    }
}

/// A plain lapin connection and channel to the test vhost, for publishing and inspecting
/// without ferry.
pub async fn raw_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("a raw connection opens");
    let ch = conn.create_channel().await.expect("a raw channel opens");
    (conn, ch)
}
