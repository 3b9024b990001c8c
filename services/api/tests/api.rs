//! End-to-end tests of the api over HTTP (reqwest against 127.0.0.1:0) on a memory bus.

mod common;

use std::sync::atomic::Ordering;

use common::{Api, ndjson_lines, new_job, task_states};
use ferry_event::cloudevents::Data;
use ferry_event::envelope::{self, EXT_JOB, EXT_PARTITION_KEY};
use ferry_event::payload::{JobStatus, Outcome, TaskStatus};
use ferry_event::{AttributesReader, kind};
use futures::StreamExt;
use serde_json::{Value, json};

const FLOW: &str = "id: greet
inputs:
  name: { type: string, required: true }
tasks:
  - id: hello
    runner: local
    command: [echo, 'hello {{ inputs.name }}']
";

/// A flow with two problems: an unknown dependency and a bad duration.
const BAD_FLOW: &str = "id: broken
tasks:
  - id: a
    runner: local
    command: [echo]
    dependsOn: [nowhere]
    timeout: 10 minutes
";

fn problem_fields(body: &Value) -> Vec<String> {
    body["problems"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn post_binary(api: &Api, headers: &[(&str, &str)], content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let mut req = api
        .http
        .post(api.url("/events"))
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("POST answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_structured(api: &Api, event: &Value) -> reqwest::Response {
    api.http
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .expect("POST answers")
}

fn submission(id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/ci", "type": kind::JOB_SUBMITTED, "data": data
    })
}

// ----------------------------------------------------------------------------------------------
// Intake
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn binary_submission_is_published_with_its_job_id_after_confirmation() {
    let mut api = Api::start().await;
    let data = json!({"flow": FLOW, "inputs": {"name": "ada"}, "note": "kept as sent"});
    let (status, body) = post_binary(
        &api,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "sub-1"),
            ("ce-source", "/ci/pipeline"),
            ("ce-type", kind::JOB_SUBMITTED),
            ("ce-acmerun", "77"),
        ],
        "application/json",
        data.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["jobId"], "sub-1",
        "without data.jobId the event id is the job id"
    );

    let e = api.published().await;
    assert_eq!(
        (e.id(), e.ty(), e.source().as_str()),
        ("sub-1", kind::JOB_SUBMITTED, "/ci/pipeline")
    );
    let sent: Value = ferry_event::decode(&e).unwrap();
    assert_eq!(sent["jobId"], "sub-1");
    assert_eq!(sent["inputs"], json!({"name": "ada"}));
    assert_eq!(sent["flow"], FLOW);
    assert_eq!(sent["note"], "kept as sent");
    assert_eq!(envelope::extension(&e, "acmerun").as_deref(), Some("77"));
    assert_eq!(
        envelope::extension(&e, EXT_PARTITION_KEY).as_deref(),
        Some("sub-1")
    );
    assert_eq!(envelope::extension(&e, EXT_JOB).as_deref(), Some("sub-1"));

    // The job is known at once, before the planner has planned it.
    let (status, job) = api.get("/jobs/sub-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (job["state"].as_str(), job["flowId"].as_str()),
        (Some("submitted"), Some("greet"))
    );
    api.stop().await;
}

#[tokio::test]
async fn structured_submission_keeps_the_job_id_it_names() {
    let mut api = Api::start().await;
    let flow = json!({"id": "hello", "tasks": [{"id": "say", "runner": "local", "command": ["echo", "hi"]}]});
    let r = post_structured(
        &api,
        &submission("ev-9", json!({"jobId": "nightly-2026-01-31", "flow": flow})),
    )
    .await;
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/jobs/nightly-2026-01-31")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["jobId"], "nightly-2026-01-31");
    let e = api.published().await;
    assert_eq!(e.id(), "ev-9");
    let sent: Value = ferry_event::decode(&e).unwrap();
    assert_eq!(sent["jobId"], "nightly-2026-01-31");
    assert_eq!(sent["flow"], flow);
    api.stop().await;
}

