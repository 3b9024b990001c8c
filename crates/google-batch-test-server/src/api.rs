//! The REST routes: Batch v1 jobs (create, get, list, cancel, delete) and Cloud Logging v2
//! `entries:list`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Map, Value, json};

use crate::Shared;
use crate::error::ApiError;
use crate::filter;
use crate::jobs::{
    self, JobKey, JobRecord, JobStatus, Runner, State as JobState, Stop, check_list_filter, valid_job_id,
};
use crate::logs::{ListRequest, TaskLog};
use crate::runner;
use crate::time::rfc3339;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Jobs of a list page when the request does not say, and the most it may ask for.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/v1/projects/{project}/locations/{location}/jobs",
            get(list_jobs).post(create_job),
        )
        .route(
            "/v1/projects/{project}/locations/{location}/jobs/{job}",
            get(get_job).delete(delete_job).post(job_method),
        )
        .route("/v2/entries:list", post(list_entries))
        .fallback(fallback)
        .with_state(shared)
}

async fn fallback(method: Method, uri: Uri) -> Response {
    ApiError {
        code: axum::http::StatusCode::NOT_FOUND,
        status: "NOT_FOUND",
        message: format!("this test server serves no {method} {uri}"),
    }
    .into_response()
}

/// A query parameter by its JSON name or its proto name (`jobId`, `job_id`).
fn param<'a>(q: &'a HashMap<String, String>, camel: &str, snake: &str) -> Option<&'a str> {
    q.get(camel)
        .or_else(|| q.get(snake))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn parent(project: &str, location: &str) -> String {
    format!("projects/{project}/locations/{location}")
}

fn json_body(body: &Bytes) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_argument(format!("Invalid JSON payload received: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid_argument(
            "Invalid JSON payload received: the body must be a JSON object",
        ));
    }
    Ok(v)
}

