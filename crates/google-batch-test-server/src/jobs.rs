//! Jobs: the typed view of the part of a Job body this server acts on, its validation into a
//! [`Plan`] the runner follows, the status it reports, and the store of jobs by parent
//! (`projects/P/locations/L`).
//!
//! A job is kept as the JSON it was created with (unknown fields and all, as Batch echoes
//! them) next to its typed [`JobStatus`], and the two are put together on every read.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::filter::{Op, Term};
use crate::time::{parse_duration, rfc3339};

/// The zone every task "runs" in, as status events name it.
pub const ZONE: &str = "test-zone";

/// The one task group's id, as Batch names the first.
pub const GROUP: &str = "group0";

/// An int64 field, which Google's JSON sends as a string and clients sometimes as a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Int64 {
    Number(i64),
    Text(String),
}

impl Int64 {
    fn get(&self, field: &str) -> Result<i64, ApiError> {
        match self {
            Int64::Number(n) => Ok(*n),
            Int64::Text(s) => s
                .parse()
                .map_err(|_| ApiError::invalid_argument(format!("{field}: `{s}` is not an int64"))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobView {
    #[serde(default)]
    task_groups: Vec<TaskGroupView>,
    allocation_policy: Option<AllocationPolicyView>,
    logs_policy: Option<LogsPolicyView>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskGroupView {
    task_spec: Option<TaskSpecView>,
    task_count: Option<Int64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskSpecView {
    #[serde(default)]
    runnables: Vec<RunnableView>,
    compute_resource: Option<ComputeResourceView>,
    max_run_duration: Option<String>,
    #[serde(default)]
    volumes: Vec<VolumeView>,
    environment: Option<EnvironmentView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunnableView {
    container: Option<ContainerView>,
    environment: Option<EnvironmentView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerView {
    image_uri: Option<String>,
    entrypoint: Option<String>,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvironmentView {
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    secret_variables: BTreeMap<String, String>,
    encrypted_variables: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputeResourceView {
    cpu_milli: Option<Int64>,
    memory_mib: Option<Int64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeView {
    gcs: Option<GcsView>,
    nfs: Option<Value>,
    device_name: Option<String>,
    mount_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GcsView {
    remote_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocationPolicyView {
    #[serde(default)]
    instances: Vec<InstancePolicyOrTemplateView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstancePolicyOrTemplateView {
    policy: Option<InstancePolicyView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstancePolicyView {
    #[serde(default)]
    accelerators: Vec<AcceleratorView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AcceleratorView {
    #[serde(rename = "type")]
    kind: Option<String>,
    count: Option<Int64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogsPolicyView {
    destination: Option<String>,
}

/// A GCS volume of the task: `gs://bucket/prefix` as seen at `mount_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsVolume {
    pub bucket: String,
    /// The object name prefix, without a trailing `/`; empty for the whole bucket.
    pub prefix: String,
    pub mount_path: String,
}

/// A `container.volumes` entry, `HOST:CONTAINER[:MODE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: String,
    pub container: String,
    pub mode: Option<String>,
}

/// What running a job takes, checked once at create.
#[derive(Debug, Clone)]
pub struct Plan {
    pub image: String,
    /// The entrypoint, when it replaces the image's.
    pub entrypoint: Option<String>,
    pub commands: Vec<String>,
    /// The task's environment then the runnable's (which wins), without Batch's own variables.
    pub env: BTreeMap<String, String>,
    /// `container.volumes`; when empty, each of `gcs` is bound at its mount path.
    pub binds: Vec<Bind>,
    pub gcs: Vec<GcsVolume>,
    pub cpu_milli: Option<i64>,
    pub memory_mib: Option<i64>,
    pub max_run_duration: Option<Duration>,
    /// The GPUs asked for, when any are: the job can never be scheduled here.
    pub gpus: Option<String>,
}

/// The Pub/Sub topics a job's `notifications` ask its state changes (`JOB_STATE_CHANGED`) to be
/// published on, checked; `pubsub_served` says whether this server has a Pub/Sub to publish to.
/// Task state changes (`TASK_STATE_CHANGED`) are accepted and not published.
pub fn notification_topics(body: &Value, pubsub_served: bool) -> Result<Vec<String>, ApiError> {
    let Some(list) = body.get("notifications") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| ApiError::invalid_argument("notifications: must be a list"))?;
    let mut topics = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let topic = n.get("pubsubTopic").and_then(Value::as_str).unwrap_or("");
        let parts: Vec<&str> = topic.split('/').collect();
        if !(parts.len() == 4
            && parts[0] == "projects"
            && parts[2] == "topics"
            && !parts[1].is_empty()
            && !parts[3].is_empty())
        {
            return Err(ApiError::invalid_argument(format!(
                "notifications[{i}].pubsubTopic: `{topic}` is not projects/PROJECT/topics/TOPIC"
            )));
        }
        let kind = n
            .get("message")
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        match kind {
            "JOB_STATE_CHANGED" => topics.push(topic.to_string()),
            "TASK_STATE_CHANGED" => {}
            other => {
                return Err(ApiError::invalid_argument(format!(
                    "notifications[{i}].message.type: `{other}` is not JOB_STATE_CHANGED or TASK_STATE_CHANGED"
                )));
            }
        }
    }
    if !topics.is_empty() && !pubsub_served {
        return Err(ApiError::invalid_argument(
            "notifications: this test server was started without a Pub/Sub endpoint to publish them to",
        ));
    }
    Ok(topics)
}

/// Checks a Job body and makes the plan to run it, or says which field is wrong.
pub fn plan(body: &Value, gcs_served: bool) -> Result<Plan, ApiError> {
    let job: JobView = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::invalid_argument(format!("the body is not a Job: {e}")))?;
    if let Some(labels) = &job.labels {
        for key in labels.keys() {
            if key.is_empty() || key.len() > 63 {
                return Err(ApiError::invalid_argument(format!(
                    "labels: key `{key}` must be 1 to 63 characters long"
                )));
            }
        }
    }
    let group = match job.task_groups.as_slice() {
        [group] => group,
        [] => {
            return Err(ApiError::invalid_argument(
                "taskGroups: exactly one task group is required",
            ));
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "taskGroups: only one task group is supported",
            ));
        }
    };
    if let Some(count) = &group.task_count {
        let count = count.get("taskGroups[0].taskCount")?;
        if count != 1 {
            return Err(ApiError::invalid_argument(format!(
                "taskGroups[0].taskCount: {count}: this test server runs one task per job"
            )));
        }
    }
    let spec = group
        .task_spec
        .as_ref()
        .ok_or_else(|| ApiError::invalid_argument("taskGroups[0].taskSpec is required"))?;
    let runnable = match spec.runnables.as_slice() {
        [runnable] => runnable,
        [] => {
            return Err(ApiError::invalid_argument(
                "taskGroups[0].taskSpec.runnables must not be empty",
            ));
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "taskGroups[0].taskSpec.runnables: this test server runs one runnable per task",
            ));
        }
    };
    let container = runnable.container.as_ref().ok_or_else(|| {
        ApiError::invalid_argument("taskGroups[0].taskSpec.runnables[0].container is required: this test server runs container runnables only")
    })?;
    let image = container
        .image_uri
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_argument("taskGroups[0].taskSpec.runnables[0].container.imageUri is required")
        })?;
    let mut env = BTreeMap::new();
    for (field, e) in [
        ("taskGroups[0].taskSpec.environment", &spec.environment),
        (
            "taskGroups[0].taskSpec.runnables[0].environment",
            &runnable.environment,
        ),
    ] {
        let Some(e) = e else { continue };
        if !e.secret_variables.is_empty() {
            return Err(ApiError::invalid_argument(format!(
                "{field}.secretVariables: Secret Manager is not served by this test server; pass the values in variables"
            )));
        }
        if e.encrypted_variables.is_some() {
            return Err(ApiError::invalid_argument(format!(
                "{field}.encryptedVariables: Cloud KMS is not served by this test server; pass the values in variables"
            )));
        }
        env.extend(e.variables.clone());
    }
    let mut gcs = Vec::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let field = format!("taskGroups[0].taskSpec.volumes[{i}]");
        let mount_path = v
            .mount_path
            .clone()
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| {
                ApiError::invalid_argument(format!("{field}.mountPath must be an absolute path"))
            })?;
        let Some(g) = &v.gcs else {
            let kind = if v.nfs.is_some() {
                "nfs"
            } else if v.device_name.is_some() {
                "deviceName"
            } else {
                "a volume without a source"
            };
            return Err(ApiError::invalid_argument(format!(
                "{field}: {kind} is not supported by this test server, which serves gcs volumes only"
            )));
        };
        if !gcs_served {
            return Err(ApiError::invalid_argument(format!(
                "{field}.gcs: this test server was started without a GCS endpoint (Options::gcs_endpoint, --gcs-endpoint)"
            )));
        }
        let remote = g.remote_path.as_deref().unwrap_or("");
        let remote = remote.strip_prefix("gs://").unwrap_or(remote);
        let (bucket, prefix) = remote.split_once('/').unwrap_or((remote, ""));
        if bucket.is_empty() {
            return Err(ApiError::invalid_argument(format!(
                "{field}.gcs.remotePath must be BUCKET or BUCKET/PREFIX, got `{remote}`"
            )));
        }
        gcs.push(GcsVolume {
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
            mount_path: mount_path.trim_end_matches('/').to_string(),
        });
    }
    let mut binds = Vec::new();
    for (i, v) in container.volumes.iter().enumerate() {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, target, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] if matches!(*m, "ro" | "rw") => (*h, *c, Some(m.to_string())),
            _ => {
                return Err(ApiError::invalid_argument(format!(
                    "taskGroups[0].taskSpec.runnables[0].container.volumes[{i}]: `{v}` is not HOST:CONTAINER[:ro|rw]"
                )));
            }
        };
        if !host.starts_with('/') || !target.starts_with('/') {
            return Err(ApiError::invalid_argument(format!(
                "taskGroups[0].taskSpec.runnables[0].container.volumes[{i}]: `{v}`: both paths must be absolute"
            )));
        }
        binds.push(Bind {
            host: host.to_string(),
            container: target.to_string(),
            mode,
        });
    }
    let resources = spec.compute_resource.as_ref();
    let cpu_milli = resources
        .and_then(|r| r.cpu_milli.as_ref())
        .map(|c| c.get("taskGroups[0].taskSpec.computeResource.cpuMilli"))
        .transpose()?
        .filter(|c| *c > 0);
    let memory_mib = resources
        .and_then(|r| r.memory_mib.as_ref())
        .map(|m| m.get("taskGroups[0].taskSpec.computeResource.memoryMib"))
        .transpose()?
        .filter(|m| *m > 0);
    let max_run_duration = match &spec.max_run_duration {
        None => None,
        Some(d) => Some(parse_duration(d).ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "taskGroups[0].taskSpec.maxRunDuration: `{d}` is not a duration such as \"3600s\" or \"1.5s\""
            ))
        })?),
    };
    let mut asked = Vec::new();
    for (i, instance) in job
        .allocation_policy
        .iter()
        .flat_map(|a| &a.instances)
        .enumerate()
    {
        for (j, a) in instance.policy.iter().flat_map(|p| &p.accelerators).enumerate() {
            let count = match &a.count {
                Some(c) => c.get(&format!(
                    "allocationPolicy.instances[{i}].policy.accelerators[{j}].count"
                ))?,
                None => 0,
            };
            if count > 0 {
                asked.push(format!(
                    "{count} x {}",
                    a.kind.as_deref().unwrap_or("unspecified accelerator")
                ));
            }
        }
    }
    match job.logs_policy.as_ref().and_then(|l| l.destination.as_deref()) {
        None | Some("DESTINATION_UNSPECIFIED" | "CLOUD_LOGGING" | "PATH") => {}
        Some(other) => {
            return Err(ApiError::invalid_argument(format!(
                "logsPolicy.destination: `{other}` is not one of DESTINATION_UNSPECIFIED, CLOUD_LOGGING, PATH"
            )));
        }
    }
    Ok(Plan {
        image,
        entrypoint: container.entrypoint.clone().filter(|e| !e.is_empty()),
        commands: container.commands.clone(),
        env,
        binds,
        gcs,
        cpu_milli,
        memory_mib,
        max_run_duration,
        gpus: (!asked.is_empty()).then(|| asked.join(", ")),
    })
}

