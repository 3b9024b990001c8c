"""What someone with publish and read rights on ferry's RabbitMQ vhost can do, as tests/security.rs
plays it: listen in on a routing key, take what was heard, publish messages (captured, altered or
made up) straight onto the namespace's exchange, and read the dead-letter queue.

usage:
  rabbit_spy.py spy AMQP_URL NAMESPACE ROUTING_KEY QUEUE   bind a queue of one's own
  rabbit_spy.py take AMQP_URL QUEUE                        print its messages (JSON list), deleting it
  rabbit_spy.py publish AMQP_URL NAMESPACE                 publish the JSON list read from stdin
  rabbit_spy.py dead AMQP_URL NAMESPACE                    print the dead letters (JSON list), taking them

A message is {"routingKey", "contentType", "messageId", "headers", "body"} (the body as text).
"""
import json
import sys

import pika


def text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, dict):
        return {k: text(x) for k, x in v.items()}
    if isinstance(v, list):
        return [text(x) for x in v]
    return v


def drain(ch, queue):
    out = []
    while True:
        method, props, body = ch.basic_get(queue=queue, auto_ack=True)
        if method is None:
            return out
        out.append({
            "routingKey": method.routing_key,
            "contentType": props.content_type,
            "messageId": props.message_id,
            "headers": text(props.headers or {}),
            "body": body.decode("utf-8", "replace"),
        })


cmd, url = sys.argv[1], sys.argv[2]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
if cmd == "spy":
    namespace, key, queue = sys.argv[3:6]
    ch.queue_declare(queue=queue, durable=False, auto_delete=False)
    ch.queue_bind(queue=queue, exchange=namespace, routing_key=key)
elif cmd == "take":
    queue = sys.argv[3]
    print(json.dumps(drain(ch, queue)))
    ch.queue_delete(queue=queue)
elif cmd == "publish":
    namespace = sys.argv[3]
    ch.confirm_delivery()
    for m in json.load(sys.stdin):
        ch.basic_publish(
            exchange=namespace,
            routing_key=m["routingKey"],
            body=m["body"].encode(),
            properties=pika.BasicProperties(
                content_type=m.get("contentType"),
                message_id=m.get("messageId"),
                delivery_mode=2,
                headers=m.get("headers") or {},
            ),
            mandatory=True,
        )
elif cmd == "dead":
    namespace = sys.argv[3]
    print(json.dumps(drain(ch, namespace + ":dead")))
else:
    sys.exit("unknown command " + cmd)
conn.close()
