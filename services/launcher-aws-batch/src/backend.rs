//! The `aws-batch` backend: the launcher runtime's [`Backend`] over AWS Batch and CloudWatch Logs.
//!
//! Each attempt is one Batch job named from the attempt id ([`names::job_name`]) in the task's
//! region (its runner's `region`, else the launcher's) and job queue (its runner's `jobQueue`, else
//! `ferry-<compute environment>`, created on first use and reused). The job runs a job definition
//! named from a hash of everything it holds (image, platform, vCPUs, memory, GPUs, roles, Fargate's
//! network, platform version and storage: [`DefinitionSpec`]), looked up before it is registered
//! and registered once per region; the attempt's command and environment go in the job's container
//! overrides. The job is tagged with the job, task, attempt, flow, namespace and launcher, has
//! `retryStrategy.attempts` 1 (every retry is a ferry attempt) and, when the task has a timeout,
//! `timeout.attemptDurationSeconds` of it plus the kill grace (at least 60 s, AWS's least): ferry's
//! own timeout stops it first, Batch's ends it if no launcher is left to.
//!
//! SubmitJob takes no idempotency token. The runtime journals the reservation (region, queue and
//! job name) before [`Backend::create`] submits, and create looks before it submits: ListJobs with
//! a `JOB_NAME` filter finds a job of an earlier try, which is adopted. Two launchers that
//! submitted at once both find two jobs after their submit: both keep the one created first and
//! terminate the other, so one runs.
//!
//! Every call for an attempt goes to its region, with that region's clients ([`Regions`]); a
//! journal written before attempts had a region is read as the launcher's. States come from one
//! [`Poller`](crate::aws::Poller) per region describing every job in flight there, 100 per
//! DescribeJobs call, once per poll interval; no attempt polls on its own. With an events queue,
//! Batch's state changes (EventBridge → SQS, [`crate::events`]) bring the describe of the jobs they
//! name forward, and the interval is only the fallback. A job that waits (SUBMITTED, PENDING,
//! RUNNABLE, STARTING) longer than the pending deadline fails with the reason, and is terminated
//! when the attempt is released. A cancel or a timeout is TerminateJob (CancelJob does nothing to a
//! job that is starting or running), and waits until Batch says it ended.
//!
//! Output comes from the job's CloudWatch Logs stream (standard output and error merged, as the
//! awslogs driver writes them), read with forward tokens ([`crate::logs`]) and to its end before
//! the attempt is released. Jobs outlive the launcher ([`ShutdownPolicy::Detach`]): the next start
//! on the same journal adopts each, with its true outcome.
//!
//! Files go through S3 when the launcher has a staging bucket ([`crate::stage`]): input files,
//! `$FERRY_OUTPUTS`, `$FERRY_SUBTASKS` and output files, under a prefix per attempt that release
//! removes. Without one, a task with input or output files is refused before anything is submitted,
//! and its environment has no `FERRY_OUTPUTS`, so a task that writes outputs fails where it writes
//! them rather than succeeding without them. Secrets never go in a job's container overrides, which
//! anyone allowed DescribeJobs sees: they are staged too (the variables and the command that hold
//! one), else refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_batch::types::{
    AssignPublicIp, ComputeEnvironmentOrder, ContainerOverrides, ContainerProperties, EphemeralStorage,
    FargatePlatformConfiguration, JobDefinitionType, JobDetail, JobStatus, JqState, KeyValuePair,
    KeyValuesPair, NetworkConfiguration, PlatformCapability, ResourceRequirement, ResourceType,
    RetryStrategy,
};
use ferry_event::payload::{AwsBatchPlatform, AwsBatchRunner, Runner, Stream, TaskDispatched};
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use ferry_launcher::batch::{self, Filled};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::{Regional, Regions, Seen, fault, is_not_found};
use crate::logs::{self, Cursor};
use crate::names::{self, DefinitionSpec};
use crate::state::{failed, is_terminal, stream_name, waiting_state};

/// The runner type this backend serves; dispatches arrive on `dispatch.aws-batch`.
pub const BACKEND: &str = "aws-batch";

/// The job tag naming the launcher that submitted it.
pub const TAG_LAUNCHER: &str = "ferry.launcher";
/// The job tag holding the attempt id.
pub const TAG_ATTEMPT: &str = "ferry.attempt";

/// The log group the awslogs driver writes Batch jobs' output to unless a job definition says
/// otherwise.
pub const LOG_GROUP: &str = "/aws/batch/job";

/// The reason given with every TerminateJob of ferry's, so that its end is told from one
/// behind ferry's back.
const TERMINATED_BY_FERRY: &str = "ferry: the attempt was stopped";

/// The least `timeout.attemptDurationSeconds` AWS Batch accepts.
const MIN_BATCH_TIMEOUT: u64 = 60;

/// How long after a job ended its log stream may still be missing before it is taken to have
/// none (CloudWatch makes the stream with the first line; a job that wrote nothing has none).
const LOG_LATE: Duration = Duration::from_secs(10);

/// How often the log stream of a running job is fetched again, at most, while it brings lines.
const LOG_REFRESH: Duration = Duration::from_millis(500);

/// The longest wait between two fetches of the stream of a job that runs and writes nothing
/// (or whose stream does not exist yet): each fetch that brings nothing doubles the wait from
/// [`LOG_REFRESH`] up to this. GetLogEvents has a quota per account and region (25 calls a
/// second by default): a thousand quiet jobs must not spend it. A job seen ended is fetched at
/// once.
const LOG_IDLE_MAX: Duration = Duration::from_secs(16);

/// How the backend runs its jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This launcher's identity (its jobs' `ferry.launcher` tag).
    pub launcher: String,
    /// The job queue of tasks whose runner names none.
    pub job_queue: Option<String>,
    /// The compute environment of tasks whose runner names neither a queue nor an environment.
    pub compute_environment: Option<String>,
    /// How long a job may wait to run before its attempt fails.
    pub pending_deadline: Duration,
    /// The time a stopped job gets between SIGTERM and SIGKILL (Batch's own, not settable per
    /// job: used only to size the job's timeout).
    pub kill_grace: Duration,
    /// How often one DescribeJobs round reads every job in flight.
    pub poll_interval: Duration,
    /// The CloudWatch Logs group jobs write to.
    pub log_group: String,
    /// The SQS queue EventBridge delivers Batch's job state changes to, read as hints that
    /// bring a job's next DescribeJobs forward ([`crate::events`]).
    pub events_queue: Option<String>,
    /// Where attempts' files are staged; none: tasks with files are refused.
    pub staging: Option<crate::stage::Staging>,
}

impl Settings {
    pub fn new(launcher: impl Into<String>) -> Settings {
        Settings {
            launcher: launcher.into(),
            job_queue: None,
            compute_environment: None,
            pending_deadline: Duration::from_secs(600),
            kill_grace: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            log_group: LOG_GROUP.to_string(),
            events_queue: None,
            staging: None,
        }
    }
}

