//! Cloud Logging as Batch fills it: each line a task's container writes, stdout (`INFO`) or
//! stderr (`ERROR`), becomes an entry of `projects/P/logs/batch_task_logs`, read live from the
//! engine while the task runs, and kept after the job ends or is deleted, as Cloud Logging
//! keeps it. [`LogStore::list`] answers `entries.list`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Shared;
use crate::error::ApiError;
use crate::filter::{self, Op, Term};
use crate::jobs::JobKey;
use crate::time::{parse_rfc3339, rfc3339};

/// The log Batch writes a task's output to.
pub const TASK_LOG: &str = "batch_task_logs";

/// Entries of a page when the request does not say, and the most it may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

#[derive(Debug)]
struct Entry {
    project: String,
    log_name: String,
    timestamp: DateTime<Utc>,
    /// A zero-padded counter: unique, and increasing as strings compare.
    insert_id: String,
    labels: BTreeMap<String, String>,
    resource_labels: BTreeMap<String, String>,
    json: Value,
}

impl Entry {
    fn order(&self, other: &Entry) -> Ordering {
        (self.timestamp, &self.insert_id).cmp(&(other.timestamp, &other.insert_id))
    }
}

/// Every entry written, across projects.
#[derive(Debug, Default)]
pub struct LogStore {
    entries: Vec<Entry>,
    next_id: u64,
}

/// Who a task's entries belong to.
#[derive(Debug, Clone)]
pub struct TaskLog {
    pub key: JobKey,
    /// The job's labels, which Batch copies to its log entries.
    pub job_labels: BTreeMap<String, String>,
}

impl LogStore {
    /// Stores one line a task wrote at `timestamp`.
    fn push(&mut self, task: &TaskLog, timestamp: DateTime<Utc>, stderr: bool, text: &str) {
        self.next_id += 1;
        let insert_id = format!("{:020}", self.next_id);
        let key = &task.key;
        let log_name = format!("projects/{}/logs/{TASK_LOG}", key.project);
        let mut labels = task.job_labels.clone();
        labels.insert("job_uid".into(), key.uid.clone());
        labels.insert("task_group_name".into(), key.task_group());
        labels.insert("task_id".into(), key.task_id());
        let resource_labels = BTreeMap::from([
            ("project_id".to_string(), key.project.clone()),
            ("location".to_string(), key.location.clone()),
            ("job".to_string(), key.uid.clone()),
            ("task_id".to_string(), key.task_id()),
        ]);
        let json = json!({
            "logName": log_name,
            "resource": {"type": "generic_task", "labels": resource_labels},
            "labels": labels,
            "timestamp": rfc3339(timestamp),
            "receiveTimestamp": rfc3339(Utc::now()),
            "insertId": insert_id,
            "severity": if stderr { "ERROR" } else { "INFO" },
            "textPayload": text,
        });
        let entry = Entry {
            project: key.project.clone(),
            log_name,
            timestamp,
            insert_id,
            labels,
            resource_labels,
            json,
        };
        // Kept in the list's order, so that a page starts where it should without a scan of
        // everything before it (a line of one stream may be stamped before the last of the
        // other's).
        let at = self
            .entries
            .partition_point(|e| e.order(&entry) == Ordering::Less);
        self.entries.insert(at, entry);
    }

