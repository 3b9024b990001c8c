//! The `ferry` binary: parses the command line and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_cli::run::RunArgs;
use ferry_cli::services::{BusKeys, Service, Settings};

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
        #[arg(long, default_value = "5s", value_parser = duration)]
        kill_grace: Duration,
    },
    /// Check flow files; every problem is reported with file:line:column.
    Validate {
        #[arg(required = true)]
        flows: Vec<PathBuf>,
    },
    /// Print the flow JSON Schema, or an event payload's schema (e.g. task.dispatched).
    Schema { name: Option<String> },
    /// Run every service (planner, scheduler, launcher, log collector, api) in this process on a broker.
    Up(Deploy),
    /// Run one service alone; start as many as the load needs.
    Service {
        /// planner, scheduler, launcher, log-collector or api.
        name: Service,
        #[command(flatten)]
        deploy: Deploy,
    },
    /// Submit a flow to a deployment; prints the job id first.
    Submit {
        flow: PathBuf,
        #[arg(short, long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Choose the job id (a resubmission with the same id is the same job).
        #[arg(long)]
        job_id: Option<String>,
        /// Follow the job until it ends; exit 0 if it succeeded, 1 otherwise.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: Api,
    },
    /// A job's state on the first line, then each task's; without JOB, the latest jobs.
    Status {
        job: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: Api,
    },
    /// A job's log lines (`task | line`, `!` for stderr).
    Logs {
        job: String,
        #[arg(long)]
        task: Option<String>,
        /// Keep printing lines as they come until the job has ended.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        api: Api,
    },
    /// Cancel a job: running tasks are stopped, pending ones never start.
    Cancel {
        job: String,
        #[command(flatten)]
        api: Api,
    },
    /// Retry a failed or cancelled job: its failed and cancelled tasks run again.
    Retry {
        job: String,
        #[command(flatten)]
        api: Api,
    },
    /// Manage the bus key file the services sign their events with.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key file with one new key (readable by its owner only); prints the key's id.
    Create { file: PathBuf },
    /// Add a new key to a key file, last: every service accepts it once restarted. With
    /// --sign it goes first and signs (do that once every service accepts it).
    Add {
        file: PathBuf,
        #[arg(long)]
        sign: bool,
    },
}

#[derive(Args)]
struct Api {
    /// The deployment's api.
    #[arg(long = "api", env = "FERRY_API", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(Args)]
struct Deploy {
    /// The broker: amqp://USER:PASS@HOST:PORT/VHOST or kafka://HOST:PORT (memory:// only within `ferry up`).
    #[arg(long, env = "FERRY_BUS")]
    bus: String,
    /// The scheduler's database (sqlite://PATH or postgres://…), the api's with `ferry service api`
    /// [default: sqlite://DATA_DIR/scheduler.db, api.db]
    #[arg(long, env = "FERRY_DB")]
    db: Option<String>,
    /// The log store, written by the log collector and read by the api [default: sqlite://DATA_DIR/logs.db]
    #[arg(long, env = "FERRY_LOG_DB")]
    logs: Option<String>,
    /// The launcher's backend.
    #[arg(long, default_value = "local")]
    backend: String,
    /// Where state, working directories and output files are kept.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = ".ferry")]
    data_dir: PathBuf,
    /// Where the api listens.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Time a cancelled or timed-out task gets between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = duration)]
    kill_grace: Duration,
    /// Attempts the launcher runs at once.
    #[arg(long, default_value_t = 64)]
    max_parallel: usize,
    /// The bus key file shared by every service of the deployment (`ferry key create`): each
    /// signs what it publishes with its first key and accepts events signed with any of them.
    /// `ferry up` on a broker uses DATA_DIR/bus.keys, created on the first start, when not given.
    #[arg(long, env = "FERRY_BUS_KEYS", value_name = "FILE")]
    bus_key_file: Option<PathBuf>,
    /// Neither sign nor check events on a broker: anyone who can publish there can then make
    /// ferry run any command.
    #[arg(long, env = "FERRY_INSECURE_UNSIGNED_BUS")]
    insecure_unsigned_bus: bool,
}

impl Deploy {
    fn settings(&self, service: Option<Service>) -> Settings {
        let mut s = Settings::new(&self.data_dir);
        match service {
            Some(Service::Api) => s.api_db = self.db.clone(),
            _ => s.scheduler_db = self.db.clone(),
        }
        s.logs_db = self.logs.clone();
        s.backend = self.backend.clone();
        s.listen = self.listen;
        s.kill_grace = self.kill_grace;
        s.max_parallel = self.max_parallel;
        s
    }

    fn keys(&self) -> BusKeys {
        BusKeys {
            file: self.bus_key_file.clone(),
            insecure_unsigned: self.insecure_unsigned_bus,
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: expected e.g. 500ms, 5s, 1m"))
}

#[global_allocator]
static ALLOCATOR: ferry_runtime::memory::Allocator = ferry_runtime::memory::ALLOCATOR;

fn main() {
    ferry_runtime::memory::set_up();
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Run { .. } | Command::Validate { .. } | Command::Schema { .. } | Command::Key(_)
    );
    ferry_runtime::telemetry::init(if quiet { "warn" } else { "info" });
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
        command => block_on(async move {
            match command {
                Command::Run {
                    flow,
                    inputs,
                    data_dir,
                    kill_grace,
                } => {
                    ferry_cli::run::run(RunArgs {
                        flow,
                        inputs,
                        data_dir,
                        kill_grace,
                    })
                    .await
                }
                Command::Up(d) => {
                    ferry_cli::services::serve(&Service::ALL, d.settings(None), &d.bus, &d.keys())
                        .await
                        .map(|()| 0)
                }
                Command::Service { name, deploy } => ferry_cli::services::serve(
                    &[name],
                    deploy.settings(Some(name)),
                    &deploy.bus,
                    &deploy.keys(),
                )
                .await
                .map(|()| 0),
                Command::Key(KeyCommand::Create { file }) => ferry_cli::keys::create(&file).map(|id| {
                    println!("{id}");
                    eprintln!(
                        "ferry: created {}; give every service of the deployment this file (--bus-key-file)",
                        file.display()
                    );
                    0
                }),
                Command::Key(KeyCommand::Add { file, sign }) => ferry_cli::keys::add(&file, sign).map(|id| {
                    println!("{id}");
                    0
                }),
                Command::Submit {
                    flow,
                    inputs,
                    job_id,
                    wait,
                    api,
                } => ferry_cli::client::submit(&api.url, &flow, &inputs, job_id, wait).await,
                Command::Status { job, json, api } => {
                    ferry_cli::client::status(&api.url, job.as_deref(), json).await
                }
                Command::Logs {
                    job,
                    task,
                    follow,
                    api,
                } => ferry_cli::client::logs(&api.url, &job, task.as_deref(), follow).await,
                Command::Cancel { job, api } => {
                    ferry_cli::client::command(&api.url, &job, ferry_event::kind::JOB_CANCEL).await
                }
                Command::Retry { job, api } => {
                    ferry_cli::client::command(&api.url, &job, ferry_event::kind::JOB_RETRY).await
                }
                Command::Validate { .. } | Command::Schema { .. } => unreachable!("handled above"),
            }
        }),
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<i32>>) -> i32 {
    let rt = tokio::runtime::Runtime::new().expect("the async runtime starts");
    match rt.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ferry_cli::EXIT_FAILED
        }
    }
}
