//! The REST routes: create, get, list, watch and delete of Jobs, pods and Secrets, pod logs and
//! exec ([`crate::exec`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::selector::Selector;
use crate::status::{ApiError, deleted};
use crate::store::{Kind, Object};
use crate::{Shared, kubelet};

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/apis/batch/v1/jobs", get(list_all::<Job>))
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs",
            get(list_ns::<Job>).post(create_job),
        )
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(get_one::<Job>).delete(delete_job),
        )
        .route("/api/v1/pods", get(list_all::<Pod>))
        .route("/api/v1/namespaces/{ns}/pods", get(list_ns::<Pod>))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(get_one::<Pod>).delete(delete_pod),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            get(crate::exec::pod_exec).post(crate::exec::pod_exec),
        )
        .route("/api/v1/secrets", get(list_all::<Secret>))
        .route(
            "/api/v1/namespaces/{ns}/secrets",
            get(list_ns::<Secret>).post(create_secret),
        )
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(get_one::<Secret>).delete(delete_secret),
        )
        .fallback(fallback)
        .with_state(shared)
}

async fn version() -> Response {
    axum::Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-ferry-test",
        "platform": "linux/amd64",
    }))
    .into_response()
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: format!("the server could not find the requested resource ({method} {uri})"),
        details: None,
    }
    .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    watch: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: Option<bool>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "True"))
}

async fn list_all<T: Object>(State(s): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Result<Response> {
    list::<T>(s, None, q).await
}

async fn list_ns<T: Object>(
    State(s): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    list::<T>(s, Some(ns), q).await
}

/// The selector of `q`: its labels, and a `metadata.name=` field selector as a name to match.
fn selectors(q: &ListQuery) -> Result<(Selector, Option<String>)> {
    let labels = Selector::parse(q.label_selector.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let mut name = None;
    for part in q.field_selector.as_deref().unwrap_or("").split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            Some(("metadata.name", v)) => name = Some(v.trim_start_matches('=').to_string()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "field label not supported by this test server: {part}"
                )));
            }
        }
    }
    Ok((labels, name))
}

async fn list<T: Object>(s: Arc<Shared>, ns: Option<String>, q: ListQuery) -> Result<Response> {
    let (selector, name) = selectors(&q)?;
    let resource = T::RESOURCE.plural();
    if truthy(&q.watch) {
        s.count("watch", resource);
        return watch::<T>(s, ns, selector, name, q).await;
    }
    s.count("list", resource);
    let (items, version) = s.read(|store| (store.list::<T>(ns.as_deref(), &selector), store.version()));
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| {
            name.as_deref()
                .is_none_or(|n| o.metadata().name.as_deref() == Some(n))
        })
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect();
    Ok(axum::Json(json!({
        "kind": T::LIST_KIND,
        "apiVersion": T::API_VERSION,
        "metadata": {"resourceVersion": version.to_string()},
        "items": items,
    }))
    .into_response())
}

