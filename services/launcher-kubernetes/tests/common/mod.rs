//! Shared by the tests: a test API server ([`ferry_kube_test_server`]) on the private Docker
//! engine the test scripts start, a kubeconfig pointing at it, and a kube client read from that
//! kubeconfig, as a launcher reads one.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{KubernetesRunner, PullPolicy, Resources, Runner};
use ferry_event::template::Template;
use ferry_kube_test_server::{Options, TestServer};
use ferry_launcher::Backend;
use ferry_launcher::conformance::{Program, Target};
use ferry_launcher::journal::Journal;
use ferry_launcher_kubernetes::{Kubernetes, Settings, launcher_id, names};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The namespace the tests' Jobs run in.
pub const NAMESPACE: &str = "ferry-test";

/// The busybox image `docker_up` imports.
pub fn image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "ferry-test/busybox:1".to_string())
}

/// Whether the Docker engine the tests need was given. Outside CI a missing engine skips the
/// test, saying so; in CI (`CI=true`) it fails it.
pub fn docker_given(test: &str) -> bool {
    if std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty()) {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "DOCKER_HOST is not set: the test scripts start a private dockerd (source scripts/services.sh && docker_up)"
    );
    eprintln!("SKIPPED {test}: DOCKER_HOST is not set (source scripts/services.sh && docker_up)");
    false
}

/// A test API server running pods on the engine `DOCKER_HOST` names.
pub async fn server() -> TestServer {
    server_with(Options::default()).await
}

/// A test API server with `options`.
pub async fn server_with(options: Options) -> TestServer {
    TestServer::start_from_env(options)
        .await
        .expect("the test API server starts")
}

/// Writes the server's kubeconfig into `dir` and reads a client from it.
pub async fn client(server: &TestServer, dir: &Path) -> Client {
    let path = dir.join("kubeconfig");
    if !path.exists() {
        std::fs::write(&path, server.kubeconfig(NAMESPACE)).expect("write the kubeconfig");
    }
    let kubeconfig = Kubeconfig::read_from(&path).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a kube config from the kubeconfig");
    assert_eq!(config.default_namespace, NAMESPACE);
    Client::try_from(config).expect("a kube client")
}

/// The kubernetes backend on a test API server, as the conformance suite sees it.
pub struct Kube {
    pub server: TestServer,
    docker: bollard::Docker,
    /// The stage image of the backends made from now on.
    stage_image: std::sync::Mutex<String>,
    /// Whether the backends made from now on give tasks `$FERRY_SUBTASKS`.
    subtasks: std::sync::atomic::AtomicBool,
}

impl Kube {
    pub async fn new() -> Kube {
        Kube::with(Options::default()).await
    }

