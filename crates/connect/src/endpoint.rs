//! The operations endpoint every service process serves when given `--metrics ADDR`
//! (`FERRY_METRICS`):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | every metric of the process, OpenMetrics text ([`ferry_runtime::metrics`]) |
//! | `GET /healthz` | `200 ok`: the process is alive and serving |
//! | `GET /readyz` | `200 ready` when the bus and every database the process's services opened answer; `503` with one line per failed check otherwise, and from the first SIGTERM on (`shutting down`) |
//!
//! One endpoint serves a process, whatever number of services it runs (`ferry up`). It exposes
//! no secrets (no URLs, no job or attempt ids) but is not authenticated: keep it on an internal
//! network, where Prometheus and the orchestrator's probes reach it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferry_bus::Bus;
use ferry_runtime::CancellationToken;

/// Binds `addr` for the endpoint; the error names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr}: {e}; choose another --metrics address"),
        )
    })
}

/// What readiness looks at: the bus, and whether the process is draining.
#[derive(Clone)]
struct Ready {
    bus: Arc<dyn Bus>,
    draining: CancellationToken,
}

/// Serves the endpoint on `listener` until `stop` is cancelled. Readiness checks `bus` and
/// every check registered with [`ferry_runtime::health`], and is refused once `draining` is
/// cancelled (the services are stopping: a balancer stops sending work while metrics are still
/// served).
pub async fn serve(
    listener: tokio::net::TcpListener,
    bus: Arc<dyn Bus>,
    draining: CancellationToken,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(bus, draining))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// The endpoint's routes.
fn router(bus: Arc<dyn Bus>, draining: CancellationToken) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ready { bus, draining })
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, ferry_runtime::metrics::CONTENT_TYPE)],
        ferry_runtime::metrics::encode(),
    )
        .into_response()
}

async fn readyz(State(ready): State<Ready>) -> Response {
    let checked = match ready.draining.is_cancelled() {
        true => Err(vec!["shutting down".to_string()]),
        false => readiness(ready.bus.as_ref()).await,
    };
    match checked {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(failed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", failed.join("\n")),
        )
            .into_response(),
    }
}

/// Whether the process is ready: `bus` answers and so does every registered check. `Err`
/// lists what did not, one `WHAT: WHY` each.
pub async fn readiness(bus: &dyn Bus) -> Result<(), Vec<String>> {
    let bus_check = async {
        match tokio::time::timeout(ferry_runtime::health::CHECK_TIMEOUT, bus.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("bus: {e}")),
            Err(_) => Err(format!(
                "bus: no answer within {}s",
                ferry_runtime::health::CHECK_TIMEOUT.as_secs()
            )),
        }
    };
    let (bus_ok, others) = tokio::join!(bus_check, ferry_runtime::health::check_all());
    let mut failed = others.err().unwrap_or_default();
    if let Err(e) = bus_ok {
        failed.insert(0, e);
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_bus::MemoryBus;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let status = text[9..12].parse().unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (status, head.to_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn serves_metrics_liveness_and_readiness_that_follows_the_bus() {
        let memory = MemoryBus::new();
        let bus: Arc<dyn Bus> = Arc::new(memory.clone());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (draining, stop) = (CancellationToken::new(), CancellationToken::new());
        let served = tokio::spawn(serve(listener, bus, draining.clone(), stop.clone()));

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(body.contains("# TYPE ferry_build_info gauge"), "{body}");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        // Readiness may see other tests' checks in this process: only the bus is asserted.
        let (_, _, body) = get(addr, "/readyz").await;
        assert!(!body.contains("bus:"), "{body}");

        memory.close();
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("bus: bus closed"), "{body}");
        assert_eq!(get(addr, "/healthz").await.0, 200, "alive though not ready");

        draining.cancel();
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("shutting down"), "{body}");
        assert_eq!(
            get(addr, "/metrics").await.0,
            200,
            "metrics are served while draining"
        );

        stop.cancel();
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_database_out_of_reach_makes_the_process_not_ready() {
        // A PostgreSQL URL on a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(1))
            .connect_lazy(&format!("postgres://ferry@127.0.0.1:{port}/none"))
            .unwrap();
        let check = ferry_runtime::db::readiness("endpoint-test database", &pool);
        let bus = MemoryBus::new();
        let failed = readiness(&bus).await.unwrap_err();
        assert!(
            failed.iter().any(|f| f.starts_with("endpoint-test database: ")),
            "{failed:?}"
        );
        drop(check);
        let left = readiness(&bus).await.err().unwrap_or_default();
        assert!(!left.iter().any(|f| f.starts_with("endpoint-test")), "{left:?}");
    }
}