    /// Answers `entries.list`.
    pub fn list(&self, request: &ListRequest) -> Result<Value, ApiError> {
        let mut projects = Vec::new();
        for r in &request.resource_names {
            match r
                .strip_prefix("projects/")
                .filter(|p| !p.is_empty() && !p.contains('/'))
            {
                Some(p) => projects.push(p),
                None => {
                    return Err(ApiError::invalid_argument(format!(
                        "resourceNames: `{r}` is not supported by this test server, which accepts projects/PROJECT"
                    )));
                }
            }
        }
        if projects.is_empty() {
            return Err(ApiError::invalid_argument(
                "resourceNames: at least one projects/PROJECT is required",
            ));
        }
        let checked = filter::parse_expr(&request.filter)
            .map_err(|e| ApiError::invalid_argument(format!("filter: {e}")))?
            .try_map(&|t: Term| Check::new(&t))?;
        let descending = match request.order_by.trim() {
            "" | "timestamp" | "timestamp asc" => false,
            "timestamp desc" => true,
            other => {
                return Err(ApiError::invalid_argument(format!(
                    "orderBy: `{other}` is not supported: use \"timestamp asc\" or \"timestamp desc\""
                )));
            }
        };
        let page_size = match request.page_size {
            None | Some(0) => DEFAULT_PAGE,
            Some(n) if n < 0 => return Err(ApiError::invalid_argument("pageSize must not be negative")),
            Some(n) => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        };
        let after = match request.page_token.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                Cursor::parse(t)
                    .ok_or_else(|| ApiError::invalid_argument(format!("pageToken `{t}` is not valid")))?,
            ),
        };
        let matches = |e: &&Entry| {
            projects.contains(&e.project.as_str())
                && checked.eval(&|c: &Check| c.holds(e))
                && after.as_ref().is_none_or(|c| c.before(e, descending))
        };
        let mut found: Vec<&Entry> = if descending {
            self.entries
                .iter()
                .rev()
                .filter(matches)
                .take(page_size + 1)
                .collect()
        } else {
            // The first entry that may match: after the page token, and at or after the
            // filter's earliest time.
            let from = checked
                .lower_bound(&|c: &Check| match c {
                    Check::Timestamp(Op::Ge | Op::Gt | Op::Eq, t) => Some(*t),
                    _ => None,
                })
                .into_iter()
                .chain(after.as_ref().map(|c| c.timestamp))
                .max();
            let start = from.map_or(0, |t| self.entries.partition_point(|e| e.timestamp < t));
            self.entries[start..]
                .iter()
                .filter(matches)
                .take(page_size + 1)
                .collect()
        };
        let more = found.len() > page_size;
        found.truncate(page_size);
        let mut out = json!({"entries": found.iter().map(|e| e.json.clone()).collect::<Vec<_>>()});
        if more && let Some(last) = found.last() {
            out["nextPageToken"] = Value::String(Cursor::of(last).token());
        }
        if found.is_empty() {
            out = json!({});
        }
        Ok(out)
    }
}

/// Where a page ended: the next starts after this entry in the list's order.
struct Cursor {
    timestamp: DateTime<Utc>,
    insert_id: String,
}

impl Cursor {
    fn of(e: &Entry) -> Cursor {
        Cursor {
            timestamp: e.timestamp,
            insert_id: e.insert_id.clone(),
        }
    }

    fn token(&self) -> String {
        format!("{}/{}", rfc3339(self.timestamp), self.insert_id)
    }

    fn parse(token: &str) -> Option<Cursor> {
        let (t, id) = token.split_once('/')?;
        Some(Cursor {
            timestamp: parse_rfc3339(t)?,
            insert_id: id.to_string(),
        })
    }

    /// Whether `e` comes after the cursor in the list's order.
    fn before(&self, e: &Entry, descending: bool) -> bool {
        let ord = (e.timestamp, e.insert_id.as_str()).cmp(&(self.timestamp, self.insert_id.as_str()));
        if descending {
            ord == Ordering::Less
        } else {
            ord == Ordering::Greater
        }
    }
}

/// A filter term checked against the fields served.
enum Check {
    LogName(Op, String),
    Label(String, Op, String),
    ResourceLabel(String, Op, String),
    ResourceType(Op, String),
    Timestamp(Op, DateTime<Utc>),
    InsertId(Op, String),
    Severity(Op, String),
}

