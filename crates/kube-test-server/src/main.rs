//! `ferry-kube-test-server [KUBECONFIG [NAMESPACE]]`: serves the test API server on a free port of
//! 127.0.0.1, running pods on the Docker engine `DOCKER_HOST` names, writes a kubeconfig that
//! reaches it (to `KUBECONFIG`, default `./kubeconfig`; namespace `default`), prints its URL, and
//! runs until SIGINT or SIGTERM, when it removes every container it started. For trying a
//! kubernetes launcher by hand:
//!
//! ```sh
//! ferry-kube-test-server /tmp/kubeconfig &
//! KUBECONFIG=/tmp/kubeconfig ferry service launcher --backend kubernetes --bus …
//! ```

use ferry_kube_test_server::{Options, TestServer};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let kubeconfig = args.next().unwrap_or_else(|| "kubeconfig".into());
    let namespace = args.next().unwrap_or_else(|| "default".into());
    let server = TestServer::start_from_env(Options::default()).await?;
    std::fs::write(&kubeconfig, server.kubeconfig(&namespace))?;
    println!("{} (kubeconfig: {kubeconfig})", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.stop().await;
    Ok(())
}
