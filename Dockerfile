# ferry's image: the `ferry` binary, run as a non-root user, one service per container
# (`ferry service planner|scheduler|launcher|log-collector|api`). docker-compose.yml,
# infra/kubernetes and infra/terraform all start it that way.
#
#   docker build -t ferry .                          # compiles ferry (release) in a Rust stage
#   docker build -t ferry --target prebuilt \
#     --build-arg FERRY_BINARY=target/release/ferry .  # packs a ferry built on this machine
#
# The runtime stage is a slim Debian with a shell and coreutils, because the local launcher
# runs tasks inside its own container: their commands (`sh -c …`) need them. Add what your
# tasks run by building FROM this image.
#
# Only Dockerfile syntax the classic builder also understands is used, so that both builders
# build it. The stages are in the order the classic builder needs: it builds every stage before
# its target, so `--target prebuilt` never needs the Rust image.

# The Debian release of both the build and the runtime stage: ferry links against its glibc.
ARG DEBIAN_RELEASE=bookworm
# The runtime stage's base: any glibc distribution with a POSIX shell. On a Debian-like base
# ca-certificates are installed from apt; any other must bring /etc/ssl/certs itself.
ARG RUNTIME_BASE=debian:${DEBIAN_RELEASE}-slim
ARG RUST_VERSION=1.95.0

# --- the runtime: a non-root user, its directories, the healthcheck -----------------------------
FROM ${RUNTIME_BASE} AS runtime-base
# ferry's user (uid/gid 10001, as in infra/); it owns the data directory and /run/ferry, where
# the stack keeps the bus key file. Both are private to it (0700), as ferry makes them.
RUN set -eu; \
    if command -v apt-get >/dev/null 2>&1; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    echo 'ferry:x:10001:10001:ferry:/var/lib/ferry:/usr/sbin/nologin' >>/etc/passwd; \
    echo 'ferry:x:10001:' >>/etc/group; \
    mkdir -p /var/lib/ferry /run/ferry; \
    chown 10001:10001 /var/lib/ferry /run/ferry; \
    chmod 0700 /var/lib/ferry /run/ferry
COPY infra/docker/ferry-probe /usr/local/bin/ferry-probe
ENV FERRY_DATA_DIR=/var/lib/ferry \
    HOME=/var/lib/ferry \
    FERRY_LOG=info
WORKDIR /var/lib/ferry
USER 10001:10001
# The api; the services' metrics, health and readiness (FERRY_METRICS).
EXPOSE 8080 9464
ENTRYPOINT ["ferry"]
CMD ["--help"]
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Event-driven task dispatcher: one service per container, ferry service NAME" \
      org.opencontainers.image.source="https://github.com/ferry-dev/ferry" \
      org.opencontainers.image.licenses="Apache-2.0"

# --- ferry built elsewhere: a binary from the build context ------------------------------------
FROM runtime-base AS prebuilt
ARG FERRY_BINARY=target/release/ferry
COPY ${FERRY_BINARY} /usr/local/bin/ferry

# --- ferry built here ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG RUST_VERSION
# librdkafka is compiled from source (cmake, libcurl, zlib); aws-lc wants a C compiler.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake g++ make pkg-config libcurl4-openssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The image's toolchain is the pinned one; naming it keeps rustup from fetching the toolchain
# file's extra components (clippy, rustfmt). Function names stay for backtraces, line tables go.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TARGET_DIR=/src/target
RUN cargo build --release --locked -p ferry-cli --bin ferry \
 && cp target/release/ferry /usr/local/bin/ferry

# --- the default target: ferry built here, in the runtime -----------------------------------------
FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/ferry /usr/local/bin/ferry
