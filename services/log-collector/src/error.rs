//! The log collector's errors.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL names a database this build cannot open.
    #[error(
        "unsupported log store URL {url:?}: expected sqlite:///path/to/logs.db or sqlite::memory: \
         (postgres:// is not supported by the log store yet)"
    )]
    UnsupportedUrl { url: String },

    /// The database could not be opened or created.
    #[error("cannot open log store {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    /// A schema migration failed; the store is left at the previous version.
    #[error("log store schema migration {version} ({description}) failed: {source}")]
    Migrate {
        version: i64,
        description: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// The database was written by a newer ferry.
    #[error(
        "log store schema is at version {found}, newer than the {known} this build of ferry knows: \
         upgrade ferry or point it at another database"
    )]
    SchemaTooNew { found: i64, known: i64 },

    /// Reading or writing the database failed; trying again later may succeed.
    #[error("log store unavailable: {0}")]
    Database(#[from] sqlx::Error),

    /// A `task.log` payload that can never be stored.
    #[error("invalid task.log batch (job {job_id:?}, attempt {attempt_id:?}, seq {seq}): {reason}")]
    InvalidBatch {
        job_id: String,
        attempt_id: String,
        seq: u64,
        reason: String,
    },

    /// A cursor string that [`crate::Cursor`] did not produce.
    #[error("invalid log cursor {0:?}: expected the ID.SEQ form returned with each log record")]
    InvalidCursor(String),

    /// A stored row that does not read back as a log line.
    #[error("log store row {id} is corrupt: {reason}")]
    Corrupt { id: i64, reason: String },

    /// The bus failed in a way that retrying will not fix.
    #[error(transparent)]
    Bus(#[from] ferry_bus::Error),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(_) | Error::Open { .. } | Error::Migrate { .. } => true,
            Error::Bus(e) => e.is_transient(),
            Error::UnsupportedUrl { .. }
            | Error::SchemaTooNew { .. }
            | Error::InvalidBatch { .. }
            | Error::InvalidCursor(_)
            | Error::Corrupt { .. } => false,
        }
    }
}
