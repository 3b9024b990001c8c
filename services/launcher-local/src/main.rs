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
    /// A secrets file, readable by its owner only (NAME=value lines, or a YAML or JSON map
    /// whose values may be {value, namespaces, flows}); FERRY_SECRET_<NAME> variables are read
    /// as well, the file wins on a name in both.
    #[arg(long, env = "FERRY_SECRETS_FILE")]
    secrets_file: Option<PathBuf>,
    /// Also pass this variable of the launcher's environment to tasks (repeatable; NAME or
    /// PREFIX*). By default tasks get only PATH, HOME, USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ
    /// and TMPDIR.
    #[arg(long = "pass-env", env = "FERRY_LAUNCHER_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
    /// Run tasks as this user (name, uid or uid:gid); needs a launcher running as root.
    #[arg(long, env = "FERRY_LAUNCHER_RUN_AS")]
    run_as: Option<String>,
    /// Do not put each slot's processes in a cgroup; find leftover processes by their
    /// FERRY_ATTEMPT_ID instead.
    #[arg(long)]
    no_cgroups: bool,
    /// Consumer group; every local launcher of one deployment shares it.
    #[arg(long, default_value = "launcher-local")]
    group: String,
}

#[global_allocator]
static ALLOCATOR: ferry_runtime::memory::Allocator = ferry_runtime::memory::ALLOCATOR;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_runtime::memory::set_up();
    hide_bus_password();
    let args = Args::parse();
    ferry_runtime::telemetry::init("info");
    let shutdown = ferry_runtime::shutdown::on_signals();
    let mut config = Config::new(args.data_dir);
    config.secrets = Secrets::from_env();
    config.secrets_file = args.secrets_file;
    config.pass_env = args.pass_env;
    config.run_as = args.run_as;
    config.cgroups = !args.no_cgroups;
    config.artifact_dir = args.artifact_dir;
    config.max_parallel = args.max_parallel;
    config.kill_grace = args.kill_grace;
    config.group = args.group;
    let bus = ferry_connect::bus(&args.bus).await?;
    ferry_launcher_local::run(config, bus, shutdown).await?;
    Ok(())
}

/// A process's command line can be read by every user of the machine (`/proc/PID/cmdline`),
/// unlike its environment. When `--bus` on the command line holds a password, the launcher
/// starts itself again with the URL in `FERRY_BUS` instead, before anything else happens.
fn hide_bus_password() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut url = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let text = a.to_string_lossy();
        if let Some(v) = text.strip_prefix("--bus=") {
            url = Some(v.to_string());
        } else if text == "--bus" {
            url = it.next().map(|v| v.to_string_lossy().into_owned());
        } else {
            rest.push(a.clone());
        }
    }
    let Some(url) = url.filter(|u| url::Url::parse(u).is_ok_and(|u| u.password().is_some())) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .arg0(&args[0])
        .args(rest)
        .env("FERRY_BUS", url)
        .exec();
    eprintln!("warning: cannot start again without the bus password on the command line: {error}");
}
