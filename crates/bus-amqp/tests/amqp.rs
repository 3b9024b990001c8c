//! RabbitMQ-specific behaviour: messages from other AMQP clients, dead letters, the topology,
//! pipelined confirms and batch messages.

mod common;

use std::time::{Duration, Instant};

use ferry_bus::conformance::{WAIT, next, nothing};
use ferry_bus::{Bus, Subscribe};
use ferry_bus_amqp::mapping::string_header;
use ferry_bus_amqp::topology::DEAD_REASON_HEADER;
use ferry_event::{AttributesReader, EventBuilder, Topic, kind};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

async fn raw_publish(ch: &lapin::Channel, exchange: &str, key: &str, props: BasicProperties, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("raw publish is sent");
}

/// Takes `n` messages from the namespace's dead-letter queue, waiting for them up to [`WAIT`].
async fn dead_letters(ch: &lapin::Channel, ns: &str, n: usize) -> Vec<lapin::message::BasicGetMessage> {
    let mut dead = Vec::new();
    let deadline = Instant::now() + WAIT;
    while dead.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} dead letters in {ns}:dead",
            dead.len()
        );
        match ch
            .basic_get(format!("{ns}:dead").into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => dead.push(m),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_mode_message_from_another_client_is_received_as_the_same_event() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("raw-binary", [Topic::Intake]))
        .await
        .unwrap();
    let (_conn, ch) = common::raw_channel().await;
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("cloudEvents:specversion", s("1.0")),
        ("cloudEvents:id", s("ext-42")),
        ("cloudEvents:source", s("s3://landing")),
        ("cloudEvents:type", s("com.acme.file.uploaded")),
        ("cloudEvents:subject", s("reports/day.csv")),
        ("cloudEvents:time", s("2026-01-02T03:04:05.678Z")),
        ("cloudEvents:partitionkey", s("job-7")),
        ("cloudEvents:ferryattempt", AMQPValue::LongLongInt(3)),
    ] {
        headers.insert(k.into(), v);
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    raw_publish(&ch, &ns, "intake", props, br#"{"day":"2026-01-02"}"#).await;

    let d = next(&mut sub).await;
    let e = &d.event;
    assert_eq!(e.id(), "ext-42");
    assert_eq!(e.ty(), "com.acme.file.uploaded");
    assert_eq!(e.source().to_string(), "s3://landing");
    assert_eq!(e.subject(), Some("reports/day.csv"));
    assert_eq!(e.time().unwrap().to_rfc3339(), "2026-01-02T03:04:05.678+00:00");
    assert_eq!(e.datacontenttype(), Some("application/json"));
    assert_eq!(
        ferry_event::envelope::extension(e, "partitionkey").as_deref(),
        Some("job-7")
    );
    assert_eq!(
        ferry_event::envelope::extension(e, "ferryattempt").as_deref(),
        Some("3")
    );
    let v: serde_json::Value = ferry_event::decode(e).unwrap();
    assert_eq!(v["day"], "2026-01-02");
    assert_eq!(d.topic, Topic::Intake);
    assert!(!d.redelivered);
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_mode_message_from_another_client_is_received_as_the_same_event() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("raw-structured", [Topic::Control]))
        .await
        .unwrap();
    let sent = EventBuilder::new("elsewhere/1").job(
        kind::JOB_CANCEL,
        "job-3",
        &serde_json::json!({"jobId": "job-3"}),
    );
    let body = serde_json::to_vec(&sent).unwrap();
    let (_conn, ch) = common::raw_channel().await;
    let props = BasicProperties::default().with_content_type("application/cloudevents+json".into());
    raw_publish(&ch, &ns, "control", props, &body).await;

    let d = next(&mut sub).await;
    assert_eq!(d.event.id(), sent.id());
    assert_eq!(d.event.ty(), sent.ty());
    assert_eq!(d.event.source(), sent.source());
    assert_eq!(d.event.time(), sent.time());
    assert_eq!(
        ferry_event::envelope::extension(&d.event, "traceparent"),
        ferry_event::envelope::extension(&sent, "traceparent")
    );
    let v: serde_json::Value = ferry_event::decode(&d.event).unwrap();
    assert_eq!(v["jobId"], "job-3");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dead_lettered_with_its_reason_and_the_consumer_goes_on() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("garbage", [Topic::Control]))
        .await
        .unwrap();
    let (_conn, ch) = common::raw_channel().await;
    raw_publish(
        &ch,
        &ns,
        "control",
        BasicProperties::default().with_content_type("text/plain".into()),
        b"not an event",
    )
    .await;
    let structured = BasicProperties::default().with_content_type("application/cloudevents+json".into());
    raw_publish(&ch, &ns, "control", structured, b"{\"specversion\": ").await;
    let good = EventBuilder::new("ferry/test").job(
        kind::JOB_CANCEL,
        "job-1",
        &serde_json::json!({"jobId": "job-1"}),
    );
    bus.publish(std::slice::from_ref(&good)).await.unwrap();

    let d = next(&mut sub).await;
    assert_eq!(d.event.id(), good.id(), "the garbage was never yielded");
    d.ack().await.unwrap();
    nothing(&mut sub).await;

    let dead = dead_letters(&ch, &ns, 2).await;
    assert_eq!(dead[0].delivery.data, b"not an event");
    assert_eq!(
        dead[0].delivery.routing_key.as_str(),
        "control",
        "the original routing key is kept"
    );
    let reason = string_header(&dead[0].delivery.properties, DEAD_REASON_HEADER).unwrap();
    assert!(reason.contains("not a CloudEvent"), "{reason}");
    let reason = string_header(&dead[1].delivery.properties, DEAD_REASON_HEADER).unwrap();
    assert!(reason.contains("json"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_declares_the_standard_groups_as_quorum_queues() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let b = EventBuilder::new("ferry/test");
    let submitted = b.job(kind::JOB_SUBMITTED, "job-1", &serde_json::json!({}));
    let dispatched = b.dispatch(
        kind::TASK_DISPATCHED,
        "job-1",
        "t",
        "a",
        "local",
        &serde_json::json!({}),
    );
    bus.publish(&[submitted.clone(), dispatched.clone()])
        .await
        .unwrap();
    // Published before any consumer: kept for the groups that connect declared.
    let mut planner = bus
        .subscribe(Subscribe::new("planner", [Topic::Intake]))
        .await
        .unwrap();
    assert_eq!(next(&mut planner).await.event.id(), submitted.id());
    let mut launcher = bus
        .subscribe(Subscribe::new(
            "launcher-local",
            [Topic::Dispatch("local".into())],
        ))
        .await
        .unwrap();
    assert_eq!(next(&mut launcher).await.event.id(), dispatched.id());

    // Declaring the queue again with the same arguments but as a classic queue fails: it is a
    // quorum queue.
    let (_conn, ch) = common::raw_channel().await;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), s("classic"));
    args.insert("x-dead-letter-exchange".into(), s(&format!("{ns}.dead")));
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(20));
    let err = ch
        .queue_declare(
            format!("{ns}.scheduler").into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x-queue-type"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_nobody_subscribed_to_are_confirmed_and_kept_aside() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let e = EventBuilder::new("ferry/test").job(kind::JOB_SUCCEEDED, "job-1", &serde_json::json!({}));
    bus.publish(std::slice::from_ref(&e))
        .await
        .expect("a lifecycle event without subscribers is confirmed");
    let (_conn, ch) = common::raw_channel().await;
    let got = ch
        .basic_get(format!("{ns}:unrouted").into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    let got = got.expect("the event is in the unrouted queue");
    assert_eq!(got.delivery.routing_key.as_str(), "lifecycle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_thousand_event_publish_is_confirmed_in_one_pipeline() {
    let _lock = common::broker_lock(false).await;
    let (bus, _) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("bulk", [Topic::Control]).prefetch(1000))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    let events: Vec<_> = (0..5000)
        .map(|n| {
            b.job(
                kind::JOB_CANCEL,
                &format!("job-{}", n % 13),
                &serde_json::json!({"n": n}),
            )
        })
        .collect();
    let start = Instant::now();
    bus.publish(&events).await.unwrap();
    let took = start.elapsed();
    println!(
        "published and confirmed {} events in {:.3} s: {:.0} events/s",
        events.len(),
        took.as_secs_f64(),
        events.len() as f64 / took.as_secs_f64()
    );
    let mut seen = std::collections::HashSet::new();
    while seen.len() < events.len() {
        let d = next(&mut sub).await;
        seen.insert(d.event.id().to_string());
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_with_other_settings_is_a_configuration_error_and_the_bus_goes_on() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let (_conn, ch) = common::raw_channel().await;
    ch.queue_declare(
        format!("{ns}.conflict").into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = bus
        .subscribe(Subscribe::new("conflict", [Topic::Control]))
        .await
        .expect_err("the existing classic queue cannot be declared as ferry's");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("another namespace"), "{err}");

    // The refused declaration closed one channel, not the connection.
    assert!(bus.is_connected());
    let mut sub = bus
        .subscribe(Subscribe::new("fine", [Topic::Control]))
        .await
        .unwrap();
    let e = EventBuilder::new("ferry/test").job(
        kind::JOB_CANCEL,
        "job-1",
        &serde_json::json!({"jobId": "job-1"}),
    );
    bus.publish(std::slice::from_ref(&e)).await.unwrap();
    assert_eq!(next(&mut sub).await.event.id(), e.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_dropped_unsettled_comes_back_while_the_subscription_lives() {
    let _lock = common::broker_lock(false).await;
    let (bus, _) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("dropped", [Topic::Control]).prefetch(1))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    let events: Vec<_> = (0..2)
        .map(|n| b.job(kind::JOB_CANCEL, "job-1", &serde_json::json!({"n": n})))
        .collect();
    // Published apart, each is a message of its own.
    for e in &events {
        bus.publish(std::slice::from_ref(e)).await.unwrap();
    }
    let d = next(&mut sub).await;
    assert_eq!(d.event.id(), events[0].id());
    assert!(!d.redelivered);
    drop(d);
    // With a prefetch of 1 nothing else can arrive until the dropped one is given back.
    let d = next(&mut sub).await;
    assert_eq!(d.event.id(), events[0].id());
    assert!(d.redelivered, "the broker marks it redelivered");
    d.ack().await.unwrap();
    assert_eq!(next(&mut sub).await.event.id(), events[1].id());
}

/// Events published together on a batched topic travel as one batch message; a consumer
/// receives them one by one, and only the message's `basic.ack` comes after the last is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_together_share_a_batch_message() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    bus.declare(&Subscribe::new("batched", [Topic::Control]))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    let events: Vec<_> = (0..5)
        .map(|n| b.job(kind::JOB_CANCEL, "job-1", &serde_json::json!({"n": n})))
        .collect();
    bus.publish(&events).await.unwrap();
    // One message in the queue, holding the five in the JSON format.
    let (_conn, ch) = common::raw_channel().await;
    let m = ch
        .basic_get(format!("{ns}.batched").into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(
        m.delivery.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/cloudevents-batch+json")
    );
    let body: Vec<serde_json::Value> = serde_json::from_slice(&m.delivery.data).unwrap();
    assert_eq!(body.len(), 5);
    assert_eq!(body[2]["id"], events[2].id());
    assert_eq!(
        body[2]["data"],
        serde_json::json!({"n": 2}),
        "JSON data stays JSON"
    );
    m.delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    let mut sub = bus
        .subscribe(Subscribe::new("batched", [Topic::Control]))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut sub).await);
    }
    let ids: Vec<&str> = got.iter().map(|d| d.event.id()).collect();
    let sent: Vec<&str> = events.iter().map(|e| e.id()).collect();
    assert_eq!(ids, sent, "in order");
    let v: serde_json::Value = ferry_event::decode(&got[4].event).unwrap();
    assert_eq!(v, serde_json::json!({"n": 4}));
    ferry_bus::ack_all(got).await.unwrap();
    nothing(&mut sub).await;
}

