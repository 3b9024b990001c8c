//! Launchers started, stopped and crashed on the in-memory bus, and what they published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{Resources, TaskCancel, TaskDispatched, TaskFinished, TaskLog};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, envelope, kind};
use tokio_util::sync::CancellationToken;

use super::{Program, Target};
use crate::journal::Journal;
use crate::{Config, Secrets};

/// The longest wait for any one event.
pub const WAIT: Duration = Duration::from_secs(20);
/// The secret every launcher of the suite holds, and its value.
pub const SECRET: (&str, &str) = ("TOKEN", "s3cr3t-conformance-value");

/// The consumer group of the launchers the suite starts.
pub const GROUP: &str = "launcher-conformance";

/// A launcher of the target, on its own tokio runtime so that it can crash: dropping the
/// runtime ends everything it ran at whatever point it had reached, as a killed process would
/// (its compute runs on, its journal stays as it was).
pub struct Launcher {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<crate::Result<()>>>,
}

impl Launcher {
    /// Stops it the orderly way, as SIGTERM does: the backend's shutdown policy applies.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            match tokio::time::timeout(WAIT, h).await {
                Ok(Ok(Ok(()))) => {}
                other => panic!("the launcher did not stop cleanly: {other:?}"),
            }
        }
    }

    /// Kills it at once, wherever it is. A killed process hears nothing: its shutdown token is
    /// never cancelled, so no task still being polled while the runtime winds down in the
    /// background can take the orderly way out and publish what a killed launcher never would.
    pub fn crash(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Dropped without `stop` or `crash` (a failed test): stop it the orderly way.
        if let Some(rt) = self.runtime.take() {
            self.shutdown.cancel();
            rt.shutdown_background();
        }
    }
}

/// One test's world: a bus, a data directory, and observers of everything launchers publish.
pub struct Harness {
    pub target: Arc<dyn Target>,
    pub bus: MemoryBus,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    control: Subscription,
    logs: Subscription,
    /// Control events seen so far: (type, attempt id, event), in the order published.
    pub seen: Vec<(String, String, Event)>,
    batches: Vec<TaskLog>,
    events: EventBuilder,
    /// Unique to this test, so that attempts of tests running side by side never meet.
    prefix: String,
    pub max_parallel: usize,
    /// What the backend's [`Backend::may_queue`](crate::backend::Backend::may_queue) says, once
    /// a launcher has started.
    queues: Arc<std::sync::OnceLock<bool>>,
}

impl Harness {
    pub async fn new(target: Arc<dyn Target>) -> Harness {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let data_dir = tmp.path().join("data");
        Harness::in_dir(target, data_dir, Some(tmp)).await
    }

    /// A harness whose launchers keep their journal in `data_dir` (which must exist or be
    /// creatable).
    pub async fn in_dir(
        target: Arc<dyn Target>,
        data_dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
    ) -> Harness {
        std::fs::create_dir_all(&data_dir).expect("the data directory");
        let bus = MemoryBus::new();
        let control = bus
            .subscribe(Subscribe::new("observer-control", [Topic::Control]))
            .await
            .expect("subscribe");
        let logs = bus
            .subscribe(Subscribe::new("observer-logs", [Topic::Logs]))
            .await
            .expect("subscribe");
        // The launcher's queue collects dispatches from now on, like a durable broker queue.
        drop(
            bus.subscribe(Subscribe::new(
                target.dispatch_group(),
                [Topic::Dispatch(target.name().into())],
            ))
            .await
            .expect("subscribe"),
        );
        Harness {
            target,
            bus,
            data_dir,
            _tmp: tmp,
            control,
            logs,
            seen: Vec::new(),
            batches: Vec::new(),
            events: EventBuilder::new("ferry/scheduler/conformance"),
            prefix: {
                // The random end of the id: its start is the time, shared by tests started
                // in the same millisecond.
                let id = ferry_event::new_id();
                format!("c{}", &id[id.len() - 10..])
            },
            max_parallel: 4,
            queues: Arc::default(),
        }
    }

