//! The `data` of every ferry event, and the types they share with the flow format.
//!
//! Field names are camelCase on the wire. Each payload derives a JSON Schema; `schemas/` at the
//! repository root holds the generated files and a test keeps them in step with these types.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::template::Template;

// ----------------------------------------------------------------------------------------------
// Shared with the flow format
// ----------------------------------------------------------------------------------------------

/// Where a task runs. In a flow, `runner: local` is short for `runner: { type: local }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Runner {
    /// A process on the launcher's machine.
    Local(LocalRunner),
    /// A container on a Docker engine.
    Docker(ImageRunner),
    /// A Kubernetes Job.
    Kubernetes(KubernetesRunner),
    /// An AWS Batch job.
    AwsBatch(AwsBatchRunner),
    /// A Google Batch job.
    GoogleBatch(GoogleBatchRunner),
    /// A long-running `ferry agent` in a named cluster.
    Agent(AgentRunner),
    /// A job on a Ray cluster, submitted through its Jobs REST API.
    Ray(RayRunner),
}

/// Every runner type, as written in a flow.
pub const RUNNER_TYPES: &[&str] = &[
    "local",
    "docker",
    "kubernetes",
    "aws-batch",
    "google-batch",
    "agent",
    "ray",
];

impl Runner {
    /// The backend name: the runner's `type`, which also names the dispatch topic.
    pub fn backend(&self) -> &'static str {
        match self {
            Runner::Local(_) => "local",
            Runner::Docker(_) => "docker",
            Runner::Kubernetes(_) => "kubernetes",
            Runner::AwsBatch(_) => "aws-batch",
            Runner::GoogleBatch(_) => "google-batch",
            Runner::Agent(_) => "agent",
            Runner::Ray(_) => "ray",
        }
    }

    /// The backend whose launchers receive the task: the runner type, or for an agent task
    /// the exact request (`agent.CLUSTER.TASK.MAJOR.MINOR`, [`crate::agent::backend`]). It
    /// names the dispatch and cancel topics. An agent runner whose fields name no request
    /// (the planner refuses those) goes to `agent`, which no agent serves.
    pub fn route(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Runner::Agent(a) => match a.task_ref() {
                Ok(task) => crate::agent::backend(&a.cluster, &task).into(),
                Err(_) => crate::agent::RUNNER.into(),
            },
            other => other.backend().into(),
        }
    }
}