/// Of a batch message, the events given back come again and those acked do not, while the
/// subscription lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_events_given_back_of_a_batch_message_come_again() {
    let _lock = common::broker_lock(false).await;
    let (bus, _) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("partly", [Topic::Dispatch("local".into())]))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    let events: Vec<_> = (0..4)
        .map(|n| {
            b.dispatch(
                kind::TASK_DISPATCHED,
                "job-1",
                &format!("t{n}"),
                &format!("a{n}"),
                "local",
                &serde_json::json!({"n": n}),
            )
        })
        .collect();
    bus.publish(&events).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&mut sub).await);
    }
    let d3 = got.pop().unwrap();
    let d2 = got.pop().unwrap();
    d2.nack().await.unwrap();
    ferry_bus::ack_all(got).await.unwrap();
    drop(d3);
    let mut again = vec![next(&mut sub).await, next(&mut sub).await];
    again.sort_by_key(|d| d.event.id().to_string());
    let ids: Vec<&str> = again.iter().map(|d| d.event.id()).collect();
    assert_eq!(ids, [events[2].id(), events[3].id()]);
    assert!(again.iter().all(|d| d.topic == Topic::Dispatch("local".into())));
    ferry_bus::ack_all(again).await.unwrap();
    nothing(&mut sub).await;
}

