//! What the launcher knows of its pods, kept current by one watch per namespace (one in all, in
//! the usual case of a launcher serving one namespace): every pod labelled with this launcher,
//! listed once and then followed, relisted by the watcher whenever the server says its history
//! has moved on (`410 Gone`).
//!
//! `status` of any number of running attempts reads this cache, so that heartbeats cost no
//! request each. The cache holds what the server said; [`Cache::pod`] answers `None` when it
//! has not seen the pod (yet, or any more), and the caller then reads the Job itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::spec::{CONTAINER, STAGE_CONTAINER, SUBTASKS_VOLUME};

/// What the launcher needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// When the pod was created, in seconds since the epoch.
    pub created: i64,
    /// A delete is under way.
    pub deleting: bool,
    /// The task container's state.
    pub container: Container,
    /// The stage container's state, for a pod that has one ([`crate::spec::STAGE_CONTAINER`]).
    pub stage: Container,
    /// `PodScheduled=False`: its reason and message (`Unschedulable`).
    pub unscheduled: Option<(String, String)>,
    /// The pod's own reason and message (`Evicted`, `DeadlineExceeded`).
    pub reason: Option<(String, String)>,
    /// The task's pending deadline, in seconds, from the pod's annotation.
    pub pending_deadline: Option<u64>,
    /// The task container has `$FERRY_SUBTASKS` on the volume its stage container holds
    /// ([`crate::spec::SUBTASKS_VOLUME`]); the pod says so itself, whatever this launcher's
    /// settings are now.
    pub subtasks: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Container {
    #[default]
    Unknown,
    Waiting {
        reason: String,
        message: String,
    },
    Running,
    Terminated {
        code: i32,
        reason: String,
        /// The termination message: what the task wrote to `$FERRY_OUTPUTS`.
        message: String,
    },
}

impl PodView {
    pub fn from_pod(pod: &Pod) -> PodView {
        let status = pod.status.clone().unwrap_or_default();
        let state_of = |name: &str| {
            status
                .container_statuses
                .iter()
                .flatten()
                .find(|c| c.name == name)
                .and_then(|c| c.state.clone())
                .map(container_state)
                .unwrap_or_default()
        };
        let container = state_of(CONTAINER);
        let stage = state_of(STAGE_CONTAINER);
        let unscheduled = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            });
        PodView {
            name: pod.metadata.name.clone().unwrap_or_default(),
            phase: status.phase.unwrap_or_else(|| "Pending".into()),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            container,
            stage,
            unscheduled,
            reason: status.reason.map(|r| (r, status.message.unwrap_or_default())),
            pending_deadline: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::names::ANNOTATION_PENDING_DEADLINE))
                .and_then(|v| v.parse().ok()),
            subtasks: pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .filter(|c| c.name == CONTAINER)
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .any(|m| m.name == SUBTASKS_VOLUME),
        }
    }

    pub fn terminal(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }

    /// The task has ended: the pod is over, or its task container is (a pod whose stage
    /// container holds its files runs on until it is deleted).
    pub fn ended(&self) -> bool {
        self.terminal() || matches!(self.container, Container::Terminated { .. })
    }
}

fn container_state(s: k8s_openapi::api::core::v1::ContainerState) -> Container {
    if let Some(t) = s.terminated {
        Container::Terminated {
            code: t.exit_code,
            reason: t.reason.unwrap_or_default(),
            message: t.message.unwrap_or_default(),
        }
    } else if s.running.is_some() {
        Container::Running
    } else if let Some(w) = s.waiting {
        Container::Waiting {
            reason: w.reason.unwrap_or_default(),
            message: w.message.unwrap_or_default(),
        }
    } else {
        Container::Unknown
    }
}

/// The Job a pod belongs to, from the label its controller sets.
fn job_of(pod: &Pod) -> Option<String> {
    let labels = pod.metadata.labels.as_ref()?;
    labels
        .get("batch.kubernetes.io/job-name")
        .or_else(|| labels.get("job-name"))
        .cloned()
}

#[derive(Default)]
struct Namespace {
    /// The first list has been seen: a pod missing from the cache is missing from the server.
    synced: bool,
    /// By Job name; the newest pod when a Job has more than one.
    pods: HashMap<String, (i64, PodView)>,
}

/// The launcher's pods, by namespace and Job. Cheap to clone.
#[derive(Clone)]
pub struct Cache(Arc<Inner>);

struct Inner {
    client: Client,
    selector: String,
    namespaces: Mutex<HashMap<String, Namespace>>,
    /// Bumped at every change: what waiters wait on.
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
}

/// What the cache says of a Job's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Pod(Box<PodView>),
    /// The cache is in sync and holds no pod of the Job.
    Absent,
    /// The namespace's first list has not arrived yet.
    NotSynced,
}