/// What the journal keeps of a Batch job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handle {
    /// The region it is (to be) submitted in: every call for it goes there, also after a
    /// restart with another `--aws-region`. Absent in journals written before attempts had a
    /// region (and when the launcher has none): the launcher's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The job queue it is (to be) submitted to.
    pub queue: String,
    /// Its name, from the attempt id.
    pub job_name: String,
    /// Its id, once it was submitted (or found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// How long it may wait to run, in seconds.
    pub pending_deadline_s: u64,
    /// The prefix of its staged files in the staging bucket, when it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// That bucket (`s3://BUCKET[/PREFIX]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_bucket: Option<String>,
}

/// The aws-batch backend. Cheap to clone.
#[derive(Clone)]
pub struct AwsBatch(Arc<Inner>);

/// A region and a name in it (of a queue, a job definition).
type InRegion = (String, String);

struct Inner {
    /// The clients of each region, the launcher's own first.
    regions: Arc<Regions>,
    settings: Settings,
    shutdown: ShutdownPolicy,
    stop: CancellationToken,
    /// Job definition ARNs by region and name, each looked up or registered once.
    definitions: Mutex<HashMap<InRegion, Arc<OnceCell<String>>>>,
    /// Job queues by region and name, each made ready once.
    queues: Mutex<HashMap<InRegion, Arc<OnceCell<()>>>>,
    /// Queues (by region) this run's attempts used: where [`Backend::list_owned`] looks.
    used_queues: Mutex<BTreeSet<InRegion>>,
    /// Each job's log stream as read so far, by job name.
    streams: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LogState>>>>,
    /// Exit codes read from ListJobs (DescribeJobs may lack them), by job id.
    exit_codes: Mutex<HashMap<String, Option<i32>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One job's log stream and what is known of its end.
struct LogState {
    pages: logs::Pages,
    /// Nothing more can come: the job ended and its stream was read to its end.
    complete: bool,
    /// The stream's name, once the job's details gave it.
    name: Option<String>,
    fetched: Option<Instant>,
    /// Fetches in a row that brought nothing.
    idle: u32,
    /// When the job was first seen ended with no stream to read.
    missing_since: Option<Instant>,
}

impl LogState {
    /// How long after the last fetch the next one is due, while the job runs.
    fn refresh(&self) -> Duration {
        (LOG_REFRESH * 2u32.saturating_pow(self.idle.min(8))).min(LOG_IDLE_MAX)
    }
}

impl AwsBatch {
    /// The backend over clients of `sdk` (credentials, region and endpoint as configured
    /// there; a task's `region` gets clients of its own, made from `sdk` with that region).
    /// Starts the job-state poller of the launcher's region on the current tokio runtime.
    pub fn new(sdk: &aws_config::SdkConfig, settings: Settings) -> AwsBatch {
        let stop = CancellationToken::new();
        let regions = Arc::new(Regions::new(sdk, settings.poll_interval, stop.clone()));
        regions.get(regions.home());
        if let Some(queue) = &settings.events_queue {
            // The launcher's own queue, in its own region, whatever region a job runs in.
            crate::events::listen(
                aws_sdk_sqs::Client::new(sdk),
                queue.clone(),
                regions.clone(),
                stop.clone(),
            );
        }
        AwsBatch(Arc::new(Inner {
            regions,
            settings,
            shutdown: ShutdownPolicy::Detach,
            stop,
            definitions: Mutex::default(),
            queues: Mutex::default(),
            used_queues: Mutex::default(),
            streams: Mutex::default(),
            exit_codes: Mutex::default(),
        }))
    }

    /// Terminates every running job when the launcher stops, reporting its attempt `lost`,
    /// rather than leaving it to the next start. Call before the backend is shared.
    pub fn kill_on_shutdown(mut self) -> AwsBatch {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.shutdown = ShutdownPolicy::Kill,
            None => debug_assert!(false, "kill_on_shutdown on a backend already shared"),
        }
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Whether the Batch API answers with `sdk`'s credentials, region and endpoint: one
    /// DescribeJobQueues call.
    pub async fn probe(sdk: &aws_config::SdkConfig) -> Result<(), String> {
        aws_sdk_batch::Client::new(sdk)
            .describe_job_queues()
            .max_results(1)
            .send()
            .await
            .map(drop)
            .map_err(|e| fault("the AWS Batch API refused DescribeJobQueues", e, false).to_string())
    }

    fn handle(&self, compute: &Compute) -> BackendResult<Handle> {
        compute.handle_as()
    }

    /// The clients of the region `h` is in.
    fn at(&self, h: &Handle) -> Arc<Regional> {
        self.0.regions.get(h.region.as_deref().unwrap_or(""))
    }

    /// The region a task's job runs in: its runner's `region`, checked, else the launcher's
    /// (empty when the launcher has none).
    fn region_of(&self, r: &AwsBatchRunner) -> BackendResult<String> {
        match r.region.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            Some(region) => {
                names::region(region).map_err(AttemptError::Task)?;
                Ok(region.to_string())
            }
            None => Ok(self.0.regions.home().to_string()),
        }
    }