impl Default for Runner {
    fn default() -> Self {
        Runner::Local(LocalRunner {})
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalRunner {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageRunner {
    /// The container image, e.g. `python:3.12-slim`.
    pub image: String,
    /// When to pull the image: `always`, `missing` (the default) or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// The network the container joins: `none`, `host`, `bridge` or a network's name (the
    /// engine's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The user the command runs as: a name, a uid, or `uid:gid` (the image's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The command's working directory in the container, an absolute path whose parent exists
    /// in the image; input files are put there (`/ferry` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Host directories or named volumes mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ContainerMount>,
}

/// When a container runner pulls its image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull every time, so that a moving tag is fresh.
    Always,
    /// Pull only when the engine does not have the image.
    #[default]
    Missing,
    /// Never pull: the image must be on the engine already.
    Never,
}

/// A host directory or named volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerMount {
    /// An absolute path on the engine's host (a bind mount), or a volume's name.
    pub source: String,
    /// An absolute path in the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl ImageRunner {
    /// A runner of `image` with every other parameter left to its default.
    pub fn new(image: impl Into<String>) -> Self {
        ImageRunner {
            image: image.into(),
            pull_policy: None,
            network: None,
            user: None,
            working_dir: None,
            mounts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesRunner {
    /// The container image of the Job's pod.
    pub image: String,
    /// The namespace the Job is created in (the launcher's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The service account the pod runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// When the kubelet pulls the image: `always`, `missing` (`IfNotPresent`, the default) or
    /// `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Secrets holding registry credentials for the image, by name, in the Job's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Node labels the pod's node must have (`nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The pod's priority class (`priorityClassName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// The command's working directory in the container, an absolute path (`/ferry` when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// How long the pod may stay Pending (image pull, no node fits) before the attempt fails,
    /// in seconds (the launcher's `--pending-deadline` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pending_deadline_seconds: Option<u64>,
}

/// A taint a Kubernetes pod tolerates, as in a pod spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// The taint's key; absent with `operator: Exists` tolerates every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (the default) or `Exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; absent matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// With `NoExecute`: how long the pod stays bound after the taint appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// A task run as an AWS Batch job: one job per attempt, from a job definition per image,
/// resources, platform and roles that is registered once and reused. `resources.cpu`,
/// `resources.memory` and `resources.gpu` are the job's vCPUs, memory and GPUs (on Fargate,
/// one of its valid combinations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsBatchRunner {
    /// The container image of the job definition.
    pub image: String,
    /// The Batch job queue the job is submitted to. When absent, a queue named after the
    /// compute environment (`ferry-<environment>`) is created on first use and reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_queue: Option<String>,
    /// The compute environment (name or ARN) of the queue ferry creates when `jobQueue` is
    /// absent; never created by ferry. The launcher's `--aws-batch-compute-environment` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_environment: Option<String>,
    /// What the compute environment runs on: `fargate` (the default) or `ec2`. It decides the
    /// job definition's platform capability and which resources are valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<AwsBatchPlatform>,
    /// The IAM role the job's container assumes (its AWS permissions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/"))]
    pub job_role_arn: Option<String>,
    /// The IAM role the container agent uses to pull the image and write logs (required by
    /// AWS on Fargate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/"))]
    pub execution_role_arn: Option<String>,
    /// How long the job may wait RUNNABLE (no capacity in the compute environment, a request
    /// no instance fits) before the attempt fails, in seconds (the launcher's
    /// `--pending-deadline` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pending_deadline_seconds: Option<u64>,
    /// S3 bucket for staged inputs and collected outputs, in the job's region: its name, or
    /// `s3://BUCKET[/PREFIX]` (the launcher's `--aws-batch-staging` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The AWS region the job runs in, e.g. `eu-west-1` (the launcher's `--aws-region` when
    /// absent). Its queue, compute environment, job definition, log stream and `bucket` are
    /// that region's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[a-z]{2,4}(-[a-z]{2,4})?-(east|west|north|south|central|northeast|northwest|southeast|southwest)-[0-9]{1,2}$"
    ))]
    pub region: Option<String>,
    /// Fargate only: whether the job's task gets a public IP address
    /// (`networkConfiguration.assignPublicIp`). A job in a public subnet without a NAT gateway
    /// needs one to pull its image. Batch's default (no address) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_public_ip: Option<bool>,
    /// Fargate only: the Fargate platform version the job runs on, `LATEST` or a version such
    /// as `1.4.0` (Batch's default, `LATEST`, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(LATEST|[0-9]+\.[0-9]+\.[0-9]+)$"))]
    pub platform_version: Option<String>,
    /// Fargate only: the job's ephemeral storage in GiB, 21 to 200 (Fargate's 20 GiB when
    /// absent).
    #[serde(
        default,
        rename = "ephemeralStorageGiB",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 21, max = 200))]
    pub ephemeral_storage_gib: Option<u32>,
}

/// What an AWS Batch compute environment runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AwsBatchPlatform {
    /// Serverless containers: fractional vCPUs in fixed combinations with memory, no GPUs.
    #[default]
    Fargate,
    /// Instances of the compute environment: whole vCPUs, any memory that fits, GPUs.
    Ec2,
}

