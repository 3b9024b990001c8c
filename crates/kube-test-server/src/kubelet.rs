//! The cluster behind the API: a Job controller (one pod per Job, its status from its pod's,
//! `activeDeadlineSeconds`, `ttlSecondsAfterFinished`), a garbage collector (what an object
//! owns goes with it, per `propagationPolicy`) and a kubelet on one node, which runs each pod's
//! init containers and then its container on the Docker engine.
//!
//! Each pod has one runner task, which alone creates, stops and removes its containers, so
//! that a delete racing a start never leaves a container behind: a delete marks the pod and
//! cancels its runner, which stops the containers within the grace, removes them and the pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use rand::Rng;

use crate::status::ApiError;
use crate::store::{Kind, now};
use crate::{CONTAINER_LABEL, NODE_NAME, PodHandle, Shared, name, ns};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The grace a pod gets to stop when neither the delete nor the pod says.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

pub(crate) fn random_char() -> char {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    ALPHABET[rand::rng().random_range(0..ALPHABET.len())] as char
}

/// The Docker container running `container` of `pod`.
pub fn container_name(server: &str, pod: &Pod, container: &str) -> String {
    format!(
        "kts-{server}-{}-{container}",
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

fn volume_name(server: &str, uid: &str, volume: &str) -> String {
    format!("kts-{server}-{uid}-{volume}")
}

/// Validates and stores a new Job, creates its pod and starts running it.
pub(crate) fn admit_job(s: &Arc<Shared>, mut job: Job) -> Result<Job> {
    let (namespace, job_name) = (ns(&job.metadata).to_string(), name(&job.metadata).to_string());
    let invalid = |field: &str, why: &str| ApiError::invalid(Kind::Job, &job_name, field, why);
    let spec = job
        .spec
        .as_mut()
        .ok_or_else(|| invalid("spec", "Required value"))?;
    let template_spec = spec
        .template
        .spec
        .as_ref()
        .ok_or_else(|| invalid("spec.template.spec", "Required value"))?;
    match template_spec.restart_policy.as_deref() {
        Some("Never" | "OnFailure") => {}
        other => {
            return Err(invalid(
                "spec.template.spec.restartPolicy",
                &format!("Unsupported value: {other:?}: supported values: \"OnFailure\", \"Never\""),
            ));
        }
    }
    if template_spec.containers.is_empty() {
        return Err(invalid("spec.template.spec.containers", "Required value"));
    }
    let mut names = std::collections::BTreeSet::new();
    for c in template_spec
        .init_containers
        .iter()
        .flatten()
        .chain(&template_spec.containers)
    {
        if !names.insert(c.name.as_str()) {
            return Err(invalid(
                "spec.template.spec.containers",
                &format!("Duplicate value: \"{}\"", c.name),
            ));
        }
    }
    for v in template_spec.volumes.iter().flatten() {
        if v.empty_dir.is_none() && v.secret.is_none() {
            return Err(invalid(
                "spec.template.spec.volumes",
                &format!(
                    "volume `{}`: this test server supports emptyDir and secret volumes",
                    v.name
                ),
            ));
        }
    }
    let uid = uuid::Uuid::new_v4().to_string();
    job.metadata.uid = Some(uid.clone());
    spec.backoff_limit.get_or_insert(6);
    spec.completions.get_or_insert(1);
    spec.parallelism.get_or_insert(1);
    let controller_labels = [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", job_name.as_str()),
        ("controller-uid", uid.as_str()),
        ("job-name", job_name.as_str()),
    ];
    let template_meta = spec.template.metadata.get_or_insert_with(Default::default);
    let labels = template_meta.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in controller_labels {
        labels.insert(k.to_string(), v.to_string());
    }
    spec.selector
        .get_or_insert_with(|| k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "batch.kubernetes.io/controller-uid".to_string(),
                uid.clone(),
            )])),
            ..Default::default()
        });
    crate::api::check_meta(Kind::Pod, "pod", template_meta)?;
    job.status = Some(JobStatus {
        start_time: Some(now()),
        active: Some(1),
        ready: Some(0),
        ..Default::default()
    });
    let template = spec.template.clone();
    let deadline = spec.active_deadline_seconds;
    let pod_name = format!("{job_name}-{}", (0..5).map(|_| random_char()).collect::<String>());
    let mut pod_meta = template.metadata.clone().unwrap_or_default();
    pod_meta.name = Some(pod_name.clone());
    pod_meta.namespace = Some(namespace.clone());
    pod_meta.owner_references = Some(vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job_name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let pod = Pod {
        metadata: pod_meta,
        spec: template.spec,
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    };
    let (job, pod) = s.change(|store| {
        if store.get::<Job>(&namespace, &job_name).is_some() {
            return Err(ApiError::already_exists(Kind::Job, &job_name));
        }
        let job = store.insert(job);
        let pod = store.insert(pod);
        Ok((job, pod))
    })?;
    start_pod(s, pod);
    if let Some(secs) = deadline {
        let s2 = s.clone();
        let (namespace, job_name, uid) = (namespace.clone(), job_name.clone(), uid.clone());
        s.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(secs.max(0) as u64)) => {}
                _ = s2.shutdown.cancelled() => return,
            }
            deadline_exceeded(&s2, &namespace, &job_name, &uid);
        });
    }
    Ok(job)
}

