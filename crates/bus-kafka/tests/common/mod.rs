//! Helpers of the tests that need a Kafka broker (tansu or Kafka, from FERRY_TEST_KAFKA).

#![allow(dead_code)]

use std::sync::Arc;

use ferry_bus::Bus;
use ferry_bus_kafka::KafkaBus;

/// The broker URL; a test that needs it fails (rather than skips) without it.
pub fn kafka_url() -> String {
    std::env::var("FERRY_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "FERRY_TEST_KAFKA is not set: run ./scripts/test.sh, which starts a Kafka-compatible \
             broker (tansu) and sets it, or `source scripts/services.sh && services_up`"
        )
    })
}

/// A fresh namespace, so that tests never see each other's topics or groups.
pub fn namespace() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

pub fn url_in(ns: &str) -> String {
    format!("{}?namespace={ns}&partitions=3", kafka_url())
}

pub async fn bus_in(ns: &str) -> KafkaBus {
    KafkaBus::connect(&url_in(ns))
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", url_in(ns)))
}

/// A bus in a fresh namespace.
pub async fn fresh_bus() -> Arc<dyn Bus> {
    Arc::new(bus_in(&namespace()).await)
}

/// A consumer reading the namespace's dead-letter topic from its beginning, by assignment
/// rather than group membership: the tests are about what the topic holds.
pub fn dead_letter_reader(ns: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let dead: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_url().trim_start_matches("kafka://"))
        .set("group.id", format!("{ns}.dead-reader"))
        .create()
        .expect("a dead-letter reader is created");
    let mut all = rdkafka::TopicPartitionList::new();
    for partition in 0..3 {
        all.add_partition_offset(&format!("{ns}.dead"), partition, rdkafka::Offset::Beginning)
            .expect("the dead-letter partitions are assigned");
    }
    dead.assign(&all)
        .expect("the dead-letter partitions are assigned");
    dead
}
