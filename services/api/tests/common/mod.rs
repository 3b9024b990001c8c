//! A running api on 127.0.0.1:0 over a memory bus, with a spy on the topics it publishes to.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry_api::Config;
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{
    JobPlanned, JobState, JobStatus, LogLine, Outcome, PlannedTask, Runner, Stream, TaskAttempts,
    TaskFinished, TaskLog, TaskStarted, TaskState, TaskStatus, TasksState,
};
use ferry_event::{Event, EventBuilder, Topic, kind};
use ferry_log_collector::LogStore;
use ferry_runtime::CancellationToken;
use serde_json::{Map, Value, json};

/// Longest wait for something that must happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long something that must not happen is waited for.
pub const QUIET: Duration = Duration::from_millis(300);

/// A bus that refuses to publish while `down` is set, as a broker that went away would.
pub struct FlakyBus {
    pub inner: MemoryBus,
    pub down: AtomicBool,
}

#[async_trait]
impl Bus for FlakyBus {
    async fn publish(&self, events: &[Event]) -> ferry_bus::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ferry_bus::Error::Unavailable("connection refused".into()));
        }
        self.inner.publish(events).await
    }

    async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
        self.inner.subscribe(spec).await
    }
}

pub struct Api {
    pub base: String,
    /// An admin token, which `http` sends with every request.
    pub admin_token: String,
    /// The api's tokens file: [`Api::add_token`] appends to it.
    pub tokens_file: std::path::PathBuf,
    pub bus: MemoryBus,
    pub flaky: Arc<FlakyBus>,
    pub http: reqwest::Client,
    /// The log collector's store, as the log-collector service would write it.
    pub logs: LogStore,
    /// What the api published to the intake and control topics.
    pub spy: Subscription,
    pub events: EventBuilder,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<ferry_api::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Api {
    pub async fn start() -> Api {
        Api::start_with(|_| {}).await
    }

    /// Starts an api on a fresh memory bus, temp SQLite read model and log store.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Api {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs_url = format!("sqlite://{}", dir.path().join("logs.db").display());
        let db_url = format!("sqlite://{}", dir.path().join("api.db").display());
        let mut config = Config::new(db_url, logs_url.clone());
        config.follow_poll = Duration::from_millis(50);
        config.log_grace = Duration::from_secs(5);
        config.reload_every = Duration::from_millis(50);
        let tokens_file = dir.path().join("tokens.yaml");
        let (admin_token, admin_hash) = ferry_api::auth::new_token().expect("a token");
        std::fs::write(
            &tokens_file,
            format!("tokens:\n  - {{ name: admin, sha256: {admin_hash}, scopes: [admin] }}\n"),
        )
        .expect("tokens file written");
        config.access = Some(ferry_api::Access::TokensFile(tokens_file.clone()));
        tweak(&mut config);
        let bus = MemoryBus::new();
        let flaky = Arc::new(FlakyBus {
            inner: bus.clone(),
            down: AtomicBool::new(false),
        });
        let spy = bus
            .subscribe(Subscribe::new("spy", [Topic::Intake, Topic::Control]))
            .await
            .expect("spy subscribes");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().expect("local addr"));
        let tls_root = config
            .tls
            .as_ref()
            .map(|t| std::fs::read(&t.cert).expect("certificate read"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ferry_api::serve(
            config,
            flaky.clone() as Arc<dyn Bus>,
            listener,
            shutdown.clone(),
        ));
        let logs = LogStore::open(&logs_url).await.expect("log store opens");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {admin_token}").parse().expect("header value"),
        );
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers);
        if let Some(pem) = &tls_root {
            let cert = reqwest::Certificate::from_pem(pem).expect("certificate");
            http = http.tls_certs_only([cert]);
        }
        let http = http.build().expect("http client");
        let api = Api {
            base,
            admin_token,
            tokens_file,
            bus,
            flaky,
            http,
            logs,
            spy,
            events: EventBuilder::new("ferry/test-scheduler"),
            shutdown,
            task: Some(task),
            _dir: dir,
        };
        eventually("the api answers /healthz", || async {
            let r = api.http.get(api.url("/healthz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        api
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The address the api listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .expect("the base URL names an address")
    }

    /// Adds a token to the tokens file and returns it once the api accepts it.
    pub async fn add_token(&self, name: &str, scopes: &[&str], namespaces: Option<&[&str]>) -> String {
        let (token, hash) = ferry_api::auth::new_token().expect("a token");
        let mut line = format!(
            "  - {{ name: {name}, sha256: {hash}, scopes: [{}]",
            scopes.join(", ")
        );
        if let Some(ns) = namespaces {
            line.push_str(&format!(", namespaces: [{}]", ns.join(", ")));
        }
        line.push_str(" }\n");
        let mut text = std::fs::read_to_string(&self.tokens_file).expect("tokens file read");
        text.push_str(&line);
        // Replaced whole (rename), as an operator's editor or tool would.
        let tmp = self.tokens_file.with_extension("new");
        std::fs::write(&tmp, text).expect("tokens file written");
        std::fs::rename(&tmp, &self.tokens_file).expect("tokens file replaced");
        eventually("the api reads the new token", || async {
            let r = reqwest::Client::new()
                .get(self.url("/jobs?limit=1"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            (r.status() != reqwest::StatusCode::UNAUTHORIZED).then_some(())
        })
        .await;
        token
    }

    /// GET with a token of one's choosing (or none).
    pub async fn get_as(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let mut req = reqwest::Client::new().get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("GET answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET answers");
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Publishes events as the other services would.
    pub async fn publish(&self, events: &[Event]) {
        self.bus.publish(events).await.expect("publish");
    }

    /// The job's detail once `check` holds for it.
    pub async fn job_when(&self, job_id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/jobs/{job_id}");
        eventually(what, || async {
            let (status, body) = self.get(&path).await;
            (status == 200 && check(&body)).then_some(body)
        })
        .await
    }

    /// The next event the api published (to intake or control).
    pub async fn published(&mut self) -> Event {
        let d = match tokio::time::timeout(WAIT, self.spy.next()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!("nothing was published within {WAIT:?}: {other:?}"),
        };
        let event = d.event.clone();
        d.ack().await.expect("ack");
        event
    }

    /// Asserts that the api published nothing.
    pub async fn published_nothing(&mut self) {
        if let Ok(Some(d)) = tokio::time::timeout(QUIET, self.spy.next()).await {
            panic!("expected nothing published, got {:?}", d.map(|d| d.event));
        }
    }

    /// Stops the api and waits for it, failing on an error exit.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(WAIT, task)
                .await
                .expect("the api stops within the wait")
                .expect("the api task did not panic");
            result.expect("the api stopped cleanly");
        }
    }

    // ------------------------------------------------------------------------------------------
    // Lifecycle events, as the planner, scheduler and launcher publish them
    // ------------------------------------------------------------------------------------------

    pub fn planned(&self, job: &str, tasks: &[&str]) -> Event {
        let p = JobPlanned {
            job_id: job.into(),
            flow_id: "flow-1".into(),
            namespace: None,
            concurrency: None,
            inputs: Map::new(),
            tasks: tasks
                .iter()
                .map(|t| PlannedTask {
                    id: t.to_string(),
                    runner: Runner::default(),
                    command: Vec::new(),
                    depends_on: Vec::new(),
                    input_files: Default::default(),
                    output_files: Vec::new(),
                    env: Default::default(),
                    resources: Default::default(),
                    timeout_ms: None,
                    retry: Default::default(),
                    priority: 0,
                })
                .collect(),
        };
        self.events.job(kind::JOB_PLANNED, job, &p)
    }

    pub fn job_state(&self, ty: &str, job: &str, state: JobStatus, reason: Option<&str>) -> Event {
        let s = JobState {
            job_id: job.into(),
            flow_id: "flow-1".into(),
            state,
            reason: reason.map(str::to_string),
            tasks: 3,
        };
        self.events.job(ty, job, &s)
    }

    pub fn started(&self, job: &str, task: &str, attempt: u32) -> Event {
        let s = TaskStarted {
            job_id: job.into(),
            task_id: task.into(),
            attempt_id: attempt_id(job, task, attempt),
            attempt,
            started_at_ms: 1000 * i64::from(attempt),
            ready_at_ms: 0,
            launcher: "test".into(),
            compute: None,
        };
        self.events
            .task(kind::TASK_STARTED, job, task, Some(&s.attempt_id), &s)
    }

    pub fn finished(&self, job: &str, task: &str, attempt: u32, outcome: Outcome, log_lines: u64) -> Event {
        let f = TaskFinished {
            job_id: job.into(),
            task_id: task.into(),
            attempt_id: attempt_id(job, task, attempt),
            attempt,
            outcome,
            exit_code: Some(if outcome == Outcome::Succeeded { 0 } else { 1 }),
            error: None,
            outputs: Map::new(),
            output_files: Vec::new(),
            log_lines,
            started_at_ms: Some(1000),
            finished_at_ms: 2000,
            reason: None,
            compute_ms: None,
            subtasks: Vec::new(),
        };
        self.events
            .task(kind::TASK_FINISHED, job, task, Some(&f.attempt_id), &f)
    }

    /// `tasks.cancelled` or `tasks.retrying` of `tasks`, each with its attempts so far.
    pub fn tasks_state(&self, ty: &str, job: &str, tasks: &[(&str, u32)], error: Option<&str>) -> Event {
        let s = TasksState {
            job_id: job.into(),
            state: if ty == kind::TASKS_RETRYING {
                TaskStatus::Pending
            } else {
                TaskStatus::Cancelled
            },
            tasks: tasks
                .iter()
                .map(|(t, attempts)| TaskAttempts {
                    task_id: t.to_string(),
                    attempts: *attempts,
                })
                .collect(),
            error: error.map(str::to_string),
            at_ms: 3000,
        };
        self.events.job(ty, job, &s)
    }

    pub fn task_state(&self, ty: &str, job: &str, task: &str, state: TaskStatus, attempts: u32) -> Event {
        let mut outputs = Map::new();
        if state == TaskStatus::Succeeded {
            outputs.insert("rows".into(), Value::from(42));
        }
        let s = TaskState {
            job_id: job.into(),
            task_id: task.into(),
            state,
            attempts,
            attempt_id: (attempts > 0 && state != TaskStatus::Pending)
                .then(|| attempt_id(job, task, attempts)),
            error: (state == TaskStatus::Failed || state == TaskStatus::Retrying)
                .then(|| "exit status 1".into()),
            outputs,
            output_files: Vec::new(),
            retry_at_ms: None,
            started_at_ms: None,
            finished_at_ms: state.is_terminal().then_some(5000),
            subtasks: Vec::new(),
            subtask_backends: Vec::new(),
        };
        self.events.task(ty, job, task, s.attempt_id.as_deref(), &s)
    }

    /// Stores log lines as the log collector would.
    pub async fn log(&self, job: &str, task: &str, attempt: u32, seq: u64, texts: &[&str]) {
        let batch = TaskLog {
            job_id: job.into(),
            task_id: task.into(),
            attempt_id: attempt_id(job, task, attempt),
            namespace: None,
            seq,
            lines: texts
                .iter()
                .map(|t| LogLine {
                    stream: Stream::Stdout,
                    time_ms: 1,
                    text: t.to_string(),
                })
                .collect(),
        };
        self.logs.append(&[batch]).await.expect("lines stored");
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn attempt_id(job: &str, task: &str, attempt: u32) -> String {
    format!("{job}-{task}-{attempt}")
}

pub fn new_job() -> String {
    format!("job-{}", ferry_event::new_id())
}

/// Polls `probe` until it yields, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The states of a job detail's tasks, in the order given.
pub fn task_states(job: &Value) -> Vec<(String, String)> {
    job["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t["taskId"].as_str().unwrap_or_default().to_string(),
                        t["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads an NDJSON response to its end (within [`WAIT`]).
pub async fn ndjson_lines(r: reqwest::Response) -> Vec<Value> {
    let text = tokio::time::timeout(WAIT, r.text())
        .await
        .expect("the stream ends within the wait")
        .expect("the stream reads");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// Publishes a job's whole life as the planner, scheduler and launcher would, checking what
/// the read model shows on the way. Shared with the PostgreSQL test.
pub async fn follow_a_job_through_its_lifecycle(api: &Api) {
    let job = new_job();
    api.publish(&[api.planned(&job, &["extract", "load", "report"])])
        .await;
    let j = api.job_when(&job, "planned", |j| j["state"] == "planned").await;
    assert_eq!(
        task_states(&j),
        [("extract", "pending"), ("load", "pending"), ("report", "pending")]
            .map(|(a, b)| (a.into(), b.into()))
    );
    assert_eq!(j["flowId"], "flow-1");
    assert_eq!(j["counts"]["pending"], 3);
    assert_eq!(j["counts"]["total"], 3);

    api.publish(&[
        api.job_state(kind::JOB_STARTED, &job, JobStatus::Running, None),
        api.started(&job, "extract", 1),
    ])
    .await;
    let j = api
        .job_when(&job, "extract running", |j| j["tasks"][0]["state"] == "running")
        .await;
    assert_eq!(j["state"], "running");
    assert_eq!(j["tasks"][0]["attempts"], 1);
    assert_eq!(
        j["tasks"][0]["attemptId"],
        attempt_id(&job, "extract", 1).as_str()
    );
    assert_eq!(j["tasks"][0]["startedAtMs"], 1000);

    api.publish(&[
        api.finished(&job, "extract", 1, Outcome::Succeeded, 0),
        api.task_state(kind::TASK_SUCCEEDED, &job, "extract", TaskStatus::Succeeded, 1),
        api.started(&job, "load", 1),
        api.finished(&job, "load", 1, Outcome::Failed, 0),
        api.task_state(kind::TASK_RETRYING, &job, "load", TaskStatus::Retrying, 1),
    ])
    .await;
    let j = api
        .job_when(&job, "load retrying", |j| j["tasks"][1]["state"] == "retrying")
        .await;
    assert_eq!(j["tasks"][0]["outputs"], json!({"rows": 42}));
    assert_eq!(j["tasks"][1]["error"], "exit status 1");
    assert_eq!(j["counts"]["succeeded"], 1);
    assert_eq!(j["counts"]["retrying"], 1);

    api.publish(&[
        api.started(&job, "load", 2),
        api.finished(&job, "load", 2, Outcome::Failed, 0),
        api.task_state(kind::TASK_FAILED, &job, "load", TaskStatus::Failed, 2),
        api.tasks_state(
            kind::TASKS_CANCELLED,
            &job,
            &[("report", 0)],
            Some("task load failed"),
        ),
        api.job_state(
            kind::JOB_FAILED,
            &job,
            JobStatus::Failed,
            Some("task load failed: exit status 1"),
        ),
    ])
    .await;
    let j = api.job_when(&job, "job failed", |j| j["state"] == "failed").await;
    assert_eq!(
        task_states(&j),
        [
            ("extract", "succeeded"),
            ("load", "failed"),
            ("report", "cancelled")
        ]
        .map(|(a, b)| (a.into(), b.into()))
    );
    assert_eq!(j["tasks"][1]["attempts"], 2);
    assert_eq!(j["tasks"][2]["error"], "task load failed");
    assert_eq!(j["reason"], "task load failed: exit status 1");
    assert_eq!(j["counts"]["failed"], 1);

    // A job retry re-queues the failed and cancelled tasks: the one way back from failed.
    api.publish(&[
        api.job_state(kind::JOB_STARTED, &job, JobStatus::Running, Some("retried")),
        api.tasks_state(kind::TASKS_RETRYING, &job, &[("load", 2), ("report", 0)], None),
        api.started(&job, "load", 3),
    ])
    .await;
    let j = api
        .job_when(&job, "retried job running", |j| {
            j["tasks"][1]["state"] == "running"
        })
        .await;
    assert_eq!(j["state"], "running");
    assert_eq!(task_states(&j)[2].1, "pending");
    assert_eq!(j["tasks"][1]["attempts"], 3);

    // The job's changes, in order.
    let r = api
        .http
        .get(api.url(&format!("/jobs/{job}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let changes = ndjson_lines(r).await;
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let first: Vec<_> = changes
        .iter()
        .take(3)
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(first, [kind::JOB_PLANNED, kind::JOB_STARTED, kind::TASK_STARTED]);
    assert!(
        changes
            .iter()
            .any(|c| c["type"] == kind::JOB_FAILED && c["reason"].is_string())
    );
    // Tasks changed together are one change, with how many they were.
    let together: Vec<_> = changes
        .iter()
        .filter(|c| c["type"] == kind::TASKS_CANCELLED || c["type"] == kind::TASKS_RETRYING)
        .map(|c| (c["state"].as_str().unwrap(), c["tasks"].as_u64().unwrap()))
        .collect();
    assert_eq!(together, [("cancelled", 1), ("pending", 2)]);
    assert!(
        changes
            .iter()
            .all(|c| c["taskId"].is_null() || c["tasks"].is_null())
    );
}
