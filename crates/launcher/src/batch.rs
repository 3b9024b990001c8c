//! What the cloud batch backends (aws-batch, google-batch) share.
//!
//! - A task's command and environment ([`Filled`], [`check`]): a batch job's definition is
//!   shown to anyone allowed to read the job, so what holds a secret is set apart when the
//!   templates are filled, and reaches the job through its staging bucket, as a script its
//!   wrapper sources and deletes before the task starts.
//! - A job's log as the platform's API pages it ([`LogPages`]): lines read in batches from a
//!   position the platform understands (a token, an entry's key), counted in bytes, with the
//!   cursor the runtime journals; both streams in that one log ([`merged_stderr`]).
//! - An attempt's files staged in a bucket ([`stage_prefix`], [`collect_staged`],
//!   [`remove_staged`]): under a prefix of its own, read back bounded, output files extracted
//!   with every backend's checks, removed on release.
//! - The state of every job in flight, read by one task ([`Poller`]) in rounds, once per poll
//!   interval or sooner when notifications hint that jobs changed; each backend says how its
//!   platform reads jobs ([`Reader`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use ferry_artifacts::Store;
use ferry_event::payload::TaskDispatched;
use ferry_event::template::{Part, Template};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::archive::{ExtractError, Limits};
use crate::backend::{AttemptError, BackendResult, Collected, LogPosition, LogRead, Task};
use crate::collect::{MAX_OUTPUTS_BYTES, MAX_SUBTASKS_BYTES};

/// A task's command and environment, filled; what holds a secret apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    pub command: Vec<String>,
    /// Whether an argument of the command holds a secret: then the whole command goes through
    /// the staging bucket.
    pub command_secret: bool,
    /// The variables that hold no secret, with `FERRY_JOB_ID`, `FERRY_TASK_ID` and
    /// `FERRY_ATTEMPT_ID`: the job's definition may show them.
    pub env: Vec<(String, String)>,
    /// The variables that hold a secret.
    pub secret_env: Vec<(String, String)>,
}

impl Filled {
    /// Every template of the task's command and environment filled (a job's working directory
    /// is only known inside it: [`check`] refuses `{{ workingDir }}` first).
    pub fn new(task: Task<'_>) -> BackendResult<Filled> {
        let d = task.dispatch;
        let fill = |t: &Template, field: &str| task.fill(t, field, "");
        let command = d
            .command
            .iter()
            .enumerate()
            .map(|(i, t)| fill(t, &format!("command[{i}]")))
            .collect::<BackendResult<Vec<_>>>()?;
        let command_secret = d.command.iter().any(|t| t.secrets().next().is_some());
        let mut env: Vec<(String, String)> = Vec::with_capacity(d.env.len() + 3);
        let mut secret_env = Vec::new();
        for (name, t) in &d.env {
            let value = fill(t, &format!("env.{name}"))?;
            if t.secrets().next().is_some() {
                secret_env.push((name.clone(), value));
            } else {
                env.push((name.clone(), value));
            }
        }
        env.push(("FERRY_JOB_ID".into(), d.job_id.clone()));
        env.push(("FERRY_TASK_ID".into(), d.task_id.clone()));
        env.push(("FERRY_ATTEMPT_ID".into(), d.attempt_id.clone()));
        Ok(Filled {
            command,
            command_secret,
            env,
            secret_env,
        })
    }

    /// Whether anything of the task's holds a secret.
    pub fn has_secrets(&self) -> bool {
        self.command_secret || !self.secret_env.is_empty()
    }

    /// The script the job's wrapper sources before it runs the task: the variables holding a
    /// secret exported, and the command as its arguments when an argument holds one. Refused
    /// when a variable holding a secret has a name `sh` cannot set.
    pub fn secrets_script(&self) -> BackendResult<String> {
        let mut script = String::new();
        for (name, value) in &self.secret_env {
            if !is_shell_name(name) {
                return Err(AttemptError::Task(format!(
                    "env.{name} holds a secret, and {name:?} is not a name the job's shell can set"
                )));
            }
            script.push_str(&format!("export {name}={}\n", quoted(value)));
        }
        if self.command_secret {
            let words: Vec<String> = self.command.iter().map(|a| quoted(a)).collect();
            script.push_str(&format!("set -- {}\n", words.join(" ")));
        }
        Ok(script)
    }
}