/// A task run as a Google Batch job: one job per attempt, one task of one container.
/// `resources.cpu` and `resources.memory` are the task's `computeResource`; `resources.gpu`
/// with `resources.gpuType` (`nvidia-tesla-t4`, `nvidia-l4`) the VM's accelerators.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GoogleBatchRunner {
    /// The container image of the Batch job.
    pub image: String,
    /// The Google Cloud project (the launcher's `--google-project` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The region the job runs in, e.g. `europe-west1` (the launcher's `--google-region` when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Cloud Storage bucket for staged inputs and collected outputs: its name, or
    /// `gs://BUCKET[/PREFIX]` (the launcher's `--google-batch-staging` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The Compute Engine machine type of the job's VM (`e2-standard-4`); Batch picks one that
    /// fits the resources when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub machine_type: Option<String>,
    /// `standard` (the default) or `spot` VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_model: Option<GoogleBatchProvisioning>,
    /// The email of the service account the job's VM runs as (its Google Cloud permissions,
    /// including the staging bucket's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The VPC network of the job's VM (`projects/P/global/networks/N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The subnetwork of the job's VM (`projects/P/regions/R/subnetworks/S`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnetwork: Option<String>,
    /// Gives the job's VM no external IP address (it then needs Private Google Access or a
    /// NAT to reach Google's APIs and the image's registry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_external_ip: bool,
    /// A Compute Engine reservation the job's VM is taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// How long the job may stay QUEUED or SCHEDULED (no capacity for its machine type or
    /// GPUs) before the attempt fails, in seconds (the launcher's `--pending-deadline` when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pending_deadline_seconds: Option<u64>,
}

/// The kind of VM a Google Batch job runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GoogleBatchProvisioning {
    #[default]
    Standard,
    /// Cheaper VMs Compute Engine may take back at any time: the attempt is then `lost` and
    /// retried outside the task's budget.
    Spot,
}

/// A task run by a `ferry agent` of a named cluster, which registered it: the agent's command
/// for it runs, with the task's `command` (if any) appended as arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRunner {
    /// The cluster whose agents run this task: lowercase letters, digits, `-` and `_`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))]
    pub cluster: String,
    /// The registered task it runs, `NAME@MAJOR.MINOR`: an agent registering the same name with
    /// the same major version and a minor at least this one runs it.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}@[0-9]{1,6}\.[0-9]{1,2}$"))]
    pub task: String,
}

impl AgentRunner {
    /// The task it asks for, or why its fields name none.
    pub fn task_ref(&self) -> Result<crate::agent::TaskRef, String> {
        crate::agent::check_name(&self.cluster).map_err(|e| format!("cluster {e}"))?;
        self.task.parse().map_err(|e| format!("task: {e}"))
    }
}

/// A task run as a Ray job: its command is the job's entrypoint, run by a shell on a node of the
/// cluster; `resources.cpu`, `resources.gpu` and `resources.memory` are the entrypoint's
/// (`entrypoint_num_cpus`, `entrypoint_num_gpus`, `entrypoint_memory`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RayRunner {
    /// The URL of the cluster's dashboard, where its Jobs API answers (`http://head:8265`); the
    /// launcher's `--ray-address` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub address: Option<String>,
    /// Python packages the job's runtime environment installs before the command runs
    /// (`runtime_env.pip`), as pip requirement specifiers (`requests==2.32.3`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip: Vec<String>,
    /// Custom Ray resources the entrypoint reserves (`entrypoint_resources`), by name: e.g.
    /// `{ "accelerator_type:T4": 0.001 }` to land on a node with that GPU model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_resources: BTreeMap<String, f64>,
}

/// Compute a task asks for. Backends that cannot honour a request reject the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPUs, fractions allowed (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub cpu: Option<f64>,
    /// Memory as a Kubernetes-style quantity: `512Mi`, `2Gi`, `1G`, or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"))]
    pub memory: Option<String>,
    /// GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// The GPU model, as the platform names it (`nvidia-tesla-t4`, `nvidia-l4`): a node label
    /// on Kubernetes, an accelerator type on Google Batch. A backend that can count GPUs but
    /// not choose their model refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"))]
    pub gpu_type: Option<String>,
}

