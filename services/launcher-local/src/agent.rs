//! `ferry agent`: the local launcher serving the registered tasks of one named cluster.
//!
//! An agent runs on a machine of its own and registers, in its configuration file, the tasks it
//! can run: each with a name and a version (`train@2.3`) and how to run it (command, env,
//! working directory). A flow asks for one with `runner: { type: agent, cluster: gpu, task:
//! train@2.1 }`. The scheduler sends such a task to the dispatch topic of its exact request
//! (`ferry_event::agent`); an agent consumes the shared queue of every request it is
//! compatible with (same major, its minor at least the requested one), so it only ever
//! receives work it can run, and agents of one cluster and task share the work.
//!
//! Everything else is the local launcher's: the launcher runtime (journal, heartbeats, logs,
//! secrets, outputs, `$FERRY_SUBTASKS`) driving the `local` backend (slots, process groups).
//! The agent resolves each dispatch before the local backend sees it: the registered command
//! runs, with the task's own `command` (if any) appended as arguments, and the registered
//! `env` over the task's. On SIGTERM an agent takes no more work and lets running tasks finish
//! within its drain grace ([`ShutdownPolicy::Drain`]); dispatches it had not started go back to
//! the broker for another agent.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::Bus;
use ferry_event::agent::{self, TaskRef};
use ferry_event::payload::{LauncherPresence, LocalRunner, Runner, Stream, TaskDispatched};
use ferry_event::template::Template;
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backend::Local;
use crate::state::Journal;
use crate::{Config, Error, Result};

/// The backend name agents announce themselves with (`launcher.presence`).
pub const BACKEND: &str = agent::RUNNER;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The cluster whose tasks it serves.
    pub cluster: String,
    /// The tasks it runs.
    pub registry: Registry,
    /// How long running tasks get to finish when the agent is asked to stop (SIGTERM) before
    /// they are stopped and reported lost (and so run again elsewhere).
    pub drain: Duration,
    /// Everything the local launcher is configured with (data directory, capacity as
    /// `max_parallel`, secrets, …).
    pub launcher: Config,
}

impl AgentConfig {
    /// An agent of `cluster` running the tasks of `registry`, as a local launcher of `launcher`
    /// with its source and group named for agents; 30 s to drain.
    pub fn new(cluster: &str, registry: Registry, mut launcher: Config) -> Result<AgentConfig> {
        agent::check_name(cluster).map_err(|e| Error::Config(format!("--cluster: the cluster {e}")))?;
        launcher.service.source = ferry_runtime::instance_source(&format!("agent-{cluster}"));
        launcher.service.group = format!("agent-{cluster}");
        Ok(AgentConfig {
            cluster: cluster.to_string(),
            registry,
            drain: Duration::from_secs(30),
            launcher,
        })
    }
}

/// `ferry agent`'s flags (besides the bus and data directory every service takes).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Agent")]
pub struct AgentFlags {
    /// The cluster whose tasks this agent runs (`runner: { type: agent, cluster: NAME, … }`):
    /// lowercase letters, digits, `-` and `_`.
    #[arg(long, env = "FERRY_AGENT_CLUSTER", value_name = "NAME")]
    pub cluster: String,
    /// The agent's configuration file (YAML or JSON): the tasks it registers, each with name,
    /// version, command and optionally env and workingDir (docs/agents.md).
    #[arg(long, env = "FERRY_AGENT_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Tasks it runs at once: its capacity.
    #[arg(long, env = "FERRY_MAX_PARALLEL", value_name = "N", default_value_t = 4)]
    pub max_parallel: usize,
    /// On SIGTERM, how long running tasks get to finish before they are stopped (and run
    /// again by another agent); no new task starts meanwhile. A second signal stops at once.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "30s", value_parser = ferry_connect::service::duration)]
    pub shutdown_grace: Duration,
    /// Time a cancelled or timed-out task gets between SIGTERM and SIGKILL.
    #[arg(long, env = "FERRY_KILL_GRACE", value_name = "DURATION", default_value = "10s", value_parser = ferry_connect::service::duration)]
    pub kill_grace: Duration,
    /// Where output files are copied [default: DATA_DIR/artifacts]
    #[arg(long, env = "FERRY_ARTIFACT_DIR", value_name = "DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// Store output files in this bucket (s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]), as
    /// for `ferry service launcher`, instead of the artifact directory.
    #[arg(long, env = "FERRY_ARTIFACT_STORE", value_name = "URL")]
    pub artifact_store: Option<String>,
    /// A secrets file, readable by its owner only (as for `ferry service launcher`).
    #[arg(long, env = "FERRY_SECRETS_FILE", value_name = "PATH")]
    pub secrets_file: Option<PathBuf>,
    /// Also pass this variable of the agent's environment to tasks (repeatable; NAME or
    /// PREFIX*).
    #[arg(long, env = "FERRY_PASS_ENV", value_name = "NAME", value_delimiter = ',')]
    pub pass_env: Vec<String>,
    /// Run tasks as this user (name, uid or uid:gid); needs an agent running as root.
    #[arg(long, env = "FERRY_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
    /// Do not put each slot's processes in a cgroup.
    #[arg(long, env = "FERRY_NO_CGROUPS")]
    pub no_cgroups: bool,
}