/// How a batch backend names itself and its platform in what [`check`] refuses.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// The backend: `aws-batch`.
    pub backend: &'static str,
    /// The permission that shows a job's definition: `batch:DescribeJobs`.
    pub reader: &'static str,
    /// Where a staging bucket is named: `runner.bucket, or the launcher's --aws-batch-staging
    /// s3://BUCKET[/PREFIX]`.
    pub staging: &'static str,
    /// The platform's own way to a secret: `Or give the job's role … access to the secret in
    /// AWS Secrets Manager and read it from the task`.
    pub secret_store: &'static str,
    /// Why the job's working directory cannot be filled in.
    pub no_working_dir: &'static str,
}

/// What a batch backend refuses in a task's command and environment before anything exists:
/// a secret without a staging bucket to pass it through (`staged`), a variable holding a
/// secret that the wrapper's shell cannot set, and `{{ workingDir }}`.
pub fn check(d: &TaskDispatched, staged: bool, platform: &Platform) -> BackendResult<()> {
    let Platform {
        backend,
        reader,
        staging,
        secret_store,
        no_working_dir,
    } = platform;
    let fields = d
        .command
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("command[{i}]"), t))
        .chain(d.env.iter().map(|(k, t)| (format!("env.{k}"), t)));
    for (field, t) in fields {
        if let Some(name) = t.secrets().next() {
            if !staged {
                return Err(AttemptError::Task(format!(
                    "{field} uses secret('{name}'), which this {backend} launcher refuses: a job's command and \
                     environment are shown to anyone allowed {reader}, and the task has no staging bucket to \
                     pass secrets through instead ({staging}). {secret_store}"
                )));
            }
            if let Some(var) = field.strip_prefix("env.")
                && !is_shell_name(var)
            {
                return Err(AttemptError::Task(format!(
                    "{field} uses secret('{name}'): on {backend} a variable holding a secret is set by the job's \
                     shell, and {var:?} is not a name it can set (letters, digits and _, not starting with a digit)"
                )));
            }
        }
        if t.0.iter().any(|p| matches!(p, Part::WorkingDir)) {
            return Err(AttemptError::Task(format!(
                "{field} uses {{{{ workingDir }}}}, which the {backend} backend cannot fill: {no_working_dir}"
            )));
        }
    }
    Ok(())
}

/// Whether `name` is a variable `sh` can set.
pub fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `value` as one word of `sh`, whatever it holds.
pub fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A read of standard error where the platform merges both streams into the one log that
/// arrives as standard output: nothing, ever, so complete at once, with the cursor left where
/// standard output's reads put it (the two streams share it). No call is made.
pub fn merged_stderr(from: &LogPosition) -> LogRead {
    LogRead {
        bytes: Vec::new(),
        cursor: from.cursor.clone(),
        complete: true,
    }
}

/// The lines of a job's log read so far that are still wanted, as bytes: each line and a
/// newline, in the log's order, from its head.
///
/// The platform's API reads the log in batches from a position `P` of its own (a page token,
/// the key of the last entry read). Each batch held remembers the position it was read from and
/// the offset of its first byte: that pair is the cursor the runtime journals, so that after a
/// restart the same read brings the same lines again, and the bytes before the journaled
/// offset are skipped.
#[derive(Debug, Clone)]
pub struct LogPages<P> {
    /// Each batch's position and the offset of its first byte, in order; the bytes held begin
    /// at the first one's.
    batches: Vec<(P, u64)>,
    bytes: Vec<u8>,
    /// The position of the next read.
    next: P,
    /// The offset of `bytes[0]`.
    base: u64,
}

impl<P: Clone> LogPages<P> {
    /// A log read on from `next`, where the bytes from offset `at` begin: a cursor journaled
    /// before a restart, or the head and 0.
    pub fn new(next: P, at: u64) -> LogPages<P> {
        LogPages {
            batches: Vec::new(),
            bytes: Vec::new(),
            next,
            base: at,
        }
    }

    /// The position the next read starts from.
    pub fn next(&self) -> &P {
        &self.next
    }

    /// The offset after the last byte held.
    pub fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Whether a read from `from` can be served: the runtime never reads behind what it
    /// journaled, and what is before the first batch held is gone.
    pub fn reaches(&self, from: u64) -> bool {
        from >= self.base
    }

    /// Whether every byte held was read past `from`.
    pub fn drained_at(&self, from: u64) -> bool {
        from >= self.end()
    }

