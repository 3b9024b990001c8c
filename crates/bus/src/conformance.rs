//! The behaviour every [`Bus`] implementation must show, as reusable test functions.
//!
//! Each function takes a fresh, isolated bus (its own namespace on a real broker) and panics on
//! a violation. [`conformance_tests!`](crate::conformance_tests) expands to one `#[tokio::test]`
//! per function for an implementation:
//!
//! ```ignore
//! ferry_bus::conformance_tests!(async { my_fresh_bus().await });
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};

use crate::{Bus, Delivery, Subscribe, Subscription};

/// Longest wait for a delivery that must come.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long a delivery that must not come is waited for, where no later delivery can show
/// that it did not (see [`nothing_before`]).
pub const QUIET: Duration = Duration::from_millis(700);

/// Marker events carry `n` from here up, above what the tests publish otherwise.
const MARKER: u32 = 1_000_000;

fn control(n: u32, job: &str) -> Event {
    EventBuilder::new("ferry/conformance").job(
        kind::JOB_CANCEL,
        job,
        &serde_json::json!({ "jobId": job, "n": n }),
    )
}

fn n_of(d: &Delivery) -> u64 {
    let v: serde_json::Value = ferry_event::decode(&d.event).expect("conformance events carry JSON");
    v["n"].as_u64().expect("conformance events carry n")
}

/// The next delivery, which must come within [`WAIT`].
pub async fn next(sub: &mut Subscription) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("receiving failed: {e}"),
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

/// Asserts that nothing arrives for [`QUIET`].
pub async fn nothing(sub: &mut Subscription) {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, sub.next()).await {
        let d = d.map(|d| d.event.ty().to_string());
        panic!("expected no delivery, got {d:?}");
    }
}

/// Asserts that nothing more is waiting for `subs` (the members of one group): publishes one
/// marker event per job after everything else, and takes deliveries until every marker has
/// come. A queue or a partition (a job's events share one) delivers in order, so whatever was
/// still to come for these consumers would come before the markers: this proves without a wait
/// what [`nothing`] waits [`QUIET`] for.
pub async fn nothing_before(bus: &Arc<dyn Bus>, subs: &mut [&mut Subscription], jobs: &[&str]) {
    let markers: Vec<Event> = (0..).zip(jobs).map(|(i, job)| control(MARKER + i, job)).collect();
    nothing_before_events(bus, subs, markers).await;
}

/// [`nothing_before`] with markers of the caller's own, for topics other than control.
async fn nothing_before_events(bus: &Arc<dyn Bus>, subs: &mut [&mut Subscription], markers: Vec<Event>) {
    let mut waiting: HashSet<String> = markers.iter().map(|e| e.id().to_string()).collect();
    bus.publish(&markers).await.expect("publishing the markers");
    while !waiting.is_empty() {
        // Whichever member has a delivery first: markers may go to any of them.
        let d = match subs {
            [one] => next(one).await,
            [one, two] => {
                let either = async {
                    tokio::select! {
                        d = one.next() => d,
                        d = two.next() => d,
                    }
                };
                match tokio::time::timeout(WAIT, either).await {
                    Ok(Some(Ok(d))) => d,
                    Ok(Some(Err(e))) => panic!("receiving failed: {e}"),
                    Ok(None) => panic!("a subscription ended"),
                    Err(_) => panic!("no delivery within {WAIT:?}"),
                }
            }
            _ => panic!("nothing_before takes one or two members of a group"),
        };
        if !waiting.remove(d.event.id()) {
            panic!(
                "expected no delivery before the markers, got {} {:?}",
                d.event.ty(),
                ferry_event::decode::<serde_json::Value>(&d.event).ok()
            );
        }
        d.ack().await.expect("acking a marker");
    }
}

async fn group(bus: &Arc<dyn Bus>, name: &str, topics: impl IntoIterator<Item = Topic>) -> Subscription {
    bus.subscribe(Subscribe::new(name, topics))
        .await
        .expect("subscribing works")
}

/// Events published together arrive in order, each once, and nothing more.
pub async fn publish_then_consume_in_order(bus: Arc<dyn Bus>) {
    let mut sub = group(&bus, "order", [Topic::Control]).await;
    let events: Vec<Event> = (0..50).map(|n| control(n, "job-1")).collect();
    bus.publish(&events).await.expect("publishing works");
    for n in 0..50 {
        let d = next(&mut sub).await;
        assert_eq!(n_of(&d), n as u64);
        d.ack().await.expect("acking works");
    }
    nothing_before(&bus, &mut [&mut sub], &["job-1"]).await;
}

