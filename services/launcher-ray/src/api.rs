//! A client of Ray's Jobs REST API, served by the dashboard of a cluster's head node: submit a
//! job under a submission id, read its details and its log, stop it, delete it, list them.
//!
//! Failures are typed for the runtime: a cluster that does not answer, or answers 5xx, is
//! [`AttemptError::Unavailable`] (tried again with a growing wait); an answer that says ferry
//! asked for something wrong is [`AttemptError::Platform`].

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_launcher::backend::AttemptError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What Ray's Jobs API says of one job (`GET /api/jobs/{id}`), the fields ferry reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct JobDetails {
    #[serde(default)]
    pub submission_id: Option<String>,
    /// `PENDING`, `RUNNING`, `STOPPED`, `SUCCEEDED` or `FAILED`.
    pub status: String,
    #[serde(default)]
    pub message: Option<String>,
    /// Why it failed, when it did: `JOB_ENTRYPOINT_COMMAND_ERROR`, `RUNTIME_ENV_SETUP_FAILURE`,
    /// `JOB_SUPERVISOR_ACTOR_DIED`, …
    #[serde(default)]
    pub error_type: Option<String>,
    /// The entrypoint's exit status once it ended; negative: killed by that signal.
    #[serde(default)]
    pub driver_exit_code: Option<i32>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// When it ended, in milliseconds since the epoch.
    #[serde(default)]
    pub end_time: Option<i64>,
}

impl JobDetails {
    /// Whether the job can change no more.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "STOPPED" | "SUCCEEDED" | "FAILED")
    }
}

/// A job submission (`POST /api/jobs/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Submission {
    pub submission_id: String,
    /// A shell command line, run with `/bin/sh -c` on the node the job lands on.
    pub entrypoint: String,
    pub runtime_env: Value,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint_num_cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint_num_gpus: Option<f64>,
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint_memory: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub entrypoint_resources: BTreeMap<String, f64>,
}

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new job was made.
    New,
    /// A job of that submission id exists already (Ray refuses a second one): adopt it.
    Exists,
}

