//! Whose fault an API error is. The API server answers a request the task made impossible
//! (`422 Invalid`: an image name it refuses, a quota the task's resources exceed) as the task's
//! fault; one it refuses ferry (`401`, `403`: the launcher's RBAC) or cannot serve now (`429`,
//! `5xx`, a connection that failed) as the platform's, the latter worth retrying.

use ferry_launcher::backend::AttemptError;

/// The HTTP status of an API error, if the server answered.
pub fn status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// `op` failed with `e`: typed by whose fault it is, the message naming what was asked.
pub fn attempt_error(op: &str, e: kube::Error) -> AttemptError {
    let message = match &e {
        kube::Error::Api(s) => format!(
            "the Kubernetes API refused {op}: {} ({} {})",
            s.message, s.code, s.reason
        ),
        other => format!("the Kubernetes API did not answer {op}: {other}"),
    };
    match status(&e) {
        Some(400 | 422) => AttemptError::Task(message),
        Some(403) if message.contains("exceeded quota") => AttemptError::Task(message),
        Some(401 | 403 | 404 | 409) => AttemptError::Platform(message),
        Some(429) | Some(500..) | None => AttemptError::Unavailable(message),
        Some(_) => AttemptError::Platform(message),
    }
}
