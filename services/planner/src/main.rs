//! `ferry-planner`: the planner service alone, on the bus a URL names.
//!
//! `memory://` works only within one process; use `ferry up` for an all-in-one deployment.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "ferry's planner: turns job submissions into planned or rejected jobs"
)]
struct Args {
    /// The message bus: amqp://HOST:PORT/VHOST, kafka://HOST:PORT (memory:// is in-process only).
    #[arg(long, env = "FERRY_BUS")]
    bus: String,
    /// Most submissions held unacknowledged at once.
    #[arg(long, default_value_t = 16)]
    prefetch: usize,
}

#[global_allocator]
static ALLOCATOR: ferry_runtime::memory::Allocator = ferry_runtime::memory::ALLOCATOR;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_runtime::memory::set_up();
    let args = Args::parse();
    ferry_runtime::telemetry::init("info");
    let bus = ferry_connect::bus(&args.bus).await?;
    let config = ferry_planner::Config {
        source: ferry_runtime::instance_source("planner"),
        prefetch: args.prefetch,
    };
    ferry_planner::run(config, bus, ferry_runtime::shutdown::on_signals()).await?;
    Ok(())
}
