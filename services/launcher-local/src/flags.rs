//! The local launcher's flags: one definition for `ferry-launcher-local`, `ferry service
//! launcher` and `ferry up`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{BACKEND, Config, Result, Service};

/// The local launchers' consumer group unless `--launcher-group` names another.
const DEFAULT_GROUP: &str = "launcher-local";

/// The local launcher's command-line flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "launcher")]
#[command(next_help_heading = "Launcher")]
pub struct Flags {
    /// The backend whose tasks `ferry service launcher` runs (`ferry up` serves local, docker
    /// when a Docker engine answers, kubernetes when a cluster does, ray when --ray-address is
    /// given, aws-batch when --aws-batch-job-queue or --aws-batch-compute-environment is,
    /// google-batch when --google-project and --google-region are).
    #[arg(long, env = "FERRY_BACKEND", value_name = "NAME", default_value = BACKEND, value_parser = [BACKEND, "docker", "kubernetes", "ray", "aws-batch", "google-batch"])]
    pub backend: String,
    /// The kubeconfig context the kubernetes launcher uses [default: the current context; in a
    /// pod without a kubeconfig, the cluster it runs in]
    #[arg(long, env = "FERRY_KUBE_CONTEXT", value_name = "NAME")]
    pub kube_context: Option<String>,
    /// The namespace of Jobs whose runner names none [default: the context's namespace, else
    /// `default`]
    #[arg(long, env = "FERRY_KUBE_NAMESPACE", value_name = "NAME")]
    pub kube_namespace: Option<String>,
    /// The image of the container that holds a Kubernetes pod's `$FERRY_SUBTASKS` and working
    /// directory until they are collected: it must have `sh`, `sleep` and `tar` [default:
    /// busybox:1.37]
    #[arg(long, env = "FERRY_KUBE_STAGE_IMAGE", value_name = "IMAGE")]
    pub kube_stage_image: Option<String>,
    /// Give Kubernetes tasks no `$FERRY_SUBTASKS`: then only a task with output files has a
    /// stage container in its pod, and no task on the cluster can submit subtasks.
    #[arg(long, env = "FERRY_KUBE_NO_SUBTASKS")]
    pub kube_no_subtasks: bool,
    /// How long a Kubernetes pod may stay Pending (image pull, no node fits), or an AWS Batch
    /// job waiting to run, before its attempt ends; `runner.pendingDeadlineSeconds` overrides it
    /// per task.
    #[arg(long, env = "FERRY_PENDING_DEADLINE", value_name = "DURATION", default_value = "5m", value_parser = ferry_connect::service::duration)]
    pub pending_deadline: Duration,
    /// The dashboard URL of the Ray cluster whose Jobs API runs `runner: ray` tasks that name
    /// no `address` (http://HEAD:8265); `ferry up` serves ray tasks when it is given
    #[arg(long, env = "FERRY_RAY_ADDRESS", value_name = "URL")]
    pub ray_address: Option<String>,
    /// Where the ray launcher makes each attempt's directory (working directory, input and
    /// output files, entrypoint script): the cluster's nodes must see it at the same path
    /// [default: DATA_DIR/ray/ray]
    #[arg(long, env = "FERRY_RAY_WORK_DIR", value_name = "DIR")]
    pub ray_work_dir: Option<PathBuf>,
    /// The AWS region of the aws-batch launcher [default: AWS_REGION, else the AWS profile's]
    #[arg(long, env = "FERRY_AWS_REGION", value_name = "REGION")]
    pub aws_region: Option<String>,
    /// The endpoint every AWS call of the aws-batch launcher goes to instead of AWS's own (a
    /// local server of the AWS APIs) [default: AWS_ENDPOINT_URL, else AWS]
    #[arg(long, env = "FERRY_AWS_ENDPOINT_URL", value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    /// The AWS Batch job queue of `runner: aws-batch` tasks that name neither `jobQueue` nor
    /// `computeEnvironment`; `ferry up` serves aws-batch tasks when this or
    /// --aws-batch-compute-environment is given
    #[arg(long, env = "FERRY_AWS_BATCH_JOB_QUEUE", value_name = "NAME")]
    pub aws_batch_job_queue: Option<String>,
    /// The AWS Batch compute environment (never created by ferry) on which the aws-batch
    /// launcher creates and reuses the job queue `ferry-<environment>` for tasks that name no
    /// queue
    #[arg(long, env = "FERRY_AWS_BATCH_COMPUTE_ENVIRONMENT", value_name = "NAME")]
    pub aws_batch_compute_environment: Option<String>,
    /// How often the aws-batch launcher reads the state of every job in flight (one
    /// DescribeJobs call per 100 jobs)
    #[arg(long, env = "FERRY_AWS_BATCH_POLL_INTERVAL", value_name = "DURATION", default_value = "2s", value_parser = ferry_connect::service::duration)]
    pub aws_batch_poll_interval: Duration,
    /// The SQS queue (its URL) that an EventBridge rule delivers "Batch Job State Change"
    /// events to: the aws-batch launcher reads a job's state as soon as one names it, and polls
    /// every --aws-batch-poll-interval only as the fallback (set that longer then, e.g. 30s)
    #[arg(long, env = "FERRY_AWS_BATCH_EVENTS_QUEUE", value_name = "URL")]
    pub aws_batch_events_queue: Option<String>,
    /// The S3 bucket (s3://BUCKET[/PREFIX]) the aws-batch launcher stages each attempt's input
    /// files, outputs and output files in, under a prefix per attempt removed when it ends;
    /// without one, tasks with inputFiles or outputFiles are refused
    #[arg(long, env = "FERRY_AWS_BATCH_STAGING", value_name = "URL")]
    pub aws_batch_staging: Option<String>,
    /// The Google Cloud project of `runner: google-batch` tasks that name none; `ferry up` serves
    /// google-batch tasks when this and --google-region are given
    #[arg(long, env = "FERRY_GOOGLE_PROJECT", value_name = "PROJECT")]
    pub google_project: Option<String>,
    /// The region of `runner: google-batch` tasks that name none (europe-west1)
    #[arg(long, env = "FERRY_GOOGLE_REGION", value_name = "REGION")]
    pub google_region: Option<String>,
    /// The Cloud Storage bucket (gs://BUCKET[/PREFIX]) the google-batch launcher stages each
    /// attempt's input files, secrets, outputs and output files in, mounted into its job, under
    /// a prefix per attempt removed when it ends; without one, tasks with inputFiles,
    /// outputFiles or secrets are refused unless their runner names a bucket
    #[arg(long, env = "FERRY_GOOGLE_BATCH_STAGING", value_name = "URL")]
    pub google_batch_staging: Option<String>,
    /// The service account (email) google-batch jobs run as when their runner names none
    /// [default: the project's Compute Engine default service account]
    #[arg(long, env = "FERRY_GOOGLE_BATCH_SERVICE_ACCOUNT", value_name = "EMAIL")]
    pub google_batch_service_account: Option<String>,
    /// How often the google-batch launcher reads the state of every job in flight (one
    /// jobs.list call per region and 1,000 jobs)
    #[arg(long, env = "FERRY_GOOGLE_BATCH_POLL_INTERVAL", value_name = "DURATION", default_value = "2s", value_parser = ferry_connect::service::duration)]
    pub google_batch_poll_interval: Duration,
    /// Where the Batch API answers instead of Google's (a test server)
    #[arg(
        long,
        env = "FERRY_GOOGLE_BATCH_ENDPOINT",
        value_name = "URL",
        default_value = "https://batch.googleapis.com"
    )]
    pub google_batch_endpoint: String,
    /// Where the Cloud Logging API answers instead of Google's
    #[arg(
        long,
        env = "FERRY_GOOGLE_LOGGING_ENDPOINT",
        value_name = "URL",
        default_value = "https://logging.googleapis.com"
    )]
    pub google_logging_endpoint: String,
    /// Where the Cloud Storage JSON API answers instead of Google's (an emulator)
    #[arg(
        long,
        env = "FERRY_GOOGLE_STORAGE_ENDPOINT",
        value_name = "URL",
        default_value = "https://storage.googleapis.com"
    )]
    pub google_storage_endpoint: String,
    /// The Pub/Sub topic (projects/P/topics/T) every google-batch job publishes its state
    /// changes on; with --google-batch-subscription, the launcher reads a job's state as soon as
    /// one names it, and polls every --google-batch-poll-interval only as the fallback
    #[arg(long, env = "FERRY_GOOGLE_BATCH_TOPIC", value_name = "TOPIC")]
    pub google_batch_topic: Option<String>,
    /// The launcher's subscription (projects/P/subscriptions/S) of --google-batch-topic
    #[arg(long, env = "FERRY_GOOGLE_BATCH_SUBSCRIPTION", value_name = "SUBSCRIPTION")]
    pub google_batch_subscription: Option<String>,
    /// Where the Pub/Sub API answers instead of Google's (an emulator)
    #[arg(
        long,
        env = "FERRY_GOOGLE_PUBSUB_ENDPOINT",
        value_name = "URL",
        default_value = "https://pubsub.googleapis.com"
    )]
    pub google_pubsub_endpoint: String,
    /// Send no credentials to the Google endpoints (a test server or an emulator) [default:
    /// GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS naming a key file, else the
    /// application default credentials, else the metadata server]
    #[arg(long, env = "FERRY_GOOGLE_ANONYMOUS")]
    pub google_anonymous: bool,
    /// The Docker engine's address (unix:///path or tcp://host:port) [default: DOCKER_HOST, else
    /// the local socket]
    #[arg(long, env = "FERRY_DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
    /// Do not serve docker tasks in `ferry up`, even when a Docker engine answers.
    #[arg(long, env = "FERRY_NO_DOCKER")]
    pub no_docker: bool,
    /// Do not serve kubernetes tasks in `ferry up`, even when a cluster is configured and its
    /// API answers.
    #[arg(long, env = "FERRY_NO_KUBERNETES")]
    pub no_kubernetes: bool,
    /// Attempts running at once.
    #[arg(long, env = "FERRY_MAX_PARALLEL", value_name = "N", default_value_t = 64)]
    pub max_parallel: usize,
    /// Time a cancelled or timed-out task gets between SIGTERM and SIGKILL.
    #[arg(long, env = "FERRY_KILL_GRACE", value_name = "DURATION", default_value = "10s", value_parser = ferry_connect::service::duration)]
    pub kill_grace: Duration,
    /// Where output files are copied [default: DATA_DIR/artifacts]
    #[arg(long, env = "FERRY_ARTIFACT_DIR", value_name = "DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// Store output files in this bucket instead of the artifact directory:
    /// s3://BUCKET[/PREFIX] (credentials and AWS_ENDPOINT_URL, AWS_REGION from the environment)
    /// or gs://BUCKET[/PREFIX] (GOOGLE_SERVICE_ACCOUNT or the application default credentials);
    /// files are kept as PREFIX/JOB/TASK/ATTEMPT/PATH and named by their s3:// or gs:// URI
    #[arg(long, env = "FERRY_ARTIFACT_STORE", value_name = "URL")]
    pub artifact_store: Option<String>,
    /// Remove output files stored in the artifact directory longer ago than this (and the
    /// directories that leaves empty), in a sweep every 5 minutes; links are never followed
    /// [default: keep for ever]
    #[arg(long, env = "FERRY_ARTIFACT_RETENTION", value_name = "DURATION", value_parser = ferry_connect::service::duration)]
    pub artifact_retention: Option<Duration>,
    /// Most bytes of output files a namespace's jobs may keep in the artifact directory, as
    /// NAME=BYTES (jobs without a namespace are in `default`; `*=BYTES` for every namespace
    /// not named); an attempt whose files would pass it keeps none and fails, saying so.
    /// Repeat the flag, or separate with commas.
    #[arg(long = "namespace-artifact-quota", env = "FERRY_NAMESPACE_ARTIFACT_QUOTA", value_name = "NAME=BYTES", value_delimiter = ',', value_parser = ferry_runtime::quota::parse_bytes)]
    pub namespace_artifact_quotas: Vec<(String, u64)>,
    /// A secrets file, readable by its owner only (NAME=value lines, or a YAML or JSON map
    /// whose values may be {value, namespaces, flows}); FERRY_SECRET_<NAME> variables are read
    /// as well, the file wins on a name in both.
    #[arg(long, env = "FERRY_SECRETS_FILE", value_name = "PATH")]
    pub secrets_file: Option<PathBuf>,
    /// Also pass this variable of the launcher's environment to tasks (repeatable; NAME or
    /// PREFIX*). By default tasks get only PATH, HOME, USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ
    /// and TMPDIR.
    #[arg(long, env = "FERRY_PASS_ENV", value_name = "NAME", value_delimiter = ',')]
    pub pass_env: Vec<String>,
    /// Run tasks as this user (name, uid or uid:gid); needs a launcher running as root.
    #[arg(long, env = "FERRY_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
    /// Do not put each slot's processes in a cgroup; find leftover processes by their
    /// FERRY_ATTEMPT_ID instead.
    #[arg(long, env = "FERRY_NO_CGROUPS")]
    pub no_cgroups: bool,
    /// Consumer group; every local launcher of one deployment shares it.
    #[arg(
        long,
        env = "FERRY_LAUNCHER_GROUP",
        value_name = "NAME",
        default_value = DEFAULT_GROUP
    )]
    pub launcher_group: String,
}

