//! What the google-batch tests share: the Google Batch test server
//! (`ferry-google-batch-test-server`, started by each target), which runs every job's
//! container on the test Docker engine (`DOCKER_HOST`) and mounts its Cloud Storage volume
//! from fake-gcs-server (the test scripts' `FERRY_TEST_GCS`), and the busybox image the test
//! scripts build (`FERRY_TEST_DOCKER_IMAGE`).
//!
//! Without `DOCKER_HOST` and `FERRY_TEST_GCS` every case is skipped, saying so, except in CI
//! (`CI=true`), where they must be there.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{GoogleBatchRunner, Resources, Runner};
use ferry_event::template::Template;
use ferry_google_batch_test_server::{Options, TestServer};
use ferry_launcher::Backend;
use ferry_launcher::conformance::{Program, Target};
use ferry_launcher::journal::Journal;
use ferry_launcher_google_batch::google::{Auth, Endpoints, Google};
use ferry_launcher_google_batch::stage::Staging;
use ferry_launcher_google_batch::{GoogleBatch, Settings, names};

pub const PROJECT: &str = "ferry-test";
pub const REGION: &str = "test-region1";

/// The fake-gcs-server URL, or why the tests cannot run (then a panic in CI).
pub fn gcs() -> Result<String, String> {
    let docker = std::env::var("DOCKER_HOST").ok().filter(|v| !v.is_empty());
    let gcs = std::env::var("FERRY_TEST_GCS").ok().filter(|v| !v.is_empty());
    let found = match (docker, gcs) {
        (Some(_), Some(gcs)) => Ok(gcs),
        _ => Err(
            "DOCKER_HOST and FERRY_TEST_GCS are not both set: run ./scripts/test.sh, or `source \
                  scripts/services.sh && docker_up && gcs_up` first"
                .to_string(),
        ),
    };
    if let Err(why) = &found
        && std::env::var("CI").is_ok_and(|v| v == "true")
    {
        panic!("{why}");
    }
    found
}

/// The Pub/Sub emulator's URL (`FERRY_TEST_PUBSUB`), when the test scripts started one.
pub fn pubsub() -> Option<String> {
    std::env::var("FERRY_TEST_PUBSUB").ok().filter(|v| !v.is_empty())
}

/// A topic and a subscription of it, fresh, on the Pub/Sub emulator at `pubsub`.
pub async fn topic(pubsub: &str) -> (String, String) {
    let topic = format!("projects/{PROJECT}/topics/{}", fresh("batch-jobs"));
    let subscription = format!("projects/{PROJECT}/subscriptions/{}", fresh("launcher"));
    let http = reqwest::Client::new();
    let made = http
        .put(format!("{pubsub}/v1/{topic}"))
        .send()
        .await
        .expect("Pub/Sub answers");
    assert!(made.status().is_success(), "create {topic}: {made:?}");
    let made = http
        .put(format!("{pubsub}/v1/{subscription}"))
        .json(&serde_json::json!({ "topic": topic }))
        .send()
        .await
        .expect("Pub/Sub answers");
    assert!(made.status().is_success(), "create {subscription}: {made:?}");
    (topic, subscription)
}

pub fn image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "ferry-test/busybox:1".to_string())
}

/// A fresh name for this test's things.
pub fn fresh(what: &str) -> String {
    let id = ferry_event::new_id().to_lowercase();
    format!("{what}-{}", &id[id.len() - 10..])
}

