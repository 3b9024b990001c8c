//! A container's stdout and stderr, read from a [`LogCursor`] so that a reader that stopped — a
//! broken stream, a launcher restarted — resumes with no entry lost and none repeated.
//!
//! # How the cursor is exact
//!
//! The engine keeps each container's log as one append-only file (json-file, which
//! [`crate::Engine::create_or_adopt`] always asks for): every entry is a line, or a 16 KiB piece of
//! a longer one, stamped with the time the engine read it. The only way to seek in it through
//! the API is `since`, a time in whole seconds: the engine then sends, in file order, exactly the
//! entries stamped at or after it. So for a fixed `since` the stream is always the same
//! sequence, only ever growing at its end, and a cursor is the pair *(`since`, entries of that
//! stream already delivered)*: resuming asks for the same `since` and drops that many entries.
//!
//! Keeping `since` at zero would make that exact with no assumption at all, but every resume
//! would re-read the whole log. So the cursor moves `since` forward, to a second at least
//! [`SETTLE`] older than the newest entry read, and counts only the delivered entries stamped at
//! or after the new `since` (which are exactly the first entries of the new stream, because
//! everything before the read position was delivered). That is exact as long as no entry the
//! engine stamped more than [`SETTLE`] before the newest one read is still unwritten: stdout and
//! stderr are stamped by two copiers that then take turns writing, so the file is not strictly
//! in time order, but the disorder is the time one write waits for the other — microseconds,
//! not seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use crate::Engine;
use crate::error::{Error, Result, status_of};

/// How far behind the newest entry read the cursor's `since` stays (see the module docs).
pub const SETTLE: Duration = Duration::from_secs(5);

/// Where to resume a container's log: the `since` (whole seconds since the epoch) the engine
/// is asked for, and how many entries of that stream were delivered already. Written as
/// `since:skip` (`0:0` reads from the start) for a journal to keep as an opaque value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCursor {
    pub since: i64,
    pub skip: u64,
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.since, self.skip)
    }
}

impl FromStr for LogCursor {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a Docker log cursor: expected `since:skip`, e.g. `1796540000:12`");
        let (since, skip) = s.split_once(':').ok_or_else(bad)?;
        let since: i64 = since.parse().map_err(|_| bad())?;
        if since < 0 {
            return Err(bad());
        }
        Ok(LogCursor {
            since,
            skip: skip.parse().map_err(|_| bad())?,
        })
    }
}

/// Which of the command's outputs an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One entry of a container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub stream: LogStream,
    /// When the engine read it from the command.
    pub timestamp: DateTime<Utc>,
    /// The bytes, without the line's newline.
    pub text: Vec<u8>,
    /// The line goes on in the next entry of the same stream (the engine cuts lines at 16 KiB,
    /// and the last line of an output may not end in a newline).
    pub partial: bool,
    /// Where to resume to read what comes after this entry.
    pub cursor: LogCursor,
}

/// The cursor's bookkeeping while reading: the timestamps (ns) of the delivered entries counted
/// in `skip`, so that `since` can move forward and `skip` shrink with it.
#[derive(Debug)]
struct Position {
    cursor: LogCursor,
    /// Entries of the current stream still to drop before delivering (a resume).
    to_drop: u64,
    counted: std::collections::VecDeque<i64>,
}

impl Position {
    fn new(from: LogCursor) -> Position {
        Position {
            cursor: from,
            to_drop: from.skip,
            counted: Default::default(),
        }
    }

    /// Accounts for one entry of the stream; false when it was delivered before.
    fn take(&mut self, stamp_ns: i64) -> bool {
        if self.to_drop > 0 {
            self.to_drop -= 1;
            // Delivered before, so counted in `skip`; its stamp is still needed to move `since`.
            self.counted.push_back(stamp_ns);
            return false;
        }
        self.counted.push_back(stamp_ns);
        self.cursor.skip += 1;
        // `since` may move to a second SETTLE behind this entry.
        let settle = SETTLE.as_nanos() as i64;
        let since = (stamp_ns - settle).div_euclid(1_000_000_000);
        if since > self.cursor.since {
            self.counted.retain(|&t| t >= since * 1_000_000_000);
            self.cursor = LogCursor {
                since,
                skip: self.counted.len() as u64,
            };
        }
        true
    }
}

