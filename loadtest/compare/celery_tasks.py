"""The Celery side of the comparison: one task that runs a command as a process.

Broker: RabbitMQ (the same one ferry uses), result backend `rpc://`, prefork workers. Started
by compare.sh as `celery -A celery_tasks worker --pool prefork`.
"""

import os
import subprocess

from celery import Celery

app = Celery("ferry_compare", broker=os.environ["COMPARE_AMQP"], backend="rpc://")
app.conf.update(
    task_acks_late=True,  # acked after the task ran: what "nothing lost" asks of Celery
    worker_prefetch_multiplier=4,
    task_default_queue=os.environ.get("COMPARE_QUEUE", "ferry-compare"),
    broker_connection_retry_on_startup=True,
)


@app.task
def run(argv):
    return subprocess.run(argv, check=False).returncode
