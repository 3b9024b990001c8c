//! A job's output from its CloudWatch Logs stream, read by forward tokens and counted in bytes.
//!
//! The awslogs driver writes each line of the container's output (standard output and error,
//! merged) as one event. The stream's bytes, as ferry counts them, are every event's message
//! followed by a newline, from the stream's first event. A read pages on with the forward token
//! CloudWatch gives; each page remembers the token it was fetched with and the offset of its
//! first byte, and that pair is the cursor the runtime journals: after a restart the same
//! token fetches the same page again, and the bytes before the journaled offset are skipped.

use serde::{Deserialize, Serialize};

/// Where the journal can read on from: fetching with `token` (`None`: from the stream's head)
/// gives the bytes from offset `at` on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub at: u64,
}

/// The pages of one stream fetched so far that are still wanted.
#[derive(Debug, Default)]
pub struct Stream {
    /// Each page's cursor, in order; the bytes held begin at the first one's offset.
    pages: Vec<Cursor>,
    bytes: Vec<u8>,
    /// The token to fetch the next page with.
    next: Option<String>,
    /// The offset of `bytes[0]`.
    base: u64,
    /// A fetch found nothing new after the job had ended: the stream is complete.
    pub complete: bool,
    started: bool,
}

impl Stream {
    /// A stream to be read from `cursor` (journaled before a restart), or from its head.
    pub fn from_cursor(cursor: Option<Cursor>) -> Stream {
        let c = cursor.unwrap_or_default();
        Stream {
            pages: Vec::new(),
            bytes: Vec::new(),
            next: c.token.clone(),
            base: c.at,
            complete: false,
            started: false,
        }
    }

    /// The offset after the last byte held.
    pub fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Whether this stream can serve a read from `from`: it holds that offset or the next
    /// page comes right where `from` is wanted.
    pub fn reaches(&self, from: u64) -> bool {
        from >= self.base
    }

    /// The token to fetch the next page with.
    pub fn next_token(&self) -> Option<&str> {
        self.next.as_deref()
    }

    /// Adds a page fetched with [`Stream::next_token`]: its messages and the token after it.
    /// Returns whether it brought anything new (CloudWatch answers the same token at the end).
    pub fn push(&mut self, messages: &[&str], next: Option<String>) -> bool {
        let fetched_with = self.next.clone();
        let new = !messages.is_empty();
        if new {
            self.pages.push(Cursor {
                token: fetched_with,
                at: self.end(),
            });
            for m in messages {
                self.bytes.extend_from_slice(m.as_bytes());
                self.bytes.push(b'\n');
            }
        }
        self.started = true;
        if next.is_some() {
            self.next = next;
        }
        new
    }

    /// The bytes from `from` on, at most `max`, and the cursor to journal with them. Drops
    /// pages wholly before `from`: the runtime never reads behind what it journaled.
    pub fn read(&mut self, from: u64, max: usize) -> (Vec<u8>, Cursor) {
        // Keep the page holding `from` (the cursor must reach it) and everything after.
        let keep = self.pages.iter().rposition(|p| p.at <= from).unwrap_or(0);
        if keep > 0 {
            let cut = (self.pages[keep].at - self.base) as usize;
            self.bytes.drain(..cut);
            self.base = self.pages[keep].at;
            self.pages.drain(..keep);
        }
        let cursor = self.pages.first().cloned().unwrap_or(Cursor {
            token: self.next.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_become_bytes_and_cursors_reach_every_offset_again() {
        let mut s = Stream::from_cursor(None);
        assert!(s.push(&["one", "two"], Some("t1".into())));
        assert!(s.push(&["three"], Some("t2".into())));
        assert!(!s.push(&[], Some("t2".into())));
        let (bytes, cursor) = s.read(0, 100);
        assert_eq!(bytes, b"one\ntwo\nthree\n");
        assert_eq!(cursor, Cursor { token: None, at: 0 });
        // Read on from inside the second page: the first is dropped, the cursor is the second's.
        let (bytes, cursor) = s.read(10, 3);
        assert_eq!(bytes, b"ree");
        assert_eq!(
            cursor,
            Cursor {
                token: Some("t1".into()),
                at: 8
            }
        );
        // After a restart from that cursor, the same token fetches the same page again.
        let mut again = Stream::from_cursor(Some(cursor));
        assert_eq!(again.next_token(), Some("t1"));
        again.push(&["three"], Some("t2".into()));
        assert_eq!(again.read(10, 100).0, b"ree\n");
        assert!(again.drained_at(14));
        assert!(!again.reaches(3));
    }
}
