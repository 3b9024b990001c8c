//! `ferry-google-batch-test-server [--port PORT] [--gcs-endpoint URL]`: serves the test Batch
//! and Cloud Logging APIs on 127.0.0.1 (a free port unless `--port`), running jobs on the
//! Docker engine `DOCKER_HOST` names and GCS volumes against the GCS JSON API at `URL`, prints
//! its URL, and runs until SIGINT or SIGTERM, when it removes every container it started. For
//! trying a google-batch launcher by hand:
//!
//! ```sh
//! ferry-google-batch-test-server --port 8089 --gcs-endpoint "$FERRY_TEST_GCS" &
//! ```

use ferry_google_batch_test_server::{Options, TestServer};

fn usage() -> std::io::Error {
    std::io::Error::other("usage: ferry-google-batch-test-server [--port PORT] [--gcs-endpoint URL]")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                options.port = args.next().and_then(|p| p.parse().ok()).ok_or_else(usage)?;
            }
            "--gcs-endpoint" => options.gcs_endpoint = Some(args.next().ok_or_else(usage)?),
            _ => return Err(usage()),
        }
    }
    let server = TestServer::start(options).await?;
    println!("{}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
