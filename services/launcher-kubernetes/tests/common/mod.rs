//! Shared by the tests: a test API server ([`ferry_kube_test_server`]) on the private Docker
//! engine the test scripts start, a kubeconfig pointing at it, and a kube client read from that
//! kubeconfig, as a launcher reads one.

#![allow(dead_code)]

use std::path::Path;

use ferry_kube_test_server::{Options, TestServer};
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
    TestServer::start_from_env(Options::default())
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