impl AgentFlags {
    /// The agent's configuration, keeping its state in `data_dir`; fails when the
    /// configuration file cannot be read or is not valid, saying where.
    pub fn config(&self, data_dir: &Path) -> Result<AgentConfig> {
        let registry = Registry::load(&self.config)?;
        let mut launcher = Config::new(data_dir);
        if let Some(path) = &self.secrets_file {
            launcher.service.secrets_file = Some(path.clone());
        }
        if !self.pass_env.is_empty() {
            launcher.pass_env = self.pass_env.clone();
        }
        if let Some(user) = &self.run_as {
            launcher.run_as = Some(user.clone());
        }
        launcher.cgroups = !self.no_cgroups;
        launcher.service.artifact_dir = self.artifact_dir.clone();
        launcher.service.artifact_store = self.artifact_store.clone();
        launcher.service.max_parallel = self.max_parallel;
        launcher.service.kill_grace = self.kill_grace;
        let mut config = AgentConfig::new(&self.cluster, registry, launcher)?;
        config.drain = self.shutdown_grace;
        Ok(config)
    }
}

impl AgentConfig {
    /// The backends it serves, each with the consumer group agents share on it.
    pub fn served(&self) -> Vec<(String, String)> {
        served(&self.cluster, &self.registry)
    }
}

/// The backends an agent of `cluster` with `registry` serves, each with its shared group.
fn served(cluster: &str, registry: &Registry) -> Vec<(String, String)> {
    registry
        .tasks
        .iter()
        .flat_map(|r| agent::served(cluster, &r.task))
        .map(|backend| {
            let group = agent::group(&backend);
            (backend, group)
        })
        .collect()
}

/// One task an agent registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub task: TaskRef,
    /// The program and its arguments (no shell); a task's own `command` is appended.
    pub command: Vec<String>,
    /// Variables set for it, over the task's own `env`.
    pub env: BTreeMap<String, String>,
    /// The directory it starts in; by default the attempt's working directory. Input files are
    /// written to, and output files collected from, the attempt's working directory
    /// (`$FERRY_WORKING_DIR`) either way.
    pub working_dir: Option<PathBuf>,
}

/// The tasks an agent registers, read from its configuration file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registry {
    tasks: Vec<Registered>,
}

/// The keys of a registered task in the configuration file.
const TASK_KEYS: &[&str] = &["name", "version", "command", "env", "workingDir"];