/// A batch message from another client with one unreadable event: that event alone goes to
/// the dead letters, with its reason; the others are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_of_a_batch_message_is_dead_lettered_alone() {
    let _lock = common::broker_lock(false).await;
    let (bus, ns) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("mixed", [Topic::Control]))
        .await
        .unwrap();
    let good = EventBuilder::new("elsewhere/1").job(
        kind::JOB_CANCEL,
        "job-3",
        &serde_json::json!({"jobId": "job-3"}),
    );
    let body = format!(
        "[{}, {{\"specversion\": \"1.0\", \"id\": \"no-type\"}}]",
        serde_json::to_string(&good).unwrap()
    );
    let (_conn, ch) = common::raw_channel().await;
    let props = BasicProperties::default().with_content_type("application/cloudevents-batch+json".into());
    raw_publish(&ch, &ns, "control", props, body.as_bytes()).await;
    raw_publish(
        &ch,
        &ns,
        "control",
        BasicProperties::default().with_content_type("application/cloudevents-batch+json".into()),
        b"{\"not\": \"an array\"}",
    )
    .await;

    let d = next(&mut sub).await;
    assert_eq!(d.event.id(), good.id());
    d.ack().await.unwrap();
    nothing(&mut sub).await;

    let dead = dead_letters(&ch, &ns, 2).await;
    let event: serde_json::Value = serde_json::from_slice(&dead[0].delivery.data).unwrap();
    assert_eq!(event["id"], "no-type", "the unreadable event alone");
    assert_eq!(dead[0].delivery.routing_key.as_str(), "control");
    let reason = string_header(&dead[0].delivery.properties, DEAD_REASON_HEADER).unwrap();
    assert!(reason.contains("event 1 of the batch"), "{reason}");
    let reason = string_header(&dead[1].delivery.properties, DEAD_REASON_HEADER).unwrap();
    assert!(reason.contains("JSON array"), "{reason}");
}

