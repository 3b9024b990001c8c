//! Agents on RabbitMQ (`ferry up` and `ferry agent` processes): an agent asked to stop
//! (SIGTERM) lets its running task finish and exits, without losing or repeating it; the tasks
//! of a SIGKILLed agent run again on another once their lease lapses, and the killed agent,
//! started again, leaves nothing of them running. Examples and routing by version are in
//! tests/examples.rs (`agent_example_…`).
//!
//! Needs FERRY_TEST_AMQP; scripts/test.sh provides it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// An agent configuration registering `slow@1.0`: it prints where it runs, sleeps `$SLEEP`
/// seconds, and reports its agent as an output.
fn slow_config(dir: &Path, agent: &str, sleep_s: u32) -> PathBuf {
    let path = dir.join(format!("{agent}.yaml"));
    std::fs::write(
        &path,
        format!(
            "tasks:\n  - name: slow\n    version: \"1.0\"\n    command: [sh, -c, 'echo \"start on $AGENT\"; sleep \"$SLEEP\"; echo \"end on $AGENT\"; printf \"{{\\\"agent\\\": \\\"%s\\\"}}\" \"$AGENT\" > \"$FERRY_OUTPUTS\"']\n    env: {{ AGENT: {agent}, SLEEP: \"{sleep_s}\" }}\n"
        ),
    )
    .unwrap();
    path
}

/// A one-task flow asking for `slow@1.0` in cluster `c`.
fn slow_flow(dir: &Path) -> PathBuf {
    let path = dir.join("slow.yaml");
    std::fs::write(
        &path,
        "id: slow\ntasks:\n  - id: slow\n    runner: { type: agent, cluster: c, task: slow@1.0 }\n",
    )
    .unwrap();
    path
}

fn agent_queues(bus: &str) -> Queues {
    let backend = "agent.c.slow.1.0".to_string();
    Queues(
        bus.to_string(),
        vec![ferry_bus::Subscribe::new(
            ferry_event::agent::group(&backend),
            [ferry_event::Topic::Dispatch(backend)],
        )],
    )
}

fn submit(d: &Deployment, flow: &Path) -> String {
    let ran = d.client(&["submit", flow.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    ran.stdout.lines().next().unwrap().trim().to_string()
}

fn ended(s: &serde_json::Value) -> bool {
    matches!(s["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

/// Waits up to `within` for the process to exit; its exit code.
fn exits(agent: &mut Up, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = agent.0.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The pids of processes whose environment names `attempt` (`FERRY_ATTEMPT_ID`).
fn processes_of(attempt: &str) -> Vec<i32> {
    let needle = format!("FERRY_ATTEMPT_ID={attempt}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

#[test]
fn a_sigtermed_agent_finishes_its_running_task_and_exits() {
    let d = Deployment::start(&[]);
    let _queues = agent_queues(&d.bus);
    let mut x = d.agent(
        "x",
        "c",
        &slow_config(d.dir.path(), "x", 3),
        &["--shutdown-grace", "60s"],
    );
    let job = submit(&d, &slow_flow(d.dir.path()));
    d.status_when(&job, "the task runs on x", |s| {
        task(s, "slow")["state"] == "running"
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(x.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let s = d.status_when(&job, "the job ends", ended);
    assert_eq!(s["state"], "succeeded", "{s:#}\n{}", d.logs());
    let t = task(&s, "slow");
    assert_eq!(
        (&t["attempts"], &t["outputs"]["agent"]),
        (&1.into(), &"x".into()),
        "{s:#}"
    );
    assert_eq!(exits(&mut x, Duration::from_secs(30)), Some(0), "{}", d.logs());
    // Reaped: its pid is not this test's to signal again when it would be dropped.
    std::mem::forget(x);
    let logs = d.client(&["logs", &job]);
    assert_eq!(
        logs.stdout.lines().collect::<Vec<_>>(),
        ["slow | start on x", "slow | end on x"],
        "{}",
        logs.stdout
    );
}

#[test]
fn a_sigkilled_agents_task_runs_again_on_another_and_nothing_of_it_survives_its_restart() {
    let d = Deployment::start(&["--lease", "3s"]);
    let _queues = agent_queues(&d.bus);
    let y_config = slow_config(d.dir.path(), "y", 600);
    let mut y = d.agent("y", "c", &y_config, &[]);
    let job = submit(&d, &slow_flow(d.dir.path()));
    let s = d.status_when(&job, "the task runs on y", |s| {
        task(s, "slow")["state"] == "running"
    });
    let first = task(&s, "slow")["attemptId"].as_str().unwrap().to_string();
    y.0.kill().unwrap();
    y.0.wait().unwrap();
    std::mem::forget(y);
    // Its task's process outlives it (nothing is left to stop it) until y starts again.
    assert!(
        !processes_of(&first).is_empty(),
        "the task's process died with its agent"
    );
    let _z = d.agent("z", "c", &slow_config(d.dir.path(), "z", 1), &[]);
    let s = d.status_when(&job, "the job ends", ended);
    assert_eq!(s["state"], "succeeded", "{s:#}\n{}", d.logs());
    let t = task(&s, "slow");
    assert_eq!(
        (&t["attempts"], &t["outputs"]["agent"]),
        (&2.into(), &"z".into()),
        "{s:#}"
    );
    // y, started again on its data directory, ends what its killed run left behind.
    let _y = d.agent("y", "c", &y_config, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_of(&first).is_empty() {
        assert!(
            Instant::now() < deadline,
            "y's first task still runs: {}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = d.status(&job);
    assert_eq!(task(&s, "slow")["attempts"], 2, "{s:#}");
}
