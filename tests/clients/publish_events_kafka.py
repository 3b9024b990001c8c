"""Publishes plain CloudEvents onto ferry's intake topic on a Kafka-protocol broker, as any
system that is not ferry would: binary mode (`ce_` headers) with kafka-python, each event COPIES
times with the same id (a redelivery or a producer that retried).

usage: publish_events_kafka.py HOST:PORT NAMESPACE TYPE SOURCE SUBJECT DATA_JSON ID_PREFIX COUNT COPIES

Event i (from 0) has the id ID_PREFIX-i; `{i}` in DATA_JSON becomes i. Prints the ids.
"""
import datetime
import sys

from kafka import KafkaProducer

brokers, namespace, ty, source, subject, data, prefix, count, copies = sys.argv[1:10]
producer = KafkaProducer(bootstrap_servers=brokers, acks="all")
for copy in range(int(copies)):
    for i in range(int(count)):
        event_id = f"{prefix}-{i}"
        now = datetime.datetime.now(datetime.timezone.utc)
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", event_id.encode()),
            ("ce_source", source.encode()),
            ("ce_type", ty.encode()),
            ("ce_subject", subject.encode()),
            ("ce_time", now.isoformat().replace("+00:00", "Z").encode()),
            ("content-type", b"application/json"),
        ]
        value = data.replace("{i}", str(i)).encode()
        producer.send(f"{namespace}.intake", key=event_id.encode(), value=value, headers=headers).get(timeout=30)
        if copy == 0:
            print(event_id)
producer.flush()
producer.close()