/// A consumer holds at most its prefetch of events, however many a message carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_counts_the_events_of_batch_messages() {
    let _lock = common::broker_lock(false).await;
    let (bus, _) = common::fresh_bus().await;
    let mut sub = bus
        .subscribe(Subscribe::new("window", [Topic::Control]).prefetch(3))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    let events: Vec<_> = (0..10)
        .map(|n| b.job(kind::JOB_CANCEL, "job-1", &serde_json::json!({"n": n})))
        .collect();
    bus.publish(&events).await.unwrap();
    let mut held = vec![next(&mut sub).await, next(&mut sub).await, next(&mut sub).await];
    nothing(&mut sub).await;
    held.remove(0).ack().await.unwrap();
    held.push(next(&mut sub).await);
    nothing(&mut sub).await;
    let n: Vec<serde_json::Value> = held
        .iter()
        .map(|d| ferry_event::decode::<serde_json::Value>(&d.event).unwrap()["n"].clone())
        .collect();
    assert_eq!(n, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_known_limit_is_refused_before_it_is_sent_and_others_go_on() {
    let _lock = common::broker_lock(false).await;
    let ns = common::fresh_namespace();
    let url = format!("{}&max_message_size=65536", common::url_of(&ns));
    let bus = common::TestBus(ferry_bus_amqp::AmqpBus::connect(&url).await.unwrap());
    assert_eq!(bus.max_event_bytes(), Some(65536));
    let mut sub = bus
        .subscribe(Subscribe::new("limit", [Topic::Control]))
        .await
        .unwrap();
    let b = EventBuilder::new("ferry/test");
    let small = |n: u32| b.job(kind::JOB_CANCEL, "job-1", &serde_json::json!({"n": n}));
    bus.publish(&[small(1)]).await.unwrap();
    let held = next(&mut sub).await;

    let big = b.job(
        kind::JOB_CANCEL,
        "job-big",
        &serde_json::json!({"text": "x".repeat(100 * 1024)}),
    );
    // Published at the same time as others' events: only its own publisher hears of it.
    let second = [small(2)];
    let (refused, others) = tokio::join!(bus.publish(std::slice::from_ref(&big)), bus.publish(&second));
    match refused.unwrap_err() {
        ferry_bus::Error::TooLarge { event_id, limit, .. } => {
            assert_eq!(event_id, big.id());
            assert_eq!(limit, Some(65536));
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    others.unwrap();
    // The connection was never disturbed: a delivery held across it is acked, not redelivered.
    held.ack().await.unwrap();
    let d = next(&mut sub).await;
    let v: serde_json::Value = ferry_event::decode(&d.event).unwrap();
    assert_eq!(v["n"], 2);
    d.ack().await.unwrap();
    nothing(&mut sub).await;
}
