"""Submits a ferry job from outside ferry: a CloudEvent in Kafka binary mode, sent with
kafka-python.

usage: publish_kafka.py HOST:PORT NAMESPACE JOB_ID FLOW_FILE
"""
import datetime
import json
import sys
import uuid

from kafka import KafkaProducer

brokers, namespace, job_id, flow_file = sys.argv[1:5]
flow = open(flow_file).read()
producer = KafkaProducer(bootstrap_servers=brokers, acks="all")
now = datetime.datetime.now(datetime.timezone.utc)
event_id = str(uuid.uuid4())
headers = [
    ("ce_specversion", b"1.0"),
    ("ce_id", event_id.encode()),
    ("ce_source", b"/tests/clients/publish_kafka.py"),
    ("ce_type", b"dev.ferry.job.submitted"),
    ("ce_time", now.isoformat().replace("+00:00", "Z").encode()),
    ("content-type", b"application/json"),
]
value = json.dumps({"jobId": job_id, "flow": flow, "flowName": flow_file, "inputs": {"name": "kafka"}}).encode()
producer.send(f"{namespace}.intake", key=job_id.encode(), value=value, headers=headers).get(timeout=30)
producer.flush()
producer.close()
print(event_id)
