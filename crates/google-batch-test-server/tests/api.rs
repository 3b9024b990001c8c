//! The test Batch server as a REST client sees it: creates, conflicts, idempotent retries,
//! lists with filters and pages, errors in Google's shape; each job's container run for real on
//! the Docker engine with its exit code, logs (through `entries:list`), cancel, delete,
//! timeout and OOM kill; and GCS volumes copied in from and back to fake-gcs-server.

use std::time::Duration;

use ferry_google_batch_test_server::{Options, TestServer};
use serde_json::{Value, json};

const PROJECT: &str = "ferry-test";
const LOCATION: &str = "test-region1";

fn docker_given() -> bool {
    if std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty()) {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "DOCKER_HOST is not set in CI: the test scripts start a private dockerd"
    );
    eprintln!("SKIPPED: DOCKER_HOST is not set (source scripts/services.sh && docker_up)");
    false
}

/// fake-gcs-server's URL, when the environment has one (it must in CI).
fn gcs_given() -> Option<String> {
    if !docker_given() {
        return None;
    }
    if let Some(url) = std::env::var("FERRY_TEST_GCS").ok().filter(|u| !u.is_empty()) {
        return Some(url);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "FERRY_TEST_GCS is not set in CI: the test scripts start fake-gcs-server"
    );
    eprintln!("SKIPPED: FERRY_TEST_GCS is not set (source scripts/services.sh && gcs_up)");
    None
}

fn image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "ferry-test/busybox:1".into())
}

/// A REST client of one server, in one project and location.
struct Api {
    server: TestServer,
    http: reqwest::Client,
}

impl Api {
    async fn start(options: Options) -> Api {
        let server = TestServer::start(options).await.expect("the server starts");
        Api {
            server,
            http: reqwest::Client::new(),
        }
    }

    fn jobs_url(&self) -> String {
        format!(
            "{}/v1/projects/{PROJECT}/locations/{LOCATION}/jobs",
            self.server.url()
        )
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let body = response.json().await.expect("a JSON body");
        (status, body)
    }

    async fn create(&self, id: &str, job: &Value, request_id: Option<&str>) -> (u16, Value) {
        let mut query = vec![("jobId", id)];
        if let Some(r) = request_id {
            query.push(("requestId", r));
        }
        self.send(self.http.post(self.jobs_url()).query(&query).json(job))
            .await
    }