fn finished(status: &JobStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now()),
        last_transition_time: Some(now()),
    }
}

/// The Job has run longer than `activeDeadlineSeconds`: it fails with `DeadlineExceeded`, and
/// its running pods are deleted.
fn deadline_exceeded(s: &Arc<Shared>, namespace: &str, job_name: &str, uid: &str) {
    let failed = s.change(|store| {
        let job = store.get::<Job>(namespace, job_name)?;
        if job.metadata.uid.as_deref() != Some(uid) || job.status.as_ref().is_some_and(finished) {
            return None;
        }
        store.modify::<Job>(namespace, job_name, |j| {
            let st = j.status.get_or_insert_with(Default::default);
            let conditions = st.conditions.get_or_insert_with(Vec::new);
            conditions.push(condition(
                "FailureTarget",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
            conditions.push(condition(
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
            st.failed = Some(st.failed.unwrap_or(0) + st.active.unwrap_or(0));
            st.active = Some(0);
            st.ready = Some(0);
        })?;
        Some(store.owned::<Pod>(namespace, uid))
    });
    for pod in failed.into_iter().flatten() {
        let _ = delete_pod(s, namespace, name(&pod.metadata), None);
    }
    schedule_ttl(s, namespace, job_name);
}

/// What a Job learns from its pod.
enum PodOutcome {
    Active { ready: bool },
    Succeeded,
    Failed,
}

fn sync_job(s: &Arc<Shared>, pod: &Pod, outcome: PodOutcome) {
    let Some(owner) = controller_of(&pod.metadata) else {
        return;
    };
    let namespace = ns(&pod.metadata).to_string();
    let became_finished = s.change(|store| {
        let job = store.get::<Job>(&namespace, &owner.name)?;
        if job.metadata.uid.as_deref() != Some(owner.uid.as_str())
            || job.status.as_ref().is_some_and(finished)
        {
            return None;
        }
        let backoff_limit = job.spec.as_ref().and_then(|s| s.backoff_limit).unwrap_or(6);
        store
            .modify::<Job>(&namespace, &owner.name, |j| {
                let st = j.status.get_or_insert_with(Default::default);
                match outcome {
                    PodOutcome::Active { ready } => {
                        st.active = Some(1);
                        st.ready = Some(i32::from(ready));
                    }
                    PodOutcome::Succeeded => {
                        st.active = Some(0);
                        st.ready = Some(0);
                        st.succeeded = Some(1);
                        st.completion_time = Some(now());
                        let conditions = st.conditions.get_or_insert_with(Vec::new);
                        conditions.push(condition(
                            "SuccessCriteriaMet",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        ));
                        conditions.push(condition(
                            "Complete",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        ));
                    }
                    PodOutcome::Failed => {
                        st.active = Some(0);
                        st.ready = Some(0);
                        st.failed = Some(st.failed.unwrap_or(0) + 1);
                        // backoffLimit above 0 would start another pod; this server does not.
                        let _ = backoff_limit;
                        let conditions = st.conditions.get_or_insert_with(Vec::new);
                        conditions.push(condition(
                            "FailureTarget",
                            "BackoffLimitExceeded",
                            "Job has reached the specified backoff limit",
                        ));
                        conditions.push(condition(
                            "Failed",
                            "BackoffLimitExceeded",
                            "Job has reached the specified backoff limit",
                        ));
                    }
                }
            })
            .map(|j| j.status.as_ref().is_some_and(finished))
    });
    if became_finished == Some(true) {
        schedule_ttl(s, &namespace, &owner.name);
    }
}

fn controller_of(meta: &ObjectMeta) -> Option<OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "Job")
        .cloned()
}

/// Deletes a finished Job `ttlSecondsAfterFinished` after it finished.
fn schedule_ttl(s: &Arc<Shared>, namespace: &str, job_name: &str) {
    let Some((ttl, uid)) = s.read(|store| {
        let job = store.get::<Job>(namespace, job_name)?;
        Some((
            job.spec.as_ref()?.ttl_seconds_after_finished?,
            job.metadata.uid.clone()?,
        ))
    }) else {
        return;
    };
    let s2 = s.clone();
    let (namespace, job_name) = (namespace.to_string(), job_name.to_string());
    s.tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(ttl.max(0) as u64)) => {}
            _ = s2.shutdown.cancelled() => return,
        }
        let same = s2.read(|store| {
            store
                .get::<Job>(&namespace, &job_name)
                .is_some_and(|j| j.metadata.uid.as_deref() == Some(uid.as_str()))
        });
        if same {
            let _ = delete_job(&s2, &namespace, &job_name, "Background").await;
        }
    });
}