    /// On a test API server started with `options`.
    pub async fn with(options: Options) -> Kube {
        let server = server_with(options).await;
        let host = std::env::var("DOCKER_HOST").expect("DOCKER_HOST");
        let docker = bollard::Docker::connect_with_host(&host)
            .expect("a Docker client")
            .negotiate_version()
            .await
            .expect("the Docker engine answers");
        Kube {
            server,
            docker,
            stage_image: std::sync::Mutex::new(image()),
            subtasks: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Has the backends made from now on use `image` for their stage containers.
    pub fn set_stage_image(&self, image: &str) {
        *self.stage_image.lock().unwrap() = image.to_string();
    }

    /// Has the backends made from now on give tasks `$FERRY_SUBTASKS` (the default), or not.
    pub fn set_subtasks(&self, on: bool) {
        self.subtasks.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The test image without `/bin/{tool}`, made on the engine once.
    pub async fn image_without(&self, tool: &str) -> String {
        use bollard::query_parameters::{
            CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
        };
        let tag = format!("ferry-test/no-{tool}:1");
        if self.docker.inspect_image(&tag).await.is_ok() {
            return tag;
        }
        let name = format!("ferry-test-no-{tool}-{}", self.server.id());
        let body = bollard::models::ContainerCreateBody {
            image: Some(image()),
            cmd: Some(vec!["rm".into(), format!("/bin/{tool}")]),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .expect("create a container");
        self.docker.start_container(&name, None).await.expect("start it");
        let mut wait = self.docker.wait_container(&name, None);
        while futures::StreamExt::next(&mut wait).await.is_some() {}
        let (repo, version) = tag.split_once(':').unwrap_or((&tag, "latest"));
        self.docker
            .commit_container(
                CommitContainerOptionsBuilder::default()
                    .container(&name)
                    .repo(repo)
                    .tag(version)
                    .build(),
                bollard::models::ContainerConfig::default(),
            )
            .await
            .expect("commit it");
        let _ = self
            .docker
            .remove_container(
                &name,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
        tag
    }

    /// Waits until the task container of the attempt's pod has ended.
    pub async fn wait_task_ended(&self, attempt_id: &str, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < until {
            let ended = self.pod_of(attempt_id).is_some_and(|pod| {
                pod.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
                    .any(|c| c.name == "task" && c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
            });
            if ended {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The pod of the Job made for `attempt_id`, if there is one.
    fn pod_of(&self, attempt_id: &str) -> Option<k8s_openapi::api::core::v1::Pod> {
        self.server
            .pods_of(NAMESPACE, &names::job_name(attempt_id))
            .into_iter()
            .next()
    }
}

#[async_trait]
impl Target for Kube {
    fn name(&self) -> &'static str {
        ferry_launcher_kubernetes::BACKEND
    }

    async fn backend(&self, data_dir: &Path, _: &Journal) -> Arc<dyn Backend> {
        let client = client(&self.server, data_dir).await;
        let mut settings = Settings::new(launcher_id(data_dir).expect("the launcher's identity"));
        settings.namespace = NAMESPACE.into();
        settings.kill_grace = Duration::from_millis(500);
        settings.pending_deadline = Duration::from_secs(30);
        settings.artifact_dir = Some(data_dir.join("artifacts"));
        settings.stage_image = self.stage_image.lock().unwrap().clone();
        settings.subtasks = self.subtasks.load(std::sync::atomic::Ordering::SeqCst);
        Arc::new(Kubernetes::new(client, settings))
    }

    fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
        let mut runner = KubernetesRunner {
            image: image(),
            namespace: None,
            service_account: None,
            pull_policy: Some(PullPolicy::Never),
            image_pull_secrets: Vec::new(),
            node_selector: Default::default(),
            tolerations: Vec::new(),
            priority_class: None,
            working_dir: None,
            pending_deadline_seconds: None,
        };
        runner.namespace = Some(NAMESPACE.into());
        let command = ["sh", "-c", &program.sh()].map(Template::text).to_vec();
        (Runner::Kubernetes(runner), command)
    }

    fn refused(&self) -> Option<(Resources, &'static str)> {
        let tiny = Resources {
            memory: Some("1Ki".into()),
            ..Resources::default()
        };
        Some((tiny, "resources.memory"))
    }

    async fn leftovers(&self, _: &Path) -> Vec<String> {
        // The server removes a deleted Job's pod once its container is stopped: give it the
        // moment that takes.
        let mut left = Vec::new();
        for _ in 0..50 {
            left = self.server.objects();
            let filters = std::collections::HashMap::from([(
                "label".to_string(),
                vec![format!(
                    "{}={}",
                    ferry_kube_test_server::CONTAINER_LABEL,
                    self.server.id()
                )],
            )]);
            let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            for c in self
                .docker
                .list_containers(Some(options))
                .await
                .unwrap_or_default()
            {
                left.push(format!("container {}", c.names.unwrap_or_default().join(",")));
            }
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        left
    }

    async fn kill(&self, attempt_id: &str) -> Result<(), String> {
        // `task.started` comes at create, before the kubelet has started the container: kill
        // it once it runs.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running = self.pod_of(attempt_id).filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|phase| phase == "Running")
            });
            if let Some(pod) = running {
                let container = self.server.container_name(&pod, "task");
                return self
                    .docker
                    .kill_container(
                        &container,
                        None::<bollard::query_parameters::KillContainerOptions>,
                    )
                    .await
                    .map_err(|e| format!("cannot kill {container}: {e}"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no pod of attempt {attempt_id} runs"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Stands in when there is no Docker engine outside CI: every case says why it is skipped.
pub struct Skip;

#[async_trait]
impl Target for Skip {
    fn name(&self) -> &'static str {
        ferry_launcher_kubernetes::BACKEND
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
        Some("DOCKER_HOST is not set: the kubernetes test server runs pods on a Docker engine")
    }
}
