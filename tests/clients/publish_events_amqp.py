"""Publishes plain CloudEvents onto ferry's intake, as any system that is not ferry would:
binary mode with pika, each event COPIES times with the same id (a redelivery or a publisher
that retried).

usage: publish_events_amqp.py AMQP_URL NAMESPACE TYPE SOURCE SUBJECT DATA_JSON ID_PREFIX COUNT COPIES

Event i (from 0) has the id ID_PREFIX-i; `{i}` in DATA_JSON becomes i. Prints the ids.
"""
import datetime
import json
import sys

import pika

url, namespace, ty, source, subject, data, prefix, count, copies = sys.argv[1:10]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
for copy in range(int(copies)):
    for i in range(int(count)):
        event_id = f"{prefix}-{i}"
        now = datetime.datetime.now(datetime.timezone.utc)
        ch.basic_publish(
            exchange=namespace,
            routing_key="intake",
            body=data.replace("{i}", str(i)).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=event_id,
                headers={
                    "cloudEvents:specversion": "1.0",
                    "cloudEvents:id": event_id,
                    "cloudEvents:source": source,
                    "cloudEvents:type": ty,
                    "cloudEvents:subject": subject,
                    "cloudEvents:time": now.isoformat().replace("+00:00", "Z"),
                },
            ),
            mandatory=True,
        )
        if copy == 0:
            print(event_id)
conn.close()