/// Deletes a Job and, unless `policy` is `Orphan`, the pods and Secrets it owns.
pub(crate) async fn delete_job(
    s: &Arc<Shared>,
    namespace: &str,
    job_name: &str,
    policy: &str,
) -> Result<Job> {
    let job = s
        .read(|store| store.get::<Job>(namespace, job_name).cloned())
        .ok_or_else(|| ApiError::not_found(Kind::Job, job_name))?;
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let collect = |s: &Arc<Shared>| -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let (pods, secrets) = s.read(|store| {
            (
                store.owned::<Pod>(namespace, &uid),
                store.owned::<Secret>(namespace, &uid),
            )
        });
        let mut gone = Vec::new();
        for pod in pods {
            if let Ok(rx) = delete_pod_notify(s, namespace, name(&pod.metadata), None) {
                gone.push(rx);
            }
        }
        s.change(|store| {
            for secret in secrets {
                store.remove::<Secret>(namespace, name(&secret.metadata));
            }
        });
        gone
    };
    match policy {
        "Orphan" => {
            s.change(|store| {
                for pod in store.owned::<Pod>(namespace, &uid) {
                    store.modify::<Pod>(namespace, name(&pod.metadata), |p| {
                        drop_owner(&mut p.metadata, &uid)
                    });
                }
                for secret in store.owned::<Secret>(namespace, &uid) {
                    store.modify::<Secret>(namespace, name(&secret.metadata), |o| {
                        drop_owner(&mut o.metadata, &uid)
                    });
                }
                store.remove::<Job>(namespace, job_name)
            });
        }
        "Foreground" => {
            s.change(|store| {
                store.modify::<Job>(namespace, job_name, |j| {
                    j.metadata.deletion_timestamp = Some(now());
                    j.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
                })
            });
            let gone = collect(s);
            let s2 = s.clone();
            let (namespace, job_name) = (namespace.to_string(), job_name.to_string());
            s.tasks.spawn(async move {
                for rx in gone {
                    let _ = rx.await;
                }
                s2.change(|store| store.remove::<Job>(&namespace, &job_name));
            });
        }
        _ => {
            s.change(|store| store.remove::<Job>(namespace, job_name));
            collect(s);
        }
    }
    Ok(job)
}

fn drop_owner(meta: &mut ObjectMeta, uid: &str) {
    if let Some(refs) = &mut meta.owner_references {
        refs.retain(|r| r.uid != uid);
        if refs.is_empty() {
            meta.owner_references = None;
        }
    }
}

/// Marks a pod deleted and has its runner stop it within `grace` seconds (the pod's
/// `terminationGracePeriodSeconds`, else 30) and remove it. Answers with the pod as marked.
pub(crate) fn delete_pod(
    s: &Arc<Shared>,
    namespace: &str,
    pod_name: &str,
    grace: Option<i64>,
) -> Result<Pod> {
    delete_pod_inner(s, namespace, pod_name, grace).map(|(pod, _)| pod)
}

fn delete_pod_notify(
    s: &Arc<Shared>,
    namespace: &str,
    pod_name: &str,
    grace: Option<i64>,
) -> Result<tokio::sync::oneshot::Receiver<()>> {
    delete_pod_inner(s, namespace, pod_name, grace).map(|(_, rx)| rx)
}

fn delete_pod_inner(
    s: &Arc<Shared>,
    namespace: &str,
    pod_name: &str,
    grace: Option<i64>,
) -> Result<(Pod, tokio::sync::oneshot::Receiver<()>)> {
    let pod = s
        .change(|store| {
            store.modify::<Pod>(namespace, pod_name, |p| {
                if p.metadata.deletion_timestamp.is_none() {
                    p.metadata.deletion_timestamp = Some(now());
                }
                let grace = grace
                    .or_else(|| p.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(DEFAULT_GRACE.as_secs() as i64);
                p.metadata.deletion_grace_period_seconds = Some(grace);
            })
        })
        .ok_or_else(|| ApiError::not_found(Kind::Pod, pod_name))?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let handle = s
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uid)
        .cloned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    match handle {
        Some(h) => {
            let secs = pod.metadata.deletion_grace_period_seconds.unwrap_or(0).max(0) as u64;
            {
                let mut g = h.grace.lock().unwrap_or_else(|e| e.into_inner());
                *g = (*g).min(Duration::from_secs(secs));
            }
            h.gone.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
            h.deleted.cancel();
        }
        None => {
            s.change(|store| store.remove::<Pod>(namespace, pod_name));
            let _ = tx.send(());
        }
    }
    Ok((pod, rx))
}

