//! A job's output from Cloud Logging, read by position and counted in bytes.
//!
//! Batch writes each line of a task's output (standard output and error, one log) as an entry
//! of `batch_task_logs` labelled with the job's uid. The output's bytes, as ferry counts them,
//! are every entry's line followed by a newline, oldest first. Cloud Logging orders entries by
//! timestamp and, among equal ones, by insert id: that pair is an entry's [`Key`], and a read
//! asks for the entries from the last key's timestamp on and skips those up to the key. Each
//! batch of entries remembers the key it was read after and the offset of its first byte; that
//! pair is the cursor the runtime journals, so that after a restart the same read fetches the
//! same entries again and the bytes before the journaled offset are skipped. Cloud Logging may
//! take in an entry after one stamped later: while the job may still write, a read takes only
//! the entries older than the settle time ([`filter`]'s `until`).

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset};
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

/// The entries of one job read so far that are still wanted, as bytes.
#[derive(Debug, Default)]
pub struct Stream {
    /// Each batch's cursor, in order; the bytes held begin at the first one's offset.
    batches: Vec<Cursor>,
    bytes: Vec<u8>,
    /// The key of the last entry held: the next read is of entries after it.
    last: Option<Key>,
    /// The offset of `bytes[0]`.
    base: u64,
    /// Nothing more can come: the job ended and a read after that brought nothing.
    pub complete: bool,
}

impl Stream {
    /// A stream to be read from `cursor` (journaled before a restart), or from the head.
    pub fn from_cursor(cursor: Option<Cursor>) -> Stream {
        let c = cursor.unwrap_or_default();
        Stream {
            last: c.after,
            base: c.at,
            ..Stream::default()
        }
    }

    /// The offset after the last byte held.
    pub fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Whether this stream can serve a read from `from`.
    pub fn reaches(&self, from: u64) -> bool {
        from >= self.base
    }

    /// The key the next read starts after.
    pub fn last(&self) -> Option<&Key> {
        self.last.as_ref()
    }

    /// Whether an entry at `key` is new: after the last one held.
    pub fn is_new(&self, key: &Key) -> bool {
        self.last
            .as_ref()
            .is_none_or(|l| key.order(l) == Ordering::Greater)
    }

    /// Adds the entries read after [`Stream::last`], oldest first, each its key and line.
    /// Returns whether any was new.
    pub fn push(&mut self, entries: Vec<(Key, String)>) -> bool {
        let fresh: Vec<(Key, String)> = entries.into_iter().filter(|(k, _)| self.is_new(k)).collect();
        let Some((last, _)) = fresh.last() else {
            return false;
        };
        let last = last.clone();
        self.batches.push(Cursor {
            after: self.last.clone(),
            at: self.end(),
        });
        for (_, line) in fresh {
            self.bytes.extend_from_slice(line.as_bytes());
            self.bytes.push(b'\n');
        }
        self.last = Some(last);
        true
    }

    /// The bytes from `from` on, at most `max`, and the cursor to journal with them. Drops
    /// batches wholly before `from`: the runtime never reads behind what it journaled.
    pub fn read(&mut self, from: u64, max: usize) -> (Vec<u8>, Cursor) {
        let keep = self.batches.iter().rposition(|b| b.at <= from).unwrap_or(0);
        if keep > 0 {
            let cut = (self.batches[keep].at - self.base) as usize;
            self.bytes.drain(..cut);
            self.base = self.batches[keep].at;
            self.batches.drain(..keep);
        }
        let cursor = self.batches.first().cloned().unwrap_or(Cursor {
            after: self.last.clone(),
            at: self.base,
        });
        let start = usize::try_from(from.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let end = start.saturating_add(max).min(self.bytes.len());
        (self.bytes[start..end].to_vec(), cursor)
    }

    /// Whether every byte held was read past `from`.
    pub fn drained_at(&self, from: u64) -> bool {
        from >= self.end()
    }
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
        let mut s = Stream::from_cursor(None);
        assert!(s.push(entries(&[
            ("2026-01-01T00:00:01Z", "1", "one"),
            ("2026-01-01T00:00:01Z", "2", "two"),
        ])));
        // A read from the last timestamp on answers the last entries again: they are skipped.
        assert!(s.push(entries(&[
            ("2026-01-01T00:00:01Z", "2", "two"),
            ("2026-01-01T00:00:02Z", "3", "three"),
        ])));
        assert!(!s.push(entries(&[("2026-01-01T00:00:02Z", "3", "three")])));
        let (bytes, cursor) = s.read(0, 100);
        assert_eq!(bytes, b"one\ntwo\nthree\n");
        assert_eq!(cursor, Cursor { after: None, at: 0 });
        let (bytes, cursor) = s.read(10, 3);
        assert_eq!(bytes, b"ree");
        assert_eq!(
            cursor,
            Cursor {
                after: Some(key("2026-01-01T00:00:01Z", "2")),
                at: 8
            }
        );
        // After a restart from that cursor, the same entries are read again.
        let mut again = Stream::from_cursor(Some(cursor));
        assert_eq!(
            filter("p", "u", again.last(), None),
            "logName=\"projects/p/logs/batch_task_logs\" AND labels.job_uid=\"u\" AND timestamp>=\"2026-01-01T00:00:01Z\""
        );
        again.push(entries(&[
            ("2026-01-01T00:00:01Z", "2", "two"),
            ("2026-01-01T00:00:02Z", "3", "three"),
        ]));
        assert_eq!(again.read(10, 100).0, b"ree\n");
        assert!(again.drained_at(14));
        assert!(!again.reaches(3));
    }
}
