//! What every request passes before a route sees it: the `Host` check, the request deadline
//! and authentication.
//!
//! - **Host**: a browser page on another site can point a DNS name of its own at this api's
//!   address (DNS rebinding) and then talk to it as a same-origin page; its requests still
//!   carry that name in `Host`. Only the names in the allow-list are answered; others get 421.
//! - **Deadline**: the body must have arrived, and the response must have begun, within the
//!   request timeout of the headers being read (hyper's header read timeout bounds those): a
//!   body trickled byte by byte gets 408 and the connection is closed.
//! - **Authentication**: the [`Authenticator`] turns the credential into a [`Principal`], which
//!   handlers find in the request's extensions; a missing or unknown one is 401.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use serde_json::json;

use crate::auth::{Authenticator, Unauthenticated};

/// The host names a request may name in `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Lower-case names and IP addresses, without ports.
    names: BTreeSet<String>,
    /// Any IP address literal (the api listens on every address: no name can be rebound to an
    /// address literal, so these are safe).
    any_ip: bool,
    /// No check at all (`*`).
    any: bool,
}

impl AllowedHosts {
    /// The allow-list for an api listening on `listen`: the names given (`*` turns the check
    /// off) and, always, the listening address itself; `localhost` too on loopback; any address
    /// literal when listening on every address.
    pub fn new(listen: SocketAddr, given: &[String]) -> AllowedHosts {
        let mut names: BTreeSet<String> = given
            .iter()
            .map(|h| normalize(strip_port(h.trim())))
            .filter(|h| !h.is_empty())
            .collect();
        let any = names.remove("*");
        let ip = listen.ip();
        let any_ip = ip.is_unspecified();
        if !any_ip {
            names.insert(ip.to_string());
        }
        if ip.is_loopback() {
            names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        }
        AllowedHosts { names, any_ip, any }
    }

    /// Whether a `Host` value (with or without a port) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let name = normalize(strip_port(host.trim()));
        if self.any_ip && name.parse::<IpAddr>().is_ok() {
            return true;
        }
        self.names.contains(&name)
    }

    /// For messages: `127.0.0.1, ::1, localhost`.
    pub fn describe(&self) -> String {
        let mut list: Vec<String> = self.names.iter().cloned().collect();
        if self.any_ip {
            list.push("any IP address".into());
        }
        list.join(", ")
    }
}

/// `name:port`, `[v6]:port`, `[v6]`, `v6` → the name or address alone.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has more than one colon.
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, Json(json!({ "error": error, "problems": [] }))).into_response()
}

/// Answers 421 to a request naming a host not in the allow-list.
pub(crate) async fn check_host(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let host = req.uri().host().map(str::to_string).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    match host {
        Some(h) if hosts.allows(&h) => next.run(req).await,
        Some(h) => {
            tracing::warn!(host = %h, "request for a host this api does not answer to refused");
            refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this api does not answer to host {:?} (it answers to {}); if that name is right, start the api with --allowed-host {}",
                    h,
                    hosts.describe(),
                    strip_port(&h)
                ),
            )
        }
        None => refuse(StatusCode::BAD_REQUEST, "the request has no Host header".into()),
    }
}

/// Authenticates the request: its [`Principal`](crate::auth::Principal) goes into the
/// extensions, or the answer is 401 with `WWW-Authenticate: Bearer`.
pub(crate) async fn authenticate(
    State(auth): State<Authenticator>,
    mut req: Request,
    next: Next,
) -> Response {
    match auth.authenticate(req.headers()).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => unauthorized(&e),
    }
}

fn unauthorized(e: &Unauthenticated) -> Response {
    let mut challenge = "Bearer realm=\"ferry\"".to_string();
    if let Some(code) = e.bearer_error() {
        challenge.push_str(&format!(", error=\"{code}\""));
    }
    let mut r = refuse(StatusCode::UNAUTHORIZED, e.to_string());
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Records the request's latency by route template (`/jobs/{id}`, never the id itself),
/// method and status class ([`ferry_runtime::metrics::name::API_REQUEST`]).
pub(crate) async fn measure(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let response = next.run(req).await;
    ferry_runtime::metrics::api_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Holds the request to its deadline: the body must arrive, and the response begin, within
/// `timeout`. A body still arriving at the deadline is 408, anything else that late 503; both
/// close the connection.
pub(crate) async fn deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let until = tokio::time::Instant::now() + timeout;
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            sleep: Box::pin(tokio::time::sleep_until(until)),
            expired: expired.clone(),
        })
    });
    let answered = tokio::time::timeout_at(until, next.run(req)).await;
    let late = |status: StatusCode, error: String| {
        let mut r = refuse(status, error);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let limit = humantime::format_duration(timeout);
    match answered {
        _ if expired.load(Ordering::SeqCst) => {
            tracing::warn!(timeout = %limit, "request body not received in time; connection closed");
            late(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {limit}"),
            )
        }
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = %limit, "request not answered in time");
            late(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the request was not answered within {limit}; retry later"),
            )
        }
    }
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err(axum::Error::new(
                "the request body did not arrive in time",
            ))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str, given: &[&str]) -> AllowedHosts {
        let given: Vec<String> = given.iter().map(|s| s.to_string()).collect();
        AllowedHosts::new(addr.parse().unwrap(), &given)
    }

    #[test]
    fn loopback_answers_to_its_address_and_localhost_only() {
        let h = at("127.0.0.1:8080", &[]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "localhost.",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for no in [
            "evil.example:8080",
            "127.0.0.2:8080",
            "10.0.0.1",
            "localhost.evil.example",
        ] {
            assert!(!h.allows(no), "{no}");
        }
    }

    #[test]
    fn names_are_added_and_star_turns_the_check_off() {
        let h = at("10.1.2.3:443", &["ferry.example.com", "API.example.com:443"]);
        assert!(h.allows("ferry.example.com"));
        assert!(h.allows("api.example.com:443"));
        assert!(h.allows("10.1.2.3:443"));
        assert!(!h.allows("localhost"));
        assert!(!h.allows("10.1.2.4"));
        assert!(at("10.1.2.3:443", &["*"]).allows("anything.example"));
    }

    #[test]
    fn every_address_answers_to_address_literals_but_not_names() {
        let h = at("0.0.0.0:8080", &[]);
        assert!(h.allows("192.168.1.20:8080"));
        assert!(h.allows("[fe80::1]:8080"));
        assert!(!h.allows("rebound.evil.example:8080"));
    }
}