impl Check {
    fn new(t: &Term) -> Result<Check, ApiError> {
        let unsupported = || {
            ApiError::invalid_argument(format!(
                "filter: `{t}` is not supported by this test server, which accepts logName=, labels.KEY=, resource.type=, resource.labels.KEY=, severity=, timestamp (=, <, <=, >, >=, an RFC 3339 time) and insertId comparisons, joined by AND and OR in parentheses"
            ))
        };
        let eq_only = |op: Op| matches!(op, Op::Eq | Op::Ne | Op::Has);
        let v = t.value.clone();
        Ok(match t.field.as_str() {
            "logName" if eq_only(t.op) => Check::LogName(t.op, v),
            "resource.type" if eq_only(t.op) => Check::ResourceType(t.op, v),
            "severity" if eq_only(t.op) => Check::Severity(t.op, v),
            "insertId" => Check::InsertId(t.op, v),
            "timestamp" => Check::Timestamp(
                t.op,
                parse_rfc3339(&v).ok_or_else(|| {
                    ApiError::invalid_argument(format!(
                        "filter: timestamp `{v}` is not an RFC 3339 time such as 2024-05-01T10:00:00Z"
                    ))
                })?,
            ),
            f => {
                if let Some(k) = f.strip_prefix("resource.labels.").filter(|k| !k.is_empty())
                    && eq_only(t.op)
                {
                    Check::ResourceLabel(k.to_string(), t.op, v)
                } else if let Some(k) = f.strip_prefix("labels.").filter(|k| !k.is_empty())
                    && eq_only(t.op)
                {
                    Check::Label(k.to_string(), t.op, v)
                } else {
                    return Err(unsupported());
                }
            }
        })
    }

    fn holds(&self, e: &Entry) -> bool {
        let text = |op: &Op, actual: Option<&str>, wanted: &str| match actual {
            Some(a) => op.holds(a.cmp(wanted)),
            None => *op == Op::Ne,
        };
        match self {
            Check::LogName(op, v) => text(op, Some(&e.log_name), v),
            Check::ResourceType(op, v) => text(op, Some("generic_task"), v),
            Check::Severity(op, v) => text(op, e.json["severity"].as_str(), v),
            Check::Label(k, op, v) => text(op, e.labels.get(k).map(String::as_str), v),
            Check::ResourceLabel(k, op, v) => text(op, e.resource_labels.get(k).map(String::as_str), v),
            Check::InsertId(op, v) => op.holds(e.insert_id.as_str().cmp(v)),
            Check::Timestamp(op, t) => op.holds(e.timestamp.cmp(t)),
        }
    }
}

/// The body of `entries.list`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListRequest {
    #[serde(default)]
    pub resource_names: Vec<String>,
    #[serde(default)]
    pub filter: String,
    #[serde(default)]
    pub order_by: String,
    pub page_size: Option<i64>,
    pub page_token: Option<String>,
}

