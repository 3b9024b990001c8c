//! `ferry-launcher-local`: the local launcher alone, on the bus its flags name.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferry_launcher_local::{Config, Secrets};

#[derive(Debug, Parser)]
#[command(about = "Runs dispatched task attempts as local processes")]
struct Args {
    /// The message bus: memory://, amqp://HOST:PORT/VHOST or kafka://HOST:PORT.
    #[arg(long, env = "FERRY_BUS")]
    bus: String,
    /// Holds each attempt's working directory and state.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "ferry-data")]
    data_dir: PathBuf,
    /// Where output files are copied (default: DATA_DIR/artifacts).
    #[arg(long, env = "FERRY_ARTIFACT_DIR")]
    artifact_dir: Option<PathBuf>,
    /// Attempts running at once.
    #[arg(long, default_value_t = 64)]
    max_parallel: usize,
    /// Time between SIGTERM and SIGKILL when stopping an attempt (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// A secrets file (NAME=value lines, or a JSON object); FERRY_SECRET_<NAME> variables
    /// are read as well, the file wins on a name in both.
    #[arg(long, env = "FERRY_SECRETS_FILE")]
    secrets_file: Option<PathBuf>,
    /// Consumer group; every local launcher of one deployment shares it.
    #[arg(long, default_value = "launcher-local")]
    group: String,
}

#[global_allocator]
static ALLOCATOR: ferry_runtime::memory::Allocator = ferry_runtime::memory::ALLOCATOR;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_runtime::memory::set_up();
    let args = Args::parse();
    ferry_runtime::telemetry::init("info");
    let shutdown = ferry_runtime::shutdown::on_signals();
    let mut config = Config::new(args.data_dir);
    if let Some(path) = &args.secrets_file {
        config.secrets.extend(Secrets::from_file(path)?);
    }
    config.artifact_dir = args.artifact_dir;
    config.max_parallel = args.max_parallel;
    config.kill_grace = args.kill_grace;
    config.group = args.group;
    let bus = ferry_connect::bus(&args.bus).await?;
    ferry_launcher_local::run(config, bus, shutdown).await?;
    Ok(())
}
