//! Deployed flows started by events from a client that is not ferry: `ferry up` on RabbitMQ,
//! `ferry deploy examples/triggered.yaml`, then a short Python script (pika) publishes plain
//! CloudEvents onto intake, each twice with the same id. Each matching event runs one job, with
//! inputs from the event; one whose inputs fail is a rejected job naming the flow; after
//! `ferry undeploy` nothing starts.
//!
//! The same on a Kafka-protocol broker (kafka-python) and through the api's `POST /events`.
//!
//! Needs FERRY_TEST_AMQP, FERRY_TEST_KAFKA and FERRY_TEST_PYTHON (a Python with pika and
//! kafka-python); scripts/test.sh provides them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run ./scripts/test.sh, which sets it"))
}

/// How a client that is not ferry sends its events.
enum Via {
    /// Onto intake on RabbitMQ (pika): the broker's URL and the bus namespace.
    Amqp(String, String),
    /// Onto the intake topic on a Kafka-protocol broker (kafka-python): `HOST:PORT` and the
    /// bus namespace.
    Kafka(String, String),
    /// `POST /events` on the api (Python's standard library): its URL and a token.
    Http(String, String),
}

/// Sends `count` events (ids `prefix-0`…) of the upload type, each `copies` times.
fn publish(via: &Via, source: &str, subject: &str, data: &str, prefix: &str, count: usize, copies: usize) {
    let (script, first, second) = match via {
        Via::Amqp(url, ns) => ("publish_events_amqp.py", url, ns),
        Via::Kafka(brokers, ns) => ("publish_events_kafka.py", brokers, ns),
        Via::Http(api, token) => ("post_events_http.py", api, token),
    };
    let out = Command::new(env("FERRY_TEST_PYTHON"))
        .arg(root().join("tests/clients").join(script))
        .args([
            first,
            second,
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
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The job a trigger of the example starts for an event.
fn job_for(source: &str, event_id: &str) -> String {
    ferry_planner::triggers::job_id(Some("examples"), "on-upload", 0, source, event_id)
}

/// The jobs the api lists, as JSON.
fn jobs(d: &Deployment) -> Vec<Value> {
    let ran = d.client(&["status", "--json"]);
    assert_eq!(ran.code, 0);
    let list: Value = serde_json::from_str(&ran.stdout).unwrap();
    list["jobs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_plain_cloudevent_from_a_python_client_starts_one_job_of_a_deployed_flow() {
    let url = env("FERRY_TEST_AMQP");
    let d = Deployment::up(&url);
    let via = Via::Amqp(url.clone(), d.ns.clone());

    let deployed = d.client(&["deploy", example("triggered.yaml").to_str().unwrap()]);
    assert_eq!(deployed.code, 0, "{}", deployed.stderr);
    assert_eq!(deployed.stdout.trim(), "examples/on-upload version 1");
    let flows = d.client(&["flows"]);
    assert!(flows.stdout.contains("examples/on-upload  1"), "{}", flows.stdout);
    assert!(
        flows.stdout.contains("com.acme.file.uploaded"),
        "{}",
        flows.stdout
    );

    // Two uploads, each published twice; one under another bucket (no match); one without
    // `rows` (rejected).
    publish(
        &via,
        "s3://landing/2026",
        "day.csv",
        r#"{"rows": 4{i}}"#,
        "up",
        2,
        2,
    );
    publish(
        &via,
        "s3://other/2026",
        "day.csv",
        r#"{"rows": 1}"#,
        "elsewhere",
        1,
        1,
    );
    publish(
        &via,
        "s3://landing/2026",
        "bad.csv",
        r#"{"lines": 1}"#,
        "bad",
        1,
        1,
    );

    for (i, event_id) in ["up-0", "up-1"].into_iter().enumerate() {
        let job = job_for("s3://landing/2026", event_id);
        assert_eq!(d.final_state(&job), "succeeded");
        let logs = d.client(&["logs", &job]);
        assert!(
            logs.stdout
                .contains(&format!("report | day.csv in landing: 4{i} rows")),
            "{}",
            logs.stdout
        );
    }
    let bad = job_for("s3://landing/2026", "bad-0");
    assert_eq!(d.final_state(&bad), "rejected");
    let detail = d.client(&["status", &bad, "--json"]);
    assert!(
        detail.stdout.contains("flow `examples/on-upload`") && detail.stdout.contains("data.rows"),
        "{}",
        detail.stdout
    );
    // Each event one job, whatever the copies: two succeeded and one rejected, nothing else.
    let all = jobs(&d);
    let of_flow: Vec<&Value> = all.iter().filter(|j| j["flowId"] == "on-upload").collect();
    assert_eq!(of_flow.len(), 2, "{all:#?}");
    assert_eq!(all.len(), 3, "{all:#?}");

    let undeployed = d.client(&["undeploy", "examples/on-upload"]);
    assert_eq!(undeployed.code, 0, "{}", undeployed.stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.client(&["flows"]).stdout.contains("on-upload") {
        assert!(
            Instant::now() < deadline,
            "the flow is still listed after undeploy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    publish(
        &via,
        "s3://landing/2026",
        "late.csv",
        r#"{"rows": 9}"#,
        "late",
        1,
        1,
    );
    // Something the planner handles after the late event (intake is in order): a submission.
    let hello = d.client(&["submit", example("hello.yaml").to_str().unwrap(), "--wait"]);
    assert_eq!(hello.code, 0, "{}", hello.stderr);
    let late = job_for("s3://landing/2026", "late-0");
    assert!(
        !jobs(&d).iter().any(|j| j["jobId"] == late.as_str()),
        "an undeployed flow started a job"
    );
    drop(d);
}

/// Deploys the example, sends two matching events (each twice) and one that matches nothing,
/// and checks that each matching event ran one job with its inputs, and nothing else ran.
fn each_event_runs_one_job(d: &Deployment, via: &Via) {
    let deployed = d.client(&["deploy", example("triggered.yaml").to_str().unwrap()]);
    assert_eq!(deployed.code, 0, "{}", deployed.stderr);
    publish(
        via,
        "s3://landing/2026",
        "day.csv",
        r#"{"rows": 7{i}}"#,
        "up",
        2,
        2,
    );
    publish(
        via,
        "s3://other/2026",
        "day.csv",
        r#"{"rows": 1}"#,
        "elsewhere",
        1,
        1,
    );
    for (i, event_id) in ["up-0", "up-1"].into_iter().enumerate() {
        let job = job_for("s3://landing/2026", event_id);
        assert_eq!(d.final_state(&job), "succeeded");
        let logs = d.client(&["logs", &job]);
        assert!(
            logs.stdout
                .contains(&format!("report | day.csv in landing: 7{i} rows")),
            "{}",
            logs.stdout
        );
    }
    // Something the planner handles after those events (intake is in order on one partition
    // and one queue): a submission; then nothing but the two jobs and it may be listed.
    let hello = d.client(&["submit", example("hello.yaml").to_str().unwrap(), "--wait"]);
    assert_eq!(hello.code, 0, "{}", hello.stderr);
    let all = jobs(d);
    let of_flow = all.iter().filter(|j| j["flowId"] == "on-upload").count();
    assert_eq!((of_flow, all.len()), (2, 3), "{all:#?}");
}

#[test]
fn a_plain_cloudevent_on_kafka_starts_one_job_of_a_deployed_flow() {
    let url = env("FERRY_TEST_KAFKA");
    let brokers = url.strip_prefix("kafka://").unwrap().to_string();
    let d = Deployment::up(&url);
    let via = Via::Kafka(brokers, d.ns.clone());
    each_event_runs_one_job(&d, &via);
}

#[test]
fn a_plain_cloudevent_posted_to_the_api_starts_one_job_of_a_deployed_flow() {
    let d = Deployment::up(&env("FERRY_TEST_AMQP"));
    let token = std::fs::read_to_string(d.data.join("admin.token")).expect("the admin token of ferry up");
    let via = Via::Http(d.api.clone(), token.trim().to_string());
    each_event_runs_one_job(&d, &via);
}
