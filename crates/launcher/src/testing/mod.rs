//! A backend for tests (feature `testing`): compute that lives elsewhere (no local process, logs
//! pulled by a cursor, compute that outlives the launcher), on a [`Platform`] held in memory and
//! shared by every launcher of a test. It is the runtime's test double, and the launcher other
//! services' tests run: the real runtime on the in-memory bus, with scripted compute.
//!
//! A dispatch whose command is a conformance [`Program`] (as JSON) runs it, step by step, on
//! the platform. Any other command is decided by the platform's [`Script`], when it has one
//! (how the attempt ends, after how long, with which outputs), or else makes compute a test
//! drives by hand through [`Platform::with`]. Whatever runs, the platform keeps a [`Ledger`] of
//! the compute it created: attempts per task, two attempts of a task alive at once, starts per
//! job.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{Outcome, OutputFile, Stream, TaskDispatched};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};

pub use program::{Program, Step};

mod program;

/// The runner type of a platform not [named](Platform::named) otherwise.
pub const BACKEND: &str = "remote";
/// The working directory as the platform's compute sees it.
const WORK: &str = "/work";

/// How a scripted attempt ends.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `succeeded`: exits 0 with `outputs`; `failed`: exits 1; `lost`: vanishes from the
    /// platform. `timed_out` and `cancelled` run until stopped: by the runtime, once the
    /// dispatch's `timeoutMs` has passed, or on a `task.cancel`.
    pub outcome: Outcome,
    /// How long it runs before it ends as planned.
    pub run_for: Duration,
    /// What it writes at `$FERRY_OUTPUTS` when it succeeds.
    pub outputs: Map<String, Value>,
    /// What it writes at `$FERRY_SUBTASKS`, whatever its outcome.
    pub subtasks: Option<String>,
}

/// Decides each attempt whose command is not a [`Program`].
pub type Script = Arc<dyn Fn(&TaskDispatched) -> Plan + Send + Sync>;

/// What the platform created and ran, as a test of a scheduler wants to know it.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Attempt ids whose compute was created, per (job, task), in order. One attempt created
    /// twice is here twice.
    pub started: HashMap<(String, String), Vec<String>>,
    /// Attempts whose compute runs now, per (job, task).
    pub running: HashMap<(String, String), HashSet<String>>,
    /// `job/task` each time a task's compute was created while another attempt of it ran.
    pub overlaps: Vec<String>,
    /// Tasks whose dispatch carried an upstream output left unfilled.
    pub unfilled: Vec<String>,
    /// Task ids in the order their compute was created, per job.
    pub order: HashMap<String, Vec<String>>,
    /// Most attempts of a job running at once.
    pub max_running: HashMap<String, usize>,
    now_running: HashMap<String, usize>,
}

impl Ledger {
    /// Attempts of a job running now.
    pub fn running_in(&self, job_id: &str) -> usize {
        self.now_running.get(job_id).copied().unwrap_or(0)
    }

    /// Attempts of a task whose compute was created.
    pub fn attempts_of(&self, job_id: &str, task_id: &str) -> usize {
        self.started
            .get(&(job_id.to_string(), task_id.to_string()))
            .map(Vec::len)
            .unwrap_or(0)
    }

    fn start(&mut self, who: &Who) {
        let key = (who.job_id.clone(), who.task_id.clone());
        self.started
            .entry(key.clone())
            .or_default()
            .push(who.attempt_id.clone());
        let running = self.running.entry(key).or_default();
        running.insert(who.attempt_id.clone());
        if running.len() > 1 {
            self.overlaps.push(format!("{}/{}", who.job_id, who.task_id));
        }
        self.order
            .entry(who.job_id.clone())
            .or_default()
            .push(who.task_id.clone());
        let now = self.now_running.entry(who.job_id.clone()).or_default();
        *now += 1;
        let now = *now;
        let max = self.max_running.entry(who.job_id.clone()).or_default();
        *max = (*max).max(now);
    }