/// A large confirmed publish is complete: every event arrives.
pub async fn a_large_publish_arrives_whole(bus: Arc<dyn Bus>) {
    let mut sub = bus
        .subscribe(Subscribe::new("large", [Topic::Control]).prefetch(500))
        .await
        .unwrap();
    let events: Vec<Event> = (0..2000).map(|n| control(n, &format!("job-{}", n % 7))).collect();
    bus.publish(&events).await.expect("publishing works");
    let mut seen = HashSet::new();
    while seen.len() < 2000 {
        let d = next(&mut sub).await;
        seen.insert(n_of(&d));
        d.ack().await.unwrap();
    }
    let jobs: Vec<String> = (0..7).map(|n| format!("job-{n}")).collect();
    let jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    nothing_before(&bus, &mut [&mut sub], &jobs).await;
}

/// Every group receives every event; the members of one group share them.
pub async fn groups_each_get_everything_and_members_share(bus: Arc<dyn Bus>) {
    let mut a1 = group(&bus, "share-a", [Topic::Control]).await;
    let mut a2 = group(&bus, "share-a", [Topic::Control]).await;
    let mut b = group(&bus, "share-b", [Topic::Control]).await;
    bus.publish(
        &(0..20)
            .map(|n| control(n, &format!("job-{n}")))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let mut got_b = Vec::new();
    for _ in 0..20 {
        let d = next(&mut b).await;
        got_b.push(n_of(&d));
        d.ack().await.unwrap();
    }
    got_b.sort();
    assert_eq!(got_b, (0..20).collect::<Vec<_>>());
    let mut got_a = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got_a.len() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "group a got {} of 20",
            got_a.len()
        );
        tokio::select! {
            Some(Ok(d)) = a1.next() => { got_a.push(n_of(&d)); d.ack().await.unwrap(); }
            Some(Ok(d)) = a2.next() => { got_a.push(n_of(&d)); d.ack().await.unwrap(); }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    got_a.sort();
    assert_eq!(
        got_a,
        (0..20).collect::<Vec<_>>(),
        "each event once within the group"
    );
    let jobs: Vec<String> = (0..20).map(|n| format!("job-{n}")).collect();
    let jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    nothing_before(&bus, &mut [&mut a1, &mut a2], &jobs).await;
}

/// Deliveries a consumer held unacknowledged when it went away are delivered again.
pub async fn unacked_deliveries_return_when_the_consumer_goes(bus: Arc<dyn Bus>) {
    let mut sub = group(&bus, "crash", [Topic::Control]).await;
    bus.publish(&(0..3).map(|n| control(n, "job-1")).collect::<Vec<_>>())
        .await
        .unwrap();
    let d0 = next(&mut sub).await;
    let d1 = next(&mut sub).await;
    let d2 = next(&mut sub).await;
    assert_eq!(n_of(&d0), 0);
    d0.ack().await.unwrap();
    drop((d1, d2));
    drop(sub);
    let mut again = group(&bus, "crash", [Topic::Control]).await;
    let mut got = vec![n_of(&next(&mut again).await), n_of(&next(&mut again).await)];
    got.sort();
    assert_eq!(
        got,
        [1, 2],
        "the unacknowledged events came back, the acked one did not"
    );
}

/// A nacked delivery is delivered again.
pub async fn nacked_deliveries_are_delivered_again(bus: Arc<dyn Bus>) {
    let mut sub = group(&bus, "nack", [Topic::Control]).await;
    bus.publish(&[control(7, "job-1")]).await.unwrap();
    let d = next(&mut sub).await;
    d.nack().await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(n_of(&d), 7);
    d.ack().await.unwrap();
    nothing_before(&bus, &mut [&mut sub], &["job-1"]).await;
}

/// Deliveries left out of an [`ack_all`](crate::ack_all) come again, and those acked before
/// the first of them do not (a bus may deliver the acked ones after it again: Kafka resumes a
/// partition from its first unsettled offset). Each way of publishing them: one at a time, and
/// all at once.
pub async fn deliveries_left_out_of_a_common_ack_come_again(bus: Arc<dyn Bus>) {
    let mut sub = group(&bus, "together", [Topic::Control]).await;
    for together in [false, true] {
        let events: Vec<Event> = (0..6).map(|n| control(n, "job-1")).collect();
        if together {
            bus.publish(&events).await.unwrap();
        } else {
            for e in &events {
                bus.publish(std::slice::from_ref(e)).await.unwrap();
            }
        }
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(next(&mut sub).await);
        }
        let (kept, acked): (Vec<Delivery>, Vec<Delivery>) = got.into_iter().partition(|d| n_of(d) % 3 == 2);
        crate::ack_all(acked).await.unwrap();
        drop(kept);
        let mut again = Vec::new();
        let mut seen = HashSet::new();
        while !(seen.contains(&2) && seen.contains(&5)) {
            let d = next(&mut sub).await;
            let n = n_of(&d);
            assert!(
                n >= 2,
                "{n} was acked before the first left out (published together: {together})"
            );
            seen.insert(n);
            again.push(d);
        }
        crate::ack_all(again).await.unwrap();
        // Whatever else comes again is past the first left out, and comes before a marker
        // published now.
        let marker = control(MARKER, "job-1");
        bus.publish(std::slice::from_ref(&marker)).await.unwrap();
        loop {
            let d = next(&mut sub).await;
            let n = n_of(&d);
            let is_marker = d.event.id() == marker.id();
            d.ack().await.unwrap();
            if is_marker {
                break;
            }
            assert!(n > 2 && n < 5, "{n} came again (published together: {together})");
        }
    }
}

