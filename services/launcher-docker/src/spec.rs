//! What one attempt's container is: the [`ContainerSpec`], the name derived from the attempt id
//! ([`container_name`]) and the labels that say which attempt and which launcher own it.
//!
//! The name is what makes creation idempotent: a redelivered dispatch, or a launcher restarted
//! between "create" and journaling it, looks the name up and adopts what it finds. The labels
//! are what make it findable without the journal: [`crate::Engine::list_owned`] asks the engine
//! for everything labelled with a launcher instance.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The job the attempt belongs to.
pub const LABEL_JOB: &str = "dev.ferry.job";
/// The task, within its job.
pub const LABEL_TASK: &str = "dev.ferry.task";
/// The attempt id; the container's name is derived from it.
pub const LABEL_ATTEMPT_ID: &str = "dev.ferry.attempt-id";
/// The attempt number, 1 for the first.
pub const LABEL_ATTEMPT: &str = "dev.ferry.attempt";
/// The launcher instance that owns the container.
pub const LABEL_LAUNCHER: &str = "dev.ferry.launcher";
/// The flow the job runs, when the dispatch says.
pub const LABEL_FLOW: &str = "dev.ferry.flow";
/// The job's namespace, when it has one.
pub const LABEL_NAMESPACE: &str = "dev.ferry.namespace";

/// Every container name starts with this, so that names never start with a character Docker
/// refuses and ferry's containers stand out in `docker ps`.
pub const NAME_PREFIX: &str = "ferry-";

/// Container names stay within a DNS label's length, so that the same name can serve as a
/// hostname and is readable in `docker ps`.
pub const MAX_NAME_LEN: usize = 63;

/// Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// The container name of an attempt: `ferry-<attempt id>` when the id is made of characters
/// Docker accepts in names and fits, otherwise `ferry-<the id's accepted characters, cut>-<16
/// hex digits of its SHA-256>`, so that different ids never share a name in practice and the same
/// id always gives the same name. The attempt-id label is compared on adoption all the same.
pub fn container_name(attempt_id: &str) -> String {
    let plain = !attempt_id.is_empty()
        && attempt_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && NAME_PREFIX.len() + attempt_id.len() <= MAX_NAME_LEN;
    if plain {
        return format!("{NAME_PREFIX}{attempt_id}");
    }
    let digest = Sha256::digest(attempt_id.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let keep = MAX_NAME_LEN - NAME_PREFIX.len() - 1 - hash.len();
    let readable: String = attempt_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(keep)
        .collect();
    if readable.is_empty() {
        format!("{NAME_PREFIX}{hash}")
    } else {
        format!("{NAME_PREFIX}{readable}-{hash}")
    }
}

/// Whether to pull the image before creating the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time, so that a moving tag is fresh.
    Always,
    /// Pull only when the engine does not have the image.
    #[default]
    Missing,
    /// Never pull: the image must be on the engine already.
    Never,
}

impl FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "missing" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "pull policy `{other}` is not known: use `always`, `missing` or `never`"
            )),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        })
    }
}

/// Which attempt a container runs, as its labels record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}

impl Attempt {
    /// Reads an attempt back from a container's labels; `None` when they are not ferry's.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Attempt> {
        Some(Attempt {
            job_id: labels.get(LABEL_JOB)?.clone(),
            task_id: labels.get(LABEL_TASK)?.clone(),
            attempt_id: labels.get(LABEL_ATTEMPT_ID)?.clone(),
            attempt: labels.get(LABEL_ATTEMPT)?.parse().ok()?,
        })
    }
}

/// A host path or named volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// An absolute host path (a bind mount) or a volume name.
    pub source: String,
    /// An absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

/// GPUs, typed once in the event crate; Docker can only count them, so a spec that names a
/// model is refused.
pub use ferry_event::payload::Gpus;

/// Everything the engine needs to create one attempt's container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub attempt: Attempt,
    /// The flow and namespace of the attempt's job, labelled when known.
    pub flow: Option<String>,
    pub namespace: Option<String>,
    /// The launcher instance that owns the container (its label).
    pub launcher: String,
    pub image: String,
    pub pull: PullPolicy,
    /// The argument vector, run without a shell: the first element replaces the image's
    /// entrypoint, the rest are its arguments. Empty runs the image's own entrypoint and command.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// An absolute path; the image's working directory when absent.
    pub working_dir: Option<String>,
    /// `user`, `uid` or `uid:gid`; the image's user when absent.
    pub user: Option<String>,
    /// A network name or mode (`none`, `host`, a user-defined network); the engine's default
    /// when absent.
    pub network: Option<String>,
    pub mounts: Vec<Mount>,
    /// CPUs, fractions allowed; enforced by the engine's CFS quota.
    pub cpu: Option<f64>,
    /// A hard memory limit; swap is not allowed beyond it, so that exceeding it is an OOM kill.
    pub memory_bytes: Option<u64>,
    pub gpus: Option<Gpus>,
    /// Container paths that get an anonymous volume of their own, made with the container,
    /// owned by root, and removed with it.
    pub volumes: Vec<String>,
}