    /// Adds the lines a read from [`LogPages::next`] brought, and where the read after it
    /// starts. Returns whether there was any line.
    pub fn push<S: AsRef<str>>(&mut self, lines: impl IntoIterator<Item = S>, next: P) -> bool {
        let at = self.end();
        for line in lines {
            self.bytes.extend_from_slice(line.as_ref().as_bytes());
            self.bytes.push(b'\n');
        }
        let any = self.end() > at;
        if any {
            let from = std::mem::replace(&mut self.next, next);
            self.batches.push((from, at));
        } else {
            self.next = next;
        }
        any
    }

    /// The bytes from `from` on, at most `max`, and the cursor to journal with them (the
    /// position of the batch holding `from`, and that batch's offset). Drops the batches wholly
    /// before `from`.
    pub fn read(&mut self, from: u64, max: usize) -> (Vec<u8>, (P, u64)) {
        let keep = self.batches.iter().rposition(|(_, at)| *at <= from).unwrap_or(0);
        if keep > 0 {
            let cut = (self.batches[keep].1 - self.base) as usize;
            self.bytes.drain(..cut);
            self.base = self.batches[keep].1;
            self.batches.drain(..keep);
        }
        let cursor = self
            .batches
            .first()
            .cloned()
            .unwrap_or_else(|| (self.next.clone(), self.base));
        let start = usize::try_from(from.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let end = start.saturating_add(max).min(self.bytes.len());
        (self.bytes[start..end].to_vec(), cursor)
    }
}

/// The prefix of an attempt's staged files in a staging bucket: `JOB/TASK/ATTEMPT`.
pub fn stage_prefix(d: &TaskDispatched) -> String {
    ferry_artifacts::attempt_key(&d.job_id, &d.task_id, &d.attempt_id, "")
        .trim_end_matches('/')
        .to_string()
}

/// `what` failed on the staging bucket: worth trying again when the store says so, the
/// platform's fault otherwise.
pub fn store_error(what: &str, e: ferry_artifacts::Error) -> AttemptError {
    let m = format!("{what}: {e}");
    if e.is_transient() {
        AttemptError::Unavailable(m)
    } else {
        AttemptError::Platform(m)
    }
}

/// At most `max` bytes of the file the job staged under `key`; `None` when it staged none.
pub async fn read_staged(store: &Store, key: &str, max: u64) -> BackendResult<Option<Vec<u8>>> {
    let (size, mut stream) = match store.get(key).await {
        Ok(got) => got,
        Err(ferry_artifacts::Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(store_error("cannot read what the job staged", e)),
    };
    let mut bytes = Vec::with_capacity(size.min(max) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| store_error("cannot read what the job staged", e))?;
        let room = (max as usize).saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() as u64 >= max {
            break;
        }
    }
    Ok(Some(bytes))
}

/// What a job that succeeded staged under `prefix`: `outputs.json`, `subtasks.json` (each
/// bounded by what the runtime takes) and, when the task has `outputFiles`, `files.tar`, the
/// job's working directory archived under `top/`, of which what matches the patterns is
/// extracted into the attempt's directory under `artifact_dir`, with every backend's checks
/// ([`crate::archive::extract`]).
pub async fn collect_staged(
    store: &Store,
    prefix: &str,
    task: Task<'_>,
    top: &str,
    artifact_dir: &Path,
    limits: Limits,
) -> BackendResult<Collected> {
    let d = task.dispatch;
    let key = |name: &str| format!("{prefix}/{name}");
    let outputs = read_staged(store, &key("outputs.json"), MAX_OUTPUTS_BYTES + 1).await?;
    let subtasks = read_staged(store, &key("subtasks.json"), MAX_SUBTASKS_BYTES + 1).await?;
    if d.output_files.is_empty() {
        return Ok(Collected {
            outputs,
            subtasks,
            files: Vec::new(),
        });
    }
    let mut patterns = Vec::with_capacity(d.output_files.len());
    for p in &d.output_files {
        ferry_flow::rules::output_pattern(p)
            .map_err(|why| AttemptError::Task(format!("outputFiles: pattern {p:?} is refused: {why}")))?;
        patterns.push(
            glob::Pattern::new(p)
                .map_err(|e| AttemptError::Task(format!("outputFiles: pattern {p:?} is invalid: {e}")))?,
        );
    }
    let archive = key("files.tar");
    let (_, stream) = match store.get(&archive).await {
        Ok(got) => got,
        Err(ferry_artifacts::Error::NotFound(_)) => {
            return Err(AttemptError::Platform(format!(
                "outputFiles: the job succeeded but sent no archive of its working directory to {}: its log says \
                 why (ferry-stage)",
                store.uri(&archive)
            )));
        }
        Err(e) => return Err(store_error("cannot read the job's output files", e)),
    };
    let dest = artifact_dir.join(crate::collect::attempt_artifacts(d));
    tokio::fs::create_dir_all(&dest).await.map_err(|e| {
        AttemptError::Platform(format!(
            "cannot create the artifact directory {}: {e}",
            dest.display()
        ))
    })?;
    let reader = tokio_util::io::StreamReader::new(stream.map(|r| r.map_err(std::io::Error::other)));
    let top = top.to_string();
    let extracted = tokio::task::spawn_blocking(move || {
        let reader = tokio_util::io::SyncIoBridge::new(reader);
        crate::archive::extract(reader, &top, &patterns, &dest, limits)
    })
    .await
    .map_err(|e| AttemptError::Platform(format!("the output files' extraction failed: {e}")))?
    .map_err(|e| match e {
        ExtractError::Refused(m) => AttemptError::Task(m),
        e => AttemptError::Unavailable(format!(
            "cannot take the output files out of {}: {e}",
            store.uri(&archive)
        )),
    })?;
    Ok(Collected {
        outputs,
        subtasks,
        files: extracted.into_output_files()?,
    })
}

/// Removes everything staged under `prefix`; what is gone already is no error.
pub async fn remove_staged(store: &Store, prefix: &str) -> BackendResult<()> {
    store
        .remove_under(prefix)
        .await
        .map(drop)
        .map_err(|e| store_error("cannot remove the attempt's staged files", e))
}

/// What a read of a job saw.
#[derive(Debug)]
pub enum Seen<J> {
    /// The job as the platform answered.
    Job(Arc<J>),
    /// The platform does not know it: no such job (gone some time after it ended, deleted, or
    /// never made).
    Missing,
}

impl<J> Clone for Seen<J> {
    fn clone(&self) -> Self {
        match self {
            Seen::Job(job) => Seen::Job(job.clone()),
            Seen::Missing => Seen::Missing,
        }
    }
}

/// What a full round of a [`Reader`] read.
#[derive(Debug)]
pub struct Round<J> {
    /// What it saw of the jobs it read (all of them, unless it failed).
    pub seen: Vec<(String, Seen<J>)>,
    /// Why it stopped short: the error of every waiter whose job it did not see.
    pub failed: Option<AttemptError>,
}

/// How a platform reads the state of jobs, for a [`Poller`]. It logs its own failures, in its
/// own words.
#[async_trait]
pub trait Reader: Send + Sync + 'static {
    /// A job as the platform describes it.
    type Job: Send + Sync + 'static;
    /// The platform, as the poller's own errors name it: `AWS Batch`.
    const PLATFORM: &'static str;
    /// Whether [`Poller::seen_ended`] takes a job the platform does not know for ended.
    const MISSING_ENDED: bool;

