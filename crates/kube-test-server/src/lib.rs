//! A Kubernetes API server for tests, where no real one can be installed: it speaks the REST
//! wire format for Jobs, pods, Secrets and pod logs, and runs each Job's pod for real as a
//! container on a Docker engine, so that exit codes, OOM kills, logs and deletes are real.
//!
//! What it serves (plain HTTP on 127.0.0.1; [`TestServer::kubeconfig`] points a client at it):
//!
//! - `batch/v1` Jobs and `v1` pods and Secrets: create (`409 AlreadyExists`), get (`404
//!   NotFound`), list and watch by namespace or across namespaces, with label selectors;
//!   bodies are the `k8s-openapi` types, so they are what the API accepts and returns; every
//!   object has a `resourceVersion` ([`store`]);
//! - watches (`?watch=1&resourceVersion=N`): `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when
//!   asked for, and `410 Gone` for a version older than the history holds;
//! - deletes with `propagationPolicy`: `Background` and `Foreground` delete what the object
//!   owns (`ownerReferences`: a Job's pods and Secrets), `Orphan` leaves it;
//! - a Job controller and a kubelet ([`kubelet`]): one pod per Job (`backoffLimit: 0`), its
//!   init containers then its containers, side by side, run on the Docker engine (the pod's
//!   `emptyDir` volumes are Docker volumes they share); pod and Job status
//!   with conditions (`Complete`; `Failed` with `BackoffLimitExceeded` or `DeadlineExceeded`),
//!   container states waiting / running / terminated with `exitCode` and `OOMKilled`;
//!   `activeDeadlineSeconds` and `ttlSecondsAfterFinished` enforced; a pod whose image is not on
//!   the engine waits with `ErrImageNeverPull` / `ImagePullBackOff`, one whose `nodeSelector`
//!   (or GPU request) no node matches stays unscheduled (`Unschedulable`);
//! - pod logs with `follow`, `sinceTime`, `timestamps` and `container`, from the engine;
//! - `pods/exec` over a WebSocket with the API server's channel protocol, backed by `docker
//!   exec` ([`exec`]);
//! - a count of requests by verb and resource ([`TestServer::counts`]) for benchmarks.
//!
//! What it does not do: authentication, admission, field selectors beyond `metadata.name`,
//! patches, `pods/attach` and exec with stdin or a terminal, pulling images (there is no
//! registry), restarts, real scheduling of resources other than GPUs.

mod api;
mod exec;
pub mod kubelet;
pub mod selector;
pub mod status;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use store::{DEFAULT_HISTORY, Kind, Store};

/// The one node's name.
pub const NODE_NAME: &str = "ferry-test-node";

/// Every container the server runs carries this label, with the server's id as value.
pub const CONTAINER_LABEL: &str = "dev.ferry.kube-test-server";

/// Requests served, by `(verb, resource)`: `("create", "jobs")`, `("watch", "pods")`,
/// `("get", "pods/log")`.
pub type Counts = BTreeMap<(String, String), u64>;

/// What the server's parts share.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    /// The store's version after each change, for watches to wake on.
    pub changed: watch::Sender<u64>,
    pub docker: Docker,
    /// This server's id: its containers' label, and part of their names.
    pub id: String,
    pub node_labels: BTreeMap<String, String>,
    pub node_mounts: Vec<(PathBuf, String)>,
    /// See [`Options::start_delay`].
    pub start_delay: Duration,
    pub counts: Mutex<Counts>,
    /// Each live pod's runner, by pod uid: cancelled (with the grace to stop within) when the
    /// pod is deleted.
    pub pods: Mutex<HashMap<String, PodHandle>>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

#[derive(Clone)]
pub(crate) struct PodHandle {
    pub deleted: CancellationToken,
    pub grace: Arc<Mutex<Duration>>,
    /// Told once the pod and its containers are gone.
    pub gone: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>,
}

impl Shared {
    /// Runs `f` on the store and wakes the watches.
    pub fn change<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (r, version) = {
            let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let r = f(&mut store);
            (r, store.version())
        };
        self.changed.send_replace(version);
        r
    }

    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&store)
    }

    pub fn count(&self, verb: &str, resource: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
    }
}