    fn end(&mut self, who: &Who) {
        let key = (who.job_id.clone(), who.task_id.clone());
        if self
            .running
            .get_mut(&key)
            .is_some_and(|r| r.remove(&who.attempt_id))
            && let Some(n) = self.now_running.get_mut(&who.job_id)
        {
            *n -= 1;
        }
    }
}

/// The attempt a container was created for.
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
}

/// One container of the platform.
#[derive(Debug, Default)]
pub struct Container {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// It waits on the platform (queued) until this is set.
    pub running: bool,
    pub exit: Option<i32>,
    /// Why it did not succeed, when the platform says more than its exit status.
    pub error: Option<String>,
    /// It is gone from its platform without an end (a node lost), and why.
    pub vanished: Option<String>,
    pub stopped: bool,
    /// What the task wrote at `$FERRY_OUTPUTS`.
    pub outputs: Option<Vec<u8>>,
    /// What the task wrote at `$FERRY_SUBTASKS`.
    pub subtasks: Option<Vec<u8>>,
    /// Files written in its working directory.
    pub files: HashMap<String, Vec<u8>>,
    pub who: Who,
}

impl Container {
    fn ended(&self) -> bool {
        self.exit.is_some() || self.vanished.is_some()
    }
}

/// A platform that keeps its compute whatever happens to the launcher, reached by name.
pub struct Platform {
    pub containers: Mutex<HashMap<String, Container>>,
    pub released: Mutex<Vec<String>>,
    /// How long created compute waits on the platform before it runs, as a pod Pending does.
    /// Zero: it runs as it is created.
    pub queue: Duration,
    /// What it created and ran.
    pub ledger: Arc<Mutex<Ledger>>,
    name: &'static str,
    script: Option<Script>,
    /// Woken whenever compute ends.
    ended: Notify,
    /// Where compute runs: the test's runtime, which outlives every launcher of the test.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("name", &self.name)
            .field("containers", &self.containers)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Default for Platform {
    /// A platform of runner type [`BACKEND`] whose compute runs on the current tokio runtime.
    fn default() -> Self {
        Platform {
            containers: Mutex::default(),
            released: Mutex::default(),
            queue: Duration::ZERO,
            ledger: Arc::default(),
            name: BACKEND,
            script: None,
            ended: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Platform {
    /// The runner type its backend serves (`local`, to stand in for the local launcher).
    pub fn named(self, name: &'static str) -> Self {
        Platform { name, ..self }
    }

    /// Compute that waits `queue` on the platform before it runs.
    pub fn queued(self, queue: Duration) -> Self {
        Platform { queue, ..self }
    }

    /// Attempts whose command is not a [`Program`] run as `script` decides.
    pub fn scripted(self, script: Script) -> Self {
        Platform {
            script: Some(script),
            ..self
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut Container) -> T) -> BackendResult<T> {
        let mut all = self.containers.lock().unwrap();
        let c = all
            .get_mut(name)
            .ok_or_else(|| AttemptError::Platform(format!("no container {name}")))?;
        let was_ended = c.ended();
        let out = f(c);
        if !was_ended && c.ended() {
            self.ledger.lock().unwrap().end(&c.who);
            self.ended.notify_waiters();
        }
        Ok(out)
    }

    /// Applies `f` to container `name` while it has not ended; false once it has (or is gone).
    fn step(&self, name: &str, f: impl FnOnce(&mut Container)) -> bool {
        let mut going = false;
        let _ = self.with(name, |c| {
            if !c.ended() {
                f(c);
                going = true;
            }
        });
        going
    }

    /// Runs `program` in container `name` until it ends or is stopped: on the tokio runtime
    /// of the test, not of a launcher, so it outlives launchers like remote compute does.
    fn run(
        self: &Arc<Self>,
        name: String,
        program: Program,
        env: HashMap<String, String>,
        inputs: HashMap<String, Vec<u8>>,
    ) {
        let platform = self.clone();
        let queue = self.queue;
        self.runtime.spawn(async move {
            tokio::time::sleep(queue).await;
            let step = |f: &mut dyn FnMut(&mut Container)| platform.step(&name, f);
            step(&mut |c| c.running = true);
            let mut code = 0;
            for s in program.0 {
                let going = match s {
                    Step::Out(t) => step(&mut |c| line(&mut c.stdout, &t)),
                    Step::Err(t) => step(&mut |c| line(&mut c.stderr, &t)),
                    Step::Count(n) => {
                        step(&mut |c| (1..=n).for_each(|i| line(&mut c.stdout, &i.to_string())))
                    }
                    Step::Env(k) => {
                        let v = env.get(&k).cloned().unwrap_or_default();
                        step(&mut |c| line(&mut c.stdout, &format!("{k}={v}")))
                    }
                    Step::Cat(path) => match inputs.get(&path) {
                        Some(bytes) => step(&mut |c| c.stdout.extend(bytes)),
                        None => {
                            step(&mut |c| line(&mut c.stderr, &format!("cat: {path}: No such file")));
                            code = 1;
                            false
                        }
                    },
                    Step::Outputs(t) => step(&mut |c| c.outputs = Some(t.clone().into_bytes())),
                    Step::Subtasks(t) => step(&mut |c| c.subtasks = Some(t.clone().into_bytes())),
                    Step::Write { path, content } => step(&mut |c| {
                        c.files.insert(path.clone(), content.clone().into_bytes());
                    }),
                    Step::Sleep(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        step(&mut |_| {})
                    }
                    Step::Exit(n) => {
                        code = n;
                        false
                    }
                };
                if !going {
                    break;
                }
            }
            step(&mut |c| c.exit = Some(code));
        });
    }

    /// Runs container `name` as `plan` says.
    fn play(self: &Arc<Self>, name: String, plan: Plan) {
        let platform = self.clone();
        let queue = self.queue;
        self.runtime.spawn(async move {
            tokio::time::sleep(queue).await;
            if !platform.step(&name, |c| c.running = true) {
                return;
            }
            let end: fn(&mut Container, Map<String, Value>) = match plan.outcome {
                Outcome::Succeeded => |c, outputs| {
                    c.outputs = Some(serde_json::to_vec(&Value::Object(outputs)).unwrap_or_default());
                    c.exit = Some(0);
                },
                Outcome::Failed => |c, _| {
                    c.error = Some("scripted failed".into());
                    c.exit = Some(1);
                },
                Outcome::Lost => |c, _| c.vanished = Some("scripted lost: the compute vanished".into()),
                // Runs until stopped.
                Outcome::TimedOut | Outcome::Cancelled => return,
            };
            tokio::time::sleep(plan.run_for).await;
            let subtasks = plan.subtasks.map(String::into_bytes);
            platform.step(&name, |c| {
                c.subtasks = subtasks;
                end(c, plan.outputs)
            });
        });
    }
}

fn line(buf: &mut Vec<u8>, text: &str) {
    buf.extend(text.as_bytes());
    buf.push(b'\n');
}

/// The backend: a handle is the container's name again, as a remote API would give an id.
/// Its shutdown policy is `Detach` unless a test picks another, to run the runtime's other
/// policies on the same compute.
pub struct Remote(pub Arc<Platform>, pub ShutdownPolicy);

impl Remote {
    pub fn detached(platform: Arc<Platform>) -> Self {
        Remote(platform, ShutdownPolicy::Detach)
    }
}

#[async_trait]
impl Backend for Remote {
    fn name(&self) -> &'static str {
        self.0.name
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        self.1
    }

    fn describe(&self, compute: &Compute) -> String {
        format!("{}/{}", self.0.name, compute.name)
    }

    fn may_queue(&self) -> bool {
        !self.0.queue.is_zero()
    }

    fn check(&self, _: &TaskDispatched) -> BackendResult<()> {
        Ok(())
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let d = task.dispatch;
        let who = Who {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
        };
        let unfilled = d
            .command
            .iter()
            .chain(d.env.values())
            .any(|t| t.outputs().count() > 0);
        if unfilled {
            self.0.ledger.lock().unwrap().unfilled.push(d.task_id.clone());
        }
        // Everything the task is given is settled before anything is created.
        let mut env: HashMap<String, String> = HashMap::new();
        for (k, v) in &d.env {
            env.insert(k.clone(), task.fill(v, &format!("env.{k}"), WORK)?);
        }
        env.insert("FERRY_JOB_ID".into(), d.job_id.clone());
        env.insert("FERRY_TASK_ID".into(), d.task_id.clone());
        env.insert("FERRY_ATTEMPT_ID".into(), d.attempt_id.clone());
        env.insert("FERRY_WORKING_DIR".into(), WORK.into());
        env.insert("FERRY_OUTPUTS".into(), "/outputs.json".into());
        env.insert("FERRY_SUBTASKS".into(), "/subtasks.json".into());
        let mut inputs = HashMap::new();
        for (name, content) in &d.input_files {
            crate::template::check_input_name(name).map_err(AttemptError::Task)?;
            let filled = task.fill(content, &format!("inputFiles[{name:?}]"), WORK)?;
            inputs.insert(name.clone(), filled.into_bytes());
        }
        let mut command = Vec::new();
        for (i, part) in d.command.iter().enumerate() {
            command.push(task.fill(part, &format!("command[{i}]"), WORK)?);
        }
        let program = match command.as_slice() {
            [one] => serde_json::from_str::<Program>(one).ok(),
            _ => None,
        };
        let created = {
            let mut all = self.0.containers.lock().unwrap();
            // Look before create: what exists is adopted.
            let fresh = !all.contains_key(&reserved.name);
            if fresh {
                self.0.ledger.lock().unwrap().start(&who);
                all.insert(
                    reserved.name.clone(),
                    Container {
                        who,
                        ..Container::default()
                    },
                );
            }
            fresh
        };
        if created {
            match (program, &self.0.script) {
                (Some(program), _) => self.0.run(reserved.name.clone(), program, env, inputs),
                (None, Some(script)) => self.0.play(reserved.name.clone(), script(d)),
                // Compute a test drives by hand runs at once.
                (None, None) => self.0.with(&reserved.name, |c| c.running = true)?,
            }
        }
        Compute::with_handle(reserved.name.clone(), &serde_json::json!({"id": reserved.name}))
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        let exists = self.0.containers.lock().unwrap().contains_key(&reserved.name);
        Ok(exists.then(|| reserved.clone()))
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let all = self.0.containers.lock().unwrap();
        let Some(c) = all.get(&compute.name) else {
            return Ok(ComputeState::Vanished(format!(
                "container {} is gone",
                compute.name
            )));
        };
        if let Some(why) = &c.vanished {
            return Ok(ComputeState::Vanished(why.clone()));
        }
        Ok(match c.exit {
            None if !c.running => ComputeState::Pending,
            None => ComputeState::Running,
            Some(code) => ComputeState::Exited(Exit {
                code: Some(code),
                error: (code != 0).then(|| {
                    c.error
                        .clone()
                        .unwrap_or_else(|| format!("exited with status {code}"))
                }),
                reason: None,
            }),
        })
    }

    /// Woken as compute ends, so that many attempts waiting cost nothing.
    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        loop {
            let woken = self.0.ended.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.status(compute).await? {
                // Read again now and then all the same, as a backend's watch would.
                ComputeState::Pending | ComputeState::Running => {
                    let _ = tokio::time::timeout(Duration::from_millis(50), woken).await;
                }
                ended => return Ok(ended),
            }
        }
    }

    async fn read_logs(
        &self,
        compute: &Compute,
        stream: Stream,
        from: &LogPosition,
        max_bytes: usize,
    ) -> BackendResult<LogRead> {
        let all = self.0.containers.lock().unwrap();
        let Some(c) = all.get(&compute.name) else {
            // Its logs went with it.
            return Ok(LogRead {
                complete: true,
                ..LogRead::default()
            });
        };
        let (bytes, at) = match stream {
            Stream::Stdout => (&c.stdout, from.stdout as usize),
            Stream::Stderr => (&c.stderr, from.stderr as usize),
        };
        let at = at.min(bytes.len());
        let read: Vec<u8> = bytes[at..].iter().take(max_bytes).copied().collect();
        Ok(LogRead {
            complete: c.ended() && at + read.len() == bytes.len(),
            cursor: serde_json::json!({"since": at + read.len()}),
            bytes: read,
        })
    }

    async fn stop(&self, compute: &Compute, _: Duration) -> BackendResult<()> {
        let _ = self.0.with(&compute.name, |c| {
            c.stopped = true;
            if !c.ended() {
                c.exit = Some(143);
            }
        });
        Ok(())
    }

    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        let d = task.dispatch;
        self.0.with(&compute.name, |c| {
            let mut files: Vec<OutputFile> = Vec::new();
            for (path, bytes) in &c.files {
                let matches = d
                    .output_files
                    .iter()
                    .any(|pattern| glob::Pattern::new(pattern).is_ok_and(|p| p.matches(path)));
                if matches {
                    files.push(OutputFile {
                        path: path.clone(),
                        uri: format!("mem://{}/{}/{}/{path}", d.job_id, d.task_id, d.attempt_id),
                        size: bytes.len() as u64,
                    });
                }
            }
            files.sort_by(|a, b| a.path.cmp(&b.path));
            Collected {
                outputs: c.outputs.clone(),
                subtasks: c.subtasks.clone(),
                files,
            }
        })
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        let gone = self.0.containers.lock().unwrap().remove(&compute.name);
        if let Some(c) = gone
            && !c.ended()
        {
            self.0.ledger.lock().unwrap().end(&c.who);
        }
        self.0.released.lock().unwrap().push(compute.name.clone());
        Ok(())
    }

    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let all = self.0.containers.lock().unwrap();
        Ok(all.keys().map(|n| Compute::named(n.clone())).collect())
    }
}

