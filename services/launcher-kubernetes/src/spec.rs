//! What one attempt's Job and Secret are: [`JobSpec`], checked before anything is created
//! ([`JobSpec::check`]), turned into the API's objects ([`JobSpec::job`], [`JobSpec::secret`]).
//!
//! - The pod runs the task's command as given: every `$` is written `$$`, because the kubelet
//!   expands `$(VAR)` in `command` and `env[].value`.
//! - The task's `env` (whose values may hold secrets) and its input files are in a Secret owned
//!   by the Job, never in the pod spec: env vars come from it by `secretKeyRef`, each input file
//!   is mounted from it with a `subPath` at its place under the working directory (read-only;
//!   the directory itself stays writable). A Secret holds at most 1 MiB ([`MAX_SECRET_BYTES`]).
//! - `$FERRY_OUTPUTS` is the container's `terminationMessagePath`: the kubelet puts what the
//!   task wrote there into the pod's status (at most 4096 bytes, [`MAX_OUTPUTS_BYTES`]), which is
//!   how outputs come back from a pod whose filesystem is gone. The image needs nothing of
//!   ferry's.
//! - `$FERRY_SUBTASKS` is a file on a small `emptyDir` volume ([`SUBTASKS_FILE`]), and a task
//!   that declares `outputFiles` gets its working directory on another. A second container,
//!   [`STAGE_CONTAINER`], mounts them read-only and holds them: it only sleeps until the pod is
//!   deleted, so that the files outlive the task (and a launcher that was down when it ended)
//!   until the launcher has taken them out with `tar`, through `pods/exec` ([`crate::stage`]).
//!   Its image ([`JobSpec::stage_image`]) needs `sh`, `sleep` and `tar`; the task's image still
//!   needs nothing.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{Job, JobSpec as KubeJobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, LocalObjectReference, PodSpec, PodTemplateSpec,
    ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::names::*;

/// The container's name in every pod.
pub const CONTAINER: &str = "task";

/// The container holding a pod's `$FERRY_SUBTASKS` and, for a task with output files, its
/// working directory after the task ends.
pub const STAGE_CONTAINER: &str = "ferry-stage";

/// Where the stage container mounts the working directory.
pub const STAGE_DIR: &str = "/ferry-stage";

/// Where the stage container mounts the directory of `$FERRY_SUBTASKS`.
pub const STAGE_SUBTASKS_DIR: &str = "/ferry-stage-subtasks";

/// The directory of `$FERRY_SUBTASKS` in the task's container: a volume of its own, so that
/// it is not among the working directory's output files.
pub const SUBTASKS_DIR: &str = "/ferry-subtasks";

/// `$FERRY_SUBTASKS`.
pub const SUBTASKS_FILE: &str = "/ferry-subtasks/subtasks.json";

/// The `emptyDir` volume of [`SUBTASKS_DIR`].
pub const SUBTASKS_VOLUME: &str = "ferry-subtasks";

/// What the subtasks volume may hold before the kubelet evicts the pod: room for the 4 MiB
/// of subtasks an attempt may submit, and no more of the node's disk.
const SUBTASKS_VOLUME_LIMIT: &str = "8Mi";

/// What the stage container runs: nothing, until it is told to stop (a shell as PID 1 ignores
/// SIGTERM unless it traps it, which would hold every delete for the whole grace).
pub const STAGE_HOLD: &str = "trap 'exit 0' TERM; sleep 2147483647 & wait";

/// The container `kubectl` picks when none is named.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// The stage container's requests (its limit is [`STAGE_MEMORY_LIMIT`]): small, but set, so
/// that a namespace whose quota wants every container's resources still admits the pod.
const STAGE_REQUESTS: [(&str, &str); 2] = [("cpu", "10m"), ("memory", "16Mi")];

/// What `tar` may use in the stage container: it streams, holding no file whole.
const STAGE_MEMORY_LIMIT: &str = "64Mi";

/// The `emptyDir` volume of the working directory, in a pod with a stage container.
const WORK_VOLUME: &str = "ferry-work";