impl Resources {
    /// The memory asked for, in bytes. The error says what a quantity looks like.
    pub fn memory_bytes(&self) -> Result<Option<u64>, String> {
        self.memory.as_deref().map(memory_bytes).transpose()
    }

    /// The GPUs asked for, with their model: `None` when none are (a count of 0 asks for none).
    /// A model without a count is an error, as is a model no platform could name.
    pub fn gpus(&self) -> Result<Option<Gpus>, String> {
        if let Some(t) = &self.gpu_type
            && !gpu_type_ok(t)
        {
            return Err(format!(
                "gpuType `{}` is not a GPU model name: 1 to 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit",
                t.escape_debug()
            ));
        }
        match (self.gpu.unwrap_or(0), &self.gpu_type) {
            (0, Some(t)) => Err(format!(
                "gpuType `{t}` names a GPU model but no GPUs are asked for: set resources.gpu"
            )),
            (0, None) => Ok(None),
            (count, kind) => Ok(Some(Gpus {
                count,
                kind: kind.clone(),
            })),
        }
    }
}

/// GPUs a task asks for, typed: how many, and of which model when it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpus {
    pub count: u32,
    pub kind: Option<String>,
}

fn gpu_type_ok(t: &str) -> bool {
    let b = t.as_bytes();
    let ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    (1..=63).contains(&b.len())
        && b.iter().all(ok)
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Bytes in a Kubernetes-style memory quantity: `512Mi`, `2Gi`, `1G`, `1.5Gi`, or bytes.
pub fn memory_bytes(q: &str) -> Result<u64, String> {
    let shown: String = q.chars().take(40).collect();
    let bad = || {
        format!(
            "`{shown}` is not a memory quantity: write bytes or a number with a unit Ki, Mi, Gi, Ti, k, M, G or T, e.g. `512Mi`, `2Gi`"
        )
    };
    const UNITS: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let (num, mult) = UNITS
        .iter()
        .find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let (int, frac) = num.split_once('.').unwrap_or((num, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = (value * mult).ceil();
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("`{shown}` is more memory than can be expressed"));
    }
    Ok(bytes as u64)
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    #[default]
    Constant,
    Exponential,
}

/// Retries of a task, resolved: durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub attempts: u32,
    pub backoff: Backoff,
    /// Delay before the second attempt.
    pub initial_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            backoff: Backoff::Constant,
            initial_ms: 1000,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next` (2 for the first retry). Capped at one hour.
    pub fn delay_ms(&self, next: u32) -> u64 {
        let retries = next.saturating_sub(2);
        let d = match self.backoff {
            Backoff::Constant => self.initial_ms,
            Backoff::Exponential => self.initial_ms.saturating_mul(1u64 << retries.min(30)),
        };
        d.min(3_600_000)
    }
}

// ----------------------------------------------------------------------------------------------
// Intake and planning
// ----------------------------------------------------------------------------------------------

/// The flow a submission runs: its source text (YAML or JSON), or the flow as a JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FlowSource {
    Text(String),
    Object(Map<String, Value>),
}

/// `dev.ferry.job.submitted`: run a flow with these inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSubmitted {
    /// The job's id. When absent the event's own id is used, so a redelivered submission is
    /// still one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub flow: FlowSource,
    /// A name for the flow's source in error messages (usually its file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_name: Option<String>,
    #[serde(default)]
    pub inputs: Map<String, Value>,
}

/// A task of a planned job: inputs and defaults applied, templates parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedTask {
    pub id: String,
    pub runner: Runner,
    pub command: Vec<Template>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_files: BTreeMap<String, Template>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Template>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i32,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The namespace of a job whose flow names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `dev.ferry.job.planned`: a validated job, ready for the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobPlanned {
    pub job_id: String,
    pub flow_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Most tasks of this job running at once; absent means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub inputs: Map<String, Value>,
    pub tasks: Vec<PlannedTask>,
}

/// One problem found in a flow or a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// `file:line:column`, when the problem has a place in the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The field, as a path: `tasks[2].dependsOn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// `dev.ferry.job.rejected`: a submission that cannot become a job, with every reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRejected {
    pub job_id: String,
    pub problems: Vec<Problem>,
    /// The deployed flow's trigger and the event that would have started the job, when a
    /// trigger did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggeredBy>,
}

