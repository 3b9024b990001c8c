//! A job's output from Cloud Logging, read by position and counted in bytes.
//!
//! Batch writes each line of a task's output (standard output and error, one log) as an entry
//! of `batch_task_logs` labelled with the job's uid. The output's bytes, as ferry counts them,
//! are every entry's line followed by a newline, oldest first. Cloud Logging orders entries by
//! timestamp and, among equal ones, by insert id: that pair is an entry's [`Key`], and a read
//! asks for the entries from the last key's timestamp on and skips those up to the key. The
//! log is held as [`LogPages`] positioned by that key: the key a batch was read after and the
//! offset of its first byte are the cursor the runtime journals. Cloud Logging may
//! take in an entry after one stamped later: while the job may still write, a read takes only
//! the entries older than the settle time ([`clause`]'s `until`).
//!
//! The [`Reader`] reads the logs of every job whose read is wanted in one `entries.list`, each
//! job's clause with its own position, in rounds at least a set time apart per project, and
//! hands each job its entries.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use ferry_launcher::backend::AttemptError;
use ferry_launcher::batch::LogPages;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::google::Google;

/// Where an entry is in the log's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// Its timestamp, as Cloud Logging wrote it (RFC 3339).
    pub ts: String,
    /// Its insert id.
    pub id: String,
}

impl Key {
    fn instant(&self) -> Option<DateTime<FixedOffset>> {
        DateTime::parse_from_rfc3339(&self.ts).ok()
    }

    /// The log's order: by instant (RFC 3339 strings with different precisions do not sort
    /// as text), then by insert id.
    pub fn order(&self, other: &Key) -> Ordering {
        match (self.instant(), other.instant()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.ts.cmp(&other.ts),
        }
        .then_with(|| self.id.cmp(&other.id))
    }
}

/// Where the journal can read on from: the entries after `after` (`None`: from the log's
/// head) are the bytes from offset `at` on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Key>,
    pub at: u64,
}

impl Cursor {
    /// The log read on from this cursor.
    pub fn pages(self) -> Pages {
        Pages::new(self.after, self.at)
    }
}

impl From<(Option<Key>, u64)> for Cursor {
    fn from((after, at): (Option<Key>, u64)) -> Cursor {
        Cursor { after, at }
    }
}

/// A job's log as read so far, each read from the key of the last entry held.
pub type Pages = LogPages<Option<Key>>;

/// Adds the entries a read after `pages`' last key brought (oldest first, each its key and
/// line): a read from the last key's timestamp on answers the entries up to it again, which
/// are skipped. Returns whether any entry was new.
pub fn push(pages: &mut Pages, entries: Vec<(Key, String)>) -> bool {
    let last = pages.next().clone();
    let is_new = |k: &Key| last.as_ref().is_none_or(|l| k.order(l) == Ordering::Greater);
    let fresh: Vec<(Key, String)> = entries.into_iter().filter(|(k, _)| is_new(k)).collect();
    let Some((after, _)) = fresh.last() else {
        return false;
    };
    let after = Some(after.clone());
    pages.push(fresh.into_iter().map(|(_, line)| line), after)
}

/// The part of a filter that selects a job's task log from `after`'s timestamp on, and up to
/// `until` (RFC 3339) when given: entries stamped later may still be overtaken by earlier ones
/// Cloud Logging has yet to take in, which a read by position would then skip.
pub fn clause(job_uid: &str, after: Option<&Key>, until: Option<&str>) -> String {
    let mut f = format!("labels.job_uid=\"{}\"", job_uid.replace('"', ""));
    if let Some(k) = after {
        f.push_str(&format!(" AND timestamp>=\"{}\"", k.ts.replace('"', "")));
    }
    if let Some(t) = until {
        f.push_str(&format!(" AND timestamp<=\"{}\"", t.replace('"', "")));
    }
    f
}

/// The filter of the task logs of `project` that any of `clauses` selects.
pub fn filter<S: AsRef<str>>(project: &str, clauses: &[S]) -> String {
    let logs = format!("logName=\"projects/{project}/logs/batch_task_logs\"");
    match clauses {
        [one] => format!("{logs} AND {}", one.as_ref()),
        many => {
            let any: Vec<String> = many.iter().map(|c| format!("({})", c.as_ref())).collect();
            format!("{logs} AND ({})", any.join(" OR "))
        }
    }
}