/// The command's working directory unless the runner says.
pub const DEFAULT_WORKING_DIR: &str = "/ferry";

/// `$FERRY_OUTPUTS`: the container's termination message file.
pub const OUTPUTS_FILE: &str = "/ferry-outputs/outputs.json";

/// What the kubelet keeps of a termination message: a file this long or longer may have been
/// cut, and is refused.
pub const MAX_OUTPUTS_BYTES: usize = 4096;

/// The most a Secret holds (the API server's limit): env values and input files together.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// The node label `resources.gpuType` selects on: the GPU model as NVIDIA's GPU feature
/// discovery (part of the GPU operator) labels nodes.
pub const GPU_TYPE_LABEL: &str = "nvidia.com/gpu.product";

/// The smallest memory limit container runtimes enforce.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// The volume the Secret is mounted from.
const SECRET_VOLUME: &str = "ferry-task";

/// How the image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    Always,
    IfNotPresent,
    Never,
}

/// One input file: where it goes, relative to the working directory, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: String,
    pub contents: Vec<u8>,
}

/// Everything the API needs for one attempt.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub namespace: String,
    pub name: String,
    pub launcher: String,
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub attempt: u32,
    pub flow: Option<String>,
    pub job_namespace: Option<String>,
    pub image: String,
    pub pull: Pull,
    /// The argument vector, run without a shell; empty runs the image's entrypoint.
    pub command: Vec<String>,
    /// `FERRY_*`: not secret, in the pod spec.
    pub ferry_env: Vec<(String, String)>,
    /// The task's `env`: in the Secret.
    pub env: Vec<(String, String)>,
    pub inputs: Vec<InputFile>,
    pub working_dir: String,
    /// The stage container's image: the pod has that container when it has
    /// [`JobSpec::work_volume`] or [`JobSpec::subtasks`] ([`JobSpec::staged`]).
    pub stage_image: String,
    /// The working directory is an `emptyDir` the stage container holds (a task with output
    /// files).
    pub work_volume: bool,
    /// `$FERRY_SUBTASKS` is [`SUBTASKS_FILE`], on a volume the stage container holds.
    pub subtasks: bool,
    pub service_account: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<ferry_event::payload::Toleration>,
    pub image_pull_secrets: Vec<String>,
    pub priority_class: Option<String>,
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub gpus: Option<ferry_event::payload::Gpus>,
    /// How long the pod may stay Pending before the attempt ends.
    pub pending_deadline_seconds: u64,
    /// The pod's time between SIGTERM and SIGKILL when it is deleted.
    pub grace_seconds: i64,
    /// `activeDeadlineSeconds`: the server stops a Job its launcher forgot.
    pub active_deadline_seconds: Option<i64>,
    /// `ttlSecondsAfterFinished`: the server removes a finished Job its launcher forgot.
    pub ttl_seconds_after_finished: Option<i32>,
}

/// A relative path below the working directory, or why not (hostile names never reach the API).
pub fn input_path(name: &str) -> Result<String, &'static str> {
    if name.starts_with('/') {
        return Err("absolute names are not accepted");
    }
    if name.contains('\\') || name.contains('\0') {
        return Err("names with `\\` or NUL are not accepted");
    }
    let parts: Vec<&str> = name.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err("names with `..` are not accepted");
    }
    if parts.is_empty() {
        return Err("the name is empty");
    }
    Ok(parts.join("/"))
}

