//! Fault injection: ferry's services as separate processes on a real broker, SIGKILLed and
//! restarted at random moments (and, on RabbitMQ, the broker restarted) while a job of a few
//! hundred tasks runs. Then: the job succeeded; every task succeeded exactly once; a task ran
//! more than once only when a launcher was killed, as distinct attempts that never overlapped;
//! every log line of every attempt is stored exactly once and in order; no task process is left;
//! no task is left unfinished.
//!
//! The same for containers: the docker and the kubernetes launcher SIGKILLed again and again
//! while a job of a few hundred containers runs; then also nothing of the job (container, Job,
//! pod, Secret) is left on the platform. Kubernetes is the test API server of
//! `ferry-kube-test-server`, whose pods run as containers on the test Docker engine.
//!
//! And for triggers: a deployed flow's trigger events, published twice each by a Python client
//! (FERRY_TEST_PYTHON, with pika) while the planner is SIGKILLed again and again, start exactly
//! one job each, whose task runs exactly once.
//!
//! And for schedules: a deployed flow ticking every second while the planner is SIGKILLed again
//! and again starts exactly one job per tick, with no tick lost, whose task runs exactly once.
//!
//! And for agents: two agents serving a job of agent tasks, whose root submits agent subtasks
//! (its first attempt fails after submitting, so its subtasks must never appear), SIGKILLed and
//! restarted on their data directories, with the planner, again and again: the job succeeds,
//! every task and subtask has one successful attempt that ran to its end.
//!
//! Needs FERRY_TEST_AMQP and FERRY_TEST_KAFKA (scripts/test.sh starts the brokers), and for
//! docker DOCKER_HOST and FERRY_TEST_DOCKER_IMAGE (its private dockerd and test image). Bounded:
//! a fixed number of rounds, every wait has a deadline, and only processes started here are
//! signalled, by their pid.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const TASKS: usize = 240;
const ROUNDS: usize = 8;
/// Rounds that must hit the job while it runs for a run to count.
const MIN_ROUNDS: usize = 5;
const JOB_DEADLINE: Duration = Duration::from_secs(300);

/// A service running as its own process, restartable.
struct Proc {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(name: &'static str, args: Vec<String>, dir: &Path) -> Proc {
        Proc::start_with(name, args, Vec::new(), dir)
    }

    /// Like [`Proc::start`], with `env` set for the service.
    fn start_with(name: &'static str, args: Vec<String>, env: Vec<(String, String)>, dir: &Path) -> Proc {
        let mut p = Proc {
            name,
            args,
            env,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(&self.args)
            .env("FERRY_LOG", "info")
            .env_remove("FERRY_DATA_DIR")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn kill9(&mut self) {
        let _ = kill(self.pid(), Signal::SIGKILL);
        let _ = self.child.as_mut().unwrap().wait();
    }

    /// SIGTERM and wait (bounded) for a graceful exit.
    fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.child = None;
        panic!(
            "{} did not stop within 30s of SIGTERM; see {}",
            self.name,
            self.log.display()
        );
    }

    /// A service that exited by itself is a failure of the test.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{} exited on its own ({status}); last lines:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small, seeded random number generator: the fault schedule is printed and repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fault runs' task: each attempt appends `start`, a tick every 40 ms while it runs, and
/// `end` to the ledger, with a nanosecond clock, and prints three numbered lines, each recorded
/// as `wrote` once printed.
fn ledger_script(ledger: &Path) -> String {
    format!(
        r#"l={ledger}; echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID start $(date +%s%N)" >> "$l"; i=0; while [ $i -lt 8 ]; do echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID tick $(date +%s%N)" >> "$l"; [ $i -lt 3 ] && echo "line $i of $FERRY_TASK_ID" && echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID wrote $(date +%s%N)" >> "$l"; sleep 0.04; i=$((i+1)); done; echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID end $(date +%s%N)" >> "$l""#,
        ledger = ledger.display()
    )
}

/// The fault run's flow: `root`, then TASKS tasks after it. With `subtasks`, `root` submits
/// the TASKS tasks as its subtasks (`root.t000`…) and `after` depends on `root`, so that it
/// waits for all of them.
fn flow(ledger: &Path, marker: &str, subtasks: bool) -> String {
    let script = ledger_script(ledger);
    let cmd = serde_json::to_string(&vec!["sh", "-c", &script, marker]).unwrap();
    if subtasks {
        let parts: Vec<Value> = (0..TASKS)
            .map(|i| serde_json::json!({"id": format!("t{i:03}"), "runner": "local", "command": ["sh", "-c", &script, marker]}))
            .collect();
        let file = serde_json::to_string(&Value::Array(parts).to_string()).unwrap();
        let submit = format!(r#"cp subtasks.json "$FERRY_SUBTASKS"; {script}"#);
        let root = serde_json::to_string(&vec!["sh", "-c", &submit, marker]).unwrap();
        return format!(
            "id: faults\nconcurrency: 8\ntasks:\n  - {{ id: root, runner: local, command: {root}, inputFiles: {{ subtasks.json: {file} }} }}\n  - {{ id: after, runner: local, dependsOn: [root], command: {cmd} }}\n"
        );
    }
    let mut s =
        format!("id: faults\nconcurrency: 8\ntasks:\n  - {{ id: root, runner: local, command: {cmd} }}\n");
    for i in 0..TASKS {
        s.push_str(&format!(
            "  - {{ id: t{i:03}, runner: local, dependsOn: [root], command: {cmd} }}\n"
        ));
    }
    s
}

#[derive(Debug, Default)]
struct AttemptRun {
    task: String,
    start: Option<u128>,
    last: u128,
    end: Option<u128>,
    /// Lines it is known to have printed.
    wrote: usize,
}

fn read_ledger(path: &Path) -> BTreeMap<String, AttemptRun> {
    let (runs, repeated) = read_ledger_with_repeats(path);
    if let Some((attempt, task)) = repeated.first() {
        panic!("attempt {attempt} of {task} started twice");
    }
    runs
}

/// The ledger's runs, and the attempts (with their task) whose run started more than once.
fn read_ledger_with_repeats(path: &Path) -> (BTreeMap<String, AttemptRun>, Vec<(String, String)>) {
    let mut repeated = Vec::new();
    let mut runs: BTreeMap<String, AttemptRun> = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [task, attempt, what, ns] = parts[..] else {
            continue;
        };
        let Ok(ns) = ns.parse::<u128>() else { continue };
        let run = runs.entry(attempt.to_string()).or_default();
        run.task = task.to_string();
        run.last = run.last.max(ns);
        match what {
            "start" => {
                if run.start.is_some() {
                    repeated.push((attempt.to_string(), task.to_string()));
                }
                run.start = Some(run.start.map_or(ns, |s| s.min(ns)));
            }
            "end" => run.end = Some(ns),
            "wrote" => run.wrote += 1,
            _ => {}
        }
    }
    (runs, repeated)
}

/// `ferry status --json`, with the admin token of the api's data directory.
async fn api_json(api: &str, data: &Path, path: &str) -> Option<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["status", "--json", "--api", api, "--data-dir"])
        .arg(data)
        .args(path.strip_prefix("/jobs/"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// `ferry submit FLOW` to the api, with the admin token of the api's data directory; the job id.
fn submit(api: &str, data: &Path, flow: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["submit", "--api", api, "--data-dir"])
        .arg(data)
        .arg(flow)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// `rounds` victims among `killable`: each once first, in a random order, then random ones.
fn kill_order<'a>(rng: &mut Rng, killable: &[&'a str], rounds: usize) -> Vec<&'a str> {
    let mut victims: Vec<&str> = killable.to_vec();
    for i in (1..victims.len()).rev() {
        victims.swap(i, rng.below(i as u64 + 1) as usize);
    }
    while victims.len() < rounds {
        victims.push(killable[rng.below(killable.len() as u64) as usize]);
    }
    victims
}

fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmd.windows(marker.len()).any(|w| w == marker.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// A run's directory: removed when the run passes, kept (and named) when it fails.
struct RunDir(Option<tempfile::TempDir>);

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && std::thread::panicking()
        {
            let path = dir.keep();
            eprintln!(
                "the failed run's logs, ledger and databases are kept in {}",
                path.display()
            );
        }
    }
}

/// `subtasks`: the job's tasks are subtasks `root` submits (see [`flow`]), and `after`, which
/// depends on `root`, must start only once every one of them ended.
async fn fault_run(bus_base: &str, broker_restart: bool, subtasks: bool) {
    // Every task of the job: root, the TASKS others, and `after` with subtasks.
    let count = TASKS + 1 + usize::from(subtasks);
    let namespace = format!("f{}", &ferry_event::new_id().replace('-', "")[..16]);
    let sep = if bus_base.contains('?') { '&' } else { '?' };
    let bus = format!("{bus_base}{sep}namespace={namespace}");
    let _namespace = BusNamespace(bus.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().to_path_buf();
    // The logs, ledger and databases are kept for a look afterwards when the run fails, or
    // always with FERRY_FAULT_KEEP=1.
    let _dir = RunDir(if std::env::var_os("FERRY_FAULT_KEEP").is_some() {
        let _ = dir.keep();
        None
    } else {
        Some(dir)
    });
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Every service signs its events with the deployment's key and refuses unsigned ones.
    let keys = bus_key_file(d);
    let ledger = d.join("ledger");
    let marker = format!("ferry-fault-{namespace}");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let sched_db = format!("sqlite://{}", d.join("scheduler.db").display());
    let logs_db = format!("sqlite://{}", d.join("logs.db").display());
    let api_db = format!("sqlite://{}", d.join("api.db").display());
    let svc = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "service".to_string(),
            name.to_string(),
            "--bus".into(),
            bus.clone(),
        ];
        a.extend(["--data-dir".to_string(), data.display().to_string()]);
        a.extend(["--bus-key-file".to_string(), keys.display().to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let seed = std::env::var("FERRY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!(
        "fault run on {bus_base}: namespace {namespace}, seed {seed} (FERRY_FAULT_SEED={seed} repeats it), logs in {}",
        d.display()
    );
    let mut rng = Rng(seed);

    let mut procs: Vec<Proc> = vec![
        Proc::start(
            "api",
            svc(
                "api",
                &[
                    "--api-db",
                    &api_db,
                    "--log-db",
                    &logs_db,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ],
            ),
            d,
        ),
        Proc::start("planner", svc("planner", &[]), d),
        Proc::start("scheduler", svc("scheduler", &["--db", &sched_db]), d),
        Proc::start("launcher", svc("launcher", &["--kill-grace", "1s"]), d),
        Proc::start("log-collector", svc("log-collector", &["--log-db", &logs_db]), d),
    ];
    // Wait for the api.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        for p in procs.iter_mut() {
            p.check_alive();
        }
        assert!(Instant::now() < deadline, "the api did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let flow_path = d.join("faults.yaml");
    std::fs::write(&flow_path, flow(&ledger, &marker, subtasks)).unwrap();
    let job = submit(&api, &data, &flow_path);
    eprintln!("job {job}");

    // Kill and restart services at random moments while the job runs.
    // Every service is killed at least once, in a random order, then random ones.
    let killable = ["planner", "scheduler", "launcher", "log-collector"];
    let victims = kill_order(&mut rng, &killable, ROUNDS);
    let mut launcher_kills = 0;
    let mut schedule = Vec::new();
    let mut seen = 0;
    for (round, victim) in victims.into_iter().enumerate() {
        // Strike while tasks run: wait until the ledger shows progress since the last fault
        // (a restarted consumer may wait for its group to rebalance first), then a little more.
        let deadline = Instant::now() + Duration::from_secs(120);
        let now = loop {
            let n = std::fs::read_to_string(&ledger)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if n >= seen + 40 {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "no progress for 120s after {schedule:?}; logs in {}",
                d.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        seen = now;
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let state = api_json(&api, &data, &format!("/jobs/{job}"))
            .await
            .and_then(|d| d["state"].as_str().map(str::to_string));
        if matches!(state.as_deref(), Some("succeeded" | "failed" | "cancelled")) {
            break;
        }
        if broker_restart && round == 2 {
            schedule.push("broker".to_string());
            restart_rabbitmq();
            continue;
        }
        schedule.push(victim.to_string());
        let p = procs.iter_mut().find(|p| p.name == victim).unwrap();
        p.check_alive();
        p.kill9();
        if victim == "launcher" {
            launcher_kills += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        p.spawn();
    }
    eprintln!("faults injected: {schedule:?}");
    assert!(
        schedule.len() >= MIN_ROUNDS,
        "the job ended after {} of {ROUNDS} fault rounds: too fast to test anything; make its tasks longer",
        schedule.len()
    );

    let context = format!("faults: {schedule:?}");
    let detail = end_of_job(&mut procs, &api, &data, &job, JOB_DEADLINE, &context, d, &ledger).await;
    let tasks = assert_every_task_succeeded(&detail, count);

    // Attempts: distinct ids; more than one only if a launcher was killed; never overlapping.
    let runs = read_ledger(&ledger);
    let mut by_task: HashMap<String, Vec<&AttemptRun>> = HashMap::new();
    for run in runs.values() {
        by_task.entry(run.task.clone()).or_default().push(run);
    }
    assert_eq!(by_task.len(), count, "every task ran");
    let mut reruns = 0;
    for (task, mut attempts) in by_task {
        assert!(
            attempts.iter().filter(|a| a.end.is_some()).count() >= 1,
            "{task} never completed a run"
        );
        if attempts.len() > 1 {
            reruns += 1;
            assert!(
                launcher_kills > 0,
                "{task} ran {} times though no launcher was killed",
                attempts.len()
            );
        }
        attempts.sort_by_key(|a| a.start.unwrap_or(0));
        for w in attempts.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                a.last < b.start.unwrap_or(u128::MAX),
                "two attempts of {task} ran at the same time"
            );
        }
    }
    eprintln!("{reruns} tasks ran more than once ({launcher_kills} launcher kills)");
    if subtasks {
        // The parent's dependent started after every subtask's last run ended.
        let after = runs
            .values()
            .filter(|r| r.task == "after")
            .filter_map(|r| r.start)
            .min()
            .expect("after ran");
        for r in runs.values().filter(|r| r.task.starts_with("root.")) {
            assert!(
                r.last < after,
                "after started before subtask {} ended ({context})",
                r.task
            );
        }
    }

    // Logs: every line of every attempt once and in order.
    let succeeded: HashSet<String> = tasks
        .iter()
        .filter_map(|t| t["attemptId"].as_str().map(str::to_string))
        .collect();
    check_logs(&d.join("logs.db"), &runs, &succeeded, count).await;

    // Nothing left running.
    let left = processes_with(&marker);
    assert!(left.is_empty(), "task processes survived: {left:?}");
}

/// Waits (at most `within`) for the job to end, its services checked alive meanwhile; then
/// until the log store holds every line the ledger says was printed (a log collector restarted
/// near the end may wait for its group's rebalance before it reads), and stops the services.
/// Returns the job as the api has it.
#[allow(clippy::too_many_arguments)]
async fn end_of_job(
    procs: &mut [Proc],
    api: &str,
    data: &Path,
    job: &str,
    within: Duration,
    context: &str,
    dir: &Path,
    ledger: &Path,
) -> Value {
    let deadline = Instant::now() + within;
    let detail = loop {
        for p in procs.iter_mut() {
            p.check_alive();
        }
        if let Some(d) = api_json(api, data, &format!("/jobs/{job}")).await
            && matches!(d["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
        {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish within {within:?} ({context}); logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    wait_for_logs(&dir.join("logs.db"), ledger, LOGS_DEADLINE).await;
    for p in procs.iter_mut().rev() {
        p.stop();
    }
    detail
}

/// The job succeeded, and each of its `count` tasks; returns the tasks.
fn assert_every_task_succeeded(detail: &Value, count: usize) -> &Vec<Value> {
    assert_eq!(detail["state"], "succeeded", "{detail:#}");
    let tasks = detail["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), count);
    for t in tasks {
        assert_eq!(t["state"], "succeeded", "{t}");
    }
    tasks
}

/// Longest wait for the log store to catch up once the job has finished.
const LOGS_DEADLINE: Duration = Duration::from_secs(60);

/// Waits (at most `limit`) until the log store holds as many lines of each attempt as the
/// ledger says it printed (but for attempts whose run started twice: a copy stopped by fencing
/// may have printed lines that are not the attempt's).
async fn wait_for_logs(db: &Path, ledger: &Path, limit: Duration) {
    use sqlx::{Connection, Row};
    let deadline = Instant::now() + limit;
    loop {
        let (mut runs, repeated) = read_ledger_with_repeats(ledger);
        for (attempt, _) in &repeated {
            runs.remove(attempt);
        }
        let stored: HashMap<String, usize> =
            match sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await {
                Ok(mut conn) => {
                    sqlx::query("SELECT attempt_id, COUNT(*) AS n FROM log_lines GROUP BY attempt_id")
                        .fetch_all(&mut conn)
                        .await
                        .map(|rows| {
                            rows.iter()
                                .map(|r| (r.get::<String, _>("attempt_id"), r.get::<i64, _>("n") as usize))
                                .collect()
                        })
                        .unwrap_or_default()
                }
                Err(_) => HashMap::new(),
            };
        let behind = runs
            .iter()
            .filter(|(attempt, run)| stored.get(*attempt).copied().unwrap_or(0) < run.wrote)
            .count();
        if behind == 0 {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("the log store still misses lines of {behind} attempts after {limit:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every stored line is in place (contiguous from 0, in order, once); every line an attempt
/// printed is stored, whether it succeeded or its launcher was killed under it; every attempt
/// that succeeded has all three.
async fn check_logs(
    db: &Path,
    runs: &BTreeMap<String, AttemptRun>,
    succeeded: &HashSet<String>,
    tasks: usize,
) {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = sqlx::query("SELECT attempt_id, task_id, seq, text FROM log_lines ORDER BY attempt_id, seq")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut lines: HashMap<String, Vec<(i64, String, String)>> = HashMap::new();
    for r in rows {
        let attempt: String = r.get("attempt_id");
        lines
            .entry(attempt)
            .or_default()
            .push((r.get("seq"), r.get("task_id"), r.get("text")));
    }
    let mut seen = HashSet::new();
    for (attempt, ls) in &lines {
        seen.insert(attempt.clone());
        for (i, (seq, task, text)) in ls.iter().enumerate() {
            assert_eq!(
                *seq as usize, i,
                "attempt {attempt}: lines are not contiguous from 0"
            );
            assert_eq!(
                text,
                &format!("line {i} of {task}"),
                "attempt {attempt}: line {i} out of order"
            );
        }
    }
    for (attempt, run) in runs {
        let n = lines.get(attempt).map(Vec::len).unwrap_or(0);
        assert!(
            n >= run.wrote,
            "attempt {attempt} of {} printed {} lines but {n} are stored",
            run.task,
            run.wrote
        );
    }
    assert_eq!(succeeded.len(), tasks);
    for attempt in succeeded {
        let run = runs
            .get(attempt)
            .unwrap_or_else(|| panic!("attempt {attempt} succeeded but never ran"));
        assert!(
            run.end.is_some(),
            "attempt {attempt} of {} succeeded without finishing",
            run.task
        );
        let n = lines.get(attempt).map(Vec::len).unwrap_or(0);
        assert_eq!(
            n, 3,
            "attempt {attempt} of {} succeeded but {n} of its 3 lines are stored",
            run.task
        );
    }
}

/// Restarts the RabbitMQ application (its queues are durable) and waits until it accepts
/// connections again.
fn restart_rabbitmq() {
    let run = |args: &[&str]| {
        let out = Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["stop_app"]);
    std::thread::sleep(Duration::from_millis(500));
    run(&["start_app"]);
    run(&["await_startup"]);
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test.sh, which starts the brokers and sets it")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_survives_killed_services_and_a_broker_restart() {
    fault_run(&env("FERRY_TEST_AMQP"), true, false).await;
}

/// Subtasks under faults: the scheduler, planner, launcher and log collector SIGKILLed at
/// random while `root`'s 240 subtasks run: each joins and succeeds once, and `after` waits for
/// all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtasks_survive_killed_services_on_rabbitmq() {
    fault_run(&env("FERRY_TEST_AMQP"), false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_survives_killed_services() {
    fault_run(&env("FERRY_TEST_KAFKA"), false, false).await;
}

/// A container platform the fault run kills a launcher of: a Docker engine, or a Kubernetes
/// API (the test API server, whose pods run on that engine).
enum Platform {
    Docker,
    Kubernetes(ferry_kube_test_server::TestServer),
}

impl Platform {
    fn backend(&self) -> &'static str {
        match self {
            Platform::Docker => "docker",
            Platform::Kubernetes(_) => "kubernetes",
        }
    }

    /// Container tasks in the run: enough that the launcher is killed many times while they
    /// run. `FERRY_FAULT_DOCKER_TASKS` or `FERRY_FAULT_KUBERNETES_TASKS` sets another number
    /// (scripts/test.sh takes fewer, for a run of about a minute on a small machine, where the
    /// engine starts a few containers a second).
    fn tasks(&self) -> usize {
        let var = format!("FERRY_FAULT_{}_TASKS", self.backend().to_uppercase());
        std::env::var(var)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(200)
    }

    /// The runner of every task: the ledger directory is mounted at `/ledger` (by the runner's
    /// `mounts` on Docker; on Kubernetes by the test server, into every pod, as a node's
    /// `hostPath` would be).
    fn runner(&self, image: &str, ledger_dir: &Path) -> Value {
        match self {
            Platform::Docker => serde_json::json!({
                "type": "docker",
                "image": image,
                "pullPolicy": "never",
                "network": "none",
                "mounts": [{"source": ledger_dir.display().to_string(), "target": "/ledger"}],
            }),
            Platform::Kubernetes(_) => serde_json::json!({
                "type": "kubernetes",
                "image": image,
                "pullPolicy": "never",
            }),
        }
    }

    /// What is left of `job` on the platform: containers labelled with it on Docker; every
    /// Job, pod and Secret on the test API server (which serves this run alone), and every
    /// container its pods ran in.
    fn leftovers(&self, job: &str) -> Vec<String> {
        match self {
            Platform::Docker => containers_with(&format!("dev.ferry.job={job}")),
            Platform::Kubernetes(server) => {
                let mut left = server.objects();
                left.extend(containers_with(&format!(
                    "{}={}",
                    ferry_kube_test_server::CONTAINER_LABEL,
                    server.id()
                )));
                left
            }
        }
    }
}

/// Times the launcher is killed during a container job.
const CONTAINER_KILLS: usize = 6;
/// Kills that must hit the job while it runs for a run to count.
const CONTAINER_MIN_KILLS: usize = 4;

/// A flow of `tasks` containers after a root one. Each attempt appends `start`, a `wrote`
/// after each of its three numbered lines, and `end` to the ledger, a file on the host mounted
/// into the container, stamped with the kernel's clock in microseconds (busybox's `date` has no
/// `%N`; `adjtimex` reads the clock the host's processes read).
fn container_flow(runner: &Value, tasks: usize) -> String {
    let script = r#"l=/ledger/ledger; now() { adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf "%d%06d000", s, u}'; }; echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID start $(now)" >> $l; i=0; while [ $i -lt 3 ]; do echo "line $i of $FERRY_TASK_ID"; echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID wrote $(now)" >> $l; sleep 0.05; i=$((i+1)); done; echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID end $(now)" >> $l"#;
    let cmd = serde_json::to_string(&["sh", "-c", script]).unwrap();
    let mut s = format!(
        "id: container-faults\nconcurrency: 16\ntasks:\n  - {{ id: root, runner: {runner}, command: {cmd} }}\n"
    );
    for i in 0..tasks {
        s.push_str(&format!(
            "  - {{ id: t{i:03}, runner: {runner}, dependsOn: [root], command: {cmd} }}\n"
        ));
    }
    s
}

/// The containers on the engine with `label` (`key=value`), running or not.
fn containers_with(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "--all", "--format", "{{.Names}} {{.Status}}"])
        .args(["--filter", &format!("label={label}")])
        .output()
        .expect("the docker client runs");
    assert!(
        out.status.success(),
        "docker ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A container launcher (`ferry service launcher --backend docker|kubernetes`) SIGKILLed again
/// and again while a job of a few hundred containers runs, the other services left alone.
/// Compute outlives its launcher, so the next start adopts it; compute it created but had not
/// journaled is found by its labels. Then: every task succeeded once; attempts of a task never
/// overlapped; every line is stored once; nothing of the job is left on the platform.
async fn container_fault_run(bus_base: &str, kubernetes: bool) {
    let image = env("FERRY_TEST_DOCKER_IMAGE");
    env("DOCKER_HOST");
    let namespace = format!("d{}", &ferry_event::new_id().replace('-', "")[..16]);
    let sep = if bus_base.contains('?') { '&' } else { '?' };
    let bus = format!("{bus_base}{sep}namespace={namespace}");
    let _namespace = BusNamespace(bus.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().to_path_buf();
    let _dir = RunDir(if std::env::var_os("FERRY_FAULT_KEEP").is_some() {
        let _ = dir.keep();
        None
    } else {
        Some(dir)
    });
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let keys = bus_key_file(d);
    let ledger_dir = d.join("ledger");
    std::fs::create_dir_all(&ledger_dir).unwrap();
    let ledger = ledger_dir.join("ledger");
    let platform = if kubernetes {
        let options = ferry_kube_test_server::Options {
            node_mounts: vec![(ledger_dir.clone(), "/ledger".to_string())],
            ..Default::default()
        };
        let server = ferry_kube_test_server::TestServer::start_from_env(options)
            .await
            .expect("the test API server starts");
        Platform::Kubernetes(server)
    } else {
        Platform::Docker
    };
    let backend = platform.backend();
    let task_count = platform.tasks();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let sched_db = format!("sqlite://{}", d.join("scheduler.db").display());
    let logs_db = format!("sqlite://{}", d.join("logs.db").display());
    let api_db = format!("sqlite://{}", d.join("api.db").display());
    let svc = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "service".to_string(),
            name.to_string(),
            "--bus".into(),
            bus.clone(),
        ];
        a.extend(["--data-dir".to_string(), data.display().to_string()]);
        a.extend(["--bus-key-file".to_string(), keys.display().to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let seed = std::env::var("FERRY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!(
        "{backend} fault run on {bus_base}: namespace {namespace}, seed {seed} (FERRY_FAULT_SEED={seed} repeats it), logs in {}",
        d.display()
    );
    let mut rng = Rng(seed);
    let listen = format!("127.0.0.1:{port}");
    // The kubernetes launcher finds its API server the standard way.
    let mut launcher_env = Vec::new();
    if let Platform::Kubernetes(server) = &platform {
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig("default")).unwrap();
        launcher_env.push(("KUBECONFIG".to_string(), kubeconfig.display().to_string()));
        // Every pod holds `$FERRY_SUBTASKS` in a stage container: of the test image here, where
        // nothing can be pulled.
        launcher_env.push(("FERRY_KUBE_STAGE_IMAGE".to_string(), image.clone()));
    }
    let mut procs: Vec<Proc> = vec![
        Proc::start(
            "api",
            svc(
                "api",
                &["--api-db", &api_db, "--log-db", &logs_db, "--listen", &listen],
            ),
            d,
        ),
        Proc::start("planner", svc("planner", &[]), d),
        Proc::start("scheduler", svc("scheduler", &["--db", &sched_db]), d),
        Proc::start_with(
            "launcher",
            svc(
                "launcher",
                &["--backend", backend, "--max-parallel", "16", "--kill-grace", "1s"],
            ),
            launcher_env,
            d,
        ),
        Proc::start("log-collector", svc("log-collector", &["--log-db", &logs_db]), d),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        for p in procs.iter_mut() {
            p.check_alive();
        }
        assert!(Instant::now() < deadline, "the api did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let flow_path = d.join("container-faults.yaml");
    let runner = platform.runner(&image, &ledger_dir);
    std::fs::write(&flow_path, container_flow(&runner, task_count)).unwrap();
    let job = submit(&api, &data, &flow_path);
    eprintln!("job {job} of {task_count} containers after a first one");

    // Kill the launcher while containers run: each time the ledger has moved on since the last
    // kill (its restart has taken up the work again), after a random moment more.
    let mut kills = Vec::new();
    let mut seen = 0;
    for _ in 0..CONTAINER_KILLS {
        let deadline = Instant::now() + Duration::from_secs(60);
        let now = loop {
            let n = std::fs::read_to_string(&ledger)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if n >= seen + 30 {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "no progress for 60s after {} kills; logs in {}",
                kills.len(),
                d.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        seen = now;
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        let state = api_json(&api, &data, &format!("/jobs/{job}"))
            .await
            .and_then(|d| d["state"].as_str().map(str::to_string));
        if matches!(state.as_deref(), Some("succeeded" | "failed" | "cancelled")) {
            break;
        }
        let p = procs.iter_mut().find(|p| p.name == "launcher").unwrap();
        p.check_alive();
        p.kill9();
        let down = rng.below(500);
        kills.push(down);
        std::thread::sleep(Duration::from_millis(down));
        p.spawn();
    }
    eprintln!(
        "the launcher was killed {} times (down for {kills:?} ms before each restart)",
        kills.len()
    );
    assert!(
        kills.len() >= CONTAINER_MIN_KILLS,
        "the job ended after {} of {CONTAINER_KILLS} kills: too fast to test anything",
        kills.len()
    );

    let context = format!("{} launcher kills", kills.len());
    let within = Duration::from_secs(120);
    let detail = end_of_job(&mut procs, &api, &data, &job, within, &context, d, &ledger).await;
    let tasks = assert_every_task_succeeded(&detail, task_count + 1);

    // Attempts of a task never overlapped.
    let runs = read_ledger(&ledger);
    let mut by_task: HashMap<String, Vec<&AttemptRun>> = HashMap::new();
    for run in runs.values() {
        by_task.entry(run.task.clone()).or_default().push(run);
    }
    assert_eq!(by_task.len(), task_count + 1, "every task ran");
    let mut reruns = 0;
    for (task, mut attempts) in by_task {
        reruns += usize::from(attempts.len() > 1);
        attempts.sort_by_key(|a| a.start.unwrap_or(0));
        for w in attempts.windows(2) {
            assert!(
                w[0].last < w[1].start.unwrap_or(u128::MAX),
                "two attempts of {task} ran at the same time: {:?}",
                attempts
            );
        }
    }
    eprintln!("{reruns} tasks ran more than once");

    // Every line once, in order; every succeeded attempt ran to its end with its three lines.
    let succeeded: HashSet<String> = tasks
        .iter()
        .filter_map(|t| t["attemptId"].as_str().map(str::to_string))
        .collect();
    check_logs(&d.join("logs.db"), &runs, &succeeded, task_count + 1).await;

    // Nothing of the job is left on the platform (a deleted Job's pods end within their grace).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = platform.leftovers(&job);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{backend}: compute of the job is left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Platform::Kubernetes(server) = platform {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_survives_a_killed_launcher() {
    container_fault_run(&env("FERRY_TEST_AMQP"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_survives_a_killed_launcher() {
    container_fault_run(&env("FERRY_TEST_AMQP"), true).await;
}

/// Trigger events the trigger fault run publishes (each twice); `FERRY_FAULT_TRIGGER_EVENTS`
/// sets another number (fewer where the machine is slow).
const TRIGGER_EVENTS: usize = 1000;
/// Planner kills in the trigger fault run.
const PLANNER_KILLS: usize = 6;

/// A deployment's five services, each its own process on a fresh namespace (`prefix` and an
/// id) of the broker at `url`, with SQLite databases in a fresh run directory, as the trigger
/// and schedule fault runs kill its planner; returned once the api answers. Dropped: the
/// processes stop, then the run directory goes (kept on failure), then the namespace.
struct ServiceRun {
    procs: Vec<Proc>,
    rng: Rng,
    namespace: String,
    /// The bus's address, with the namespace, and its key file.
    bus: String,
    keys: PathBuf,
    d: PathBuf,
    data: PathBuf,
    /// Where the runs' tasks write what they did.
    ledger: PathBuf,
    api: String,
    _dir: RunDir,
    _namespace: BusNamespace,
}

impl ServiceRun {
    fn start(url: &str, prefix: &str, what: &str) -> ServiceRun {
        let namespace = format!("{prefix}{}", &ferry_event::new_id().replace('-', "")[..16]);
        let sep = if url.contains('?') { '&' } else { '?' };
        let bus = format!("{url}{sep}namespace={namespace}");
        let bus_namespace = BusNamespace(bus.clone());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let run_dir = RunDir(Some(dir));
        let data = d.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let keys = bus_key_file(&d);
        let port = free_port();
        let svc = |name: &str, extra: &[String]| -> Vec<String> {
            let mut a = vec![
                "service".to_string(),
                name.to_string(),
                "--bus".into(),
                bus.clone(),
            ];
            a.extend(["--data-dir".to_string(), data.display().to_string()]);
            a.extend(["--bus-key-file".to_string(), keys.display().to_string()]);
            a.extend(extra.iter().cloned());
            a
        };
        let db = |name: &str| format!("sqlite://{}", d.join(name).display());
        let logs_db = db("logs.db");
        let seed = std::env::var("FERRY_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!(
            "{what}: namespace {namespace}, seed {seed} (FERRY_FAULT_SEED={seed} repeats it), logs in {}",
            d.display()
        );
        let mut procs: Vec<Proc> = vec![
            Proc::start(
                "api",
                svc(
                    "api",
                    &[
                        "--api-db".into(),
                        db("api.db"),
                        "--log-db".into(),
                        logs_db.clone(),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                    ],
                ),
                &d,
            ),
            Proc::start(
                "planner",
                svc("planner", &["--planner-db".into(), db("planner.db")]),
                &d,
            ),
            Proc::start(
                "scheduler",
                svc("scheduler", &["--db".into(), db("scheduler.db")]),
                &d,
            ),
            Proc::start(
                "launcher",
                svc("launcher", &["--kill-grace".into(), "1s".into()]),
                &d,
            ),
            Proc::start(
                "log-collector",
                svc("log-collector", &["--log-db".into(), logs_db.clone()]),
                &d,
            ),
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            for p in procs.iter_mut() {
                p.check_alive();
            }
            assert!(Instant::now() < deadline, "the api did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        ServiceRun {
            procs,
            rng: Rng(seed),
            namespace,
            bus,
            keys,
            ledger: d.join("ledger"),
            d,
            data,
            api: format!("http://127.0.0.1:{port}"),
            _dir: run_dir,
            _namespace: bus_namespace,
        }
    }
}

/// A deployed flow whose one task appends the id of the event that started its job to `ledger`.
fn triggered_flow(ledger: &Path) -> String {
    format!(
        r#"id: counted
triggers:
  - on: {{ type: com.acme.counted, source: "/faults/*" }}
    inputs: {{ event: "{{{{ event.id }}}}" }}
inputs:
  event: {{ type: string, required: true }}
tasks:
  - id: note
    runner: local
    command: [sh, -c, 'echo "$EVENT" >> {}']
    env: {{ EVENT: "{{{{ inputs.event }}}}" }}
"#,
        ledger.display()
    )
}

/// Trigger events published twice each, by a client that is not ferry, while the planner is
/// SIGKILLed and restarted again and again: every event starts exactly one job, whose task runs
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_trigger_events_start_one_job_each_through_planner_kills() {
    let events: usize = std::env::var("FERRY_FAULT_TRIGGER_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TRIGGER_EVENTS);
    let url = env("FERRY_TEST_AMQP");
    let mut run = ServiceRun::start(&url, "g", &format!("trigger fault run: {events} events"));
    let (d, data, ledger, api, namespace) = (
        run.d.clone(),
        run.data.clone(),
        run.ledger.clone(),
        run.api.clone(),
        run.namespace.clone(),
    );
    let flow_path = d.join("counted.yaml");
    std::fs::write(&flow_path, triggered_flow(&ledger)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["deploy", "--api", &api, "--data-dir"])
        .arg(&data)
        .arg(&flow_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every event twice: once in a first pass over all of them, again in a second.
    let publisher_log = std::fs::File::create(d.join("publisher.log")).unwrap();
    let mut publisher = Command::new(env("FERRY_TEST_PYTHON"))
        .arg(root().join("tests/clients/publish_events_amqp.py"))
        .args([
            url.as_str(),
            &namespace,
            "com.acme.counted",
            "/faults/publisher",
            "n",
            "{}",
            "ev",
            &events.to_string(),
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(publisher_log)
        .spawn()
        .unwrap();
    let planner_db = d.join("planner.db");
    assert!(planner_db.exists());
    let lines = || {
        std::fs::read_to_string(&ledger)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut kills = 0;
    let published = loop {
        // Strike while the planner has work: events are still being published, or jobs are
        // still to come.
        std::thread::sleep(Duration::from_millis(100 + run.rng.below(500)));
        let done = publisher.try_wait().unwrap();
        if kills >= PLANNER_KILLS
            && let Some(status) = done
        {
            break status;
        }
        if kills < PLANNER_KILLS && (done.is_none() || lines() < events) {
            let p = run.procs.iter_mut().find(|p| p.name == "planner").unwrap();
            p.check_alive();
            p.kill9();
            kills += 1;
            std::thread::sleep(Duration::from_millis(run.rng.below(300)));
            p.spawn();
        } else if kills < PLANNER_KILLS {
            // Everything ran before the planner could be hit enough times.
            break publisher.wait().unwrap();
        }
    };
    assert!(
        published.success(),
        "the publisher failed; see {}",
        d.join("publisher.log").display()
    );
    eprintln!("planner killed {kills} times");
    assert!(
        kills >= 3,
        "the run ended after {kills} planner kills: too fast to test anything"
    );

    // Every event's job runs; then nothing more comes.
    let deadline = Instant::now() + Duration::from_secs(300);
    while lines() < events {
        for p in run.procs.iter_mut() {
            p.check_alive();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {events} jobs ran within 300s; logs in {}",
            lines(),
            d.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Duplicates would come after the originals: give them time to show.
    std::thread::sleep(Duration::from_secs(3));
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in ledger_text.lines() {
        *runs.entry(line).or_default() += 1;
    }
    let doubled: Vec<(&&str, &usize)> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "events whose job ran more than once: {doubled:?}"
    );
    assert_eq!(runs.len(), events, "every event ran its job once");
    for i in 0..events {
        assert!(
            runs.contains_key(format!("ev-{i}").as_str()),
            "ev-{i} started no job"
        );
    }
    // And the api knows exactly that many jobs, each succeeded.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = count_jobs(&api, &data).await;
        if jobs == (events, events) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the api lists {jobs:?} (jobs, succeeded), not {events} succeeded jobs; logs in {}",
            d.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for p in run.procs.iter_mut().rev() {
        p.stop();
    }
}

/// How many jobs the api lists (at most 1000: the ledger is what would show a job too many),
/// and how many of them succeeded.
async fn count_jobs(api: &str, data: &Path) -> (usize, usize) {
    let token = std::fs::read_to_string(data.join(ferry_api::auth::ADMIN_TOKEN_FILE)).unwrap_or_default();
    let answer = reqwest::Client::new()
        .get(format!("{api}/jobs?limit=1000"))
        .bearer_auth(token.trim())
        .send()
        .await;
    let Ok(answer) = answer else { return (0, 0) };
    let Ok(list) = answer.json::<Value>().await else {
        return (0, 0);
    };
    let jobs = list["jobs"].as_array().cloned().unwrap_or_default();
    let succeeded = jobs.iter().filter(|j| j["state"] == "succeeded").count();
    (jobs.len(), succeeded)
}

/// A flow whose schedule ticks every second; each job appends its tick to `ledger`.
fn scheduled_flow(ledger: &Path) -> String {
    format!(
        r#"id: ticking
triggers:
  - schedule: "* * * * * *"
    inputs: {{ at: "{{{{ trigger.time }}}}" }}
inputs:
  at: {{ type: string, required: true }}
tasks:
  - id: note
    runner: local
    command: [sh, -c, 'echo "$AT" >> {}']
    env: {{ AT: "{{{{ inputs.at }}}}" }}
"#,
        ledger.display()
    )
}

/// A schedule ticking every second while the planner is SIGKILLed and restarted again and
/// again: every tick from the first to the last starts exactly one job, whose task runs exactly
/// once; the ticks that came while the planner was down are fired when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_schedule_ticks_start_one_job_each_through_planner_kills() {
    let url = env("FERRY_TEST_AMQP");
    let mut run = ServiceRun::start(&url, "s", "schedule fault run");
    let (d, data, ledger, api) = (
        run.d.clone(),
        run.data.clone(),
        run.ledger.clone(),
        run.api.clone(),
    );
    let ferry_cmd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .args(["--api", &api, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let flow_path = d.join("ticking.yaml");
    std::fs::write(&flow_path, scheduled_flow(&ledger)).unwrap();
    ferry_cmd(&["deploy", flow_path.to_str().unwrap()]);
    let lines = || {
        std::fs::read_to_string(&ledger)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    // Kill the planner across many ticks: down for up to two seconds at a time, so that ticks
    // come while it is down.
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while kills < PLANNER_KILLS {
        std::thread::sleep(Duration::from_millis(300 + run.rng.below(1500)));
        let p = run.procs.iter_mut().find(|p| p.name == "planner").unwrap();
        p.check_alive();
        p.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(run.rng.below(2000)));
        p.spawn();
        assert!(Instant::now() < deadline, "the kills took too long");
    }
    // Let a restarted planner fire what it missed and a few ticks more, then stop the ticks.
    let before = lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines() < before + 3 {
        for p in run.procs.iter_mut() {
            p.check_alive();
        }
        assert!(
            Instant::now() < deadline,
            "the schedule stopped ticking after the kills; logs in {}",
            d.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ferry_cmd(&["undeploy", "ticking"]);
    // Every job the planner published runs; then nothing more comes.
    let mut last = (lines(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    while last.1.elapsed() < Duration::from_secs(5) {
        assert!(Instant::now() < deadline, "jobs kept coming after the undeploy");
        std::thread::sleep(Duration::from_millis(250));
        let n = lines();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    eprintln!("planner killed {kills} times; {} ticks ran", lines());
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    let mut runs: BTreeMap<i64, usize> = BTreeMap::new();
    for line in ledger_text.lines() {
        let at = chrono::DateTime::parse_from_rfc3339(line.trim())
            .unwrap_or_else(|e| panic!("`{line}` in the ledger is not a tick: {e}"));
        *runs.entry(at.timestamp()).or_default() += 1;
    }
    let doubled: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "ticks whose job ran more than once: {doubled:?}"
    );
    let (first, last) = (*runs.keys().next().unwrap(), *runs.keys().next_back().unwrap());
    let lost: Vec<i64> = (first..=last).filter(|t| !runs.contains_key(t)).collect();
    assert!(
        lost.is_empty(),
        "ticks that started no job: {lost:?}; logs in {}",
        d.display()
    );
    // And the api knows exactly that many jobs, each succeeded.
    let ticks = runs.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = count_jobs(&api, &data).await;
        if jobs == (ticks, ticks) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the api lists {jobs:?} (jobs, succeeded), not {ticks} succeeded jobs; logs in {}",
            d.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for p in run.procs.iter_mut().rev() {
        p.stop();
    }
}

/// Subtasks the agent fault run's root submits.
const AGENT_SUBTASKS: usize = 160;
/// Kills in the agent fault run, and how many must hit the running job for it to count.
const AGENT_ROUNDS: usize = 10;
const AGENT_MIN_ROUNDS: usize = 6;

/// An agent configuration for the agent fault run, registering `split@1.0` (the root: it submits
/// [`AGENT_SUBTASKS`] `work@1.0` subtasks; its first attempt in the run fails after writing them,
/// with ids that must never appear) and `work@1.0` ([`ledger_script`]).
fn agent_fault_config(dir: &Path, agent: &str, ledger: &Path, marker: &str) -> PathBuf {
    let work = ledger_script(ledger);
    let split = format!(
        r#"l={ledger}; echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID start $(date +%s%N)" >> "$l"; first={failed}; if mkdir "$first" 2>/dev/null; then p=lost-; else p=; fi; {{ printf '['; i=0; while [ $i -lt {n} ]; do [ $i -gt 0 ] && printf ','; printf '{{"id":"%st%03d","runner":{{"type":"agent","cluster":"c","task":"work@1.0"}}}}' "$p" $i; i=$((i+1)); done; printf ']'; }} > "$FERRY_SUBTASKS"; if [ -n "$p" ]; then echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID failed $(date +%s%N)" >> "$l"; exit 1; fi; echo "$FERRY_TASK_ID $FERRY_ATTEMPT_ID end $(date +%s%N)" >> "$l""#,
        ledger = ledger.display(),
        failed = dir.join("root-failed-once").display(),
        n = AGENT_SUBTASKS,
    );
    let config = serde_json::json!({
        "tasks": [
            {"name": "split", "version": "1.0", "command": ["sh", "-c", split, marker], "env": {"AGENT": agent}},
            {"name": "work", "version": "1.0", "command": ["sh", "-c", work, marker], "env": {"AGENT": agent}},
        ]
    });
    let path = dir.join(format!("{agent}.yaml"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// Two agents and the planner SIGKILLed and restarted again and again while a job of agent
/// tasks runs, whose root submits agent subtasks: its first attempt fails after submitting
/// subtasks that must never appear; the second's join the job, and `after` waits for them all.
/// The job succeeds; every task and subtask succeeded once, with an attempt that ran to its
/// end; no subtask of the failed attempt exists; nothing is left running.
///
/// A dispatch an agent started but had not yet acknowledged when it was killed is delivered
/// again, possibly to the other agent, which starts the same attempt: the scheduler keeps the
/// first start and stops the copy (fencing). Such copies are counted and allowed only for
/// attempts whose first run was on a killed agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_agent_tasks_with_subtasks_survive_killed_agents_and_planner() {
    let url = env("FERRY_TEST_AMQP");
    let mut run = ServiceRun::start(&url, "a", "agent fault run");
    let (d, data, ledger, api) = (
        run.d.clone(),
        run.data.clone(),
        run.ledger.clone(),
        run.api.clone(),
    );
    let marker = format!("ferry-fault-{}", run.namespace);
    for agent in ["x", "y"] {
        let config = agent_fault_config(&d, agent, &ledger, &marker);
        let args: Vec<String> = [
            "agent",
            "--bus",
            &run.bus,
            "--bus-key-file",
            run.keys.to_str().unwrap(),
            "--data-dir",
            d.join(format!("agent-{agent}")).to_str().unwrap(),
            "--cluster",
            "c",
            "--config",
            config.to_str().unwrap(),
            "--max-parallel",
            "4",
            "--kill-grace",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let name = if agent == "x" { "agent-x" } else { "agent-y" };
        run.procs.push(Proc::start(name, args, &d));
    }
    let flow_path = d.join("agents.yaml");
    std::fs::write(
        &flow_path,
        "id: agent-faults\ntasks:\n  - id: root\n    runner: { type: agent, cluster: c, task: split@1.0 }\n    retry: { attempts: 3, initial: 100ms }\n  - id: after\n    runner: { type: agent, cluster: c, task: work@1.0 }\n    dependsOn: [root]\n",
    )
    .unwrap();
    let job = submit(&api, &data, &flow_path);
    eprintln!("job {job}: a root submitting {AGENT_SUBTASKS} agent subtasks, on agents x and y");

    // Each agent and the planner at least once, in a random order, then random ones.
    let victims = kill_order(&mut run.rng, &["agent-x", "agent-y", "planner"], AGENT_ROUNDS);
    let mut schedule = Vec::new();
    let mut seen = 0;
    for victim in victims {
        let deadline = Instant::now() + Duration::from_secs(120);
        let now = loop {
            let n = std::fs::read_to_string(&ledger)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if n >= seen + 30 {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "no progress for 120s after {schedule:?}; logs in {}",
                d.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        seen = now;
        std::thread::sleep(Duration::from_millis(run.rng.below(400)));
        let state = api_json(&api, &data, &format!("/jobs/{job}"))
            .await
            .and_then(|d| d["state"].as_str().map(str::to_string));
        if matches!(state.as_deref(), Some("succeeded" | "failed" | "cancelled")) {
            break;
        }
        schedule.push(victim);
        let down = run.rng.below(600);
        let p = run.procs.iter_mut().find(|p| p.name == victim).unwrap();
        p.check_alive();
        p.kill9();
        std::thread::sleep(Duration::from_millis(down));
        p.spawn();
    }
    eprintln!("killed: {schedule:?}");
    assert!(
        schedule.len() >= AGENT_MIN_ROUNDS,
        "the job ended after {} of {AGENT_ROUNDS} kills: too fast to test anything",
        schedule.len()
    );

    let context = format!("kills: {schedule:?}");
    let detail = end_of_job(
        &mut run.procs,
        &api,
        &data,
        &job,
        JOB_DEADLINE,
        &context,
        &d,
        &ledger,
    )
    .await;
    let tasks = assert_every_task_succeeded(&detail, AGENT_SUBTASKS + 2);
    let (runs, repeated) = read_ledger_with_repeats(&ledger);

    // The failed first attempt of root submitted subtasks; none of them joined the job.
    let ids: HashSet<&str> = tasks.iter().filter_map(|t| t["taskId"].as_str()).collect();
    let failed_roots = runs
        .values()
        .filter(|r| r.task == "root" && r.end.is_none())
        .count();
    assert!(failed_roots >= 1, "root's first attempt did not run");
    for i in 0..AGENT_SUBTASKS {
        assert!(
            ids.contains(format!("root.t{i:03}").as_str()),
            "root.t{i:03} missing: {ids:?}"
        );
    }
    assert!(
        !ids.iter().any(|id| id.contains("lost-")),
        "a subtask of root's failed attempt joined the job: {ids:?}"
    );

    // Every task's successful attempt ran to its end; `after` started once every subtask ended.
    for t in tasks {
        let (task, attempt) = (t["taskId"].as_str().unwrap(), t["attemptId"].as_str().unwrap());
        let ran = runs
            .get(attempt)
            .unwrap_or_else(|| panic!("{task}'s successful attempt {attempt} never ran ({context})"));
        assert!(
            ran.end.is_some(),
            "{task}'s successful attempt {attempt} did not run to its end ({context})"
        );
    }
    let after = runs
        .values()
        .filter(|r| r.task == "after")
        .filter_map(|r| r.start)
        .min()
        .expect("after ran");
    for r in runs.values().filter(|r| r.task.starts_with("root.")) {
        assert!(
            r.last < after,
            "after started before subtask {} ended ({context})",
            r.task
        );
    }
    let agent_kills = schedule.iter().filter(|v| v.starts_with("agent")).count();
    assert!(
        repeated.is_empty() || agent_kills > 0,
        "attempts started twice though no agent was killed: {repeated:?}"
    );
    let reruns = runs.len().saturating_sub(AGENT_SUBTASKS + 2 + failed_roots);
    eprintln!(
        "{agent_kills} agent kills; {reruns} extra attempts; {} attempts started again by a redelivered dispatch: {repeated:?}",
        repeated.len()
    );

    // Nothing left running.
    let left = processes_with(&marker);
    assert!(left.is_empty(), "task processes survived: {left:?}");
}