    /// What a round saw of each of `ids` (every watched job).
    async fn round(&self, ids: Vec<String>) -> Round<Self::Job>;

    /// What a read of the hinted jobs `ids` saw. A job it could not read is left out: it waits
    /// for the next round (a hint is only a hint).
    async fn hinted(&self, ids: Vec<String>) -> Vec<(String, Seen<Self::Job>)>;

    /// Whether the platform is done with the job: its state can change no more.
    fn is_terminal(job: &Self::Job) -> bool;
}

/// How long hints are gathered before the read they bring forward: a burst of notifications
/// costs one read of the jobs they name, not one per notification.
pub const HINT_GATHER: Duration = Duration::from_millis(20);

struct Entry<J> {
    /// The round whose answer this is.
    round: u64,
    seen: Seen<J>,
}

struct Polled<J> {
    /// The jobs someone asked for the state of, not forgotten since.
    watched: HashSet<String>,
    /// Watched jobs a notification said changed, to read before the next round is due.
    hinted: HashSet<String>,
    seen: HashMap<String, Entry<J>>,
    /// The last full round that failed, and why.
    failed: Option<(u64, AttemptError)>,
}

impl<J> Default for Polled<J> {
    fn default() -> Self {
        Polled {
            watched: HashSet::new(),
            hinted: HashSet::new(),
            seen: HashMap::new(),
            failed: None,
        }
    }
}