/// What started a triggered job: a deployed flow's trigger and the event that matched it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggeredBy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub flow_id: String,
    /// The deployed version of the flow.
    pub version: u64,
    /// The trigger's place in the flow's `triggers` list, from 0.
    pub trigger: u32,
    /// The CloudEvents `id`, `source` and `type` of the event.
    pub event_id: String,
    pub event_source: String,
    pub event_type: String,
}

// ----------------------------------------------------------------------------------------------
// The flow registry
// ----------------------------------------------------------------------------------------------

/// `dev.ferry.flow.deploy`: register a flow (a new version of it, if it is deployed already) so
/// that its triggers start jobs. Travels on intake, like a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowDeploy {
    pub flow: FlowSource,
    /// A name for the flow's source in error messages (usually its file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_name: Option<String>,
}

/// `dev.ferry.flow.undeploy`: remove a flow from the registry; its triggers start no more jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowUndeploy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub flow_id: String,
}

/// `dev.ferry.flow.deployed`: a flow version is in the registry; its triggers are live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowDeployed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub flow_id: String,
    /// 1 for the first deploy of the flow, one more for each deploy after it.
    pub version: u64,
    /// The flow's triggers, as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Value>,
    pub deployed_at_ms: i64,
}

/// `dev.ferry.flow.undeployed`: a flow left the registry; `version` was its last version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowUndeployed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub flow_id: String,
    pub version: u64,
    pub undeployed_at_ms: i64,
}

/// `dev.ferry.flow.rejected`: a deploy or undeploy request that changed nothing, with every
/// reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowRejected {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The flow's id, when the request names one that can be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    pub problems: Vec<Problem>,
}

// ----------------------------------------------------------------------------------------------
// Commands
// ----------------------------------------------------------------------------------------------

/// `dev.ferry.job.cancel`: stop a job; running attempts are cancelled, pending tasks never start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCancel {
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `dev.ferry.job.retry`: re-queue a finished job's failed and cancelled tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRetry {
    pub job_id: String,
}

// ----------------------------------------------------------------------------------------------
// Dispatch and attempt reports
// ----------------------------------------------------------------------------------------------

/// `dev.ferry.task.dispatched`: run one attempt of a task. Upstream outputs are filled in;
/// `{{ workingDir }}` and secrets are left for the launcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskDispatched {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub runner: Runner,
    pub command: Vec<Template>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Template>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_files: BTreeMap<String, Template>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The attempt's lease: the launcher sends `task.heartbeat` well within it.
    pub lease_ms: u64,
    /// When the task became ready (ms since the epoch), for dispatch latency.
    pub ready_at_ms: i64,
    /// The flow the job runs, for labels on the compute (absent in events of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// The job's namespace, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The task's priority (higher first), for backends with priority classes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i32,
}

/// `dev.ferry.task.cancel`: end an attempt's compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCancel {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `dev.ferry.task.accepted`: the attempt's compute exists but may wait on its platform
/// before it runs (a pod Pending, a batch job RUNNABLE). The attempt holds a lease from here,
/// renewed by heartbeats; its `timeout` starts at `task.started`. Backends whose compute runs
/// as soon as it is created (local processes, Docker containers) go straight to
/// `task.started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskAccepted {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub attempt: u32,
    pub accepted_at_ms: i64,
    /// Copied from the dispatch, so that observers can measure dispatch latency.
    pub ready_at_ms: i64,
    /// The launcher instance that holds the attempt.
    pub launcher: String,
    /// The compute, as its platform names it: `namespace/job`, a batch job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<String>,
}

