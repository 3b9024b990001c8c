//! Shared by the engine tests: the Docker engine from `DOCKER_HOST` (the private dockerd that
//! `scripts/services.sh` starts), the test image it builds, and a [`Scope`] per test whose
//! containers carry a launcher label no other test uses and are removed when it ends.

#![allow(dead_code)]

use ferry_launcher_docker::{Attempt, ContainerSpec, Engine, LogCursor, PullPolicy};
use futures::TryStreamExt;

/// The engine the test scripts started. Fails (never skips) when it is not there, and never
/// falls back to a default socket: tests must not create containers on an engine they were
/// not given.
pub async fn engine() -> Engine {
    let host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "DOCKER_HOST is not set: run ./scripts/test.sh, which starts a private dockerd and sets it \
             (or `source scripts/services.sh && docker_up` first)"
            )
        });
    Engine::connect_to(&host)
        .await
        .unwrap_or_else(|e| panic!("{e} (start it with `source scripts/services.sh && docker_up`)"))
}

/// The busybox image `docker_up` imports.
pub fn image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "ferry-test/busybox:1".to_string())
}

/// The busybox image with `ENTRYPOINT ["echo", "entrypoint"]` and `CMD ["default", "args"]`.
pub fn entrypoint_image() -> String {
    std::env::var("FERRY_TEST_DOCKER_ENTRYPOINT_IMAGE")
        .unwrap_or_else(|_| "ferry-test/entrypoint:1".to_string())
}

/// One test's containers: a launcher label of its own, removed with everything it labels when
/// the scope is dropped (also when the test fails).
pub struct Scope {
    pub engine: Engine,
    pub launcher: String,
}

impl Scope {
    pub async fn new() -> Scope {
        Scope {
            engine: engine().await,
            launcher: format!("test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// A spec for a fresh attempt running `argv` in the test image, never pulled.
    pub fn spec(&self, argv: &[&str]) -> ContainerSpec {
        let attempt_id = uuid::Uuid::now_v7().to_string();
        ContainerSpec {
            attempt: Attempt {
                job_id: format!("job-{}", &attempt_id[..8]),
                task_id: "task".into(),
                attempt_id,
                attempt: 1,
            },
            flow: None,
            namespace: None,
            launcher: self.launcher.clone(),
            image: image(),
            pull: PullPolicy::Never,
            command: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            working_dir: Some("/work".into()),
            user: None,
            network: Some("none".into()),
            mounts: vec![],
            cpu: None,
            memory_bytes: None,
            gpus: None,
            volumes: vec![],
        }
    }

    /// Creates and starts `spec`'s container; its name.
    pub async fn run(&self, spec: &ContainerSpec) -> String {
        let created = self.engine.create_or_adopt(spec).await.expect("create");
        self.engine.start(&created.name).await.expect("start");
        created.name
    }

    /// Every line the container wrote, stdout and stderr in the engine's order, as text.
    pub async fn lines(&self, name: &str) -> Vec<String> {
        self.engine
            .logs(name, LogCursor::default(), false)
            .map_ok(|e| String::from_utf8_lossy(&e.text).into_owned())
            .try_collect()
            .await
            .expect("logs")
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let host = self.engine.host().to_string();
        let launcher = self.launcher.clone();
        // A runtime of its own: the test's may be shutting down.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let engine = Engine::connect_to(&host).await.expect("engine for cleanup");
                for c in engine.list_owned(&launcher).await.expect("list for cleanup") {
                    engine.remove(&c.id).await.expect("remove");
                }
            });
        });
        let _ = cleanup.join();
    }
}