impl Registry {
    /// Reads the configuration file at `path` (YAML or JSON).
    pub fn load(path: &Path) -> Result<Registry> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("cannot read the agent configuration {}", path.display()),
            source,
        })?;
        Registry::parse(&text, &path.display().to_string()).map_err(Error::Config)
    }

    /// Parses a configuration file's text; `name` names it in errors, which say where (the
    /// line and column of a syntax error, the field of anything else) and what is accepted.
    ///
    /// ```yaml
    /// tasks:
    ///   - name: train          # lowercase letters, digits, `-`, `_`
    ///     version: "2.3"       # MAJOR.MINOR, as a string
    ///     command: [python3, train.py]
    ///     env: { MODEL_DIR: /srv/models }
    ///     workingDir: /srv/train
    /// ```
    pub fn parse(text: &str, name: &str) -> std::result::Result<Registry, String> {
        let doc = ferry_flow::to_json(text, name).map_err(|p| p.to_string())?;
        let at = |field: &str, why: String| format!("{name}: {field}: {why}");
        let Value::Object(root) = doc else {
            return Err(format!(
                "{name}: the agent configuration must be a map with `tasks`"
            ));
        };
        if let Some(k) = root.keys().find(|k| *k != "tasks") {
            return Err(at(
                k,
                "unknown field; the configuration holds only `tasks`".into(),
            ));
        }
        let Some(Value::Array(list)) = root.get("tasks") else {
            return Err(at(
                "tasks",
                "missing, or not a list: list the tasks this agent runs, each with name, version and command"
                    .into(),
            ));
        };
        if list.is_empty() {
            return Err(at("tasks", "register at least one task".into()));
        }
        let mut tasks = Vec::with_capacity(list.len());
        let mut seen = HashSet::new();
        for (i, t) in list.iter().enumerate() {
            let field = |f: &str| format!("tasks[{i}].{f}");
            let Value::Object(t) = t else {
                return Err(at(
                    &format!("tasks[{i}]"),
                    "must be a map with name, version and command".into(),
                ));
            };
            if let Some(k) = t.keys().find(|k| !TASK_KEYS.contains(&k.as_str())) {
                return Err(at(
                    &field(k),
                    format!("unknown field; a task has {}", TASK_KEYS.join(", ")),
                ));
            }
            let text = |f: &str| match t.get(f) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                None | Some(Value::Null) => Ok(None),
                Some(other) => Err(at(&field(f), format!("must be a string, found {other}"))),
            };
            let task_name = text("name")?.ok_or_else(|| at(&field("name"), "missing".into()))?;
            agent::check_name(&task_name).map_err(|e| at(&field("name"), format!("the task name {e}")))?;
            let version = match t.get("version") {
                Some(Value::Number(n)) => {
                    return Err(at(
                        &field("version"),
                        format!(
                            "write the version as a string (\"{n}\"): as a number, 2.10 would read as 2.1"
                        ),
                    ));
                }
                _ => text("version")?.ok_or_else(|| {
                    at(
                        &field("version"),
                        "missing: give MAJOR.MINOR, e.g. \"2.3\"".into(),
                    )
                })?,
            };
            let version: agent::Version = version.parse().map_err(|e| at(&field("version"), e))?;
            let task = TaskRef {
                name: task_name,
                version,
            };
            if !seen.insert((task.name.clone(), task.version.major)) {
                return Err(at(
                    &format!("tasks[{i}]"),
                    format!(
                        "{task}: {} is registered twice with major version {}; register each major version once (its newest minor serves the older ones)",
                        task.name, task.version.major
                    ),
                ));
            }
            let command = match t.get("command") {
                Some(Value::Array(items)) if !items.is_empty() => items
                    .iter()
                    .enumerate()
                    .map(|(j, v)| match v {
                        Value::String(s) if j > 0 || !s.is_empty() => Ok(s.clone()),
                        Value::String(_) => Err(at(&field("command[0]"), "must name the program".into())),
                        other => Err(at(
                            &format!("tasks[{i}].command[{j}]"),
                            format!("must be a string, found {other}"),
                        )),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?,
                _ => {
                    return Err(at(
                        &field("command"),
                        "missing, empty or not a list: give the program and its arguments, e.g. [python3, train.py]"
                            .into(),
                    ));
                }
            };
            let mut env = BTreeMap::new();
            match t.get("env") {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    for (k, v) in m {
                        if k.is_empty() || k.contains(['=', '\0']) {
                            return Err(at(
                                &format!("tasks[{i}].env.{k}"),
                                "not a valid variable name (non-empty, without '=' or NUL)".into(),
                            ));
                        }
                        let v = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            other => {
                                return Err(at(
                                    &format!("tasks[{i}].env.{k}"),
                                    format!("must be a string, found {other}"),
                                ));
                            }
                        };
                        env.insert(k.clone(), v);
                    }
                }
                Some(other) => {
                    return Err(at(
                        &field("env"),
                        format!("must be a map of names to values, found {other}"),
                    ));
                }
            }
            let working_dir = match text("workingDir")? {
                None => None,
                Some(d) => {
                    let p = PathBuf::from(&d);
                    if !p.is_absolute() {
                        return Err(at(
                            &field("workingDir"),
                            format!("{d:?} must be an absolute path"),
                        ));
                    }
                    if !p.is_dir() {
                        return Err(at(
                            &field("workingDir"),
                            format!("{d:?} is not a directory on this machine"),
                        ));
                    }
                    Some(p)
                }
            };
            tasks.push(Registered {
                task,
                command,
                env,
                working_dir,
            });
        }
        Ok(Registry { tasks })
    }

    pub fn tasks(&self) -> &[Registered] {
        &self.tasks
    }

    /// The registered task that runs a request for `wanted`, if any.
    pub fn find(&self, wanted: &TaskRef) -> Option<&Registered> {
        self.tasks
            .iter()
            .find(|r| r.task.name == wanted.name && r.task.version.serves(wanted.version))
    }
}

