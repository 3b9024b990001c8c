//! Reading and following a job's state changes and its logs, as NDJSON.
//!
//! A followed response is chunked NDJSON (`application/x-ndjson`): one JSON object per line,
//! sent as soon as it is known. A producer task writes lines into a bounded channel that the
//! response body drains, so a slow client slows the producer rather than growing a buffer. The
//! producer ends when the job is finished and everything has been sent, when the client goes
//! away, or when the service stops. If reading fails mid-stream the last line is
//! `{"error": "..."}` and the stream ends; a client resumes with `after`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_log_collector::{Cursor, LogQuery, LogRecord};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::auth::{Principal, Scope};
use crate::http::{ApiError, AppState, authorize_job, bad_query, field_problem, poll};

/// Lines buffered between a producer and its response body.
const CHANNEL: usize = 64;
/// Rows read per query.
const PAGE: u32 = 500;
/// Lines returned by a log query without `limit`, and the most one query returns.
const LOGS_DEFAULT: usize = 1000;
const LOGS_MAX: usize = 10_000;

const NDJSON: &str = "application/x-ndjson";

fn line(value: &impl serde::Serialize) -> Bytes {
    let mut v = serde_json::to_vec(value).unwrap_or_else(|e| {
        serde_json::to_vec(&json!({ "error": format!("cannot encode a line: {e}") })).unwrap_or_default()
    });
    v.push(b'\n');
    Bytes::from(v)
}

fn error_line(e: impl std::fmt::Display) -> Bytes {
    line(&json!({ "error": e.to_string() }))
}

fn ndjson(body: Body) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A streaming response fed by a bounded channel.
fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (tx, Body::from_stream(stream))
}

// ----------------------------------------------------------------------------------------------
// GET /jobs/{id}/events
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    /// Only changes after this `seq`.
    after: Option<u64>,
    #[serde(default)]
    follow: bool,
}

/// The job's state changes, oldest first; with `follow=true`, then each new one until the job
/// is finished.
pub(crate) async fn job_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    authorize_job(&state, &principal, &id, Scope::Read, "read jobs").await?;
    let (tx, body) = channel_body();
    tokio::spawn(produce_changes(state, id, q.after.unwrap_or(0), q.follow, tx));
    Ok(ndjson(body))
}

