//! A task's output as `task.log` batches.
//!
//! The task writes stdout and stderr to files in its slot. They are read as they grow: cut into
//! lines, masked, numbered across both streams, and published in confirmed batches. Before a
//! batch is published its extent (the next line number and where it ends in each file) is
//! recorded in the journal, so that a launcher killed at any moment can publish the same lines
//! under the same numbers again, and then the rest: the log collector stores each number once.
//! How bytes become lines is [`ferry_launcher::logs`]' job.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use ferry_event::kind;
use ferry_event::payload::{LogLine, Stream, TaskLog};
use ferry_launcher::logs::{MAX_LINE_BYTES, scan};
use ferry_launcher::secrets::Masker;
use tokio::sync::watch;

use crate::Shared;
use crate::state::{Entry, LogMark};

/// Most bytes read from one stream at a time.
const READ_CHUNK: usize = 256 * 1024;
/// The longest wait between two looks at a quiet task's output.
const MAX_POLL: Duration = Duration::from_secs(1);

/// Reads a task's output files from a mark on.
#[derive(Debug)]
pub struct Tail {
    out: File,
    err: File,
    /// Where the next line starts.
    pub mark: LogMark,
    masker: Masker,
}

impl Tail {
    pub fn new(out: File, err: File, mark: LogMark, masker: Masker) -> Self {
        Tail {
            out,
            err,
            mark,
            masker,
        }
    }

    /// The next lines: stdout's, then stderr's, whole lines only, up to `max_lines` (more
    /// only when one line was cut into more pieces than that). `ended` says that the task can
    /// write no more. Returns the lines and the mark after them; nothing is consumed until
    /// [`Self::advance`].
    pub fn read(&self, ended: bool, max_lines: usize) -> io::Result<(Vec<LogLine>, LogMark)> {
        self.read_to(ended, max_lines, None)
    }

    /// The lines between the current mark and `to`, which an earlier run numbered.
    pub fn read_extent(&self, to: LogMark) -> io::Result<(Vec<LogLine>, LogMark)> {
        self.read_to(true, usize::MAX, Some(to))
    }

    pub fn advance(&mut self, to: LogMark) {
        self.mark = to;
    }

    fn read_to(
        &self,
        ended: bool,
        max_lines: usize,
        to: Option<LogMark>,
    ) -> io::Result<(Vec<LogLine>, LogMark)> {
        let mut lines = Vec::new();
        let mut mark = self.mark;
        let time_ms = ferry_event::now_ms();
        for (file, stream) in [(&self.out, Stream::Stdout), (&self.err, Stream::Stderr)] {
            let (pos, stop) = match stream {
                Stream::Stdout => (&mut mark.out, to.map(|t| t.out)),
                Stream::Stderr => (&mut mark.err, to.map(|t| t.err)),
            };
            let full = self.read_stream(file, pos, stop, ended, max_lines, &mut lines, stream, time_ms)?;
            if full {
                break;
            }
        }
        mark.seq = self.mark.seq + lines.len() as u64;
        Ok((lines, mark))
    }

    /// Reads lines of one stream from `*pos` into `lines`, moving `*pos`; returns whether
    /// `max_lines` was reached.
    #[allow(clippy::too_many_arguments)]
    fn read_stream(
        &self,
        file: &File,
        pos: &mut u64,
        stop: Option<u64>,
        ended: bool,
        max_lines: usize,
        lines: &mut Vec<LogLine>,
        stream: Stream,
        time_ms: i64,
    ) -> io::Result<bool> {
        let chunk = READ_CHUNK.max(2 * (MAX_LINE_BYTES + self.masker.max_len())) as u64;
        let mut buf = Vec::new();
        let mut pieces = Vec::new();
        loop {
            if stop.is_some_and(|s| *pos >= s) {
                return Ok(false);
            }
            // Most tasks print little or nothing: the buffer is sized to what is there.
            let size = file.metadata()?.len();
            if size <= *pos {
                return Ok(false);
            }
            let want = (size - *pos).min(chunk);
            buf.resize(want as usize, 0);
            let n = read_at(file, &mut buf, *pos)?;
            let at_end = (n as u64) < chunk;
            pieces.clear();
            let used = scan(
                &buf[..n],
                *pos,
                ended && at_end,
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
                    return Ok(false);
                }
                if !lines.is_empty() && lines.len() + (j - i) > max_lines {
                    return Ok(true);
                }
                lines.extend(pieces[i..j].iter().map(|p| LogLine {
                    stream,
                    time_ms,
                    text: p.text.clone(),
                }));
                *pos = end;
                i = j;
            }
            if lines.len() >= max_lines {
                return Ok(true);
            }
            if at_end || used == 0 {
                return Ok(false);
            }
        }
    }
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What the tail achieved.
#[derive(Debug, Clone, Copy)]
pub struct LogSummary {
    /// Lines the broker confirmed: seq 0..lines.
    pub lines: u64,
    /// False when a batch could not be published (the bus closed or the launcher shut down):
    /// the rest is still in the files, from the journal's last mark.
    pub complete: bool,
}

/// Identifies the attempt the lines belong to.
#[derive(Debug, Clone)]
pub struct Ids {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
}

