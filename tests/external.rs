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

/// `ferry up` on a namespace of its own on a broker, with its api on loopback.
struct Deployment {
    // Dropped in this order: the services stop before their queues go.
    _up: Up,
    _namespace: BusNamespace,
    ns: String,
    api: String,
    dir: tempfile::TempDir,
}

impl Deployment {
    /// Runs a client of this deployment, which finds the admin token in the data directory.
    fn ferry(&self, args: &[&str]) -> Ran {
        let mut c = ferry();
        c.args(args).args(["--api", &self.api, "--data-dir"]);
        c.arg(self.dir.path().join("data"));
        output(c)
    }
}

/// Starts `ferry up` on the bus; publishes with the script; waits for the job to succeed.
fn run_external(bus_base: &str, script: &str, broker_arg: &str) {
    let d = deploy(bus_base);
    let (ns, api, dir) = (&d.ns, &d.api, &d.dir);
    let job = format!("external-{ns}");
    let out = Command::new(env("FERRY_TEST_PYTHON"))
        .arg(root().join("tests/clients").join(script))
        .args([broker_arg, ns, &job])
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
        c.args(["status", &job, "--api", api, "--data-dir"])
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
    c.args(["logs", &job, "--api", api, "--data-dir"])
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
    drop(d);
}

/// Starts `ferry up` on a fresh namespace of `bus_base` and waits for its api.
fn deploy(bus_base: &str) -> Deployment {
    let ns = format!("x{}", &ferry_event::new_id().replace('-', "")[..16]);
    let sep = if bus_base.contains('?') { '&' } else { '?' };
    let bus = format!("{bus_base}{sep}namespace={ns}");
    let namespace = BusNamespace(bus.clone());
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
    Deployment {
        _up: up,
        _namespace: namespace,
        ns,
        api,
        dir,
    }
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
    let d = deploy(&env("FERRY_TEST_AMQP"));
    let flow = example("subtasks.yaml");
    let submitted = d.ferry(&["submit", flow.to_str().unwrap(), "--input", "parts=3", "--wait"]);
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let job = submitted.stdout.lines().next().unwrap().trim().to_string();
    let status = d.ferry(&["status", &job]);
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
    let logs = d.ferry(&["logs", &job]);
    assert!(
        logs.stdout.contains("split.sum | sum of squares: 14"),
        "{}",
        logs.stdout
    );
    drop(d);
}
