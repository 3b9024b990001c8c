//! `ferry-scheduler`: the scheduler service alone, on the bus and database URLs given.
//!
//! `memory://` works only within one process; `ferry run` runs everything in one.

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "ferry's scheduler: job and task state, release, retries, leases"
)]
struct Args {
    /// The message bus: amqp://HOST:PORT/VHOST, kafka://HOST:PORT (memory:// is in-process only).
    #[arg(long, env = "FERRY_BUS")]
    bus: String,
    /// The state database: sqlite://PATH or postgres://….
    #[arg(long, env = "FERRY_DB", default_value = "sqlite://ferry-scheduler.db")]
    db: String,
    /// A running attempt without a heartbeat for this long is presumed lost.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
}

#[global_allocator]
static ALLOCATOR: ferry_runtime::memory::Allocator = ferry_runtime::memory::ALLOCATOR;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_runtime::memory::set_up();
    let args = Args::parse();
    ferry_runtime::telemetry::init("info");
    let bus = ferry_connect::bus(&args.bus).await?;
    let mut config = ferry_scheduler::Config::new(args.db, ferry_runtime::instance_source("scheduler"));
    config.lease = args.lease;
    ferry_scheduler::run(config, bus, ferry_runtime::shutdown::on_signals()).await?;
    Ok(())
}
