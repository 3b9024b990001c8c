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

/// A queue's publisher may name any topic in the message (`x-ferry-routing-key`) and may reach
/// any queue through the default exchange, past the topic permissions of `docs/security.md`:
/// neither makes an unsigned ferry event acceptable to a service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_dispatch_claiming_to_be_intake_is_refused() {
    use ferry_bus::Subscribe;
    use ferry_bus::signing::{Keyring, Signed};
    use ferry_bus_amqp::mapping::{to_amqp, with_string_header};
    use ferry_bus_amqp::topology::{Names, ROUTING_KEY_HEADER};
    use ferry_event::{EventBuilder, Topic, kind};
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let raw: Arc<dyn Bus> = Arc::new(bus.0.clone());
    let keys = Keyring::generate();
    let launcher = Signed::new(raw, keys);
    let group = "signed-launcher";
    let mut sub = launcher
        .subscribe(Subscribe::new(group, [Topic::Dispatch("local".into())]))
        .await
        .unwrap();

    let forged = EventBuilder::new("ferry/scheduler/forged").job(
        kind::TASK_DISPATCHED,
        "job-1",
        &serde_json::json!({"jobId": "job-1", "taskId": "t", "command": ["sh", "-c", "echo pwned"]}),
    );
    let m = to_amqp(&forged).unwrap();
    let (_conn, ch) = common::raw_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let queue = Names::new(&ns).queue(group);
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        &m.body,
        with_string_header(m.properties, ROUTING_KEY_HEADER, "intake"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // A real dispatch after it: the forged one, ahead in the queue, must not come first.
    let real = EventBuilder::new("ferry/scheduler/real").job(
        kind::TASK_DISPATCHED,
        "job-2",
        &serde_json::json!({"jobId": "job-2"}),
    );
    launcher.publish(std::slice::from_ref(&real)).await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("the real dispatch arrives")
        .unwrap()
        .unwrap();
    assert_eq!(d.event.id(), real.id(), "the forged dispatch was delivered");
    d.ack().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the forged dispatch was not dead-lettered"
        );
        if let Some(m) = ch
            .basic_get(format!("{ns}:dead").into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let event = from_amqp(&m.delivery.properties, &m.delivery.data).unwrap();
            assert_eq!(event.id(), forged.id());
            let reason = string_header(&m.delivery.properties, DEAD_REASON_HEADER).unwrap_or_default();
            assert!(reason.contains("not signed"), "{reason}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