#[cfg(any(test, feature = "conformance"))]
pub use target::DoubleTarget;

#[cfg(any(test, feature = "conformance"))]
mod target {
    use std::path::Path;

    use ferry_event::payload::{Resources, Runner};
    use ferry_event::template::Template;

    use super::*;
    use crate::conformance::Target;
    use crate::journal::Journal;

    /// The platform as a conformance target, with a shutdown policy.
    pub struct DoubleTarget(pub Arc<Platform>, pub ShutdownPolicy);

    impl DoubleTarget {
        /// A target on a new platform, whose programs run on the current tokio runtime.
        pub fn new(policy: ShutdownPolicy) -> Self {
            DoubleTarget(Arc::new(Platform::default()), policy)
        }

        /// A target whose compute waits `queue` on its platform before it runs.
        pub fn queued(policy: ShutdownPolicy, queue: Duration) -> Self {
            DoubleTarget(Arc::new(Platform::default().queued(queue)), policy)
        }
    }

    #[async_trait]
    impl Target for DoubleTarget {
        fn name(&self) -> &'static str {
            self.0.name
        }

        async fn backend(&self, _: &Path, _: &Journal) -> Arc<dyn Backend> {
            Arc::new(Remote(self.0.clone(), self.1))
        }

        fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
            let json = serde_json::to_string(program).expect("a program serializes");
            (Runner::default(), vec![Template::text(json)])
        }

        fn refused(&self) -> Option<(Resources, &'static str)> {
            None
        }

        async fn leftovers(&self, _: &Path) -> Vec<String> {
            self.0.containers.lock().unwrap().keys().cloned().collect()
        }

        async fn kill(&self, attempt_id: &str) -> Result<(), String> {
            let name = crate::backend::default_compute_name(attempt_id);
            self.0
                .with(&name, |c| {
                    c.exit.get_or_insert(137);
                })
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_event::kind;
    use ferry_event::template::{Part, Template};

    use super::*;
    use crate::conformance::Harness;

    /// Through the runtime, scripted compute is reported as its plan says (with the outputs
    /// of a success, the error of a failure), a `timed_out` one once its timeout passes, a
    /// held one once cancelled; the ledger counts what was created and what runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripted_compute_is_reported_as_planned_and_counted() {
        let script: Script = Arc::new(|d: &TaskDispatched| Plan {
            outcome: match d.task_id.as_str() {
                "ok" => Outcome::Succeeded,
                "bad" => Outcome::Failed,
                "gone" => Outcome::Lost,
                "slow" => Outcome::TimedOut,
                _ => Outcome::Cancelled,
            },
            run_for: Duration::from_millis(20),
            outputs: serde_json::from_value(serde_json::json!({"rows": 42})).unwrap(),
            subtasks: Some(r#"[{"id": "more", "runner": "local", "command": ["true"]}]"#.into()),
        });
        let platform = Arc::new(Platform::default().named("local").scripted(script));
        let target = Arc::new(DoubleTarget(platform.clone(), ShutdownPolicy::Kill));
        let mut h = Harness::new(target).await;
        let launcher = h.start().await;
        let hole = Template(vec![Part::Output {
            task: "ok".into(),
            key: "rows".into(),
        }]);
        let mut held = None;
        for task in ["ok", "bad", "gone", "slow", "held", "hole"] {
            let mut d = h.task(&h.id(task), &Program::default());
            d.task_id = task.into();
            d.command = match task {
                "hole" => vec![hole.clone()],
                _ => vec![Template::text("true")],
            };
            if task == "slow" {
                d.timeout_ms = Some(100);
            }
            h.dispatch(&d).await;
            if task == "held" {
                held = Some(d);
            }
        }
        let held = held.unwrap();
        let job = held.job_id.clone();
        h.expect(kind::TASK_STARTED, &held.attempt_id).await;
        h.cancel(&held, "enough").await;

        let ok = h.finished(&h.id("ok")).await;
        assert_eq!(
            (ok.outcome, ok.exit_code),
            (Outcome::Succeeded, Some(0)),
            "{ok:?}"
        );
        assert_eq!(ok.outputs["rows"], 42);
        assert_eq!(ok.subtasks.len(), 1, "a success sends its subtasks: {ok:?}");
        assert_eq!(ok.subtasks[0]["id"], "more");
        let bad = h.finished(&h.id("bad")).await;
        assert_eq!(
            (bad.outcome, bad.exit_code, bad.error.as_deref()),
            (Outcome::Failed, Some(1), Some("scripted failed"))
        );
        assert!(
            bad.subtasks.is_empty(),
            "a failed attempt's subtasks are never sent: {bad:?}"
        );
        let gone = h.finished(&h.id("gone")).await;
        assert_eq!(gone.outcome, Outcome::Lost, "{gone:?}");
        assert!(
            gone.error.as_deref().unwrap().contains("scripted lost"),
            "{gone:?}"
        );
        let slow = h.finished(&h.id("slow")).await;
        assert_eq!(slow.outcome, Outcome::TimedOut, "{slow:?}");
        let held = h.finished(&held.attempt_id).await;
        assert_eq!(
            (held.outcome, held.error.as_deref()),
            (Outcome::Cancelled, Some("cancelled: enough"))
        );
        let hole = h.finished(&h.id("hole")).await;
        assert_eq!(hole.outcome, Outcome::Failed, "{hole:?}");
        launcher.stop().await;

        let ledger = platform.ledger.lock().unwrap();
        for task in ["ok", "bad", "gone", "slow", "held"] {
            assert_eq!(ledger.attempts_of(&job, task), 1, "{task}: {ledger:?}");
        }
        assert_eq!(ledger.attempts_of(&job, "hole"), 0, "{ledger:?}");
        assert_eq!(ledger.unfilled, ["hole"]);
        assert!(ledger.overlaps.is_empty(), "{ledger:?}");
        assert_eq!(ledger.running_in(&job), 0, "{ledger:?}");
        assert!(
            (2..=h.max_parallel).contains(&ledger.max_running[&job]),
            "{ledger:?}"
        );
    }
}