    /// `region` as it is given to the staging bucket: `None` for the launcher's own.
    fn foreign<'a>(&self, region: Option<&'a str>) -> Option<&'a str> {
        region.filter(|r| !r.is_empty() && *r != self.0.regions.home())
    }

    /// The staging bucket of a task whose runner names `bucket` (reached in `region`);
    /// `None` when it has none.
    fn stage_store(
        &self,
        bucket: Option<&str>,
        region: Option<&str>,
    ) -> BackendResult<Option<ferry_artifacts::Store>> {
        match &self.0.settings.staging {
            Some(staging) => staging.for_task(bucket, self.foreign(region)),
            None => Ok(None),
        }
    }

    /// The staging bucket and prefix of an attempt that has them.
    fn staged(
        &self,
        h: &Handle,
    ) -> BackendResult<Option<(&crate::stage::Staging, ferry_artifacts::Store, String)>> {
        let (Some(staging), Some(prefix)) = (&self.0.settings.staging, &h.stage) else {
            return Ok(None);
        };
        let store = match &h.stage_bucket {
            Some(url) => staging.open(url, self.foreign(h.region.as_deref()))?,
            None => match &staging.default {
                Some(store) => store.clone(),
                None => return Ok(None),
            },
        };
        Ok(Some((staging, store, prefix.clone())))
    }

    fn remember_queue(&self, h: &Handle) {
        let region = h
            .region
            .clone()
            .unwrap_or_else(|| self.0.regions.home().to_string());
        lock(&self.0.used_queues).insert((region, h.queue.clone()));
    }

    /// The queue a task's job goes to in `region`, and the compute environment to create it
    /// on when ferry makes it. The launcher's defaults are taken by name in whatever region the
    /// task runs; an ARN of another region is refused.
    fn queue_of(&self, r: &AwsBatchRunner, region: &str) -> BackendResult<(String, Option<String>)> {
        let s = &self.0.settings;
        let (field, queue, ce) = if let Some(q) = r.job_queue.as_deref().filter(|q| !q.trim().is_empty()) {
            ("runner.jobQueue", q.to_string(), None)
        } else if let Some(ce) = r.compute_environment.as_deref().filter(|c| !c.trim().is_empty()) {
            (
                "runner.computeEnvironment",
                names::queue_name(ce),
                Some(ce.to_string()),
            )
        } else if let Some(q) = &s.job_queue {
            ("--aws-batch-job-queue", q.clone(), None)
        } else if let Some(ce) = &s.compute_environment {
            (
                "--aws-batch-compute-environment",
                names::queue_name(ce),
                Some(ce.clone()),
            )
        } else {
            return Err(AttemptError::Task(
                "runner.jobQueue and runner.computeEnvironment are both unset, and this aws-batch launcher has \
                 neither --aws-batch-job-queue nor --aws-batch-compute-environment: name the job queue, or the \
                 compute environment ferry makes a queue on (defaults.aws-batch in the flow sets them for every task)"
                    .into(),
            ));
        };
        let named = if ce.is_some() {
            ce.as_deref()
        } else {
            Some(queue.as_str())
        };
        if let Some((name, arn_region)) = named.and_then(|n| names::arn_region(n).map(|a| (n, a)))
            && !region.is_empty()
            && arn_region != region
        {
            return Err(AttemptError::Task(format!(
                "{field} {name} is in {arn_region}, and the job runs in {region} (runner.region, else the \
                 launcher's --aws-region): name a job queue or compute environment of {region}"
            )));
        }
        Ok((queue, ce))
    }

    /// Makes sure the queue `name` of `region` exists and is usable, creating it on `ce` when
    /// ferry owns it; once per queue for the launcher's life.
    async fn ready_queue(&self, region: &Regional, name: &str, ce: Option<&str>) -> BackendResult<()> {
        let key = (region.region.clone(), name.to_string());
        let cell = lock(&self.0.queues).entry(key).or_default().clone();
        let at = in_region(&region.region);
        cell.get_or_try_init(|| async {
            let found = region
                .batch
                .describe_job_queues()
                .job_queues(name)
                .send()
                .await
                .map_err(|e| fault(&format!("cannot look up AWS Batch job queue {name}{at}"), e, false))?;
            if let Some(q) = found.job_queues().first() {
                let state = q.state().map(|s| s.as_str()).unwrap_or("");
                if state != "ENABLED" {
                    return Err(AttemptError::Platform(format!(
                        "AWS Batch job queue {name}{at} is {state}: enable it (aws batch update-job-queue --state ENABLED)"
                    )));
                }
                return Ok(());
            }
            let Some(ce) = ce else {
                return Err(AttemptError::Task(format!(
                    "runner.jobQueue: AWS Batch job queue {name} does not exist{at}: create it, or name a compute \
                     environment in runner.computeEnvironment instead and ferry makes a queue on it"
                )));
            };
            let made = region
                .batch
                .create_job_queue()
                .job_queue_name(name)
                .state(JqState::Enabled)
                .priority(1)
                .compute_environment_order(
                    ComputeEnvironmentOrder::builder()
                        .order(1)
                        .compute_environment(ce)
                        .build(),
                )
                .tags("ferry.created-by", names::tag_value(&self.0.settings.launcher))
                .send()
                .await;
            match made {
                Ok(_) => tracing::info!(queue = name, compute_environment = ce, region = %region.region, "created AWS Batch job queue"),
                // Another launcher made it first.
                Err(e) if e.as_service_error().and_then(|s| aws_sdk_batch::error::ProvideErrorMetadata::message(s)).is_some_and(|m| m.contains("already exists")) => {}
                Err(e) => {
                    return Err(fault(
                        &format!("cannot create AWS Batch job queue {name} on compute environment {ce}{at}"),
                        e,
                        true,
                    ));
                }
            }
            // A new queue is CREATING until Batch validated it.
            let until = Instant::now() + Duration::from_secs(120);
            loop {
                let out = region
                    .batch
                    .describe_job_queues()
                    .job_queues(name)
                    .send()
                    .await
                    .map_err(|e| fault(&format!("cannot look up AWS Batch job queue {name}{at}"), e, false))?;
                let status = out
                    .job_queues()
                    .first()
                    .and_then(|q| q.status())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                match status.as_str() {
                    "VALID" => return Ok(()),
                    "INVALID" => {
                        let why = out
                            .job_queues()
                            .first()
                            .and_then(|q| q.status_reason())
                            .unwrap_or("no reason given");
                        return Err(AttemptError::Task(format!(
                            "AWS Batch job queue {name}, made on compute environment {ce}, is INVALID: {why} \
                             (runner.computeEnvironment)"
                        )));
                    }
                    _ if Instant::now() >= until => {
                        return Err(AttemptError::Unavailable(format!(
                            "AWS Batch job queue {name} is still {status} after 120 s"
                        )));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        })
        .await
        .map(|_| ())
    }

    /// The ARN of the job definition `spec` in `region`, looked up by its name or registered;
    /// once per definition and region for the launcher's life.
    async fn definition(&self, region: &Regional, spec: &DefinitionSpec) -> BackendResult<String> {
        let name = spec.name();
        let key = (region.region.clone(), name.clone());
        let cell = lock(&self.0.definitions).entry(key).or_default().clone();
        let at = in_region(&region.region);
        cell.get_or_try_init(|| async {
            let found = region
                .batch
                .describe_job_definitions()
                .job_definition_name(&name)
                .status("ACTIVE")
                .send()
                .await
                .map_err(|e| {
                    fault(
                        &format!("cannot look up AWS Batch job definition {name}{at}"),
                        e,
                        false,
                    )
                })?;
            if let Some(arn) = found
                .job_definitions()
                .iter()
                .max_by_key(|d| d.revision())
                .and_then(|d| d.job_definition_arn())
            {
                return Ok(arn.to_string());
            }
            let mut resources = vec![
                requirement(ResourceType::Vcpu, &spec.vcpus),
                requirement(ResourceType::Memory, &spec.memory_mib.to_string()),
            ];
            if spec.gpus > 0 {
                resources.push(requirement(ResourceType::Gpu, &spec.gpus.to_string()));
            }
            let container = ContainerProperties::builder()
                .image(&spec.image)
                .set_resource_requirements(Some(resources))
                .set_job_role_arn(spec.job_role_arn.clone())
                .set_execution_role_arn(spec.execution_role_arn.clone())
                .set_network_configuration(spec.assign_public_ip.map(|public| {
                    NetworkConfiguration::builder()
                        .assign_public_ip(AssignPublicIp::from(names::assign_public_ip(public)))
                        .build()
                }))
                .set_fargate_platform_configuration(spec.platform_version.as_ref().map(|v| {
                    FargatePlatformConfiguration::builder()
                        .platform_version(v)
                        .build()
                }))
                .set_ephemeral_storage(spec.ephemeral_storage_gib.map(|gib| {
                    EphemeralStorage::builder()
                        .size_in_gib(i32::try_from(gib).unwrap_or(i32::MAX))
                        .build()
                }))
                .build();
            let platform = match spec.platform {
                AwsBatchPlatform::Fargate => PlatformCapability::Fargate,
                AwsBatchPlatform::Ec2 => PlatformCapability::Ec2,
            };
            let out = region
                .batch
                .register_job_definition()
                .job_definition_name(&name)
                .r#type(JobDefinitionType::Container)
                .platform_capabilities(platform)
                .container_properties(container)
                .retry_strategy(RetryStrategy::builder().attempts(1).build())
                .tags("ferry.image", names::tag_value(&spec.image))
                .send()
                .await
                .map_err(|e| {
                    fault(
                        &format!(
                            "cannot register AWS Batch job definition {name} for image {}{at}",
                            spec.image
                        ),
                        e,
                        true,
                    )
                })?;
            tracing::info!(definition = name, image = %spec.image, region = %region.region, "registered AWS Batch job definition");
            out.job_definition_arn().map(str::to_string).ok_or_else(|| {
                AttemptError::Platform(format!(
                    "AWS Batch registered job definition {name}{at} without an ARN"
                ))
            })
        })
        .await
        .cloned()
    }

    /// The jobs named `h.job_name` in its queue, oldest first.
    async fn jobs_named(&self, h: &Handle) -> BackendResult<Vec<aws_sdk_batch::types::JobSummary>> {
        let region = self.at(h);
        let mut jobs = Vec::new();
        let mut token = None;
        loop {
            // With a filter, ListJobs returns jobs in every status.
            let out = region
                .batch
                .list_jobs()
                .job_queue(&h.queue)
                .filters(
                    KeyValuesPair::builder()
                        .name("JOB_NAME")
                        .values(&h.job_name)
                        .build(),
                )
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    fault(
                        &format!(
                            "cannot list AWS Batch jobs named {}{}",
                            h.job_name,
                            in_region(&region.region)
                        ),
                        e,
                        false,
                    )
                })?;
            jobs.extend(
                out.job_summary_list()
                    .iter()
                    .filter(|j| j.job_name() == Some(h.job_name.as_str()))
                    .cloned(),
            );
            match out.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        jobs.sort_by_key(|j| {
            (
                j.created_at().unwrap_or(i64::MAX),
                j.job_id().unwrap_or("").to_string(),
            )
        });
        for j in &jobs {
            if let (Some(id), Some(c)) = (j.job_id(), j.container()) {
                lock(&self.0.exit_codes).insert(id.to_string(), c.exit_code());
            }
        }
        Ok(jobs)
    }

    /// The attempt's job if one was submitted: the oldest of its name. Any younger one is a
    /// duplicate (two submits raced) and is terminated.
    async fn adopt(&self, h: &Handle) -> BackendResult<Option<Handle>> {
        let jobs = self.jobs_named(h).await?;
        let Some((keep, rest)) = jobs.split_first() else {
            return Ok(None);
        };
        for dup in rest {
            let Some(id) = dup.job_id() else { continue };
            if dup.status().is_some_and(is_terminal) {
                continue;
            }
            tracing::warn!(job = %h.job_name, duplicate = id, kept = keep.job_id().unwrap_or(""), "terminating a duplicate AWS Batch job of one attempt");
            self.terminate(h, id, "ferry: a duplicate job of the same attempt")
                .await?;
        }
        Ok(keep.job_id().map(|id| Handle {
            job_id: Some(id.to_string()),
            ..h.clone()
        }))
    }

    /// Terminates the job `job_id`, in the region of `h`.
    async fn terminate(&self, h: &Handle, job_id: &str, reason: &str) -> BackendResult<()> {
        let region = self.at(h);
        region
            .batch
            .terminate_job()
            .job_id(job_id)
            .reason(reason)
            .send()
            .await
            .map_err(|e| {
                fault(
                    &format!(
                        "cannot terminate AWS Batch job {job_id}{}",
                        in_region(&region.region)
                    ),
                    e,
                    false,
                )
            })?;
        Ok(())
    }

    /// The job as its region's poller's latest round saw it.
    async fn job(&self, h: &Handle) -> BackendResult<Option<Arc<JobDetail>>> {
        let Some(id) = &h.job_id else {
            return Ok(None);
        };
        Ok(match self.at(h).poller.state(id).await? {
            Seen::Job(j) => Some(j),
            Seen::Missing => None,
        })
    }

    /// The exit code of a job that ended: DescribeJobs's, else ListJobs's (some Batch
    /// implementations give it only there).
    async fn exit_code(&self, h: &Handle, job: &JobDetail) -> BackendResult<Option<i32>> {
        if let Some(code) = job.container().and_then(|c| c.exit_code()) {
            return Ok(Some(code));
        }
        let Some(id) = job.job_id() else { return Ok(None) };
        if let Some(code) = lock(&self.0.exit_codes).get(id).copied().flatten() {
            return Ok(Some(code));
        }
        self.jobs_named(h).await?;
        Ok(lock(&self.0.exit_codes).get(id).copied().flatten())
    }

    /// The attempt's state from its job's details.
    async fn state_of(&self, h: &Handle, job: &JobDetail) -> BackendResult<ComputeState> {
        let status = job.status().cloned().unwrap_or(JobStatus::Submitted);
        let name = &h.job_name;
        match status {
            JobStatus::Running => Ok(ComputeState::Running),
            JobStatus::Succeeded => Ok(ComputeState::Exited(Exit {
                code: Some(self.exit_code(h, job).await?.unwrap_or(0)),
                error: None,
                reason: None,
            })),
            JobStatus::Failed => {
                let code = self.exit_code(h, job).await?;
                Ok(failed(name, job, code))
            }
            waiting => {
                let state = waiting_state(
                    name,
                    &waiting,
                    job.created_at().unwrap_or_else(now_ms),
                    now_ms(),
                    Duration::from_secs(h.pending_deadline_s),
                    job.status_reason(),
                );
                // Past its deadline the attempt is over: the job is terminated now, so that it
                // never runs and its (empty) log ends.
                if let (ComputeState::Exited(_), Some(id)) = (&state, job.job_id()) {
                    self.terminate(h, id, "ferry: the job waited past its pending deadline")
                        .await?;
                }
                Ok(state)
            }
        }
    }

    fn log_state(&self, job_name: &str, cursor: &serde_json::Value) -> Arc<tokio::sync::Mutex<LogState>> {
        let mut streams = lock(&self.0.streams);
        streams
            .entry(job_name.to_string())
            .or_insert_with(|| {
                let cursor: Cursor = serde_json::from_value(cursor.clone()).unwrap_or_default();
                Arc::new(tokio::sync::Mutex::new(LogState {
                    pages: cursor.pages(),
                    complete: false,
                    name: None,
                    fetched: None,
                    idle: 0,
                    missing_since: None,
                }))
            })
            .clone()
    }

    /// The job's merged output from `from` on.
    async fn read_output(&self, h: &Handle, from: &LogPosition, max: usize) -> BackendResult<LogRead> {
        let state = self.log_state(&h.job_name, &from.cursor);
        let mut st = state.lock().await;
        if !st.pages.reaches(from.stdout) {
            // A cursor from another read (a restart raced another read): start over from it.
            let cursor: Cursor = serde_json::from_value(from.cursor.clone()).unwrap_or_default();
            st.pages = cursor.pages();
            st.complete = false;
        }
        let ended = h
            .job_id
            .as_deref()
            .is_some_and(|id| self.at(h).poller.seen_ended(id));
        let fresh = !ended && st.fetched.is_some_and(|at| at.elapsed() < st.refresh());
        if st.pages.drained_at(from.stdout) && !st.complete && !fresh {
            self.fetch_logs(h, &mut st).await?;
        }
        let (bytes, cursor) = st.pages.read(from.stdout, max);
        let complete = st.complete && st.pages.drained_at(from.stdout + bytes.len() as u64);
        Ok(LogRead {
            bytes,
            cursor: serde_json::to_value(Cursor::from(cursor)).unwrap_or_default(),
            complete,
        })
    }

    /// Fetches the stream's pages up to its end as it is now, and whether that is its end.
    async fn fetch_logs(&self, h: &Handle, st: &mut LogState) -> BackendResult<()> {
        // The job's state first: a job that had ended before its log was read has all of its
        // log in what is read.
        let job = self.job(h).await?;
        let ended_at = job.as_ref().and_then(|j| {
            j.status()
                .is_some_and(is_terminal)
                .then(|| j.stopped_at().unwrap_or_else(now_ms))
        });
        let ran = job.as_ref().is_some_and(|j| j.started_at().is_some());
        if st.name.is_none() {
            st.name = job.as_ref().and_then(|j| stream_name(j));
        }
        st.fetched = Some(Instant::now());
        // Nothing new until a page brings lines.
        st.idle = st.idle.saturating_add(1);
        let ended = job.is_none() || ended_at.is_some();
        let Some(stream) = st.name.clone() else {
            // No stream to read: a job that never ran has no output.
            if ended && !ran {
                st.complete = true;
            }
            return Ok(());
        };
        let region = self.at(h);
        loop {
            let out = region
                .logs
                .get_log_events()
                .log_group_name(&self.0.settings.log_group)
                .log_stream_name(&stream)
                .start_from_head(true)
                .set_next_token(st.pages.next().clone())
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) if is_not_found(&e) => {
                    // CloudWatch makes the stream with the job's first line (moto: when the
                    // job ends). One that ended and still has none after a while wrote nothing.
                    if ended {
                        let since = *st.missing_since.get_or_insert_with(Instant::now);
                        if !ran || since.elapsed() >= LOG_LATE {
                            st.complete = true;
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    return Err(fault(
                        &format!(
                            "cannot read the log of AWS Batch job {} ({} {stream}{})",
                            h.job_name,
                            self.0.settings.log_group,
                            in_region(&region.region)
                        ),
                        e,
                        false,
                    ));
                }
            };
            let messages: Vec<&str> = out.events().iter().map(|e| e.message().unwrap_or("")).collect();
            if !messages.is_empty() {
                st.idle = 0;
            }
            let new = logs::push(
                &mut st.pages,
                &messages,
                out.next_forward_token().map(str::to_string),
            );
            if !new {
                // The same token back: the stream's end as it is now.
                if ended {
                    st.complete = true;
                }
                return Ok(());
            }
        }
    }

    fn forget(&self, h: &Handle) {
        lock(&self.0.streams).remove(&h.job_name);
        if let Some(id) = &h.job_id {
            self.at(h).poller.forget(id);
            lock(&self.0.exit_codes).remove(id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    ferry_event::now_ms()
}

/// ` in REGION`, to say where in a message (nothing when the region is unknown).
fn in_region(region: &str) -> String {
    if region.is_empty() {
        String::new()
    } else {
        format!(" in {region}")
    }
}

fn requirement(kind: ResourceType, value: &str) -> ResourceRequirement {
    ResourceRequirement::builder().r#type(kind).value(value).build()
}

fn runner(d: &TaskDispatched) -> BackendResult<&AwsBatchRunner> {
    match &d.runner {
        Runner::AwsBatch(r) => Ok(r),
        other => Err(AttemptError::Task(format!(
            "the aws-batch launcher runs `runner: aws-batch` tasks, not `{}`",
            other.backend()
        ))),
    }
}

/// The job definition a task needs.
fn spec_of(d: &TaskDispatched, r: &AwsBatchRunner) -> BackendResult<DefinitionSpec> {
    let task = AttemptError::Task;
    let platform = r.platform.unwrap_or_default();
    let memory = d
        .resources
        .memory_bytes()
        .map_err(|why| task(format!("resources.memory: {why}")))?;
    let gpus = d
        .resources
        .gpus()
        .map_err(|why| task(format!("resources.{why}")))?;
    if let Some(kind) = gpus.as_ref().and_then(|g| g.kind.as_deref()) {
        return Err(task(format!(
            "resources.gpuType `{kind}`: AWS Batch counts a job's GPUs but cannot choose their model; choose it with \
             the instance types of the compute environment, and leave gpuType unset"
        )));
    }
    let count = gpus.map_or(0, |g| g.count);
    let (vcpus, memory_mib) = names::size(platform, d.resources.cpu, memory, count).map_err(task)?;
    // Fargate's own settings: an EC2 job's network, platform and disk are its instance's.
    if platform == AwsBatchPlatform::Ec2 {
        let set = [
            ("assignPublicIp", r.assign_public_ip.is_some()),
            ("platformVersion", r.platform_version.is_some()),
            ("ephemeralStorageGiB", r.ephemeral_storage_gib.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
            return Err(task(format!(
                "runner.{field} is refused on AWS Batch EC2: it is a Fargate setting (an EC2 job's network, platform \
                 and disk are those of its compute environment's instances): leave it out, or run on Fargate \
                 (runner.platform: fargate)"
            )));
        }
    }
    let platform_version = match r.platform_version.as_deref().map(str::trim) {
        Some(v) => {
            names::platform_version(v).map_err(task)?;
            Some(v.to_string())
        }
        None => None,
    };
    let (least, most) = names::FARGATE_EPHEMERAL_GIB;
    if let Some(gib) = r.ephemeral_storage_gib
        && !(least..=most).contains(&gib)
    {
        return Err(task(format!(
            "runner.ephemeralStorageGiB {gib} is refused: AWS Batch Fargate gives a job {least} to {most} GiB (leave it \
             out for Fargate's 20 GiB)"
        )));
    }
    Ok(DefinitionSpec {
        image: r.image.clone(),
        platform,
        vcpus,
        memory_mib,
        gpus: count,
        job_role_arn: r.job_role_arn.clone(),
        execution_role_arn: r.execution_role_arn.clone(),
        assign_public_ip: r.assign_public_ip,
        platform_version,
        ephemeral_storage_gib: r.ephemeral_storage_gib,
    })
}

/// What this backend refuses in a task's command and environment ([`batch::check`]).
const PLATFORM: batch::Platform = batch::Platform {
    backend: BACKEND,
    reader: "batch:DescribeJobs",
    staging: "runner.bucket, or the launcher's --aws-batch-staging s3://BUCKET[/PREFIX]",
    secret_store: "Or give the job's role (runner.jobRoleArn) access to the secret in AWS Secrets Manager and read \
                   it from the task",
    no_working_dir: "a Batch job runs in its image's working directory, which ferry does not know",
};

/// Batch's timeout for a task's: the task's plus the kill grace, whole seconds, at least
/// AWS's least. ferry's own timeout (from the job's start) stops the job first; Batch's ends it
/// when no launcher is left to.
pub fn batch_timeout(timeout_ms: Option<u64>, grace: Duration) -> Option<i32> {
    let ms = timeout_ms?;
    let secs = (ms + grace.as_millis() as u64)
        .div_ceil(1000)
        .max(MIN_BATCH_TIMEOUT);
    Some(i32::try_from(secs).unwrap_or(i32::MAX))
}

#[async_trait]
impl Backend for AwsBatch {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        self.0.shutdown
    }

    fn compute_name(&self, attempt_id: &str) -> String {
        names::job_name(attempt_id)
    }

    fn describe(&self, compute: &Compute) -> String {
        match self.handle(compute) {
            Ok(Handle {
                job_id: Some(id),
                queue,
                region,
                ..
            }) => format!(
                "{} (job {id} in queue {queue}{})",
                compute.name,
                in_region(region.as_deref().unwrap_or(self.0.regions.home()))
            ),
            _ => compute.name.clone(),
        }
    }

    /// A job waits in its queue (RUNNABLE) for capacity and its image (STARTING) before it runs.
    fn may_queue(&self) -> bool {
        true
    }

    fn check(&self, d: &TaskDispatched) -> BackendResult<()> {
        let r = runner(d)?;
        let task = |m: String| AttemptError::Task(m);
        if r.image.trim().is_empty() {
            return Err(task(
                "runner.image is empty: name the container image the job runs".into(),
            ));
        }
        let region = self.region_of(r)?;
        self.queue_of(r, &region)?;
        spec_of(d, r)?;
        if d.command.is_empty() {
            return Err(task("command is empty: give at least the program to run".into()));
        }
        for name in d.env.keys() {
            if name.is_empty() || name.contains(['=', '\0']) || name.starts_with("AWS_BATCH") {
                return Err(task(format!(
                    "env: {name:?} is not a variable the aws-batch backend can set (it must be non-empty, without \
                     '=' or NUL, and not start with AWS_BATCH, which Batch keeps for its own)"
                )));
            }
        }
        let staged = self.stage_store(r.bucket.as_deref(), Some(&region))?.is_some();
        if !staged {
            if let Some(name) = d.input_files.keys().next() {
                return Err(task(format!(
                    "inputFiles.{name}: no staging bucket to pass input files through: name one in runner.bucket \
                     (defaults.aws-batch.bucket for the whole flow), or start the launcher with --aws-batch-staging \
                     s3://BUCKET[/PREFIX]"
                )));
            }
            if let Some(p) = d.output_files.first() {
                return Err(task(format!(
                    "outputFiles {p:?}: no staging bucket to bring output files back through: name one in \
                     runner.bucket (defaults.aws-batch.bucket for the whole flow), or start the launcher with \
                     --aws-batch-staging s3://BUCKET[/PREFIX]"
                )));
            }
        }
        for name in d.input_files.keys() {
            ferry_flow::rules::input_file_name(name)
                .map_err(|why| task(format!("inputFiles: {name:?} is refused: {why}")))?;
        }
        batch::check(d, staged, &PLATFORM)
    }

    async fn reserve(&self, task: Task<'_>) -> BackendResult<Compute> {
        let r = runner(task.dispatch)?;
        let region = self.region_of(r)?;
        let (queue, ce) = self.queue_of(r, &region)?;
        let name = self.compute_name(task.attempt_id());
        let store = self.stage_store(r.bucket.as_deref(), Some(&region))?;
        let deadline = r
            .pending_deadline_seconds
            .map(Duration::from_secs)
            .unwrap_or(self.0.settings.pending_deadline);
        let h = Handle {
            region: Some(region).filter(|r| !r.is_empty()),
            queue,
            job_name: name.clone(),
            job_id: None,
            pending_deadline_s: deadline.as_secs().max(1),
            stage: store.as_ref().map(|_| batch::stage_prefix(task.dispatch)),
            stage_bucket: store.map(|s| s.url().to_string()),
        };
        self.ready_queue(&self.at(&h), &h.queue, ce.as_deref()).await?;
        self.remember_queue(&h);
        Compute::with_handle(name, &h)
    }

    async fn create(&self, task: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let d = task.dispatch;
        let r = runner(d)?;
        let h = self.handle(&reserved)?;
        // Look before submitting: a job of this name is this attempt's, from an earlier try.
        if let Some(found) = self.adopt(&h).await? {
            tracing::info!(job = %h.job_name, id = found.job_id.as_deref().unwrap_or(""), "adopted the AWS Batch job of an earlier try");
            return Compute::with_handle(reserved.name, &found);
        }
        // Everything of the task's is filled before anything is submitted: a template that
        // cannot be filled leaves no job.
        let filled = Filled::new(task)?;
        let mut env = filled.env.clone();
        let command = match self.staged(&h)? {
            Some((_, store, prefix)) => {
                let life = crate::stage::url_life(
                    Duration::from_secs(h.pending_deadline_s),
                    d.timeout_ms,
                    self.0.settings.kill_grace,
                );
                let (command, urls) = crate::stage::prepare(&store, task, &prefix, &filled, life).await?;
                env.extend(urls);
                command
            }
            // Never in the clear: an attempt reserved before the launcher had a staging bucket
            // has nowhere to put them.
            _ if filled.has_secrets() => {
                return Err(AttemptError::Task(
                    "the task uses secrets, and this attempt has no staging prefix to pass them through: a job's \
                     command and environment are shown to anyone allowed batch:DescribeJobs"
                        .into(),
                ));
            }
            _ => filled.command,
        };
        // The journaled region, the one the reservation was made in.
        let region = self.at(&h);
        let spec = spec_of(d, r)?;
        let definition = self.definition(&region, &spec).await?;
        let overrides = ContainerOverrides::builder()
            .set_command(Some(command))
            .set_environment(Some(
                env.into_iter()
                    .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
                    .collect(),
            ))
            .build();
        let namespace = d
            .namespace
            .as_deref()
            .unwrap_or(ferry_event::payload::DEFAULT_NAMESPACE);
        let mut submit = region
            .batch
            .submit_job()
            .job_name(&h.job_name)
            .job_queue(&h.queue)
            .job_definition(&definition)
            .container_overrides(overrides)
            .retry_strategy(RetryStrategy::builder().attempts(1).build())
            .propagate_tags(false)
            .tags("ferry.job", names::tag_value(&d.job_id))
            .tags("ferry.task", names::tag_value(&d.task_id))
            .tags(TAG_ATTEMPT, names::tag_value(&d.attempt_id))
            .tags("ferry.namespace", names::tag_value(namespace))
            .tags(TAG_LAUNCHER, names::tag_value(&self.0.settings.launcher));
        if let Some(flow) = &d.flow_id {
            submit = submit.tags("ferry.flow", names::tag_value(flow));
        }
        if let Some(secs) = batch_timeout(d.timeout_ms, self.0.settings.kill_grace) {
            submit = submit.timeout(
                aws_sdk_batch::types::JobTimeout::builder()
                    .attempt_duration_seconds(secs)
                    .build(),
            );
        }
        let out = submit.send().await.map_err(|e| {
            fault(
                &format!(
                    "cannot submit AWS Batch job {} to queue {}{}",
                    h.job_name,
                    h.queue,
                    in_region(&region.region)
                ),
                e,
                true,
            )
        })?;
        let id = out.job_id().unwrap_or_default().to_string();
        tracing::info!(job = %h.job_name, id, queue = %h.queue, region = %region.region, "submitted AWS Batch job");
        // Another launcher may have submitted the same attempt at the same time: both keep the
        // oldest job and terminate the rest. ListJobs may not show a job submitted a moment
        // ago: this one's own job is terminated by this one when another is kept.
        let own = Handle {
            job_id: Some(id.clone()),
            ..h.clone()
        };
        let kept = match self.adopt(&h).await {
            Ok(Some(kept)) => kept,
            Ok(None) | Err(_) => own,
        };
        if kept.job_id.as_deref() != Some(id.as_str()) {
            tracing::warn!(job = %h.job_name, duplicate = %id, kept = kept.job_id.as_deref().unwrap_or(""), "another launcher submitted this attempt first: terminating this one's job");
            self.terminate(&h, &id, "ferry: a duplicate job of the same attempt")
                .await?;
        }
        Compute::with_handle(reserved.name, &kept)
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        let h = self.handle(reserved)?;
        self.remember_queue(&h);
        if h.job_id.is_some() {
            return Ok(self.job(&h).await?.map(|_| reserved.clone()));
        }
        match self.adopt(&h).await? {
            Some(found) => Ok(Some(Compute::with_handle(reserved.name.clone(), &found)?)),
            None => Ok(None),
        }
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        let mut h = self.handle(compute)?;
        if h.job_id.is_none() {
            match self.adopt(&h).await? {
                Some(found) => h = found,
                None => {
                    return Ok(ComputeState::Vanished(format!(
                        "AWS Batch job {} is not in queue {}",
                        h.job_name, h.queue
                    )));
                }
            }
        }
        match self.job(&h).await? {
            Some(job) => self.state_of(&h, &job).await,
            None => Ok(ComputeState::Vanished(format!(
                "AWS Batch job {} ({}) is gone: DescribeJobs does not know it",
                h.job_name,
                h.job_id.as_deref().unwrap_or("")
            ))),
        }
    }

    /// Each call waits for the poller's next round: the rounds pace it.
    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        loop {
            match self.status(compute).await? {
                ComputeState::Pending | ComputeState::Running => {}
                ended => return Ok(ended),
            }
        }
    }

    async fn read_logs(
        &self,
        compute: &Compute,
        stream: Stream,
        from: &LogPosition,
        max_bytes: usize,
    ) -> BackendResult<LogRead> {
        let h = self.handle(compute)?;
        match stream {
            Stream::Stdout => self.read_output(&h, from, max_bytes).await,
            // The awslogs driver merges both streams: everything arrives as stdout.
            Stream::Stderr => Ok(ferry_launcher::batch::merged_stderr(from)),
        }
    }

    async fn stop(&self, compute: &Compute, grace: Duration) -> BackendResult<()> {
        let mut h = self.handle(compute)?;
        if h.job_id.is_none() {
            match self.adopt(&h).await? {
                Some(found) => h = found,
                None => return Ok(()),
            }
        }
        let Some(id) = h.job_id.clone() else { return Ok(()) };
        // Batch sends SIGTERM, waits 30 s (not settable), then SIGKILL.
        let limit = grace.max(self.0.settings.kill_grace) + Duration::from_secs(60);
        let until = Instant::now() + limit;
        let mut asked: Option<Instant> = None;
        loop {
            match self.job(&h).await? {
                None => return Ok(()),
                Some(job) if job.status().is_some_and(is_terminal) => return Ok(()),
                Some(_) => {}
            }
            if Instant::now() >= until {
                return Err(AttemptError::Unavailable(format!(
                    "AWS Batch job {} ({id}) did not end within {limit:?} of TerminateJob",
                    h.job_name
                )));
            }
            if asked.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                self.terminate(&h, &id, TERMINATED_BY_FERRY).await?;
                asked = Some(Instant::now());
            }
        }
    }

    /// What the job staged, when the launcher has a staging bucket; else nothing (a task with
    /// output files was refused in `check`).
    async fn collect(&self, compute: &Compute, task: Task<'_>) -> BackendResult<Collected> {
        let h = self.handle(compute)?;
        match self.staged(&h)? {
            Some((staging, store, prefix)) => crate::stage::collect(staging, &store, task, &prefix).await,
            None => Ok(Collected::default()),
        }
    }

    /// Batch keeps a job's record for some days and has no call to delete it: releasing makes
    /// sure it does not run, and forgets it here.
    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        let h = self.handle(compute)?;
        let running = match self.job(&h).await {
            Ok(Some(job)) => !job.status().is_some_and(is_terminal),
            Ok(None) => false,
            Err(e) => return Err(e),
        };
        if running {
            self.stop(compute, self.0.settings.kill_grace).await?;
        }
        if let Some((_, store, prefix)) = self.staged(&h)? {
            batch::remove_staged(&store, &prefix).await?;
        }
        self.forget(&h);
        Ok(())
    }

    /// The jobs tagged with this launcher that have not ended, in the default queue (in the
    /// launcher's region) and every queue an attempt it knows of used, in that attempt's
    /// region (each journaled attempt is looked up before the runtime asks, and a job is
    /// journaled, reserved, before it is submitted).
    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let mut queues = lock(&self.0.used_queues).clone();
        let s = &self.0.settings;
        let home = self.0.regions.home().to_string();
        if let Some(q) = &s.job_queue {
            queues.insert((home.clone(), q.clone()));
        }
        if let Some(ce) = &s.compute_environment {
            queues.insert((home.clone(), names::queue_name(ce)));
        }
        let mut owned = Vec::new();
        for (region, queue) in queues {
            let clients = self.0.regions.get(&region);
            let at = in_region(&region);
            let mut ids = Vec::new();
            for status in [
                JobStatus::Submitted,
                JobStatus::Pending,
                JobStatus::Runnable,
                JobStatus::Starting,
                JobStatus::Running,
            ] {
                let mut token = None;
                loop {
                    let out = clients
                        .batch
                        .list_jobs()
                        .job_queue(&queue)
                        .job_status(status.clone())
                        .set_next_token(token)
                        .send()
                        .await;
                    let out = match out {
                        Ok(out) => out,
                        // A queue that is gone holds nothing of ours.
                        Err(e) if e.as_service_error().is_some() => break,
                        Err(e) => {
                            return Err(fault(
                                &format!("cannot list the jobs of AWS Batch queue {queue}{at}"),
                                e,
                                false,
                            ));
                        }
                    };
                    ids.extend(
                        out.job_summary_list()
                            .iter()
                            .filter(|j| j.job_name().is_some_and(|n| n.starts_with("ferry-")))
                            .filter_map(|j| j.job_id().map(str::to_string)),
                    );
                    match out.next_token() {
                        Some(t) => token = Some(t.to_string()),
                        None => break,
                    }
                }
            }
            for chunk in ids.chunks(crate::aws::DESCRIBE_BATCH) {
                let out = clients
                    .batch
                    .describe_jobs()
                    .set_jobs(Some(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| {
                        fault(
                            &format!("cannot read the tags of AWS Batch jobs{at} (DescribeJobs)"),
                            e,
                            false,
                        )
                    })?;
                for job in out.jobs() {
                    let ours = job
                        .tags()
                        .and_then(|t| t.get(TAG_LAUNCHER))
                        .is_some_and(|l| *l == names::tag_value(&s.launcher));
                    let (Some(name), Some(id)) = (job.job_name(), job.job_id()) else {
                        continue;
                    };
                    if !ours {
                        continue;
                    }
                    owned.push(Compute::with_handle(
                        name,
                        &Handle {
                            region: Some(region.clone()).filter(|r| !r.is_empty()),
                            queue: queue.clone(),
                            job_name: name.to_string(),
                            job_id: Some(id.to_string()),
                            pending_deadline_s: s.pending_deadline.as_secs().max(1),
                            // An orphan's attempt is unknown here: its staged files are left
                            // to the bucket's lifecycle rule.
                            stage: None,
                            stage_bucket: None,
                        },
                    )?);
                }
            }
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_stream_is_fetched_less_and_less_often_up_to_a_bound() {
        let mut st = LogState {
            pages: Cursor::default().pages(),
            complete: false,
            name: None,
            fetched: None,
            idle: 0,
            missing_since: None,
        };
        let mut waits = Vec::new();
        for idle in [0, 1, 2, 5, 6, 40, u32::MAX] {
            st.idle = idle;
            waits.push(st.refresh().as_millis());
        }
        assert_eq!(waits, [500, 1000, 2000, 16_000, 16_000, 16_000, 16_000]);
    }

    #[test]
    fn a_handle_journaled_before_attempts_had_a_region_still_loads() {
        // As the launcher journaled it before `region` existed.
        let old = serde_json::json!({
            "queue": "ferry-ce",
            "jobName": "ferry-a1",
            "jobId": "4c7599ae",
            "pendingDeadlineS": 600,
            "stage": "job-1/task-a/a1",
            "stageBucket": "s3://bucket/stage"
        });
        let h: Handle = Compute {
            name: "ferry-a1".into(),
            handle: old.clone(),
        }
        .handle_as()
        .expect("an old handle loads");
        assert_eq!(h.region, None, "the launcher's region");
        assert_eq!(h.job_id.as_deref(), Some("4c7599ae"));
        // Written again as it was read: nothing is invented for it.
        assert_eq!(serde_json::to_value(&h).unwrap(), old);
        // A new handle names its region.
        let new = Handle {
            region: Some("eu-west-1".into()),
            ..h
        };
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["region"], "eu-west-1");
        assert_eq!(serde_json::from_value::<Handle>(json).unwrap(), new);
    }

    fn dispatch(runner: AwsBatchRunner) -> TaskDispatched {
        TaskDispatched {
            job_id: "job-1".into(),
            task_id: "task-a".into(),
            attempt_id: "a1".into(),
            attempt: 1,
            runner: Runner::AwsBatch(runner),
            command: vec![ferry_event::template::Template::text("true")],
            env: Default::default(),
            input_files: Default::default(),
            output_files: Vec::new(),
            resources: Default::default(),
            timeout_ms: None,
            lease_ms: 30_000,
            ready_at_ms: 0,
            flow_id: None,
            namespace: None,
            priority: 0,
        }
    }

    #[test]
    fn fargates_own_settings_go_into_the_definition_and_are_refused_on_ec2() {
        let fargate = AwsBatchRunner {
            image: "busybox".into(),
            assign_public_ip: Some(true),
            platform_version: Some("1.4.0".into()),
            ephemeral_storage_gib: Some(50),
            ..Default::default()
        };
        let spec = spec_of(&dispatch(fargate.clone()), &fargate).expect("valid on Fargate");
        assert_eq!(spec.assign_public_ip, Some(true));
        assert_eq!(spec.platform_version.as_deref(), Some("1.4.0"));
        assert_eq!(spec.ephemeral_storage_gib, Some(50));

        for (field, runner) in [
            (
                "runner.assignPublicIp",
                AwsBatchRunner {
                    assign_public_ip: Some(false),
                    ..Default::default()
                },
            ),
            (
                "runner.platformVersion",
                AwsBatchRunner {
                    platform_version: Some("LATEST".into()),
                    ..Default::default()
                },
            ),
            (
                "runner.ephemeralStorageGiB",
                AwsBatchRunner {
                    ephemeral_storage_gib: Some(30),
                    ..Default::default()
                },
            ),
        ] {
            let ec2 = AwsBatchRunner {
                image: "busybox".into(),
                platform: Some(AwsBatchPlatform::Ec2),
                ..runner
            };
            let e = spec_of(&dispatch(ec2.clone()), &ec2)
                .expect_err("refused on EC2")
                .to_string();
            assert!(
                e.contains(field) && e.contains("EC2") && e.contains("Fargate"),
                "{e}"
            );
        }

        for (bad, field) in [
            (
                AwsBatchRunner {
                    platform_version: Some("1.4".into()),
                    ..fargate.clone()
                },
                "runner.platformVersion \"1.4\"",
            ),
            (
                AwsBatchRunner {
                    ephemeral_storage_gib: Some(20),
                    ..fargate.clone()
                },
                "runner.ephemeralStorageGiB 20",
            ),
            (
                AwsBatchRunner {
                    ephemeral_storage_gib: Some(201),
                    ..fargate.clone()
                },
                "runner.ephemeralStorageGiB 201",
            ),
        ] {
            let e = spec_of(&dispatch(bad.clone()), &bad)
                .expect_err("refused")
                .to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn batch_timeouts_cover_ferrys_and_respect_aws_least() {
        let grace = Duration::from_secs(30);
        assert_eq!(batch_timeout(None, grace), None);
        assert_eq!(batch_timeout(Some(300), grace), Some(60));
        assert_eq!(batch_timeout(Some(3_600_000), grace), Some(3630));
        assert_eq!(batch_timeout(Some(100_500), Duration::ZERO), Some(101));
    }
}
