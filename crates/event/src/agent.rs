//! Agents: long-running `ferry agent` processes that serve the tasks of one named cluster.
//!
//! A flow names what an agent task needs (`runner: { type: agent, cluster: gpu, task:
//! train@2.1 }`); an agent registers tasks by name and version (`train@2.3`). A task is routed
//! to the dispatch topic of its exact request, `dispatch.agent.CLUSTER.TASK.MAJOR.MINOR`
//! ([`backend`]), and each agent consumes the shared queue ([`group`]) of every request it is
//! compatible with: same major, its minor at least the requested one ([`served`]). So only work
//! an agent can run ever reaches it, queued work waits in the broker until a compatible agent
//! is there, and agents of one cluster and task share the work.
//!
//! Cluster and task names are the routing key's words: 1 to 63 lowercase ASCII letters, digits,
//! `-` and `_`, starting with a letter or digit ([`check_name`]).

use std::fmt;
use std::str::FromStr;

/// The runner type of agent tasks, and the first word of their backend names.
pub const RUNNER: &str = "agent";

/// The longest cluster or task name.
pub const MAX_NAME: usize = 63;

/// Why `name` cannot name a cluster or a task, if it cannot.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{name:?} must be 1 to {MAX_NAME} characters long"));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "{name:?} may hold only lowercase letters, digits, `-` and `_`, and starts with a letter or digit"
        ));
    }
    Ok(())
}

/// A task version: `MAJOR.MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    /// Whether an agent's task of this version runs a request for `wanted`: same major, this
    /// minor at least the wanted one.
    pub fn serves(&self, wanted: Version) -> bool {
        self.major == wanted.major && self.minor >= wanted.minor
    }
}

/// The most minor versions below its own an agent's task serves (each is a queue it consumes).
pub const MAX_MINOR: u32 = 99;

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("version {s:?} must be MAJOR.MINOR, two numbers (e.g. 2.1)");
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        let number = |p: &str| {
            if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u32>().map_err(|_| bad())
        };
        let v = Version {
            major: number(major)?,
            minor: number(minor)?,
        };
        if v.minor > MAX_MINOR {
            return Err(format!("version {s:?}: the minor version is at most {MAX_MINOR}"));
        }
        Ok(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A task by name and version, as a flow asks for it and an agent registers it: `NAME@MAJOR.MINOR`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskRef {
    pub name: String,
    pub version: Version,
}

impl FromStr for TaskRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, version) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?} must be NAME@MAJOR.MINOR (e.g. train@2.1)"))?;
        check_name(name).map_err(|e| format!("task name {e}"))?;
        Ok(TaskRef {
            name: name.to_string(),
            version: version.parse()?,
        })
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// The backend (the dispatch and cancel topics' last part) of a request for `task` in
/// `cluster`: `agent.CLUSTER.NAME.MAJOR.MINOR`.
pub fn backend(cluster: &str, task: &TaskRef) -> String {
    format!(
        "{RUNNER}.{cluster}.{}.{}.{}",
        task.name, task.version.major, task.version.minor
    )
}

/// The cluster and task of an agent backend name made by [`backend`], if it is one.
pub fn parse_backend(backend: &str) -> Option<(String, TaskRef)> {
    let rest = backend.strip_prefix(RUNNER)?.strip_prefix('.')?;
    let mut parts = rest.split('.');
    let (cluster, name, major, minor) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || check_name(cluster).is_err() {
        return None;
    }
    let task: TaskRef = format!("{name}@{major}.{minor}").parse().ok()?;
    Some((cluster.to_string(), task))
}

/// The consumer group every agent serving `backend` shares: one durable queue per request.
pub fn group(backend: &str) -> String {
    format!("ferry-{backend}")
}

/// The backends an agent of `cluster` registering `task` serves: one per minor version from 0
/// to its own.
pub fn served(cluster: &str, task: &TaskRef) -> Vec<String> {
    (0..=task.version.minor)
        .map(|minor| {
            let wanted = TaskRef {
                name: task.name.clone(),
                version: Version {
                    major: task.version.major,
                    minor,
                },
            };
            backend(cluster, &wanted)
        })
        .collect()
}

/// What a task waits for while no agent serves it, for a person.
pub fn waits_for(backend: &str) -> Option<String> {
    let (cluster, task) = parse_backend(backend)?;
    Some(format!(
        "waiting for an agent in cluster {cluster} serving {task} (same major version, minor {} or later)",
        task.version.minor
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_parse_or_say_why_not() {
        let t: TaskRef = "train@2.1".parse().unwrap();
        assert_eq!(t.name, "train");
        assert_eq!(t.version, Version { major: 2, minor: 1 });
        assert_eq!(t.to_string(), "train@2.1");
        for (bad, says) in [
            ("train", "NAME@MAJOR.MINOR"),
            ("train@2", "MAJOR.MINOR"),
            ("train@2.x", "MAJOR.MINOR"),
            ("train@2.1.0", "MAJOR.MINOR"),
            ("train@-1.0", "MAJOR.MINOR"),
            ("Train@1.0", "lowercase"),
            ("tr.ain@1.0", "lowercase"),
            ("@1.0", "1 to 63"),
            ("t@1.100", "at most 99"),
        ] {
            let err = bad.parse::<TaskRef>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn compatible_means_same_major_and_no_older_minor() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("2.3").serves(v("2.1")));
        assert!(v("2.3").serves(v("2.3")));
        assert!(!v("2.1").serves(v("2.3")));
        assert!(!v("3.5").serves(v("2.1")));
        assert!(!v("1.9").serves(v("2.0")));
    }

    #[test]
    fn an_agent_consumes_exactly_the_requests_it_serves() {
        let t: TaskRef = "train@2.2".parse().unwrap();
        assert_eq!(
            served("gpu", &t),
            [
                "agent.gpu.train.2.0",
                "agent.gpu.train.2.1",
                "agent.gpu.train.2.2"
            ]
        );
        let asked: TaskRef = "train@2.1".parse().unwrap();
        let b = backend("gpu", &asked);
        assert_eq!(parse_backend(&b), Some(("gpu".to_string(), asked)));
        assert_eq!(parse_backend("local"), None);
        assert_eq!(parse_backend("agent.gpu.train.2"), None);
        assert!(waits_for(&b).unwrap().contains("cluster gpu serving train@2.1"));
    }
}