    async fn get(&self, id: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}/{id}", self.jobs_url())))
            .await
    }

    async fn list(&self, filter: &str, page_size: usize, token: Option<&str>) -> (u16, Value) {
        let mut query = vec![
            ("filter", filter.to_string()),
            ("pageSize", page_size.to_string()),
        ];
        if let Some(t) = token {
            query.push(("pageToken", t.to_string()));
        }
        self.send(self.http.get(self.jobs_url()).query(&query)).await
    }

    async fn cancel(&self, id: &str) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}/{id}:cancel", self.jobs_url()))
                .json(&json!({})),
        )
        .await
    }

    async fn delete(&self, id: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}/{id}", self.jobs_url())))
            .await
    }

    /// Every entry the filter matches, page by page.
    async fn entries(&self, filter: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({
                "resourceNames": [format!("projects/{PROJECT}")],
                "filter": filter,
                "orderBy": "timestamp asc",
                "pageSize": 1,
            });
            if let Some(t) = &token {
                body["pageToken"] = json!(t);
            }
            let (status, page) = self
                .send(
                    self.http
                        .post(format!("{}/v2/entries:list", self.server.url()))
                        .json(&body),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
            match page["nextPageToken"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return entries,
            }
        }
    }

    /// Waits until the job's state is one of `states`, and returns it.
    async fn until(&self, id: &str, states: &[&str], within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, job) = self.get(id).await;
            assert_eq!(status, 200, "{job}");
            if states.contains(&job["status"]["state"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} is not {states:?} after {within:?}: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the job is gone (404).
    async fn until_gone(&self, id: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.get(id).await;
            if status == 404 {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} is still there after {within:?}: {body:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn job(script: &str) -> Value {
    json!({
        "taskGroups": [{"taskSpec": {"runnables": [{"container": {
            "imageUri": image(), "entrypoint": "sh", "commands": ["-c", script],
        }}]}}],
        "logsPolicy": {"destination": "CLOUD_LOGGING"},
    })
}

fn events(job: &Value) -> Vec<Value> {
    job["status"]["statusEvents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The task's exit code, from the event that carries it.
fn exit_code(job: &Value) -> Option<i64> {
    events(job)
        .iter()
        .find_map(|e| e["taskExecution"]["exitCode"].as_i64())
}

fn error_status(body: &Value) -> &str {
    body["error"]["status"].as_str().unwrap_or("")
}

#[tokio::test]
async fn jobs_are_created_listed_and_refused_as_batch_does() {
    if !docker_given() {
        return;
    }
    // Nothing runs: the jobs stay QUEUED for the length of the test.
    let api = Api::start(Options {
        start_delay: Duration::from_secs(600),
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for (i, run) in ["a", "a", "b"].into_iter().enumerate() {
        let mut body = job("true");
        body["labels"] = json!({"run": run, "ferry": "yes"});
        body["someFutureField"] = json!({"kept": true});
        let id = format!("job-{i}");
        let (status, created) = api.create(&id, &body, Some(&format!("req-{i}"))).await;
        assert_eq!(status, 200, "{created}");
        let name = format!("projects/{PROJECT}/locations/{LOCATION}/jobs/{id}");
        assert_eq!(created["name"], json!(name));
        let uid = created["uid"].as_str().unwrap();
        assert!(uid.starts_with(&format!("{id}-")) && uid.len() <= 63, "{uid}");
        assert_eq!(created["status"]["state"], "QUEUED");
        assert_eq!(created["labels"]["run"], json!(run));
        assert_eq!(
            created["someFutureField"],
            json!({"kept": true}),
            "unknown fields are kept"
        );
        assert_eq!(
            created["taskGroups"][0]["name"],
            json!(format!("{name}/taskGroups/group0"))
        );
        assert!(created["createTime"].as_str().unwrap().ends_with('Z'));
        let (status, got) = api.get(&id).await;
        assert_eq!((status, &got["uid"]), (200, &created["uid"]));
        ids.push((id, created["uid"].clone()));
    }

    // A retry with the request id that created the job gets it back; anything else conflicts.
    let (status, again) = api.create("job-0", &job("true"), Some("req-0")).await;
    assert_eq!((status, &again["uid"]), (200, &ids[0].1));
    for request_id in [Some("req-other"), None] {
        let (status, body) = api.create("job-0", &job("true"), request_id).await;
        assert_eq!((status, error_status(&body)), (409, "ALREADY_EXISTS"), "{body}");
    }
    let (status, body) = api.create("Bad_Id", &job("true"), None).await;
    assert_eq!((status, error_status(&body)), (400, "INVALID_ARGUMENT"), "{body}");
    let no_image = json!({"taskGroups": [{"taskSpec": {"runnables": [{"container": {}}]}}]});
    let (status, body) = api.create("no-image", &no_image, None).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("container.imageUri"),
        "{body}"
    );
    let (status, body) = api.get("missing").await;
    assert_eq!((status, body["error"]["code"].as_i64()), (404, Some(404)));
    assert_eq!(error_status(&body), "NOT_FOUND");

    // Lists filter by labels, name and state, in creation order, a page at a time.
    let (status, page) = api.list(r#"labels.run="a""#, 1, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["uid"], ids[0].1);
    let token = page["nextPageToken"].as_str().expect("a second page").to_string();
    let (_, page) = api.list(r#"labels.run="a""#, 1, Some(&token)).await;
    assert_eq!(page["jobs"][0]["uid"], ids[1].1);
    assert!(
        page.get("nextPageToken").is_none(),
        "the last page has no token: {page}"
    );
    let (_, page) = api.list(r#"labels.run="c""#, 10, None).await;
    assert_eq!(page, json!({}), "no jobs, as Batch answers: no `jobs` field");
    let (_, page) = api.list(r#"labels.run="a""#, 2, None).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert!(page.get("nextPageToken").is_none(), "{page}");
    let name = format!("projects/{PROJECT}/locations/{LOCATION}/jobs/job-2");
    let (_, page) = api
        .list(
            &format!(r#"labels."run"="b" AND name="{name}" AND status.state="QUEUED""#),
            100,
            None,
        )
        .await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = api.list("", 100, None).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3);
    for bad in [r#"labels.run="a" OR labels.run="b""#, r#"priority>"1""#] {
        let (status, body) = api.list(bad, 100, None).await;
        assert_eq!(
            (status, error_status(&body)),
            (400, "INVALID_ARGUMENT"),
            "{bad}: {body}"
        );
    }

    let counts = api.server.counts();
    let count =
        |collection: &str, method: &str| counts.get(&(collection.to_string(), method.to_string())).copied();
    assert_eq!(count("jobs", "create"), Some(8));
    assert_eq!(count("jobs", "list"), Some(8));
    api.server.shutdown().await;
}

#[tokio::test]
async fn a_tasks_exit_code_status_and_logs_are_real() {
    if !docker_given() {
        return;
    }
    let api = Api::start(Options::default()).await;
    let mut failing =
        job("echo out-line; echo err-line >&2; echo \"$GREETING $WHO $BATCH_TASK_INDEX\"; exit 3");
    failing["taskGroups"][0]["taskSpec"]["environment"] =
        json!({"variables": {"GREETING": "hello", "WHO": "task"}});
    failing["taskGroups"][0]["taskSpec"]["runnables"][0]["environment"] =
        json!({"variables": {"WHO": "runnable"}});
    failing["labels"] = json!({"run": "r1"});
    let (status, created) = api.create("fails", &failing, None).await;
    assert_eq!(status, 200, "{created}");
    let uid = created["uid"].as_str().unwrap().to_string();
    let done = api
        .until("fails", &["FAILED", "SUCCEEDED"], Duration::from_secs(60))
        .await;
    let status = &done["status"];
    assert_eq!(status["state"], "FAILED", "{done:#}");
    assert_eq!(exit_code(&done), Some(3), "{done:#}");
    let task_event = events(&done)
        .into_iter()
        .find(|e| e["taskState"] == "FAILED")
        .unwrap();
    let description = task_event["description"].as_str().unwrap();
    assert!(
        description.starts_with("Task state is updated from RUNNING to FAILED on zones/test-zone/instances/")
            && description.ends_with("with exit code 3."),
        "{description}"
    );
    let transitions: Vec<String> = events(&done)
        .iter()
        .filter_map(|e| {
            let d = e["description"].as_str()?;
            let rest = d.strip_prefix("Job state is set from ")?;
            Some(rest.split(" for job").next()?.to_string())
        })
        .collect();
    assert_eq!(
        transitions,
        ["QUEUED to SCHEDULED", "SCHEDULED to RUNNING", "RUNNING to FAILED"]
    );
    assert_eq!(status["taskGroups"]["group0"]["counts"], json!({"FAILED": "1"}));
    assert!(status["runDuration"].as_str().unwrap().ends_with('s'), "{status}");

    // The filter the launcher uses: the task log, this job, from its creation.
    let filter = format!(
        r#"logName="projects/{PROJECT}/logs/batch_task_logs" AND labels.job_uid="{uid}" AND timestamp>="{}""#,
        created["createTime"].as_str().unwrap()
    );
    let entries = api.entries(&filter).await;
    let lines: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["severity"].as_str().unwrap(),
                e["textPayload"].as_str().unwrap(),
            )
        })
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("ERROR", "err-line"),
            ("INFO", "hello runnable 0"),
            ("INFO", "out-line")
        ],
        "{entries:#?}"
    );
    let e = &entries[0];
    assert_eq!(e["labels"]["task_id"], json!(format!("{uid}-group0-0")));
    assert_eq!(e["labels"]["run"], "r1", "the job's labels are copied");
    assert_eq!(e["resource"]["type"], "generic_task");
    assert_eq!(e["resource"]["labels"]["job"], json!(uid));
    let stamps: Vec<&str> = entries.iter().map(|e| e["timestamp"].as_str().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    let later = format!(
        r#"labels."job_uid"="{uid}" AND timestamp>"{}""#,
        entries[0]["timestamp"].as_str().unwrap()
    );
    assert_eq!(api.entries(&later).await.len(), entries.len() - 1);

    // Success, with the uid Batch gives the task.
    let (_, created) = api.create("works", &job("echo $BATCH_JOB_UID"), None).await;
    let uid = created["uid"].as_str().unwrap().to_string();
    let done = api
        .until("works", &["FAILED", "SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert_eq!(done["status"]["state"], "SUCCEEDED", "{done:#}");
    assert_eq!(exit_code(&done), Some(0));
    assert!(done["status"]["runDuration"].as_str().unwrap().ends_with('s'));
    let entries = api.entries(&format!(r#"resource.labels.job="{uid}""#)).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["textPayload"], json!(uid));

    // A finished job cannot be cancelled; deleted, it is gone and its logs stay.
    let (status, body) = api.cancel("works").await;
    assert_eq!(
        (status, error_status(&body)),
        (400, "FAILED_PRECONDITION"),
        "{body}"
    );
    let (status, op) = api.delete("works").await;
    assert_eq!((status, &op["done"]), (200, &json!(true)), "{op}");
    api.until_gone("works", Duration::from_secs(5)).await;
    assert_eq!(api.entries(&format!(r#"labels.job_uid="{uid}""#)).await.len(), 1);
    let (status, body) = api.delete("works").await;
    assert_eq!((status, error_status(&body)), (404, "NOT_FOUND"));
    assert!(api.server.containers().await.unwrap().is_empty());
    api.server.shutdown().await;
}

#[tokio::test]
async fn cancel_and_delete_stop_a_running_container() {
    if !docker_given() {
        return;
    }
    let api = Api::start(Options {
        stop_grace: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    // `sleep` as PID 1 ignores SIGTERM: the stop takes the grace, then a kill.
    let mut uids = Vec::new();
    for id in ["to-cancel", "to-delete"] {
        let (status, body) = api.create(id, &job("echo started; exec sleep 300"), None).await;
        assert_eq!(status, 200, "{body}");
        uids.push(body["uid"].as_str().unwrap().to_string());
    }
    for id in ["to-cancel", "to-delete"] {
        api.until(id, &["RUNNING"], Duration::from_secs(60)).await;
    }
    let (status, op) = api.cancel("to-cancel").await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["done"], true);
    assert!(
        op["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("projects/{PROJECT}/locations/{LOCATION}/operations/")),
        "{op}"
    );
    let (_, job) = api.get("to-cancel").await;
    assert_eq!(job["status"]["state"], "CANCELLATION_IN_PROGRESS", "{job:#}");
    let started = tokio::time::Instant::now();
    let cancelled = api
        .until(
            "to-cancel",
            &["CANCELLED", "FAILED", "SUCCEEDED"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(cancelled["status"]["state"], "CANCELLED", "{cancelled:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = api.cancel("to-cancel").await;
    assert_eq!((status, error_status(&body)), (400, "FAILED_PRECONDITION"));
    let (status, body) = api.cancel("never-was").await;
    assert_eq!((status, error_status(&body)), (404, "NOT_FOUND"));

    let (status, op) = api.delete("to-delete").await;
    assert_eq!((status, &op["done"]), (200, &json!(true)), "{op}");
    let (status, job) = api.get("to-delete").await;
    assert!(
        status == 404 || job["status"]["state"] == "DELETION_IN_PROGRESS",
        "{status} {job:#}"
    );
    api.until_gone("to-delete", Duration::from_secs(20)).await;
    assert!(api.server.containers().await.unwrap().is_empty());
    // Its log is still there.
    let entries = api.entries(&format!(r#"labels.job_uid="{}""#, uids[1])).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["textPayload"], "started");
    let counts = api.server.counts();
    assert_eq!(counts.get(&("jobs".to_string(), "cancel".to_string())), Some(&3));
    api.server.shutdown().await;
}

#[tokio::test]
async fn limits_are_enforced_and_unrunnable_jobs_say_why() {
    if !docker_given() {
        return;
    }
    let api = Api::start(Options {
        stop_grace: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut slow = job("exec sleep 30");
    slow["taskGroups"][0]["taskSpec"]["maxRunDuration"] = json!("2s");
    let mut oom = job("head -c 64m /dev/zero | tail > /dev/null");
    oom["taskGroups"][0]["taskSpec"]["computeResource"] = json!({"cpuMilli": "500", "memoryMib": "8"});
    let mut gpu = job("true");
    gpu["allocationPolicy"] = json!({"instances": [{"policy": {
        "machineType": "g2-standard-4",
        "accelerators": [{"type": "nvidia-l4", "count": "1"}],
    }}]});
    let mut absent = job("true");
    absent["taskGroups"][0]["taskSpec"]["runnables"][0]["container"]["imageUri"] =
        json!("ferry-test/absent:1");
    // More CPUs than the machine has: Batch would find a bigger machine; here it runs.
    let mut big = job("true");
    big["taskGroups"][0]["taskSpec"]["computeResource"] = json!({"cpuMilli": 1_000_000});
    for (id, body) in [
        ("slow", &slow),
        ("oom", &oom),
        ("gpu", &gpu),
        ("absent", &absent),
        ("big", &big),
    ] {
        let (status, created) = api.create(id, body, None).await;
        assert_eq!(status, 200, "{id}: {created}");
    }

    // maxRunDuration: killed, FAILED with Batch's code for it.
    let started = tokio::time::Instant::now();
    let done = api
        .until("slow", &["FAILED", "SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(done["status"]["state"], "FAILED");
    assert_eq!(exit_code(&done), Some(50005), "{done:#}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        events(&done).iter().any(|e| e["description"]
            .as_str()
            .unwrap()
            .contains("exceeded max run duration 2s")),
        "{done:#}"
    );

    // memoryMib is the container's limit: over it, the kernel kills the task.
    let done = api
        .until("oom", &["FAILED", "SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert_eq!(
        (done["status"]["state"].as_str(), exit_code(&done)),
        (Some("FAILED"), Some(137)),
        "{done:#}"
    );

    // An image the engine does not have cannot be pulled: FAILED, with no exit code.
    let done = api
        .until("absent", &["FAILED", "SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(done["status"]["state"], "FAILED");
    assert_eq!(exit_code(&done), None, "{done:#}");
    assert!(
        events(&done)
            .iter()
            .any(|e| e["description"].as_str().unwrap().contains("cannot be pulled")),
        "{done:#}"
    );

    let done = api
        .until("big", &["FAILED", "SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(done["status"]["state"], "SUCCEEDED", "{done:#}");

    // No GPU here: the job stays QUEUED, saying why, until it is cancelled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, queued) = api.get("gpu").await;
    assert_eq!(queued["status"]["state"], "QUEUED", "{queued:#}");
    assert!(
        events(&queued)
            .iter()
            .any(|e| e["description"].as_str().unwrap().contains("no GPUs")),
        "{queued:#}"
    );
    assert_eq!(api.cancel("gpu").await.0, 200);
    api.until("gpu", &["CANCELLED"], Duration::from_secs(10)).await;
    assert!(api.server.containers().await.unwrap().is_empty());
    api.server.shutdown().await;
}

/// Test objects on fake-gcs-server.
struct Bucket {
    url: String,
    name: String,
    http: reqwest::Client,
}

impl Bucket {
    async fn new(url: String) -> Bucket {
        let name = format!("gbts-{}", &uuid_like());
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{url}/storage/v1/b"))
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("fake-gcs-server answers");
        assert!(
            response.status().is_success(),
            "create bucket {name}: {response:?}"
        );
        Bucket { url, name, http }
    }

    async fn put(&self, object: &str, content: &str) {
        let response = self
            .http
            .post(format!("{}/upload/storage/v1/b/{}/o", self.url, self.name))
            .query(&[("uploadType", "media"), ("name", object)])
            .body(content.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "put {object}: {response:?}");
    }

    /// An object's content, `None` when it is not there.
    async fn read(&self, object: &str) -> Option<String> {
        let response = self
            .http
            .get(format!(
                "{}/storage/v1/b/{}/o/{}",
                self.url,
                self.name,
                object.replace('/', "%2F")
            ))
            .query(&[("alt", "media")])
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return None;
        }
        assert!(response.status().is_success(), "read {object}: {response:?}");
        Some(response.text().await.unwrap())
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}-{}", nanos, std::process::id())
}

#[tokio::test]
async fn gcs_volumes_are_copied_in_and_written_back() {
    let Some(gcs) = gcs_given() else {
        return;
    };
    let bucket = Bucket::new(gcs.clone()).await;
    bucket.put("in/a.txt", "hello").await;
    bucket.put("in/sub/b.txt", "bee").await;
    bucket.put("in/gone.txt", "x").await;
    bucket.put("other/c.txt", "not mounted").await;
    let api = Api::start(Options {
        gcs_endpoint: Some(gcs),
        ..Options::default()
    })
    .await;
    let volumes =
        json!([{"gcs": {"remotePath": format!("{}/in", bucket.name)}, "mountPath": "/mnt/disks/share"}]);
    let mut writer = job(
        "cd /mnt/disks/share && cat a.txt && echo && cat sub/b.txt && echo && ls /mnt/disks/share/other 2>/dev/null; \
         mkdir -p out && echo written > out/new.txt && echo changed > a.txt && rm gone.txt",
    );
    writer["taskGroups"][0]["taskSpec"]["volumes"] = volumes.clone();
    let (status, created) = api.create("writer", &writer, None).await;
    assert_eq!(status, 200, "{created}");
    let done = api
        .until("writer", &["FAILED", "SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert_eq!(done["status"]["state"], "SUCCEEDED", "{done:#}");
    let uid = created["uid"].as_str().unwrap();
    let lines: Vec<Value> = api
        .entries(&format!(r#"labels.job_uid="{uid}""#))
        .await
        .into_iter()
        .map(|e| e["textPayload"].clone())
        .collect();
    assert_eq!(lines, [json!("hello"), json!("bee")]);
    assert_eq!(bucket.read("in/out/new.txt").await.as_deref(), Some("written\n"));
    assert_eq!(bucket.read("in/a.txt").await.as_deref(), Some("changed\n"));
    assert_eq!(bucket.read("in/sub/b.txt").await.as_deref(), Some("bee"));
    assert_eq!(bucket.read("in/gone.txt").await, None);
    assert_eq!(bucket.read("other/c.txt").await.as_deref(), Some("not mounted"));

    // With container.volumes, only what they name is mounted, where they say.
    let mut reader = job("cat /data/a.txt; test -e /mnt/disks/share || echo unmounted; echo x > /data/a.txt");
    reader["taskGroups"][0]["taskSpec"]["volumes"] = volumes;
    reader["taskGroups"][0]["taskSpec"]["runnables"][0]["container"]["volumes"] =
        json!(["/mnt/disks/share:/data:ro"]);
    let (_, created) = api.create("reader", &reader, None).await;
    let done = api
        .until("reader", &["FAILED", "SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert_eq!(
        done["status"]["state"], "FAILED",
        "the volume is read-only: {done:#}"
    );
    let uid = created["uid"].as_str().unwrap();
    let lines: Vec<Value> = api
        .entries(&format!(r#"labels.job_uid="{uid}" AND severity="INFO""#))
        .await
        .into_iter()
        .map(|e| e["textPayload"].clone())
        .collect();
    assert_eq!(lines, [json!("changed"), json!("unmounted")]);
    assert_eq!(bucket.read("in/a.txt").await.as_deref(), Some("changed\n"));

    // A volume whose bucket is missing fails the job, saying why.
    let mut missing = job("true");
    missing["taskGroups"][0]["taskSpec"]["volumes"] =
        json!([{"gcs": {"remotePath": "no-such-bucket-gbts/x"}, "mountPath": "/mnt/disks/x"}]);
    api.create("missing", &missing, None).await;
    let done = api
        .until("missing", &["FAILED", "SUCCEEDED"], Duration::from_secs(30))
        .await;
    assert_eq!(done["status"]["state"], "FAILED");
    assert!(
        events(&done).iter().any(|e| e["description"]
            .as_str()
            .unwrap()
            .contains("could not be mounted")),
        "{done:#}"
    );
    api.server.shutdown().await;
}

#[tokio::test]
async fn the_start_delay_shows_queued_and_scheduled() {
    if !docker_given() {
        return;
    }
    let api = Api::start(Options {
        start_delay: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    for id in ["slow-start", "deleted-early"] {
        let (status, body) = api.create(id, &job("echo ran"), None).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(api.get("slow-start").await.1["status"]["state"], "QUEUED");
    let scheduled = api
        .until("slow-start", &["SCHEDULED"], Duration::from_secs(10))
        .await;
    assert_eq!(
        scheduled["status"]["taskGroups"]["group0"]["counts"],
        json!({"PENDING": "1"})
    );
    // Deleted before it ran: it goes without a container.
    assert_eq!(api.delete("deleted-early").await.0, 200);
    api.until_gone("deleted-early", Duration::from_secs(5)).await;
    let done = api
        .until("slow-start", &["SUCCEEDED", "FAILED"], Duration::from_secs(30))
        .await;
    assert_eq!(done["status"]["state"], "SUCCEEDED", "{done:#}");
    api.server.shutdown().await;
}

#[tokio::test]
async fn a_dropped_server_removes_its_containers() {
    if !docker_given() {
        return;
    }
    let api = Api::start(Options::default()).await;
    let (status, body) = api.create("left-running", &job("exec sleep 300"), None).await;
    assert_eq!(status, 200, "{body}");
    api.until("left-running", &["RUNNING"], Duration::from_secs(60))
        .await;
    let docker = bollard::Docker::connect_with_host(&std::env::var("DOCKER_HOST").unwrap()).unwrap();
    let labelled = format!(
        "{}={}",
        ferry_google_batch_test_server::CONTAINER_LABEL,
        api.server.id()
    );
    let containers = async || {
        let filters = std::collections::HashMap::from([("label", vec![labelled.clone()])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        docker.list_containers(Some(options)).await.unwrap().len()
    };
    assert_eq!(containers().await, 1);
    drop(api);
    assert_eq!(containers().await, 0);
}