/// A consumer never holds more than its prefetch unacknowledged.
pub async fn prefetch_bounds_deliveries_in_flight(bus: Arc<dyn Bus>) {
    let mut sub = bus
        .subscribe(Subscribe::new("prefetch", [Topic::Control]).prefetch(2))
        .await
        .unwrap();
    bus.publish(&(0..3).map(|n| control(n, "job-1")).collect::<Vec<_>>())
        .await
        .unwrap();
    let d0 = next(&mut sub).await;
    let _d1 = next(&mut sub).await;
    nothing(&mut sub).await;
    d0.ack().await.unwrap();
    assert_eq!(n_of(&next(&mut sub).await), 2);
}

/// A dead-lettered delivery is not delivered again.
pub async fn dead_lettered_deliveries_are_gone(bus: Arc<dyn Bus>) {
    let mut sub = group(&bus, "dead", [Topic::Control]).await;
    bus.publish(&[control(1, "job-1"), control(2, "job-1")])
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(n_of(&d), 1);
    d.dead_letter("conformance: unusable").await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(n_of(&d), 2);
    d.ack().await.unwrap();
    sub.close().await;
    let mut again = group(&bus, "dead", [Topic::Control]).await;
    bus.publish(&[control(3, "job-1")]).await.unwrap();
    let d = next(&mut again).await;
    assert_eq!(n_of(&d), 3, "the dead letter did not come back");
    d.ack().await.unwrap();
    nothing_before(&bus, &mut [&mut again], &["job-1"]).await;
}

/// Control, logs and each backend's dispatch are separate topics.
pub async fn topics_are_kept_apart(bus: Arc<dyn Bus>) {
    let mut logs = group(&bus, "apart-logs", [Topic::Logs]).await;
    let mut docker = group(&bus, "apart-docker", [Topic::Dispatch("docker".into())]).await;
    let mut local = group(&bus, "apart-local", [Topic::Dispatch("local".into())]).await;
    let b = EventBuilder::new("ferry/conformance");
    let data = serde_json::json!({"n": 1});
    bus.publish(&[
        control(0, "job-1"),
        b.dispatch(kind::TASK_DISPATCHED, "job-1", "t", "a-1", "local", &data),
    ])
    .await
    .unwrap();
    let d = next(&mut local).await;
    assert_eq!(d.event.ty(), kind::TASK_DISPATCHED);
    assert_eq!(d.topic, Topic::Dispatch("local".into()));
    d.ack().await.unwrap();
    // Each topic's own marker is the first thing its consumer gets.
    let log = b.task(kind::TASK_LOG, "job-1", "t", Some("a-1"), &data);
    nothing_before_events(&bus, &mut [&mut logs], vec![log]).await;
    let on_docker = b.dispatch(kind::TASK_DISPATCHED, "job-1", "t", "a-1", "docker", &data);
    nothing_before_events(&bus, &mut [&mut docker], vec![on_docker]).await;
}

