//! RabbitMQ-specific behaviour: messages from other AMQP clients, dead letters, the topology
//! and pipelined confirms.

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

    let mut dead = Vec::new();
    let deadline = Instant::now() + WAIT;
    while dead.len() < 2 {
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
    bus.publish(&events).await.unwrap();
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