async fn create_job(
    State(s): State<Arc<Shared>>,
    Path((project, location)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response> {
    s.count("jobs", "create");
    let id = match param(&q, "jobId", "job_id") {
        Some(id) => id.to_string(),
        None => format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
    };
    if !valid_job_id(&id) {
        return Err(ApiError::invalid_argument(format!(
            "jobId `{id}` is invalid: it must match ^[a-z]([a-z0-9-]{{0,61}}[a-z0-9])?$ (lowercase letters, digits and '-', starting with a letter, at most 63 characters)"
        )));
    }
    let request_id = param(&q, "requestId", "request_id").map(str::to_string);
    let body = json_body(&body)?;
    let plan = jobs::plan(&body, s.gcs.is_some())?;
    let topics = jobs::notification_topics(&body, s.pubsub.is_some())?;
    let key = JobKey {
        project,
        location,
        id: id.clone(),
        uid: uid_for(&id),
    };
    let mut store = s.store.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = store.get(&key.parent(), &id) {
        if request_id.is_some() && existing.request_id == request_id {
            return Ok(axum::Json(existing.to_json()).into_response());
        }
        return Err(ApiError::already_exists(&key.name()));
    }
    let mut fields: Map<String, Value> = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for output_only in ["name", "uid", "status", "createTime", "updateTime"] {
        fields.remove(output_only);
    }
    if let Some(group) = fields
        .get_mut("taskGroups")
        .and_then(|g| g.get_mut(0))
        .and_then(Value::as_object_mut)
        && group
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        group.insert("name".into(), Value::String(key.task_group()));
    }
    let now = Utc::now();
    let mut body = Map::new();
    body.insert("name".into(), Value::String(key.name()));
    body.insert("uid".into(), Value::String(key.uid.clone()));
    body.extend(fields);
    body.insert("createTime".into(), Value::String(rfc3339(now)));
    let record = JobRecord {
        body,
        status: JobStatus {
            state: JobState::Queued,
            status_events: Vec::new(),
            task_groups: Default::default(),
            run_duration: None,
        },
        update_time: now,
        request_id,
        seq: store.next_seq(),
        key: key.clone(),
        instance: rand::random::<u64>().to_string(),
        notify: s
            .pubsub
            .clone()
            .filter(|_| !topics.is_empty())
            .map(|o| (topics, o)),
    };
    let task_log = TaskLog {
        key: key.clone(),
        job_labels: record.labels(),
    };
    let job = record.to_json();
    store.insert(record);
    let handle = Runner::new(&s.shutdown);
    store.runners.insert(key.uid.clone(), handle.clone());
    drop(store);
    tracing::debug!(job = key.name(), uid = key.uid, "job created");
    runner::start(&s, key, plan, task_log, handle);
    Ok(axum::Json(job).into_response())
}

/// A job uid as Batch makes them: the id, then random hex, at most 63 characters.
fn uid_for(id: &str) -> String {
    let head = id[..id.len().min(40)].trim_end_matches('-');
    let mut uid = format!("{head}-{}", uuid::Uuid::new_v4().simple());
    uid.truncate(63);
    uid
}

async fn get_job(
    State(s): State<Arc<Shared>>,
    Path((project, location, id)): Path<(String, String, String)>,
) -> Result<Response> {
    s.count("jobs", "get");
    let parent = parent(&project, &location);
    let store = s.store.lock().unwrap_or_else(|e| e.into_inner());
    match store.get(&parent, &id) {
        Some(r) => Ok(axum::Json(r.to_json()).into_response()),
        None => Err(ApiError::not_found(&format!("{parent}/jobs/{id}"))),
    }
}

async fn list_jobs(
    State(s): State<Arc<Shared>>,
    Path((project, location)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    s.count("jobs", "list");
    let terms = filter::parse(param(&q, "filter", "filter").unwrap_or(""))
        .map_err(|e| ApiError::invalid_argument(format!("filter: {e}")))?;
    check_list_filter(&terms)?;
    let page_size = match param(&q, "pageSize", "page_size") {
        None => DEFAULT_PAGE,
        Some(n) => match n.parse::<i64>() {
            Ok(0) => DEFAULT_PAGE,
            Ok(n) if n > 0 => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
            _ => {
                return Err(ApiError::invalid_argument(format!(
                    "pageSize `{n}` must be a non-negative integer"
                )));
            }
        },
    };
    let after: u64 = match param(&q, "pageToken", "page_token") {
        None => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::invalid_argument(format!("pageToken `{t}` is not valid")))?,
    };
    let store = s.store.lock().unwrap_or_else(|e| e.into_inner());
    let mut found: Vec<&JobRecord> = store
        .list(&parent(&project, &location))
        .into_iter()
        .filter(|r| r.seq > after && r.matches(&terms))
        .collect();
    let more = found.len() > page_size;
    found.truncate(page_size);
    let mut out = Map::new();
    if !found.is_empty() {
        out.insert(
            "jobs".into(),
            Value::Array(found.iter().map(|r| r.to_json()).collect()),
        );
    }
    if more && let Some(last) = found.last() {
        out.insert("nextPageToken".into(), Value::String(last.seq.to_string()));
    }
    Ok(axum::Json(Value::Object(out)).into_response())
}

/// `POST …/jobs/{id}:cancel`, the one custom method on a job.
async fn job_method(
    State(s): State<Arc<Shared>>,
    Path((project, location, job)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Response> {
    let Some(id) = job.strip_suffix(":cancel") else {
        return Ok(fallback(method, uri).await);
    };
    s.count("jobs", "cancel");
    json_body(&body)?;
    let name = format!("{}/jobs/{id}", parent(&project, &location));
    let mut store = s.store.lock().unwrap_or_else(|e| e.into_inner());
    let record = store
        .get_mut(&parent(&project, &location), id)
        .ok_or_else(|| ApiError::not_found(&name))?;
    let state = record.status.state;
    if state.is_final() || state == JobState::DeletionInProgress {
        return Err(ApiError::failed_precondition(format!(
            "Job {name} is {state} and cannot be cancelled: only a job that has not ended can be"
        )));
    }
    if state != JobState::CancellationInProgress {
        record.set_state(JobState::CancellationInProgress, None);
        let uid = record.key.uid.clone();
        match store.runners.get(&uid) {
            Some(r) => r.request(Stop::Cancel),
            None => {
                if let Some(record) = store.get_mut(&parent(&project, &location), id) {
                    record.set_state(JobState::Cancelled, None);
                }
            }
        }
    }
    let op = operation(
        &project,
        &location,
        &name,
        "cancel",
        "type.googleapis.com/google.cloud.batch.v1.CancelJobResponse",
    );
    Ok(axum::Json(op).into_response())
}

async fn delete_job(
    State(s): State<Arc<Shared>>,
    Path((project, location, id)): Path<(String, String, String)>,
) -> Result<Response> {
    s.count("jobs", "delete");
    let parent = parent(&project, &location);
    let name = format!("{parent}/jobs/{id}");
    let mut store = s.store.lock().unwrap_or_else(|e| e.into_inner());
    let record = store
        .get_mut(&parent, &id)
        .ok_or_else(|| ApiError::not_found(&name))?;
    if record.status.state != JobState::DeletionInProgress {
        record.set_state(JobState::DeletionInProgress, None);
        let key = record.key.clone();
        match store.runners.get(&key.uid) {
            Some(r) => r.request(Stop::Delete),
            None => store.remove(&key),
        }
    }
    let op = operation(
        &project,
        &location,
        &name,
        "delete",
        "type.googleapis.com/google.protobuf.Empty",
    );
    Ok(axum::Json(op).into_response())
}

/// The long-running operation a cancel or delete answers with, already done: the job's own
/// state says how far the cancel or delete has got.
fn operation(project: &str, location: &str, target: &str, verb: &str, response: &str) -> Value {
    let now = rfc3339(Utc::now());
    json!({
        "name": format!(
            "{}/operations/op-{}",
            parent(project, location),
            uuid::Uuid::new_v4().simple()
        ),
        "metadata": {
            "@type": "type.googleapis.com/google.cloud.batch.v1.OperationMetadata",
            "createTime": now,
            "endTime": now,
            "target": target,
            "verb": verb,
            "requestedCancellation": false,
            "apiVersion": "v1",
        },
        "done": true,
        "response": {"@type": response},
    })
}

async fn list_entries(State(s): State<Arc<Shared>>, body: Bytes) -> Result<Response> {
    s.count("entries", "list");
    let request: ListRequest = serde_json::from_value(json_body(&body)?)
        .map_err(|e| ApiError::invalid_argument(format!("Invalid JSON payload received: {e}")))?;
    let logs = s.logs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(axum::Json(logs.list(&request)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_start_with_the_id_and_fit_63_characters() {
        let long = format!("a{}", "-b".repeat(31));
        for id in ["job", long.as_str()] {
            let uid = uid_for(id);
            assert!(uid.len() <= 63 && !uid.contains("--"), "{uid}");
            assert!(uid.starts_with(&id[..id.len().min(39)]), "{uid}");
        }
        assert_ne!(uid_for("job"), uid_for("job"));
    }
}
