//! The `ferry` binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_cli::run::RunArgs;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Event-driven task dispatcher: flows of tasks, run on the compute each names"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a flow end to end in this process (in-memory bus, SQLite, local processes).
    Run {
        /// The flow file (YAML or JSON).
        flow: PathBuf,
        /// An input value, NAME=VALUE; repeat for more.
        #[arg(short, long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Where state, logs and output files are kept.
        #[arg(long, env = "FERRY_DATA_DIR", default_value = ".ferry")]
        data_dir: PathBuf,
        /// Time a cancelled or timed-out task gets between SIGTERM and SIGKILL.
        #[arg(long, default_value = "5s", value_parser = humantime_duration)]
        kill_grace: Duration,
    },
    /// Check flow files; every problem is reported with file:line:column.
    Validate {
        #[arg(required = true)]
        flows: Vec<PathBuf>,
    },
    /// Print the flow JSON Schema, or an event payload's schema (e.g. task.dispatched).
    Schema { name: Option<String> },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: expected e.g. 500ms, 5s, 1m"))
}

fn main() {
    let cli = Cli::parse();
    ferry_runtime::telemetry::init("warn");
    let code = match cli.command {
        Command::Validate { flows } => ferry_cli::validate(&flows),
        Command::Schema { name } => match ferry_cli::schema(name.as_deref()) {
            Ok(s) => {
                println!("{s}");
                ferry_cli::EXIT_OK
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ferry_cli::EXIT_INVALID
            }
        },
        Command::Run {
            flow,
            inputs,
            data_dir,
            kill_grace,
        } => {
            let rt = tokio::runtime::Runtime::new().expect("the async runtime starts");
            match rt.block_on(ferry_cli::run::run(RunArgs {
                flow,
                inputs,
                data_dir,
                kill_grace,
            })) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ferry_cli::EXIT_FAILED
                }
            }
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
