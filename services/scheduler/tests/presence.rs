//! Launchers announce themselves, and compute may queue on its platform: a task whose backend
//! no launcher serves fails with the reason instead of waiting for ever; an accepted attempt
//! holds a lease from its acceptance and its timeout from its start.

mod sim;

use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{
    LauncherPresence, PlannedTask, TaskAccepted, TaskCancel, TaskDispatched, TaskHeartbeat, TaskStarted,
    TaskState,
};
use ferry_event::{EventBuilder, Topic, kind};
use ferry_runtime::CancellationToken;
use ferry_scheduler::{Clock, ManualClock, PRESENCE_GONE};
use sim::*;

const WITHIN: Duration = Duration::from_secs(20);
const AFTER: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

/// A scheduler on a manual clock, with no launcher: the test plays the `docker` launcher.
struct Rig {
    bus: MemoryBus,
    rec: Recorder,
    clock: ManualClock,
    dispatches: Subscription,
    cancels: Subscription,
    events: EventBuilder,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    let dispatches = bus
        .subscribe(Subscribe::new(
            "docker-launcher",
            [Topic::Dispatch("docker".into())],
        ))
        .await
        .unwrap();
    let cancels = bus
        .subscribe(Subscribe::new("docker-cancels", [Topic::Cancel("docker".into())]))
        .await
        .unwrap();
    declare_scheduler(&bus).await;
    let mut cfg = config(&dir.path().join("s.db"));
    let clock = ManualClock::new(1_000_000);
    cfg.clock = Arc::new(clock.clone());
    cfg.no_launcher_after = Some(AFTER);
    cfg.lease = LEASE;
    let (_h, token) = start_scheduler(&bus, cfg);
    let s = stop.clone();
    tokio::spawn(async move {
        s.cancelled().await;
        token.cancel();
    });
    Rig {
        bus,
        rec,
        clock,
        dispatches,
        cancels,
        events: EventBuilder::new("ferry/launcher-docker/test"),
        stop,
        _dir: dir,
    }
}

fn docker_task(id: &str, timeout: Option<Duration>) -> PlannedTask {
    let mut t: PlannedTask = serde_json::from_value(serde_json::json!({
        "id": id, "runner": {"type": "docker", "image": "busybox"}, "command": ["true"]
    }))
    .unwrap();
    t.timeout_ms = timeout.map(|t| t.as_millis() as u64);
    t
}

impl Rig {
    async fn submit(&mut self, job: &str, task: PlannedTask) -> TaskDispatched {
        publish(&self.bus, kind::JOB_PLANNED, job, &planned(job, vec![task], None)).await;
        self.next_dispatch().await
    }

    async fn next_dispatch(&mut self) -> TaskDispatched {
        let d = tokio::time::timeout(WITHIN, self.dispatches.next())
            .await
            .expect("a dispatch")
            .unwrap()
            .unwrap();
        let p = ferry_event::decode(&d.event).unwrap();
        d.ack().await.unwrap();
        p
    }

    async fn announce(&self, leaving: bool) {
        let p = LauncherPresence {
            backend: "docker".into(),
            instance: "ferry/launcher-docker/test".into(),
            capacity: 8,
            running: 0,
            at_ms: self.clock.now_ms(),
            leaving,
            ..Default::default()
        };
        self.bus
            .publish(&[self.events.instance(kind::LAUNCHER_PRESENCE, &p)])
            .await
            .unwrap();
    }

    async fn send<T: serde::Serialize>(&self, ty: &str, d: &TaskDispatched, data: &T) {
        let e = self
            .events
            .task(ty, &d.job_id, &d.task_id, Some(&d.attempt_id), data);
        self.bus.publish(&[e]).await.unwrap();
    }

    async fn accept(&self, d: &TaskDispatched) {
        let p = TaskAccepted {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            attempt: d.attempt,
            accepted_at_ms: self.clock.now_ms(),
            ready_at_ms: d.ready_at_ms,
            launcher: "ferry/launcher-docker/test".into(),
            compute: Some("default/ferry-job".into()),
        };
        self.send(kind::TASK_ACCEPTED, d, &p).await;
    }

    async fn start(&self, d: &TaskDispatched) {
        let p = TaskStarted {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            attempt: d.attempt,
            started_at_ms: self.clock.now_ms(),
            ready_at_ms: d.ready_at_ms,
            launcher: "ferry/launcher-docker/test".into(),
            compute: Some("default/ferry-job".into()),
        };
        self.send(kind::TASK_STARTED, d, &p).await;
    }

    async fn heartbeat(&self, d: &TaskDispatched) {
        let p = TaskHeartbeat {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
        };
        self.send(kind::TASK_HEARTBEAT, d, &p).await;
    }