/// Publishes the output of an attempt as it grows, until `ended` turns true (the task's
/// processes are gone) and everything was read. A quiet task is looked at less and less often
/// (from the batch interval up to a second); output resets the pace.
pub async fn follow(
    shared: Arc<Shared>,
    ids: Ids,
    mut tail: Tail,
    mut ended: watch::Receiver<bool>,
) -> LogSummary {
    let base = shared.config.log_batch_interval.max(Duration::from_millis(1));
    let mut pause = base;
    loop {
        // The first look waits too: a task that has only just started has printed nothing,
        // and most end before the first pause is over.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = ended.changed() => {}
        }
        let done = *ended.borrow_and_update();
        match drain(&shared, &ids, &mut tail, done).await {
            Ok(0) => pause = (pause * 2).min(MAX_POLL),
            Ok(_) => pause = base,
            Err(summary) => return summary,
        }
        if done {
            return LogSummary {
                lines: tail.mark.seq,
                complete: true,
            };
        }
    }
}

/// Publishes the lines an earlier run numbered but may not have published (the same numbers
/// again), then everything else in the files. For an attempt whose processes are gone.
pub async fn finish_recovered(shared: &Shared, ids: &Ids, tail: &mut Tail, numbered: LogMark) -> LogSummary {
    if numbered.seq > tail.mark.seq {
        let extent = tail.read_extent(numbered);
        let (lines, mark) = match extent {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the attempt's output files");
                return LogSummary {
                    lines: tail.mark.seq,
                    complete: false,
                };
            }
        };
        if mark != numbered {
            tracing::warn!(
                expected = ?numbered,
                found = ?mark,
                "the output files do not hold the lines recorded; publishing what they hold"
            );
        }
        if let Err(e) = publish(shared, ids, tail.mark.seq, lines).await {
            tracing::warn!(error = %e, lost_from_seq = tail.mark.seq, "cannot publish task logs");
            return LogSummary {
                lines: tail.mark.seq,
                complete: false,
            };
        }
        tail.advance(mark);
    }
    match drain(shared, ids, tail, true).await {
        Ok(_) => LogSummary {
            lines: tail.mark.seq,
            complete: true,
        },
        Err(summary) => summary,
    }
}

/// Publishes batches until the files hold no more complete lines. Returns the lines published.
async fn drain(shared: &Shared, ids: &Ids, tail: &mut Tail, ended: bool) -> Result<u64, LogSummary> {
    let max = shared.config.log_batch_lines.max(1);
    let mut published = 0;
    loop {
        let incomplete = |tail: &Tail| LogSummary {
            lines: tail.mark.seq,
            complete: false,
        };
        let (lines, mark) = match tail.read(ended, max) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the attempt's output files");
                return Err(incomplete(tail));
            }
        };
        if lines.is_empty() {
            return Ok(published);
        }
        let n = lines.len() as u64;
        if let Err(e) = shared.journal.record(&ids.attempt_id, Entry::Logs(mark)) {
            tracing::warn!(error = %e, "cannot record log progress; publishing anyway");
        }
        if let Err(e) = publish(shared, ids, tail.mark.seq, lines).await {
            tracing::warn!(error = %e, lost_from_seq = tail.mark.seq, "cannot publish task logs");
            return Err(incomplete(tail));
        }
        tail.advance(mark);
        published += n;
        // A batch may end early (a line's pieces kept together, stderr left for the next
        // batch): only an empty read says that everything was read.
    }
}

async fn publish(shared: &Shared, ids: &Ids, seq: u64, lines: Vec<LogLine>) -> Result<(), ferry_bus::Error> {
    let payload = TaskLog {
        job_id: ids.job_id.clone(),
        task_id: ids.task_id.clone(),
        attempt_id: ids.attempt_id.clone(),
        seq,
        lines,
    };
    let event = shared.builder.task(
        kind::TASK_LOG,
        &ids.job_id,
        &ids.task_id,
        Some(&ids.attempt_id),
        &payload,
    );
    shared.publisher.publish(&[event]).await
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_tail_reads_whole_lines_up_to_the_batch_size_and_an_extent_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = File::create(dir.path().join("o")).unwrap();
        let mut err = File::create(dir.path().join("e")).unwrap();
        out.write_all(b"o1\no2\no3\npartial").unwrap();
        err.write_all(b"e1\n").unwrap();
        let open = |n: &str| File::open(dir.path().join(n)).unwrap();
        let mut tail = Tail::new(open("o"), open("e"), LogMark::default(), Masker::default());
        let (lines, mark) = tail.read(false, 2).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["o1", "o2"]
        );
        assert_eq!(
            mark,
            LogMark {
                seq: 2,
                out: 6,
                err: 0
            }
        );
        tail.advance(mark);
        let (lines, mark) = tail.read(false, 10).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["o3", "e1"]
        );
        assert_eq!(lines[1].stream, Stream::Stderr);
        assert_eq!(
            mark,
            LogMark {
                seq: 4,
                out: 9,
                err: 3
            }
        );

        // A later run reads the same extent again from the earlier mark.
        let again = Tail::new(
            open("o"),
            open("e"),
            LogMark {
                seq: 2,
                out: 6,
                err: 0,
            },
            Masker::default(),
        );
        let (lines2, mark2) = again.read_extent(mark).unwrap();
        assert_eq!(
            lines2.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["o3", "e1"]
        );
        assert_eq!(mark2, mark);

        tail.advance(mark);
        let (lines, _) = tail.read(false, 10).unwrap();
        assert!(lines.is_empty(), "a line without its end waits");
        let (lines, mark) = tail.read(true, 10).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["partial"]
        );
        assert_eq!(
            mark,
            LogMark {
                seq: 5,
                out: 16,
                err: 3
            }
        );
    }
}
