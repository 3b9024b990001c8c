//! The Google Cloud calls the backend makes, over their REST APIs: Batch v1 (jobs create, get,
//! list, cancel, delete), Cloud Logging v2 (`entries.list`) and Pub/Sub v1 (subscriptions pull,
//! acknowledge). Staged files go through Cloud Storage as `ferry_artifacts` reaches it.
//!
//! There is no official Rust client for Batch; these few calls are plain HTTPS with a bearer
//! token from Google's standard credential chain (a service account key, the application
//! default credentials, the metadata server of the machine the launcher runs on), as
//! `object_store` reads it. Each endpoint can be pointed elsewhere (a test server, an
//! emulator), and [`Auth::Anonymous`] sends no token to those.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_launcher::backend::AttemptError;
use object_store::gcp::GcpCredentialProvider;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// Where each API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub batch: String,
    pub logging: String,
    pub storage: String,
    pub pubsub: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            batch: "https://batch.googleapis.com".into(),
            logging: "https://logging.googleapis.com".into(),
            storage: "https://storage.googleapis.com".into(),
            pubsub: "https://pubsub.googleapis.com".into(),
        }
    }
}

/// How calls authenticate.
#[derive(Clone)]
pub enum Auth {
    /// No token: for test servers and emulators, which take none.
    Anonymous,
    /// A bearer token from Google's credential chain, refreshed as it expires.
    Google(GcpCredentialProvider),
}

impl Auth {
    /// The standard chain: `GOOGLE_SERVICE_ACCOUNT` (or `GOOGLE_APPLICATION_CREDENTIALS`) naming a
    /// key file, else the application default credentials, else the metadata server.
    pub fn from_env() -> Result<Auth, String> {
        // The bucket name is never used: only the builder's credential chain is.
        let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name("ferry-credentials")
            .build()
            .map_err(|e| format!("cannot read Google credentials: {e}"))?;
        Ok(Auth::Google(store.credentials().clone()))
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Anonymous => "Anonymous",
            Auth::Google(_) => "Google",
        })
    }
}

/// An API's refusal, or why it could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error: its HTTP status, Google's status name
    /// (`NOT_FOUND`, `ALREADY_EXISTS`) and message.
    #[error("{code} {status}: {message}")]
    Refused {
        code: u16,
        status: String,
        message: String,
    },
    /// No answer: the connection failed or timed out, or the answer could not be read.
    #[error("{0}")]
    Transport(String),
    /// The credentials gave no token.
    #[error("no Google credentials: {0}")]
    Credentials(String),
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Refused { code: 404, .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Refused { code: 409, .. })
    }

    /// Typed by whose fault it is: `task_fault` when an `INVALID_ARGUMENT` can only come from
    /// what the task asked for.
    pub fn fault(self, what: &str, task_fault: bool) -> AttemptError {
        let message = format!("{what}: {self}");
        match &self {
            ApiError::Refused { code, .. } if *code == 429 || *code >= 500 => {
                AttemptError::Unavailable(message)
            }
            ApiError::Refused { code: 400, .. } if task_fault => AttemptError::Task(message),
            ApiError::Refused { .. } | ApiError::Credentials(_) => AttemptError::Platform(message),
            ApiError::Transport(_) => AttemptError::Unavailable(message),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A Batch job as the API returns it: what the backend reads of it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// `projects/P/locations/L/jobs/ID`.
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub status: JobStatus,
    #[serde(default)]
    pub create_time: Option<String>,
    #[serde(default)]
    pub task_groups: Vec<TaskGroup>,
}

/// What the backend reads of a job's task group: its volumes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskGroup {
    #[serde(default)]
    pub task_spec: TaskSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default)]
    pub gcs: Option<GcsVolume>,
    #[serde(default)]
    pub mount_path: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcsVolume {
    #[serde(default)]
    pub remote_path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub status_events: Vec<StatusEvent>,
    /// How long the job ran, as a google-duration (`12.5s`).
    #[serde(default)]
    pub run_duration: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    #[serde(default)]
    pub r#type: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub task_execution: Option<TaskExecution>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskExecution {
    #[serde(default)]
    pub exit_code: Option<i32>,
}

impl Job {
    /// The `BUCKET/PATH` of the Cloud Storage volume mounted at `mount`, if it has one.
    pub fn gcs_volume(&self, mount: &str) -> Option<&str> {
        self.task_groups
            .iter()
            .flat_map(|g| &g.task_spec.volumes)
            .find(|v| v.mount_path.as_deref() == Some(mount))
            .and_then(|v| Some(v.gcs.as_ref()?.remote_path.as_str()))
    }