impl ContainerSpec {
    /// Refuses what cannot be honoured, naming the field, before anything is created.
    pub fn check(&self) -> Result<()> {
        let refuse = |m: String| Err(Error::Refused(m));
        if self.image.trim().is_empty() {
            return refuse("runner.image must name an image".into());
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return refuse("command: an argument contains NUL, which no process can receive".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return refuse(format!(
                    "env: `{}` cannot be passed: names must be non-empty without `=` or NUL, values without NUL",
                    k.escape_debug()
                ));
            }
        }
        if let Some(dir) = &self.working_dir
            && !dir.starts_with('/')
        {
            return refuse(format!(
                "workingDir `{dir}` must be an absolute path in the container"
            ));
        }
        for m in &self.mounts {
            if !m.target.starts_with('/') || m.source.is_empty() {
                return refuse(format!(
                    "mounts: `{}` -> `{}` needs a source and an absolute target path",
                    m.source, m.target
                ));
            }
        }
        if let Some(cpu) = self.cpu
            && !(cpu.is_finite() && cpu > 0.0 && cpu * 1e9 < i64::MAX as f64)
        {
            return refuse(format!(
                "resources.cpu must be a positive number of CPUs, not {cpu}"
            ));
        }
        if let Some(m) = self.memory_bytes
            && (m < MIN_MEMORY_BYTES || m > i64::MAX as u64)
        {
            return refuse(format!(
                "resources.memory of {m} bytes cannot be enforced: Docker needs at least 6 MiB ({MIN_MEMORY_BYTES} bytes)"
            ));
        }
        if let Some(g) = &self.gpus
            && let Some(kind) = &g.kind
        {
            return refuse(format!(
                "resources.gpu type `{kind}` cannot be honoured on Docker, which counts GPUs but cannot choose a model: \
                 drop the type, or run the task on a runner that can (kubernetes)"
            ));
        }
        Ok(())
    }

    /// The container's labels.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_JOB.to_string(), self.attempt.job_id.clone()),
            (LABEL_TASK.to_string(), self.attempt.task_id.clone()),
            (LABEL_ATTEMPT_ID.to_string(), self.attempt.attempt_id.clone()),
            (LABEL_ATTEMPT.to_string(), self.attempt.attempt.to_string()),
            (LABEL_LAUNCHER.to_string(), self.launcher.clone()),
        ]);
        for (label, value) in [(LABEL_FLOW, &self.flow), (LABEL_NAMESPACE, &self.namespace)] {
            if let Some(v) = value {
                labels.insert(label.to_string(), v.clone());
            }
        }
        labels
    }

    /// The container's deterministic name.
    pub fn name(&self) -> String {
        container_name(&self.attempt.attempt_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_docker_name(n: &str) -> bool {
        let mut b = n.bytes();
        b.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
            && n.len() <= MAX_NAME_LEN
    }

    #[test]
    fn names_are_valid_deterministic_and_distinct() {
        let ids = [
            "0190f3a2-7c1e-7b7a-9d1e-3f2a1b0c9d8e",
            "job/task/1",
            "job_task_1",
            "",
            "é",
            &"a".repeat(57),
            &"a".repeat(58),
            &"a".repeat(300),
            &format!("{}b", "a".repeat(300)),
        ];
        let names: Vec<String> = ids.iter().map(|id| container_name(id)).collect();
        for (id, n) in ids.iter().zip(&names) {
            assert!(valid_docker_name(n), "{id:?} -> {n:?}");
            assert_eq!(&container_name(id), n, "deterministic");
        }
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert_eq!(names[0], "ferry-0190f3a2-7c1e-7b7a-9d1e-3f2a1b0c9d8e");
        assert_eq!(names[5].len(), MAX_NAME_LEN, "an id that fits is kept whole");
        assert!(names[1].starts_with("ferry-job_task_1-"), "{}", names[1]);
    }

    #[test]
    fn pull_policy_parses_and_names_the_accepted_values() {
        assert_eq!("never".parse(), Ok(PullPolicy::Never));
        assert_eq!(PullPolicy::Always.to_string(), "always");
        let e = "sometimes".parse::<PullPolicy>().unwrap_err();
        assert!(e.contains("`always`, `missing` or `never`"), "{e}");
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            attempt: Attempt {
                job_id: "j".into(),
                task_id: "t".into(),
                attempt_id: "a".into(),
                attempt: 2,
            },
            flow: Some("nightly".into()),
            namespace: None,
            launcher: "l1".into(),
            image: "busybox".into(),
            pull: PullPolicy::Never,
            command: vec!["true".into()],
            env: vec![],
            working_dir: None,
            user: None,
            network: None,
            mounts: vec![],
            cpu: None,
            memory_bytes: None,
            gpus: None,
            volumes: vec![],
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_field() {
        assert!(spec().check().is_ok());
        type Change = fn(&mut ContainerSpec);
        let cases: Vec<(Change, &str)> = vec![
            (|s| s.image = " ".into(), "runner.image"),
            (|s| s.working_dir = Some("work".into()), "workingDir"),
            (|s| s.cpu = Some(0.0), "resources.cpu"),
            (|s| s.memory_bytes = Some(1024), "resources.memory"),
            (|s| s.env = vec![("A=B".into(), "x".into())], "env"),
            (
                |s| {
                    s.gpus = Some(Gpus {
                        count: 1,
                        kind: Some("a100".into()),
                    })
                },
                "resources.gpu",
            ),
        ];
        for (change, field) in cases {
            let mut s = spec();
            change(&mut s);
            let e = s.check().unwrap_err();
            assert!(e.is_task_fault());
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }

    #[test]
    fn labels_round_trip() {
        let s = spec();
        assert_eq!(Attempt::from_labels(&s.labels()), Some(s.attempt.clone()));
        assert_eq!(s.labels()[LABEL_LAUNCHER], "l1");
        assert_eq!(s.labels()[LABEL_FLOW], "nightly");
        assert!(
            !s.labels().contains_key(LABEL_NAMESPACE),
            "no namespace, no label"
        );
        assert_eq!(Attempt::from_labels(&HashMap::new()), None);
    }
}
