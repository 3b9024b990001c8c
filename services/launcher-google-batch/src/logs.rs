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
//! the entries older than the settle time ([`filter`]'s `until`).

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset};
use ferry_launcher::batch::LogPages;
use serde::{Deserialize, Serialize};

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

/// The filter of a job's task log, from `after`'s timestamp on, and up to `until` (RFC 3339)
/// when given: entries stamped later may still be overtaken by earlier ones Cloud Logging has
/// yet to take in, which a read by position would then skip.
pub fn filter(project: &str, job_uid: &str, after: Option<&Key>, until: Option<&str>) -> String {
    let mut f = format!(
        "logName=\"projects/{project}/logs/batch_task_logs\" AND labels.job_uid=\"{}\"",
        job_uid.replace('"', "")
    );
    if let Some(k) = after {
        f.push_str(&format!(" AND timestamp>=\"{}\"", k.ts.replace('"', "")));
    }
    if let Some(t) = until {
        f.push_str(&format!(" AND timestamp<=\"{}\"", t.replace('"', "")));
    }
    f
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
            filter("p", "u", again.next().as_ref(), None),
            "logName=\"projects/p/logs/batch_task_logs\" AND labels.job_uid=\"u\" AND timestamp>=\"2026-01-01T00:00:01Z\""
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
