"""An attacker's view of a Kafka broker that ferry uses, for the security suite: it reads
what ferry published on a topic and publishes messages of its own, with kafka-python.

usage:
  kafka_spy.py read HOST:PORT TOPIC MIN [SECONDS]
      prints the topic's messages from its start as a JSON list of
      {"key", "headers": {name: text}, "value"}, once at least MIN were read (or SECONDS passed)
  kafka_spy.py publish HOST:PORT TOPIC
      produces the messages of a JSON list in that form, read from stdin
"""
import json
import sys
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def read(brokers, topic, least, seconds):
    consumer = KafkaConsumer(
        bootstrap_servers=brokers,
        group_id=f"spy-{uuid.uuid4().hex}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    deadline = time.monotonic() + seconds
    partitions = None
    while partitions is None and time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            time.sleep(0.2)
    out = []
    if partitions:
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        while len(out) < least and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    out.append(
                        {
                            "key": text(r.key),
                            "headers": {k: text(v) for k, v in r.headers},
                            "value": text(r.value),
                        }
                    )
    consumer.close()
    print(json.dumps(out))


def publish(brokers, topic):
    producer = KafkaProducer(bootstrap_servers=brokers, acks="all")
    for m in json.load(sys.stdin):
        headers = [(k, v.encode()) for k, v in m["headers"].items()]
        key = None if m["key"] is None else m["key"].encode()
        producer.send(topic, key=key, value=m["value"].encode(), headers=headers).get(timeout=30)
    producer.flush()
    producer.close()


if __name__ == "__main__":
    cmd, brokers, topic = sys.argv[1:4]
    if cmd == "read":
        read(brokers, topic, int(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 30)
    elif cmd == "publish":
        publish(brokers, topic)
    else:
        sys.exit(f"unknown command {cmd!r}: read or publish")