impl Engine {
    /// The container's stdout and stderr from `from` on, in the order the engine wrote them,
    /// each entry with the cursor that resumes after it. With `follow`, the stream goes on until
    /// the container ends (and ends at once for one that has ended); without, it stops at what
    /// is written now.
    pub fn logs(
        &self,
        name: &str,
        from: LogCursor,
        follow: bool,
    ) -> impl Stream<Item = Result<LogEntry>> + Send + 'static {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(follow)
            .since(i32::try_from(from.since).unwrap_or(i32::MAX))
            .build();
        let raw = self.docker.logs(name, Some(options));
        let engine = self.clone();
        let name = name.to_string();
        let mut position = Position::new(from);
        raw.filter_map(move |frame| {
            let out = match frame {
                Err(e) if status_of(&e) == Some(404) => Some(Err(Error::NotFound { name: name.clone() })),
                Err(e) => Some(Err(Error::api(&engine.host, "container logs", e))),
                Ok(frame) => match parse_frame(frame) {
                    Err(why) => Some(Err(Error::Engine {
                        op: "container logs",
                        status: 200,
                        message: why,
                    })),
                    Ok(None) => None,
                    Ok(Some((stream, timestamp, mut text))) => {
                        let stamp_ns = timestamp.timestamp_nanos_opt().unwrap_or(i64::MAX);
                        position.take(stamp_ns).then(|| {
                            let partial = text.last() != Some(&b'\n');
                            if !partial {
                                text.pop();
                            }
                            Ok(LogEntry {
                                stream,
                                timestamp,
                                text,
                                partial,
                                cursor: position.cursor,
                            })
                        })
                    }
                },
            };
            std::future::ready(out)
        })
    }
}

/// Splits one frame of the engine's log stream, `<RFC 3339 time> <bytes>`; `None` for what is
/// not stdout or stderr.
#[allow(clippy::type_complexity)]
fn parse_frame(frame: LogOutput) -> std::result::Result<Option<(LogStream, DateTime<Utc>, Vec<u8>)>, String> {
    let (stream, message) = match frame {
        LogOutput::StdOut { message } => (LogStream::Stdout, message),
        LogOutput::StdErr { message } => (LogStream::Stderr, message),
        LogOutput::StdIn { .. } | LogOutput::Console { .. } => return Ok(None),
    };
    let space = message
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| "a log entry without a timestamp".to_string())?;
    let stamp = std::str::from_utf8(&message[..space])
        .map_err(|_| "a log entry with a garbled timestamp".to_string())?;
    let timestamp = DateTime::parse_from_rfc3339(stamp)
        .map_err(|e| format!("a log entry with the timestamp `{stamp}`: {e}"))?
        .with_timezone(&Utc);
    Ok(Some((stream, timestamp, message[space + 1..].to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn cursors_round_trip_as_text() {
        let c = LogCursor {
            since: 1796540000,
            skip: 12,
        };
        assert_eq!(c.to_string().parse::<LogCursor>(), Ok(c));
        assert_eq!("0:0".parse::<LogCursor>(), Ok(LogCursor::default()));
        for bad in ["", "12", "a:1", "-1:0", "1:-1"] {
            assert!(bad.parse::<LogCursor>().is_err(), "{bad}");
        }
    }

    /// Replays a log whose stamps are `stamps` (file order), delivering it in pieces: each piece
    /// resumes from the cursor of the last entry delivered, as a restarted reader would, and
    /// asks the "engine" for the entries stamped at or after the cursor's `since`.
    fn deliver_in_pieces(stamps: &[i64], piece: usize) -> Vec<usize> {
        let mut delivered = Vec::new();
        let mut cursor = LogCursor::default();
        loop {
            let mut position = Position::new(cursor);
            let since = cursor.since * S;
            let stream = stamps.iter().enumerate().filter(|(_, t)| **t >= since);
            let mut got = 0;
            for (i, &t) in stream {
                if position.take(t) {
                    delivered.push(i);
                    cursor = position.cursor;
                    got += 1;
                    if got == piece {
                        break;
                    }
                }
            }
            if got == 0 {
                return delivered;
            }
        }
    }

    #[test]
    fn resuming_loses_nothing_and_repeats_nothing() {
        // Ten entries a second for a minute, a few out of order by a few ms (stdout and stderr
        // taking turns), many sharing a stamp.
        let mut stamps = Vec::new();
        for i in 0..600i64 {
            stamps.push(1_796_540_000 * S + (i / 10) * S + if i % 7 == 3 { -3_000_000 } else { 0 });
        }
        for piece in [1, 2, 7, 50, 1000] {
            let got = deliver_in_pieces(&stamps, piece);
            assert_eq!(got, (0..stamps.len()).collect::<Vec<_>>(), "pieces of {piece}");
        }
    }

    #[test]
    fn the_cursor_moves_forward_and_stays_small() {
        let mut p = Position::new(LogCursor::default());
        for i in 0..1000i64 {
            assert!(p.take(1_796_540_000 * S + i * S / 10));
        }
        // 100 s of entries: `since` trails the newest by SETTLE, so skip counts ~5-6 s of them.
        assert!(p.cursor.since >= 1_796_540_000 + 94, "{:?}", p.cursor);
        assert!(p.cursor.skip <= 60, "{:?}", p.cursor);
    }

    #[test]
    fn frames_split_into_stream_time_and_bytes() {
        let out = parse_frame(LogOutput::StdErr {
            message: "2026-12-06T07:19:37.123456789Z hello world\n".into(),
        })
        .unwrap()
        .unwrap();
        assert_eq!(out.0, LogStream::Stderr);
        assert_eq!(out.1.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(out.2, b"hello world\n");
        assert!(
            parse_frame(LogOutput::StdOut {
                message: "garbage".into()
            })
            .is_err()
        );
    }
}
