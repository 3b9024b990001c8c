//! Output files through the api: `GET /jobs/{id}/files/{task}/{path}` serves a task's file
//! from the artifact store that holds it (a directory, an S3 bucket on moto, a Cloud Storage
//! bucket on fake-gcs-server) to whoever may read the job, and nothing kept anywhere else.

mod common;

use common::{Api, attempt_id, new_job};
use ferry_event::kind;
use ferry_event::payload::{OutputFile, TaskState, TaskStatus};
use serde_json::{Map, Value};

/// `task.succeeded` of the task's first attempt, with `files`, as the scheduler sends it.
fn succeeded_with(api: &Api, job: &str, task: &str, files: Vec<OutputFile>) -> ferry_event::Event {
    let s = TaskState {
        job_id: job.into(),
        task_id: task.into(),
        state: TaskStatus::Succeeded,
        attempts: 1,
        attempt_id: Some(attempt_id(job, task, 1)),
        error: None,
        outputs: Map::new(),
        output_files: files,
        retry_at_ms: None,
        started_at_ms: Some(1000),
        finished_at_ms: Some(2000),
        subtasks: Vec::new(),
        subtask_backends: Vec::new(),
    };
    api.events
        .task(kind::TASK_SUCCEEDED, job, task, s.attempt_id.as_deref(), &s)
}

/// The status, the headers that matter and the body of a GET of `path` with `token`.
async fn fetch(api: &Api, token: &str, path: &str) -> (u16, Option<String>, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(api.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET answers");
    let status = r.status().as_u16();
    let disposition = r
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, disposition, r.bytes().await.expect("a body").to_vec())
}

fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).expect("a JSON error")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn output_files_are_served_from_their_store_to_readers_of_the_job_only() {
    let dir = tempfile::tempdir().unwrap();
    let dir_store = ferry_artifacts::Store::open(dir.path().to_str().unwrap()).unwrap();
    let job = new_job();
    let attempt = attempt_id(&job, "report", 1);
    let key = ferry_artifacts::attempt_key(&job, "report", &attempt, "out/r 1.txt");
    dir_store.put(&key, "a report\n".into()).await.unwrap();
    let mut files = vec![OutputFile {
        path: "out/r 1.txt".into(),
        uri: dir_store.uri(&key),
        size: 9,
    }];
    // A file kept where this api serves nothing from.
    files.push(OutputFile {
        path: "hostname".into(),
        uri: "file:///etc/hostname".into(),
        size: 10,
    });
    let moto = ferry_artifacts::testing::moto();
    let mut stores = vec![dir.path().to_string_lossy().into_owned()];
    if let Some(endpoint) = &moto {
        let bucket = ferry_artifacts::testing::moto_bucket(endpoint, "api");
        let url = format!("s3://{bucket}/runs");
        let s3 = ferry_artifacts::Store::open_with(&url, ferry_artifacts::testing::moto_options(endpoint))
            .unwrap();
        let key = ferry_artifacts::attempt_key(&job, "report", &attempt, "data.csv");
        s3.put(&key, "a,b\n".into()).await.unwrap();
        files.push(OutputFile {
            path: "data.csv".into(),
            uri: s3.uri(&key),
            size: 4,
        });
        stores.push(url);
    }
    let api = Api::start_with(|c| {
        c.artifact_stores = stores;
        if let Some(endpoint) = &moto {
            c.artifact_store_options = ferry_artifacts::testing::moto_options(endpoint);
        }
    })
    .await;
    api.publish(&[
        api.planned(&job, &["report"]),
        api.started(&job, "report", 1),
        succeeded_with(&api, &job, "report", files),
    ])
    .await;
    api.job_when(&job, "the output files", |d| {
        d["tasks"][0]["outputFiles"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    })
    .await;
    let admin = api.admin_token.clone();

    let (status, disposition, body) =
        fetch(&api, &admin, &format!("/jobs/{job}/files/report/out/r%201.txt")).await;
    assert_eq!((status, body.as_slice()), (200, b"a report\n".as_slice()));
    assert_eq!(disposition.as_deref(), Some("attachment; filename=\"r_1.txt\""));
    if moto.is_some() {
        let (status, _, body) = fetch(&api, &admin, &format!("/jobs/{job}/files/report/data.csv")).await;
        assert_eq!((status, body.as_slice()), (200, b"a,b\n".as_slice()));
    }

    let (status, _, body) = fetch(&api, &admin, &format!("/jobs/{job}/files/report/hostname")).await;
    assert_eq!(status, 404);
    assert!(
        error_of(&body).contains("in no artifact store this api serves"),
        "{}",
        error_of(&body)
    );
    let (status, _, body) = fetch(&api, &admin, &format!("/jobs/{job}/files/report/../hostname")).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = fetch(&api, &admin, &format!("/jobs/{job}/files/report/none.txt")).await;
    assert_eq!(status, 404);
    assert!(
        error_of(&body).contains("has no output file \"none.txt\""),
        "{}",
        error_of(&body)
    );
    let (status, _, body) = fetch(&api, &admin, &format!("/jobs/{job}/files/nope/out/r%201.txt")).await;
    assert_eq!(status, 404);
    assert!(
        error_of(&body).contains("has no task \"nope\""),
        "{}",
        error_of(&body)
    );

    // Gone from the store (a retention sweep): said so.
    dir_store.remove_under(&format!("{job}/report")).await.unwrap();
    let (status, _, body) = fetch(&api, &admin, &format!("/jobs/{job}/files/report/out/r%201.txt")).await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("no longer at"), "{}", error_of(&body));

    // Who may not read the job learns nothing of its files.
    let other_team = api.add_token("other", &["read"], Some(&["other"])).await;
    let (status, _, body) = fetch(&api, &other_team, &format!("/jobs/{job}/files/report/data.csv")).await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("is not known"), "{}", error_of(&body));
    let submitter = api.add_token("ci", &["submit"], None).await;
    let (status, _, _) = fetch(&api, &submitter, &format!("/jobs/{job}/files/report/data.csv")).await;
    assert_eq!(status, 403);
    api.stop().await;
}

