//! What the aws-batch tests share: moto (the test scripts' server, `FERRY_TEST_MOTO`), whose
//! Batch jobs run as containers on the test Docker engine, a compute environment of each
//! target's own, and the busybox image the test scripts build (`FERRY_TEST_DOCKER_IMAGE`).
//!
//! Without `FERRY_TEST_MOTO` every case is skipped, saying so, except in CI (`CI=true`), where
//! a missing server fails.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_batch::config::{HttpClient, RuntimeComponents, SharedHttpClient};
use aws_sdk_batch::types::{CeState, CeType, JobStatus};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use ferry_event::payload::{AwsBatchPlatform, AwsBatchRunner, Resources, Runner};
use ferry_event::template::Template;
use ferry_launcher::Backend;
use ferry_launcher::conformance::{Program, Target};
use ferry_launcher::journal::Journal;
use ferry_launcher_aws_batch::stage::Staging;
use ferry_launcher_aws_batch::{AwsBatch, Settings, names};

pub const REGION: &str = "us-east-1";

/// The moto endpoint, or why there is none (then a panic in CI).
pub fn moto() -> Result<String, String> {
    let found = std::env::var("FERRY_TEST_MOTO").ok().filter(|v| !v.is_empty()).ok_or_else(|| {
        "FERRY_TEST_MOTO is not set: run ./scripts/test.sh, or `source scripts/services.sh && docker_up && moto_up` \
         first"
            .to_string()
    });
    if let Err(why) = &found
        && std::env::var("CI").is_ok_and(|v| v == "true")
    {
        panic!("{why}");
    }
    found
}

pub fn image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "ferry-test/busybox:1".to_string())
}

/// The test scripts' busybox with curl, which staged files need to be sent back.
pub fn curl_image() -> String {
    std::env::var("FERRY_TEST_CURL_IMAGE").unwrap_or_else(|_| "ferry-test/curl:1".to_string())
}

/// The test scripts' busybox with Python and without curl.
pub fn python_image() -> String {
    std::env::var("FERRY_TEST_PYTHON_IMAGE").unwrap_or_else(|_| "ferry-test/python:1".to_string())
}

/// A staging bucket of its own on moto: the store under its prefix `stage`, and the whole
/// bucket.
pub fn staging_store(endpoint: &str) -> (ferry_artifacts::Store, ferry_artifacts::Store) {
    let bucket = ferry_artifacts::testing::moto_bucket(endpoint, "staging");
    let open = |url: String| {
        ferry_artifacts::Store::open_with(&url, ferry_artifacts::testing::moto_options(endpoint))
            .expect("the staging bucket opens")
    };
    (
        open(format!("s3://{bucket}/stage")),
        open(format!("s3://{bucket}")),
    )
}

/// Everything staged in the bucket `whole` under the prefix `stage`.
pub async fn staged(whole: &ferry_artifacts::Store) -> Vec<String> {
    whole.list_under("stage").await.expect("list the staging bucket")
}

/// An SDK configuration for moto: fixed test credentials, one region, and an HTTP client that
/// reads moto's answers as AWS writes them ([`AwsNumbers`]).
pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_batch::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "ferry-tests",
        ))
        .load()
        .await;
    // The client the SDK makes by default (rustls on aws-lc-rs), wrapped.
    let inner = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .build_https();
    base.to_builder()
        .http_client(SharedHttpClient::new(AwsNumbers { inner }))
        .build()
}

/// moto 5.2.6 writes two numbers as AWS never does, which the SDK cannot read: CloudWatch Logs
/// event times in fractional milliseconds (`1796593336738.193`), and a job's deprecated
/// `container.vcpus` as asked (`0.25` on Fargate; AWS leaves it out for jobs sized by
/// `resourceRequirements`). This client rounds the first and drops the second from moto's JSON
/// answers; everything else passes as moto wrote it.
#[derive(Debug)]
struct AwsNumbers {
    inner: SharedHttpClient,
}

impl HttpClient for AwsNumbers {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(AwsNumbersConnector(
            self.inner.http_connector(settings, components),
        ))
    }
}

#[derive(Debug)]
struct AwsNumbersConnector(SharedHttpConnector);