fn start_pod(s: &Arc<Shared>, pod: Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let handle = PodHandle {
        deleted: s.shutdown.child_token(),
        grace: Arc::new(Mutex::new(Duration::MAX)),
        gone: Arc::new(Mutex::new(Vec::new())),
    };
    s.pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid.clone(), handle.clone());
    let s2 = s.clone();
    s.tasks.spawn(async move {
        let runner = Runner {
            s: s2.clone(),
            namespace: ns(&pod.metadata).to_string(),
            name: name(&pod.metadata).to_string(),
            uid: uid.clone(),
            handle: handle.clone(),
            containers: Vec::new(),
            volumes: Vec::new(),
        };
        runner.run(pod).await;
        s2.pods.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
        for tx in handle.gone.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = tx.send(());
        }
    });
}

/// A container started, waiting for its end.
struct Started {
    init: bool,
    docker_name: String,
    started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    running: ContainerStatus,
    message_path: String,
}

/// One pod's life on the node.
struct Runner {
    s: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
    handle: PodHandle,
    /// Docker containers made for the pod, removed with it.
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Runner {
    async fn run(mut self, pod: Pod) {
        let outcome = self.drive(&pod).await;
        match outcome {
            Some(PodOutcome::Succeeded) => {
                self.set_phase("Succeeded");
                sync_job(&self.s, &pod, PodOutcome::Succeeded);
            }
            Some(PodOutcome::Failed) => {
                self.set_phase("Failed");
                sync_job(&self.s, &pod, PodOutcome::Failed);
            }
            _ => {}
        }
        // The pod stays, its containers kept for their logs, until it is deleted.
        self.handle.deleted.cancelled().await;
        let was_terminal = self.s.read(|store| {
            store
                .get::<Pod>(&self.namespace, &self.name)
                .and_then(|p| p.status.as_ref()?.phase.clone())
                .is_some_and(|p| p == "Succeeded" || p == "Failed")
        });
        for c in &self.containers {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let _ = self.s.docker.remove_container(c, Some(options)).await;
        }
        for v in &self.volumes {
            let _ = self
                .s
                .docker
                .remove_volume(v, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await;
        }
        if !was_terminal {
            // A pod deleted before it ended counts as failed.
            sync_job(&self.s, &pod, PodOutcome::Failed);
        }
        self.s
            .change(|store| store.remove::<Pod>(&self.namespace, &self.name));
    }

    fn grace(&self) -> Duration {
        let g = *self.handle.grace.lock().unwrap_or_else(|e| e.into_inner());
        if g == Duration::MAX { DEFAULT_GRACE } else { g }
    }

    fn update(&self, change: impl FnOnce(&mut PodStatus)) -> Option<Pod> {
        self.s.change(|store| {
            store.modify::<Pod>(&self.namespace, &self.name, |p| {
                change(p.status.get_or_insert_with(Default::default))
            })
        })
    }

    fn set_phase(&self, phase: &str) {
        self.update(|st| {
            st.phase = Some(phase.into());
            set_condition(st, "Ready", false, Some("PodCompleted"));
            set_condition(st, "ContainersReady", false, Some("PodCompleted"));
        });
    }

    /// Schedules, pulls, waits for Secrets, runs the init containers and the container. `None`
    /// when the pod never ran to an end (unschedulable, no image, deleted).
    async fn drive(&mut self, pod: &Pod) -> Option<PodOutcome> {
        let spec = pod.spec.clone().unwrap_or_default();
        if let Some(why) = self.unschedulable(&spec) {
            self.update(|st| {
                st.conditions = Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(why),
                    last_transition_time: Some(now()),
                    ..Default::default()
                }]);
            });
            return None;
        }
        self.s.change(|store| {
            store.modify::<Pod>(&self.namespace, &self.name, |p| {
                if let Some(spec) = &mut p.spec {
                    spec.node_name = Some(NODE_NAME.into());
                }
                let st = p.status.get_or_insert_with(Default::default);
                st.host_ip = Some("127.0.0.1".into());
                st.pod_ip = Some("127.0.0.1".into());
                st.start_time = Some(now());
                set_condition(st, "PodScheduled", true, None);
                set_condition(st, "Initialized", spec_has_no_init(p.spec.as_ref()), None);
                set_condition(st, "ContainersReady", false, Some("ContainersNotReady"));
                set_condition(st, "Ready", false, Some("ContainersNotReady"));
                st.container_statuses = Some(
                    p.spec
                        .iter()
                        .flat_map(|s| &s.containers)
                        .map(|c| waiting(c, "ContainerCreating", None))
                        .collect(),
                );
            })
        });
        let all: Vec<(bool, Container)> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (true, c.clone()))
            .chain(spec.containers.iter().map(|c| (false, c.clone())))
            .collect();
        for (init, c) in &all {
            if let Some((reason, message)) = self.image_missing(c).await {
                self.set_container(*init, waiting(c, reason, Some(message)));
                self.handle.deleted.cancelled().await;
                return None;
            }
        }
        for c in spec.init_containers.iter().flatten() {
            let started = self.start_container(pod, &spec, true, c).await?;
            if !self.finish_container(started).await {
                self.update(|st| st.phase = Some("Failed".into()));
                return Some(PodOutcome::Failed);
            }
        }
        // The containers run side by side; the pod ends when the last of them does.
        let mut started = Vec::with_capacity(spec.containers.len());
        for c in &spec.containers {
            started.push(self.start_container(pod, &spec, false, c).await?);
        }
        let p = self.update(|st| {
            st.phase = Some("Running".into());
            set_condition(st, "Initialized", true, None);
            set_condition(st, "ContainersReady", true, None);
            set_condition(st, "Ready", true, None);
        });
        if let Some(p) = p {
            sync_job(&self.s, &p, PodOutcome::Active { ready: true });
        }
        let ended = futures::future::join_all(started.into_iter().map(|c| self.finish_container(c))).await;
        Some(if ended.iter().all(|ok| *ok) {
            PodOutcome::Succeeded
        } else {
            PodOutcome::Failed
        })
    }

    /// Why no node fits the pod: its `nodeSelector`, or a GPU request (the node has none).
    fn unschedulable(&self, spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<String> {
        for (k, v) in spec.node_selector.iter().flatten() {
            if self.s.node_labels.get(k) != Some(v) {
                return Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.".into());
            }
        }
        for c in &spec.containers {
            let resources = c.resources.as_ref();
            let asks_gpu = resources
                .and_then(|r| r.limits.as_ref())
                .into_iter()
                .chain(resources.and_then(|r| r.requests.as_ref()))
                .any(|m| m.get("nvidia.com/gpu").is_some_and(|q| q.0 != "0"));
            if asks_gpu {
                return Some("0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.".into());
            }
        }
        None
    }

    async fn image_missing(&self, c: &Container) -> Option<(&'static str, String)> {
        let image = c.image.clone().unwrap_or_default();
        match self.s.docker.inspect_image(&image).await {
            Ok(_) => None,
            Err(_) if c.image_pull_policy.as_deref() == Some("Never") => Some((
                "ErrImageNeverPull",
                format!("Container image \"{image}\" is not present with pull policy of Never"),
            )),
            Err(_) => Some(("ImagePullBackOff", format!("Back-off pulling image \"{image}\""))),
        }
    }

    fn set_container(&self, init: bool, status: ContainerStatus) {
        self.update(|st| {
            let list = if init {
                st.init_container_statuses.get_or_insert_with(Vec::new)
            } else {
                st.container_statuses.get_or_insert_with(Vec::new)
            };
            match list.iter_mut().find(|c| c.name == status.name) {
                Some(c) => *c = status,
                None => list.push(status),
            }
        });
    }

    /// Creates and starts one container; `None` when the pod was deleted before it ran.
    async fn start_container(
        &mut self,
        pod: &Pod,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        init: bool,
        c: &Container,
    ) -> Option<Started> {
        // Its environment and files wait for the Secrets they come from.
        let mut versions = self.s.changed.subscribe();
        let (env, files) = loop {
            match self.s.read(|store| resolve(store, pod, spec, c)) {
                Ok(found) => break found,
                Err((reason, message)) => {
                    self.set_container(init, waiting(c, reason, Some(message)));
                    tokio::select! {
                        _ = versions.changed() => {}
                        _ = self.handle.deleted.cancelled() => return None,
                    }
                }
            }
        };
        let docker_name = container_name(&self.s.id, pod, &c.name);
        let body = self.create_body(pod, spec, c, env);
        let options = CreateContainerOptionsBuilder::default()
            .name(&docker_name)
            .build();
        let created = self.s.docker.create_container(Some(options), body).await;
        if let Err(e) = created {
            self.set_container(init, waiting(c, "CreateContainerError", Some(e.to_string())));
            self.handle.deleted.cancelled().await;
            return None;
        }
        self.containers.push(docker_name.clone());
        // The kubelet makes the termination message file before the container starts.
        let message_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let mut files = files;
        if !message_path.starts_with("/dev/") {
            files.push((message_path.clone(), Vec::new()));
        }
        if !files.is_empty() {
            let archive = tar_of(&files);
            let options = UploadToContainerOptionsBuilder::default().path("/").build();
            if let Err(e) = self
                .s
                .docker
                .upload_to_container(&docker_name, Some(options), bollard::body_full(archive))
                .await
            {
                self.set_container(
                    init,
                    waiting(c, "CreateContainerConfigError", Some(e.to_string())),
                );
                self.handle.deleted.cancelled().await;
                return None;
            }
        }
        if self.handle.deleted.is_cancelled() {
            return None;
        }
        // From here on the start goes through, deleted or not (see `Options::start_delay`).
        if !self.s.start_delay.is_zero() {
            tokio::time::sleep(self.s.start_delay).await;
        }
        if let Err(e) = self.s.docker.start_container(&docker_name, None).await {
            self.set_container(init, waiting(c, "RunContainerError", Some(e.to_string())));
            self.handle.deleted.cancelled().await;
            return None;
        }
        let started_at = now();
        let mut running = waiting(c, "", None);
        running.state = Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started_at.clone()),
            }),
            ..Default::default()
        });
        running.started = Some(true);
        running.ready = !init;
        running.container_id = Some(format!("docker://{docker_name}"));
        self.set_container(init, running.clone());
        Some(Started {
            init,
            docker_name,
            started_at,
            running,
            message_path,
        })
    }

    /// Waits for a started container to end, stopping it within the grace when the pod is
    /// deleted, and records how it ended. True for status 0.
    async fn finish_container(&self, started: Started) -> bool {
        let Started {
            init,
            docker_name,
            started_at,
            running,
            message_path,
        } = started;
        // Runs until it ends; a delete stops it within the grace first.
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = self.s.docker.wait_container(&docker_name, Some(options));
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = wait.next() => break,
                _ = self.handle.deleted.cancelled(), if !stopping => {
                    stopping = true;
                    let secs = self.grace().as_secs();
                    let options = StopContainerOptionsBuilder::default().t(i32::try_from(secs).unwrap_or(i32::MAX)).build();
                    let docker = self.s.docker.clone();
                    let name = docker_name.clone();
                    tokio::spawn(async move { let _ = docker.stop_container(&name, Some(options)).await; });
                }
            }
        }
        let inspected = self.s.docker.inspect_container(&docker_name, None).await.ok();
        let limited = inspected
            .as_ref()
            .and_then(|i| i.host_config.as_ref())
            .and_then(|h| h.memory)
            .is_some_and(|m| m > 0);
        let mut state = inspected.and_then(|i| i.state).unwrap_or_default();
        // The engine records an OOM kill when containerd's OOM event arrives, which can be
        // well after the exit it caused on a busy machine. A SIGKILL we did not send to a
        // container with a memory limit is most likely that kill, so it is given a few seconds
        // to show up; any other (an operator's `docker kill`) is reported at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !stopping
            && limited
            && state.exit_code == Some(137)
            && state.oom_killed != Some(true)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = self.inspect_state(&docker_name).await;
        }
        let code = state.exit_code.unwrap_or(137) as i32;
        let reason = if state.oom_killed == Some(true) {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let message = match self.termination_message(&docker_name, &message_path).await {
            Some(m) => Some(m),
            None => state.error.filter(|e| !e.is_empty()),
        };
        let mut ended = running;
        ended.ready = false;
        ended.started = Some(false);
        ended.state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: Some(format!("docker://{docker_name}")),
                exit_code: code,
                reason: Some(reason.into()),
                started_at: Some(started_at),
                finished_at: Some(now()),
                message,
                signal: None,
            }),
            ..Default::default()
        });
        self.set_container(init, ended);
        code == 0
    }

    async fn inspect_state(&self, docker_name: &str) -> bollard::models::ContainerState {
        let inspected = self.s.docker.inspect_container(docker_name, None).await.ok();
        inspected.and_then(|i| i.state).unwrap_or_default()
    }

    /// What the container left in its termination message file, at most 4096 bytes of it, as
    /// the kubelet reports it; `None` when it is empty or not there.
    async fn termination_message(&self, docker_name: &str, path: &str) -> Option<String> {
        if path.starts_with("/dev/") {
            return None;
        }
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut archive = Vec::new();
        let mut body = self.s.docker.download_from_container(docker_name, Some(options));
        while let Some(chunk) = body.next().await {
            archive.extend_from_slice(&chunk.ok()?);
        }
        let mut tar = tar::Archive::new(archive.as_slice());
        let mut entry = tar.entries().ok()?.next()?.ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).ok()?;
        bytes.truncate(4096);
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    fn create_body(
        &mut self,
        pod: &Pod,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        c: &Container,
        env: Vec<(String, String)>,
    ) -> ContainerCreateBody {
        let expand_all = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|v| v.iter().map(|a| expand(a, &env)).collect::<Vec<_>>())
        };
        let command = expand_all(&c.command).filter(|c| !c.is_empty());
        let args = expand_all(&c.args);
        let cmd = match (&command, args) {
            (_, Some(a)) => Some(a),
            (Some(_), None) => Some(Vec::new()),
            (None, None) => None,
        };
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(v) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else {
                continue;
            };
            if v.empty_dir.is_some() {
                let volume = volume_name(&self.s.id, &self.uid, &v.name);
                if !self.volumes.contains(&volume) {
                    self.volumes.push(volume.clone());
                }
                mounts.push(Mount {
                    target: Some(m.mount_path.clone()),
                    source: Some(volume),
                    typ: Some(MountType::VOLUME),
                    read_only: m.read_only,
                    // An emptyDir starts empty, hiding what the image has at that path: the
                    // engine must not copy it in as it does for a new named volume.
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
        for (host, target) in &self.s.node_mounts {
            mounts.push(Mount {
                target: Some(target.clone()),
                source: Some(host.display().to_string()),
                typ: Some(MountType::BIND),
                ..Default::default()
            });
        }
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        let memory = limits
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity(&q.0))
            .map(|b| b as i64);
        let nano_cpus = limits
            .and_then(|l| l.get("cpu"))
            .and_then(|q| quantity(&q.0))
            .map(|cpus| (cpus * 1e9) as i64);
        let user = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .map(|u| u.to_string());
        let labels = HashMap::from([
            (CONTAINER_LABEL.to_string(), self.s.id.clone()),
            ("io.kubernetes.pod.namespace".to_string(), self.namespace.clone()),
            ("io.kubernetes.pod.name".to_string(), self.name.clone()),
            ("io.kubernetes.pod.uid".to_string(), self.uid.clone()),
            ("io.kubernetes.container.name".to_string(), c.name.clone()),
        ]);
        let _ = pod;
        ContainerCreateBody {
            image: c.image.clone(),
            entrypoint: command,
            cmd,
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: c.working_dir.clone(),
            user,
            hostname: Some(self.name.chars().take(63).collect()),
            labels: Some(labels),
            tty: Some(false),
            host_config: Some(HostConfig {
                // Stops take the grace only when the command ignores SIGTERM itself, not because
                // it is PID 1.
                init: Some(true),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::new()),
                }),
                mounts: (!mounts.is_empty()).then_some(mounts),
                memory,
                memory_swap: memory,
                nano_cpus,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn spec_has_no_init(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> bool {
    spec.and_then(|s| s.init_containers.as_ref())
        .is_none_or(Vec::is_empty)
}

fn set_condition(st: &mut PodStatus, type_: &str, ok: bool, reason: Option<&str>) {
    let conditions = st.conditions.get_or_insert_with(Vec::new);
    let status = if ok { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => {}
        Some(c) => {
            c.status = status.into();
            c.reason = reason.map(Into::into);
            c.last_transition_time = Some(now());
        }
        None => conditions.push(PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(Into::into),
            last_transition_time: Some(now()),
            ..Default::default()
        }),
    }
}

fn waiting(c: &Container, reason: &str, message: Option<String>) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's environment (in order, `$(VAR)` expanded as the kubelet does) and the files of
/// its Secret volumes, or why they cannot be had yet: `(reason, message)`.
type Resolved = (Vec<(String, String)>, Vec<(String, Vec<u8>)>);

fn resolve(
    store: &crate::Store,
    pod: &Pod,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    c: &Container,
) -> std::result::Result<Resolved, (&'static str, String)> {
    let namespace = ns(&pod.metadata);
    let secret = |name: &str| store.get::<Secret>(namespace, name);
    let missing = |name: &str| {
        (
            "CreateContainerConfigError",
            format!("secret \"{name}\" not found"),
        )
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.secret_ref {
            match secret(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        let key = format!("{}{k}", from.prefix.as_deref().unwrap_or(""));
                        set(&mut env, key, String::from_utf8_lossy(&v.0).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(missing(&r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => {
                if let Some(r) = &from.secret_key_ref {
                    match secret(&r.name) {
                        Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err((
                                    "CreateContainerConfigError",
                                    format!("couldn't find key {} in Secret {namespace}/{}", r.key, r.name),
                                ));
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(missing(&r.name)),
                    }
                } else if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path).unwrap_or_default()
                } else {
                    continue;
                }
            }
            (None, None) => String::new(),
        };
        set(&mut env, e.name.clone(), value);
    }
    let mut files = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(v) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else {
            return Err((
                "CreateContainerConfigError",
                format!("volume \"{}\" of volumeMount not found", m.name),
            ));
        };
        let Some(sv) = &v.secret else { continue };
        let secret_name = sv.secret_name.clone().unwrap_or_default();
        let Some(s) = secret(&secret_name) else {
            if sv.optional == Some(true) {
                continue;
            }
            return Err((
                "ContainerCreating",
                format!(
                    "MountVolume.SetUp failed for volume \"{}\" : secret \"{secret_name}\" not found",
                    v.name
                ),
            ));
        };
        let data = s.data.clone().unwrap_or_default();
        // The volume's files by their path in it.
        let mut volume: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        match &sv.items {
            Some(items) => {
                for item in items {
                    match data.get(&item.key) {
                        Some(bytes) => {
                            volume.insert(item.path.clone(), bytes.0.clone());
                        }
                        None => {
                            return Err((
                                "ContainerCreating",
                                format!(
                                    "MountVolume.SetUp failed for volume \"{}\" : references non-existent secret key: {}",
                                    v.name, item.key
                                ),
                            ));
                        }
                    }
                }
            }
            None => volume.extend(data.into_iter().map(|(k, b)| (k, b.0))),
        }
        let root = m.mount_path.trim_end_matches('/');
        match &m.sub_path {
            Some(sub) if !sub.is_empty() => match volume.remove(sub) {
                Some(bytes) => files.push((root.to_string(), bytes)),
                None => {
                    return Err((
                        "CreateContainerConfigError",
                        format!(
                            "failed to prepare subPath for volumeMount \"{}\" of container \"{}\"",
                            m.name, c.name
                        ),
                    ));
                }
            },
            _ => files.extend(volume.into_iter().map(|(p, b)| (format!("{root}/{p}"), b))),
        }
    }
    Ok((env, files))
}

/// A pod field an env var's `fieldRef` names.
fn field(pod: &Pod, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => Some(NODE_NAME.into()),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
        "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
        _ => {
            keyed("metadata.labels['", &m.labels).or_else(|| keyed("metadata.annotations['", &m.annotations))
        }
    }
}

/// `$(NAME)` replaced by the value of an earlier variable, `$$` by `$`, as the kubelet expands
/// `command`, `args` and `env[].value`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == r[..end])
        {
            out.push_str(v);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A Kubernetes quantity (`512Mi`, `1G`, `500m`, `2`) as a number.
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suffix, factor) in suffixes {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse().ok()
}

fn tar_of(files: &[(String, Vec<u8>)]) -> Bytes {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        let rel = path.trim_start_matches('/');
        let mut acc = String::new();
        for part in rel.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            dirs.insert(acc.clone());
        }
    }
    for d in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o777);
        header.set_size(0);
        let _ = builder.append_data(&mut header, format!("{d}/"), std::io::empty());
    }
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(if bytes.is_empty() { 0o666 } else { 0o444 });
        header.set_size(bytes.len() as u64);
        let _ = builder.append_data(&mut header, path.trim_start_matches('/'), bytes.as_slice());
    }
    Bytes::from(builder.into_inner().unwrap_or_default())
}

