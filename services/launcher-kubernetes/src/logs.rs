//! A pod's log, followed into a buffer the runtime reads from, with a cursor that resumes it
//! with nothing lost or repeated after a broken stream or a restart of the launcher.
//!
//! The API serves a container's log as lines, stdout and stderr merged (the runtime gets it as
//! stdout), each stamped with its time when asked (`timestamps=true`); it seeks only by
//! `sinceTime`, in whole seconds, and then sends exactly the lines stamped at or after it, in
//! the order they were written. So a cursor is *(`since`, lines already delivered at or after
//! it)*: resuming asks for the same `since` and drops that many lines. `since` moves forward to
//! a second [`SETTLE`] behind the newest line read, so that a resume never re-reads much — the
//! same cursor as the Docker backend's, whose module says why it is exact.
//!
//! One follower task per attempt keeps one request open (`follow=true`) and appends what it
//! reads to the buffer; the runtime's reads take from the buffer and never wait on the API.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use serde::{Deserialize, Serialize};

use crate::cache::{Cache, Container, Lookup};
use crate::spec::CONTAINER;

/// How far behind the newest line read the cursor's `since` stays.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Most bytes the buffer holds that the runtime has not read: the follower waits beyond it.
const MAX_HELD: usize = 8 * 1024 * 1024;

/// Where to resume: a `sinceTime` (whole seconds) and the lines of it already delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub since: i64,
    pub skip: u64,
}

/// A place in the log the runtime may journal: the cursor, and the bytes before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub since: i64,
    pub skip: u64,
    pub bytes: u64,
}

/// The cursor's bookkeeping while reading (see the module's text).
#[derive(Debug)]
struct Position {
    cursor: Cursor,
    to_drop: u64,
    counted: VecDeque<i64>,
}

impl Position {
    fn new(from: Cursor) -> Position {
        Position {
            cursor: from,
            to_drop: from.skip,
            counted: VecDeque::new(),
        }
    }

    /// Accounts for one line stamped `stamp_ns`; false when it was delivered before.
    fn take(&mut self, stamp_ns: i64) -> bool {
        self.counted.push_back(stamp_ns);
        if self.to_drop > 0 {
            self.to_drop -= 1;
            return false;
        }
        self.cursor.skip += 1;
        let since = (stamp_ns - SETTLE.as_nanos() as i64).div_euclid(1_000_000_000);
        if since > self.cursor.since {
            self.counted.retain(|&t| t >= since * 1_000_000_000);
            self.cursor = Cursor {
                since,
                skip: self.counted.len() as u64,
            };
        }
        true
    }
}

/// What has been read of one attempt's log and not yet handed over.
#[derive(Debug)]
pub struct Buffer {
    /// Marks at line boundaries, oldest first.
    marks: VecDeque<Mark>,
    /// The log's bytes from `start` on.
    bytes: Vec<u8>,
    start: u64,
    /// Where the follower resumes.
    next: Mark,
    /// The log was read to its end after the container ended.
    pub complete: bool,
    /// The pod (and its log) went away before the log was read to its end.
    pub lost: Option<String>,
    /// A log stream of the container was opened: what it writes from now on is read even if
    /// the pod is deleted.
    pub attached: bool,
}

