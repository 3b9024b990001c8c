//! `ferry-api`: the HTTP API alone, on the bus, read model database and log store given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferry_api::{Access, Config, DEFAULT_BODY_LIMIT, DEFAULT_GROUP, TlsFiles};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "ferry's HTTP API: CloudEvents intake and the read model of jobs, tasks and logs"
)]
struct Args {
    /// The message bus: amqp://HOST:PORT/VHOST or kafka://HOST:PORT (memory:// is in-process only).
    #[arg(long, env = "FERRY_BUS")]
    bus: String,
    /// The read model database: sqlite://PATH or postgres://….
    #[arg(long, env = "FERRY_API_DB", default_value = "sqlite://ferry-api.db")]
    db: String,
    /// The log collector's store, read only: sqlite:///path/to/logs.db.
    #[arg(long, env = "FERRY_LOG_DB", default_value = "sqlite://ferry-logs.db")]
    logs: String,
    /// The address to listen on.
    #[arg(long, env = "FERRY_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Consumer group of the read model; api instances sharing one database share it.
    #[arg(long, default_value = DEFAULT_GROUP)]
    group: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// How long a followed log stream waits for the lines of a finished job.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    log_grace: Duration,
    /// The bearer tokens that may use the api (YAML: name, sha256, scopes, namespaces); read
    /// again when it changes. `ferry token create` makes a token.
    #[arg(long, env = "FERRY_TOKENS_FILE", required_unless_present = "insecure_no_auth")]
    tokens_file: Option<PathBuf>,
    /// Ask for no credential at all: every request may do everything. Refused unless --listen
    /// is a loopback address.
    #[arg(long, conflicts_with = "tokens_file")]
    insecure_no_auth: bool,
    /// Serve HTTPS with this certificate chain (PEM); read again when it changes.
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A host name clients use to reach the api (checked against `Host`); repeat for more, `*`
    /// for any. The listening address (and localhost on loopback) is always allowed.
    #[arg(long = "allowed-host", env = "FERRY_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// How long a client may take to send a request's headers.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// How long a client may take to send a request's body (and the api to begin answering).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
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
        listen: args.listen,
        group: args.group,
        body_limit: args.body_limit,
        log_grace: args.log_grace,
        access: Some(match args.tokens_file {
            Some(path) => Access::TokensFile(path),
            None => Access::InsecureNoAuth,
        }),
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
        allowed_hosts: args.allowed_hosts,
        header_read_timeout: args.header_read_timeout,
        request_timeout: args.request_timeout,
        ..Config::new(args.db, args.logs)
    };
    ferry_api::run(config, bus, shutdown).await?;
    Ok(())
}