impl JobSpec {
    /// Refuses what cannot be honoured, naming the field, before anything is created.
    pub fn check(&self) -> Result<(), String> {
        if self.image.trim().is_empty() {
            return Err("runner.image must name an image".into());
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err("command: an argument contains NUL, which no process can receive".into());
        }
        for (k, v) in self.env.iter().chain(&self.ferry_env) {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(format!(
                    "env: `{}` cannot be passed: names must be non-empty without `=` or NUL, values without NUL",
                    k.escape_debug()
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.inputs {
            let path =
                input_path(&f.path).map_err(|why| format!("inputFiles: {:?} is refused: {why}", f.path))?;
            if !seen.insert(path) {
                return Err(format!("inputFiles: {:?} is given twice", f.path));
            }
        }
        let size: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + self.inputs.iter().map(|f| f.contents.len()).sum::<usize>();
        if size > MAX_SECRET_BYTES {
            return Err(format!(
                "inputFiles and env hold {size} bytes, more than the {MAX_SECRET_BYTES} bytes a Kubernetes Secret holds: \
                 make the files smaller, or have the task fetch them"
            ));
        }
        if let Some(cpu) = self.cpu
            && !(cpu.is_finite() && cpu > 0.0 && cpu < 1e9)
        {
            return Err(format!(
                "resources.cpu must be a positive number of CPUs, not {cpu}"
            ));
        }
        if let Some(m) = self.memory_bytes
            && m < MIN_MEMORY_BYTES
        {
            return Err(format!(
                "resources.memory of {m} bytes cannot be enforced: container runtimes need at least 6 MiB ({MIN_MEMORY_BYTES} bytes)"
            ));
        }
        for (k, v) in &self.node_selector {
            if k.is_empty() || v.len() > 63 {
                return Err(format!(
                    "runner.nodeSelector: `{k}: {v}` is not a label and value"
                ));
            }
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            if let Some(op) = &t.operator
                && op != "Equal"
                && op != "Exists"
            {
                return Err(format!(
                    "runner.tolerations[{i}].operator `{op}` is not known: use `Equal` or `Exists`"
                ));
            }
            if let Some(effect) = &t.effect
                && !matches!(effect.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute")
            {
                return Err(format!(
                    "runner.tolerations[{i}].effect `{effect}` is not known: use `NoSchedule`, `PreferNoSchedule` or `NoExecute`"
                ));
            }
        }
        Ok(())
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_LAUNCHER.to_string(), label_value(&self.launcher)),
            (LABEL_JOB.to_string(), label_value(&self.job_id)),
            (LABEL_TASK.to_string(), label_value(&self.task_id)),
            (LABEL_ATTEMPT.to_string(), label_value(&self.attempt_id)),
        ])
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([
            (ANNOTATION_JOB_ID.to_string(), self.job_id.clone()),
            (ANNOTATION_TASK_ID.to_string(), self.task_id.clone()),
            (ANNOTATION_ATTEMPT_ID.to_string(), self.attempt_id.clone()),
            (ANNOTATION_ATTEMPT.to_string(), self.attempt.to_string()),
        ]);
        if let Some(f) = &self.flow {
            a.insert(ANNOTATION_FLOW.to_string(), f.clone());
        }
        if let Some(n) = &self.job_namespace {
            a.insert(ANNOTATION_NAMESPACE.to_string(), n.clone());
        }
        a.insert(
            ANNOTATION_PENDING_DEADLINE.to_string(),
            self.pending_deadline_seconds.to_string(),
        );
        if self.staged() {
            // What `kubectl logs` and `kubectl exec` pick in a pod of two containers.
            a.insert(DEFAULT_CONTAINER_ANNOTATION.to_string(), CONTAINER.to_string());
        }
        a
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            annotations: Some(self.annotations()),
            ..Default::default()
        }
    }

    /// Whether the pod has a stage container: it holds output files or `$FERRY_SUBTASKS`.
    pub fn staged(&self) -> bool {
        self.work_volume || self.subtasks
    }

    /// Whether the attempt needs a Secret (it has env or input files).
    pub fn needs_secret(&self) -> bool {
        !self.env.is_empty() || !self.inputs.is_empty()
    }

    fn env_key(i: usize) -> String {
        format!("env-{i}")
    }

    fn input_key(i: usize) -> String {
        format!("input-{i}")
    }

