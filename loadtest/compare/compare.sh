#!/usr/bin/env bash
# ferry against what a user would pick instead on RabbitMQ, side by side in one run, on a flat
# fan-out of no-op process tasks:
#   - the raw rate of spawning the command with 8 in flight (xargs -P 8);
#   - a minimal Python consumer spawning one process per message (durable queue, persistent
#     messages, acks after the process ended; 8 in flight);
#   - Celery 5 with prefork workers (one per core) and the rpc:// result backend;
#   - ferry: `ferry-loadtest --bus URL shape fanout` (every service its own process, SQLite).
#
#   loadtest/compare/compare.sh amqp://guest:guest@127.0.0.1:5672/VHOST [TASKS] [FERRY_LOADTEST]
#
# Python packages go into a venv under $FERRY_TOOLS (default ~/.cache/ferry/tools).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
url=${1:?usage: compare.sh AMQP_URL [TASKS] [FERRY_LOADTEST]}
tasks=${2:-2000}
loadtest=${3:-}
command=/bin/true
tools="${FERRY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/tools}"
venv="$tools/compare-venv"
if ! "$venv/bin/python" -c 'import celery, pika' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q celery==5.7.0 pika==1.4.4
fi
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

t0=$(date +%s%N)
seq "$tasks" | xargs -P 8 -n 1 "$command"
ms=$((($(date +%s%N) - t0) / 1000000))
echo "raw spawn (xargs -P 8): $tasks tasks in $ms ms = $((tasks * 1000 / ms)) tasks/s"

"$venv/bin/python" "$here/py_consumer.py" --url "$url" --tasks "$tasks" --command "$command"

queue="ferry-compare-$$"
export COMPARE_AMQP="$url" COMPARE_QUEUE="$queue"
(cd "$here" && exec "$venv/bin/celery" -q -A celery_tasks worker --pool prefork --concurrency "$(nproc)" \
  --loglevel warning --without-gossip --without-mingle --without-heartbeat) &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
(cd "$here" && "$venv/bin/python" celery_drive.py "$tasks" "$command")
kill "$worker"; wait "$worker" 2>/dev/null || true
trap - EXIT

if [ -n "$loadtest" ]; then
  "$loadtest" --bus "$url" shape fanout --width "$((tasks - 1))" --command "$command"
fi
