//! What can go wrong talking to a Docker engine, split by whose fault it is: the task's (an
//! image that is not there, a request the engine cannot honour, a hostile file) or the
//! platform's (no engine, an engine that stopped answering or refused for its own reasons).

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers at the engine's address.
    #[error("no Docker engine at {host}: is dockerd running? set DOCKER_HOST to its address ({source})")]
    NoEngine {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine answered before, and now a request failed on the way (broken connection,
    /// timeout): worth retrying.
    #[error("the Docker engine at {host} did not complete {op}: {source}")]
    Unreachable {
        host: String,
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// The image is not on the engine and the pull policy forbids pulling it.
    #[error(
        "image `{image}` is not on the Docker engine at {host} and the pull policy is `never`: \
         build or load it there first (docker build, docker load), or set the pull policy to `missing`"
    )]
    ImageMissing { image: String, host: String },
    /// Pulling the image failed.
    #[error("pulling image `{image}` failed: {message}")]
    ImagePull {
        image: String,
        message: String,
        /// The registry says the image does not exist (as opposed to being unreachable).
        not_found: bool,
    },
    /// No container of that name or id.
    #[error("no container `{name}` on the Docker engine")]
    NotFound { name: String },
    /// The deterministic name is held by a container of another attempt.
    #[error(
        "container `{name}` exists but belongs to attempt `{other}`, not `{attempt_id}`: \
         remove it (docker rm -f {name}) if it is left over from something else"
    )]
    NameTaken {
        name: String,
        attempt_id: String,
        other: String,
    },
    /// The task asked for something this engine cannot honour, or handed over (or left behind)
    /// a file that is refused. Nothing was created for a refused request.
    #[error("{0}")]
    Refused(String),
    /// The engine answered with an error status.
    #[error("the Docker engine refused {op}: {message} (HTTP {status})")]
    Engine {
        op: &'static str,
        status: u16,
        message: String,
    },
    /// Writing a collected file on the launcher's side failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the attempt itself is at fault (it would fail the same way again), false when
    /// the platform is (the attempt is lost and may be retried outside its budget).
    pub fn is_task_fault(&self) -> bool {
        match self {
            Error::ImageMissing { .. } | Error::Refused(_) => true,
            Error::ImagePull { not_found, .. } => *not_found,
            Error::NoEngine { .. }
            | Error::Unreachable { .. }
            | Error::NotFound { .. }
            | Error::NameTaken { .. }
            | Error::Engine { .. }
            | Error::Io { .. } => false,
        }
    }

    /// Maps an error of one engine call: a status from the engine stays a status, anything
    /// else means the engine could not be reached.
    pub(crate) fn api(host: &str, op: &'static str, e: bollard::errors::Error) -> Error {
        match e {
            bollard::errors::Error::DockerResponseServerError { status_code, message } => Error::Engine {
                op,
                status: status_code,
                message,
            },
            source => Error::Unreachable {
                host: host.to_string(),
                op,
                source,
            },
        }
    }
}

/// The HTTP status of an engine error, if the engine answered.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