/// `^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`, Batch's rule for job ids.
pub fn valid_job_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// A job's state, as Batch spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Queued,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    DeletionInProgress,
    CancellationInProgress,
    Cancelled,
}

impl State {
    const ALL: [State; 8] = [
        State::Queued,
        State::Scheduled,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::DeletionInProgress,
        State::CancellationInProgress,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "QUEUED",
            State::Scheduled => "SCHEDULED",
            State::Running => "RUNNING",
            State::Succeeded => "SUCCEEDED",
            State::Failed => "FAILED",
            State::DeletionInProgress => "DELETION_IN_PROGRESS",
            State::CancellationInProgress => "CANCELLATION_IN_PROGRESS",
            State::Cancelled => "CANCELLED",
        }
    }

    fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job has ended: nothing will change it but a delete.
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub event_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_execution: Option<TaskExecution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_state: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskExecution {
    pub exit_code: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskGroupStatus {
    /// Tasks by state, int64 as strings.
    pub counts: BTreeMap<&'static str, String>,
    pub instances: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub state: State,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status_events: Vec<StatusEvent>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub task_groups: BTreeMap<&'static str, TaskGroupStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_duration: Option<String>,
}

/// Why a job's runner is told to stop; a later reason overrides an earlier one of lower rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    Cancel,
    Delete,
    /// The server is going away: stop at once, sync nothing.
    Shutdown,
}

