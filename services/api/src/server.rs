//! Accepting connections: plain TCP or TLS, HTTP/1.1 through hyper with a header read
//! timeout, and a graceful stop (no new connections; requests in flight are finished).
//!
//! Each connection is served by its own task, so a slow TLS handshake or a slow client holds
//! up no one else; the handshake has the header read timeout too.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How connections are served.
pub(crate) struct Serving {
    pub router: Router,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The whole request head (and a TLS handshake) must arrive within this.
    pub header_read_timeout: Duration,
}

/// Accepts connections until `stop` is cancelled, then waits for those open to finish.
pub(crate) async fn serve(listener: TcpListener, serving: Serving, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(serving.header_read_timeout)
        .keep_alive(true);
    let service = TowerToHyperService::new(serving.router);
    let acceptor = serving.tls.map(TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
        let handshake = serving.header_read_timeout;
        match acceptor.clone() {
            None => {
                tokio::spawn(async move {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    finish(watcher.watch(conn).await, peer);
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return debug!(%peer, "TLS handshake timed out"),
                    };
                    serve_io(builder, service, watcher, tls, peer).await;
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_io<I>(
    builder: http1::Builder,
    service: TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    peer: std::net::SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    finish(watcher.watch(conn).await, peer);
}

fn finish(result: Result<(), hyper::Error>, peer: std::net::SocketAddr) {
    if let Err(e) = result {
        // Clients that go away or time out are routine.
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
