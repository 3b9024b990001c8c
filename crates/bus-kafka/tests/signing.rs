//! Signed events on Kafka: forged events produced straight to the broker are dead-lettered with
//! their reason and never reach a service; intake stays open; replays come under their id.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ferry_bus::Bus;
use ferry_bus::conformance::WAIT;
use rdkafka::message::{Headers, Message};

ferry_bus::signing_conformance_tests!(common::fresh_bus());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_are_dead_lettered_with_their_reason() {
    let ns = common::namespace();
    let raw: Arc<dyn Bus> = Arc::new(common::bus_in(&ns).await);
    let expected = ferry_bus::conformance_signing::forged_events_are_dead_lettered_never_delivered(raw).await;

    let dead = common::dead_letter_reader(&ns);
    let mut reasons: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while reasons.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, dead.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} dead letters", reasons.len(), expected.len()))
            .expect("reading the dead-letter topic");
        let headers = m.headers().expect("dead letters carry headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let id = header("ce_id").expect("the event's id");
        reasons.insert(id, header("ferry_dead_reason").unwrap_or_default());
    }
    for want in expected {
        let reason = reasons
            .get(&want.event_id)
            .unwrap_or_else(|| panic!("{} was not dead-lettered: {reasons:?}", want.event_id));
        assert!(reason.contains(want.reason), "{}: {reason}", want.reason);
    }
}