async fn produce_changes(
    state: AppState,
    job_id: String,
    mut after: u64,
    follow: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let mut changed = state.changed.clone();
    let poll = poll(&state.config);
    loop {
        changed.borrow_and_update();
        // Read the job's state before its changes: a job seen finished here has all of its
        // changes committed, so the read below gets every one.
        let finished = match state.model.job(&job_id).await {
            Ok(job) => job.is_none_or(|j| j.is_terminal()),
            Err(e) => {
                let _ = tx.send(error_line(e)).await;
                return;
            }
        };
        let rows = match state.model.changes(&job_id, after, PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(error_line(e)).await;
                return;
            }
        };
        let full = rows.len() == PAGE as usize;
        for c in rows {
            after = c.seq;
            if tx.send(line(&c)).await.is_err() {
                return; // the client went away
            }
        }
        if full {
            continue;
        }
        if !follow || finished {
            return;
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            r = changed.changed() => if r.is_err() { tokio::time::sleep(poll).await },
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

// ----------------------------------------------------------------------------------------------
// GET /jobs/{id}/logs
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    task: Option<String>,
    /// A `cursor` from an earlier line.
    after: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

fn log_line(r: &LogRecord) -> Bytes {
    line(&json!({
        "cursor": r.cursor.to_string(),
        "taskId": r.task_id,
        "attemptId": r.attempt_id,
        "seq": r.seq,
        "stream": r.stream,
        "timeMs": r.time_ms,
        "text": r.text,
    }))
}

/// A page of the job's log lines (of every task, or of `task`), in arrival order; with
/// `follow=true`, then each line as it is stored until the job is finished and every finished
/// attempt's lines have been sent.
pub(crate) async fn job_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let after = match q.after.as_deref() {
        Some(c) => Some(c.parse::<Cursor>()?),
        None => None,
    };
    if q.limit == Some(0) || (!q.follow && q.limit.is_some_and(|n| n > LOGS_MAX)) {
        return Err(ApiError::bad_request(
            "invalid limit",
            vec![field_problem("limit", format!("use 1 to {LOGS_MAX}"))],
        ));
    }
    authorize_job(&state, &principal, &id, Scope::Read, "read jobs").await?;
    let mut lq = LogQuery::job(id.clone());
    if let Some(t) = &q.task {
        lq = lq.task(t.clone());
    }
    if let Some(c) = after {
        lq = lq.after(c);
    }
    if !q.follow {
        let records = state
            .logs
            .query(&lq.limit(q.limit.unwrap_or(LOGS_DEFAULT)))
            .await?;
        if records.is_empty() && after.is_none() && state.logs.expired(&id).await? {
            return Err(ApiError::new(
                StatusCode::GONE,
                format!(
                    "the log lines of job {id:?} expired: the log collector deleted them after its \
                     --log-retention"
                ),
            ));
        }
        let mut body = Vec::new();
        for r in &records {
            body.extend_from_slice(&log_line(r));
        }
        return Ok(ndjson(Body::from(body)));
    }
    let (tx, body) = channel_body();
    let follower = LogFollower {
        state,
        job_id: id,
        task_id: q.task,
        last: after,
        remaining: q.limit,
        complete: HashSet::new(),
        terminal_since: None,
        tx,
    };
    tokio::spawn(follower.run(lq));
    Ok(ndjson(body))
}

struct LogFollower {
    state: AppState,
    job_id: String,
    task_id: Option<String>,
    /// The last line sent (or the request's `after`).
    last: Option<Cursor>,
    /// Lines still to send when the request set `limit`.
    remaining: Option<usize>,
    /// Attempts whose lines are all stored.
    complete: HashSet<String>,
    /// When the job was first seen finished.
    terminal_since: Option<tokio::time::Instant>,
    tx: mpsc::Sender<Bytes>,
}

/// Why a follower stopped sending.
enum Stop {
    /// The client went away or the limit was reached.
    Done,
    Failed(String),
}

impl LogFollower {
    async fn run(mut self, q: LogQuery) {
        let lines = self.state.logs.follow(q);
        tokio::pin!(lines);
        let mut changed = self.state.changed.clone();
        let poll = poll(&self.state.config);
        let outcome: Result<(), Stop> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = self.state.shutdown.cancelled() => return Err(Stop::Done),
                    _ = self.tx.closed() => return Err(Stop::Done),
                    next = lines.next() => match next {
                        Some(Ok(r)) => { self.send(&r).await?; continue; }
                        Some(Err(e)) => return Err(Stop::Failed(e.to_string())),
                        None => return Err(Stop::Done),
                    },
                    r = changed.changed() => if r.is_err() { tokio::time::sleep(poll).await },
                    _ = tokio::time::sleep(poll) => {}
                }
                if self.finished().await.map_err(|e| Stop::Failed(e.to_string()))? {
                    return Ok(());
                }
            }
        }
        .await;
        match outcome {
            // Everything is stored: send what the follower has not yet, then end.
            Ok(()) => {
                if let Err(Stop::Failed(e)) = self.drain().await {
                    let _ = self.tx.send(error_line(e)).await;
                }
            }
            Err(Stop::Done) => {}
            Err(Stop::Failed(e)) => {
                let _ = self.tx.send(error_line(e)).await;
            }
        }
    }

    async fn send(&mut self, r: &LogRecord) -> Result<(), Stop> {
        if self.remaining == Some(0) {
            return Err(Stop::Done);
        }
        self.tx.send(log_line(r)).await.map_err(|_| Stop::Done)?;
        self.last = Some(r.cursor);
        if let Some(n) = &mut self.remaining {
            *n -= 1;
            if *n == 0 {
                return Err(Stop::Done);
            }
        }
        Ok(())
    }

    /// Sends every stored line after the last one sent.
    async fn drain(&mut self) -> Result<(), Stop> {
        loop {
            let mut q = LogQuery::job(self.job_id.clone()).limit(PAGE as usize);
            if let Some(t) = &self.task_id {
                q = q.task(t.clone());
            }
            if let Some(c) = self.last {
                q = q.after(c);
            }
            let page = self
                .state
                .logs
                .query(&q)
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?;
            for r in &page {
                self.send(r).await?;
            }
            if page.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    /// Whether the job is finished and every finished attempt's lines are stored, or the job
    /// has been finished for longer than the configured grace (lines that never came are not
    /// waited for forever).
    async fn finished(&mut self) -> Result<bool, crate::Error> {
        let model = &self.state.model;
        let terminal = model.job(&self.job_id).await?.is_none_or(|j| j.is_terminal());
        if !terminal {
            self.terminal_since = None;
            return Ok(false);
        }
        let since = *self.terminal_since.get_or_insert_with(tokio::time::Instant::now);
        let grace = self.state.config.log_grace;
        let task = self.task_id.as_deref();
        if model.unreported_attempts(&self.job_id, task).await? == 0 {
            let mut all = true;
            for a in model.finished_attempts(&self.job_id, task).await? {
                if self.complete.contains(&a.attempt_id) {
                    continue;
                }
                if self.state.logs.lines_stored(&a.attempt_id).await? >= a.log_lines {
                    self.complete.insert(a.attempt_id);
                } else {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(true);
            }
        }
        if since.elapsed() >= grace {
            tracing::warn!(
                job_id = %self.job_id,
                grace = %humantime::format_duration(grace),
                "job finished but not every attempt's log lines arrived; ending the log stream"
            );
            return Ok(true);
        }
        Ok(false)
    }
}

/// How long a follower waits, at most, for the log lines of a finished job.
pub const DEFAULT_LOG_GRACE: Duration = Duration::from_secs(30);
