"""Submits a ferry job from outside ferry: a CloudEvent in binary mode, published with pika.

usage: publish_amqp.py AMQP_URL NAMESPACE JOB_ID FLOW_FILE
"""
import datetime
import json
import sys
import uuid

import pika

url, namespace, job_id, flow_file = sys.argv[1:5]
flow = open(flow_file).read()
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
now = datetime.datetime.now(datetime.timezone.utc)
event_id = str(uuid.uuid4())
ch.basic_publish(
    exchange=namespace,
    routing_key="intake",
    body=json.dumps({"jobId": job_id, "flow": flow, "flowName": flow_file, "inputs": {"name": "pika"}}).encode(),
    properties=pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id=event_id,
        headers={
            "cloudEvents:specversion": "1.0",
            "cloudEvents:id": event_id,
            "cloudEvents:source": "/tests/clients/publish_amqp.py",
            "cloudEvents:type": "dev.ferry.job.submitted",
            "cloudEvents:time": now.isoformat().replace("+00:00", "Z"),
            "cloudEvents:partitionkey": job_id,
        },
    ),
    mandatory=True,
)
conn.close()
print(event_id)
