//! A task's output as `task.log` batches.
//!
//! The runtime reads each stream of an attempt's output from its backend by position
//! ([`Backend::read_logs`]): cut into lines, masked, numbered across both streams, and published
//! in confirmed batches. Before a batch is published its extent (the next line number and the
//! position where it ends) is recorded in the journal, so that a launcher killed at any moment
//! can publish the same lines under the same numbers again, and then the rest: the log
//! collector stores each number once.
//!
//! How bytes become lines depends only on the bytes, never on how they were read: a line is
//! cut at a newline; a line longer than [`MAX_LINE_BYTES`] plus the longest secret (so that a
//! secret is never cut in two) is cut into pieces as soon as that much of it is there; and the
//! end of a line without a newline is only taken once the task has ended. So a launcher that
//! reads the same bytes again from a recorded extent numbers the same lines again.

use std::sync::Arc;
use std::time::Duration;

use ferry_event::kind;
use ferry_event::payload::{LogLine, Stream, TaskLog};
use ferry_runtime::Backoff;
use tokio::sync::watch;

use crate::Runtime;
use crate::backend::{AttemptError, Backend, Compute};
use crate::journal::{Entry, LogMark};
use crate::secrets::{Masker, char_boundary};

/// Lines longer than this are split into several.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most bytes read from one stream at a time.
const READ_CHUNK: usize = 256 * 1024;
/// The longest wait between two looks at a quiet task's output.
const MAX_POLL: Duration = Duration::from_secs(1);
/// How long the output of an ended attempt may take to arrive in full (a platform's logs lag
/// behind its compute) before the attempt is reported with what arrived.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// One line, and where in its stream the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub end: u64,
}

/// Cuts `bytes`, read at offset `base` of a stream, into masked lines of at most `limit`
/// bytes, stopping at the first line that takes `out` to `max_pieces` or more. `eof` says that
/// nothing more will be written: the last line is taken even without its newline. Returns how
/// many bytes the pieces cover; the rest waits for more output (or the next batch).
pub fn scan(
    bytes: &[u8],
    base: u64,
    eof: bool,
    masker: &Masker,
    limit: usize,
    max_pieces: usize,
    out: &mut Vec<Piece>,
) -> usize {
    let limit = limit.max(4);
    let window = limit + masker.max_len();
    let mut i = 0;
    while i < bytes.len() && out.len() < max_pieces {
        let rest = &bytes[i..];
        let head = &rest[..rest.len().min(window + 1)];
        if let Some(n) = head.iter().position(|&b| b == b'\n') {
            let mut line = &rest[..n];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            i += n + 1;
            split(&masker.mask_bytes(line), limit, base + i as u64, out);
        } else if rest.len() > window {
            let cut = masker.safe_cut(rest, limit);
            i += cut;
            let text = String::from_utf8_lossy(&masker.mask_bytes(&rest[..cut])).into_owned();
            out.push(Piece {
                text,
                end: base + i as u64,
            });
        } else if eof {
            i = bytes.len();
            split(&masker.mask_bytes(rest), limit, base + i as u64, out);
        } else {
            break;
        }
    }
    i
}

/// Pieces of a whole (masked) line, each ending where the line does.
fn split(mut line: &[u8], limit: usize, end: u64, out: &mut Vec<Piece>) {
    loop {
        let cut = if line.len() > limit {
            char_boundary(line, limit)
        } else {
            line.len()
        };
        out.push(Piece {
            text: String::from_utf8_lossy(&line[..cut]).into_owned(),
            end,
        });
        line = &line[cut..];
        if line.is_empty() {
            return;
        }
    }
}

/// Reads an attempt's output through its backend from a mark on.
pub struct Tail {
    backend: Arc<dyn Backend>,
    compute: Compute,
    /// Where the next line starts.
    pub mark: LogMark,
    masker: Masker,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("compute", &self.compute.name)
            .field("mark", &self.mark)
            .finish()
    }
}

