#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints and the whole test suite, against real RabbitMQ,
# PostgreSQL, a Kafka-compatible broker (tansu), a private dockerd, a Ray head and a moto server
# (local AWS APIs), which it installs and starts when missing and removes again afterwards
# (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build once and reuse across runs and clones on the same machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install Rust from https://rustup.rs, then run this again" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# shellcheck source=scripts/services.sh
source scripts/services.sh
step "build dependencies"
build_deps

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The README's first command builds ferry without its optional brokers and backends.
cargo clippy -p ferry-cli --no-default-features --locked -- -D warnings

step "building the tests"
cargo nextest run --workspace --locked --no-run

step "starting RabbitMQ, PostgreSQL, tansu, dockerd, a Ray head, moto, fake-gcs-server and a Pub/Sub emulator"
trap services_down EXIT
services_up

# Tests that restart the broker or kill services run alone, after the rest.
disruptive='binary(faults) | (package(ferry-bus-amqp) & binary(restart))'

# Runs nextest with these arguments. When it fails with the run's dockerd deadlocked (a bug of
# Debian's engine, not of ferry: see docker_wedged), every container test after the deadlock
# failed for it; the dockerd is replaced and the same tests run once more, and must pass.
run_tests() {
  cargo nextest run --workspace --locked "$@" && return 0
  docker_wedged || return 1
  step "dockerd deadlocked (moby/moby#46661); restarting it and running these tests again"
  docker_restart || return 1
  cargo nextest run --workspace --locked "$@"
}

step "cargo nextest run (side by side)"
status=0
run_tests -E "not ($disruptive)" "$@" || status=$?

step "cargo nextest run (broker restarts and killed services, one at a time)"
# The container fault runs with fewer containers than by hand, for about a minute each here.
export FERRY_FAULT_DOCKER_TASKS="${FERRY_FAULT_DOCKER_TASKS:-100}"
export FERRY_FAULT_KUBERNETES_TASKS="${FERRY_FAULT_KUBERNETES_TASKS:-60}"
run_tests -E "$disruptive" --test-threads 1 "$@" || status=$?

step "deployment files: terraform validate, checkov, kubernetes-validate (scripts/infra-check.sh)"
scripts/infra-check.sh || status=$?

exit $status
