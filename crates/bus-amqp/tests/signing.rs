//! Signed events on RabbitMQ: forged events published straight to the broker are dead-lettered
//! with their reason and never reach a service; intake stays open; replays come under their id.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_bus::Bus;
use ferry_bus::conformance::WAIT;
use ferry_bus_amqp::mapping::{from_amqp, string_header};
use ferry_bus_amqp::topology::DEAD_REASON_HEADER;
use ferry_event::AttributesReader;
use lapin::options::BasicGetOptions;

ferry_bus::signing_conformance_tests!(common::LockedBus::fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_are_dead_lettered_with_their_reason() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let raw: Arc<dyn Bus> = Arc::new(bus.0.clone());
    let expected = ferry_bus::conformance_signing::forged_events_are_dead_lettered_never_delivered(raw).await;

    let (_conn, ch) = common::raw_channel().await;
    let mut reasons = std::collections::HashMap::new();
    let deadline = Instant::now() + WAIT;
    while reasons.len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} dead letters in {ns}:dead",
            reasons.len(),
            expected.len()
        );
        let Some(m) = ch
            .basic_get(format!("{ns}:dead").into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let event = from_amqp(&m.delivery.properties, &m.delivery.data).expect("a dead letter is the event");
        let reason = string_header(&m.delivery.properties, DEAD_REASON_HEADER).unwrap_or_default();
        reasons.insert(event.id().to_string(), reason);
    }
    for want in expected {
        let reason = reasons
            .get(&want.event_id)
            .unwrap_or_else(|| panic!("{} was not dead-lettered: {reasons:?}", want.event_id));
        assert!(reason.contains(want.reason), "{}: {reason}", want.reason);
    }
}