/// Lines read, the mark after them, and whether both streams were read to their end.
type Read = (Vec<LogLine>, LogMark, bool);

impl Tail {
    pub fn new(backend: Arc<dyn Backend>, compute: Compute, mark: LogMark, masker: Masker) -> Self {
        Tail {
            backend,
            compute,
            mark,
            masker,
        }
    }

    /// The next lines: stdout's, then stderr's, whole lines only, up to `max_lines` (more only
    /// when one line was cut into more pieces than that). Returns the lines, the mark after
    /// them and whether the output is complete (the compute can write no more and everything
    /// was read); nothing is consumed until [`Self::advance`].
    pub async fn read(&self, max_lines: usize) -> Result<Read, AttemptError> {
        self.read_to(false, max_lines, None).await
    }

    /// The lines between the current mark and `to`, which an earlier run numbered.
    pub async fn read_extent(&self, to: &LogMark) -> Result<Read, AttemptError> {
        self.read_to(true, usize::MAX, Some(to)).await
    }

    pub fn advance(&mut self, to: LogMark) {
        self.mark = to;
    }

    async fn read_to(
        &self,
        ended: bool,
        max_lines: usize,
        to: Option<&LogMark>,
    ) -> Result<Read, AttemptError> {
        let mut lines = Vec::new();
        let mut mark = self.mark.clone();
        let time_ms = ferry_event::now_ms();
        let mut complete = true;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let stop = to.map(|t| match stream {
                Stream::Stdout => t.position.stdout,
                Stream::Stderr => t.position.stderr,
            });
            let (full, done) = self
                .read_stream(&mut mark, stop, ended, max_lines, &mut lines, stream, time_ms)
                .await?;
            complete &= done;
            if full {
                complete = false;
                break;
            }
        }
        mark.seq = self.mark.seq + lines.len() as u64;
        Ok((lines, mark, complete))
    }

    /// Reads lines of one stream from `mark` into `lines`, moving `mark`; returns whether
    /// `max_lines` was reached and whether the stream was read to its end.
    #[allow(clippy::too_many_arguments)]
    async fn read_stream(
        &self,
        mark: &mut LogMark,
        stop: Option<u64>,
        ended: bool,
        max_lines: usize,
        lines: &mut Vec<LogLine>,
        stream: Stream,
        time_ms: i64,
    ) -> Result<(bool, bool), AttemptError> {
        let chunk = READ_CHUNK.max(2 * (MAX_LINE_BYTES + self.masker.max_len()));
        let mut pieces = Vec::new();
        loop {
            let pos = match stream {
                Stream::Stdout => mark.position.stdout,
                Stream::Stderr => mark.position.stderr,
            };
            if stop.is_some_and(|s| pos >= s) {
                return Ok((false, false));
            }
            let read = self
                .backend
                .read_logs(&self.compute, stream, &mark.position, chunk)
                .await?;
            mark.position.cursor = read.cursor;
            if read.bytes.is_empty() {
                return Ok((false, read.complete));
            }
            let at_end = read.bytes.len() < chunk;
            pieces.clear();
            let used = scan(
                &read.bytes,
                pos,
                ended || read.complete,
                &self.masker,
                MAX_LINE_BYTES,
                // No more than the batch can take (plus one line's pieces kept together).
                max_lines.saturating_sub(lines.len()).max(1),
                &mut pieces,
            );
            let mut i = 0;
            while i < pieces.len() {
                // The pieces of one line go together.
                let end = pieces[i].end;
                let j = i + pieces[i..].iter().take_while(|p| p.end == end).count();
                if stop.is_some_and(|s| end > s) {
                    return Ok((false, false));
                }
                if !lines.is_empty() && lines.len() + (j - i) > max_lines {
                    return Ok((true, false));
                }
                lines.extend(pieces[i..j].iter().map(|p| LogLine {
                    stream,
                    time_ms,
                    text: p.text.clone(),
                }));
                match stream {
                    Stream::Stdout => mark.position.stdout = end,
                    Stream::Stderr => mark.position.stderr = end,
                }
                i = j;
            }
            if lines.len() >= max_lines {
                return Ok((true, false));
            }
            let everything = pos + read.bytes.len() as u64
                == match stream {
                    Stream::Stdout => mark.position.stdout,
                    Stream::Stderr => mark.position.stderr,
                };
            if at_end || used == 0 {
                return Ok((false, read.complete && everything));
            }
        }
    }
}

