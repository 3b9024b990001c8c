//! What the cloud batch backends (aws-batch, google-batch) share.
//!
//! - A task's command and environment ([`Filled`], [`check`]): a batch job's definition is
//!   shown to anyone allowed to read the job, so what holds a secret is set apart when the
//!   templates are filled, and reaches the job through its staging bucket, as a script its
//!   wrapper sources and deletes before the task starts.
//! - A job's log as the platform's API pages it ([`LogPages`]): lines read in batches from a
//!   position the platform understands (a token, an entry's key), counted in bytes, with the
//!   cursor the runtime journals.
//! - An attempt's files staged in a bucket ([`stage_prefix`], [`read_staged`],
//!   [`remove_staged`]): under a prefix of its own, read back bounded, removed on release.

use ferry_artifacts::Store;
use ferry_event::payload::TaskDispatched;
use ferry_event::template::{Part, Template};
use futures::StreamExt;

use crate::backend::{AttemptError, BackendResult, Task};

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

/// Removes everything staged under `prefix`; what is gone already is no error.
pub async fn remove_staged(store: &Store, prefix: &str) -> BackendResult<()> {
    store
        .remove_under(prefix)
        .await
        .map(drop)
        .map_err(|e| store_error("cannot remove the attempt's staged files", e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