/// The local backend serving the registered tasks of one cluster.
struct Agent {
    local: Local,
    cluster: String,
    registry: Registry,
    drain: Duration,
}

impl Agent {
    /// The dispatch as the local backend runs it: the registered command with the task's
    /// appended, the registered env over the task's; and where it starts.
    fn resolve(&self, d: &TaskDispatched) -> BackendResult<(TaskDispatched, Option<PathBuf>)> {
        let Runner::Agent(a) = &d.runner else {
            return Err(AttemptError::Task(format!(
                "runner type {:?} cannot run on an agent",
                d.runner.backend()
            )));
        };
        let wanted = a
            .task_ref()
            .map_err(|e| AttemptError::Task(format!("runner.{e}")))?;
        if a.cluster != self.cluster {
            return Err(AttemptError::Task(format!(
                "runner.cluster: the task is for cluster {}, this agent serves cluster {}",
                a.cluster, self.cluster
            )));
        }
        let Some(registered) = self.registry.find(&wanted) else {
            let offered: Vec<String> = self.registry.tasks.iter().map(|r| r.task.to_string()).collect();
            return Err(AttemptError::Task(format!(
                "runner.task: this agent runs no task compatible with {wanted} (same major version, \
                 minor {} or later); it registers {}",
                wanted.version.minor,
                offered.join(", ")
            )));
        };
        let mut resolved = d.clone();
        resolved.runner = Runner::Local(LocalRunner {});
        resolved.command = registered
            .command
            .iter()
            .map(Template::text)
            .chain(d.command.iter().cloned())
            .collect();
        for (k, v) in &registered.env {
            resolved.env.insert(k.clone(), Template::text(v));
        }
        Ok((resolved, registered.working_dir.clone()))
    }
}

#[async_trait]
impl Backend for Agent {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        ShutdownPolicy::Drain(self.drain)
    }

    fn serves(&self, _group: &str) -> Vec<(String, String)> {
        served(&self.cluster, &self.registry)
    }

    fn describe_presence(&self, presence: &mut LauncherPresence) {
        presence.cluster = Some(self.cluster.clone());
        presence.tasks = self.registry.tasks.iter().map(|r| r.task.to_string()).collect();
    }

    fn check(&self, d: &TaskDispatched) -> BackendResult<()> {
        let (resolved, _) = self.resolve(d)?;
        self.local.check(&resolved)
    }

    async fn reserve(&self, task: Task<'_>) -> BackendResult<Compute> {
        self.local.reserve(task).await
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let (resolved, cwd) = self.resolve(task.dispatch)?;
        self.local
            .create_in(task.with_dispatch(&resolved), reserved, cwd)
            .await
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        self.local.find(reserved).await
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        self.local.status(compute).await
    }

    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        self.local.wait(compute).await
    }

    async fn read_logs(
        &self,
        compute: &Compute,
        stream: Stream,
        from: &LogPosition,
        max_bytes: usize,
    ) -> BackendResult<LogRead> {
        self.local.read_logs(compute, stream, from, max_bytes).await
    }

    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()> {
        self.local.stop(compute, grace).await
    }

    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        // What is collected (outputs, subtasks, output files) is the task's own, unchanged by
        // resolving it: a task registered no more since its start still has its outputs read.
        self.local.collect(compute, task).await
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        self.local.release(compute).await
    }

    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        self.local.list_owned().await
    }
}