/// What the tail achieved.
#[derive(Debug, Clone, Default)]
pub struct LogSummary {
    /// Lines the broker confirmed: seq 0..lines.
    pub lines: u64,
    /// False when a batch could not be published (the bus closed or the launcher shut down)
    /// or the output could not be read: the rest is still with the compute, from the
    /// journal's last mark.
    pub complete: bool,
    /// Why the output could not be kept (the journal cannot record where its lines are: a
    /// full disk): the attempt is then `lost` with this error, never a success whose output
    /// is gone.
    pub failure: Option<String>,
}

impl LogSummary {
    fn incomplete(tail: &Tail) -> Self {
        LogSummary {
            lines: tail.mark.seq,
            complete: false,
            failure: None,
        }
    }

    fn complete(tail: &Tail) -> Self {
        LogSummary {
            lines: tail.mark.seq,
            complete: true,
            failure: None,
        }
    }
}

/// The error of an attempt whose output the journal at `path` could not record.
fn journal_failure(path: &std::path::Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let full = matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded);
    format!(
        "cannot record the attempt's output in the journal {}: {e}{}",
        path.display(),
        if full {
            "; the disk is full: free space on it (the attempt is retried, and its output was not kept)"
        } else {
            ""
        }
    )
}

/// Identifies the attempt the lines belong to.
#[derive(Debug, Clone)]
pub struct Ids {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    /// The job's namespace, when the dispatch named one (unknown for compute adopted after a
    /// restart: the log collector then takes the one the attempt's earlier lines carried).
    pub namespace: Option<String>,
}

impl Ids {
    /// The ids a dispatch names.
    pub fn of(d: &ferry_event::payload::TaskDispatched) -> Ids {
        Ids {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            namespace: d.namespace.clone(),
        }
    }
}

/// Publishes the output of an attempt as it grows, until `ended` turns true (the compute can
/// write no more) and everything was read. A quiet task is looked at less and less often (from
/// the batch interval up to a second); output resets the pace.
///
/// When the output cannot be kept ([`LogSummary::failure`]) it stops at once and cancels
/// `failed`, so that the attempt is ended rather than left running with its output unkept.
pub(crate) async fn follow(
    rt: Arc<Runtime>,
    ids: Ids,
    mut tail: Tail,
    mut ended: watch::Receiver<bool>,
    failed: tokio_util::sync::CancellationToken,
) -> LogSummary {
    let base = rt.config.log_batch_interval.max(Duration::from_millis(1));
    let mut pace = Backoff::new(base, MAX_POLL.max(base));
    // Set once the compute can write no more: from then on only what is left is read.
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        // The first look waits too: a task that has only just started has printed nothing,
        // and most end before the first pause is over.
        let wait = pace.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ended.changed(), if draining.is_none() => {}
        }
        if draining.is_none() && *ended.borrow_and_update() {
            draining = Some(tokio::time::Instant::now());
        }
        let complete = match drain(&rt, &ids, &mut tail).await {
            Ok((published, complete)) => {
                if published > 0 {
                    pace.reset();
                }
                complete
            }
            Err(summary) => {
                if summary.failure.is_some() {
                    failed.cancel();
                }
                return summary;
            }
        };
        if let Some(since) = draining {
            if !complete && since.elapsed() < DRAIN_LIMIT {
                continue;
            }
            if !complete {
                tracing::warn!(
                    published = tail.mark.seq,
                    "the compute's output did not arrive in full; reporting the attempt with what did"
                );
            }
            return LogSummary::complete(&tail);
        }
    }
}