    /// The Job.
    pub fn job(&self) -> Job {
        let escape = |s: &str| s.replace('$', "$$");
        let mut env: Vec<EnvVar> = self
            .ferry_env
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(escape(v)),
                value_from: None,
            })
            .collect();
        for (i, (k, _)) in self.env.iter().enumerate() {
            env.push(EnvVar {
                name: k.clone(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: self.name.clone(),
                        key: Self::env_key(i),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            });
        }
        let work = self.working_dir.trim_end_matches('/');
        let work_mount = self.work_volume.then(|| VolumeMount {
            name: WORK_VOLUME.into(),
            mount_path: work.to_string(),
            ..Default::default()
        });
        let subtasks_mount = self.subtasks.then(|| VolumeMount {
            name: SUBTASKS_VOLUME.into(),
            mount_path: SUBTASKS_DIR.into(),
            ..Default::default()
        });
        let mounts: Vec<VolumeMount> = work_mount
            .into_iter()
            .chain(subtasks_mount)
            .chain(self.inputs.iter().enumerate().map(|(i, f)| VolumeMount {
                name: SECRET_VOLUME.into(),
                mount_path: format!("{work}/{}", input_path(&f.path).unwrap_or_default()),
                sub_path: Some(Self::input_key(i)),
                read_only: Some(true),
                ..Default::default()
            }))
            .collect();
        let mut limits = BTreeMap::new();
        if let Some(cpu) = self.cpu {
            limits.insert(
                "cpu".to_string(),
                Quantity(format!("{}m", (cpu * 1000.0).ceil() as u64)),
            );
        }
        if let Some(m) = self.memory_bytes {
            limits.insert("memory".to_string(), Quantity(m.to_string()));
        }
        if let Some(g) = self.gpus.as_ref().filter(|g| g.count > 0) {
            limits.insert("nvidia.com/gpu".to_string(), Quantity(g.count.to_string()));
        }
        let container = Container {
            name: CONTAINER.into(),
            image: Some(self.image.clone()),
            image_pull_policy: Some(
                match self.pull {
                    Pull::Always => "Always",
                    Pull::IfNotPresent => "IfNotPresent",
                    Pull::Never => "Never",
                }
                .into(),
            ),
            command: (!self.command.is_empty()).then(|| self.command.iter().map(|a| escape(a)).collect()),
            env: Some(env),
            working_dir: Some(work.to_string()),
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            // Requests equal limits: the pod gets what it asked for, and no more.
            resources: (!limits.is_empty()).then(|| ResourceRequirements {
                requests: Some(limits.clone()),
                limits: Some(limits),
                ..Default::default()
            }),
            termination_message_path: Some(OUTPUTS_FILE.into()),
            termination_message_policy: Some("File".into()),
            ..Default::default()
        };
        let mut volumes = Vec::new();
        if self.work_volume {
            volumes.push(Volume {
                name: WORK_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
        }
        if self.subtasks {
            volumes.push(Volume {
                name: SUBTASKS_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(SUBTASKS_VOLUME_LIMIT.into())),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let held = |volume: &str, path: &str| VolumeMount {
            name: volume.into(),
            mount_path: path.into(),
            read_only: Some(true),
            ..Default::default()
        };
        let stage_mounts: Vec<VolumeMount> = (self.work_volume.then(|| held(WORK_VOLUME, STAGE_DIR)))
            .into_iter()
            .chain(self.subtasks.then(|| held(SUBTASKS_VOLUME, STAGE_SUBTASKS_DIR)))
            .collect();
        if !self.inputs.is_empty() {
            volumes.push(Volume {
                name: SECRET_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(self.name.clone()),
                    items: Some(
                        (0..self.inputs.len())
                            .map(|i| k8s_openapi::api::core::v1::KeyToPath {
                                key: Self::input_key(i),
                                path: Self::input_key(i),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    default_mode: Some(0o444),
                    optional: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let stage = self.staged().then(|| Container {
            name: STAGE_CONTAINER.into(),
            image: Some(self.stage_image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(vec!["sh".into(), "-c".into(), STAGE_HOLD.into()]),
            resources: Some(ResourceRequirements {
                requests: Some(
                    STAGE_REQUESTS
                        .iter()
                        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                        .collect(),
                ),
                limits: Some(BTreeMap::from([(
                    "memory".to_string(),
                    Quantity(STAGE_MEMORY_LIMIT.into()),
                )])),
                ..Default::default()
            }),
            volume_mounts: Some(stage_mounts),
            ..Default::default()
        });
        let pod = PodSpec {
            restart_policy: Some("Never".into()),
            containers: std::iter::once(container).chain(stage).collect(),
            volumes: (!volumes.is_empty()).then_some(volumes),
            service_account_name: self.service_account.clone(),
            node_selector: {
                let mut selector = self.node_selector.clone();
                if let Some(kind) = self.gpus.as_ref().and_then(|g| g.kind.clone()) {
                    selector.insert(GPU_TYPE_LABEL.to_string(), kind);
                }
                (!selector.is_empty()).then_some(selector)
            },
            tolerations: (!self.tolerations.is_empty()).then(|| {
                self.tolerations
                    .iter()
                    .map(|t| Toleration {
                        key: t.key.clone(),
                        operator: t.operator.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                        toleration_seconds: t.toleration_seconds,
                    })
                    .collect()
            }),
            image_pull_secrets: (!self.image_pull_secrets.is_empty()).then(|| {
                self.image_pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect()
            }),
            priority_class_name: self.priority_class.clone(),
            termination_grace_period_seconds: Some(self.grace_seconds),
            ..Default::default()
        };
        Job {
            metadata: self.meta(),
            spec: Some(KubeJobSpec {
                backoff_limit: Some(0),
                completions: Some(1),
                parallelism: Some(1),
                active_deadline_seconds: self.active_deadline_seconds,
                ttl_seconds_after_finished: self.ttl_seconds_after_finished,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        annotations: Some(self.annotations()),
                        ..Default::default()
                    }),
                    spec: Some(pod),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The Secret holding the task's env and input files, owned by the Job `job_uid`, so that
    /// deleting the Job deletes it.
    pub fn secret(&self, job_uid: &str) -> Secret {
        let mut data = BTreeMap::new();
        for (i, (_, v)) in self.env.iter().enumerate() {
            data.insert(Self::env_key(i), ByteString(v.clone().into_bytes()));
        }
        for (i, f) in self.inputs.iter().enumerate() {
            data.insert(Self::input_key(i), ByteString(f.contents.clone()));
        }
        let mut meta = self.meta();
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: self.name.clone(),
            uid: job_uid.to_string(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        }]);
        Secret {
            metadata: meta,
            data: Some(data),
            type_: Some("Opaque".into()),
            immutable: Some(true),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> JobSpec {
        JobSpec {
            namespace: "batch".into(),
            name: job_name("a1"),
            launcher: "launcher-1".into(),
            job_id: "j/1".into(),
            task_id: "t".into(),
            attempt_id: "a1".into(),
            attempt: 1,
            flow: Some("nightly".into()),
            job_namespace: None,
            image: "busybox".into(),
            pull: Pull::IfNotPresent,
            command: vec!["sh".into(), "-c".into(), "echo $(HOME) $$".into()],
            ferry_env: vec![("FERRY_TASK_ID".into(), "t".into())],
            env: vec![("TOKEN".into(), "s3cret".into())],
            inputs: vec![InputFile {
                path: "data/in.txt".into(),
                contents: b"x".to_vec(),
            }],
            working_dir: DEFAULT_WORKING_DIR.into(),
            stage_image: "busybox:1.37".into(),
            work_volume: false,
            subtasks: false,
            service_account: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            image_pull_secrets: Vec::new(),
            priority_class: None,
            cpu: Some(0.5),
            memory_bytes: Some(64 << 20),
            gpus: Some(ferry_event::payload::Gpus {
                count: 1,
                kind: Some("NVIDIA-L4".into()),
            }),
            pending_deadline_seconds: 300,
            grace_seconds: 10,
            active_deadline_seconds: Some(70),
            ttl_seconds_after_finished: Some(3600),
        }
    }

    #[test]
    fn secrets_stay_out_of_the_pod_spec_and_dollars_stay_literal() {
        let s = spec();
        let job = s.job();
        let text = serde_json::to_string(&job).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        let c = &job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(c.command.as_ref().unwrap()[2], "echo $$(HOME) $$$$");
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()[GPU_TYPE_LABEL], "NVIDIA-L4");
        assert_eq!(limits["cpu"].0, "500m");
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, "/ferry/data/in.txt");
        assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(0));
        let labels = job.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_JOB], label_value("j/1"));
        assert_eq!(job.metadata.annotations.unwrap()[ANNOTATION_JOB_ID], "j/1");
        let secret = s.secret("uid-1");
        assert_eq!(secret.data.unwrap()["env-0"].0, b"s3cret");
        assert_eq!(secret.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn hostile_inputs_and_oversized_secrets_are_refused_by_field() {
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            let mut s = spec();
            s.inputs[0].path = bad.into();
            let e = s.check().unwrap_err();
            assert!(
                e.starts_with("inputFiles") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
        let mut s = spec();
        s.inputs[0].contents = vec![b'x'; MAX_SECRET_BYTES + 1];
        assert!(s.check().unwrap_err().starts_with("inputFiles"));
    }

    #[test]
    fn a_stage_container_exactly_with_output_files_or_subtasks() {
        let plain = spec().job();
        let pod = plain.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers.len(), 1);
        assert!(pod.volumes.unwrap().iter().all(|v| v.empty_dir.is_none()));

        let mut s = spec();
        s.work_volume = true;
        s.check().unwrap();
        let pod = s.job().spec.unwrap().template.spec.unwrap();
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [CONTAINER, STAGE_CONTAINER]);
        let volumes = pod.volumes.as_ref().unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v.name == WORK_VOLUME && v.empty_dir.is_some())
        );
        let task = &pod.containers[0];
        let mounts = task.volume_mounts.as_ref().unwrap();
        // The working directory first, the input files (subPaths of the Secret) inside it.
        assert_eq!(
            (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
            (WORK_VOLUME, "/ferry")
        );
        assert_eq!(mounts[1].mount_path, "/ferry/data/in.txt");
        let stage = &pod.containers[1];
        assert_eq!(stage.image.as_deref(), Some("busybox:1.37"));
        let stage_mount = &stage.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (stage_mount.mount_path.as_str(), stage_mount.read_only),
            (STAGE_DIR, Some(true))
        );
        // No `$` for the kubelet to expand; small resources of its own, set for quotas.
        assert!(!STAGE_HOLD.contains('$'));
        let r = stage.resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, STAGE_MEMORY_LIMIT);
        assert!(r.limits.as_ref().unwrap().get("cpu").is_none());
        let annotations = s
            .job()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations[DEFAULT_CONTAINER_ANNOTATION], CONTAINER);
    }

    #[test]
    fn subtasks_are_on_a_bounded_volume_of_their_own_beside_the_working_directory() {
        let mut s = spec();
        s.subtasks = true;
        s.check().unwrap();
        let pod = s.job().spec.unwrap().template.spec.unwrap();
        let volumes = pod.volumes.as_ref().unwrap();
        assert!(volumes.iter().all(|v| v.name != WORK_VOLUME), "{volumes:?}");
        let subtasks = volumes.iter().find(|v| v.name == SUBTASKS_VOLUME).unwrap();
        let limit = subtasks.empty_dir.as_ref().unwrap().size_limit.as_ref();
        assert_eq!(limit.map(|q| q.0.as_str()), Some(SUBTASKS_VOLUME_LIMIT));
        let mounts = |c: &Container| -> Vec<(String, String, Option<bool>)> {
            c.volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == SUBTASKS_VOLUME)
                .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
                .collect()
        };
        assert_eq!(
            mounts(&pod.containers[0]),
            [(SUBTASKS_VOLUME.into(), SUBTASKS_DIR.into(), None)]
        );
        assert_eq!(
            mounts(&pod.containers[1]),
            [(SUBTASKS_VOLUME.into(), STAGE_SUBTASKS_DIR.into(), Some(true))]
        );
        assert_eq!(SUBTASKS_FILE.rsplit_once('/').map(|(d, _)| d), Some(SUBTASKS_DIR));
    }
}
