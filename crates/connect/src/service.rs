//! Starting one of ferry's services as a process of its own (`ferry-planner`, `ferry-scheduler`,
//! …): the allocator's set-up, the command line, telemetry, signals and the bus, in one place.
//!
//! The flags of a service are a `clap::Args` struct in its crate, flattened beside [`Common`]
//! into its binary, into `ferry service NAME` and into `ferry up`: each flag is defined once and
//! means the same on every path. Each flag can be given by an environment variable named
//! `FERRY_` and the flag in capitals (`--data-dir` by `FERRY_DATA_DIR`); `--help` lists them.

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use ferry_bus::Bus;
use ferry_runtime::CancellationToken;

#[doc(hidden)]
pub use ferry_runtime as __runtime;

/// The whole `main.rs` of a service binary: ferry's allocator and a `main` calling [`main`]
/// with the binary's name, its `--help` line, how its flags make its configuration and its
/// `run(config, bus, stop)`.
///
/// ```ignore
/// ferry_connect::service_main!(
///     "ferry-planner",
///     "ferry's planner: …",
///     async |flags: ferry_planner::Flags, common| Ok(flags.config(&common.data_dir)),
///     ferry_planner::run
/// );
/// ```
#[macro_export]
macro_rules! service_main {
    ($name:literal, $about:literal, $config:expr, $run:path) => {
        $crate::service::__runtime::global_allocator!();

        fn main() -> ::std::process::ExitCode {
            $crate::service::main($name, $about, $config, $run)
        }
    };
}

/// Whatever a service's start-up can fail with.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The flags every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The message bus: amqp://USER:PASS@HOST:PORT/VHOST or kafka://HOST:PORT[,…], each with an
    /// optional ?namespace=NAME (memory:// reaches only services in the same process).
    #[arg(long, env = "FERRY_BUS", value_name = "URL")]
    pub bus: String,
    /// Holds the SQLite databases unless their flags name others, and the launcher's journal,
    /// working directories and output files.
    #[arg(long, env = "FERRY_DATA_DIR", value_name = "DIR", default_value = ".ferry")]
    pub data_dir: PathBuf,
    /// The bus key file shared by every service of the deployment (`ferry key create`): each
    /// signs what it publishes with its first key and accepts events signed with any of them.
    /// `ferry up` on a broker uses DATA_DIR/bus.keys, created on the first start, when not given.
    #[arg(long, env = crate::KEYS_ENV, value_name = "FILE")]
    pub bus_key_file: Option<PathBuf>,
    /// Neither sign nor check events on a broker: anyone who can publish there can then make
    /// ferry run any command.
    #[arg(long, env = crate::INSECURE_ENV)]
    pub insecure_unsigned_bus: bool,
    /// Serve `GET /metrics` (Prometheus), `/healthz` and `/readyz` on this address, e.g.
    /// 0.0.0.0:9464. Unauthenticated and free of secrets: keep it on an internal network.
    #[arg(long, env = "FERRY_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl Common {
    /// Creates the data directory and makes its path absolute, so that what is kept in it is
    /// found whatever the working directory of a task or a later command.
    pub fn prepare(&mut self) -> std::io::Result<()> {
        let dir = &self.data_dir;
        let context = |e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("cannot use the data directory {}: {e}", dir.display()),
            )
        };
        // Private to this user (0700) when it is made here, whatever the umask: it holds the
        // databases, the journal and the keys. An operator's existing directory keeps its mode,
        // and directories made above it are as before (`--run-as` tasks must pass them).
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(context)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(context(e)),
                _ => {}
            }
        }
        self.data_dir = dir.canonicalize().map_err(context)?;
        Ok(())
    }

    /// How events on `--bus` are signed and checked: with `--bus-key-file`; unsigned on the
    /// in-memory bus or with `--insecure-unsigned-bus`; otherwise refused, saying how to make a
    /// key file.
    pub fn auth(&self) -> ferry_bus::Result<crate::Auth> {
        crate::Auth::resolve(
            &self.bus,
            self.bus_key_file.as_deref(),
            self.insecure_unsigned_bus,
        )
    }

    /// Whether `--bus` names a broker and no key setting was given: where `ferry up`, which
    /// runs every service of the deployment, keeps a key file of its own.
    pub fn keys_unset(&self) -> bool {
        self.bus_key_file.is_none() && !self.insecure_unsigned_bus && !self.bus.starts_with("memory://")
    }

    /// Uses `path` as the key file.
    pub fn use_key_file(&mut self, path: &Path) {
        self.bus_key_file = Some(path.to_path_buf());
    }

    /// Binds `--metrics`, if given, and serves the endpoint ([`crate::endpoint`]) on it until
    /// `stop` is cancelled, readiness checking `bus` and refused once `draining` is cancelled.
    /// The address is bound before this returns: a taken port fails the start.
    pub async fn serve_metrics(
        &self,
        bus: &Arc<dyn Bus>,
        draining: &CancellationToken,
        stop: &CancellationToken,
    ) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(addr) = self.metrics else {
            return Ok(None);
        };
        let listener = crate::endpoint::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
        let (bus, draining, stop) = (bus.clone(), draining.clone(), stop.clone());
        Ok(Some(tokio::spawn(async move {
            if let Err(e) = crate::endpoint::serve(listener, bus, draining, stop).await {
                tracing::error!(error = %e, "the metrics endpoint failed");
            }
        })))
    }

    /// Opens the bus `--bus` names, signed as [`Common::auth`] says; the error names the URL,
    /// without its password.
    pub async fn open_bus(&self) -> Result<Arc<dyn Bus>, BoxError> {
        let cannot = |e: ferry_bus::Error| -> BoxError {
            format!("cannot open the bus {}: {e}", crate::redact(&self.bus)).into()
        };
        crate::open(&self.bus, self.auth().map_err(cannot)?)
            .await
            .map_err(cannot)
    }
}

