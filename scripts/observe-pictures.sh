#!/usr/bin/env bash
# Makes the README's pictures from real runs on this machine (not part of CI):
#
#   docs/img/trace.png      `ferry run examples/diamond.yaml` exporting its trace over OTLP/HTTP
#                           to a receiver (`--example otlp_dump`), drawn as a waterfall;
#   docs/img/dashboard.png  `ferry up --metrics` running jobs for a few minutes while a real
#                           Prometheus scrapes it every second, the top of the overview
#                           dashboard drawn from its JSON with every query answered by that
#                           Prometheus.
#
# Both are HTML pages (scripts/observe_pictures.py) that headless Chromium turns into PNGs.
# Needs: cargo, python3, prometheus and chromium (Debian: apt-get install prometheus chromium).
# MINUTES (default 4) sets how long jobs run for the dashboard.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
minutes=${MINUTES:-4}

for tool in python3 prometheus chromium; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done
cargo build -p ferry-cli --bin ferry --example otlp_dump
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
ferry=$target/debug/ferry
dump=$target/debug/examples/otlp_dump

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 200); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: $1 does not answer" >&2
    return 1
}
shoot() { # HTML PNG WIDTH HEIGHT
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
        --window-size="$3,$4" --screenshot="$2" "file://$1" 2>/dev/null
    echo "$2: $(stat -c %s "$2") bytes"
}
mkdir -p docs/img

# --- The trace of one job ---------------------------------------------------------------------
port=$(free_port)
"$dump" "127.0.0.1:$port" "$work/spans.jsonl" & pids+=($!)
sleep 0.5
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" OTEL_METRICS_EXPORTER=none \
    "$ferry" run examples/diamond.yaml --data-dir "$work/run" >/dev/null
python3 scripts/observe_pictures.py trace "$work/spans.jsonl" "$work/trace.html" | tee "$work/trace.size"
read -r w h < <(sed -E 's/.* ([0-9]+)x([0-9]+)$/\1 \2/' "$work/trace.size")
shoot "$work/trace.html" docs/img/trace.png "$w" "$h"

# --- The overview dashboard -------------------------------------------------------------------
api=$(free_port); metrics=$(free_port); prom=$(free_port)
"$ferry" up --bus memory:// --kill-grace 1s --listen "127.0.0.1:$api" --metrics "127.0.0.1:$metrics" \
    --data-dir "$work/up" >"$work/up.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$metrics/readyz"
cat >"$work/prometheus.yml" <<EOF
global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: ferry
    static_configs: [{ targets: ['127.0.0.1:$metrics'] }]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom" >"$work/prometheus.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$prom/-/ready"
start=$(date +%s)
end=$((start + minutes * 60))
# Jobs as they come: diamonds, hellos, and now and then one whose task fails.
submit() { "$ferry" submit "$@" --wait --api "http://127.0.0.1:$api" --data-dir "$work/up" >/dev/null 2>&1 || true; }
i=0
while [ "$(date +%s)" -lt "$end" ]; do
    submit examples/diamond.yaml --input "day=2026-01-$(printf %02d $((i % 28 + 1)))" &
    submit examples/hello.yaml --input "name=run-$i" &
    if [ $((i % 4)) = 0 ]; then submit tests/flows/flaky-once.yaml --input "marker=$work/marker-$i" & fi
    sleep 3
    i=$((i + 1))
done
sleep 5
python3 scripts/observe_pictures.py dashboard infra/grafana/dashboards/ferry-overview.json \
    "http://127.0.0.1:$prom" "$start" "$(date +%s)" "$work/dashboard.html" 32 | tee "$work/dash.size"
read -r w h < <(sed -E 's/.* ([0-9]+)x([0-9]+)$/\1 \2/' "$work/dash.size")
shoot "$work/dashboard.html" docs/img/dashboard.png "$w" "$h"
cd "$root"