    /// An attempt id of this test.
    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Starts a launcher on the harness's data directory and waits until it hears cancels.
    pub async fn start(&self) -> Launcher {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the launcher");
        let config = Config {
            max_parallel: self.max_parallel,
            kill_grace: Duration::from_millis(500),
            log_batch_lines: 256,
            log_batch_interval: Duration::from_millis(10),
            secrets: {
                let mut s = Secrets::new();
                s.insert(SECRET.0, SECRET.1);
                s
            },
            source: "ferry/launcher/conformance".into(),
            group: GROUP.into(),
            artifact_retention: None,
            artifact_quotas: None,
            artifact_store: None,
        };
        let shutdown = CancellationToken::new();
        let (target, data_dir, bus, stop) = (
            self.target.clone(),
            self.data_dir.clone(),
            Arc::new(self.bus.clone()) as Arc<dyn Bus>,
            shutdown.clone(),
        );
        let queues = self.queues.clone();
        let handle = runtime.spawn(async move {
            let journal = Journal::open(&data_dir).map_err(|source| crate::Error::Io {
                what: format!("cannot open the journal in {}", data_dir.display()),
                source,
            })?;
            let backend = target.backend(&data_dir, &journal).await;
            let _ = queues.set(backend.may_queue());
            crate::run(config, journal, backend, bus, stop).await
        });
        let cancels = Topic::Cancel(self.target.name().into());
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.bus.groups_on(&cancels) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline && !handle.is_finished(),
                "the launcher did not start listening to cancels"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Launcher {
            runtime: Some(runtime),
            shutdown,
            handle: Some(handle),
        }
    }

    /// A dispatch of `program` under attempt id `id` (see [`Harness::id`]), the first attempt
    /// of a task of its own (a launcher runs one attempt of a task at a time).
    pub fn task(&self, id: &str, program: &Program) -> TaskDispatched {
        let (runner, command) = self.target.command(program);
        TaskDispatched {
            job_id: format!("{}-job", self.prefix),
            task_id: format!("task-{id}"),
            attempt_id: id.into(),
            attempt: 1,
            runner,
            command,
            env: BTreeMap::new(),
            input_files: BTreeMap::new(),
            output_files: Vec::new(),
            resources: Resources::default(),
            timeout_ms: None,
            lease_ms: 30_000,
            ready_at_ms: ferry_event::now_ms(),
            flow_id: Some("conformance".into()),
            namespace: None,
            priority: 0,
        }
    }

    pub async fn dispatch(&self, d: &TaskDispatched) {
        let e = self.events.dispatch(
            kind::TASK_DISPATCHED,
            &d.job_id,
            &d.task_id,
            &d.attempt_id,
            self.target.name(),
            d,
        );
        self.bus.publish(&[e]).await.expect("publish a dispatch");
    }

    pub async fn cancel(&self, d: &TaskDispatched, reason: &str) {
        self.cancel_for(d, reason, None).await
    }

    /// A `task.cancel` addressed to one launcher (`ferrylauncher`), as the scheduler fences a
    /// launcher off an attempt another one holds; `None`: to every launcher.
    pub async fn cancel_for(&self, d: &TaskDispatched, reason: &str, launcher: Option<&str>) {
        let c = TaskCancel {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            reason: Some(reason.into()),
        };
        let e = self.events.dispatch(
            kind::TASK_CANCEL,
            &d.job_id,
            &d.task_id,
            &d.attempt_id,
            self.target.name(),
            &c,
        );
        let mut e = e;
        if let Some(l) = launcher {
            e.set_extension(ferry_event::envelope::EXT_LAUNCHER, l.to_string());
        }
        self.bus.publish(&[e]).await.expect("publish a cancel");
    }

