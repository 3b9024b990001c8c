"""A minimal RabbitMQ consumer that spawns one process per message, with durable state.

A durable queue, persistent messages published with confirms, a consumer that runs the
command of each message as a process and acks it afterwards, `--in-flight` messages at a time
(a thread per message in flight). Prints the rate from the first publish to the last ack.
"""

import argparse
import subprocess
import threading
import time
import uuid

import pika


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--command", default="/bin/true")
    ap.add_argument("--in-flight", type=int, default=8)
    a = ap.parse_args()

    queue = f"compare-{uuid.uuid4().hex[:12]}"
    params = pika.URLParameters(a.url)
    pub = pika.BlockingConnection(params)
    pch = pub.channel()
    pch.queue_declare(queue=queue, durable=True)
    pch.confirm_delivery()

    con = pika.BlockingConnection(params)
    cch = con.channel()
    cch.basic_qos(prefetch_count=a.in_flight)
    acked = 0

    def ack(tag):
        nonlocal acked
        cch.basic_ack(tag)
        acked += 1

    def work(tag):
        subprocess.run([a.command], check=False)
        con.add_callback_threadsafe(lambda: ack(tag))

    def on_message(ch, method, props, body):
        # At most `prefetch` = `in_flight` messages are unacked, so at most that many run.
        threading.Thread(target=work, args=(method.delivery_tag,), daemon=True).start()

    t0 = time.monotonic()
    for i in range(a.tasks):
        pch.basic_publish("", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    cch.basic_consume(queue, on_message)
    while acked < a.tasks:
        con.process_data_events(time_limit=0.01)
    took = time.monotonic() - t0
    pch.queue_delete(queue)
    pub.close()
    con.close()
    print(
        f"python consumer ({a.in_flight} in flight, durable): {a.tasks} tasks in {took:.2f} s"
        f" = {a.tasks / took:.0f} tasks/s"
    )


if __name__ == "__main__":
    main()