/// Makes a bucket of its own on fake-gcs-server.
pub async fn bucket(gcs: &str) -> String {
    let name = fresh("ferry-stage");
    let answer = reqwest::Client::new()
        .post(format!("{gcs}/storage/v1/b"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("fake-gcs-server answers");
    assert!(answer.status().is_success(), "create bucket {name}: {answer:?}");
    name
}

/// The google-batch backend on a test server of its own, staging in a bucket of its own.
pub struct BatchTarget {
    pub server: TestServer,
    pub gcs: String,
    pub google: Google,
    pub bucket: String,
}

impl BatchTarget {
    pub async fn new(gcs: String) -> BatchTarget {
        let server = TestServer::start(Options {
            gcs_endpoint: Some(gcs.clone()),
            pubsub_endpoint: pubsub(),
            stop_grace: Duration::from_secs(1),
            ..Options::default()
        })
        .await
        .expect("start the Google Batch test server");
        let google = Google::new(
            Endpoints {
                batch: server.url(),
                logging: server.url(),
                storage: gcs.clone(),
                // No Pub/Sub: a port nothing listens on, which no test without one calls.
                pubsub: pubsub().unwrap_or_else(|| "http://127.0.0.1:9".into()),
            },
            Auth::Anonymous,
        )
        .expect("a client");
        let bucket = bucket(&gcs).await;
        BatchTarget {
            server,
            gcs,
            google,
            bucket,
        }
    }

    pub fn parent(&self) -> String {
        format!("projects/{PROJECT}/locations/{REGION}")
    }

    pub fn runner(&self) -> GoogleBatchRunner {
        GoogleBatchRunner {
            image: image(),
            project: Some(PROJECT.into()),
            region: Some(REGION.into()),
            ..GoogleBatchRunner::default()
        }
    }

    /// The backend, staging in the target's bucket (under `stage`) when `staged`, keeping
    /// output files in `data_dir`'s artifact directory.
    pub fn make(&self, launcher: String, data_dir: &Path, staged: bool) -> GoogleBatch {
        let default = format!("gs://{}/stage", self.bucket);
        let staging = Staging::new(
            staged.then_some(default.as_str()),
            Staging::options(&self.gcs, true),
            data_dir.join("artifacts"),
            Default::default(),
        )
        .expect("the staging bucket");
        let mut settings = Settings::new(launcher, staging);
        settings.project = Some(PROJECT.into());
        settings.region = Some(REGION.into());
        settings.poll_interval = Duration::from_millis(200);
        settings.kill_grace = Duration::from_secs(1);
        // The test server takes a line in within milliseconds of its write (Cloud Logging
        // within seconds).
        settings.log_settle = Duration::from_secs(1);
        settings.log_round = Duration::from_millis(200);
        GoogleBatch::new(self.google.clone(), settings)
    }

    /// The jobs of the test server in the target's location, with their states.
    pub async fn jobs(&self) -> Vec<(String, String)> {
        self.google
            .list_jobs(&self.parent(), "")
            .await
            .expect("list the test server's jobs")
            .into_iter()
            .map(|j| (j.id().to_string(), j.state().to_string()))
            .collect()
    }

    /// Everything staged in the target's bucket.
    pub async fn staged(&self) -> Vec<String> {
        let listed: serde_json::Value = reqwest::get(format!("{}/storage/v1/b/{}/o", self.gcs, self.bucket))
            .await
            .and_then(|r| r.error_for_status())
            .expect("list the staging bucket")
            .json()
            .await
            .expect("a listing");
        listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

#[async_trait]
impl Target for BatchTarget {
    fn name(&self) -> &'static str {
        ferry_launcher_google_batch::BACKEND
    }

    async fn backend(&self, data_dir: &Path, journal: &Journal) -> Arc<dyn Backend> {
        let launcher = journal.identity().expect("the launcher's identity");
        Arc::new(self.make(launcher, data_dir, true))
    }

    fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
        let command = ["sh", "-c", &program.sh()].map(Template::text).to_vec();
        (Runner::GoogleBatch(self.runner()), command)
    }

    fn refused(&self) -> Option<(Resources, &'static str)> {
        // A GPU count without its model: Batch needs the accelerator type.
        let gpu = Resources {
            gpu: Some(1),
            ..Resources::default()
        };
        Some((gpu, "resources.gpu"))
    }

    async fn leftovers(&self, _: &Path) -> Vec<String> {
        // Release deletes an attempt's job: every job still listed is left over, and every
        // file staged.
        let mut left: Vec<String> = self.jobs().await.into_iter().map(|(id, _)| id).collect();
        left.extend(self.staged().await);
        left
    }

    async fn kill(&self, attempt_id: &str) -> Result<(), String> {
        let name = format!("{}/jobs/{}", self.parent(), names::job_id(attempt_id));
        self.google
            .cancel_job(&name)
            .await
            .map_err(|e| format!("cancel {name}: {e}"))
    }
}

/// Stands in when the test server cannot run: every case says why it is skipped.
pub struct Skip(pub String);

#[async_trait]
impl Target for Skip {
    fn name(&self) -> &'static str {
        ferry_launcher_google_batch::BACKEND
    }
    async fn backend(&self, _: &Path, _: &Journal) -> Arc<dyn Backend> {
        unreachable!("every case is skipped")
    }
    fn command(&self, _: &Program) -> (Runner, Vec<Template>) {
        unreachable!("every case is skipped")
    }
    fn refused(&self) -> Option<(Resources, &'static str)> {
        None
    }
    async fn leftovers(&self, _: &Path) -> Vec<String> {
        Vec::new()
    }
    async fn kill(&self, _: &str) -> Result<(), String> {
        Err("skipped".into())
    }
    fn cannot(&self, _: &str) -> Option<&'static str> {
        Some("DOCKER_HOST and FERRY_TEST_GCS are not both set: run ./scripts/test.sh")
    }
}
