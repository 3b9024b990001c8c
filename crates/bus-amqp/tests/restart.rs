//! The broker restarts mid-test: publishing fails fast while it is down, then publishing and
//! consuming resume by themselves and no confirmed event is lost.
//!
//! `rabbitmqctl stop_app` stops RabbitMQ for every vhost on the machine, so this test holds the
//! broker lock exclusively and always starts the app again, even when it fails.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_bus::{Bus, Subscribe};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(["--timeout", "60"])
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the RabbitMQ app again when dropped, also on panic.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["--timeout", "60", "start_app"])
            .status();
        let _ = Command::new("rabbitmqctl")
            .args(["--timeout", "60", "await_startup"])
            .status();
    }
}

fn batch(b: &EventBuilder, range: std::ops::Range<u64>) -> Vec<Event> {
    range
        .map(|n| b.job(kind::JOB_CANCEL, "job-1", &serde_json::json!({"n": n})))
        .collect()
}

fn n_of(e: &Event) -> u64 {
    let v: serde_json::Value = ferry_event::decode(e).unwrap();
    v["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_resume_after_a_broker_restart_and_nothing_confirmed_is_lost() {
    let _lock = common::broker_lock(true).await;
    let (bus, _) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("restart", [Topic::Control]).prefetch(10))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    bus.publish(&batch(&b, 0..100))
        .await
        .expect("publishing before the restart works");
    let mut seen = BTreeSet::new();
    // Take a few and ack them; the rest stays queued or unacked across the restart.
    for _ in 0..5 {
        let d = ferry_bus::conformance::next(&mut sub).await;
        seen.insert(n_of(&d.event));
        d.ack().await.unwrap();
    }

    // Deliveries held unsettled across the restart: settling them afterwards must end (it
    // cannot succeed, their channel is gone) rather than wait for good.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(ferry_bus::conformance::next(&mut sub).await);
    }

    let guard = StartAgain;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while bus.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the bus did not notice the broker stopping"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let err = bus
        .publish(&batch(&b, 100..101))
        .await
        .expect_err("publishing while the broker is down fails");
    assert!(err.is_transient(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "failing took {:?}",
        start.elapsed()
    );

    tokio::task::spawn_blocking(|| rabbitmqctl(&["start_app"]))
        .await
        .unwrap();
    drop(guard);

    for (i, d) in held.into_iter().enumerate() {
        let settled = tokio::time::timeout(Duration::from_secs(30), async {
            if i % 2 == 0 { d.ack().await } else { d.nack().await }
        })
        .await;
        let Ok(result) = settled else {
            panic!("settling a delivery of the broker's previous run did not end within 30s");
        };
        println!("settling a delivery of the previous run: {result:?}");
    }

    // The caller's retry loop: keep the events and publish them again until confirmed.
    let after = batch(&b, 100..200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut retries = 0;
    while let Err(e) = bus.publish(&after).await {
        assert!(e.is_transient(), "{e}");
        assert!(Instant::now() < deadline, "publishing did not resume: {e}");
        retries += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("publishing resumed after {retries} retries");

    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 200 {
        assert!(
            Instant::now() < deadline,
            "after the restart {} of 200 confirmed events arrived; missing {:?}",
            seen.len(),
            (0..200).filter(|n| !seen.contains(n)).collect::<Vec<_>>()
        );
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Ok(Some(Ok(d))) => {
                seen.insert(n_of(&d.event));
                d.ack().await.unwrap();
            }
            Ok(Some(Err(e))) => panic!("the subscription failed: {e}"),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {}
        }
    }
}

/// Sets RabbitMQ's `max_message_size` (bytes) for channels opened from now on.
fn set_max_message_size(bytes: u64) {
    rabbitmqctl(&[
        "eval",
        &format!("application:set_env(rabbit, max_message_size, {bytes})."),
    ]);
}

/// Puts the broker's message size limit back when dropped, also on panic.
struct LimitBack(String);

impl Drop for LimitBack {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args([
                "eval",
                &format!("application:set_env(rabbit, max_message_size, {}).", self.0),
            ])
            .status();
    }
}

/// Changing the broker-wide limit needs the broker to itself, as a restart does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_brokers_size_limit_is_refused_as_too_large() {
    let _lock = common::broker_lock(true).await;
    let out = Command::new("rabbitmqctl")
        .args(["eval", "application:get_env(rabbit, max_message_size)."])
        .output()
        .expect("rabbitmqctl runs");
    let before = String::from_utf8_lossy(&out.stdout);
    let before: String = before.chars().filter(char::is_ascii_digit).collect();
    assert!(!before.is_empty(), "cannot read max_message_size: {before:?}");
    let _back = LimitBack(before);
    set_max_message_size(1024 * 1024);

    // A bus connected after the change: its channels have the lower limit.
    let (bus, _) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("big", [Topic::Control]))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    // Held across the refusal: the connection it came on must stay up.
    bus.publish(&batch(&b, 1..2)).await.unwrap();
    let held = ferry_bus::conformance::next(&mut sub).await;
    let big = b.job(
        kind::JOB_CANCEL,
        "job-big",
        &serde_json::json!({"text": "x".repeat(2 * 1024 * 1024)}),
    );
    let err = bus
        .publish(std::slice::from_ref(&big))
        .await
        .expect_err("the broker refuses a message over its limit");
    match &err {
        ferry_bus::Error::TooLarge {
            event_id,
            size,
            limit,
        } => {
            assert_eq!(event_id, big.id());
            assert!(*size > 2 * 1024 * 1024, "{size}");
            assert_eq!(*limit, Some(1024 * 1024));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!err.is_transient());
    // The limit is learnt: the next one is refused without reaching the broker.
    assert_eq!(bus.max_event_bytes(), Some(1024 * 1024));
    let again = bus.publish(std::slice::from_ref(&big)).await.unwrap_err();
    assert!(
        matches!(
            again,
            ferry_bus::Error::TooLarge {
                limit: Some(1048576),
                ..
            }
        ),
        "{again}"
    );

    // Only the publishing channel was closed by the broker: the delivery held since is acked.
    held.ack().await.unwrap();

    // The bus goes on: a small event after it is published and delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let small = batch(&b, 7..8);
    while let Err(e) = bus.publish(&small).await {
        assert!(Instant::now() < deadline, "publishing did not resume: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = ferry_bus::conformance::next(&mut sub).await;
    assert_eq!(n_of(&d.event), 7, "the held delivery was not given back");
    d.ack().await.unwrap();
    ferry_bus::conformance::nothing(&mut sub).await;
}
