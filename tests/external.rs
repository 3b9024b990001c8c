//! Jobs started by clients that are not ferry: a short Python script publishes a
//! `dev.ferry.job.submitted` CloudEvent straight onto RabbitMQ (pika) or Kafka (kafka-python),
//! in binary mode, and the deployment runs the job.
//!
//! Needs FERRY_TEST_AMQP, FERRY_TEST_KAFKA and FERRY_TEST_PYTHON (a Python with pika and
//! kafka-python); scripts/test.sh provides them.

mod common;

use std::process::Command;

use common::*;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run ./scripts/test.sh, which sets it"))
}

/// Starts `ferry up` on the bus; publishes with the script; waits for the job to succeed.
fn run_external(bus_base: &str, script: &str, broker_arg: &str) {
    let d = Deployment::up(bus_base);
    let job = format!("external-{}", d.ns);
    let out = Command::new(env("FERRY_TEST_PYTHON"))
        .arg(root().join("tests/clients").join(script))
        .args([broker_arg, &d.ns, &job])
        .arg(example("hello.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = d.final_state(&job);
    assert_eq!(state, "succeeded");
    let logs = d.client(&["logs", &job]);
    let greeting = if script.contains("amqp") {
        "hello, pika"
    } else {
        "hello, kafka"
    };
    assert!(
        logs.stdout.contains(&format!("greet | {greeting}")),
        "{}",
        logs.stdout
    );
    drop(d);
}

#[test]
fn a_python_client_starts_a_job_through_rabbitmq() {
    let url = env("FERRY_TEST_AMQP");
    run_external(&url, "publish_amqp.py", &url);
}

#[test]
fn a_python_client_starts_a_job_through_kafka() {
    let url = env("FERRY_TEST_KAFKA");
    let brokers = url.strip_prefix("kafka://").unwrap().to_string();
    run_external(&url, "publish_kafka.py", &brokers);
}

/// Subtasks through RabbitMQ: `split` fans out at run time, `report` waits for the whole
/// subtree, and `ferry status` lists each subtask under its parent.
#[test]
fn a_subtask_fan_out_runs_through_rabbitmq_and_status_shows_the_tree() {
    let d = Deployment::up(&env("FERRY_TEST_AMQP"));
    let flow = example("subtasks.yaml");
    let submitted = d.client(&["submit", flow.to_str().unwrap(), "--input", "parts=3", "--wait"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let job = submitted.stdout.lines().next().unwrap().trim().to_string();
    let status = d.client(&["status", &job]);
    assert_eq!(status.stdout.lines().next(), Some("succeeded"));
    let tasks: Vec<&str> = status
        .stdout
        .lines()
        .skip(2)
        .map(|l| l.split("  succeeded").next().unwrap_or(l).trim_end())
        .collect();
    assert_eq!(
        &tasks[..6],
        [
            "split",
            "  split.part-1",
            "  split.part-2",
            "  split.part-3",
            "  split.sum",
            "report",
        ],
        "{}",
        status.stdout
    );
    let logs = d.client(&["logs", &job]);
    assert!(
        logs.stdout.contains("split.sum | sum of squares: 14"),
        "{}",
        logs.stdout
    );
    drop(d);
}