impl Cache {
    /// A cache of the pods matching `selector`, whose watches end with `shutdown`.
    pub fn new(client: Client, selector: String, shutdown: CancellationToken) -> Cache {
        Cache(Arc::new(Inner {
            client,
            selector,
            namespaces: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            shutdown,
        }))
    }

    fn namespaces(&self) -> std::sync::MutexGuard<'_, HashMap<String, Namespace>> {
        self.0.namespaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the namespace's watch, unless it runs.
    pub fn watch(&self, namespace: &str) {
        {
            let mut namespaces = self.namespaces();
            if namespaces.contains_key(namespace) {
                return;
            }
            namespaces.insert(namespace.to_string(), Namespace::default());
        }
        let cache = self.clone();
        let namespace = namespace.to_string();
        tokio::spawn(async move { cache.follow(namespace).await });
    }

    async fn follow(self, namespace: String) {
        let api: Api<Pod> = Api::namespaced(self.0.client.clone(), &namespace);
        let config = watcher::Config::default().labels(&self.0.selector);
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        let mut fresh: Option<HashMap<String, (i64, PodView)>> = None;
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                _ = self.0.shutdown.cancelled() => return,
            };
            let Some(event) = event else { return };
            match event {
                Ok(Event::Init) => fresh = Some(HashMap::new()),
                Ok(Event::InitApply(pod)) => {
                    if let (Some(f), Some(job)) = (fresh.as_mut(), job_of(&pod)) {
                        insert(f, job, &pod);
                    }
                }
                Ok(Event::InitDone) => {
                    let pods = fresh.take().unwrap_or_default();
                    self.update(&namespace, |ns| {
                        ns.synced = true;
                        ns.pods = pods;
                    });
                }
                Ok(Event::Apply(pod)) => {
                    if let Some(job) = job_of(&pod) {
                        self.update(&namespace, |ns| insert(&mut ns.pods, job, &pod));
                    }
                }
                Ok(Event::Delete(pod)) => {
                    if let Some(job) = job_of(&pod) {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        self.update(&namespace, |ns| {
                            if ns.pods.get(&job).is_some_and(|(_, v)| v.name == name) {
                                ns.pods.remove(&job);
                            }
                        });
                    }
                }
                Err(e) => tracing::debug!(%namespace, error = %e, "the pod watch failed; it resumes"),
            }
        }
    }

    fn update(&self, namespace: &str, f: impl FnOnce(&mut Namespace)) {
        f(self.namespaces().entry(namespace.to_string()).or_default());
        self.0.changed.send_modify(|v| *v += 1);
    }

    /// What the cache holds of the Job's pod.
    pub fn pod(&self, namespace: &str, job: &str) -> Lookup {
        let namespaces = self.namespaces();
        match namespaces.get(namespace) {
            Some(ns) if ns.synced => match ns.pods.get(job) {
                Some((_, view)) => Lookup::Pod(Box::new(view.clone())),
                None => Lookup::Absent,
            },
            _ => Lookup::NotSynced,
        }
    }

    /// The namespaces watched: every namespace an attempt of this run, adopted or new, used.
    pub fn namespaces_watched(&self) -> Vec<String> {
        let mut names: Vec<String> = self.namespaces().keys().cloned().collect();
        names.sort();
        names
    }

    /// What the API itself holds of the Job's pod, asked when the cache has none: a watch may
    /// not have shown yet a pod that a read of its Job already says ran and ended (a launcher
    /// just restarted, a busy server). A pod found is put in the cache.
    pub async fn ask(&self, namespace: &str, job: &str) -> Result<Lookup, kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.0.client.clone(), namespace);
        let params = kube::api::ListParams::default().labels(&format!("job-name={job}"));
        let listed = pods.list(&params).await?;
        let newest = listed
            .items
            .iter()
            .filter(|p| job_of(p).as_deref() == Some(job))
            .max_by_key(|p| PodView::from_pod(p).created);
        Ok(match newest {
            Some(pod) => {
                self.update(namespace, |ns| insert(&mut ns.pods, job.to_string(), pod));
                Lookup::Pod(Box::new(PodView::from_pod(pod)))
            }
            None => Lookup::Absent,
        })
    }

    /// Forgets a released Job's pod.
    pub fn forget(&self, namespace: &str, job: &str) {
        if let Some(ns) = self.namespaces().get_mut(namespace) {
            ns.pods.remove(job);
        }
    }

    /// Returns after the next change, or after `limit`.
    pub async fn changed(&self, limit: Duration) {
        let mut rx = self.0.changed.subscribe();
        let _ = tokio::time::timeout(limit, rx.changed()).await;
    }

    /// A receiver that sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }
}

fn insert(pods: &mut HashMap<String, (i64, PodView)>, job: String, pod: &Pod) {
    let view = PodView::from_pod(pod);
    let created = view.created;
    match pods.get(&job) {
        Some((t, old)) if *t > created && old.name != view.name => {}
        _ => {
            pods.insert(job, (created, view));
        }
    }
}
