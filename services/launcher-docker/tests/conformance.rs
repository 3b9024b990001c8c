//! The launcher conformance suite against the docker backend: one container per attempt on the
//! private Docker engine the test scripts start (`DOCKER_HOST`), in the busybox image they
//! build (`FERRY_TEST_DOCKER_IMAGE`), on the in-memory bus.
//!
//! Every launcher the suite starts on a data directory gets that directory's launcher identity
//! ([`ferry_launcher_docker::launcher_id`]), as `ferry service launcher --backend docker` does,
//! so that a launcher started again after a crash finds and adopts what its previous run left.
//! What the platform holds is read with the docker client, not through the backend.
//!
//! Without `DOCKER_HOST` every case is skipped, saying so, except in CI (`CI=true`), where a
//! missing engine fails.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_event::payload::{ImageRunner, PullPolicy, Resources, Runner};
use ferry_event::template::Template;
use ferry_launcher::Backend;
use ferry_launcher::conformance::{Program, Target, run_case};
use ferry_launcher::journal::Journal;
use ferry_launcher_docker::{Docker, Engine, container_name, launcher_id};

/// The docker backend on the test engine, leaving containers running when a launcher stops
/// (`detach`, as a deployed launcher does) or stopping them (as `ferry run` does).
struct DockerTarget {
    /// The engine, or why there is none (the cases are then skipped, outside CI).
    engine: Result<Engine, String>,
    detach: bool,
}

impl DockerTarget {
    async fn make(detach: bool) -> Arc<dyn Target> {
        let engine = match std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
            Some(host) => Engine::connect_to(&host)
                .await
                .map_err(|e| format!("the Docker engine at DOCKER_HOST={host} does not answer: {e}")),
            None => Err(
                "DOCKER_HOST is not set: run ./scripts/test.sh, or `source scripts/services.sh && docker_up` first"
                    .into(),
            ),
        };
        if let Err(why) = &engine
            && std::env::var("CI").is_ok_and(|v| v == "true")
        {
            panic!("{why}");
        }
        Arc::new(DockerTarget { engine, detach })
    }

    fn engine(&self) -> &Engine {
        self.engine
            .as_ref()
            .expect("an engine (cases are skipped without one)")
    }
}

fn image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "ferry-test/busybox:1".to_string())
}

/// Runs the docker client against the test engine; its standard output.
async fn docker(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run the docker client: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[async_trait]
impl Target for DockerTarget {
    fn name(&self) -> &'static str {
        ferry_launcher_docker::BACKEND
    }

    async fn backend(&self, data_dir: &Path, _: &Journal) -> Arc<dyn Backend> {
        let launcher = launcher_id(data_dir).expect("the launcher's identity in its data directory");
        let backend = Docker::new(self.engine().clone(), launcher, data_dir.join("artifacts"));
        Arc::new(if self.detach {
            backend
        } else {
            backend.kill_on_shutdown()
        })
    }

    fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
        let mut runner = ImageRunner::new(image());
        runner.pull_policy = Some(PullPolicy::Never);
        runner.network = Some("none".into());
        let command = ["sh", "-c", &program.sh()].map(Template::text).to_vec();
        (Runner::Docker(runner), command)
    }

    fn refused(&self) -> Option<(Resources, &'static str)> {
        // Below the least memory the engine can enforce.
        let tiny = Resources {
            memory: Some("1Ki".into()),
            ..Resources::default()
        };
        Some((tiny, "resources.memory"))
    }

    async fn leftovers(&self, _: &Path) -> Vec<String> {
        // Every container on the engine, running or not: the harness keeps its test's own.
        docker(&["ps", "--all", "--format", "{{.Names}}"])
            .await
            .expect("list the engine's containers")
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn kill(&self, attempt_id: &str) -> Result<(), String> {
        docker(&["kill", &container_name(attempt_id)]).await.map(drop)
    }

    fn cannot(&self, _: &str) -> Option<&'static str> {
        self.engine
            .as_ref()
            .err()
            .map(|_| "no Docker engine: DOCKER_HOST is not set or does not answer (run ./scripts/test.sh)")
    }
}

ferry_launcher::launcher_conformance!(DockerTarget::make(true));

/// `ferry run`'s docker launcher, which stops its containers when it stops: the cases about a
/// launcher's stop, under [`ferry_launcher::ShutdownPolicy::Kill`].
mod kill_on_shutdown {
    use super::*;
    use ferry_launcher::conformance as suite;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_follows_the_backends_policy() {
        let target = DockerTarget::make(false).await;
        run_case(
            target,
            "shutdown_follows_the_backends_policy",
            suite::shutdown_follows_the_backends_policy,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_launcher_serves_and_keeps_adopted_compute_alive() {
        let target = DockerTarget::make(false).await;
        run_case(
            target,
            "a_restarted_launcher_serves_and_keeps_adopted_compute_alive",
            suite::a_restarted_launcher_serves_and_keeps_adopted_compute_alive,
        )
        .await;
    }
}
