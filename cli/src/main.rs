//! The `ferry` binary: parses the command line and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_cli::client::Target;
use ferry_cli::run::RunArgs;
use ferry_cli::services::{ApiAccess, BusKeys, Service, Settings};

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
    /// Api tokens: `ferry token create --name ci --scope submit,read`.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token: prints it once, then the line to add to the api's tokens file.
    Create {
        /// What the token is for (shown in the api's logs and errors).
        #[arg(long)]
        name: String,
        /// submit, read, cancel (cancel and retry), admin; comma-separated.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Limit the token to these namespaces (comma-separated) [default: every namespace].
        #[arg(long = "namespace", value_delimiter = ',')]
        namespaces: Vec<String>,
    },
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
    /// The api's bearer token [default: for an api on this machine, DATA_DIR/admin.token].
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust this CA certificate (PEM) for an https:// api, instead of the system's.
    #[arg(long, env = "FERRY_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The data directory of a `ferry up` on this machine, whose admin token is used when no
    /// token is given.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = ".ferry")]
    data_dir: PathBuf,
}

impl Api {
    fn target(self) -> Target {
        Target {
            url: self.url,
            token: self.token,
            ca_cert: self.ca_cert,
            data_dir: self.data_dir,
        }
    }
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
    /// The api's tokens file [default: DATA_DIR/tokens.yaml, created with an admin token].
    #[arg(long, env = "FERRY_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// The api asks for no credential (only on a loopback --listen).
    #[arg(long, conflicts_with = "tokens_file")]
    insecure_no_auth: bool,
    /// Serve the api over HTTPS with this certificate chain (PEM).
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A host name clients reach the api by (checked against `Host`); repeat or comma-separate.
    #[arg(long = "allowed-host", env = "FERRY_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
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
        s.api_access = ApiAccess {
            tokens_file: self.tokens_file.clone(),
            insecure_no_auth: self.insecure_no_auth,
            tls: self
                .tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| ferry_api::TlsFiles { cert, key }),
            allowed_hosts: self.allowed_hosts.clone(),
        };
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
        Command::Run { .. }
            | Command::Validate { .. }
            | Command::Schema { .. }
            | Command::Key(_)
            | Command::Token(_)
    );
    ferry_runtime::telemetry::init(if quiet { "warn" } else { "info" });
    let code = match cli.command {
        Command::Validate { flows } => ferry_cli::validate(&flows),
        Command::Token(TokenCommand::Create {
            name,
            scopes,
            namespaces,
        }) => ferry_cli::client::token_create(&name, &scopes, &namespaces),
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
                } => ferry_cli::client::submit(&api.target(), &flow, &inputs, job_id, wait).await,
                Command::Status { job, json, api } => {
                    ferry_cli::client::status(&api.target(), job.as_deref(), json).await
                }
                Command::Logs {
                    job,
                    task,
                    follow,
                    api,
                } => ferry_cli::client::logs(&api.target(), &job, task.as_deref(), follow).await,
                Command::Cancel { job, api } => {
                    ferry_cli::client::command(&api.target(), &job, ferry_event::kind::JOB_CANCEL).await
                }
                Command::Retry { job, api } => {
                    ferry_cli::client::command(&api.target(), &job, ferry_event::kind::JOB_RETRY).await
                }
                Command::Validate { .. } | Command::Schema { .. } | Command::Token(_) => {
                    unreachable!("handled above")
                }
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
