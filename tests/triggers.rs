//! Deployed flows started by events from a client that is not ferry: `ferry up` on RabbitMQ,
//! `ferry deploy examples/triggered.yaml`, then a short Python script (pika) publishes plain
//! CloudEvents onto intake, each twice with the same id. Each matching event runs one job, with
//! inputs from the event; one whose inputs fail is a rejected job naming the flow; after
//! `ferry undeploy` nothing starts.
//!
//! Needs FERRY_TEST_AMQP and FERRY_TEST_PYTHON (a Python with pika); scripts/test.sh provides
//! them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run ./scripts/test.sh, which sets it"))
}

/// `ferry ARGS… --api API --data-dir DATA`.
fn client(api: &str, data: &Path, args: &[&str]) -> Ran {
    let mut c = ferry();
    c.args(args).args(["--api", api, "--data-dir"]).arg(data);
    output(c)
}

/// Publishes `count` events (ids `prefix-0`…) of the upload type, each `copies` times, on the
/// broker at `url` in bus namespace `ns`.
fn publish(
    (url, ns): (&str, &str),
    source: &str,
    subject: &str,
    data: &str,
    prefix: &str,
    count: usize,
    copies: usize,
) {
    let out = Command::new(env("FERRY_TEST_PYTHON"))
        .arg(root().join("tests/clients/publish_events_amqp.py"))
        .args([
            url,
            ns,
            "com.acme.file.uploaded",
            source,
            subject,
            data,
            prefix,
            &count.to_string(),
            &copies.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publish_events_amqp.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The job a trigger of the example starts for an event.
fn job_for(source: &str, event_id: &str) -> String {
    ferry_planner::triggers::job_id(Some("examples"), "on-upload", 0, source, event_id)
}

/// Waits until the job is final; its state.
fn final_state(api: &str, data: &Path, job: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut c = ferry();
        c.args(["status", job, "--api", api, "--data-dir"]).arg(data);
        let o = c.output().unwrap();
        let state = String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if matches!(state.as_str(), "succeeded" | "failed" | "cancelled" | "rejected") {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} did not finish (last state {state:?})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The jobs the api lists, as JSON.
fn jobs(api: &str, data: &Path) -> Vec<Value> {
    let ran = client(api, data, &["status", "--json"]);
    assert_eq!(ran.code, 0);
    let list: Value = serde_json::from_str(&ran.stdout).unwrap();
    list["jobs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_plain_cloudevent_from_a_python_client_starts_one_job_of_a_deployed_flow() {
    let url = env("FERRY_TEST_AMQP");
    let ns = format!("t{}", &ferry_event::new_id().replace('-', "")[..16]);
    let sep = if url.contains('?') { '&' } else { '?' };
    let bus = format!("{url}{sep}namespace={ns}");
    let _namespace = BusNamespace(bus.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
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
        .arg(&data)
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
            dir.path().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let deployed = client(
        &api,
        &data,
        &["deploy", example("triggered.yaml").to_str().unwrap()],
    );
    assert_eq!(deployed.code, 0, "{}", deployed.stderr);
    assert_eq!(deployed.stdout.trim(), "examples/on-upload version 1");
    let flows = client(&api, &data, &["flows"]);
    assert!(flows.stdout.contains("examples/on-upload  1"), "{}", flows.stdout);
    assert!(
        flows.stdout.contains("com.acme.file.uploaded"),
        "{}",
        flows.stdout
    );

    // Two uploads, each published twice; one under another bucket (no match); one without
    // `rows` (rejected).
    publish(
        (&url, &ns),
        "s3://landing/2026",
        "day.csv",
        r#"{"rows": 4{i}}"#,
        "up",
        2,
        2,
    );
    publish(
        (&url, &ns),
        "s3://other/2026",
        "day.csv",
        r#"{"rows": 1}"#,
        "elsewhere",
        1,
        1,
    );
    publish(
        (&url, &ns),
        "s3://landing/2026",
        "bad.csv",
        r#"{"lines": 1}"#,
        "bad",
        1,
        1,
    );

    for (i, event_id) in ["up-0", "up-1"].into_iter().enumerate() {
        let job = job_for("s3://landing/2026", event_id);
        assert_eq!(final_state(&api, &data, &job), "succeeded");
        let logs = client(&api, &data, &["logs", &job]);
        assert!(
            logs.stdout
                .contains(&format!("report | day.csv in landing: 4{i} rows")),
            "{}",
            logs.stdout
        );
    }
    let bad = job_for("s3://landing/2026", "bad-0");
    assert_eq!(final_state(&api, &data, &bad), "rejected");
    let detail = client(&api, &data, &["status", &bad, "--json"]);
    assert!(
        detail.stdout.contains("flow `examples/on-upload`") && detail.stdout.contains("data.rows"),
        "{}",
        detail.stdout
    );
    // Each event one job, whatever the copies: two succeeded and one rejected, nothing else.
    let all = jobs(&api, &data);
    let of_flow: Vec<&Value> = all.iter().filter(|j| j["flowId"] == "on-upload").collect();
    assert_eq!(of_flow.len(), 2, "{all:#?}");
    assert_eq!(all.len(), 3, "{all:#?}");

    let undeployed = client(&api, &data, &["undeploy", "examples/on-upload"]);
    assert_eq!(undeployed.code, 0, "{}", undeployed.stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client(&api, &data, &["flows"]).stdout.contains("on-upload") {
        assert!(
            Instant::now() < deadline,
            "the flow is still listed after undeploy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    publish(
        (&url, &ns),
        "s3://landing/2026",
        "late.csv",
        r#"{"rows": 9}"#,
        "late",
        1,
        1,
    );
    // Something the planner handles after the late event (intake is in order): a submission.
    let hello = client(
        &api,
        &data,
        &["submit", example("hello.yaml").to_str().unwrap(), "--wait"],
    );
    assert_eq!(hello.code, 0, "{}", hello.stderr);
    let late = job_for("s3://landing/2026", "late-0");
    assert!(
        !jobs(&api, &data).iter().any(|j| j["jobId"] == late.as_str()),
        "an undeployed flow started a job"
    );
    drop(up);
}