impl HttpConnector for AwsNumbersConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let answer = self.0.call(request);
        HttpConnectorFuture::new(async move {
            let mut response = answer.await?;
            let body = response.take_body();
            let bytes = aws_smithy_types::byte_stream::ByteStream::new(body)
                .collect()
                .await
                .map_err(|e| ConnectorError::io(e.into()))?
                .into_bytes();
            let fixed = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(mut json) => {
                    as_aws_writes(&mut json);
                    serde_json::to_vec(&json).expect("JSON serializes")
                }
                Err(_) => bytes.to_vec(),
            };
            *response.body_mut() = SdkBody::from(fixed);
            Ok(response)
        })
    }
}

fn as_aws_writes(v: &mut serde_json::Value) {
    const TIMES: &[&str] = &[
        "timestamp",
        "ingestionTime",
        "creationTime",
        "firstEventTimestamp",
        "lastEventTimestamp",
        "lastIngestionTime",
    ];
    match v {
        serde_json::Value::Object(map) => {
            if map
                .get("vcpus")
                .is_some_and(|n| n.as_f64().is_some_and(|f| f.fract() != 0.0))
            {
                map.remove("vcpus");
            }
            for (k, item) in map.iter_mut() {
                if TIMES.contains(&k.as_str())
                    && let Some(f) = item.as_f64().filter(|_| !item.is_i64())
                {
                    *item = serde_json::Value::from(f.round() as i64);
                } else {
                    as_aws_writes(item);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(as_aws_writes),
        _ => {}
    }
}

/// A fresh name for this test's AWS things.
pub fn fresh(what: &str) -> String {
    let id = ferry_event::new_id();
    format!("{what}-{}", &id[id.len() - 10..])
}

/// Creates an IAM role on moto and returns its ARN. One IAM call, written by hand (moto does
/// not check signatures) rather than with another SDK crate built for the tests.
pub async fn role(endpoint: &str, name: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(endpoint).expect("the moto endpoint is a URL");
    let host = format!(
        "{}:{}",
        url.host_str().expect("a host"),
        url.port_or_known_default().expect("a port")
    );
    let body =
        format!("Action=CreateRole&Version=2010-05-08&RoleName={name}&AssumeRolePolicyDocument=%7B%7D");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/iam/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect to moto");
    conn.write_all(request.as_bytes()).await.expect("send CreateRole");
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .await
        .expect("read CreateRole's answer");
    let arn = answer
        .split("<Arn>")
        .nth(1)
        .and_then(|s| s.split("</Arn>").next())
        .unwrap_or_else(|| panic!("moto did not create role {name}: {answer}"));
    arn.to_string()
}

/// An unmanaged compute environment of the test's own (moto runs its jobs on the Docker
/// engine in its environment).
pub async fn compute_environment(endpoint: &str, batch: &aws_sdk_batch::Client) -> String {
    let name = fresh("ce");
    let role = role(endpoint, &format!("{name}-service")).await;
    batch
        .create_compute_environment()
        .compute_environment_name(&name)
        .r#type(CeType::Unmanaged)
        .state(CeState::Enabled)
        .service_role(role)
        .send()
        .await
        .expect("create a compute environment on moto");
    name
}

/// The names of the jobs of `queue` that have not ended.
pub async fn active_jobs(batch: &aws_sdk_batch::Client, queue: &str) -> Vec<(String, String)> {
    let mut jobs = Vec::new();
    for status in [
        JobStatus::Submitted,
        JobStatus::Pending,
        JobStatus::Runnable,
        JobStatus::Starting,
        JobStatus::Running,
    ] {
        let out = match batch.list_jobs().job_queue(queue).job_status(status).send().await {
            Ok(out) => out,
            // The queue is made with the first attempt.
            Err(e) if e.as_service_error().is_some() => return Vec::new(),
            Err(e) => panic!("list the queue's jobs: {e:?}"),
        };
        for j in out.job_summary_list() {
            jobs.push((
                j.job_name().unwrap_or_default().to_string(),
                j.job_id().unwrap_or_default().to_string(),
            ));
        }
    }
    jobs
}

/// The aws-batch backend on moto, with a compute environment of its own.
pub struct BatchTarget {
    pub sdk: aws_config::SdkConfig,
    pub endpoint: String,
    pub batch: aws_sdk_batch::Client,
    pub compute_environment: String,
    /// Where attempts' files are staged, and its whole bucket.
    pub staging: ferry_artifacts::Store,
    pub staging_bucket: ferry_artifacts::Store,
}

impl BatchTarget {
    pub async fn new(endpoint: String) -> BatchTarget {
        let sdk = sdk(&endpoint).await;
        let batch = aws_sdk_batch::Client::new(&sdk);
        let compute_environment = compute_environment(&endpoint, &batch).await;
        let (staging, staging_bucket) = staging_store(&endpoint);
        BatchTarget {
            sdk,
            endpoint,
            batch,
            compute_environment,
            staging,
            staging_bucket,
        }
    }

    pub fn queue(&self) -> String {
        names::queue_name(&self.compute_environment)
    }

    /// A runner of the test image with curl on the target's environment, sized as on Fargate
    /// (moto runs every job on its Docker engine, whatever the platform).
    pub fn runner(&self) -> AwsBatchRunner {
        AwsBatchRunner {
            image: curl_image(),
            compute_environment: Some(self.compute_environment.clone()),
            platform: Some(AwsBatchPlatform::Fargate),
            ..AwsBatchRunner::default()
        }
    }

    /// The backend, without a staging bucket.
    pub fn make(&self, launcher: String) -> AwsBatch {
        let mut settings = Settings::new(launcher);
        settings.poll_interval = Duration::from_millis(200);
        settings.kill_grace = Duration::from_secs(1);
        AwsBatch::new(&self.sdk, settings)
    }

    /// The backend staging files in the target's bucket, keeping output files in `data_dir`'s
    /// artifact directory.
    pub fn make_staged(&self, launcher: String, data_dir: &Path) -> AwsBatch {
        let mut settings = Settings::new(launcher);
        settings.poll_interval = Duration::from_millis(200);
        settings.kill_grace = Duration::from_secs(1);
        settings.staging = Some(Staging::new(
            Some(self.staging.clone()),
            ferry_artifacts::testing::moto_options(&self.endpoint),
            data_dir.join("artifacts"),
            Default::default(),
        ));
        AwsBatch::new(&self.sdk, settings)
    }
}

#[async_trait]
impl Target for BatchTarget {
    fn name(&self) -> &'static str {
        ferry_launcher_aws_batch::BACKEND
    }

    async fn backend(&self, data_dir: &Path, journal: &Journal) -> Arc<dyn Backend> {
        let launcher = journal.identity().expect("the launcher's identity");
        Arc::new(self.make_staged(launcher, data_dir))
    }

    fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
        let command = ["sh", "-c", &program.sh()].map(Template::text).to_vec();
        (Runner::AwsBatch(self.runner()), command)
    }

    fn refused(&self) -> Option<(Resources, &'static str)> {
        // Fargate has no GPUs.
        let gpu = Resources {
            gpu: Some(1),
            ..Resources::default()
        };
        Some((gpu, "resources.gpu"))
    }

    async fn leftovers(&self, _: &Path) -> Vec<String> {
        // Jobs that ended stay listed for days on Batch, holding no compute: only those that
        // have not ended are left over, and files staged for them.
        let mut left: Vec<String> = active_jobs(&self.batch, &self.queue())
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        left.extend(staged(&self.staging_bucket).await);
        left
    }

    async fn kill(&self, attempt_id: &str) -> Result<(), String> {
        let name = names::job_name(attempt_id);
        let jobs = active_jobs(&self.batch, &self.queue()).await;
        let (_, id) = jobs
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("no running job {name}"))?;
        self.batch
            .terminate_job()
            .job_id(id)
            .reason("stopped by an operator")
            .send()
            .await
            .map_err(|e| format!("terminate {id}: {e:?}"))?;
        Ok(())
    }

    fn cannot(&self, case: &str) -> Option<&'static str> {
        match case {
            "shutdown_follows_the_backends_policy"
            | "a_restarted_launcher_serves_and_keeps_adopted_compute_alive" => Some(
                "moto writes a job's log only once the job has exited, and these cases stop the launcher once a \
                     line arrived while the job runs (AWS streams the log while it runs); adopting after a crash is \
                     held by a_crash_at_each_step_ends_in_exactly_one_report",
            ),
            "a_full_disk_never_ends_in_a_silent_success" => Some(
                "moto writes a job's log only once the job has exited: the case's 200,000 lines do not reach the \
                 launcher within its 20 s wait",
            ),
            _ => None,
        }
    }
}

/// Stands in when there is no moto: every case says why it is skipped.
pub struct Skip(pub String);

#[async_trait]
impl Target for Skip {
    fn name(&self) -> &'static str {
        ferry_launcher_aws_batch::BACKEND
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
        Some(
            "FERRY_TEST_MOTO is not set: run ./scripts/test.sh, or `source scripts/services.sh && docker_up && moto_up`",
        )
    }
}