/// Parses a duration flag: `500ms`, `5s`, `1m`, `1h 30m`.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: expected e.g. 500ms, 5s, 1m"))
}

/// A service binary's command line: the common flags, then the service's own.
#[derive(Debug, clap::Parser)]
struct Binary<S: clap::Args> {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    flags: S,
}

/// The `main` of a service binary: sets up the allocator, parses [`Common`] and the service's
/// flags `S`, starts telemetry, makes the data directory, turns the flags into the service's
/// configuration (before anything connects: a bad setting fails at once), opens the bus and
/// serves `--metrics` ([`crate::endpoint`]) and runs the service with a shutdown token
/// cancelled by SIGINT or SIGTERM (a second signal exits at once). Errors are printed with their causes and end the process with status 1.
pub fn main<S, C, E>(
    name: &'static str,
    about: &'static str,
    config: impl AsyncFnOnce(S, &Common) -> Result<C, BoxError>,
    run: impl AsyncFnOnce(C, Arc<dyn Bus>, CancellationToken) -> Result<(), E>,
) -> ExitCode
where
    S: clap::Args,
    E: Into<BoxError>,
{
    ferry_runtime::memory::set_up();
    hide_bus_password();
    let command = Binary::<S>::command()
        .name(name)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"));
    let Binary { mut common, flags } =
        Binary::<S>::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let mut telemetry = ferry_runtime::telemetry::init("info", name);
    telemetry.export_metrics(name);
    let started = tokio::runtime::Runtime::new()
        .map_err(BoxError::from)
        .and_then(|rt| {
            rt.block_on(async move {
                common.prepare()?;
                let config = config(flags, &common).await?;
                let shutdown = ferry_runtime::shutdown::on_signals();
                let bus = common.open_bus().await?;
                // The endpoint serves until the service has stopped, so that a probe sees
                // the drain; it stops with it, even when it stopped on its own.
                let stopped = CancellationToken::new();
                let endpoint = common.serve_metrics(&bus, &shutdown, &stopped).await?;
                let ran = run(config, bus, shutdown).await.map_err(Into::into);
                stopped.cancel();
                if let Some(endpoint) = endpoint {
                    let _ = endpoint.await;
                }
                ran
            })
        });
    // The service has stopped: the spans of the last events it handled are sent now.
    telemetry.shutdown();
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A process's command line can be read by every user of the machine (`/proc/PID/cmdline`),
/// unlike its environment. When `--bus` on the command line holds a password, the process
/// starts itself again with the URL in `FERRY_BUS` instead, before anything else happens.
pub fn hide_bus_password() {
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
    let _ = writeln!(
        std::io::stderr(),
        "warning: cannot start again without the bus password on the command line: {error}"
    );
}

/// An error and its causes, `: `-separated.
fn chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        // Many errors repeat their cause in their own message.
        if !text.ends_with(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args)]
    struct Flags {
        /// A flag of the service's own.
        #[arg(long, env = "FERRY_LEASE", default_value = "30s")]
        lease: String,
    }

    #[test]
    fn a_binary_takes_the_common_flags_and_its_own() {
        let command = Binary::<Flags>::command().name("ferry-test");
        command.clone().debug_assert();
        let matches = command
            .try_get_matches_from(["ferry-test", "--bus", "memory://", "--lease", "5s"])
            .unwrap();
        let Binary { common, flags } = Binary::<Flags>::from_arg_matches(&matches).unwrap();
        assert_eq!(common.bus, "memory://");
        assert_eq!(flags.lease, "5s");
    }

    #[test]
    fn errors_are_shown_with_their_causes_once() {
        let io = std::io::Error::other("connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the store: {0}")]
        struct Repeats(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("the store failed")]
        struct Wraps(#[source] std::io::Error);
        assert_eq!(
            chain(&Repeats(std::io::Error::other("connection refused"))),
            "cannot open the store: connection refused"
        );
        assert_eq!(chain(&Wraps(io)), "the store failed: connection refused");
    }
}
