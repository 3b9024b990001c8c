//! Jobs started by clients that are not ferry: a short Python script publishes a
//! `dev.ferry.job.submitted` CloudEvent straight onto RabbitMQ (pika) or Kafka (kafka-python),
//! in binary mode, and the deployment runs the job.
//!
//! Needs FERRY_TEST_AMQP, FERRY_TEST_KAFKA and FERRY_TEST_PYTHON (a Python with pika and
//! kafka-python); scripts/test.sh provides them.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run ./scripts/test.sh, which sets it"))
}

/// Starts `ferry up` on the bus; publishes with the script; waits for the job to succeed.
fn run_external(bus_base: &str, script: &str, broker_arg: &str) {
    let ns = format!("x{}", &ferry_event::new_id().replace('-', "")[..16]);
    let sep = if bus_base.contains('?') { '&' } else { '?' };
    let bus = format!("{bus_base}{sep}namespace={ns}");
    // Dropped after `up` below: the services stop before their queues go.
    let _namespace = BusNamespace(bus.clone());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let up = Up(Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "up",
            "--bus",
            &bus,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "ferry up did not start; see {}",
            dir.path().join("up.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let job = format!("external-{ns}");
    let out = Command::new(env("FERRY_TEST_PYTHON"))
        .arg(root().join("tests/clients").join(script))
        .args([broker_arg, &ns, &job])
        .arg(example("hello.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    let state = loop {
        let mut c = ferry();
        c.args(["status", &job, "--api", &api, "--data-dir"])
            .arg(dir.path().join("data"));
        let o = c.output().unwrap();
        let state = String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if matches!(state.as_str(), "succeeded" | "failed" | "cancelled" | "rejected") {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish (last state {state:?}); see {}",
            dir.path().display()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(state, "succeeded");
    let mut c = ferry();
    c.args(["logs", &job, "--api", &api, "--data-dir"])
        .arg(dir.path().join("data"));
    let logs = output(c);
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
    drop(up);
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