impl Flags {
    /// The launcher's configuration, keeping its state in `data_dir`; fails when the secrets
    /// file cannot be read.
    pub fn config(&self, data_dir: &Path) -> Result<Config> {
        let mut config = Config::new(data_dir);
        self.apply(&mut config.service, BACKEND);
        if !self.pass_env.is_empty() {
            config.pass_env = self.pass_env.clone();
        }
        if let Some(user) = &self.run_as {
            config.run_as = Some(user.clone());
        }
        config.cgroups = !self.no_cgroups;
        Ok(config)
    }

    /// Sets what every launcher takes from these flags on `service`, the settings of the
    /// launcher of `backend`: the local launcher's consumer group is `--launcher-group`, and
    /// another backend's is named after it (`NAME-docker`) when it is not the default.
    pub fn apply(&self, service: &mut Service, backend: &str) {
        if let Some(path) = &self.secrets_file {
            service.secrets_file = Some(path.clone());
        }
        if let Some(dir) = &self.artifact_dir {
            service.artifact_dir = Some(dir.clone());
        }
        service.artifact_retention = self.artifact_retention;
        service.artifact_store = self.artifact_store.clone();
        service.artifact_quotas =
            ferry_runtime::NamespaceLimits::new(self.namespace_artifact_quotas.iter().cloned());
        service.max_parallel = self.max_parallel;
        service.kill_grace = self.kill_grace;
        if backend == BACKEND {
            service.group = self.launcher_group.clone();
        } else if self.launcher_group != DEFAULT_GROUP {
            service.group = format!("{}-{backend}", self.launcher_group);
        }
    }
}