/// A client of the Jobs APIs of any number of clusters, each named by its dashboard URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Client { http }
    }

    fn url(address: &str, path: &str) -> String {
        format!("{}/api/jobs/{path}", address.trim_end_matches('/'))
    }

    /// Sends a request, turning a cluster that cannot be reached into `Unavailable`.
    async fn send(
        &self,
        what: &str,
        address: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, String), AttemptError> {
        let resp = req.send().await.map_err(|e| {
            AttemptError::Unavailable(format!(
                "{what}: the Ray Jobs API at {address} does not answer: {e}"
            ))
        })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| {
            AttemptError::Unavailable(format!(
                "{what}: the answer of the Ray Jobs API at {address} broke off: {e}"
            ))
        })?;
        Ok((status, body))
    }

    /// `GET /api/jobs/{id}`; `None` when there is no such job.
    pub async fn job(&self, address: &str, id: &str) -> Result<Option<JobDetails>, AttemptError> {
        let what = format!("reading Ray job {id}");
        let (status, body) = self
            .send(&what, address, self.http.get(Client::url(address, id)))
            .await?;
        match status {
            200 => serde_json::from_str(&body).map(Some).map_err(|e| {
                AttemptError::Platform(format!(
                    "{what}: the Ray Jobs API at {address} answered what ferry cannot read ({e}): {}",
                    shorten(&body)
                ))
            }),
            404 => Ok(None),
            _ => Err(refused(&what, address, status, &body)),
        }
    }

    /// `POST /api/jobs/`: submits `job`, or says that a job of its submission id exists.
    pub async fn submit(&self, address: &str, job: &Submission) -> Result<Submitted, AttemptError> {
        let what = format!("submitting Ray job {}", job.submission_id);
        let (status, body) = self
            .send(&what, address, self.http.post(Client::url(address, "")).json(job))
            .await?;
        match status {
            200 => Ok(Submitted::New),
            // Ray refuses a second job of one submission id, with its ValueError's text (in a
            // 500, or a 400 from the job agent).
            _ if body.contains("already exists") => Ok(Submitted::Exists),
            _ => Err(refused(&what, address, status, &body)),
        }
    }

    /// `GET /api/jobs/{id}/logs`: the job's whole log as the head node keeps it (the
    /// entrypoint's standard output and error, merged, after Ray's own setup lines); `None`
    /// when there is no such job.
    pub async fn logs(&self, address: &str, id: &str) -> Result<Option<String>, AttemptError> {
        #[derive(Deserialize)]
        struct Logs {
            logs: String,
        }
        let what = format!("reading the log of Ray job {id}");
        let (status, body) = self
            .send(
                &what,
                address,
                self.http.get(Client::url(address, &format!("{id}/logs"))),
            )
            .await?;
        match status {
            200 => serde_json::from_str::<Logs>(&body)
                .map(|l| Some(l.logs))
                .map_err(|e| {
                    AttemptError::Platform(format!(
                        "{what}: the Ray Jobs API at {address} answered what ferry cannot read: {e}"
                    ))
                }),
            404 => Ok(None),
            _ => Err(refused(&what, address, status, &body)),
        }
    }

    /// `POST /api/jobs/{id}/stop`: asks the job's supervisor to stop it (SIGTERM, then SIGKILL
    /// after `RAY_JOB_STOP_WAIT_TIME_S`). Returns at once; a job that is gone is not an error.
    pub async fn stop(&self, address: &str, id: &str) -> Result<(), AttemptError> {
        let what = format!("stopping Ray job {id}");
        let (status, body) = self
            .send(
                &what,
                address,
                self.http.post(Client::url(address, &format!("{id}/stop"))),
            )
            .await?;
        match status {
            200 | 404 => Ok(()),
            _ => Err(refused(&what, address, status, &body)),
        }
    }

    /// `DELETE /api/jobs/{id}`: forgets a job that has ended (its details; Ray keeps the log
    /// file in the head's session directory). A job that is gone is not an error.
    pub async fn delete(&self, address: &str, id: &str) -> Result<(), AttemptError> {
        let what = format!("deleting Ray job {id}");
        let (status, body) = self
            .send(&what, address, self.http.delete(Client::url(address, id)))
            .await?;
        match status {
            200 | 404 => Ok(()),
            _ => Err(refused(&what, address, status, &body)),
        }
    }

    /// `GET /api/jobs/`: every job the cluster knows.
    pub async fn list(&self, address: &str) -> Result<Vec<JobDetails>, AttemptError> {
        let what = "listing Ray jobs";
        let (status, body) = self
            .send(what, address, self.http.get(Client::url(address, "")))
            .await?;
        match status {
            200 => serde_json::from_str(&body).map_err(|e| {
                AttemptError::Platform(format!(
                    "{what}: the Ray Jobs API at {address} answered what ferry cannot read ({e}): {}",
                    shorten(&body)
                ))
            }),
            _ => Err(refused(what, address, status, &body)),
        }
    }
}

/// An answer other than the ones expected: 5xx is the cluster's trouble, which may pass;
/// anything else will not.
fn refused(what: &str, address: &str, status: u16, body: &str) -> AttemptError {
    let message = format!(
        "{what}: the Ray Jobs API at {address} answered {status}: {}",
        shorten(body)
    );
    if status >= 500 || status == 429 {
        AttemptError::Unavailable(message)
    } else {
        AttemptError::Platform(message)
    }
}

/// The last line of a long answer (Ray answers errors with a Python traceback, whose last line
/// says what went wrong), at most 300 characters of it.
fn shorten(body: &str) -> String {
    let last = body
        .trim()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && l.trim() != ".")
        .unwrap_or("");
    let mut s: String = last.chars().take(300).collect();
    if last.chars().count() > 300 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceback_is_shortened_to_what_went_wrong() {
        let body = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: Job with submission_id ferry-a already exists. Please use a different submission_id.\n.";
        assert_eq!(
            shorten(body),
            "ValueError: Job with submission_id ferry-a already exists. Please use a different submission_id."
        );
        assert!(refused("x", "http://h", 503, "busy").is_transient());
        assert!(!refused("x", "http://h", 400, "bad").is_transient());
    }

    #[test]
    fn job_details_read_as_ray_writes_them() {
        let d: JobDetails = serde_json::from_str(
            r#"{"type":"SUBMISSION","job_id":null,"submission_id":"ferry-a","status":"FAILED",
                "error_type":"JOB_ENTRYPOINT_COMMAND_ERROR","driver_exit_code":3,
                "metadata":{"ferry.launcher":"l"},"runtime_env":{}}"#,
        )
        .unwrap();
        assert!(d.is_terminal());
        assert_eq!(d.driver_exit_code, Some(3));
        assert_eq!(d.metadata.unwrap()["ferry.launcher"], "l");
    }
}