/// The most entries a read takes in a page, and the most pages in a read: a read that stops
/// there says so, and the reader comes back for the rest at once.
const PAGE: u32 = 1000;
const PAGES: usize = 5;

/// The most jobs one read asks for: Cloud Logging takes filters of up to 20,000 characters,
/// and a job's clause is about 150.
const JOBS_PER_READ: usize = 100;

/// How long a round waits, at least, for the reads wanted at about the same time to join it.
const GATHER: Duration = Duration::from_millis(20);

/// One read of a job's task log that is wanted: its entries after `after`, up to `until`.
#[derive(Debug, Clone)]
pub struct Want {
    pub uid: String,
    pub after: Option<Key>,
    pub until: Option<String>,
}

/// What a read brought a job: its entries, oldest first, each its key and line; `more` when
/// the read stopped at its page limit, before what it asked for was all read.
#[derive(Debug, Clone, Default)]
pub struct Got {
    pub entries: Vec<(Key, String)>,
    pub more: bool,
}

type Waiting = Vec<(Want, oneshot::Sender<Result<Got, AttemptError>>)>;

/// The reads of one project's logs: those waiting for the next round, and when it may start.
#[derive(Default)]
struct Project {
    waiting: Waiting,
    /// A round is due: the task that makes it is on its way.
    due: bool,
    /// When the last round started.
    last: Option<tokio::time::Instant>,
}

/// Reads jobs' task logs in rounds: a round is one `entries.list` (a page, or a few for a log
/// that wrote much) for every job whose read is wanted, each job's clause with its own
/// position, and rounds of a project are at least `spacing` apart. Cloud Logging's read quota
/// is per project (60 reads a minute by default): however many jobs are in flight, a launcher
/// spends at most one round per `spacing` of it.
pub struct Reader {
    google: Google,
    /// The least time between the starts of two rounds of a project.
    spacing: Duration,
    projects: Mutex<HashMap<String, Project>>,
}

impl Reader {
    pub fn new(google: Google, spacing: Duration) -> Arc<Reader> {
        Arc::new(Reader {
            google,
            spacing,
            projects: Mutex::default(),
        })
    }