    /// The job's id, the last part of its name.
    pub fn id(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    pub fn state(&self) -> &str {
        self.status.state.as_deref().unwrap_or("STATE_UNSPECIFIED")
    }

    /// The exit code of its task, from the last status event that has one.
    pub fn exit_code(&self) -> Option<i32> {
        self.status
            .status_events
            .iter()
            .rev()
            .find_map(|e| e.task_execution.as_ref().and_then(|t| t.exit_code))
    }

    /// The description of its last status event: Batch's word on why it waits or failed.
    pub fn last_event(&self) -> Option<&str> {
        self.status
            .status_events
            .iter()
            .rev()
            .find_map(|e| e.description.as_deref())
    }
}

/// One Cloud Logging entry, as the backend reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub insert_id: String,
    #[serde(default)]
    pub text_payload: Option<String>,
    #[serde(default)]
    pub json_payload: Option<Value>,
    /// Batch's labels: `job_uid`, `task_id`, the job's own.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Entry {
    /// The line it holds: its text, else its JSON payload's `message`.
    pub fn line(&self) -> Option<&str> {
        self.text_payload
            .as_deref()
            .or_else(|| self.json_payload.as_ref()?.get("message")?.as_str())
    }
}

/// The most a listing page of jobs holds.
const JOBS_PAGE: u32 = 1000;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a Pub/Sub pull may take: it waits for messages when there are none.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// A client of the three APIs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Google {
    http: reqwest::Client,
    endpoints: Endpoints,
    auth: Auth,
}

impl Google {
    pub fn new(endpoints: Endpoints, auth: Auth) -> Result<Google, String> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let trim = |s: &str| s.trim_end_matches('/').to_string();
        Ok(Google {
            http,
            endpoints: Endpoints {
                batch: trim(&endpoints.batch),
                logging: trim(&endpoints.logging),
                storage: trim(&endpoints.storage),
                pubsub: trim(&endpoints.pubsub),
            },
            auth,
        })
    }

    async fn request(&self, method: Method, url: &str) -> ApiResult<reqwest::RequestBuilder> {
        let req = self.http.request(method, url);
        Ok(match &self.auth {
            Auth::Anonymous => req,
            Auth::Google(provider) => {
                let token = provider
                    .get_credential()
                    .await
                    .map_err(|e| ApiError::Credentials(e.to_string()))?;
                req.bearer_auth(&token.bearer)
            }
        })
    }

    async fn send(req: reqwest::RequestBuilder) -> ApiResult<reqwest::Response> {
        let response = req.send().await.map_err(|e| ApiError::Transport(chain(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status();
        let body = response.text().await.unwrap_or_default();
        Err(refusal(code, &body))
    }

    async fn json(req: reqwest::RequestBuilder) -> ApiResult<Value> {
        let response = Self::send(req).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(chain(&e)))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Transport(format!("the answer is not JSON: {e}")))
    }

    fn parse<T: serde::de::DeserializeOwned>(v: Value) -> ApiResult<T> {
        serde_json::from_value(v).map_err(|e| ApiError::Transport(format!("the answer cannot be read: {e}")))
    }

    // Batch.

    /// Creates job `job_id` under `parent` (`projects/P/locations/L`); a retry with the same
    /// `request_id` returns the job the first call made.
    pub async fn create_job(
        &self,
        parent: &str,
        job_id: &str,
        request_id: &str,
        job: &Value,
    ) -> ApiResult<Job> {
        let url = format!("{}/v1/{parent}/jobs", self.endpoints.batch);
        let req = self
            .request(Method::POST, &url)
            .await?
            .query(&[("job_id", job_id), ("request_id", request_id)])
            .json(job);
        Self::parse(Self::json(req).await?)
    }

    /// The job `name`, `None` when there is none.
    pub async fn get_job(&self, name: &str) -> ApiResult<Option<Job>> {
        let url = format!("{}/v1/{name}", self.endpoints.batch);
        match Self::json(self.request(Method::GET, &url).await?).await {
            Ok(v) => Ok(Some(Self::parse(v)?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every job under `parent` matching `filter` (`labels.KEY="VALUE"`), all pages.
    pub async fn list_jobs(&self, parent: &str, filter: &str) -> ApiResult<Vec<Job>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            jobs: Vec<Job>,
            #[serde(default)]
            next_page_token: Option<String>,
        }
        let url = format!("{}/v1/{parent}/jobs", self.endpoints.batch);
        let mut jobs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("filter", filter.to_string()),
                ("pageSize", JOBS_PAGE.to_string()),
            ];
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let req = self.request(Method::GET, &url).await?.query(&query);
            let page: Page = Self::parse(Self::json(req).await?)?;
            jobs.extend(page.jobs);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(jobs),
            }
        }
    }

    /// Asks Batch to cancel the job: its task is stopped, the job ends CANCELLED.
    pub async fn cancel_job(&self, name: &str) -> ApiResult<()> {
        let url = format!("{}/v1/{name}:cancel", self.endpoints.batch);
        let req = self
            .request(Method::POST, &url)
            .await?
            .json(&serde_json::json!({}));
        Self::json(req).await.map(drop)
    }

    /// Deletes the job (stopping it if it runs); its logs stay in Cloud Logging.
    pub async fn delete_job(&self, name: &str) -> ApiResult<()> {
        let url = format!("{}/v1/{name}", self.endpoints.batch);
        let req = self
            .request(Method::DELETE, &url)
            .await?
            .query(&[("reason", "ferry: the attempt was released")]);
        match Self::json(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    // Cloud Logging.

    /// One page of the entries of `project` matching `filter`, oldest first, and the token of
    /// the next page.
    pub async fn list_entries(
        &self,
        project: &str,
        filter: &str,
        page_size: u32,
        page_token: Option<&str>,
    ) -> ApiResult<(Vec<Entry>, Option<String>)> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            entries: Vec<Entry>,
            #[serde(default)]
            next_page_token: Option<String>,
        }
        let url = format!("{}/v2/entries:list", self.endpoints.logging);
        let mut body = serde_json::json!({
            "resourceNames": [format!("projects/{project}")],
            "filter": filter,
            "orderBy": "timestamp asc",
            "pageSize": page_size,
        });
        if let Some(t) = page_token {
            body["pageToken"] = Value::from(t);
        }
        let req = self.request(Method::POST, &url).await?.json(&body);
        let page: Page = Self::parse(Self::json(req).await?)?;
        Ok((page.entries, page.next_page_token.filter(|t| !t.is_empty())))
    }
}

