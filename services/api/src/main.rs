//! `ferry-api`: the HTTP API alone, on the bus, read model database and log store given.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ferry_api::{Config, DEFAULT_BODY_LIMIT, DEFAULT_GROUP};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "ferry's HTTP API: CloudEvents intake and the read model of jobs, tasks and logs"
)]
struct Args {
    /// The message bus: amqp://HOST:PORT/VHOST or kafka://HOST:PORT (memory:// is in-process only).
    #[arg(long, env = "FERRY_BUS")]
    bus: String,
    /// The read model database: sqlite://PATH or postgres://….
    #[arg(long, env = "FERRY_API_DB", default_value = "sqlite://ferry-api.db")]
    db: String,
    /// The log collector's store, read only: sqlite:///path/to/logs.db.
    #[arg(long, env = "FERRY_LOG_DB", default_value = "sqlite://ferry-logs.db")]
    logs: String,
    /// The address to listen on.
    #[arg(long, env = "FERRY_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Consumer group of the read model; api instances sharing one database share it.
    #[arg(long, default_value = DEFAULT_GROUP)]
    group: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// How long a followed log stream waits for the lines of a finished job.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    log_grace: Duration,
}

#[global_allocator]
static ALLOCATOR: ferry_runtime::memory::Allocator = ferry_runtime::memory::ALLOCATOR;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_runtime::memory::set_up();
    let args = Args::parse();
    ferry_runtime::telemetry::init("info");
    let shutdown = ferry_runtime::shutdown::on_signals();
    let bus = ferry_connect::bus(&args.bus).await?;
    let config = Config {
        listen: args.listen,
        group: args.group,
        body_limit: args.body_limit,
        log_grace: args.log_grace,
        ..Config::new(args.db, args.logs)
    };
    ferry_api::run(config, bus, shutdown).await?;
    Ok(())
}