#[tokio::test]
async fn external_events_are_published_to_intake_intact() {
    let mut api = Api::start().await;
    let (status, body) = post_binary(
        &api,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "up-1"),
            ("ce-source", "s3://landing/day=1"),
            ("ce-type", "com.acme.file.uploaded"),
            ("ce-subject", "day=1.csv"),
            ("ce-time", "2026-01-31T12:00:00Z"),
        ],
        "text/csv",
        b"a,b\n1,2\n".to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"id": "up-1"}));
    let e = api.published().await;
    assert_eq!(e.ty(), "com.acme.file.uploaded");
    assert_eq!(ferry_event::route(&e), ferry_event::Topic::Intake);
    assert_eq!(e.subject(), Some("day=1.csv"));
    assert_eq!(e.datacontenttype(), Some("text/csv"));
    assert_eq!(e.data(), Some(&Data::Binary(b"a,b\n1,2\n".to_vec())));
    assert_eq!(
        e.time().map(|t| t.to_rfc3339()),
        Some("2026-01-31T12:00:00+00:00".into())
    );
    api.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_what_is_wrong_and_nothing_is_published() {
    let mut api = Api::start().await;

    // Binary mode: a missing type, a bad time, an old spec version.
    let (status, body) = post_binary(
        &api,
        &[
            ("ce-specversion", "0.3"),
            ("ce-id", "x"),
            ("ce-source", "/s"),
            ("ce-time", "noon"),
        ],
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let fields = problem_fields(&body);
    for f in ["ce-specversion", "ce-time", "ce-type"] {
        assert!(fields.contains(&f.to_string()), "{f} missing from {body}");
    }
    assert!(
        body["error"].as_str().unwrap().contains("invalid CloudEvent"),
        "{body}"
    );

    // Not a CloudEvent at all.
    let (status, body) = post_binary(&api, &[], "application/json", b"{}".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        body["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ce-specversion"),
        "{body}"
    );

    // Structured mode: not JSON; an attribute of the wrong kind.
    let r = api
        .http
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = post_structured(
        &api,
        &json!({"specversion": "1.0", "id": 1, "source": "/s", "type": "t"}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(problem_fields(&r.json().await.unwrap()), ["id"]);

    // A submission without data, one with a job id that cannot be a directory name, and one
    // whose data is not a submission.
    let r = post_structured(
        &api,
        &json!({"specversion": "1.0", "id": "s1", "source": "/s", "type": kind::JOB_SUBMITTED}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no data"),
        "{body}"
    );
    let r = post_structured(&api, &submission("s2", json!({"jobId": "../etc", "flow": FLOW}))).await;
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(problem_fields(&r.json().await.unwrap()), ["data.jobId"]);
    let r = post_structured(&api, &submission("s3", json!({"inputs": {}}))).await;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["problems"][0]["message"].as_str().unwrap().contains("flow"),
        "{body}"
    );

    // Events only ferry's own services emit.
    let r = post_structured(
        &api,
        &json!({"specversion": "1.0", "id": "f1", "source": "/s", "type": kind::TASK_FINISHED, "data": {}}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(problem_fields(&r.json().await.unwrap()), ["type"]);

    // A format other than JSON.
    let r = api
        .http
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents+avro")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);

    api.published_nothing().await;
    api.stop().await;
}

#[tokio::test]
async fn an_invalid_flow_is_refused_with_every_problem_and_never_published() {
    let mut api = Api::start().await;
    let r = post_structured(&api, &submission("bad-1", json!({"flow": BAD_FLOW}))).await;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    let problems = body["problems"].as_array().unwrap();
    assert!(problems.len() >= 2, "every problem is listed: {body}");
    let text = body.to_string();
    assert!(text.contains("nowhere") && text.contains("timeout"), "{body}");
    assert!(
        problems
            .iter()
            .all(|p| p["location"].as_str().is_some_and(|l| l.starts_with("flow:"))),
        "problems are located in the flow: {body}"
    );

    // A valid flow with a required input missing.
    let r = post_structured(&api, &submission("bad-2", json!({"flow": FLOW}))).await;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body.to_string().contains("name"),
        "the missing input is named: {body}"
    );

    api.published_nothing().await;
    let (status, _) = api.get("/jobs/bad-1").await;
    assert_eq!(status, 404, "a refused submission is not a job");
    api.stop().await;
}

#[tokio::test]
async fn a_batch_is_published_whole_or_refused_naming_the_event() {
    let mut api = Api::start().await;
    let ok = json!({"specversion": "1.0", "id": "b1", "source": "/s", "type": "com.acme.a"});
    let bad = submission("b2", json!({"flow": BAD_FLOW}));
    let r = api
        .http
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([ok, bad]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        problem_fields(&body).iter().all(|f| f.starts_with("[1].")),
        "{body}"
    );
    api.published_nothing().await;

    let good = submission("b3", json!({"flow": FLOW, "inputs": {"name": "x"}}));
    let r = api
        .http
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([ok, good]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["accepted"],
        json!([{"id": "b1"}, {"id": "b3", "jobId": "b3"}])
    );
    assert_eq!(api.published().await.id(), "b1");
    assert_eq!(api.published().await.id(), "b3");
    api.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let mut api = Api::start_with(|c| c.body_limit = 1024).await;
    let big = json!({"flow": FLOW, "inputs": {"name": "x".repeat(4096)}});
    let r = post_structured(&api, &submission("big", big)).await;
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("1024"), "{body}");
    assert_eq!(body["limitBytes"], 1024, "clients can say what the limit is");
    api.published_nothing().await;
    api.stop().await;
}

#[tokio::test]
async fn an_unavailable_bus_is_503_with_retry_after_and_the_job_is_not_recorded() {
    let mut api = Api::start().await;
    api.flaky.down.store(true, Ordering::SeqCst);
    let r = post_structured(
        &api,
        &submission("down-1", json!({"flow": FLOW, "inputs": {"name": "x"}})),
    )
    .await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("retry later"), "{body}");
    assert_eq!(api.get("/jobs/down-1").await.0, 404);

    api.flaky.down.store(false, Ordering::SeqCst);
    let r = post_structured(
        &api,
        &submission("down-1", json!({"flow": FLOW, "inputs": {"name": "x"}})),
    )
    .await;
    assert_eq!(
        r.status().as_u16(),
        202,
        "the same request succeeds once the bus is back"
    );
    assert_eq!(api.published().await.id(), "down-1");
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Cancel and retry
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_and_retry_are_404_for_unknown_jobs_and_published_for_known_ones() {
    let mut api = Api::start().await;
    for ty in [kind::JOB_CANCEL, kind::JOB_RETRY] {
        let r = post_structured(
            &api,
            &json!({"specversion": "1.0", "id": format!("c-{ty}"), "source": "/cli", "type": ty,
                    "data": {"jobId": "no-such-job"}}),
        )
        .await;
        assert_eq!(r.status().as_u16(), 404, "{ty}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("no-such-job"), "{body}");
    }
    api.published_nothing().await;

    let job = new_job();
    api.publish(&[api.planned(&job, &["a"])]).await;
    // The spy sees job.planned on control too.
    assert_eq!(api.published().await.ty(), kind::JOB_PLANNED);
    api.job_when(&job, "the job is planned", |j| j["state"] == "planned")
        .await;
    for ty in [kind::JOB_CANCEL, kind::JOB_RETRY] {
        let r = post_structured(
            &api,
            &json!({"specversion": "1.0", "id": format!("{ty}-{job}"), "source": "/cli", "type": ty,
                    "data": {"jobId": job, "reason": "operator"}}),
        )
        .await;
        assert_eq!(r.status().as_u16(), 202, "{ty}");
        assert_eq!(r.json::<Value>().await.unwrap()["jobId"], job.as_str());
        let e = api.published().await;
        assert_eq!(e.ty(), ty);
        assert_eq!(
            envelope::extension(&e, EXT_PARTITION_KEY).as_deref(),
            Some(job.as_str())
        );
        let data: Value = ferry_event::decode(&e).unwrap();
        assert_eq!(data["jobId"], job.as_str());
    }
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Read model
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_read_model_follows_a_job_through_its_lifecycle() {
    let api = Api::start().await;
    common::follow_a_job_through_its_lifecycle(&api).await;
    api.stop().await;
}

#[tokio::test]
async fn duplicates_and_late_events_never_move_a_job_or_task_backwards() {
    let api = Api::start().await;
    let job = new_job();
    let planned = api.planned(&job, &["a", "b"]);
    let started_a = api.started(&job, "a", 1);
    let succeeded_a = api.task_state(kind::TASK_SUCCEEDED, &job, "a", TaskStatus::Succeeded, 1);
    let succeeded = api.job_state(kind::JOB_SUCCEEDED, &job, JobStatus::Succeeded, None);
    // The lifecycle topic ran ahead of the control topic: a's success, b's and the job's end
    // arrive before job.planned and a's start.
    api.publish(&[
        succeeded_a.clone(),
        api.task_state(kind::TASK_SUCCEEDED, &job, "b", TaskStatus::Succeeded, 1),
        succeeded.clone(),
    ])
    .await;
    api.publish(&[planned.clone(), started_a.clone(), api.started(&job, "b", 1)])
        .await;
    // Every event again, as a broker redelivers after a lost ack, and a late job.started.
    api.publish(&[
        planned,
        started_a,
        succeeded_a,
        succeeded,
        api.job_state(kind::JOB_STARTED, &job, JobStatus::Running, None),
    ])
    .await;
    // A marker job published last: once it shows, everything before it was applied.
    let marker = new_job();
    api.publish(&[api.planned(&marker, &["m"])]).await;
    api.job_when(&marker, "the marker job", |_| true).await;

    let (_, j) = api.get(&format!("/jobs/{job}")).await;
    assert_eq!(j["state"], "succeeded");
    assert_eq!(
        task_states(&j),
        [("a".into(), "succeeded".into()), ("b".into(), "succeeded".into())]
    );
    assert_eq!(
        j["tasks"][0]["outputs"],
        json!({"rows": 42}),
        "the late start kept the outputs"
    );
    assert_eq!(j["counts"]["succeeded"], 2);
    let changes = ndjson_lines(
        api.http
            .get(api.url(&format!("/jobs/{job}/events")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let types: Vec<_> = changes
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [kind::TASK_SUCCEEDED, kind::TASK_SUCCEEDED, kind::JOB_SUCCEEDED],
        "duplicates and stale events add no change"
    );
    api.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_newest_first_and_unknown_ids_are_404() {
    let api = Api::start().await;
    let (older, newer) = (new_job(), new_job());
    api.publish(&[api.planned(&older, &["a"])]).await;
    api.job_when(&older, "older job", |_| true).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await; // distinct creation times
    api.publish(&[api.planned(&newer, &["a"])]).await;
    api.job_when(&newer, "newer job", |_| true).await;

    let (status, body) = api.get("/jobs?limit=1").await;
    assert_eq!(status, 200);
    let ids: Vec<_> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].clone())
        .collect();
    assert_eq!(ids, [json!(newer)]);
    let (_, body) = api.get("/jobs").await;
    let ids: Vec<_> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].clone())
        .collect();
    assert_eq!(ids, [json!(newer), json!(older)]);
    assert_eq!(body["jobs"][0]["counts"]["pending"], 1);

    assert_eq!(api.get("/jobs?limit=0").await.0, 400);
    assert_eq!(api.get("/jobs?limit=lots").await.0, 400);
    for path in ["/jobs/nope", "/jobs/nope/events", "/jobs/nope/logs"] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].as_str().unwrap().contains("nope"), "{path}: {body}");
    }
    api.stop().await;
}

#[tokio::test]
async fn following_a_job_streams_its_changes_and_ends_when_it_finishes() {
    let api = Api::start().await;
    let job = new_job();
    api.publish(&[api.planned(&job, &["a"])]).await;
    api.job_when(&job, "planned", |_| true).await;
    let r = api
        .http
        .get(api.url(&format!("/jobs/{job}/events?follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut body = r.bytes_stream();
    let first = tokio::time::timeout(common::WAIT, body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(first["type"], kind::JOB_PLANNED);
    api.publish(&[
        api.job_state(kind::JOB_STARTED, &job, JobStatus::Running, None),
        api.started(&job, "a", 1),
        api.task_state(kind::TASK_SUCCEEDED, &job, "a", TaskStatus::Succeeded, 1),
        api.job_state(kind::JOB_SUCCEEDED, &job, JobStatus::Succeeded, None),
    ])
    .await;
    let mut rest = Vec::new();
    tokio::time::timeout(common::WAIT, async {
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
    })
    .await
    .expect("the stream ends once the job has finished");
    let states: Vec<String> = String::from_utf8(rest)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(states, ["running", "running", "succeeded", "succeeded"]);
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Logs
// ----------------------------------------------------------------------------------------------

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn logs_are_queried_by_job_task_cursor_and_limit() {
    let api = Api::start().await;
    let job = new_job();
    api.publish(&[api.planned(&job, &["a", "b"])]).await;
    api.job_when(&job, "planned", |_| true).await;
    api.log(&job, "a", 1, 0, &["a0", "a1"]).await;
    api.log(&job, "b", 1, 0, &["b0"]).await;
    api.log(&job, "a", 1, 2, &["a2"]).await;

    let get = |q: String| {
        let url = api.url(&format!("/jobs/{job}/logs{q}"));
        let http = api.http.clone();
        async move { ndjson_lines(http.get(url).send().await.unwrap()).await }
    };
    let all = get(String::new()).await;
    assert_eq!(texts(&all), ["a0", "a1", "b0", "a2"]);
    let l = &all[0];
    assert_eq!(l["taskId"], "a");
    assert_eq!(l["attemptId"], common::attempt_id(&job, "a", 1).as_str());
    assert_eq!(
        (l["seq"].as_u64(), l["stream"].as_str(), l["timeMs"].as_i64()),
        (Some(0), Some("stdout"), Some(1))
    );
    assert_eq!(texts(&get("?task=a".into()).await), ["a0", "a1", "a2"]);
    let cursor = all[1]["cursor"].as_str().unwrap();
    assert_eq!(texts(&get(format!("?after={cursor}")).await), ["b0", "a2"]);
    assert_eq!(texts(&get(format!("?after={cursor}&limit=1")).await), ["b0"]);

    let (status, body) = api.get(&format!("/jobs/{job}/logs?after=garbage")).await;
    assert_eq!(status, 400);
    assert_eq!(problem_fields(&body), ["after"]);
    api.stop().await;
}

#[tokio::test]
async fn logs_deleted_by_retention_are_answered_as_expired_not_as_empty() {
    let api = Api::start().await;
    let (old, quiet) = (new_job(), new_job());
    api.publish(&[api.planned(&old, &["a"]), api.planned(&quiet, &["a"])])
        .await;
    api.job_when(&old, "planned", |_| true).await;
    api.job_when(&quiet, "planned", |_| true).await;
    api.log(&old, "a", 1, 0, &["a0", "a1"]).await;
    assert_eq!(api.logs.expire(ferry_event::now_ms(), 100).await.unwrap(), 2);

    let (status, body) = api.get(&format!("/jobs/{old}/logs")).await;
    assert_eq!(status, 410, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("expired") && error.contains("--log-retention"),
        "{error}"
    );
    // A job that wrote nothing is still an empty log, not an expired one.
    let (status, body) = api.get(&format!("/jobs/{quiet}/logs")).await;
    assert_eq!(status, 200, "{body}");
    api.stop().await;
}

#[tokio::test]
async fn following_logs_streams_new_lines_and_ends_once_the_job_and_its_lines_are_done() {
    let api = Api::start().await;
    let job = new_job();
    api.publish(&[api.planned(&job, &["a", "b"])]).await;
    api.job_when(&job, "planned", |_| true).await;
    api.log(&job, "a", 1, 0, &["a0"]).await;

    let r = api
        .http
        .get(api.url(&format!("/jobs/{job}/logs?follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut body = r.bytes_stream();
    let mut got = String::new();
    let mut read_until = async |want: usize, got: &mut String| {
        tokio::time::timeout(common::WAIT, async {
            while got.lines().count() < want {
                let chunk = body.next().await.expect("stream still open").unwrap();
                got.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("lines arrive while followed");
    };
    read_until(1, &mut got).await;
    api.log(&job, "b", 1, 0, &["b0", "b1"]).await;
    read_until(3, &mut got).await;

    // The job ends, but b's last line is not stored yet: the stream waits for it.
    api.publish(&[
        api.finished(&job, "a", 1, Outcome::Succeeded, 1),
        api.task_state(kind::TASK_SUCCEEDED, &job, "a", TaskStatus::Succeeded, 1),
        api.finished(&job, "b", 1, Outcome::Succeeded, 3),
        api.task_state(kind::TASK_SUCCEEDED, &job, "b", TaskStatus::Succeeded, 1),
        api.job_state(kind::JOB_SUCCEEDED, &job, JobStatus::Succeeded, None),
    ])
    .await;
    api.job_when(&job, "succeeded", |j| j["state"] == "succeeded")
        .await;
    let early = tokio::time::timeout(common::QUIET, body.next()).await;
    assert!(
        early.is_err(),
        "the stream must not end before b's last line: {early:?}"
    );

    api.log(&job, "b", 1, 2, &["b2"]).await;
    let mut rest = Vec::new();
    tokio::time::timeout(common::WAIT, async {
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
    })
    .await
    .expect("the stream ends once every line is sent");
    got.push_str(std::str::from_utf8(&rest).unwrap());
    let lines: Vec<Value> = got.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        texts(&lines),
        ["a0", "b0", "b1", "b2"],
        "every line once, in order"
    );
    api.stop().await;
}

#[tokio::test]
async fn following_the_logs_of_a_finished_job_returns_them_and_ends() {
    let api = Api::start().await;
    let job = new_job();
    api.publish(&[
        api.planned(&job, &["a"]),
        api.finished(&job, "a", 1, Outcome::Succeeded, 2),
        api.task_state(kind::TASK_SUCCEEDED, &job, "a", TaskStatus::Succeeded, 1),
        api.job_state(kind::JOB_SUCCEEDED, &job, JobStatus::Succeeded, None),
    ])
    .await;
    api.job_when(&job, "succeeded", |j| j["state"] == "succeeded")
        .await;
    api.log(&job, "a", 1, 0, &["x", "y"]).await;
    let r = api
        .http
        .get(api.url(&format!("/jobs/{job}/logs?task=a&follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(texts(&ndjson_lines(r).await), ["x", "y"]);
    api.stop().await;
}

#[tokio::test]
async fn the_service_stops_while_a_follower_is_connected() {
    let api = Api::start().await;
    let job = new_job();
    api.publish(&[api.planned(&job, &["a"])]).await;
    api.job_when(&job, "planned", |_| true).await;
    let r = api
        .http
        .get(api.url(&format!("/jobs/{job}/logs?follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The job never ends; stopping the service must still end the stream and return.
    api.stop().await;
    let text = tokio::time::timeout(common::WAIT, r.text()).await;
    assert!(text.is_ok(), "the follower's stream ended with the service");
}

#[tokio::test]
async fn a_waiting_task_says_what_it_waits_for_and_launchers_are_listed() {
    use ferry_event::payload::{LauncherPresence, TaskAccepted};
    let api = Api::start().await;
    let job = new_job();
    api.publish(&[api.planned(&job, &["a"])]).await;
    // No launcher of its backend has announced itself: that is what it waits for.
    let d = api
        .job_when(&job, "the task is pending", |j| {
            j["tasks"][0]["state"] == "pending"
        })
        .await;
    assert_eq!(d["tasks"][0]["backend"], "local", "{d}");
    let why = d["tasks"][0]["waiting"].as_str().unwrap_or_default();
    assert!(why.contains("no launcher for backend `local` is running"), "{d}");

    // A launcher announces itself: the task only waits its turn.
    let presence = |leaving| {
        let p = LauncherPresence {
            backend: "local".into(),
            instance: "ferry/launcher-local/h/1".into(),
            capacity: 64,
            running: 1,
            at_ms: ferry_event::now_ms(),
            leaving,
            ..Default::default()
        };
        ferry_event::EventBuilder::new("ferry/launcher-local/h/1").instance(kind::LAUNCHER_PRESENCE, &p)
    };
    api.publish(&[presence(false)]).await;
    api.job_when(&job, "the task no longer waits for a launcher", |j| {
        j["tasks"][0].get("waiting").is_none()
    })
    .await;
    let (status, l) = api.get("/launchers").await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(
        (
            &l["launchers"][0]["backend"],
            &l["launchers"][0]["live"],
            &l["launchers"][0]["running"]
        ),
        (&json!("local"), &json!(true), &json!(1)),
        "{l}"
    );

    // Accepted: its compute waits on its platform, named.
    let accepted = TaskAccepted {
        job_id: job.clone(),
        task_id: "a".into(),
        attempt_id: common::attempt_id(&job, "a", 1),
        attempt: 1,
        accepted_at_ms: ferry_event::now_ms(),
        ready_at_ms: ferry_event::now_ms(),
        launcher: "ferry/launcher-local/h/1".into(),
        compute: Some("batch/ferry-a-1".into()),
    };
    let e = api.events.task(
        kind::TASK_ACCEPTED,
        &job,
        "a",
        Some(&accepted.attempt_id),
        &accepted,
    );
    api.publish(&[e]).await;
    let d = api
        .job_when(&job, "the task is accepted", |j| {
            j["tasks"][0]["state"] == "accepted"
        })
        .await;
    assert_eq!(d["tasks"][0]["compute"], "batch/ferry-a-1", "{d}");
    assert!(
        d["tasks"][0]["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("batch/ferry-a-1")),
        "{d}"
    );
    assert_eq!(d["counts"]["accepted"], 1, "{d}");
    // Started, it waits for nothing; an acceptance arriving late changes nothing.
    api.publish(&[api.started(&job, "a", 1)]).await;
    api.job_when(&job, "the task runs", |j| j["tasks"][0]["state"] == "running")
        .await;
    let e = api.events.task(
        kind::TASK_ACCEPTED,
        &job,
        "a",
        Some(&accepted.attempt_id),
        &accepted,
    );
    api.publish(&[e]).await;
    api.publish(&[presence(true)]).await;
    let (_, l) = common::eventually("the launcher is shown leaving", || async {
        let (status, l) = api.get("/launchers").await;
        (l["launchers"][0]["leaving"] == json!(true)).then_some((status, l))
    })
    .await;
    assert_eq!(l["launchers"][0]["live"], json!(false), "{l}");
    let (_, d) = api.get(&format!("/jobs/{job}")).await;
    assert_eq!(d["tasks"][0]["state"], "running", "{d}");
    api.stop().await;
}

#[tokio::test]
async fn an_agent_task_says_which_agent_it_waits_for_and_agents_are_listed() {
    use ferry_event::payload::{AgentRunner, JobPlanned, LauncherPresence, Runner};
    let api = Api::start().await;
    let job = new_job();
    let planned = api.planned(&job, &["train"]);
    let mut p: JobPlanned = ferry_event::decode(&planned).unwrap();
    p.tasks[0].runner = Runner::Agent(AgentRunner {
        cluster: "gpu".into(),
        task: "train@2.1".into(),
    });
    api.publish(&[api.events.job(kind::JOB_PLANNED, &job, &p)]).await;
    let d = api
        .job_when(&job, "the task is pending", |j| {
            j["tasks"][0]["state"] == "pending"
        })
        .await;
    assert_eq!(d["tasks"][0]["backend"], "agent.gpu.train.2.1", "{d}");
    let why = d["tasks"][0]["waiting"].as_str().unwrap_or_default();
    assert!(
        why.contains("waiting for an agent in cluster gpu serving train@2.1"),
        "{d}"
    );

    // An agent of another cluster, and one whose version is too old, change nothing.
    let announce = |instance: &str, cluster: &str, task: &str| {
        let p = LauncherPresence {
            backend: "agent".into(),
            instance: instance.into(),
            capacity: 4,
            running: 0,
            at_ms: ferry_event::now_ms(),
            leaving: false,
            serves: Vec::new(),
            cluster: Some(cluster.into()),
            tasks: vec![task.into()],
        };
        ferry_event::EventBuilder::new(instance).instance(kind::LAUNCHER_PRESENCE, &p)
    };
    api.publish(&[
        announce("ferry/agent-cpu/h/1", "cpu", "train@2.3"),
        announce("ferry/agent-gpu/h/1", "gpu", "train@2.0"),
    ])
    .await;
    let (status, a) = api.get("/agents").await;
    assert_eq!(status, 200, "{a}");
    let listed = |a: &serde_json::Value| a["agents"].as_array().map_or(0, Vec::len);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let mut a = a;
    while listed(&a) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "agents not listed: {a}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        a = api.get("/agents").await.1;
    }
    let d = api.job_when(&job, "the task is listed", |_| true).await;
    assert!(d["tasks"][0]["waiting"].is_string(), "{d}");
    let gpu = a["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["cluster"] == "gpu")
        .cloned()
        .unwrap();
    assert_eq!(
        (&gpu["tasks"], &gpu["capacity"], &gpu["live"]),
        (&json!(["train@2.0"]), &json!(4), &json!(true)),
        "{a}"
    );

    // A compatible agent: the task only waits its turn.
    api.publish(&[announce("ferry/agent-gpu/h/2", "gpu", "train@2.4")])
        .await;
    api.job_when(&job, "the task no longer waits for an agent", |j| {
        j["tasks"][0].get("waiting").is_none()
    })
    .await;
    api.stop().await;
}