/// How the API reaches a job's runner.
#[derive(Debug, Clone)]
pub struct Runner {
    pub stop: CancellationToken,
    pub why: Arc<Mutex<Option<Stop>>>,
}

impl Runner {
    pub fn new(parent: &CancellationToken) -> Runner {
        Runner {
            stop: parent.child_token(),
            why: Arc::new(Mutex::new(None)),
        }
    }

    pub fn request(&self, why: Stop) {
        {
            let mut w = self.why.lock().unwrap_or_else(|e| e.into_inner());
            *w = Some(w.map_or(why, |old| old.max(why)));
        }
        self.stop.cancel();
    }

    pub fn reason(&self) -> Option<Stop> {
        *self.why.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Who a job is, for the runner and the logs.
#[derive(Debug, Clone)]
pub struct JobKey {
    pub project: String,
    pub location: String,
    pub id: String,
    pub uid: String,
}

impl JobKey {
    pub fn parent(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.location)
    }

    pub fn name(&self) -> String {
        format!("{}/jobs/{}", self.parent(), self.id)
    }

    pub fn task_group(&self) -> String {
        format!("{}/taskGroups/{GROUP}", self.name())
    }

    pub fn task_id(&self) -> String {
        format!("{}-{GROUP}-0", self.uid)
    }
}

/// A stored job.
#[derive(Debug)]
pub struct JobRecord {
    /// The body as created, with the output-only fields set at create.
    pub body: Map<String, Value>,
    pub status: JobStatus,
    pub update_time: DateTime<Utc>,
    /// The `requestId` that created it: a retry with it gets the job back.
    pub request_id: Option<String>,
    /// The order of creation, which lists follow.
    pub seq: u64,
    pub key: JobKey,
    /// The instance "the VM" is, as status events name it.
    pub instance: String,
    /// The topics its state changes are published on, and where to send them for that.
    pub notify: Option<(Vec<String>, crate::pubsub::Outbox)>,
}

impl JobRecord {
    pub fn to_json(&self) -> Value {
        let mut body = self.body.clone();
        body.insert(
            "status".into(),
            serde_json::to_value(&self.status).unwrap_or(Value::Null),
        );
        body.insert("updateTime".into(), Value::String(rfc3339(self.update_time)));
        Value::Object(body)
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.body
            .get("labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn push(&mut self, event: StatusEvent) {
        self.status.status_events.push(event);
        self.update_time = Utc::now();
    }

    /// Moves the job to `to`, with Batch's event for it and `why` after its description.
    pub fn set_state(&mut self, to: State, why: Option<&str>) {
        let from = self.status.state;
        let mut description = format!(
            "Job state is set from {from} to {to} for job {}.",
            self.key.name()
        );
        if let Some(why) = why {
            description.push(' ');
            description.push_str(why);
        }
        self.status.state = to;
        if let Some((topics, outbox)) = &self.notify {
            for topic in topics {
                outbox.publish(crate::pubsub::Notice {
                    topic: topic.clone(),
                    attributes: BTreeMap::from([
                        ("JobName".to_string(), self.key.name()),
                        ("JobUID".to_string(), self.key.uid.clone()),
                        ("Type".to_string(), "JOB_STATE_CHANGED".to_string()),
                        ("NewJobState".to_string(), to.as_str().to_string()),
                    ]),
                    data: description.clone(),
                });
            }
        }
        self.push(StatusEvent {
            kind: "STATUS_CHANGED".into(),
            description,
            event_time: rfc3339(Utc::now()),
            task_execution: None,
            task_state: None,
        });
    }

    /// A task-level event: the task moved from `from` to `to` on this job's instance.
    /// Returns the description, which the job's own failure event quotes.
    pub fn task_event(
        &mut self,
        from: &str,
        to: &'static str,
        exit_code: Option<i64>,
        why: Option<&str>,
    ) -> String {
        let mut description = format!(
            "Task state is updated from {from} to {to} on zones/{ZONE}/instances/{}",
            self.instance
        );
        if let Some(why) = why {
            description.push_str(&format!(" {why}"));
        }
        if let Some(code) = exit_code {
            description.push_str(&format!(" with exit code {code}"));
        }
        description.push('.');
        self.push(StatusEvent {
            kind: "STATUS_CHANGED".into(),
            description: description.clone(),
            event_time: rfc3339(Utc::now()),
            task_execution: exit_code.map(|exit_code| TaskExecution { exit_code }),
            task_state: Some(to),
        });
        description
    }

    /// An event that is not a state change (why a job waits).
    pub fn note(&mut self, kind: &str, description: String) {
        self.push(StatusEvent {
            kind: kind.into(),
            description,
            event_time: rfc3339(Utc::now()),
            task_execution: None,
            task_state: None,
        });
    }

    /// The task group's status: its one task in `task_state`.
    pub fn set_task(&mut self, task_state: &'static str) {
        let instances = vec![serde_json::json!({
            "machineType": "ferry-test",
            "provisioningModel": "STANDARD",
            "taskPack": "1",
        })];
        self.status.task_groups.insert(
            GROUP,
            TaskGroupStatus {
                counts: BTreeMap::from([(task_state, "1".to_string())]),
                instances,
            },
        );
        self.update_time = Utc::now();
    }

    /// Whether the job matches every term of a list filter; the terms were checked by
    /// [`check_list_filter`].
    pub fn matches(&self, terms: &[Term]) -> bool {
        let labels = self.labels();
        terms.iter().all(|t| {
            let actual = match t.field.as_str() {
                "name" => Some(self.key.name()),
                "status.state" => Some(self.status.state.as_str().to_string()),
                f => f.strip_prefix("labels.").and_then(|k| labels.get(k).cloned()),
            };
            match (actual, t.op) {
                (Some(a), op) => op.holds(a.as_str().cmp(t.value.as_str())),
                (None, Op::Ne) => true,
                (None, _) => false,
            }
        })
    }
}

/// Refuses the terms a jobs list filter cannot have here.
pub fn check_list_filter(terms: &[Term]) -> Result<(), ApiError> {
    for t in terms {
        let field_ok = t.field == "name"
            || t.field == "status.state"
            || t.field.strip_prefix("labels.").is_some_and(|k| !k.is_empty());
        if !field_ok || !matches!(t.op, Op::Eq | Op::Ne | Op::Has) {
            return Err(ApiError::invalid_argument(format!(
                "filter: `{t}` is not supported by this test server, which accepts terms labels.KEY=\"VALUE\", name=\"…\" and status.state=\"STATE\" (with = or !=) joined by AND"
            )));
        }
        if t.field == "status.state" && State::parse(&t.value).is_none() {
            return Err(ApiError::invalid_argument(format!(
                "filter: `{}` is not a job state",
                t.value
            )));
        }
    }
    Ok(())
}

/// The jobs, by parent then id, and the runners of those still running.
#[derive(Debug, Default)]
pub struct Store {
    jobs: HashMap<String, BTreeMap<String, JobRecord>>,
    pub runners: HashMap<String, Runner>,
    next_seq: u64,
}

impl Store {
    pub fn get(&self, parent: &str, id: &str) -> Option<&JobRecord> {
        self.jobs.get(parent)?.get(id)
    }

