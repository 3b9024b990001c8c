//! The `ferry` binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_cli::client::Target;
use ferry_cli::output::{self, EXIT_CLOSED};
use ferry_cli::run::RunArgs;
use ferry_cli::services::{One, Up};
use ferry_cli::{errln, outln};

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

/// `ferry agent`'s flags: the bus and data directory, as every service, and the agent's own.
#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    common: ferry_connect::service::Common,
    #[command(flatten)]
    flags: ferry_launcher_local::agent::AgentFlags,
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
        #[arg(long, default_value = "5s", value_parser = ferry_connect::service::duration)]
        kill_grace: Duration,
        /// Run every container task (kubernetes, aws-batch, google-batch) on this runner
        /// instead, with the same image, command, files, env and resources.
        #[arg(long, value_name = "TYPE", value_parser = ["docker"])]
        runner: Option<String>,
        /// Serve `GET /metrics` (Prometheus), `/healthz` and `/readyz` on this address while the
        /// flow runs, e.g. 127.0.0.1:9464: the metrics of every service in this process.
        /// Unauthenticated and free of secrets.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        #[command(flatten)]
        raw: Raw,
    },
    /// Check flow files; every problem is reported with file:line:column.
    Validate {
        #[arg(required = true)]
        flows: Vec<PathBuf>,
    },
    /// Print the flow JSON Schema, or an event payload's schema (e.g. task.dispatched).
    Schema { name: Option<String> },
    /// Run every service (planner, scheduler, launcher, log collector, api) in this process on a broker.
    Up(Box<Up>),
    /// Run an agent: a long-running runner on this machine serving the tasks of one cluster
    /// that its configuration file registers (`runner: { type: agent, cluster, task }`).
    Agent(Box<AgentArgs>),
    /// Run one service alone; start as many as the load needs.
    Service {
        #[command(subcommand)]
        service: Box<One>,
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
    /// Deploy a flow: its triggers start jobs from then on (a new version if it is deployed
    /// already). Prints NAMESPACE/ID and the version once the deployment lists it.
    Deploy {
        flow: PathBuf,
        #[command(flatten)]
        api: Api,
    },
    /// Undeploy a flow, named NAMESPACE/ID (or ID without a namespace), as `ferry flows` lists it.
    Undeploy {
        flow: String,
        #[command(flatten)]
        api: Api,
    },
    /// The deployed flows: version and triggers.
    Flows {
        #[arg(long)]
        json: bool,
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
    /// The launchers heard from in the last day: backend, instance, capacity and attempts
    /// running, live ones first.
    Launchers {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: Api,
    },
    /// The agents heard from in the last day: cluster, registered tasks, instance, capacity and
    /// tasks running, live ones first.
    Agents {
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
        raw: Raw,
        #[command(flatten)]
        api: Api,
    },
    /// The output files of a job's tasks: path, size and where each is kept.
    Files {
        job: String,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: Api,
    },
    /// Download an output file of a task through the api (into the file's own name in the
    /// current directory unless -o says; `-o -` for standard output).
    Download {
        job: String,
        task: String,
        /// The file's path as `ferry files` lists it.
        path: String,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
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
struct Raw {
    /// Print task output as it is, terminal control sequences included (by default they are
    /// shown as text, e.g. \x1b[31m).
    #[arg(long)]
    raw: bool,
}

ferry_runtime::global_allocator!();

fn main() {
    ferry_runtime::memory::set_up();
    ferry_connect::service::hide_bus_password();
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Run { .. }
            | Command::Validate { .. }
            | Command::Schema { .. }
            | Command::Key(_)
            | Command::Token(_)
    );
    let service = match &cli.command {
        Command::Service { service } => service.telemetry_name(),
        Command::Agent(_) => "ferry-agent",
        _ => "ferry",
    };
    let mut telemetry = ferry_runtime::telemetry::init(if quiet { "warn" } else { "info" }, service);
    // Commands that run services have metrics of their own to export.
    if matches!(
        cli.command,
        Command::Run { .. } | Command::Up(_) | Command::Service { .. }
    ) {
        telemetry.export_metrics(service);
    }
    let code = match cli.command {
        Command::Validate { flows } => exit_code(ferry_cli::validate(&flows)),
        Command::Token(TokenCommand::Create {
            name,
            scopes,
            namespaces,
        }) => ferry_cli::client::token_create(&name, &scopes, &namespaces),
        Command::Schema { name } => match ferry_cli::schema(name.as_deref()) {
            Ok(s) => exit_code(outln!("{s}").map(|()| ferry_cli::EXIT_OK).map_err(Into::into)),
            Err(e) => {
                errln!("error: {e:#}");
                ferry_cli::EXIT_INVALID
            }
        },
        command => exit_code(block_on(async move {
            match command {
                Command::Run {
                    flow,
                    inputs,
                    data_dir,
                    kill_grace,
                    runner,
                    metrics,
                    raw,
                } => {
                    ferry_cli::run::run(RunArgs {
                        flow,
                        inputs,
                        data_dir,
                        kill_grace,
                        raw: raw.raw,
                        runner,
                        metrics,
                    })
                    .await
                }
                Command::Up(up) => ferry_cli::services::serve(up.common.clone(), |dir| up.plan(dir))
                    .await
                    .map(|()| 0),
                Command::Service { service } => {
                    ferry_cli::services::serve(service.common().clone(), |dir| service.plan(dir))
                        .await
                        .map(|()| 0)
                }
                Command::Agent(agent) => {
                    let AgentArgs { common, flags } = *agent;
                    ferry_cli::services::serve(common, |dir| {
                        let mut plan = ferry_cli::services::Plan::new(dir);
                        plan.launchers = vec![ferry_cli::launchers::Launcher::Agent(flags.config(dir)?)];
                        Ok(plan)
                    })
                    .await
                    .map(|()| 0)
                }
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
                Command::Files { job, task, json, api } => {
                    ferry_cli::client::files(&api.target(), &job, task.as_deref(), json).await
                }
                Command::Download {
                    job,
                    task,
                    path,
                    output,
                    api,
                } => ferry_cli::client::download(&api.target(), &job, &task, &path, output.as_deref()).await,
                Command::Launchers { json, api } => ferry_cli::client::launchers(&api.target(), json).await,
                Command::Agents { json, api } => ferry_cli::client::agents(&api.target(), json).await,
                Command::Deploy { flow, api } => ferry_cli::client::deploy(&api.target(), &flow).await,
                Command::Undeploy { flow, api } => ferry_cli::client::undeploy(&api.target(), &flow).await,
                Command::Flows { json, api } => ferry_cli::client::flows(&api.target(), json).await,
                Command::Logs {
                    job,
                    task,
                    follow,
                    raw,
                    api,
                } => ferry_cli::client::logs(&api.target(), &job, task.as_deref(), follow, raw.raw).await,
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
        })),
    };
    let code = match output::flush() {
        Ok(()) => code,
        Err(_) => EXIT_CLOSED,
    };
    // The spans of the last events handled leave before the process does.
    telemetry.shutdown();
    std::process::exit(code);
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<i32>>) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Runtime::new().expect("the async runtime starts");
    rt.block_on(fut)
}

/// The exit status of a command: its own, [`EXIT_CLOSED`] when its reader went away (quietly),
/// or 1 with the error shown.
fn exit_code(outcome: anyhow::Result<i32>) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(e) if output::is_closed(&e) => EXIT_CLOSED,
        Err(e) => {
            errln!("error: {e:#}");
            ferry_cli::EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferry").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every flag of `ferry service NAME` is the same flag in `ferry up` (name, variable,
    /// default), and every flag of `ferry up` belongs to a service.
    #[test]
    fn up_and_each_service_share_one_definition_of_each_flag() {
        let cli = Cli::command();
        let up = cli.find_subcommand("up").unwrap();
        let service = cli.find_subcommand("service").unwrap();
        let mut used = std::collections::HashSet::new();
        for one in service.get_subcommands() {
            for arg in one.get_arguments().filter(|a| a.get_long().is_some()) {
                let same = up
                    .get_arguments()
                    .find(|a| a.get_long() == arg.get_long())
                    .unwrap_or_else(|| {
                        panic!(
                            "`ferry service {}` takes --{} and `ferry up` does not",
                            one.get_name(),
                            arg.get_long().unwrap()
                        )
                    });
                assert_eq!(same.get_env(), arg.get_env(), "--{}", arg.get_long().unwrap());
                assert_eq!(same.get_default_values(), arg.get_default_values());
                used.insert(arg.get_long().unwrap());
            }
        }
        for arg in up.get_arguments().filter_map(|a| a.get_long()) {
            assert!(
                used.contains(arg),
                "`ferry up` takes --{arg}, which no service does"
            );
        }
        assert_eq!(service.get_subcommands().count(), 5);
    }

    /// Each flag is given by `FERRY_` and its name in capitals, so the variables need no table.
    #[test]
    fn each_service_flag_has_its_variable() {
        let cli = Cli::command();
        let up = cli.find_subcommand("up").unwrap();
        for arg in up.get_arguments() {
            let long = arg.get_long().unwrap();
            let want = format!("FERRY_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(want.as_str()),
                "--{long}"
            );
        }
    }

    #[test]
    fn up_and_service_scheduler_configure_the_scheduler_alike() {
        let flags = [
            "--bus",
            "memory://",
            "--db",
            "postgres://db/ferry",
            "--lease",
            "5s",
        ];
        let Command::Up(up) = parse(&[&["up"][..], &flags[..]].concat()).unwrap().command else {
            panic!("not up")
        };
        let Command::Service { service } = parse(&[&["service", "scheduler"][..], &flags[..]].concat())
            .unwrap()
            .command
        else {
            panic!("not service")
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (up.plan(dir).unwrap(), service.plan(dir).unwrap());
        let (a, b) = (a.scheduler.unwrap(), b.scheduler.unwrap());
        assert_eq!(
            (a.db_url.as_str(), a.lease),
            ("postgres://db/ferry", Duration::from_secs(5))
        );
        assert_eq!((b.db_url.as_str(), b.lease), (a.db_url.as_str(), a.lease));
    }

    #[test]
    fn launchers_are_chosen_by_backend_name() {
        let tmp = tempfile::tempdir().unwrap();
        let backends = |args: &[&str]| -> Vec<&'static str> {
            let plan = match parse(args).unwrap().command {
                Command::Up(up) => up.plan(tmp.path()).unwrap(),
                Command::Service { service } => service.plan(tmp.path()).unwrap(),
                _ => panic!("not a service"),
            };
            plan.launchers.iter().map(|l| l.backend()).collect()
        };
        let bus = ["--bus", "memory://"];
        // Every backend built, before the platforms are asked whether they answer.
        let built: Vec<&str> = ["local", "docker", "kubernetes"]
            .into_iter()
            .filter(|b| ferry_cli::launchers::enabled(b))
            .collect();
        assert_eq!(backends(&[&["up"][..], &bus[..]].concat()), built);
        assert_eq!(
            backends(&[&["up", "--no-docker", "--no-kubernetes"][..], &bus[..]].concat()),
            ["local"]
        );
        assert_eq!(
            backends(&[&["service", "launcher"][..], &bus[..]].concat()),
            ["local"]
        );
        let docker = [&["service", "launcher", "--backend", "docker"][..], &bus[..]].concat();
        match parse(&docker).unwrap().command {
            Command::Service { service } => match service.plan(tmp.path()) {
                Ok(plan) => assert_eq!(plan.launchers[0].backend(), "docker"),
                Err(e) => assert!(
                    !cfg!(feature = "docker")
                        && e.to_string()
                            .contains("backend `docker` is not enabled in this build"),
                    "{e}"
                ),
            },
            _ => panic!("not a service"),
        }
        assert!(parse(&[&["service", "launcher", "--backend", "nomad"][..], &bus[..]].concat()).is_err());
        if cfg!(feature = "ray") {
            let ray = [&["service", "launcher", "--backend", "ray"][..], &bus[..]].concat();
            assert_eq!(backends(&ray), ["ray"]);
            // `ferry up` serves ray tasks only when told where the cluster is.
            let up = [
                &[
                    "up",
                    "--no-docker",
                    "--no-kubernetes",
                    "--ray-address",
                    "http://127.0.0.1:8265",
                ][..],
                &bus[..],
            ]
            .concat();
            assert_eq!(backends(&up), ["local", "ray"]);
        }
        if cfg!(feature = "aws-batch") {
            let batch = [&["service", "launcher", "--backend", "aws-batch"][..], &bus[..]].concat();
            assert_eq!(backends(&batch), ["aws-batch"]);
            // `ferry up` serves aws-batch tasks only when told where their jobs go.
            let up = [
                &[
                    "up",
                    "--no-docker",
                    "--no-kubernetes",
                    "--aws-batch-compute-environment",
                    "spot",
                ][..],
                &bus[..],
            ]
            .concat();
            assert_eq!(backends(&up), ["local", "aws-batch"]);
        }
        if cfg!(feature = "google-batch") {
            let batch = [
                &["service", "launcher", "--backend", "google-batch"][..],
                &bus[..],
            ]
            .concat();
            assert_eq!(backends(&batch), ["google-batch"]);
            // `ferry up` serves google-batch tasks only when told the project and region.
            let only_project = [
                &["up", "--no-docker", "--no-kubernetes", "--google-project", "p"][..],
                &bus[..],
            ]
            .concat();
            assert_eq!(backends(&only_project), ["local"]);
            let up = [
                &[
                    "up",
                    "--no-docker",
                    "--no-kubernetes",
                    "--google-project",
                    "p",
                    "--google-region",
                    "europe-west1",
                ][..],
                &bus[..],
            ]
            .concat();
            assert_eq!(backends(&up), ["local", "google-batch"]);
        }
    }

    #[test]
    fn a_flag_of_another_service_is_refused_not_ignored() {
        let err = parse(&["service", "api", "--bus", "memory://", "--db", "sqlite://x.db"])
            .err()
            .expect("--db is the scheduler's");
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let Command::Service { service } = parse(&[
            "service",
            "api",
            "--bus",
            "memory://",
            "--api-db",
            "sqlite://x.db",
        ])
        .unwrap()
        .command
        else {
            panic!("not service")
        };
        let tmp = tempfile::tempdir().unwrap();
        let plan = service.plan(tmp.path()).unwrap();
        assert_eq!(plan.api.unwrap().db_url, "sqlite://x.db");
        assert_eq!(
            plan.log_db,
            format!("sqlite://{}", tmp.path().join("logs.db").display())
        );
    }
}