/// Runs an agent until `shutdown` is cancelled (or the bus closes): on the way out it takes no
/// more work and lets running tasks finish within [`AgentConfig::drain`].
pub async fn run(config: AgentConfig, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    let AgentConfig {
        cluster,
        registry,
        drain,
        launcher,
    } = config;
    tracing::info!(
        %cluster,
        tasks = %registry.tasks.iter().map(|r| r.task.to_string()).collect::<Vec<_>>().join(", "),
        "agent starting"
    );
    crate::serve(launcher, bus, shutdown, move |local| {
        Arc::new(Agent {
            local,
            cluster,
            registry,
            drain,
        })
    })
    .await
}

/// The agent backend of `config`, over `journal`, for a caller that runs the launcher runtime
/// itself (the conformance suite). [`run`] is the service.
pub async fn backend(config: AgentConfig, journal: &Journal) -> Result<Arc<dyn Backend>> {
    let local = crate::open_local(config.launcher, journal).await?;
    Ok(Arc::new(Agent {
        local,
        cluster: config.cluster,
        registry: config.registry,
        drain: config.drain,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        Registry::parse(text, "agent.yaml").unwrap_err()
    }

    #[test]
    fn a_registry_reads_and_finds_compatible_tasks() {
        let r = Registry::parse(
            "tasks:\n  - name: train\n    version: \"2.3\"\n    command: [python3, train.py]\n    env: { N: 4 }\n    workingDir: /\n  - name: train\n    version: \"3.0\"\n    command: [train3]\n",
            "agent.yaml",
        )
        .unwrap();
        let find = |s: &str| r.find(&s.parse().unwrap()).map(|t| t.task.to_string());
        assert_eq!(find("train@2.1").as_deref(), Some("train@2.3"));
        assert_eq!(find("train@2.3").as_deref(), Some("train@2.3"));
        assert_eq!(find("train@2.4"), None);
        assert_eq!(find("train@3.0").as_deref(), Some("train@3.0"));
        assert_eq!(find("train@1.0"), None);
        assert_eq!(find("eval@2.0"), None);
        assert_eq!(r.tasks()[0].env["N"], "4");
        assert_eq!(r.tasks()[0].working_dir.as_deref(), Some(Path::new("/")));
    }

    #[test]
    fn bad_configurations_say_where_and_what_is_accepted() {
        for (text, says) in [
            ("tasks: [\n", "agent.yaml:"),
            ("task: []\n", "agent.yaml: task: unknown field"),
            ("tasks: []\n", "tasks: register at least one task"),
            (
                "tasks: [{name: t, version: 2.3, command: [x]}]\n",
                "tasks[0].version: write the version as a string",
            ),
            (
                "tasks: [{name: t, version: '2', command: [x]}]\n",
                "tasks[0].version: version \"2\" must be MAJOR.MINOR",
            ),
            (
                "tasks: [{name: T, version: '2.0', command: [x]}]\n",
                "tasks[0].name: the task name \"T\" may hold only",
            ),
            (
                "tasks: [{name: t, version: '2.0'}]\n",
                "tasks[0].command: missing",
            ),
            (
                "tasks: [{name: t, version: '2.0', command: [x], cmd: y}]\n",
                "tasks[0].cmd: unknown field",
            ),
            (
                "tasks: [{name: t, version: '2.0', command: [x], workingDir: rel}]\n",
                "must be an absolute path",
            ),
            (
                "tasks: [{name: t, version: '2.0', command: [x], workingDir: /no/such/dir}]\n",
                "not a directory",
            ),
            (
                "tasks: [{name: t, version: '2.0', command: [x], env: {'A=B': x}}]\n",
                "tasks[0].env.A=B",
            ),
            (
                "tasks: [{name: t, version: '2.0', command: [x]}, {name: t, version: '2.1', command: [y]}]\n",
                "tasks[1]: t@2.1: t is registered twice with major version 2",
            ),
        ] {
            let p = problem(text);
            assert!(p.contains(says), "{text:?}: {p}");
        }
    }
}
