//! A task's output as `task.log` batches: lines split and masked as they are read, numbered
//! across stdout and stderr, and published in confirmed batches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_event::kind;
use ferry_event::payload::{LogLine, Stream, TaskLog};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Shared;
use crate::secrets::Masker;
use crate::state::AttemptDir;

/// Lines longer than this are split into several.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Splits a byte stream into masked lines of at most `limit` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    masker: Masker,
    limit: usize,
}

impl LineSplitter {
    pub fn new(masker: Masker, limit: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            masker,
            limit: limit.max(4),
        }
    }

    /// Adds bytes; complete lines are appended to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<String>) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(n) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buf[start..start + n];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            out.extend(self.split(&self.masker.mask_bytes(line)));
            start += n + 1;
        }
        self.buf.drain(..start);
        // A line without its end yet: cut it once no secret can straddle the cut, that is once
        // a secret starting before `limit` would be complete in the buffer.
        let keep = self.masker.max_len();
        while self.buf.len() > self.limit + keep {
            let masked = self.masker.mask_bytes(&self.buf);
            if masked.len() <= self.limit {
                self.buf = masked;
                break;
            }
            let cut = char_boundary(&masked, self.limit);
            out.push(String::from_utf8_lossy(&masked[..cut]).into_owned());
            self.buf = masked[cut..].to_vec();
        }
    }

    /// The last line, if the stream did not end with a newline.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            out.extend(self.split(&self.masker.mask_bytes(&rest)));
        }
    }

    fn split(&self, mut line: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while line.len() > self.limit {
            let cut = char_boundary(line, self.limit);
            out.push(String::from_utf8_lossy(&line[..cut]).into_owned());
            line = &line[cut..];
        }
        out.push(String::from_utf8_lossy(line).into_owned());
        out
    }
}

/// The largest cut ≤ `at` that does not split a UTF-8 character (or `at` if the bytes are not
/// UTF-8 there).
fn char_boundary(bytes: &[u8], at: usize) -> usize {
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&i| i == 0 || i >= bytes.len() || (bytes[i] & 0xC0) != 0x80)
        .filter(|&i| i > 0)
        .unwrap_or(at)
}

/// Reads one stream to its end, sending its lines.
pub async fn read_stream(
    mut reader: impl AsyncRead + Unpin,
    stream: Stream,
    masker: Masker,
    tx: mpsc::Sender<LogLine>,
) {
    let mut splitter = LineSplitter::new(masker, MAX_LINE_BYTES);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut lines = Vec::new();
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "cannot read the task's output");
                break;
            }
        };
        splitter.push(&chunk[..n], &mut lines);
        if !send(&tx, stream, &mut lines).await {
            return;
        }
    }
    splitter.finish(&mut lines);
    send(&tx, stream, &mut lines).await;
}

async fn send(tx: &mpsc::Sender<LogLine>, stream: Stream, lines: &mut Vec<String>) -> bool {
    let time_ms = ferry_event::now_ms();
    for text in lines.drain(..) {
        let line = LogLine {
            stream,
            time_ms,
            text,
        };
        if tx.send(line).await.is_err() {
            return false;
        }
    }
    true
}

/// What the batcher achieved.
#[derive(Debug, Clone, Copy)]
pub struct LogSummary {
    /// Lines the broker confirmed: seq 0..lines.
    pub lines: u64,
    /// False when a batch could not be published (the bus closed or the launcher shut down);
    /// later lines were read and dropped so that the task never blocks on a full pipe.
    pub complete: bool,
}

/// Identifies the attempt the lines belong to.
#[derive(Debug, Clone)]
pub struct Ids {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
}

/// Publishes the lines received on `rx` as `task.log` batches of at most `batch_lines` lines,
/// one at least every `interval` while lines flow, each confirmed before the next. Ends when
/// every sender is gone.
pub async fn batch(
    shared: Arc<Shared>,
    ids: Ids,
    dir: AttemptDir,
    mut rx: mpsc::Receiver<LogLine>,
) -> LogSummary {
    let max = shared.config.log_batch_lines.max(1);
    let interval: Duration = shared.config.log_batch_interval;
    let mut summary = LogSummary {
        lines: 0,
        complete: true,
    };
    let mut closed = false;
    while !closed {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut lines = vec![first];
        let deadline = Instant::now() + interval;
        while lines.len() < max {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(l) => lines.push(l),
                    None => {
                        closed = true;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !summary.complete {
            continue;
        }
        let n = lines.len() as u64;
        let payload = TaskLog {
            job_id: ids.job_id.clone(),
            task_id: ids.task_id.clone(),
            attempt_id: ids.attempt_id.clone(),
            seq: summary.lines,
            lines,
        };
        let event = shared.builder.task(
            kind::TASK_LOG,
            &ids.job_id,
            &ids.task_id,
            Some(&ids.attempt_id),
            &payload,
        );
        match shared.publisher.publish(&[event]).await {
            Ok(()) => {
                summary.lines += n;
                let file: PathBuf = dir.log_lines_file();
                if let Err(e) = dir.write_log_lines(summary.lines) {
                    tracing::warn!(file = %file.display(), error = %e, "cannot record log progress");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, lost_from_seq = summary.lines, "cannot publish task logs");
                summary.complete = false;
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(masker: Masker, limit: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::new(masker, limit);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn lines_are_split_on_newlines_whatever_the_chunking() {
        let out = split_all(Masker::default(), 1024, &[b"a\r\nb", b"c\n\nd"]);
        assert_eq!(out, ["a", "bc", "", "d"]);
        let out = split_all(Masker::default(), 1024, &[b"\xffok\n"]);
        assert_eq!(out, ["\u{fffd}ok"]);
    }

    #[test]
    fn long_lines_are_cut_at_the_limit_without_splitting_characters() {
        let out = split_all(Masker::default(), 8, &[b"0123456789abcdefXYZ\n"]);
        assert_eq!(out, ["01234567", "89abcdef", "XYZ"]);
        let out = split_all(Masker::default(), 8, &["1234567é89".as_bytes()]);
        assert_eq!(out, ["1234567", "é89"]);
        // A line of exactly the limit, its newline in a later read: no empty line follows.
        let out = split_all(Masker::default(), 8, &[b"01234567", b"\n"]);
        assert_eq!(out, ["01234567"]);
    }

    #[test]
    fn secrets_are_masked_even_across_reads_and_cuts() {
        let m = Masker::new(["SECRET"]);
        let out = split_all(m.clone(), 1024, &[b"x SEC", b"RET y\n"]);
        assert_eq!(out, ["x **** y"]);
        // An unterminated line longer than the limit, with the secret across the cut.
        let out = split_all(m, 8, &[b"012345SE", b"CRET6789", b"abcdefgh"]);
        let joined = out.concat();
        assert!(!joined.contains("SE"), "{out:?}");
        assert!(out.iter().all(|l| l.len() <= 8), "{out:?}");
        assert_eq!(joined, "012345****6789abcdefgh");
    }
}
