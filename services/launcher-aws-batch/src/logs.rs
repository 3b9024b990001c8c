//! A job's output from its CloudWatch Logs stream, read by forward tokens and counted in bytes.
//!
//! The awslogs driver writes each line of the container's output (standard output and error,
//! merged) as one event. The stream's bytes, as ferry counts them, are every event's message
//! followed by a newline, from the stream's first event. A read pages on with the forward token
//! CloudWatch gives; the log is held as [`LogPages`] positioned by that token: the token a page
//! was fetched with and the offset of its first byte are the cursor the runtime journals, so
//! that after a restart the same token fetches the same page again, and the bytes before the
//! journaled offset are skipped.

use ferry_launcher::batch::LogPages;
use serde::{Deserialize, Serialize};

/// Where the journal can read on from: fetching with `token` (`None`: from the stream's head)
/// gives the bytes from offset `at` on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub at: u64,
}

impl Cursor {
    /// The stream read on from this cursor.
    pub fn pages(self) -> Pages {
        Pages::new(self.token, self.at)
    }
}

impl From<(Option<String>, u64)> for Cursor {
    fn from((token, at): (Option<String>, u64)) -> Cursor {
        Cursor { token, at }
    }
}

/// A job's stream as read so far, each page fetched with the token the one before gave.
pub type Pages = LogPages<Option<String>>;

/// Adds a page fetched with `pages`' token: its messages, and the token after it (CloudWatch
/// gives the same token back at the stream's end, and none where it has nothing to say, which
/// keeps the one held). Returns whether the page brought anything.
pub fn push(pages: &mut Pages, messages: &[&str], next: Option<String>) -> bool {
    let next = next.or_else(|| pages.next().clone());
    pages.push(messages, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_become_bytes_and_cursors_reach_every_offset_again() {
        let mut s = Cursor::default().pages();
        assert!(push(&mut s, &["one", "two"], Some("t1".into())));
        assert!(push(&mut s, &["three"], Some("t2".into())));
        assert!(!push(&mut s, &[], Some("t2".into())));
        assert!(!push(&mut s, &[], None));
        assert_eq!(s.next().as_deref(), Some("t2"));
        let (bytes, cursor) = s.read(0, 100);
        assert_eq!(bytes, b"one\ntwo\nthree\n");
        assert_eq!(Cursor::from(cursor), Cursor { token: None, at: 0 });
        // Read on from inside the second page: the first is dropped, the cursor is the second's.
        let (bytes, cursor) = s.read(10, 3);
        assert_eq!(bytes, b"ree");
        let cursor = Cursor::from(cursor);
        assert_eq!(
            cursor,
            Cursor {
                token: Some("t1".into()),
                at: 8
            }
        );
        // After a restart from that cursor, the same token fetches the same page again.
        let mut again = cursor.pages();
        assert_eq!(again.next().as_deref(), Some("t1"));
        push(&mut again, &["three"], Some("t2".into()));
        assert_eq!(again.read(10, 100).0, b"ree\n");
        assert!(again.drained_at(14));
        assert!(!again.reaches(3));
    }
}