/// How a pod's log is read.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub follow: bool,
    pub timestamps: bool,
    /// Whole seconds since the epoch: only entries at or after it.
    pub since: Option<i64>,
    pub tail: Option<i64>,
}

/// A pod container's log, stdout and stderr merged, one line an entry, each with its RFC 3339
/// time first when `timestamps`.
pub(crate) async fn logs(
    s: &Arc<Shared>,
    pod: &Pod,
    container: Option<&str>,
    o: LogOptions,
) -> Result<impl Stream<Item = Bytes> + Send + 'static> {
    let pod_name = name(&pod.metadata);
    let containers: Vec<&Container> = pod.spec.iter().flat_map(|s| &s.containers).collect();
    let init: Vec<&Container> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .collect();
    let c = match container {
        Some(n) => containers
            .iter()
            .chain(&init)
            .find(|c| c.name == n)
            .copied()
            .ok_or_else(|| ApiError::bad_request(format!("container {n} is not valid for pod {pod_name}")))?,
        None if containers.len() == 1 => containers[0],
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}"
            )));
        }
    };
    let docker_name = container_name(&s.id, pod, &c.name);
    if s.docker.inspect_container(&docker_name, None).await.is_err() {
        let reason = pod
            .status
            .iter()
            .flat_map(|st| {
                st.container_statuses
                    .iter()
                    .flatten()
                    .chain(st.init_container_statuses.iter().flatten())
            })
            .find(|st| st.name == c.name)
            .and_then(|st| st.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .unwrap_or_else(|| "ContainerCreating".into());
        return Err(ApiError::bad_request(format!(
            "container \"{}\" in pod \"{pod_name}\" is waiting to start: {reason}",
            c.name
        )));
    }
    let mut options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .follow(o.follow);
    if let Some(since) = o.since {
        options = options.since(i32::try_from(since.max(0)).unwrap_or(i32::MAX));
    }
    if let Some(tail) = o.tail {
        options = options.tail(&tail.to_string());
    }
    let timestamps = o.timestamps;
    let raw = s.docker.logs(&docker_name, Some(options.build()));
    Ok(raw.filter_map(move |frame| {
        let out = match frame {
            Ok(f) => {
                let bytes = f.into_bytes();
                if timestamps {
                    Some(bytes)
                } else {
                    match bytes.iter().position(|&b| b == b' ') {
                        Some(i) => Some(bytes.slice(i + 1..)),
                        None => Some(bytes),
                    }
                }
            }
            Err(_) => None,
        };
        std::future::ready(out)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_the_kubelets() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1G"), Some(1e9));
    }
}