    pub fn get_mut(&mut self, parent: &str, id: &str) -> Option<&mut JobRecord> {
        self.jobs.get_mut(parent)?.get_mut(id)
    }

    /// The job `key` names, if it is still that job (and not a new one of the same id).
    pub fn of(&mut self, key: &JobKey) -> Option<&mut JobRecord> {
        self.get_mut(&key.parent(), &key.id)
            .filter(|r| r.key.uid == key.uid)
    }

    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub fn insert(&mut self, record: JobRecord) {
        self.jobs
            .entry(record.key.parent())
            .or_default()
            .insert(record.key.id.clone(), record);
    }

    pub fn remove(&mut self, key: &JobKey) {
        let parent = key.parent();
        if let Some(jobs) = self.jobs.get_mut(&parent)
            && jobs.get(&key.id).is_some_and(|r| r.key.uid == key.uid)
        {
            jobs.remove(&key.id);
            if jobs.is_empty() {
                self.jobs.remove(&parent);
            }
        }
    }

    /// The jobs of `parent` in order of creation.
    pub fn list(&self, parent: &str) -> Vec<&JobRecord> {
        let mut jobs: Vec<&JobRecord> = self
            .jobs
            .get(parent)
            .into_iter()
            .flat_map(|j| j.values())
            .collect();
        jobs.sort_by_key(|r| r.seq);
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(spec: Value) -> Value {
        json!({"taskGroups": [{"taskSpec": spec}]})
    }

    #[test]
    fn job_ids_follow_batchs_rule() {
        for ok in ["a", "job-1", "a1", &"a".repeat(63)] {
            assert!(valid_job_id(ok), "{ok}");
        }
        for bad in ["", "1a", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(!valid_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn plans_merge_the_environment_and_name_the_wrong_field() {
        let p = plan(
            &body(json!({
                "environment": {"variables": {"A": "task", "B": "task"}},
                "runnables": [{"container": {"imageUri": "img", "commands": ["-c", "true"]},
                    "environment": {"variables": {"A": "runnable"}}}],
                "computeResource": {"cpuMilli": "500", "memoryMib": 64},
                "maxRunDuration": "2.5s",
            })),
            false,
        )
        .unwrap();
        assert_eq!(p.env["A"], "runnable");
        assert_eq!(p.env["B"], "task");
        assert_eq!((p.cpu_milli, p.memory_mib), (Some(500), Some(64)));
        assert_eq!(p.max_run_duration, Some(Duration::from_millis(2500)));
        let err = |spec: Value| plan(&body(spec), false).unwrap_err().message;
        assert!(err(json!({"runnables": []})).contains("runnables must not be empty"));
        assert!(err(json!({"runnables": [{"container": {}}]})).contains("container.imageUri"));
        assert!(
            err(json!({"runnables": [{"container": {"imageUri": "i"},
                "environment": {"secretVariables": {"A": "projects/p/secrets/s/versions/1"}}}]}))
            .contains("Secret Manager")
        );
        assert!(
            err(json!({"runnables": [{"container": {"imageUri": "i"}}],
                "volumes": [{"gcs": {"remotePath": "b/p"}, "mountPath": "/mnt/disks/b"}]}))
            .contains("without a GCS endpoint")
        );
    }
}
