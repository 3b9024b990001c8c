//! `ferry-log-collector`: the log collector alone, on the bus and store its flags name.

use clap::Parser;
use ferry_log_collector::{Config, DEFAULT_BATCH_MAX, DEFAULT_GROUP, LogStore};

#[derive(Debug, Parser)]
#[command(about = "Stores task.log events in a durable log store")]
struct Args {
    /// The message bus: memory://, amqp://HOST:PORT/VHOST or kafka://HOST:PORT.
    #[arg(long, env = "FERRY_BUS")]
    bus: String,
    /// The log store: sqlite:///path/to/logs.db.
    #[arg(long, env = "FERRY_LOG_DB", default_value = "sqlite://ferry-logs.db")]
    db: String,
    /// Consumer group; every collector of one deployment shares it.
    #[arg(long, default_value = DEFAULT_GROUP)]
    group: String,
    /// Most events stored per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH_MAX)]
    batch_max: usize,
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
        group: args.group,
        batch_max: args.batch_max,
        ..Config::new(LogStore::open(&args.db).await?)
    };
    ferry_log_collector::run(config, bus, shutdown).await?;
    Ok(())
}