/// A watch: the changes after the asked version (or the current objects as `ADDED`, when none
/// is asked), then each change as it happens, one JSON object a line.
async fn watch<T: Object>(
    s: Arc<Shared>,
    ns: Option<String>,
    selector: Selector,
    name: Option<String>,
    q: ListQuery,
) -> Result<Response> {
    let asked: Option<u64> = match q.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version `{v}`")))?,
        ),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let timeout = q.timeout_seconds.map(Duration::from_secs);
    let bookmarks = q.allow_watch_bookmarks.unwrap_or(false);
    let matches_name = move |v: &Value| {
        name.as_deref()
            .is_none_or(|n| v["metadata"]["name"].as_str() == Some(n))
    };
    let mut versions = s.changed.subscribe();
    // The starting point, read under the same lock as the objects sent for it.
    let (mut at, initial): (u64, Vec<Value>) = match asked {
        Some(v) => {
            let oldest = s.read(|store| store.oldest());
            if v < oldest {
                // As the API server does: a 200 with one ERROR event whose object is a 410.
                let line = json!({"type": "ERROR", "object": ApiError::expired(v, oldest).to_status()});
                let body = format!("{line}\n");
                return Ok((StatusCode::OK, body).into_response());
            }
            (v, Vec::new())
        }
        None => s.read(|store| {
            let objects = store
                .list::<T>(ns.as_deref(), &selector)
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter(|v| matches_name(v))
                .map(|o| json!({"type": "ADDED", "object": o}))
                .collect();
            (store.version(), objects)
        }),
    };
    let shutdown = s.shutdown.clone();
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        for event in initial {
            if tx.send(Ok(Bytes::from(format!("{event}\n")))).await.is_err() {
                return;
            }
        }
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            // The changes and the version they run to, read together: every change up to that
            // version has been looked at, sent or filtered out.
            let (changes, upto) = s.read(|store| {
                (
                    store.changes_after(at, T::RESOURCE, ns.as_deref(), &selector),
                    store.version(),
                )
            });
            let Some(changes) = changes else {
                let oldest = s.read(|store| store.oldest());
                let line = json!({"type": "ERROR", "object": ApiError::expired(at, oldest).to_status()});
                let _ = tx.send(Ok(Bytes::from(format!("{line}\n")))).await;
                return;
            };
            for c in changes {
                if !matches_name(&c.object) {
                    continue;
                }
                let line = json!({"type": c.event, "object": c.object});
                if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                    return;
                }
            }
            at = upto;
            if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
                let line = json!({"type": "BOOKMARK", "object": {
                    "kind": <T as k8s_openapi::Resource>::KIND,
                    "apiVersion": T::API_VERSION,
                    "metadata": {"resourceVersion": at.to_string()},
                }});
                if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                    return;
                }
                last_bookmark = tokio::time::Instant::now();
            }
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = versions.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)), if bookmarks => {}
                _ = until_deadline => return,
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        )))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