/// Follows a container's output from its start until it ends, storing each line as an entry.
/// Ends when the container does (or is removed).
pub async fn follow(s: Arc<Shared>, container: String, task: TaskLog) {
    let options = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .build();
    let mut frames = s.docker.logs(&container, Some(options));
    // A line may come in more than one frame (the engine splits long ones): the part before
    // its newline waits here, per stream.
    let mut partial: [String; 2] = Default::default();
    while let Some(frame) = frames.next().await {
        let (stderr, message) = match frame {
            Ok(LogOutput::StdOut { message }) => (false, message),
            Ok(LogOutput::StdErr { message }) => (true, message),
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(container, error = %e, "the container's log ended");
                break;
            }
        };
        let text = String::from_utf8_lossy(&message);
        // Each frame starts with the time the engine read it.
        let (stamp, text) = text.split_once(' ').unwrap_or((text.as_ref(), ""));
        let timestamp = parse_rfc3339(stamp).unwrap_or_else(Utc::now);
        let buffer = &mut partial[usize::from(stderr)];
        buffer.push_str(text);
        if !buffer.ends_with('\n') {
            continue;
        }
        let line = std::mem::take(buffer);
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let mut logs = s.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.push(&task, timestamp, stderr, line);
    }
    // What was written without a final newline is a line too.
    for (i, rest) in partial.iter().enumerate() {
        if !rest.is_empty() {
            let mut logs = s.logs.lock().unwrap_or_else(|e| e.into_inner());
            logs.push(&task, Utc::now(), i == 1, rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> LogStore {
        let task = TaskLog {
            key: JobKey {
                project: "p".into(),
                location: "l".into(),
                id: "j".into(),
                uid: "j-1".into(),
            },
            job_labels: BTreeMap::from([("run".to_string(), "r1".to_string())]),
        };
        let mut logs = LogStore::default();
        let t = |s: &str| parse_rfc3339(s).unwrap();
        logs.push(&task, t("2024-01-01T00:00:02Z"), false, "b");
        logs.push(&task, t("2024-01-01T00:00:01Z"), true, "a");
        logs.push(&task, t("2024-01-01T00:00:02Z"), false, "c");
        let other = TaskLog {
            key: JobKey {
                id: "k".into(),
                uid: "k-1".into(),
                ..task.key.clone()
            },
            job_labels: BTreeMap::new(),
        };
        logs.push(&other, t("2024-01-01T00:00:01.5Z"), false, "x");
        logs.push(&other, t("2024-01-01T00:00:03Z"), false, "y");
        logs
    }

    fn list(logs: &LogStore, filter: &str, order: &str, size: i64, token: Option<&str>) -> Value {
        logs.list(&ListRequest {
            resource_names: vec!["projects/p".into()],
            filter: filter.into(),
            order_by: order.into(),
            page_size: Some(size),
            page_token: token.map(Into::into),
        })
        .unwrap()
    }

    fn texts(v: &Value) -> Vec<&str> {
        v["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["textPayload"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn entries_page_in_timestamp_then_insert_order() {
        let logs = store();
        let one = r#"labels.job_uid="j-1""#;
        let first = list(&logs, one, "", 2, None);
        assert_eq!(texts(&first), ["a", "b"]);
        let token = first["nextPageToken"].as_str().unwrap();
        let second = list(&logs, one, "", 2, Some(token));
        assert_eq!(texts(&second), ["c"]);
        assert!(second.get("nextPageToken").is_none());
        assert_eq!(
            texts(&list(&logs, one, "timestamp desc", 10, None)),
            ["c", "b", "a"]
        );
        assert_eq!(texts(&list(&logs, "", "", 10, None)), ["a", "x", "b", "c", "y"]);
        let filtered = list(
            &logs,
            r#"logName="projects/p/logs/batch_task_logs" AND labels."job_uid"="j-1" AND timestamp>"2024-01-01T00:00:01Z" AND labels.run="r1""#,
            "timestamp asc",
            10,
            None,
        );
        assert_eq!(texts(&filtered), ["b", "c"]);
        assert_eq!(texts(&list(&logs, r#"severity="ERROR""#, "", 10, None)), ["a"]);
        assert_eq!(list(&logs, r#"labels.job_uid="other""#, "", 10, None), json!({}));
        // Several jobs' logs in one read, each from where its own read is.
        let both = list(
            &logs,
            r#"logName="projects/p/logs/batch_task_logs" AND ((labels.job_uid="j-1" AND timestamp>="2024-01-01T00:00:02Z") OR (labels.job_uid="k-1" AND timestamp>="2024-01-01T00:00:01Z" AND timestamp<="2024-01-01T00:00:02Z"))"#,
            "timestamp asc",
            10,
            None,
        );
        assert_eq!(texts(&both), ["x", "b", "c"]);
        assert!(
            logs.list(&ListRequest {
                resource_names: vec!["projects/p".into()],
                filter: "textPayload:\"x\"".into(),
                ..ListRequest::default()
            })
            .is_err()
        );
    }
}