/// An event arrives with every attribute, extension and byte of data intact.
pub async fn events_arrive_intact(bus: Arc<dyn Bus>) {
    let mut sub = group(&bus, "intact", [Topic::Dispatch("local".into())]).await;
    let data = serde_json::json!({"text": "héllo\n\u{0}", "n": 1, "nested": {"a": [1, 2.5, null]}});
    let sent = EventBuilder::new("ferry/conformance/instance-1").dispatch(
        kind::TASK_DISPATCHED,
        "job-9",
        "task-3",
        "attempt-7",
        "local",
        &data,
    );
    bus.publish(std::slice::from_ref(&sent)).await.unwrap();
    let d = next(&mut sub).await;
    let got = &d.event;
    assert_eq!(got.id(), sent.id());
    assert_eq!(got.ty(), sent.ty());
    assert_eq!(got.source(), sent.source());
    assert_eq!(got.subject(), sent.subject());
    assert_eq!(got.specversion(), sent.specversion());
    assert_eq!(got.datacontenttype(), Some("application/json"));
    let (sent_ms, got_ms) = (
        sent.time().map(|t| t.timestamp_millis()),
        got.time().map(|t| t.timestamp_millis()),
    );
    assert_eq!(got_ms, sent_ms, "time survives to the millisecond");
    for ext in [
        "partitionkey",
        "traceparent",
        "ferryjob",
        "ferryattempt",
        "ferrybackend",
    ] {
        assert_eq!(
            got.extension(ext).map(|v| v.to_string()),
            sent.extension(ext).map(|v| v.to_string()),
            "extension {ext}"
        );
    }
    let v: serde_json::Value = ferry_event::decode(got).unwrap();
    assert_eq!(v, data);
    d.ack().await.unwrap();
}

/// Declaring a group before anything is published keeps what is published for it.
pub async fn a_declared_group_keeps_events_until_it_consumes(bus: Arc<dyn Bus>) {
    let spec = Subscribe::new("declared", [Topic::Intake]);
    bus.declare(&spec).await.unwrap();
    let e = EventBuilder::new("ferry/conformance").job(
        kind::JOB_SUBMITTED,
        "job-1",
        &serde_json::json!({"n": 5}),
    );
    bus.publish(&[e]).await.unwrap();
    let mut sub = bus.subscribe(spec).await.unwrap();
    assert_eq!(n_of(&next(&mut sub).await), 5);
}

/// An ephemeral group hears what is published while it exists, and nothing of it remains after.
pub async fn ephemeral_groups_hear_everything_while_they_live(bus: Arc<dyn Bus>) {
    let b = EventBuilder::new("ferry/conformance");
    let cancel = |n: u32| {
        b.dispatch(
            kind::TASK_CANCEL,
            "job-1",
            "t",
            "a-1",
            "local",
            &serde_json::json!({"n": n}),
        )
    };
    let mut one = bus
        .subscribe(Subscribe::new("eph-1", [Topic::Cancel("local".into())]).ephemeral())
        .await
        .unwrap();
    let mut two = bus
        .subscribe(Subscribe::new("eph-2", [Topic::Cancel("local".into())]).ephemeral())
        .await
        .unwrap();
    bus.publish(&[cancel(1)]).await.unwrap();
    for sub in [&mut one, &mut two] {
        let d = next(sub).await;
        assert_eq!((d.event.ty(), n_of(&d)), (kind::TASK_CANCEL, 1));
        d.ack().await.unwrap();
    }
    drop(one);
    // Published while eph-1 does not exist: a new eph-1 starts after it.
    bus.publish(&[cancel(2)]).await.unwrap();
    let d = next(&mut two).await;
    assert_eq!(n_of(&d), 2);
    d.ack().await.unwrap();
    let mut again = bus
        .subscribe(Subscribe::new("eph-1", [Topic::Cancel("local".into())]).ephemeral())
        .await
        .unwrap();
    // What was published before it existed would come before what is published now.
    bus.publish(&[cancel(3)]).await.unwrap();
    assert_eq!(n_of(&next(&mut again).await), 3, "it heard what came before it");
}

/// One `#[tokio::test]` per conformance function for the bus the expression makes (an async
/// block yielding a fresh `Arc<dyn Bus>` each time it is evaluated).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            publish_then_consume_in_order,
            a_large_publish_arrives_whole,
            groups_each_get_everything_and_members_share,
            unacked_deliveries_return_when_the_consumer_goes,
            nacked_deliveries_are_delivered_again,
            deliveries_left_out_of_a_common_ack_come_again,
            prefetch_bounds_deliveries_in_flight,
            dead_lettered_deliveries_are_gone,
            topics_are_kept_apart,
            events_arrive_intact,
            a_declared_group_keeps_events_until_it_consumes,
            ephemeral_groups_hear_everything_while_they_live,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let bus: ::std::sync::Arc<dyn $crate::Bus> = $make.await;
                $crate::conformance::$name(bus).await;
            }
        )*
    };
}
