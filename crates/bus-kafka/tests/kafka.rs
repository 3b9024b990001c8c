//! Kafka-specific behaviour of the bus on a real broker (FERRY_TEST_KAFKA): the CloudEvents
//! binding as outside producers use it, dead-lettering of unreadable messages, in-order offset
//! commits, and a pipelined publish.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ferry_bus::conformance::{WAIT, next, nothing};
use ferry_bus::{Bus, Subscribe, Subscription};
use ferry_event::cloudevents::event::{Data, EventBuilderV10};
use ferry_event::cloudevents::{AttributesReader, EventBuilder as _};
use ferry_event::{Event, EventBuilder, Topic, kind};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn raw_producer() -> FutureProducer {
    let url = common::kafka_url();
    ClientConfig::new()
        .set("bootstrap.servers", url.trim_start_matches("kafka://"))
        .create()
        .expect("a plain producer")
}

/// Produces one message as a producer outside ferry would.
async fn produce_raw(topic: &str, key: Option<&str>, headers: &[(&str, &str)], value: &[u8]) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).headers(h).payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    raw_producer()
        .send(record, Duration::from_secs(10))
        .await
        .expect("the broker takes the raw message");
}

fn n_of(d: &ferry_bus::Delivery) -> u64 {
    let v: serde_json::Value = ferry_event::decode(&d.event).expect("JSON data");
    v["n"].as_u64().expect("n")
}

fn numbered(n: u64, job: &str) -> Event {
    EventBuilder::new("ferry/test").job(kind::JOB_CANCEL, job, &serde_json::json!({"jobId": job, "n": n}))
}

async fn control_group(bus: &dyn Bus, group: &str) -> Subscription {
    bus.subscribe(Subscribe::new(group, [Topic::Control]))
        .await
        .expect("subscribing works")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_binary_mode_event_is_received_as_the_same_event() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = control_group(&bus, "outside").await;
    let data = br#"{"jobId":"job-outside","reason":"operator"}"#;
    produce_raw(
        &format!("{ns}.control"),
        Some("job-outside"),
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "ev-123"),
            ("ce_source", "kcat/operator"),
            ("ce_type", kind::JOB_CANCEL),
            ("ce_subject", "job-outside"),
            ("ce_time", "2026-03-01T12:30:45.123Z"),
            ("ce_ferryjob", "job-outside"),
            ("content-type", "application/json"),
        ],
        data,
    )
    .await;
    let mut expected = EventBuilderV10::new()
        .id("ev-123")
        .source("kcat/operator")
        .ty(kind::JOB_CANCEL)
        .subject("job-outside")
        .time("2026-03-01T12:30:45.123Z")
        .extension("ferryjob", "job-outside")
        // No ce_partitionkey header: the message key stands for it.
        .extension("partitionkey", "job-outside")
        .build()
        .unwrap();
    expected.set_data("application/json", Data::Binary(data.to_vec()));
    let d = next(&mut sub).await;
    assert_eq!(d.topic, Topic::Control);
    assert_eq!(d.event, expected);
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_structured_mode_event_is_received() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = control_group(&bus, "structured").await;
    let json = serde_json::json!({
        "specversion": "1.0",
        "id": "ev-456",
        "source": "python/producer",
        "type": kind::JOB_CANCEL,
        "subject": "job-s",
        "time": "2026-03-01T12:30:45Z",
        "partitionkey": "job-s",
        "datacontenttype": "application/json",
        "data": {"jobId": "job-s", "n": 9}
    });
    produce_raw(
        &format!("{ns}.control"),
        Some("job-s"),
        &[("content-type", "application/cloudevents+json; charset=utf-8")],
        json.to_string().as_bytes(),
    )
    .await;
    let d = next(&mut sub).await;
    assert_eq!(d.event.id(), "ev-456");
    assert_eq!(d.event.source(), "python/producer");
    assert_eq!(d.event.subject(), Some("job-s"));
    assert_eq!(
        d.event
            .extension("partitionkey")
            .map(|v| v.to_string())
            .as_deref(),
        Some("job-s")
    );
    assert_eq!(n_of(&d), 9);
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_goes_to_the_dead_letter_topic_with_its_reason_and_the_consumer_goes_on() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = control_group(&bus, "garbage").await;
    produce_raw(
        &format!("{ns}.control"),
        Some("job-g"),
        &[("colour", "red")],
        b"\x00not an event",
    )
    .await;
    bus.publish(&[numbered(1, "job-g")]).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(n_of(&d), 1, "the garbage before it was not handed out");
    d.ack().await.unwrap();
    nothing(&mut sub).await;

    let dead = common::dead_letter_reader(&ns);
    let m = tokio::time::timeout(WAIT, dead.recv())
        .await
        .expect("a dead letter within the wait")
        .expect("reading the dead-letter topic");
    assert_eq!(m.payload(), Some(&b"\x00not an event"[..]));
    assert_eq!(m.key(), Some(&b"job-g"[..]));
    let headers = m.headers().expect("dead letters carry headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        header("colour").as_deref(),
        Some("red"),
        "original headers are kept"
    );
    let reason = header("ferry_dead_reason").expect("the reason header");
    assert!(reason.contains("ce_specversion"), "{reason}");
    assert_eq!(header("ferry_dead_topic"), Some(format!("{ns}.control")));
}