    /// Reads what `want` asks of a job of `project` in the project's next round, with the
    /// other jobs' reads wanted by then. Cancel-safe: the round goes on without its waiter.
    pub async fn read(self: &Arc<Self>, project: &str, want: Want) -> Result<Got, AttemptError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
            let p = projects.entry(project.to_string()).or_default();
            p.waiting.push((want, tx));
            let start = (!p.due).then(|| {
                let now = tokio::time::Instant::now();
                p.last.map_or(now, |l| (l + self.spacing).max(now))
            });
            p.due = true;
            start
        };
        if let Some(at) = start {
            let reader = self.clone();
            let project = project.to_string();
            tokio::spawn(async move {
                // A moment for the reads wanted at about the same time to join, at least.
                tokio::time::sleep_until(at.max(tokio::time::Instant::now() + GATHER)).await;
                let wants = {
                    let mut projects = reader.projects.lock().unwrap_or_else(|e| e.into_inner());
                    let p = projects.entry(project.clone()).or_default();
                    p.due = false;
                    p.last = Some(tokio::time::Instant::now());
                    std::mem::take(&mut p.waiting)
                };
                let mut wants = wants.into_iter().peekable();
                while wants.peek().is_some() {
                    let some: Waiting = wants.by_ref().take(JOBS_PER_READ).collect();
                    reader.read_many(&project, some).await;
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err(AttemptError::Unavailable("the log reader has stopped".into())))
    }

    /// One read of the logs of every job of `waiting`, each from its own position; every
    /// waiter gets its job's entries, or the read's error.
    async fn read_many(&self, project: &str, waiting: Waiting) {
        let clauses: Vec<String> = waiting
            .iter()
            .map(|(w, _)| clause(&w.uid, w.after.as_ref(), w.until.as_deref()))
            .collect();
        let filter = filter(project, &clauses);
        let mut by_job: HashMap<String, Vec<(Key, String)>> = HashMap::new();
        let mut token: Option<String> = None;
        let mut more = false;
        for page in 0..PAGES {
            let (entries, next) = match self
                .google
                .list_entries(project, &filter, PAGE, token.as_deref())
                .await
            {
                Ok(read) => read,
                Err(e) => {
                    let e = e.fault(
                        &format!("cannot read the Batch task logs of project {project}"),
                        false,
                    );
                    for (_, tx) in waiting {
                        let _ = tx.send(Err(e.clone()));
                    }
                    return;
                }
            };
            for e in entries {
                let (Some(uid), Some(line)) = (e.labels.get("job_uid"), e.line()) else {
                    continue;
                };
                let line = line.trim_end_matches('\n').to_string();
                by_job.entry(uid.clone()).or_default().push((
                    Key {
                        ts: e.timestamp,
                        id: e.insert_id,
                    },
                    line,
                ));
            }
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
            more = page + 1 == PAGES;
        }
        for (want, tx) in waiting {
            let entries = by_job.get(&want.uid).cloned().unwrap_or_default();
            let _ = tx.send(Ok(Got { entries, more }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ts: &str, id: &str) -> Key {
        Key {
            ts: ts.into(),
            id: id.into(),
        }
    }

    fn entries(list: &[(&str, &str, &str)]) -> Vec<(Key, String)> {
        list.iter()
            .map(|(ts, id, line)| (key(ts, id), line.to_string()))
            .collect()
    }

    #[test]
    fn keys_order_by_instant_then_insert_id() {
        // As text, "…00.5Z" sorts after "…00.10Z"; as instants it is before.
        assert_eq!(
            key("2026-01-01T00:00:00.5Z", "b").order(&key("2026-01-01T00:00:00.10Z", "a")),
            Ordering::Greater
        );
        assert_eq!(
            key("2026-01-01T00:00:01Z", "a").order(&key("2026-01-01T00:00:01.000Z", "b")),
            Ordering::Less
        );
    }

    #[test]
    fn entries_become_bytes_once_and_cursors_reach_every_offset_again() {
        let mut s = Cursor::default().pages();
        assert!(push(
            &mut s,
            entries(&[
                ("2026-01-01T00:00:01Z", "1", "one"),
                ("2026-01-01T00:00:01Z", "2", "two"),
            ])
        ));
        // A read from the last timestamp on answers the last entries again: they are skipped.
        assert!(push(
            &mut s,
            entries(&[
                ("2026-01-01T00:00:01Z", "2", "two"),
                ("2026-01-01T00:00:02Z", "3", "three"),
            ])
        ));
        assert!(!push(&mut s, entries(&[("2026-01-01T00:00:02Z", "3", "three")])));
        let (bytes, cursor) = s.read(0, 100);
        assert_eq!(bytes, b"one\ntwo\nthree\n");
        assert_eq!(Cursor::from(cursor), Cursor { after: None, at: 0 });
        let (bytes, cursor) = s.read(10, 3);
        assert_eq!(bytes, b"ree");
        let cursor = Cursor::from(cursor);
        assert_eq!(
            cursor,
            Cursor {
                after: Some(key("2026-01-01T00:00:01Z", "2")),
                at: 8
            }
        );
        // After a restart from that cursor, the same entries are read again.
        let mut again = cursor.pages();
        assert_eq!(
            filter("p", &[clause("u", again.next().as_ref(), None)]),
            "logName=\"projects/p/logs/batch_task_logs\" AND labels.job_uid=\"u\" AND timestamp>=\"2026-01-01T00:00:01Z\""
        );
        assert_eq!(
            filter(
                "p",
                &[
                    clause("u", None, Some("2026-01-01T00:00:09Z")),
                    clause("v", None, None)
                ]
            ),
            "logName=\"projects/p/logs/batch_task_logs\" AND ((labels.job_uid=\"u\" AND \
             timestamp<=\"2026-01-01T00:00:09Z\") OR (labels.job_uid=\"v\"))"
        );
        push(
            &mut again,
            entries(&[
                ("2026-01-01T00:00:01Z", "2", "two"),
                ("2026-01-01T00:00:02Z", "3", "three"),
            ]),
        );
        assert_eq!(again.read(10, 100).0, b"ree\n");
        assert!(again.drained_at(14));
        assert!(!again.reaches(3));
    }
}