    /// Moves the clock on and gives the scheduler's timers a moment to see it.
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    fn states(&self, ty: &str) -> Vec<TaskState> {
        self.rec
            .of_type(ty)
            .iter()
            .map(|e| ferry_event::decode(e).unwrap())
            .collect()
    }

    /// Gives the scheduler a moment to apply the control events published before.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Moves the clock on a second at a time until the job ends (the check for unserved
    /// backends runs once a second by the clock, so a clock that stands still would never see
    /// an event applied after its last look); returns the job's final event type.
    async fn ends(&self, job: &str) -> String {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            if let Some(ty) = self.rec.terminal(job) {
                return ty;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {job} never ended");
            self.clock.advance(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_task_no_launcher_serves_fails_with_the_reason_and_its_dispatch_is_cancelled() {
    let mut r = rig().await;
    let d = r.submit("j", docker_task("build", None)).await;
    // Within the wait, nothing happens.
    r.advance(AFTER - Duration::from_secs(1)).await;
    assert!(r.rec.terminal("j").is_none(), "failed before its wait was over");
    assert_eq!(r.ends("j").await, kind::JOB_FAILED);
    let failed = r.states(kind::TASK_FAILED);
    let error = failed[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("no launcher for backend `docker` is running"),
        "{error}"
    );
    assert!(
        error.contains("ferry service launcher --backend docker"),
        "{error}"
    );
    // The dispatch waiting in the broker is called off: a launcher that comes later skips it.
    let c = tokio::time::timeout(WITHIN, r.cancels.next())
        .await
        .expect("a cancel")
        .unwrap()
        .unwrap();
    let cancel: TaskCancel = ferry_event::decode(&c.event).unwrap();
    assert_eq!(cancel.attempt_id, d.attempt_id);
}

#[tokio::test]
async fn a_task_waits_while_a_launcher_of_its_backend_is_present_and_fails_once_it_is_gone() {
    let mut r = rig().await;
    r.announce(false).await;
    r.settle().await;
    r.submit("j", docker_task("build", None)).await;
    // Announced again and again: the task waits on, however long.
    for _ in 0..3 {
        r.advance(AFTER).await;
        r.announce(false).await;
        r.settle().await;
    }
    assert!(r.rec.terminal("j").is_none(), "a served task failed");
    // Silent for minutes (a broker outage silences every launcher at once): it waits on.
    r.advance(PRESENCE_GONE - Duration::from_secs(1)).await;
    assert!(
        r.rec.terminal("j").is_none(),
        "a task failed while the broker was down"
    );
    r.announce(false).await;
    r.settle().await;
    // The launcher leaves: nobody serves docker any more, and the task has waited long enough.
    r.announce(true).await;
    r.settle().await;
    assert_eq!(r.ends("j").await, kind::JOB_FAILED);
}

#[tokio::test]
async fn an_accepted_attempt_holds_a_lease_renewed_by_heartbeats() {
    let mut r = rig().await;
    let d = r.submit("j", docker_task("build", None)).await;
    r.accept(&d).await;
    r.settle().await;
    // Accepted, it is out of the "no launcher" wait, and heartbeats keep its lease.
    for _ in 0..4 {
        r.advance(LEASE / 2).await;
        r.heartbeat(&d).await;
        r.settle().await;
    }
    assert!(r.rec.terminal("j").is_none());
    assert!(r.states(kind::TASK_RETRYING).is_empty());
    // Silence for a lease: the attempt is presumed lost and the task dispatched again.
    r.advance(LEASE + Duration::from_secs(1)).await;
    let again = r.next_dispatch().await;
    assert_eq!(again.attempt, 2);
    let retrying = r.states(kind::TASK_RETRYING);
    assert!(
        retrying[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no heartbeat"),
        "{retrying:?}"
    );
}

#[tokio::test]
async fn the_timeout_runs_from_the_start_not_from_the_acceptance() {
    let mut r = rig().await;
    r.announce(false).await;
    let d = r
        .submit("j", docker_task("build", Some(Duration::from_secs(10))))
        .await;
    r.accept(&d).await;
    r.settle().await;
    // Queued for longer than its timeout: not timed out, it has not started.
    r.advance(Duration::from_secs(20)).await;
    r.heartbeat(&d).await;
    r.announce(false).await;
    r.settle().await;
    assert!(r.rec.terminal("j").is_none());
    r.start(&d).await;
    r.settle().await;
    // Its timeout (and the grace given its launcher to report it) runs from the start.
    r.advance(Duration::from_secs(9)).await;
    r.heartbeat(&d).await;
    r.settle().await;
    assert!(r.rec.terminal("j").is_none());
    r.advance(Duration::from_secs(7)).await;
    r.heartbeat(&d).await;
    r.advance(Duration::from_secs(6)).await;
    let ended = r.rec.wait_terminal("j", WITHIN).await;
    assert_eq!(ended, kind::JOB_FAILED);
    let failed = r.states(kind::TASK_FAILED);
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"),
        "{failed:?}"
    );
}

/// A dispatch that reached two launchers (the first died before acknowledging it and the broker
/// delivered it again): the attempt stays with the first, the second is told alone to stop, and
/// its words change nothing.
#[tokio::test]
async fn an_attempt_is_fenced_to_the_launcher_that_took_it_up_first() {
    use ferry_event::payload::{Outcome, TaskFinished};
    let mut r = rig().await;
    r.announce(false).await;
    let d = r.submit("j", docker_task("build", None)).await;
    let first = EventBuilder::new("ferry/launcher-docker/a/1").with_launcher("launcher-a");
    let second = EventBuilder::new("ferry/launcher-docker/b/2").with_launcher("launcher-b");
    let started = |b: &EventBuilder| {
        let p = TaskStarted {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            attempt: d.attempt,
            started_at_ms: r.clock.now_ms(),
            ready_at_ms: d.ready_at_ms,
            launcher: b.source().to_string(),
            compute: None,
        };
        b.task(kind::TASK_STARTED, &d.job_id, &d.task_id, Some(&d.attempt_id), &p)
    };
    let succeeded = |b: &EventBuilder, answer: i64| {
        let mut f = TaskFinished::unreported(
            d.job_id.clone(),
            d.task_id.clone(),
            d.attempt_id.clone(),
            d.attempt,
            Outcome::Succeeded,
            "",
            r.clock.now_ms(),
        );
        f.error = None;
        f.exit_code = Some(0);
        f.outputs.insert("answer".into(), answer.into());
        b.task(
            kind::TASK_FINISHED,
            &d.job_id,
            &d.task_id,
            Some(&d.attempt_id),
            &f,
        )
    };
    r.bus.publish(&[started(&first)]).await.unwrap();
    r.settle().await;
    r.bus.publish(&[started(&second)]).await.unwrap();
    // The second launcher alone is told to stop its copy.
    let c = tokio::time::timeout(WITHIN, r.cancels.next())
        .await
        .expect("a cancel")
        .unwrap()
        .unwrap();
    let cancel: TaskCancel = ferry_event::decode(&c.event).unwrap();
    assert_eq!(cancel.attempt_id, d.attempt_id);
    assert_eq!(
        ferry_event::envelope::launcher_of(&c.event).as_deref(),
        Some("launcher-b")
    );
    assert!(
        cancel
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("launcher-a"),
        "{cancel:?}"
    );
    // Its report changes nothing; the first launcher's decides.
    r.bus.publish(&[succeeded(&second, 666)]).await.unwrap();
    r.settle().await;
    assert!(
        r.rec.terminal("j").is_none(),
        "the fenced launcher's report was taken"
    );
    r.bus.publish(&[succeeded(&first, 42)]).await.unwrap();
    assert_eq!(r.rec.wait_terminal("j", WITHIN).await, kind::JOB_SUCCEEDED);
    let done = r.states(kind::TASK_SUCCEEDED);
    assert_eq!(done[0].outputs.get("answer"), Some(&42.into()), "{done:?}");
}

/// An agent task no agent serves is not failed: it waits in the broker, in the shared queue of
/// its request that the scheduler declared before dispatching it, for an agent that starts
/// later, however much later.
#[tokio::test]
async fn an_agent_task_waits_queued_until_an_agent_serving_it_subscribes() {
    let r = rig().await;
    let task: PlannedTask = serde_json::from_value(serde_json::json!({
        "id": "train", "runner": {"type": "agent", "cluster": "gpu", "task": "train@2.1"}, "command": []
    }))
    .unwrap();
    publish(&r.bus, kind::JOB_PLANNED, "j", &planned("j", vec![task], None)).await;
    r.settle().await;
    for _ in 0..5 {
        r.advance(AFTER + PRESENCE_GONE).await;
    }
    assert!(
        r.rec.terminal("j").is_none(),
        "an agent task was ended while no agent ran"
    );
    assert!(r.states(kind::TASK_FAILED).is_empty());
    let backend = "agent.gpu.train.2.1";
    let mut agent = r
        .bus
        .subscribe(Subscribe::new(
            ferry_event::agent::group(backend),
            [Topic::Dispatch(backend.into())],
        ))
        .await
        .unwrap();
    let d = tokio::time::timeout(WITHIN, agent.next())
        .await
        .expect("the queued dispatch")
        .unwrap()
        .unwrap();
    let d: TaskDispatched = ferry_event::decode(&d.event).unwrap();
    assert_eq!(d.task_id, "train");
}