/// `dev.ferry.task.started`: the attempt's compute is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStarted {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub attempt: u32,
    pub started_at_ms: i64,
    /// Copied from the dispatch, so that observers can measure dispatch latency.
    pub ready_at_ms: i64,
    /// The launcher instance that runs the attempt.
    pub launcher: String,
    /// The compute, as its platform names it: a container id, `namespace/job`, a process
    /// group. Absent in events of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<String>,
}

/// `dev.ferry.launcher.presence`: a launcher instance is up and serves a backend. Sent when it
/// starts, every [`PRESENCE_INTERVAL_MS`] while it runs, and once more (with `leaving`) when it
/// stops. A task whose backend no launcher has announced for a while fails with "no launcher
/// for backend … is running" instead of waiting for ever.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LauncherPresence {
    /// The runner type it serves (`local`, `docker`, `kubernetes`).
    pub backend: String,
    /// The instance (its CloudEvents `source`), unique among running launchers.
    pub instance: String,
    /// Attempts it runs at once at most.
    pub capacity: u32,
    /// Attempts it runs now.
    pub running: u32,
    pub at_ms: i64,
    /// It is stopping: it takes no more work.
    #[serde(default, skip_serializing_if = "is_default")]
    pub leaving: bool,
    /// The backends whose dispatches it receives, when not only `backend`: an agent's one per
    /// task version it serves (`agent.gpu.train.2.0`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serves: Vec<String>,
    /// An agent's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// An agent's registered tasks, `NAME@MAJOR.MINOR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
}

impl LauncherPresence {
    /// The backends whose dispatches it receives.
    pub fn served(&self) -> Vec<String> {
        if self.serves.is_empty() {
            vec![self.backend.clone()]
        } else {
            self.serves.clone()
        }
    }
}

/// How often a running launcher announces itself.
pub const PRESENCE_INTERVAL_MS: i64 = 10_000;

/// `dev.ferry.task.heartbeat`: the attempt is alive; renews its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskHeartbeat {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line a task printed, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub stream: Stream,
    pub time_ms: i64,
    pub text: String,
}

/// `dev.ferry.task.log`: consecutive lines of one attempt; `seq` numbers the first, from 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskLog {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub seq: u64,
    pub lines: Vec<LogLine>,
    /// The job's namespace, from its `task.dispatched` (absent when it has none, and in events
    /// of older launchers): what the log collector's per-namespace quotas count against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// The compute was lost (launcher restarted, node gone): not the task's fault.
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timedOut",
            Outcome::Cancelled => "cancelled",
            Outcome::Lost => "lost",
        }
    }
}

/// A file an attempt produced, copied to the artifact store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputFile {
    /// Path relative to the working directory.
    pub path: String,
    /// Where it is stored now (`file:///…`, `s3://…`).
    pub uri: String,
    pub size: u64,
}

/// `dev.ferry.task.finished`: an attempt ended and its compute was released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskFinished {
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub attempt: u32,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<OutputFile>,
    /// Lines the attempt logged in all: the log store holds seq 0..logLines once complete.
    pub log_lines: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: i64,
    /// Why the compute ended, in the platform's own word, where it gives one: `OOMKilled`,
    /// `DeadlineExceeded`, `ImagePullFailed`, `Evicted`, `Unschedulable`. For machines;
    /// `error` says it for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds the attempt held compute: from the launcher asking its platform for it to
    /// the attempt's end. What a platform bills by; absent where no compute was created
    /// (cancelled before its dispatch, refused, its create failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_ms: Option<u64>,
    /// Subtasks the attempt submitted (the file at `$FERRY_SUBTASKS`), in the flow's task
    /// format, as JSON: `id`, `runner`, `command`, `dependsOn` among them… Sent only by a
    /// succeeded attempt; the scheduler validates them like a flow's tasks and adds them to the
    /// job as `PARENT.ID`, and whatever depended on the parent then waits for them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<Map<String, Value>>,
}