impl Google {
    // Pub/Sub.

    /// Up to `max` messages of `subscription` (`projects/P/subscriptions/S`), waiting a while
    /// for some when there are none: each its ack id and attributes.
    pub async fn pull(
        &self,
        subscription: &str,
        max: u32,
    ) -> ApiResult<Vec<(String, BTreeMap<String, String>)>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Pulled {
            #[serde(default)]
            received_messages: Vec<Received>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Received {
            ack_id: String,
            #[serde(default)]
            message: Message,
        }
        #[derive(Default, Deserialize)]
        struct Message {
            #[serde(default)]
            attributes: BTreeMap<String, String>,
        }
        let url = format!("{}/v1/{subscription}:pull", self.endpoints.pubsub);
        // A pull waits for messages up to about 90 s: longer than other calls may take.
        let req = self
            .request(Method::POST, &url)
            .await?
            .timeout(PULL_TIMEOUT)
            .json(&serde_json::json!({ "maxMessages": max }));
        let pulled: Pulled = Self::parse(Self::json(req).await?)?;
        Ok(pulled
            .received_messages
            .into_iter()
            .map(|r| (r.ack_id, r.message.attributes))
            .collect())
    }

    /// Acknowledges messages of `subscription`, so that they are not delivered again.
    pub async fn acknowledge(&self, subscription: &str, ack_ids: &[String]) -> ApiResult<()> {
        let url = format!("{}/v1/{subscription}:acknowledge", self.endpoints.pubsub);
        let req = self
            .request(Method::POST, &url)
            .await?
            .json(&serde_json::json!({ "ackIds": ack_ids }));
        Self::json(req).await.map(drop)
    }
}

/// Google's error body (`{"error": {"code", "message", "status"}}`) as an [`ApiError`].
fn refusal(code: StatusCode, body: &str) -> ApiError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(default)]
        message: String,
        #[serde(default)]
        status: String,
    }
    match serde_json::from_str::<Body>(body) {
        Ok(Body { error }) => ApiError::Refused {
            code: code.as_u16(),
            status: error.status,
            message: error.message,
        },
        Err(_) => ApiError::Refused {
            code: code.as_u16(),
            status: code
                .canonical_reason()
                .unwrap_or("")
                .to_uppercase()
                .replace(' ', "_"),
            message: body.chars().take(500).collect(),
        },
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn googles_errors_are_read_and_typed() {
        let e = refusal(
            StatusCode::CONFLICT,
            r#"{"error": {"code": 409, "message": "job x already exists", "status": "ALREADY_EXISTS"}}"#,
        );
        assert!(e.is_conflict());
        assert_eq!(e.to_string(), "409 ALREADY_EXISTS: job x already exists");
        let e = refusal(StatusCode::SERVICE_UNAVAILABLE, "<html>down</html>");
        assert!(
            matches!(e.clone().fault("x", true), AttemptError::Unavailable(_)),
            "{e}"
        );
        let bad = refusal(
            StatusCode::BAD_REQUEST,
            r#"{"error": {"message": "bad", "status": "INVALID_ARGUMENT"}}"#,
        );
        assert!(matches!(bad.clone().fault("x", true), AttemptError::Task(_)));
        assert!(matches!(bad.fault("x", false), AttemptError::Platform(_)));
        assert!(matches!(
            ApiError::Transport("reset".into()).fault("x", true),
            AttemptError::Unavailable(_)
        ));
    }

    #[test]
    fn a_jobs_exit_code_and_reason_come_from_its_last_events() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "name": "projects/p/locations/l/jobs/ferry-a",
            "status": {"state": "FAILED", "statusEvents": [
                {"description": "Job state is set from QUEUED to SCHEDULED"},
                {"description": "Task failed with exit code 3", "taskExecution": {"exitCode": 3}},
                {"description": "Job state is set from RUNNING to FAILED"}
            ]}
        }))
        .unwrap();
        assert_eq!(job.id(), "ferry-a");
        assert_eq!(job.state(), "FAILED");
        assert_eq!(job.exit_code(), Some(3));
        assert_eq!(job.last_event(), Some("Job state is set from RUNNING to FAILED"));
    }
}