/// Reads the state of every job in flight with as few calls as there can be: one task reads all
/// watched jobs in a round ([`Reader::round`]) once per interval, and every attempt's
/// [`Poller::state`] waits for the next round rather than asking itself. A round is only made
/// while someone watches a job. A notification that jobs changed ([`Poller::hint`]) brings a
/// read of those jobs alone forward ([`Reader::hinted`]): the interval is then only the
/// fallback. Rounds and hinted reads are numbered in one sequence.
pub struct Poller<R: Reader> {
    reader: R,
    interval: Duration,
    state: Mutex<Polled<R::Job>>,
    /// The number of the last round (or hinted read) that ended.
    rounds: watch::Sender<u64>,
    wake: Notify,
    hints: Notify,
}

impl<R: Reader> Poller<R> {
    /// A poller reading with `reader` every `interval`, and its task on the current runtime,
    /// which pauses while no job is watched and ends with `stop` (or once the poller is dropped:
    /// it holds only a weak reference between rounds).
    pub fn start(reader: R, interval: Duration, stop: CancellationToken) -> Arc<Poller<R>> {
        let (rounds, _) = watch::channel(0);
        let poller = Arc::new(Poller {
            reader,
            interval,
            state: Mutex::new(Polled::default()),
            rounds,
            wake: Notify::new(),
            hints: Notify::new(),
        });
        let weak = Arc::downgrade(&poller);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                let wake = async {
                    if p.lock().watched.is_empty() {
                        p.wake.notified().await;
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake => {}
                }
                let all: Vec<String> = {
                    let mut state = p.lock();
                    state.hinted.clear();
                    state.watched.iter().cloned().collect()
                };
                // A wake left over from a job forgotten since: nothing to read.
                if all.is_empty() {
                    continue;
                }
                p.round(all, true).await;
                let until = tokio::time::Instant::now() + p.interval;
                // Holding the poller here keeps nothing alive: the backend's end cancels `stop`.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(until) => break,
                        _ = p.hints.notified() => {}
                    }
                    tokio::time::sleep(HINT_GATHER).await;
                    let hinted: Vec<String> = p.lock().hinted.drain().collect();
                    if !hinted.is_empty() {
                        p.round(hinted, false).await;
                    }
                }
            }
        });
        poller
    }

    fn lock(&self) -> MutexGuard<'_, Polled<R::Job>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `ids`: every watched job (`full`), or the hinted ones. The failure of a full round
    /// is every waiter's; a hinted read's only delays the jobs it missed until the next round.
    async fn round(&self, ids: Vec<String>, full: bool) {
        let round = *self.rounds.borrow() + 1;
        let (seen, failed) = if full {
            let Round { seen, failed } = self.reader.round(ids).await;
            (seen, failed)
        } else {
            (self.reader.hinted(ids).await, None)
        };
        {
            let mut state = self.lock();
            for (id, seen) in seen {
                if state.watched.contains(&id) {
                    state.seen.insert(id, Entry { round, seen });
                }
            }
            if let Some(e) = failed {
                state.failed = Some((round, e));
            }
        }
        self.rounds.send_replace(round);
    }

    /// The job's state as a round that began after this call saw it; the failure of a full
    /// round that began after it is the error.
    pub async fn state(&self, id: &str) -> Result<Seen<R::Job>, AttemptError> {
        let mut rounds = self.rounds.subscribe();
        let after = *rounds.borrow_and_update();
        let added = self.lock().watched.insert(id.to_string());
        if added {
            self.wake.notify_one();
        }
        loop {
            {
                let state = self.lock();
                // A job that ended stays as it ended: what was seen of it is its state.
                if let Some(Entry {
                    seen: Seen::Job(job), ..
                }) = state.seen.get(id)
                    && R::is_terminal(job)
                {
                    return Ok(Seen::Job(job.clone()));
                }
                // A round that ended after `after` began after it unless it is `after + 1`,
                // which may have been under way already: that one counts only if it saw the job,
                // and a round reads only the jobs watched when it began, so what it saw is at
                // most one interval old.
                if let Some(e) = state.seen.get(id).filter(|e| e.round > after) {
                    return Ok(e.seen.clone());
                }
                if let Some((r, e)) = &state.failed
                    && *r > after
                {
                    return Err(e.clone());
                }
            }
            if rounds.changed().await.is_err() {
                return Err(AttemptError::Unavailable(format!(
                    "the {} poller has stopped",
                    R::PLATFORM
                )));
            }
        }
    }

    /// Brings forward a read of those of `ids` that are watched (notifications said they
    /// changed); the others are not this launcher's, or no longer waited for. Returns how many
    /// were watched.
    pub fn hint<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> usize {
        let mut state = self.lock();
        let mut n = 0;
        for id in ids {
            if state.watched.contains(id) {
                state.hinted.insert(id.to_string());
                n += 1;
            }
        }
        drop(state);
        if n > 0 {
            self.hints.notify_one();
        }
        n
    }

    /// Whether the latest round saw the job ended (or gone, where the platform's
    /// [`Reader::MISSING_ENDED`] says a job it does not know can run no more), without waiting
    /// for another.
    pub fn seen_ended(&self, id: &str) -> bool {
        match self.lock().seen.get(id) {
            Some(Entry {
                seen: Seen::Job(job), ..
            }) => R::is_terminal(job),
            Some(Entry {
                seen: Seen::Missing, ..
            }) => R::MISSING_ENDED,
            None => false,
        }
    }

    /// Stops watching a job.
    pub fn forget(&self, id: &str) {
        let mut state = self.lock();
        state.watched.remove(id);
        state.seen.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A platform in memory: each job's state by id (a job it does not hold is missing), and
    /// what each read asked for.
    #[derive(Default)]
    struct Platform {
        jobs: HashMap<String, String>,
        /// Every read fails with this while set.
        down: Option<AttemptError>,
        /// The ids each full round read, sorted.
        rounds: Vec<Vec<String>>,
        /// The ids each hinted read read, sorted.
        hinted: Vec<Vec<String>>,
    }

    /// A [`Reader`] of a [`Platform`], which takes a missing job for ended when `ENDED`.
    struct Fake<const ENDED: bool>(Arc<Mutex<Platform>>);

    impl<const ENDED: bool> Fake<ENDED> {
        fn read(&self, mut ids: Vec<String>, full: bool) -> Round<String> {
            let mut p = self.0.lock().unwrap();
            ids.sort();
            if full {
                p.rounds.push(ids.clone());
            } else {
                p.hinted.push(ids.clone());
            }
            if let Some(e) = &p.down {
                return Round {
                    seen: Vec::new(),
                    failed: Some(e.clone()),
                };
            }
            let seen = ids
                .into_iter()
                .map(|id| {
                    let job = p
                        .jobs
                        .get(&id)
                        .map_or(Seen::Missing, |s| Seen::Job(Arc::new(s.clone())));
                    (id, job)
                })
                .collect();
            Round { seen, failed: None }
        }
    }

    #[async_trait]
    impl<const ENDED: bool> Reader for Fake<ENDED> {
        type Job = String;
        const PLATFORM: &'static str = "Fake";
        const MISSING_ENDED: bool = ENDED;

        async fn round(&self, ids: Vec<String>) -> Round<String> {
            self.read(ids, true)
        }

        async fn hinted(&self, ids: Vec<String>) -> Vec<(String, Seen<String>)> {
            self.read(ids, false).seen
        }

        fn is_terminal(job: &String) -> bool {
            job == "DONE"
        }
    }

    const INTERVAL: Duration = Duration::from_secs(10);

    type Started<const ENDED: bool> = (Arc<Poller<Fake<ENDED>>>, Arc<Mutex<Platform>>, CancellationToken);

    /// A poller of a platform holding `jobs` (id, state), every [`INTERVAL`].
    fn started<const ENDED: bool>(jobs: &[(&str, &str)]) -> Started<ENDED> {
        let platform = Arc::new(Mutex::new(Platform {
            jobs: jobs
                .iter()
                .map(|(id, s)| (id.to_string(), s.to_string()))
                .collect(),
            ..Platform::default()
        }));
        let stop = CancellationToken::new();
        let poller = Poller::start(Fake(platform.clone()), INTERVAL, stop.clone());
        (poller, platform, stop)
    }

    fn set(platform: &Mutex<Platform>, id: &str, state: &str) {
        platform.lock().unwrap().jobs.insert(id.into(), state.into());
    }

    /// The ids each full round read (never none: a wake-up left over from a job forgotten since
    /// makes no round).
    fn rounds(platform: &Mutex<Platform>) -> Vec<Vec<String>> {
        let p = platform.lock().unwrap();
        assert!(p.rounds.iter().all(|ids| !ids.is_empty()), "a round of no job");
        p.rounds.clone()
    }

    fn state_of(seen: Seen<String>) -> String {
        match seen {
            Seen::Job(job) => (*job).clone(),
            Seen::Missing => "missing".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_come_every_interval_only_while_a_job_is_watched() {
        let (poller, platform, _stop) = started::<false>(&[("a", "RUNNING"), ("b", "RUNNING")]);
        // Nothing watched: no round, however long.
        tokio::time::sleep(INTERVAL * 6).await;
        assert!(rounds(&platform).is_empty());
        let start = tokio::time::Instant::now();
        assert_eq!(state_of(poller.state("a").await.unwrap()), "RUNNING");
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first watch wakes the poller at once"
        );
        // Each call waits for a round after it: the next one, an interval later.
        set(&platform, "a", "STARTING");
        assert_eq!(state_of(poller.state("a").await.unwrap()), "STARTING");
        assert_eq!(start.elapsed(), INTERVAL);
        // Any number of waiters share one round, which reads every watched job.
        let (a, b) = tokio::join!(poller.state("a"), poller.state("b"));
        assert_eq!(start.elapsed(), INTERVAL * 2);
        assert_eq!(
            (state_of(a.unwrap()), state_of(b.unwrap())),
            ("STARTING".into(), "RUNNING".into())
        );
        assert_eq!(rounds(&platform), vec![vec!["a"], vec!["a"], vec!["a", "b"]]);
        assert!(!poller.seen_ended("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_seen_ended_is_its_state_at_once() {
        let (poller, platform, _stop) = started::<false>(&[("a", "DONE")]);
        assert_eq!(state_of(poller.state("a").await.unwrap()), "DONE");
        assert!(poller.seen_ended("a"));
        let start = tokio::time::Instant::now();
        assert_eq!(state_of(poller.state("a").await.unwrap()), "DONE");
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(rounds(&platform).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn whether_a_missing_job_ended_is_the_platforms_to_say() {
        let (kept, _, _stop) = started::<false>(&[]);
        assert!(matches!(kept.state("gone").await.unwrap(), Seen::Missing));
        assert!(!kept.seen_ended("gone"));
        let (ended, _, _stop) = started::<true>(&[]);
        assert!(matches!(ended.state("gone").await.unwrap(), Seen::Missing));
        assert!(ended.seen_ended("gone"));
        assert!(!ended.seen_ended("never asked for"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_round_after_the_call_is_the_waiters_error() {
        let (poller, platform, _stop) = started::<false>(&[("a", "RUNNING")]);
        platform.lock().unwrap().down = Some(AttemptError::Unavailable("platform down".into()));
        let e = poller.state("a").await.unwrap_err();
        assert_eq!(e, AttemptError::Unavailable("platform down".into()));
        // A round that failed before the call is not its error: it waits for the next one.
        platform.lock().unwrap().down = None;
        let start = tokio::time::Instant::now();
        assert_eq!(state_of(poller.state("a").await.unwrap()), "RUNNING");
        assert_eq!(start.elapsed(), INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_brings_a_read_of_the_hinted_jobs_forward() {
        let (poller, platform, _stop) = started::<false>(&[("a", "RUNNING"), ("b", "RUNNING")]);
        let _ = tokio::join!(poller.state("a"), poller.state("b"));
        assert_eq!(poller.hint(["c"]), 0, "c is not watched");
        let start = tokio::time::Instant::now();
        let (seen, hinted) = tokio::join!(poller.state("a"), async {
            set(&platform, "a", "DONE");
            poller.hint(["a", "c"])
        });
        assert_eq!(hinted, 1);
        assert_eq!(state_of(seen.unwrap()), "DONE");
        assert_eq!(
            start.elapsed(),
            HINT_GATHER,
            "the hint need not wait for the interval"
        );
        assert!(poller.seen_ended("a"));
        let p = platform.lock().unwrap();
        assert_eq!(p.rounds.len(), 1);
        assert_eq!(p.hinted, vec![vec!["a"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_hinted_read_leaves_its_jobs_to_the_next_round() {
        let (poller, platform, _stop) = started::<false>(&[("a", "RUNNING")]);
        poller.state("a").await.unwrap();
        let start = tokio::time::Instant::now();
        let (seen, _) = tokio::join!(poller.state("a"), async {
            platform.lock().unwrap().down = Some(AttemptError::Unavailable("platform down".into()));
            poller.hint(["a"]);
            tokio::time::sleep(HINT_GATHER * 2).await;
            set(&platform, "a", "DONE");
            platform.lock().unwrap().down = None;
        });
        assert_eq!(state_of(seen.unwrap()), "DONE");
        assert_eq!(start.elapsed(), INTERVAL);
        assert_eq!(platform.lock().unwrap().hinted.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_job_is_read_no_more() {
        let (poller, platform, _stop) = started::<false>(&[("a", "DONE"), ("b", "RUNNING")]);
        let _ = tokio::join!(poller.state("a"), poller.state("b"));
        poller.forget("a");
        assert!(!poller.seen_ended("a"), "what was seen of it is forgotten too");
        assert_eq!(poller.hint(["a"]), 0);
        poller.state("b").await.unwrap();
        assert_eq!(rounds(&platform), vec![vec!["a", "b"], vec!["b"]]);
        // Nothing watched: the rounds stop.
        poller.forget("b");
        tokio::time::sleep(INTERVAL * 6).await;
        assert_eq!(rounds(&platform).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_poller_ends_with_its_token_or_once_dropped() {
        let (poller, platform, stop) = started::<false>(&[("a", "RUNNING")]);
        poller.state("a").await.unwrap();
        stop.cancel();
        let waited = tokio::time::timeout(INTERVAL * 6, poller.state("a")).await;
        assert!(waited.is_err(), "no round comes once stopped");
        assert_eq!(rounds(&platform).len(), 1);

        let (poller, platform, _stop) = started::<false>(&[("a", "RUNNING")]);
        poller.state("a").await.unwrap();
        drop(poller);
        tokio::time::sleep(INTERVAL * 2).await;
        // The task let the poller go, and with it the reader's hold on the platform.
        assert_eq!(Arc::strong_count(&platform), 1);
        assert_eq!(rounds(&platform).len(), 1);
    }

    #[test]
    fn log_lines_become_bytes_and_cursors_reach_every_offset_again() {
        let mut log = LogPages::new(None::<String>, 0);
        assert!(log.push(["one", "two"], Some("t1".into())));
        assert!(log.push(["three"], Some("t2".into())));
        assert!(!log.push(Vec::<String>::new(), Some("t2".into())));
        let (bytes, cursor) = log.read(0, 100);
        assert_eq!(bytes, b"one\ntwo\nthree\n");
        assert_eq!(cursor, (None, 0));
        // Read on from inside the second batch: the first is dropped, the cursor is the second's.
        let (bytes, cursor) = log.read(10, 3);
        assert_eq!(bytes, b"ree");
        assert_eq!(cursor, (Some("t1".to_string()), 8));
        assert!(!log.reaches(3) && log.reaches(8));
        // After a restart from that cursor, the same read brings the same batch again.
        let mut again = LogPages::new(cursor.0, cursor.1);
        assert_eq!(again.next().as_deref(), Some("t1"));
        again.push(["three"], Some("t2".into()));
        assert_eq!(again.read(10, 100).0, b"ree\n");
        assert!(again.drained_at(14) && !again.drained_at(13));
        // Nothing read yet: the cursor is where the next read starts.
        let mut empty = LogPages::new(Some("t9".to_string()), 40);
        assert_eq!(empty.read(40, 10), (Vec::new(), (Some("t9".to_string()), 40)));
    }

    #[test]
    fn secrets_are_one_word_each_in_the_script() {
        let filled = Filled {
            command: vec!["echo".into(), "it's".into()],
            command_secret: true,
            env: Vec::new(),
            secret_env: vec![("TOKEN".into(), "a'b $c".into())],
        };
        assert_eq!(
            filled.secrets_script().unwrap(),
            "export TOKEN='a'\\''b $c'\nset -- 'echo' 'it'\\''s'\n"
        );
        assert!(is_shell_name("_A1") && !is_shell_name("1A") && !is_shell_name("A-B") && !is_shell_name(""));
        let bad = Filled {
            secret_env: vec![("A-B".into(), "x".into())],
            ..filled
        };
        let e = bad.secrets_script().unwrap_err().to_string();
        assert!(e.contains("\"A-B\" is not a name the job's shell can set"), "{e}");
    }
}