impl TaskFinished {
    /// The report of an attempt that ended without a word from its compute: it never started
    /// (cancelled before its dispatch, refused, its compute could not be created), its compute
    /// vanished, or a timer ended it. It has no exit code, outputs or output files, and no log
    /// lines (set [`log_lines`](Self::log_lines) and [`started_at_ms`](Self::started_at_ms)
    /// where some were published before the end); `error` says what happened, for a person.
    ///
    /// Every service that reports an attempt in its compute's place builds the report here, so
    /// that such reports look the same whoever sends them.
    pub fn unreported(
        job_id: impl Into<String>,
        task_id: impl Into<String>,
        attempt_id: impl Into<String>,
        attempt: u32,
        outcome: Outcome,
        error: impl Into<String>,
        finished_at_ms: i64,
    ) -> Self {
        TaskFinished {
            job_id: job_id.into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.into(),
            attempt,
            outcome,
            exit_code: None,
            error: Some(error.into()),
            outputs: Map::new(),
            output_files: Vec::new(),
            log_lines: 0,
            started_at_ms: None,
            finished_at_ms,
            reason: None,
            compute_ms: None,
            subtasks: Vec::new(),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Lifecycle (public)
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        self != JobStatus::Running
    }
}

/// `dev.ferry.job.started|succeeded|failed|cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    pub job_id: String,
    pub flow_id: String,
    pub state: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub tasks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for dependencies or for room under the job's concurrency.
    Pending,
    /// An attempt was sent to a launcher.
    Dispatched,
    /// The attempt's compute runs.
    Running,
    /// The last attempt failed; another is due at `retryAtMs`.
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Dispatched => "dispatched",
            TaskStatus::Running => "running",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TaskStatus::Pending,
            "dispatched" => TaskStatus::Dispatched,
            "running" => TaskStatus::Running,
            "retrying" => TaskStatus::Retrying,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// `dev.ferry.task.retrying|succeeded|failed|cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskState {
    pub job_id: String,
    pub task_id: String,
    pub state: TaskStatus,
    /// Attempts made so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// On `task.succeeded`: the ids of the subtasks the attempt added to the job (each
    /// `TASK.ID`), pending. Tasks that depend on this one wait for them too, and for theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<String>,
    /// With `subtasks`: the backend each one runs on, in the same order — its runner type, or
    /// for an agent task the request it routes to (`agent.CLUSTER.TASK.MAJOR.MINOR`). Absent
    /// in events of older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtask_backends: Vec<String>,
}

/// `dev.ferry.tasks.cancelled|retrying`: many tasks of one job changing state together, which
/// would otherwise take one `task.*` event each. `tasks.cancelled` reports the tasks that had not
/// started when their job was cancelled or failed fast (a task whose attempt was running still
/// gets its own `task.cancelled` when the attempt has stopped); `tasks.retrying` the finished
/// tasks a job retry re-queued, in state `pending`. A job's tasks are spread over several such
/// events when they are many ([`TasksState::MAX_TASKS`] at most in one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TasksState {
    pub job_id: String,
    /// `cancelled` or `pending`.
    pub state: TaskStatus,
    /// Each task, with the attempts it has made so far.
    pub tasks: Vec<TaskAttempts>,
    /// Why they were cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the change was made.
    pub at_ms: i64,
}

impl TasksState {
    /// Most tasks one event carries: a task id is at most 200 bytes (a subtask's, with its
    /// parents' ids before it), so an event stays under about 250 KB, far below every broker's
    /// message limit (Kafka's default of 1 MB included).
    pub const MAX_TASKS: usize = 1000;
}