    /// Waits until the launcher has journaled something of `attempt` (a cancel it took, say):
    /// dispatches and cancels travel on queues of their own, so only the journal tells that a
    /// cancel arrived before a dispatch published after it.
    pub async fn wait_journaled(&self, attempt: &str) {
        let path = self.data_dir.join("journal");
        let deadline = tokio::time::Instant::now() + WAIT;
        while !std::fs::read_to_string(&path).is_ok_and(|j| j.contains(&format!("\"{attempt}\""))) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the launcher journaled nothing of {attempt} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Receives the next control event, if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> bool {
        let Ok(received) = tokio::time::timeout(wait, self.control.next()).await else {
            return false;
        };
        let d = received.expect("the bus is open").expect("a delivery");
        let event = d.event.clone();
        d.ack().await.expect("ack");
        let a = envelope::extension(&event, envelope::EXT_ATTEMPT).unwrap_or_default();
        self.seen.push((event.ty().to_string(), a, event));
        true
    }

    /// The first control event of type `ty` for `attempt`, waiting up to [`WAIT`].
    pub async fn expect(&mut self, ty: &str, attempt: &str) -> Event {
        self.expect_within(ty, attempt, WAIT)
            .await
            .unwrap_or_else(|| panic!("no {ty} of {attempt} within {WAIT:?}; seen: {:?}", self.types()))
    }

    pub async fn expect_within(&mut self, ty: &str, attempt: &str, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((_, _, e)) = self.seen.iter().find(|(t, a, _)| t == ty && a == attempt) {
                return Some(e.clone());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.next_within(left).await {
                return None;
            }
        }
    }

    pub async fn finished(&mut self, attempt: &str) -> TaskFinished {
        let e = self.expect(kind::TASK_FINISHED, attempt).await;
        let f: TaskFinished = ferry_event::decode(&e).expect("a task.finished payload");
        let shown = serde_json::to_string(&f).expect("a report serializes");
        assert!(
            !shown.contains(SECRET.1),
            "the report of {attempt} shows a secret: {shown}"
        );
        f
    }

    /// How many control events of `ty` for `attempt` were seen.
    pub fn count(&self, ty: &str, attempt: &str) -> usize {
        self.seen
            .iter()
            .filter(|(t, a, _)| t == ty && a == attempt)
            .count()
    }

    /// Waits a moment for stray events, then says how many of `ty` for `attempt` came.
    pub async fn settle_count(&mut self, ty: &str, attempt: &str) -> usize {
        while self.next_within(Duration::from_millis(300)).await {}
        self.count(ty, attempt)
    }

    /// Whether the backend's compute may queue before it runs (known once a launcher started).
    pub fn queues(&self) -> bool {
        self.queues.get().copied().unwrap_or(false)
    }

    /// The payload of the first control event of `ty` seen for `attempt`.
    pub fn payload<T: serde::de::DeserializeOwned>(&self, ty: &str, attempt: &str) -> T {
        let (_, _, e) = self
            .seen
            .iter()
            .find(|(t, a, _)| t == ty && a == attempt)
            .unwrap_or_else(|| panic!("no {ty} seen for {attempt}: {:?}", self.types()));
        ferry_event::decode(e).unwrap_or_else(|err| panic!("a {ty} payload: {err}"))
    }

    pub fn types(&self) -> Vec<(String, String)> {
        self.seen.iter().map(|(t, a, _)| (t.clone(), a.clone())).collect()
    }

    /// Every log line published for `attempt` so far, by number, checking that each number
    /// published more than once (after a crash) carries the same line each time.
    pub async fn lines(&mut self, attempt: &str) -> Vec<(u64, String)> {
        while let Some(d) = self.logs.try_next() {
            let log: TaskLog = ferry_event::decode(&d.event).expect("a task.log payload");
            d.ack().await.expect("ack");
            self.batches.push(log);
        }
        let mut by_seq: BTreeMap<u64, String> = BTreeMap::new();
        for b in self.batches.iter().filter(|b| b.attempt_id == attempt) {
            for (i, l) in b.lines.iter().enumerate() {
                let seq = b.seq + i as u64;
                assert!(
                    !l.text.contains(SECRET.1),
                    "line {seq} of {attempt} shows a secret: {}",
                    l.text
                );
                if let Some(before) = by_seq.insert(seq, l.text.clone()) {
                    assert_eq!(
                        before, l.text,
                        "line {seq} of {attempt} was published as two different lines"
                    );
                }
            }
        }
        let lines: Vec<(u64, String)> = by_seq.into_iter().collect();
        for (i, (seq, _)) in lines.iter().enumerate() {
            assert_eq!(*seq, i as u64, "the lines of {attempt} are not contiguous from 0");
        }
        lines
    }

    /// Waits until at least `n` lines of `attempt` were published.
    pub async fn wait_for_lines(&mut self, attempt: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.lines(attempt).await.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} lines of {attempt} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The texts of the lines of `attempt`.
    pub async fn texts(&mut self, attempt: &str) -> Vec<String> {
        self.lines(attempt).await.into_iter().map(|(_, t)| t).collect()
    }

    /// Compute of this test that is left on the platform.
    pub async fn leftovers(&self) -> Vec<String> {
        let mut left = self.target.leftovers(&self.data_dir).await;
        left.retain(|name| name.contains(&self.prefix));
        left
    }

    /// Asserts that the platform holds no compute of this test.
    pub async fn assert_nothing_left(&self, when: &str) {
        let left = self.leftovers().await;
        assert!(left.is_empty(), "compute left {when}: {left:?}");
    }
}

/// Whether this process may mount filesystems.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped.
pub struct SmallDisk {
    pub path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Result<SmallDisk, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = tmp.path().join("disk");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(SmallDisk { path, _tmp: tmp })
    }

    /// Fills the filesystem until only about `leave` bytes are free.
    pub fn fill(&self, leave: u64) -> std::io::Result<()> {
        use std::io::Write;
        let stat = nix::sys::statvfs::statvfs(&self.path).map_err(std::io::Error::from)?;
        let free = stat.blocks_available() * stat.fragment_size();
        let mut f = std::fs::File::create(self.path.join("ballast"))?;
        let chunk = vec![0u8; 64 * 1024];
        let mut left = free.saturating_sub(leave);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            match f.write_all(&chunk[..n]) {
                Ok(()) => left -= n as u64,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e),
            }
        }
        f.sync_all()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmount = |lazy: bool| {
            let mut c = std::process::Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.path).status().is_ok_and(|s| s.success())
        };
        if !unmount(false) {
            unmount(true);
        }
    }
}

/// Paths as text, for assertions on messages.
pub fn display(p: &Path) -> String {
    p.display().to_string()
}
