//! `pods/exec`: a command run in a running container of a pod, over a WebSocket speaking the
//! channel protocol of the API server (`v5.channel.k8s.io`, `v4.channel.k8s.io`): each binary
//! message's first byte is its channel (1 stdout, 2 stderr, 3 the final `Status`), backed by a
//! real `docker exec` in the pod's container.
//!
//! As the API server answers: `404 NotFound` for a pod that does not exist, `400 BadRequest`
//! for a container the pod does not have, one that is not running, or a request that is not an
//! upgrade; then, on channel 3, `Success`, or `Failure` with reason `NonZeroExitCode` and the
//! exit code as a cause, or `InternalError` when the command could not be started at all.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::status::ApiError;
use crate::store::Kind;
use crate::{Shared, kubelet};

/// The subprotocols served, in the order of preference.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;

/// What an exec request asks for.
#[derive(Debug, Default)]
struct Params {
    container: Option<String>,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn params(query: Option<&str>) -> Result<Params, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("the query is not valid: {e}")))?;
    let mut p = Params::default();
    let yes = |v: &str| matches!(v, "1" | "true" | "True");
    for (k, v) in pairs {
        match k.as_str() {
            "container" => p.container = Some(v),
            "command" => p.command.push(v),
            "stdin" => p.stdin = yes(&v),
            "stdout" => p.stdout = yes(&v),
            "stderr" => p.stderr = yes(&v),
            "tty" => p.tty = yes(&v),
            _ => {}
        }
    }
    if p.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    if !(p.stdin || p.stdout || p.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    Ok(p)
}

pub(crate) async fn pod_exec(
    State(s): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    s.count("create", "pods/exec");
    let p = params(req.uri().query())?;
    let pod = s
        .read(|store| store.get::<Pod>(&ns, &name).cloned())
        .ok_or_else(|| ApiError::not_found(Kind::Pod, &name))?;
    let containers: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| c.name.clone())
        .collect();
    let container = match &p.container {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let running = pod
        .status
        .iter()
        .flat_map(|st| st.container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|st| st.running.is_some());
    if !running || pod.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::bad_request(format!(
            "container {container} is not running in pod {name}"
        )));
    }
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (upgrade, key) else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return Err(ApiError::bad_request(format!(
            "none of the offered subprotocols ({}) is served: use one of {}",
            offered.join(", "),
            PROTOCOLS.join(", ")
        )));
    };
    let docker_name = kubelet::container_name(&s.id, &pod, &container);
    let upgraded = hyper::upgrade::on(&mut req);
    let s2 = s.clone();
    s.tasks.spawn(async move {
        let Ok(upgraded) = upgraded.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run(&s2, ws, &docker_name, p).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    );
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    Ok(response.into_response())
}

/// Runs the command with `docker exec` and relays its output, then its status.
async fn run<S>(s: &Arc<Shared>, mut ws: WebSocketStream<S>, docker_name: &str, p: Params)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let shown = p.command.join(" ");
    let options = CreateExecOptions {
        attach_stdin: Some(false),
        attach_stdout: Some(p.stdout),
        attach_stderr: Some(p.stderr),
        tty: Some(p.tty),
        cmd: Some(p.command.clone()),
        ..Default::default()
    };
    let status = match s.docker.create_exec(docker_name, options).await {
        Err(e) => internal(&format!("failed to exec in container: {e}")),
        Ok(exec) => match s.docker.start_exec(&exec.id, None).await {
            Err(e) => internal(&format!("failed to start exec {:?}: {e}", exec.id)),
            Ok(StartExecResults::Detached) => internal("the exec was detached"),
            Ok(StartExecResults::Attached { mut output, .. }) => {
                // What a command that could not start says, held back until its exit says so.
                let mut held: Option<Vec<u8>> = None;
                let mut first = true;
                let mut broken = false;
                while let Some(chunk) = output.next().await {
                    let Ok(chunk) = chunk else { break };
                    let (channel, bytes) = match chunk {
                        bollard::container::LogOutput::StdErr { message } => (STDERR, message),
                        bollard::container::LogOutput::StdOut { message }
                        | bollard::container::LogOutput::Console { message } => (STDOUT, message),
                        bollard::container::LogOutput::StdIn { .. } => continue,
                    };
                    if std::mem::take(&mut first) && bytes.starts_with(b"OCI runtime exec failed") {
                        held = Some(bytes.to_vec());
                        continue;
                    }
                    let mut frame = Vec::with_capacity(bytes.len() + 1);
                    frame.push(channel);
                    frame.extend_from_slice(&bytes);
                    if ws.send(Message::binary(frame)).await.is_err() {
                        broken = true;
                        break;
                    }
                }
                if broken {
                    return;
                }
                let code = s
                    .docker
                    .inspect_exec(&exec.id)
                    .await
                    .ok()
                    .and_then(|i| i.exit_code)
                    .unwrap_or(-1);
                match (code, held) {
                    (0, _) => json!({"metadata": {}, "status": "Success"}),
                    (126 | 127, Some(why)) => internal(&format!(
                        "failed to exec in container: failed to start exec: {}",
                        String::from_utf8_lossy(&why).trim()
                    )),
                    (code, _) => json!({
                        "metadata": {},
                        "status": "Failure",
                        "message": format!(
                            "command terminated with non-zero exit code: error executing command [{shown}], exit code {code}"
                        ),
                        "reason": "NonZeroExitCode",
                        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                    }),
                }
            }
        },
    };
    let mut frame = vec![STATUS];
    frame.extend_from_slice(status.to_string().as_bytes());
    let _ = ws.send(Message::binary(frame)).await;
    let _ = ws.close(None).await;
}

/// The `Status` of a command that could not be run, as the kubelet reports it.
fn internal(why: &str) -> Value {
    let message = format!("error executing command in container: {why}");
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}