/// One task of a [`TasksState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskAttempts {
    pub task_id: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Accepts `null` as the type's default (YAML writes empty maps as `~` often enough).
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The JSON Schema of each event payload, by the schema file's stem (`task.dispatched`).
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    use schemars::schema_for;
    vec![
        ("job.submitted", schema_for!(JobSubmitted)),
        ("job.planned", schema_for!(JobPlanned)),
        ("job.rejected", schema_for!(JobRejected)),
        ("flow.deploy", schema_for!(FlowDeploy)),
        ("flow.undeploy", schema_for!(FlowUndeploy)),
        ("flow.deployed", schema_for!(FlowDeployed)),
        ("flow.undeployed", schema_for!(FlowUndeployed)),
        ("flow.rejected", schema_for!(FlowRejected)),
        ("job.cancel", schema_for!(JobCancel)),
        ("job.retry", schema_for!(JobRetry)),
        ("job.state", schema_for!(JobState)),
        ("task.dispatched", schema_for!(TaskDispatched)),
        ("task.cancel", schema_for!(TaskCancel)),
        ("task.accepted", schema_for!(TaskAccepted)),
        ("task.started", schema_for!(TaskStarted)),
        ("task.heartbeat", schema_for!(TaskHeartbeat)),
        ("task.log", schema_for!(TaskLog)),
        ("task.finished", schema_for!(TaskFinished)),
        ("task.state", schema_for!(TaskState)),
        ("tasks.state", schema_for!(TasksState)),
        ("launcher.presence", schema_for!(LauncherPresence)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreported_attempt_carries_only_its_error() {
        let f = TaskFinished::unreported("j", "t", "a", 2, Outcome::Lost, "compute vanished", 7);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "jobId": "j", "taskId": "t", "attemptId": "a", "attempt": 2, "outcome": "lost",
                "error": "compute vanished", "logLines": 0, "finishedAtMs": 7
            })
        );
    }

    #[test]
    fn resources_are_typed_once() {
        assert_eq!(memory_bytes("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("1.5Ki"), Ok(1536));
        assert_eq!(memory_bytes("2048"), Ok(2048));
        for bad in ["", "1.", ".5", "5X", "-1", "1e3", "Mi"] {
            assert!(memory_bytes(bad).is_err(), "{bad}");
        }
        let r: Resources = serde_json::from_str(r#"{"memory":"1Gi","gpu":2,"gpuType":"nvidia-l4"}"#).unwrap();
        assert_eq!(r.memory_bytes(), Ok(Some(1 << 30)));
        assert_eq!(
            r.gpus(),
            Ok(Some(Gpus {
                count: 2,
                kind: Some("nvidia-l4".into())
            }))
        );
        assert_eq!(Resources::default().gpus(), Ok(None));
        let typeless = Resources {
            gpu_type: Some("nvidia-l4".into()),
            ..Resources::default()
        };
        assert!(typeless.gpus().unwrap_err().contains("set resources.gpu"));
        let hostile = Resources {
            gpu: Some(1),
            gpu_type: Some("a/../b".into()),
            ..Resources::default()
        };
        assert!(hostile.gpus().unwrap_err().contains("not a GPU model name"));
    }

    #[test]
    fn runner_is_tagged_by_type() {
        let r: Runner = serde_json::from_str(r#"{"type":"aws-batch","image":"x","jobQueue":"q"}"#).unwrap();
        assert_eq!(r.backend(), "aws-batch");
        let err = serde_json::from_str::<Runner>(r#"{"type":"docker","imag":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("imag"), "{err}");
    }

    #[test]
    fn exponential_backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            backoff: Backoff::Exponential,
            initial_ms: 100,
        };
        assert_eq!(p.delay_ms(2), 100);
        assert_eq!(p.delay_ms(3), 200);
        assert_eq!(p.delay_ms(4), 400);
        let c = RetryPolicy {
            backoff: Backoff::Constant,
            ..p.clone()
        };
        assert_eq!(c.delay_ms(4), 100);
        let huge = RetryPolicy {
            initial_ms: u64::MAX / 2,
            ..p
        };
        assert_eq!(huge.delay_ms(40), 3_600_000);
    }

    #[test]
    fn every_event_type_has_a_schema() {
        let names: Vec<_> = schemas().into_iter().map(|(n, _)| n).collect();
        for (_, schema) in crate::kind::ALL {
            assert!(names.contains(schema), "{schema} has no schema");
        }
    }
}