impl Buffer {
    /// A buffer that reads from the mark journaled with `from_bytes` (from the start when there
    /// is none or it lies beyond what was read).
    pub fn resume(from_bytes: u64, mark: Option<Mark>) -> Buffer {
        let mark = mark.filter(|m| m.bytes <= from_bytes).unwrap_or_default();
        Buffer {
            marks: VecDeque::from([mark]),
            bytes: Vec::new(),
            start: mark.bytes,
            next: mark,
            complete: false,
            lost: None,
            attached: false,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Whether a read from `offset` can be served: the runtime reads forward, so anything
    /// from where the buffer starts, once its bytes arrive.
    pub fn serves(&self, offset: u64) -> bool {
        self.start <= offset
    }

    /// Up to `max` bytes from `offset`, and the newest mark not beyond `offset`.
    pub fn read(&mut self, offset: u64, max: usize) -> (Vec<u8>, Mark) {
        let drop = (offset.saturating_sub(self.start) as usize).min(self.bytes.len());
        self.bytes.drain(..drop);
        self.start += drop as u64;
        while self.marks.len() > 1 && self.marks[1].bytes <= offset {
            self.marks.pop_front();
        }
        let mark = self.marks.front().copied().unwrap_or_default();
        let n = self.bytes.len().min(max);
        (self.bytes[..n].to_vec(), mark)
    }

    pub fn held(&self) -> usize {
        self.bytes.len()
    }
}

/// An RFC 3339 time at the start of a log line, and the rest.
fn split_line(line: &[u8]) -> Option<(i64, &[u8])> {
    let space = line.iter().position(|&b| b == b' ')?;
    let stamp = std::str::from_utf8(&line[..space]).ok()?;
    let t = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some((t.timestamp_nanos_opt()?, &line[space + 1..]))
}

/// Returns after the next change `changes` sees, or after `limit`.
async fn wait_for(changes: &mut tokio::sync::watch::Receiver<u64>, limit: Duration) {
    let _ = tokio::time::timeout(limit, changes.changed()).await;
}

/// Follows the log of the Job's pod into `buffer` until it is complete (the container ended and
/// everything was read), lost, or the task is aborted. `ended` tells it the container can
/// write no more; `cache` names the pod and wakes it.
pub async fn follow(
    pods: Api<Pod>,
    cache: Cache,
    namespace: String,
    job: String,
    buffer: Arc<Mutex<Buffer>>,
    ended: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let lock = || buffer.lock().unwrap_or_else(|e| e.into_inner());
    let mut pause = Duration::from_millis(50);
    // The task container was seen started: it has a log, which only a stream read to its end
    // has all of.
    let mut started = false;
    // A stream ended cleanly, as it does when the container has ended.
    let mut drained = false;
    // The pod went away: complete if its log cannot have held more than was read, else lost.
    let gone = |b: &mut Buffer, pod: String, started: bool, drained: bool| {
        if started && !drained {
            b.lost = Some(format!("{pod} was removed before its log was read to the end"));
        } else {
            b.complete = true;
        }
    };
    loop {
        // Subscribed before looking, so that a change right after the look wakes the wait.
        let mut changes = cache.subscribe();
        let was_ended = ended.load(Ordering::SeqCst);
        let pod = match cache.pod(&namespace, &job) {
            Lookup::Pod(p) => p,
            // Ended, and no pod in the cache: gone, or not shown by the watch yet.
            Lookup::Absent if was_ended => match cache.ask(&namespace, &job).await {
                Ok(Lookup::Pod(p)) => p,
                Ok(_) => {
                    let pod = format!("the pod of Job {namespace}/{job}");
                    gone(&mut lock(), pod, started, drained);
                    return;
                }
                Err(e) => {
                    tracing::debug!(%job, error = %e, "cannot look for the Job's pod");
                    wait_for(&mut changes, Duration::from_millis(500)).await;
                    continue;
                }
            },
            _ => {
                wait_for(&mut changes, Duration::from_millis(500)).await;
                continue;
            }
        };
        let was_ended = was_ended || pod.ended();
        started |= matches!(pod.container, Container::Running | Container::Terminated { .. });
        if !was_ended && matches!(pod.container, Container::Waiting { .. } | Container::Unknown) {
            // Not started: there is no log to ask for until the watch says it runs.
            wait_for(&mut changes, Duration::from_secs(1)).await;
            continue;
        }
        if lock().held() > MAX_HELD {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let from = lock().next;
        let params = LogParams {
            container: Some(CONTAINER.into()),
            follow: !was_ended,
            timestamps: true,
            since_time: (from.since > 0)
                .then(|| k8s_openapi::jiff::Timestamp::from_second(from.since).ok())
                .flatten(),
            ..Default::default()
        };
        let reader = match pods.log_stream(&pod.name, &params).await {
            Ok(r) => {
                lock().attached = true;
                r
            }
            Err(e) => {
                // 400: not started yet; 404: the pod is gone.
                if crate::error::status(&e) == Some(404) && was_ended {
                    // Gone after it ended: there was a log to read.
                    gone(
                        &mut lock(),
                        format!("pod {namespace}/{}", pod.name),
                        true,
                        drained,
                    );
                    return;
                }
                tracing::debug!(pod = %pod.name, error = %e, "cannot read the pod's log yet");
                wait_for(&mut changes, pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let mut reader = std::pin::pin!(reader);
        let mut position = Position::new(Cursor {
            since: from.since,
            skip: from.skip,
        });
        let mut broken = false;
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(pod = %pod.name, error = %e, "the pod's log stream broke; resuming");
                    broken = true;
                    break;
                }
            }
            let newline = line.last() == Some(&b'\n');
            if newline {
                line.pop();
            }
            let Some((stamp, text)) = split_line(&line) else {
                continue;
            };
            if !position.take(stamp) {
                continue;
            }
            let mut b = lock();
            b.bytes.extend_from_slice(text);
            if newline {
                b.bytes.push(b'\n');
            }
            b.next = Mark {
                since: position.cursor.since,
                skip: position.cursor.skip,
                bytes: b.end(),
            };
            let next = b.next;
            b.marks.push_back(next);
            pause = Duration::from_millis(50);
        }
        if was_ended && !broken {
            lock().complete = true;
            return;
        }
        drained |= !broken;
        // The stream ended before the container was seen ending (or broke): look again from
        // where it stopped once the watch says more (a stream that ends cleanly ends because the
        // container did, which the watch says next), or after a pause.
        if broken {
            wait_for(&mut changes, Duration::from_millis(200)).await;
        } else {
            // The watch speaks of every pod of the namespace: wait for news of this one's task
            // container (not of its stage container, whose start says nothing of the log).
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            let unchanged = |l: Lookup| match l {
                Lookup::Pod(p) => {
                    (&p.name, &p.phase, p.deleting, &p.container)
                        == (&pod.name, &pod.phase, pod.deleting, &pod.container)
                }
                _ => false,
            };
            while unchanged(cache.pod(&namespace, &job)) && tokio::time::Instant::now() < until {
                wait_for(&mut changes, until - tokio::time::Instant::now()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn resuming_loses_nothing_and_repeats_nothing() {
        let stamps: Vec<i64> = (0..600i64)
            .map(|i| 1_796_540_000 * S + (i / 10) * S + if i % 7 == 3 { -3_000_000 } else { 0 })
            .collect();
        for piece in [1, 2, 7, 50, 1000] {
            let mut delivered = Vec::new();
            let mut cursor = Cursor::default();
            loop {
                let mut p = Position::new(cursor);
                let mut got = 0;
                let since = cursor.since * S;
                for (i, &t) in stamps.iter().enumerate().filter(|(_, t)| **t >= since) {
                    if p.take(t) {
                        delivered.push(i);
                        cursor = p.cursor;
                        got += 1;
                        if got == piece {
                            break;
                        }
                    }
                }
                if got == 0 {
                    break;
                }
            }
            assert_eq!(
                delivered,
                (0..stamps.len()).collect::<Vec<_>>(),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn reads_hand_out_marks_never_beyond_the_reader() {
        let mut b = Buffer::resume(0, None);
        for (i, line) in ["a\n", "bb\n", "ccc\n"].iter().enumerate() {
            b.bytes.extend_from_slice(line.as_bytes());
            b.next = Mark {
                since: 1,
                skip: i as u64 + 1,
                bytes: b.end(),
            };
            let next = b.next;
            b.marks.push_back(next);
        }
        let (bytes, mark) = b.read(0, 1024);
        assert_eq!(bytes, b"a\nbb\nccc\n");
        assert_eq!(mark.bytes, 0);
        let (bytes, mark) = b.read(5, 1024);
        assert_eq!(bytes, b"ccc\n");
        assert_eq!((mark.bytes, mark.skip), (5, 2));
        let resumed = Buffer::resume(7, Some(mark));
        assert_eq!(resumed.start, 5);
        assert!(resumed.serves(7) && !resumed.serves(4));
    }
}