/// How to start a [`TestServer`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch events kept for resuming watches ([`DEFAULT_HISTORY`]).
    pub history: usize,
    /// The labels of the one node, which `nodeSelector`s are matched against.
    pub node_labels: BTreeMap<String, String>,
    /// Directories of the host bind-mounted into every container of every pod, as (host
    /// directory, path in the container): what tests watch tasks through from outside, where a
    /// cluster would need a `hostPath` volume. None by default.
    pub node_mounts: Vec<(PathBuf, String)>,
    /// How long the node takes to start each container once it has made it (a slow runtime, a
    /// busy node), the pod showing `ContainerCreating` meanwhile. A delete that arrives then
    /// does not stop the start, as it does not on a kubelet mid-sync: the container starts and
    /// is then stopped within the grace. None by default.
    pub start_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: DEFAULT_HISTORY,
            node_labels: [
                ("kubernetes.io/hostname", NODE_NAME),
                ("kubernetes.io/os", "linux"),
                ("kubernetes.io/arch", "amd64"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            node_mounts: Vec::new(),
            start_delay: Duration::ZERO,
        }
    }
}

/// A running test API server. Dropping it stops serving; [`TestServer::stop`] also removes
/// every container it started.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer").field("addr", &self.addr).finish()
    }
}

impl TestServer {
    /// Starts a server on a free port of 127.0.0.1 running pods on `docker`.
    pub async fn start(docker: Docker, options: Options) -> std::io::Result<TestServer> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.history)),
            changed: watch::channel(1).0,
            docker,
            id,
            node_labels: options.node_labels,
            node_mounts: options.node_mounts,
            start_delay: options.start_delay,
            counts: Mutex::new(Counts::new()),
            pods: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = api::router(shared.clone());
        let stop = shared.shutdown.clone();
        tokio::spawn(async move {
            let serve =
                axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "the test API server stopped");
            }
        });
        Ok(TestServer { addr, shared })
    }

    /// Starts a server on the Docker engine `DOCKER_HOST` names.
    pub async fn start_from_env(options: Options) -> std::io::Result<TestServer> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let docker = Docker::connect_with_host(&host)
            .map_err(std::io::Error::other)?
            .negotiate_version()
            .await
            .map_err(std::io::Error::other)?;
        TestServer::start(docker, options).await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This server's id, the value of [`CONTAINER_LABEL`] on its containers.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// A kubeconfig whose current context reaches this server, in `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ferry-test\n  cluster:\n    server: {url}\n\
             users:\n- name: ferry-test\n  user:\n    token: ferry-test-token\n\
             contexts:\n- name: ferry-test\n  context:\n    cluster: ferry-test\n    user: ferry-test\n    namespace: {namespace}\n\
             current-context: ferry-test\n",
            url = self.url()
        )
    }

    /// Requests served so far, by verb and resource.
    pub fn counts(&self) -> Counts {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reset_counts(&self) {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The names of the Jobs, pods and Secrets that exist, as `kind namespace/name`.
    pub fn objects(&self) -> Vec<String> {
        let all = selector::Selector::default();
        self.shared.read(|s| {
            let mut names = Vec::new();
            for job in s.list::<k8s_openapi::api::batch::v1::Job>(None, &all) {
                names.push(format!("job {}/{}", ns(&job.metadata), name(&job.metadata)));
            }
            for pod in s.list::<k8s_openapi::api::core::v1::Pod>(None, &all) {
                names.push(format!("pod {}/{}", ns(&pod.metadata), name(&pod.metadata)));
            }
            for secret in s.list::<k8s_openapi::api::core::v1::Secret>(None, &all) {
                names.push(format!(
                    "secret {}/{}",
                    ns(&secret.metadata),
                    name(&secret.metadata)
                ));
            }
            names
        })
    }

    /// A copy of a pod, if it exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<k8s_openapi::api::core::v1::Pod> {
        self.shared.read(|s| s.get(namespace, name).cloned())
    }

    /// The pods of a Job.
    pub fn pods_of(&self, namespace: &str, job: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
        let selector = selector::Selector::parse(&format!("job-name={job}")).unwrap_or_default();
        self.shared.read(|s| s.list(Some(namespace), &selector))
    }

    /// The Docker container running a pod's container, by name (`kts-…`).
    pub fn container_name(&self, pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> String {
        kubelet::container_name(&self.shared.id, pod, container)
    }

    /// Stops serving, stops and removes every container the server started, and waits for it.
    pub async fn stop(self) {
        self.stop_pods();
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Has every pod's runner stop and remove its containers at once.
    fn stop_pods(&self) {
        let handles: Vec<PodHandle> = self
            .shared
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for h in handles {
            *h.grace.lock().unwrap_or_else(|e| e.into_inner()) = Duration::ZERO;
            h.deleted.cancel();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_pods();
        self.shared.shutdown.cancel();
    }
}

pub(crate) fn ns(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("")
}

pub(crate) fn name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}