#[tokio::test]
async fn output_files_are_served_from_a_cloud_storage_bucket() {
    let Some(endpoint) = ferry_artifacts::testing::gcs() else {
        return;
    };
    let bucket = ferry_artifacts::testing::gcs_bucket(&endpoint, "api");
    let url = format!("gs://{bucket}/runs");
    let options = ferry_artifacts::testing::gcs_options(&endpoint);
    let gs = ferry_artifacts::Store::open_with(&url, options.clone()).unwrap();
    let job = new_job();
    let attempt = attempt_id(&job, "report", 1);
    // Large enough to come in more than one chunk of the body.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let key = ferry_artifacts::attempt_key(&job, "report", &attempt, "out/data 1.bin");
    gs.put(&key, data.clone().into()).await.unwrap();
    let files = vec![OutputFile {
        path: "out/data 1.bin".into(),
        uri: gs.uri(&key),
        size: data.len() as u64,
    }];
    let api = Api::start_with(|c| {
        c.artifact_stores = vec![url];
        c.artifact_store_options = options;
    })
    .await;
    api.publish(&[
        api.planned(&job, &["report"]),
        api.started(&job, "report", 1),
        succeeded_with(&api, &job, "report", files),
    ])
    .await;
    api.job_when(&job, "the output files", |d| {
        d["tasks"][0]["outputFiles"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    })
    .await;
    let admin = api.admin_token.clone();
    let (status, disposition, body) = fetch(
        &api,
        &admin,
        &format!("/jobs/{job}/files/report/out/data%201.bin"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body == data, "the file does not come back whole");
    assert_eq!(
        disposition.as_deref(),
        Some("attachment; filename=\"data_1.bin\"")
    );
    // Gone from the bucket: said so.
    gs.remove_under(&format!("{job}/report")).await.unwrap();
    let (status, _, body) = fetch(
        &api,
        &admin,
        &format!("/jobs/{job}/files/report/out/data%201.bin"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("no longer at"), "{}", error_of(&body));
    api.stop().await;
}

#[tokio::test]
async fn a_store_that_cannot_work_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ferry_api::Config::new(
        format!("sqlite://{}", dir.path().join("api.db").display()),
        format!("sqlite://{}", dir.path().join("logs.db").display()),
    );
    config.access = Some(ferry_api::Access::InsecureNoAuth);
    config.artifact_stores = vec!["ftp://files.example/x".into()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = std::sync::Arc::new(ferry_bus::MemoryBus::new());
    let e = ferry_api::serve(config, bus, listener, ferry_runtime::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--serve-artifacts") && e.contains("`ftp://` is not a kind of store"),
        "{e}"
    );
}