/// Three events of one job share a partition. Acking the first and third but not the second
/// commits only the first: a new consumer of the group starts at the second. The third comes
/// back too, because a Kafka group's position is one offset per partition and it must not pass
/// the unacknowledged second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_up_to_the_first_unacked_message() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = control_group(&bus, "commits").await;
    bus.publish(&[numbered(1, "job-c"), numbered(2, "job-c"), numbered(3, "job-c")])
        .await
        .unwrap();
    let d1 = next(&mut sub).await;
    let d2 = next(&mut sub).await;
    let d3 = next(&mut sub).await;
    assert_eq!([n_of(&d1), n_of(&d2), n_of(&d3)], [1, 2, 3]);
    d1.ack().await.unwrap();
    d3.ack().await.unwrap();
    sub.close().await; // the consumer went away holding 2
    drop(d2);
    let mut again = control_group(&bus, "commits").await;
    let first = next(&mut again).await;
    assert_eq!(n_of(&first), 2, "1 was committed, 2 was not");
    let second = next(&mut again).await;
    assert_eq!(n_of(&second), 3, "the commit did not pass the unacked 2");
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    nothing(&mut again).await;
}

/// A nack rewinds the partition: the nacked message and every later one come again, in order,
/// and only the ones handed out before are marked redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_and_what_follows_it_come_again_in_order() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = control_group(&bus, "rewind").await;
    bus.publish(&(1..=4).map(|n| numbered(n, "job-r")).collect::<Vec<_>>())
        .await
        .unwrap();
    let ds: Vec<_> = [next(&mut sub).await, next(&mut sub).await, next(&mut sub).await]
        .into_iter()
        .collect();
    let [d1, d2, d3]: [_; 3] = ds.try_into().unwrap();
    d1.ack().await.unwrap();
    d2.nack().await.unwrap();
    // 3 was delivered after 2: it is delivered again after 2, so its ack no longer counts.
    d3.ack().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut sub).await;
        got.push((n_of(&d), d.redelivered));
        d.ack().await.unwrap();
    }
    assert_eq!(got, [(2, true), (3, true), (4, false)]);
    nothing(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_publish_of_5000_events_arrives_whole() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = bus
        .subscribe(Subscribe::new("bulk", [Topic::Control]).prefetch(1000))
        .await
        .unwrap();
    let events: Vec<Event> = (0..5000)
        .map(|n| numbered(n, &format!("job-{}", n % 16)))
        .collect();
    let started = Instant::now();
    bus.publish(&events).await.expect("publishing 5000 events");
    let published = started.elapsed();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 5000 {
        assert!(Instant::now() < deadline, "received {} of 5000", seen.len());
        let batch = tokio::time::timeout(WAIT, sub.next_batch(500))
            .await
            .expect("deliveries keep coming")
            .expect("the subscription is open")
            .expect("receiving works");
        for d in batch {
            seen.insert(n_of(&d));
            d.ack().await.unwrap();
        }
    }
    eprintln!(
        "published 5000 events in {published:?} ({:.0}/s); all received after {:?}",
        5000.0 / published.as_secs_f64(),
        started.elapsed()
    );
}

/// A 100,000-task job's `job.planned` is about 8 MB: it must go through like any event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_nine_megabytes_arrives_whole() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = control_group(&bus, "big").await;
    let text: String = (0..9 * 1024 * 1024 / 64).map(|i| format!("{i:063}\n")).collect();
    let event = EventBuilder::new("ferry/test").job(
        kind::JOB_CANCEL,
        "job-big",
        &serde_json::json!({"jobId": "job-big", "text": text}),
    );
    bus.publish(std::slice::from_ref(&event))
        .await
        .expect("publishing a 9 MB event");
    let d = next(&mut sub).await;
    let v: serde_json::Value = ferry_event::decode(&d.event).expect("JSON data");
    assert_eq!(v["text"].as_str().map(str::len), Some(text.len()));
    assert!(v["text"] == text.as_str(), "the text arrived changed");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_the_limit_is_refused_and_nothing_of_its_batch_is_published() {
    let ns = common::namespace();
    let bus = common::bus_in(&ns).await;
    let mut sub = control_group(&bus, "too-big").await;
    let text = "x".repeat(ferry_bus_kafka::MAX_MESSAGE_BYTES);
    let big = EventBuilder::new("ferry/test").job(
        kind::JOB_CANCEL,
        "job-big",
        &serde_json::json!({"jobId": "job-big", "text": text}),
    );
    let id = big.id().to_string();
    let err = bus
        .publish(&[numbered(1, "job-small"), big])
        .await
        .expect_err("a message over the limit is refused");
    assert!(!err.is_transient(), "retrying cannot help: {err}");
    match err {
        ferry_bus::Error::TooLarge {
            event_id,
            size,
            limit,
        } => {
            assert_eq!(event_id, id);
            assert_eq!(limit, Some(ferry_bus_kafka::MAX_MESSAGE_BYTES));
            assert!(size > ferry_bus_kafka::MAX_MESSAGE_BYTES, "{size}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    nothing(&mut sub).await;
}