/// Publishes the lines an earlier run numbered but may not have published (the same numbers
/// again), then everything else. For an attempt whose compute can write no more.
pub(crate) async fn finish_recovered(
    rt: &Runtime,
    ids: &Ids,
    tail: &mut Tail,
    numbered: &LogMark,
) -> LogSummary {
    let incomplete = LogSummary::incomplete;
    if numbered.seq > tail.mark.seq {
        let (lines, mark, _) = match tail.read_extent(numbered).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the attempt's output");
                return incomplete(tail);
            }
        };
        if mark.seq != numbered.seq
            || mark.position.stdout != numbered.position.stdout
            || mark.position.stderr != numbered.position.stderr
        {
            tracing::warn!(
                expected = ?numbered,
                found = ?mark,
                "the output does not hold the lines recorded; publishing what it holds"
            );
        }
        if let Err(e) = publish(rt, ids, tail.mark.seq, lines).await {
            tracing::warn!(error = %e, lost_from_seq = tail.mark.seq, "cannot publish task logs");
            return incomplete(tail);
        }
        tail.advance(mark);
    }
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    let mut pause = Backoff::new(Duration::from_millis(20), MAX_POLL);
    loop {
        match drain(rt, ids, tail).await {
            Ok((_, true)) => break,
            Ok(_) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(
                    "the compute's output did not arrive in full; reporting the attempt with what did"
                );
                break;
            }
            Ok(_) => {
                if !pause.wait(&rt.stop).await {
                    return incomplete(tail);
                }
            }
            Err(summary) => return summary,
        }
    }
    LogSummary::complete(tail)
}

/// Publishes batches until the output holds no more complete lines. Returns the lines
/// published and whether the output is complete.
async fn drain(rt: &Runtime, ids: &Ids, tail: &mut Tail) -> Result<(u64, bool), LogSummary> {
    let max = rt.config.log_batch_lines.max(1);
    let mut published = 0;
    loop {
        let (lines, mark, complete) = match tail.read(max).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the attempt's output");
                return Err(LogSummary::incomplete(tail));
            }
        };
        if lines.is_empty() {
            tail.advance(mark);
            return Ok((published, complete));
        }
        let n = lines.len() as u64;
        // Lines published without their extent in the journal could not be published again
        // under the same numbers after a crash, and a journal that cannot take this record
        // cannot take the report either: the attempt ends here, loudly, rather than run on
        // to a success whose output is not kept.
        if let Err(e) = rt.journal.record(&ids.attempt_id, Entry::Logs(mark.clone())) {
            let failure = journal_failure(rt.journal.path(), &e);
            tracing::error!(error = %failure, "cannot record log progress; ending the attempt");
            return Err(LogSummary {
                failure: Some(failure),
                ..LogSummary::incomplete(tail)
            });
        }
        if let Err(e) = publish(rt, ids, tail.mark.seq, lines).await {
            tracing::warn!(error = %e, lost_from_seq = tail.mark.seq, "cannot publish task logs");
            return Err(LogSummary::incomplete(tail));
        }
        tail.advance(mark);
        published += n;
        // A batch may end early (a line's pieces kept together, stderr left for the next
        // batch): only an empty read says that everything was read.
    }
}