async fn get_one<T: Object>(
    State(s): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response> {
    s.count("get", T::RESOURCE.plural());
    match s.read(|store| store.get::<T>(&ns, &name).cloned()) {
        Some(o) => Ok(axum::Json(o).into_response()),
        None => Err(ApiError::not_found(T::RESOURCE, &name)),
    }
}

/// The object of a create request, with its name and namespace checked against the path.
fn parse_body<T: Object>(ns: &str, body: &Bytes) -> Result<T> {
    let mut object: T = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a {}: {e}", T::RESOURCE.plural())))?;
    let meta = object.metadata_mut();
    match meta.namespace.as_deref() {
        None | Some("") => meta.namespace = Some(ns.to_string()),
        Some(other) if other != ns => {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({other}) does not match the namespace sent on the request ({ns})"
            )));
        }
        Some(_) => {}
    }
    if meta.name.as_deref().is_none_or(str::is_empty) {
        if let Some(prefix) = &meta.generate_name {
            let suffix: String = (0..5).map(|_| kubelet::random_char()).collect();
            meta.name = Some(format!("{prefix}{suffix}"));
        } else {
            return Err(ApiError::invalid(
                T::RESOURCE,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
    }
    let name = meta.name.clone().unwrap_or_default();
    check_meta(T::RESOURCE, &name, meta)?;
    Ok(object)
}

/// The checks the API server makes of every object's metadata that a client most often gets
/// wrong: names, label keys and values, the size of annotations.
pub(crate) fn check_meta(kind: Kind, name: &str, meta: &ObjectMeta) -> Result<()> {
    let max = if kind == Kind::Job { 63 } else { 253 };
    if !is_dns_subdomain(name) || name.len() > max {
        return Err(ApiError::invalid(
            kind,
            name,
            "metadata.name",
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.', \
                 and must start and end with an alphanumeric character (at most {max} characters)"
            ),
        ));
    }
    for (k, v) in meta.labels.iter().flatten() {
        if !is_label_key(k) {
            return Err(ApiError::invalid(
                kind,
                name,
                "metadata.labels",
                format!("Invalid value: \"{k}\": not a valid label key"),
            ));
        }
        if !is_label_value(v) {
            return Err(ApiError::invalid(
                kind,
                name,
                "metadata.labels",
                format!(
                    "Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', \
                     and must start and end with an alphanumeric character (at most 63 characters)"
                ),
            ));
        }
    }
    let annotations: usize = meta
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotations > 256 * 1024 {
        return Err(ApiError::invalid(
            kind,
            name,
            "metadata.annotations",
            "Too long: must have at most 262144 bytes",
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

async fn create_job(State(s): State<Arc<Shared>>, Path(ns): Path<String>, body: Bytes) -> Result<Response> {
    s.count("create", "jobs");
    let job: Job = parse_body(&ns, &body)?;
    let job = kubelet::admit_job(&s, job)?;
    Ok((StatusCode::CREATED, axum::Json(job)).into_response())
}

async fn create_secret(
    State(s): State<Arc<Shared>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Response> {
    s.count("create", "secrets");
    let mut secret: Secret = parse_body(&ns, &body)?;
    let name = secret.metadata.name.clone().unwrap_or_default();
    // stringData is write-only: merged into data, as the API server does.
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in strings {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
    let size: usize = secret.data.iter().flatten().map(|(_, v)| v.0.len()).sum();
    if size > 1024 * 1024 {
        return Err(ApiError::invalid(
            Kind::Secret,
            &name,
            "data",
            "Too long: must have at most 1048576 bytes",
        ));
    }
    for key in secret.data.iter().flatten().map(|(k, _)| k) {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(ApiError::invalid(
                Kind::Secret,
                &name,
                &format!("data[{key}]"),
                "Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    secret.type_.get_or_insert_with(|| "Opaque".to_string());
    let created = s.change(|store| {
        if store.get::<Secret>(&ns, &name).is_some() {
            return Err(ApiError::already_exists(Kind::Secret, &name));
        }
        Ok(store.insert(secret))
    })?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteQuery {
    propagation_policy: Option<String>,
    grace_period_seconds: Option<i64>,
}

/// The delete options of a request: its body (`DeleteOptions`, as kube-rs sends them) or its
/// query.
fn delete_options(q: DeleteQuery, body: &Bytes) -> Result<(String, Option<i64>)> {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not DeleteOptions: {e}")))?
    };
    let policy = body["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or(q.propagation_policy);
    let grace = body["gracePeriodSeconds"].as_i64().or(q.grace_period_seconds);
    let policy = policy.unwrap_or_else(|| "Background".to_string());
    if !matches!(policy.as_str(), "Background" | "Foreground" | "Orphan") {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy `{policy}` is not supported: use Background, Foreground or Orphan"
        )));
    }
    Ok((policy, grace))
}

async fn delete_job(
    State(s): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
    body: Bytes,
) -> Result<Response> {
    s.count("delete", "jobs");
    let (policy, _) = delete_options(q, &body)?;
    let job = kubelet::delete_job(&s, &ns, &name, &policy).await?;
    Ok(axum::Json(deleted(Kind::Job, &name, job.metadata.uid.as_deref())).into_response())
}

async fn delete_pod(
    State(s): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
    body: Bytes,
) -> Result<Response> {
    s.count("delete", "pods");
    let (_, grace) = delete_options(q, &body)?;
    let pod = kubelet::delete_pod(&s, &ns, &name, grace)?;
    Ok(axum::Json(pod).into_response())
}

async fn delete_secret(
    State(s): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response> {
    s.count("delete", "secrets");
    match s.change(|store| store.remove::<Secret>(&ns, &name)) {
        Some(secret) => {
            Ok(axum::Json(deleted(Kind::Secret, &name, secret.metadata.uid.as_deref())).into_response())
        }
        None => Err(ApiError::not_found(Kind::Secret, &name)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    container: Option<String>,
    follow: Option<String>,
    since_time: Option<String>,
    since_seconds: Option<i64>,
    timestamps: Option<String>,
    tail_lines: Option<i64>,
}

async fn pod_log(
    State(s): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response> {
    s.count("get", "pods/log");
    let pod = s
        .read(|store| store.get::<Pod>(&ns, &name).cloned())
        .ok_or_else(|| ApiError::not_found(Kind::Pod, &name))?;
    let since = match (&q.since_time, q.since_seconds) {
        (Some(t), _) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| ApiError::bad_request(format!("sinceTime `{t}` is not an RFC 3339 time: {e}")))?
                .timestamp(),
        ),
        (None, Some(secs)) => Some(chrono::Utc::now().timestamp() - secs),
        (None, None) => None,
    };
    let stream = kubelet::logs(
        &s,
        &pod,
        q.container.as_deref(),
        kubelet::LogOptions {
            follow: truthy(&q.follow),
            timestamps: truthy(&q.timestamps),
            since,
            tail: q.tail_lines,
        },
    )
    .await?;
    let body = stream.map(Ok::<Bytes, Infallible>);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
