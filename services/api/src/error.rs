//! The api service's errors.

use std::net::SocketAddr;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the api service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that can never work (a database URL of an unknown kind, …).
    #[error("api configuration: {0}")]
    Config(String),

    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP server failed while running.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),

    /// The read model's database failed; trying again later may succeed.
    #[error("read model database: {0}")]
    Db(#[from] sqlx::Error),

    /// Stored state that does not read back (a defect or a hand-edited database).
    #[error("corrupt read model row: {0}")]
    Corrupt(String),

    /// The log store could not be opened or read.
    #[error(transparent)]
    Logs(#[from] ferry_log_collector::Error),

    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] ferry_bus::Error),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(_) | Error::Serve(_) | Error::Listen { .. } => true,
            Error::Logs(e) => e.is_transient(),
            Error::Bus(e) => e.is_transient(),
            Error::Config(_) | Error::Corrupt(_) => false,
        }
    }
}