async fn publish(rt: &Runtime, ids: &Ids, seq: u64, lines: Vec<LogLine>) -> Result<(), ferry_bus::Error> {
    let payload = TaskLog {
        job_id: ids.job_id.clone(),
        task_id: ids.task_id.clone(),
        attempt_id: ids.attempt_id.clone(),
        seq,
        lines,
        namespace: ids.namespace.clone(),
    };
    let event = rt.builder.task(
        kind::TASK_LOG,
        &ids.job_id,
        &ids.task_id,
        Some(&ids.attempt_id),
        &payload,
    );
    rt.publisher.publish(&[event]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(masker: &Masker, limit: usize, bytes: &[u8], eof: bool) -> (Vec<(String, u64)>, usize) {
        let mut out = Vec::new();
        let used = scan(bytes, 0, eof, masker, limit, usize::MAX, &mut out);
        (out.into_iter().map(|p| (p.text, p.end)).collect(), used)
    }

    fn texts(pieces: &[(String, u64)]) -> Vec<&str> {
        pieces.iter().map(|(t, _)| t.as_str()).collect()
    }

    #[test]
    fn lines_end_at_newlines_and_the_last_waits_for_the_end() {
        let m = Masker::default();
        let (p, used) = scan_all(&m, 1024, b"a\r\nbc\n\nd", false);
        assert_eq!(texts(&p), ["a", "bc", ""]);
        assert_eq!(used, 7);
        assert_eq!(p.iter().map(|x| x.1).collect::<Vec<_>>(), [3, 6, 7]);
        let (p, used) = scan_all(&m, 1024, b"a\nd", true);
        assert_eq!(texts(&p), ["a", "d"]);
        assert_eq!(used, 3);
        let (p, _) = scan_all(&m, 1024, b"\xffok\n", false);
        assert_eq!(texts(&p), ["\u{fffd}ok"]);
    }

    #[test]
    fn long_lines_are_cut_without_splitting_characters() {
        let m = Masker::default();
        let (p, _) = scan_all(&m, 8, b"0123456789abcdefXYZ\n", true);
        assert_eq!(texts(&p), ["01234567", "89abcdef", "XYZ"]);
        let (p, _) = scan_all(&m, 8, "1234567é89".as_bytes(), true);
        assert_eq!(texts(&p), ["1234567", "é89"]);
        let (p, _) = scan_all(&m, 8, b"01234567\n", false);
        assert_eq!(
            texts(&p),
            ["01234567"],
            "no empty line after a line of exactly the limit"
        );
    }

    #[test]
    fn the_same_bytes_give_the_same_lines_however_they_are_read() {
        let m = Masker::new(["SECRET"]);
        let text = b"short\nx SECRET y\n0123456789abcSECRETdefghijklmnop and more\nend";
        let (whole, _) = scan_all(&m, 16, text, true);
        for cut in 0..text.len() {
            let mut out = Vec::new();
            let used = scan(&text[..cut], 0, false, &m, 16, usize::MAX, &mut out);
            let mut rest = Vec::new();
            scan(&text[used..], used as u64, true, &m, 16, usize::MAX, &mut rest);
            out.extend(rest);
            let got: Vec<(String, u64)> = out.into_iter().map(|p| (p.text, p.end)).collect();
            assert_eq!(got, whole, "read in two parts at {cut}");
        }
        assert!(whole.iter().all(|(t, _)| !t.contains("SEC")), "{whole:?}");
    }

    #[test]
    fn a_scan_stops_at_its_budget_on_a_line_boundary() {
        let m = Masker::default();
        let mut out = Vec::new();
        let used = scan(b"a\nb\nc\nd", 0, true, &m, 1024, 2, &mut out);
        assert_eq!(
            out.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(used, 4);
    }

    #[test]
    fn secrets_are_never_cut_in_two() {
        let m = Masker::new(["SECRET"]);
        let (p, _) = scan_all(&m, 8, b"012345SECRET6789abcdefgh", true);
        let joined: String = texts(&p).concat();
        assert!(!joined.contains("SE"), "{p:?}");
        assert_eq!(joined, "012345****6789abcdefgh");
    }

    /// Output held in memory, read by offset, with a cursor counting reads: the backend side
    /// of a tail.
    struct Held {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        ended: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Backend for Held {
        fn name(&self) -> &'static str {
            "held"
        }
        fn shutdown_policy(&self) -> crate::backend::ShutdownPolicy {
            crate::backend::ShutdownPolicy::Detach
        }
        fn check(&self, _: &ferry_event::payload::TaskDispatched) -> Result<(), AttemptError> {
            Ok(())
        }
        async fn create(&self, _: crate::backend::Task<'_>, c: Compute) -> Result<Compute, AttemptError> {
            Ok(c)
        }
        async fn find(&self, c: &Compute) -> Result<Option<Compute>, AttemptError> {
            Ok(Some(c.clone()))
        }
        async fn status(&self, _: &Compute) -> Result<crate::backend::ComputeState, AttemptError> {
            Ok(crate::backend::ComputeState::Running)
        }
        async fn read_logs(
            &self,
            _: &Compute,
            stream: Stream,
            from: &crate::backend::LogPosition,
            max_bytes: usize,
        ) -> Result<crate::backend::LogRead, AttemptError> {
            let (all, at) = match stream {
                Stream::Stdout => (&self.stdout, from.stdout as usize),
                Stream::Stderr => (&self.stderr, from.stderr as usize),
            };
            let bytes = all[at.min(all.len())..]
                .iter()
                .take(max_bytes)
                .copied()
                .collect::<Vec<_>>();
            Ok(crate::backend::LogRead {
                complete: self.ended.load(std::sync::atomic::Ordering::SeqCst)
                    && at + bytes.len() == all.len(),
                cursor: serde_json::json!({"read": at + bytes.len()}),
                bytes,
            })
        }
        async fn stop(&self, _: &Compute, _: Duration) -> Result<(), AttemptError> {
            self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        async fn collect(
            &self,
            _: &Compute,
            _: crate::backend::Task<'_>,
        ) -> Result<crate::backend::Collected, AttemptError> {
            Ok(Default::default())
        }
        async fn release(&self, _: &Compute) -> Result<(), AttemptError> {
            Ok(())
        }
        async fn list_owned(&self) -> Result<Vec<Compute>, AttemptError> {
            Ok(Vec::new())
        }
    }

    fn at(seq: u64, stdout: u64, stderr: u64) -> (u64, u64, u64) {
        (seq, stdout, stderr)
    }

    fn where_(m: &LogMark) -> (u64, u64, u64) {
        (m.seq, m.position.stdout, m.position.stderr)
    }

    fn texts_of(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[tokio::test]
    async fn a_tail_reads_whole_lines_up_to_the_batch_size_and_an_extent_again() {
        let held = Arc::new(Held {
            stdout: b"o1\no2\no3\npartial".to_vec(),
            stderr: b"e1\n".to_vec(),
            ended: false.into(),
        });
        let compute = Compute::named("ferry-a");
        let mut tail = Tail::new(
            held.clone(),
            compute.clone(),
            LogMark::default(),
            Masker::default(),
        );
        let (lines, mark, complete) = tail.read(2).await.unwrap();
        assert_eq!(texts_of(&lines), ["o1", "o2"]);
        assert_eq!((where_(&mark), complete), (at(2, 6, 0), false));
        tail.advance(mark);
        let (lines, mark, _) = tail.read(10).await.unwrap();
        assert_eq!(texts_of(&lines), ["o3", "e1"]);
        assert_eq!(lines[1].stream, Stream::Stderr);
        assert_eq!(where_(&mark), at(4, 9, 3));
        assert_eq!(
            mark.position.cursor,
            serde_json::json!({"read": 3}),
            "the last read's cursor is kept"
        );

        // A later run reads the same extent again from the earlier mark.
        let mut from = LogMark::default();
        (from.seq, from.position.stdout) = (2, 6);
        let again = Tail::new(held.clone(), compute.clone(), from, Masker::default());
        let (lines2, mark2, _) = again.read_extent(&mark).await.unwrap();
        assert_eq!(texts_of(&lines2), ["o3", "e1"]);
        assert_eq!(where_(&mark2), where_(&mark));

        tail.advance(mark);
        let (lines, _, complete) = tail.read(10).await.unwrap();
        assert!(lines.is_empty() && !complete, "a line without its end waits");
        held.stop(&compute, Duration::ZERO).await.unwrap();
        let (lines, mark, complete) = tail.read(10).await.unwrap();
        assert_eq!(texts_of(&lines), ["partial"]);
        assert_eq!((where_(&mark), complete), (at(5, 16, 3), true));
    }
}
