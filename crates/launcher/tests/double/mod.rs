//! The runtime's test double: a backend whose compute lives elsewhere (no local process, logs
//! pulled by a cursor, compute that outlives the launcher, `ShutdownPolicy::Detach`), on a
//! platform held in memory and shared by every launcher of a test.
//!
//! A dispatch whose command is a conformance [`Program`] (as JSON) runs it, step by step, on
//! the platform; any other command makes compute that a test drives by hand through
//! [`Platform::with`].

// Each test file uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{OutputFile, Runner, Stream, TaskDispatched};
use ferry_event::template::Template;
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use ferry_launcher::conformance::{Program, Step, Target};
use ferry_launcher::journal::Journal;

pub const BACKEND: &str = "remote";
/// The working directory as the double's compute sees it.
const WORK: &str = "/work";

/// One container of the platform.
#[derive(Debug, Default)]
pub struct Container {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// It waits on the platform (queued) until this is set.
    pub running: bool,
    pub exit: Option<i32>,
    pub stopped: bool,
    /// What the task wrote at `$FERRY_OUTPUTS`.
    pub outputs: Option<Vec<u8>>,
    /// Files written in its working directory.
    pub files: HashMap<String, Vec<u8>>,
}

/// A platform that keeps its compute whatever happens to the launcher, reached by name.
#[derive(Debug)]
pub struct Platform {
    pub containers: Mutex<HashMap<String, Container>>,
    pub released: Mutex<Vec<String>>,
    /// How long created compute waits on the platform before it runs, as a pod Pending does.
    /// Zero: it runs as it is created.
    pub queue: Duration,
    /// Where programs run: the test's runtime, which outlives every launcher of the test.
    runtime: tokio::runtime::Handle,
}

impl Default for Platform {
    /// A platform whose programs run on the current tokio runtime.
    fn default() -> Self {
        Platform {
            containers: Mutex::default(),
            released: Mutex::default(),
            queue: Duration::ZERO,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Platform {
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut Container) -> T) -> BackendResult<T> {
        let mut all = self.containers.lock().unwrap();
        let c = all
            .get_mut(name)
            .ok_or_else(|| AttemptError::Platform(format!("no container {name}")))?;
        Ok(f(c))
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
            let step = |f: &mut dyn FnMut(&mut Container)| {
                let mut all = platform.containers.lock().unwrap();
                match all.get_mut(&name) {
                    Some(c) if c.exit.is_none() => {
                        f(c);
                        true
                    }
                    _ => false,
                }
            };
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
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        self.1
    }

    fn describe(&self, compute: &Compute) -> String {
        format!("{BACKEND}/{}", compute.name)
    }

    fn may_queue(&self) -> bool {
        !self.0.queue.is_zero()
    }

    fn check(&self, _: &TaskDispatched) -> BackendResult<()> {
        Ok(())
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let d = task.dispatch;
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
        let mut inputs = HashMap::new();
        for (name, content) in &d.input_files {
            ferry_launcher::template::check_input_name(name).map_err(AttemptError::Task)?;
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
            all.entry(reserved.name.clone()).or_default();
            fresh
        };
        match program {
            Some(program) if created => self.0.run(reserved.name.clone(), program, env, inputs),
            // Compute a test drives by hand runs at once.
            None if created => self.0.with(&reserved.name, |c| c.running = true)?,
            _ => {}
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
        Ok(match c.exit {
            None if !c.running => ComputeState::Pending,
            None => ComputeState::Running,
            Some(code) => ComputeState::Exited(Exit {
                code: Some(code),
                error: (code != 0).then(|| format!("exited with status {code}")),
                reason: None,
            }),
        })
    }

    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        loop {
            match self.status(compute).await? {
                ComputeState::Pending | ComputeState::Running => {
                    tokio::time::sleep(Duration::from_millis(10)).await
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
            complete: c.exit.is_some() && at + read.len() == bytes.len(),
            cursor: serde_json::json!({"since": at + read.len()}),
            bytes: read,
        })
    }

    async fn stop(&self, compute: &Compute, _: Duration) -> BackendResult<()> {
        let mut all = self.0.containers.lock().unwrap();
        if let Some(c) = all.get_mut(&compute.name) {
            c.stopped = true;
            c.exit.get_or_insert(143);
        }
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
                files,
            }
        })
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        self.0.containers.lock().unwrap().remove(&compute.name);
        self.0.released.lock().unwrap().push(compute.name.clone());
        Ok(())
    }

    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let all = self.0.containers.lock().unwrap();
        Ok(all.keys().map(|n| Compute::named(n.clone())).collect())
    }
}

/// The double as a conformance target, with a shutdown policy.
pub struct DoubleTarget(pub Arc<Platform>, pub ShutdownPolicy);

impl DoubleTarget {
    /// A target on a new platform, whose programs run on the current tokio runtime.
    pub fn new(policy: ShutdownPolicy) -> Self {
        DoubleTarget(Arc::new(Platform::default()), policy)
    }

    /// A target whose compute waits `queue` on its platform before it runs.
    pub fn queued(policy: ShutdownPolicy, queue: Duration) -> Self {
        let platform = Platform {
            queue,
            ..Platform::default()
        };
        DoubleTarget(Arc::new(platform), policy)
    }
}

#[async_trait]
impl Target for DoubleTarget {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn backend(&self, _: &Path, _: &Journal) -> Arc<dyn Backend> {
        Arc::new(Remote(self.0.clone(), self.1))
    }

    fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
        let json = serde_json::to_string(program).expect("a program serializes");
        (Runner::default(), vec![Template::text(json)])
    }

    fn refused(&self) -> Option<(ferry_event::payload::Resources, &'static str)> {
        None
    }

    async fn leftovers(&self, _: &Path) -> Vec<String> {
        self.0.containers.lock().unwrap().keys().cloned().collect()
    }

    async fn kill(&self, attempt_id: &str) -> Result<(), String> {
        let name = format!("ferry-{attempt_id}");
        self.0
            .with(&name, |c| {
                c.exit.get_or_insert(137);
            })
            .map_err(|e| e.to_string())
    }
}
