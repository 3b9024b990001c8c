//! Clients of a running deployment, through its api: `ferry submit`, `status`, `logs`, `cancel`,
//! `retry`. See docs/api.md for the endpoints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::output::{Closed, task_text, visible};
use crate::run::fmt_duration;
use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, parse_inputs, read_flow};

/// Which api to talk to, and with what credential.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://HOST:PORT` or `https://…`.
    pub url: String,
    /// The bearer token (`--token`, `FERRY_TOKEN`).
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust instead of the system's, for a self-signed api.
    pub ca_cert: Option<PathBuf>,
    /// The data directory of a `ferry up` on this machine: its `admin.token` is used for an
    /// api on a loopback address when no token is given.
    pub data_dir: PathBuf,
}

impl Target {
    pub fn new(url: impl Into<String>) -> Target {
        Target {
            url: url.into(),
            token: None,
            ca_cert: None,
            data_dir: PathBuf::from(".ferry"),
        }
    }
}

/// Where the token sent came from, to say what to change when it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenSource {
    None,
    Given,
    File(PathBuf),
}

/// The api of a deployment.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    token_source: TokenSource,
}

/// What the api answered, when it was not a success.
enum Refused {
    /// 400 (invalid), 404 (unknown), 409 (a job id taken), 401/403 (the credential): the
    /// caller's input is at fault and trying again will not help.
    Invalid(String),
    /// 413: the request is larger than the api accepts (`limit` bytes, when it said).
    TooLarge { limit: Option<u64>, message: String },
    /// Anything else.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Refused {
    fn from(e: anyhow::Error) -> Self {
        Refused::Failed(e)
    }
}

impl From<Closed> for Refused {
    fn from(e: Closed) -> Self {
        Refused::Failed(e.into())
    }
}

impl Client {
    pub fn new(target: &Target) -> Result<Client> {
        let api = &target.url;
        let base = api.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(anyhow!(
                "--api {api:?} is not an http:// URL (e.g. http://127.0.0.1:8080)"
            ));
        }
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(ca) = &target.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read --ca-cert {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert {} is not a PEM certificate", ca.display()))?;
            http = http.tls_certs_only(certs);
        }
        let http = http.build()?;
        let (token, token_source) = match &target.token {
            Some(t) if !t.trim().is_empty() => (Some(t.trim().to_string()), TokenSource::Given),
            _ => match local_token(&base, &target.data_dir) {
                Some((t, path)) => (Some(t), TokenSource::File(path)),
                None => (None, TokenSource::None),
            },
        };
        Ok(Client {
            base,
            http,
            token,
            token_source,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.get(format!("{}{path}", self.base)))
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// What to do about a 401 or 403, given where the token came from.
    fn credential_hint(&self, status: u16) -> String {
        match (&self.token_source, status) {
            (TokenSource::None, _) => format!(
                "no token was sent: set FERRY_TOKEN or pass --token (for a `ferry up` on this machine, \
                 the token is in its data directory's {}: pass --data-dir or set FERRY_DATA_DIR)",
                ferry_api::auth::ADMIN_TOKEN_FILE
            ),
            (TokenSource::Given, 401) => {
                "the token in FERRY_TOKEN or --token is not one this api knows: check it, or make one \
                 with `ferry token create` and add it to the api's tokens file"
                    .into()
            }
            (TokenSource::File(path), 401) => format!(
                "the token in {} is not one this api knows: set FERRY_TOKEN or --token",
                path.display()
            ),
            (_, _) => "use a token with that scope and namespace: set FERRY_TOKEN or --token".into(),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the ferry api at {}: {e} (is `ferry up` or `ferry service api` running? set --api or FERRY_API)",
            self.base
        )
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Refused> {
        let resp = self
            .authorized(req)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let mut msg = body["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the api answered {status}"));
        if let Some(problems) = body["problems"].as_array() {
            for p in problems {
                let loc = p["location"]
                    .as_str()
                    .map(|l| format!("{l}: "))
                    .unwrap_or_default();
                let field = p["field"].as_str().map(|f| format!("{f}: ")).unwrap_or_default();
                msg.push_str(&format!(
                    "\nerror: {loc}{field}{}",
                    p["message"].as_str().unwrap_or("")
                ));
            }
        }
        match status.as_u16() {
            code @ (401 | 403) => Err(Refused::Invalid(format!("{msg}\n{}", self.credential_hint(code)))),
            413 => Err(Refused::TooLarge {
                limit: body["limitBytes"].as_u64(),
                message: msg,
            }),
            400 | 404 | 409 => Err(Refused::Invalid(msg)),
            421 => Err(Refused::Invalid(format!(
                "{msg}\n(the api checks the host name in the URL: use one it answers to in --api or FERRY_API)"
            ))),
            _ => Err(Refused::Failed(anyhow!(msg))),
        }
    }

    /// Publishes a CloudEvent (structured mode) through `POST /events`.
    async fn post_event(&self, ty: &str, data: Value) -> Result<Value, Refused> {
        let event = json!({
            "specversion": "1.0",
            "id": ferry_event::new_id(),
            "source": ferry_runtime::instance_source("cli"),
            "type": ty,
            "datacontenttype": "application/json",
            "data": data,
        });
        let req = self
            .http
            .post(format!("{}/events", self.base))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string());
        let resp = self.send(req).await?;
        resp.json()
            .await
            .map_err(|e| Refused::Failed(anyhow!("the api's answer is not JSON: {e}")))
    }

    async fn get_json(&self, path: &str) -> Result<Value, Refused> {
        let resp = self.send(self.get(path)).await?;
        resp.json()
            .await
            .map_err(|e| Refused::Failed(anyhow!("the api's answer is not JSON: {e}")))
    }

    /// Streams NDJSON lines of `path` to `each` until the stream ends.
    async fn ndjson(&self, path: &str, mut each: impl FnMut(Value) -> Result<()>) -> Result<(), Refused> {
        let resp = self.send(self.get(path)).await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| anyhow!("the stream from the api broke: {e}"))?;
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line.trim())
                    .map_err(|e| anyhow!("the api sent a line that is not JSON ({e}): {line}"))?;
                // A failure of the stream itself is a line with nothing but `error`; a change
                // of a failed task carries an `error` too, beside its `seq`.
                if let (Some(err), None, None) = (v["error"].as_str(), v.get("seq"), v.get("cursor")) {
                    return Err(Refused::Failed(anyhow!("the api reported: {err}")));
                }
                each(v)?;
            }
        }
        Ok(())
    }
}

fn exit_for(r: Result<i32, Refused>) -> Result<i32> {
    match r {
        Ok(code) => Ok(code),
        Err(Refused::Invalid(msg) | Refused::TooLarge { message: msg, .. }) => {
            errln!("error: {msg}");
            Ok(EXIT_INVALID)
        }
        Err(Refused::Failed(e)) => Err(e),
    }
}

/// The admin token a `ferry up` on this machine wrote in its data directory, for an api on a
/// loopback address only (a token of this machine is never sent elsewhere).
fn local_token(base: &str, data_dir: &Path) -> Option<(String, PathBuf)> {
    let url = reqwest::Url::parse(base).ok()?;
    let local = match url.host()? {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    if !local {
        return None;
    }
    let path = data_dir.join(ferry_api::auth::ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&path).ok()?.trim().to_string();
    (!token.is_empty()).then_some((token, path))
}

/// `ferry token create --name N --scope S,… [--namespace NS,…]`: prints a new token (once:
/// the api keeps only its hash) and the line to add to the api's tokens file.
pub fn token_create(name: &str, scopes: &[String], namespaces: &[String]) -> i32 {
    use ferry_api::auth::{Scope, TokenEntry};
    let invalid = |msg: String| {
        errln!("error: {msg}");
        EXIT_INVALID
    };
    if let Err(e) = ferry_flow::check_job_id(name) {
        return invalid(format!("--name {name:?}: {e}"));
    }
    let mut parsed = Vec::new();
    for s in scopes {
        match s.trim().parse::<Scope>() {
            Ok(scope) if !parsed.contains(&scope) => parsed.push(scope),
            Ok(_) => {}
            Err(e) => return invalid(format!("--scope: {e}")),
        }
    }
    if let Some(bad) = namespaces.iter().find(|n| ferry_flow::check_job_id(n).is_err()) {
        return invalid(format!("--namespace {bad:?} is not a namespace name"));
    }
    let (token, sha256) = match ferry_api::auth::new_token() {
        Ok(t) => t,
        Err(e) => return invalid(e.to_string()),
    };
    let entry = TokenEntry {
        name: name.to_string(),
        sha256,
        scopes: parsed,
        namespaces: (!namespaces.is_empty()).then(|| namespaces.to_vec()),
    };
    if outln!("{token}")
        .and_then(|()| outln!("  {}", entry.yaml_line()))
        .is_err()
    {
        return crate::output::EXIT_CLOSED;
    }
    errln!(
        "ferry: the token (first line) is shown only now: the api keeps its hash. Add the second line \
         under `tokens:` in the api's tokens file; the api reads the file again when it changes."
    );
    EXIT_OK
}

/// `ferry submit FLOW [--input k=v]… [--wait]`: the job id is the first line printed.
pub async fn submit(
    api: &Target,
    flow: &Path,
    inputs: &[String],
    job_id: Option<String>,
    wait: bool,
) -> Result<i32> {
    let client = Client::new(api)?;
    let (source, name) = match read_flow(flow) {
        Ok(s) => s,
        Err(e) => {
            errln!("error: {e:#}");
            return Ok(EXIT_INVALID);
        }
    };
    let inputs = match parse_inputs(inputs) {
        Ok(i) => i,
        Err(e) => {
            errln!("error: {e}");
            return Ok(EXIT_INVALID);
        }
    };
    let mut data = json!({ "flow": source, "flowName": name, "inputs": inputs });
    if let Some(id) = job_id {
        data["jobId"] = json!(id);
    }
    let flow_bytes = source.len();
    exit_for(
        async {
            let answer = client
                .post_event(ferry_event::kind::JOB_SUBMITTED, data)
                .await
                .map_err(|e| match e {
                    Refused::TooLarge { limit, message } => {
                        let limit = limit
                            .map(|l| format!("limit {l} bytes for the whole request"))
                            .unwrap_or(message);
                        Refused::Invalid(format!(
                            "the flow is {flow_bytes} bytes, more than the api accepts ({limit}, with its inputs)"
                        ))
                    }
                    other => other,
                })?;
            let job = answer["jobId"]
                .as_str()
                .ok_or_else(|| anyhow!("the api did not say the job id: {answer}"))?;
            outln!("{job}")?;
            crate::output::flush()?;
            if !wait {
                return Ok(EXIT_OK);
            }
            follow_job(&client, job).await
        }
        .await,
    )
}

/// Follows a job's changes until it is final, resuming after a broken stream; then prints its
/// status. Exit 0 if it succeeded, 1 otherwise.
async fn follow_job(client: &Client, job: &str) -> Result<i32, Refused> {
    let mut after = 0u64;
    let mut failures = 0u32;
    loop {
        let path = format!("/jobs/{job}/events?follow=true&after={after}");
        let streamed = client
            .ndjson(&path, |v| {
                after = v["seq"].as_u64().unwrap_or(after);
                let state = v["state"].as_str().unwrap_or("?");
                let together = v["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("dev.ferry.tasks."));
                let what = match (v["taskId"].as_str(), v["tasks"].as_u64()) {
                    (Some(t), _) => format!("{t} {state}"),
                    (None, Some(1)) if together => format!("1 task {state}"),
                    (None, Some(n)) if together => format!("{n} tasks {state}"),
                    _ => format!("job {state}"),
                };
                let err = v["error"]
                    .as_str()
                    .or(v["reason"].as_str())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                errln!("ferry: {what}{}", visible(&err));
                Ok(())
            })
            .await;
        let detail = match streamed {
            Ok(()) => client.get_json(&format!("/jobs/{job}")).await,
            Err(Refused::Failed(e)) => Err(Refused::Failed(e)),
            Err(invalid) => return Err(invalid),
        };
        match detail {
            Ok(d) if is_final(d["state"].as_str().unwrap_or("")) => {
                print_status(&d)?;
                return Ok(if d["state"] == "succeeded" {
                    EXIT_OK
                } else {
                    EXIT_FAILED
                });
            }
            Ok(_) => failures = 0,
            Err(Refused::Failed(e)) => {
                failures += 1;
                if failures > 60 {
                    return Err(Refused::Failed(e.context("gave up following the job")));
                }
                errln!("ferry: {e:#}; retrying");
            }
            Err(invalid) => return Err(invalid),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "rejected")
}

/// `ferry status [JOB] [--json]`: the job's state on the first line, then each task's.
pub async fn status(api: &Target, job: Option<&str>, as_json: bool) -> Result<i32> {
    let client = Client::new(api)?;
    exit_for(
        async {
            let Some(job) = job else {
                let list = client.get_json("/jobs?limit=50").await?;
                if as_json {
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&list).map_err(anyhow::Error::from)?
                    )?;
                } else {
                    for j in list["jobs"].as_array().into_iter().flatten() {
                        outln!(
                            "{}  {}  {}",
                            j["jobId"].as_str().unwrap_or("?"),
                            j["state"].as_str().unwrap_or("?"),
                            j["flowId"].as_str().unwrap_or("?")
                        )?;
                    }
                }
                return Ok(EXIT_OK);
            };
            let d = client.get_json(&format!("/jobs/{job}")).await?;
            if as_json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&d).map_err(anyhow::Error::from)?
                )?;
            } else {
                print_status(&d)?;
            }
            Ok(EXIT_OK)
        }
        .await,
    )
}

/// `ferry files JOB [--task T] [--json]`: the output files of the job's tasks, with their size
/// and where they are kept.
pub async fn files(api: &Target, job: &str, task: Option<&str>, as_json: bool) -> Result<i32> {
    let client = Client::new(api)?;
    exit_for(
        async {
            let d = client.get_json(&format!("/jobs/{job}")).await?;
            let mut listed = Vec::new();
            for t in d["tasks"].as_array().into_iter().flatten() {
                let id = t["taskId"].as_str().unwrap_or("?");
                if task.is_some_and(|want| want != id) {
                    continue;
                }
                for f in t["outputFiles"].as_array().into_iter().flatten() {
                    listed.push(json!({
                        "taskId": id,
                        "path": f["path"],
                        "size": f["size"],
                        "uri": f["uri"],
                    }));
                }
            }
            if as_json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "files": listed })).map_err(anyhow::Error::from)?
                )?;
                return Ok(EXIT_OK);
            }
            let mut rows = vec![["TASK", "PATH", "SIZE", "URI"].map(String::from)];
            for f in &listed {
                rows.push([
                    visible(f["taskId"].as_str().unwrap_or("?")).into_owned(),
                    visible(f["path"].as_str().unwrap_or("?")).into_owned(),
                    f["size"].as_u64().unwrap_or(0).to_string(),
                    visible(f["uri"].as_str().unwrap_or("?")).into_owned(),
                ]);
            }
            print_table(rows)?;
            Ok(EXIT_OK)
        }
        .await,
    )
}

/// `ferry download JOB TASK PATH [-o OUT]`: an output file, through the api, into `OUT` (by
/// default the file's own name in the current directory; `-` for standard output). The file
/// appears whole or not at all: it is written beside `OUT` and renamed when complete.
pub async fn download(api: &Target, job: &str, task: &str, path: &str, out: Option<&Path>) -> Result<i32> {
    let client = Client::new(api)?;
    let mut url = reqwest::Url::parse(&client.base)?;
    url.path_segments_mut()
        .map_err(|()| anyhow!("--api {} cannot take a path", client.base))?
        .pop_if_empty()
        .extend(["jobs", job, "files", task])
        .extend(path.split('/'));
    let out: PathBuf = match out {
        Some(o) => o.to_path_buf(),
        None => {
            let name = path
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty() && *n != "." && *n != "..");
            PathBuf::from(name.ok_or_else(|| anyhow!("{path:?} names no file: give -o OUT"))?)
        }
    };
    exit_for(
        async {
            let resp = client.send(client.http.get(url)).await?;
            if out == Path::new("-") {
                // A reader that went away (`| head`) ends the copy, not the command's success.
                match copy_body(resp, path, &mut std::io::stdout().lock()).await {
                    Err(e) if e.downcast_ref::<std::io::Error>().is_some() => return Ok(EXIT_OK),
                    r => r?,
                };
                return Ok(EXIT_OK);
            }
            let dir = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let n = copy_body(resp, path, &mut tmp)
                .await
                .map_err(|e| anyhow!("{e:#}; nothing was written to {}", out.display()))?;
            tmp.persist(&out)
                .map_err(|e| anyhow!("cannot write {}: {}", out.display(), e.error))?;
            errln!("{} ({n} bytes)", out.display());
            Ok(EXIT_OK)
        }
        .await,
    )
}

/// Copies the body of a download of `path` into `to`: its byte count, or why it stopped (an
/// `std::io::Error` of `to`, or a transfer broken off or short of its `Content-Length`).
async fn copy_body(resp: reqwest::Response, path: &str, to: &mut impl std::io::Write) -> Result<u64> {
    let expected = resp.content_length();
    let mut body = resp.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow!("the download of {path:?} broke off: {e}"))?;
        to.write_all(&chunk)?;
        n += chunk.len() as u64;
    }
    match expected {
        Some(want) if want != n => Err(anyhow!(
            "the download of {path:?} ended after {n} of {want} bytes"
        )),
        _ => Ok(n),
    }
}

/// The STATE, RUNNING and SEEN cells of a launcher or an agent as the api lists it.
fn presence_cells(p: &Value, now: i64) -> [String; 3] {
    let state = if p["live"].as_bool() == Some(true) {
        "live"
    } else if p["leaving"].as_bool() == Some(true) {
        "left"
    } else {
        "silent"
    };
    [
        state.to_string(),
        format!(
            "{}/{}",
            p["running"].as_u64().unwrap_or(0),
            p["capacity"].as_u64().unwrap_or(0)
        ),
        format!(
            "{} ago",
            fmt_duration(now - p["seenAtMs"].as_i64().unwrap_or(now))
        ),
    ]
}

/// `ferry launchers [--json]`: which backends have a launcher running, and how busy each is.
pub async fn launchers(api: &Target, as_json: bool) -> Result<i32> {
    let client = Client::new(api)?;
    exit_for(
        async {
            let list = client.get_json("/launchers").await?;
            if as_json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(anyhow::Error::from)?
                )?;
                return Ok(EXIT_OK);
            }
            let mut rows = vec![["BACKEND", "INSTANCE", "STATE", "RUNNING", "SEEN"].map(String::from)];
            let now = ferry_event::now_ms();
            for l in list["launchers"].as_array().into_iter().flatten() {
                let [state, running, seen] = presence_cells(l, now);
                rows.push([
                    visible(l["backend"].as_str().unwrap_or("?")).into_owned(),
                    visible(l["instance"].as_str().unwrap_or("?")).into_owned(),
                    state,
                    running,
                    seen,
                ]);
            }
            print_table(rows)?;
            Ok(EXIT_OK)
        }
        .await,
    )
}

/// `ferry agents`: the agents heard from in the last day, live ones first.
pub async fn agents(api: &Target, as_json: bool) -> Result<i32> {
    let client = Client::new(api)?;
    exit_for(
        async {
            let list = client.get_json("/agents").await?;
            if as_json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(anyhow::Error::from)?
                )?;
                return Ok(EXIT_OK);
            }
            let mut rows =
                vec![["CLUSTER", "TASKS", "INSTANCE", "STATE", "RUNNING", "SEEN"].map(String::from)];
            let now = ferry_event::now_ms();
            for a in list["agents"].as_array().into_iter().flatten() {
                let tasks: Vec<&str> = a["tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let [state, running, seen] = presence_cells(a, now);
                rows.push([
                    visible(a["cluster"].as_str().unwrap_or("?")).into_owned(),
                    visible(&tasks.join(",")).into_owned(),
                    visible(a["instance"].as_str().unwrap_or("?")).into_owned(),
                    state,
                    running,
                    seen,
                ]);
            }
            print_table(rows)?;
            Ok(EXIT_OK)
        }
        .await,
    )
}

/// Rows as columns padded to their widest cell.
fn print_table<const N: usize>(rows: Vec<[String; N]>) -> Result<(), Closed> {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        outln!("{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

fn print_status(d: &Value) -> Result<(), Closed> {
    // The state alone on the first line: scripts read it.
    outln!("{}", d["state"].as_str().unwrap_or("unknown"))?;
    let mut rows = vec![["TASK", "STATE", "ATTEMPTS", "DURATION", "COMPUTE", "ERROR"].map(String::from)];
    let tasks: Vec<&Value> = d["tasks"].as_array().into_iter().flatten().collect();
    for (depth, t) in as_tree(&tasks) {
        let duration = match (t["startedAtMs"].as_i64(), t["finishedAtMs"].as_i64()) {
            (Some(a), Some(b)) => fmt_duration(b - a),
            _ => "-".into(),
        };
        rows.push([
            format!(
                "{}{}",
                "  ".repeat(depth),
                visible(t["taskId"].as_str().unwrap_or("?"))
            ),
            t["state"].as_str().unwrap_or("?").to_string(),
            t["attempts"].as_u64().unwrap_or(0).to_string(),
            duration,
            t["computeMs"].as_i64().map_or_else(|| "-".into(), fmt_duration),
            visible(t["error"].as_str().unwrap_or("")).into_owned(),
        ]);
    }
    print_table(rows)?;
    // What keeps tasks from starting, when it is more than their turn.
    for t in d["tasks"].as_array().into_iter().flatten() {
        if let Some(why) = t["waiting"].as_str() {
            outln!(
                "{} waits: {}",
                visible(t["taskId"].as_str().unwrap_or("?")),
                visible(why)
            )?;
        }
    }
    if let Some(ms) = d["computeMs"].as_i64() {
        outln!("compute: {} held by the job's attempts", fmt_duration(ms))?;
    }
    if let Some(reason) = d["reason"].as_str() {
        outln!("reason: {}", visible(reason))?;
    }
    Ok(())
}

/// Tasks in the job's order with each one's subtasks right under it, and how deep each is:
/// a task whose `parent` is listed comes after it (and after that parent's earlier subtasks).
fn as_tree<'a>(tasks: &[&'a Value]) -> Vec<(usize, &'a Value)> {
    let listed: std::collections::HashSet<&str> = tasks.iter().filter_map(|t| t["taskId"].as_str()).collect();
    let mut children: std::collections::HashMap<&str, Vec<&'a Value>> = std::collections::HashMap::new();
    let mut roots = Vec::new();
    for t in tasks {
        match t["parent"].as_str().filter(|p| listed.contains(p)) {
            Some(parent) => children.entry(parent).or_default().push(*t),
            None => roots.push(*t),
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut stack: Vec<(usize, &'a Value)> = roots.into_iter().rev().map(|t| (0, t)).collect();
    while let Some((depth, t)) = stack.pop() {
        out.push((depth, t));
        if let Some(kids) = t["taskId"].as_str().and_then(|id| children.remove(id)) {
            stack.extend(kids.into_iter().rev().map(|k| (depth + 1, k)));
        }
    }
    // Parents that lead round in a circle (no real job has them) are listed all the same.
    out.extend(children.into_values().flatten().map(|t| (0, t)));
    out
}

/// `ferry logs JOB [--task T] [--follow] [--raw]`; control sequences in the lines are shown as
/// text unless `raw`.
pub async fn logs(api: &Target, job: &str, task: Option<&str>, follow: bool, raw: bool) -> Result<i32> {
    let client = Client::new(api)?;
    exit_for(
        async {
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/jobs/{job}/logs?limit=10000");
                if let Some(t) = task {
                    path.push_str(&format!("&task={t}"));
                }
                if follow {
                    path.push_str("&follow=true");
                }
                if let Some(c) = &after {
                    path.push_str(&format!("&after={c}"));
                }
                let mut n = 0usize;
                client
                    .ndjson(&path, |v| {
                        n += 1;
                        after = v["cursor"].as_str().map(str::to_string);
                        let mark = if v["stream"] == "stderr" { '!' } else { '|' };
                        outln!(
                            "{} {mark} {}",
                            v["taskId"].as_str().unwrap_or("?"),
                            task_text(v["text"].as_str().unwrap_or(""), raw)
                        )?;
                        Ok(())
                    })
                    .await?;
                // Without follow, a full page means there may be more.
                if follow || n < 10000 {
                    return Ok(EXIT_OK);
                }
            }
        }
        .await,
    )
}

/// How long `ferry deploy` waits for the planner to announce the flow it deployed.
const DEPLOY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The version of each deployed flow, by `NAMESPACE/ID`, as the api lists them.
async fn deployed_versions(client: &Client) -> Result<std::collections::HashMap<String, u64>, Refused> {
    let list = client.get_json("/flows").await?;
    Ok(list["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let key =
                ferry_event::envelope::flow_key(f["namespace"].as_str(), f["flowId"].as_str().unwrap_or("?"));
            (key, f["version"].as_u64().unwrap_or(0))
        })
        .collect())
}

/// `ferry deploy FLOW`: registers a new version of the flow in the planner's registry, so that
/// its triggers start jobs; waits until the deployment lists it, then prints `NAMESPACE/ID` and
/// its version.
pub async fn deploy(api: &Target, flow: &Path) -> Result<i32> {
    let client = Client::new(api)?;
    let (source, name) = match read_flow(flow) {
        Ok(s) => s,
        Err(e) => {
            errln!("error: {e:#}");
            return Ok(EXIT_INVALID);
        }
    };
    exit_for(
        async {
            let before = deployed_versions(&client).await?;
            let req = client
                .http
                .post(format!("{}/flows", client.base))
                .header("content-type", "application/json")
                .body(json!({ "flow": source, "flowName": name }).to_string());
            let answer: Value = client
                .send(req)
                .await?
                .json()
                .await
                .map_err(|e| Refused::Failed(anyhow!("the api's answer is not JSON: {e}")))?;
            let key = answer["flow"]
                .as_str()
                .ok_or_else(|| anyhow!("the api did not say which flow it deploys: {answer}"))?
                .to_string();
            let was = before.get(&key).copied().unwrap_or(0);
            let deadline = tokio::time::Instant::now() + DEPLOY_WAIT;
            loop {
                if let Some(&version) = deployed_versions(&client).await?.get(&key)
                    && version > was
                {
                    outln!("{key} version {version}")?;
                    return Ok(EXIT_OK);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Refused::Failed(anyhow!(
                        "the deploy of {key} was accepted, but the planner has not announced it within {}s: \
                         is a planner running? `ferry flows` lists what is deployed",
                        DEPLOY_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        .await,
    )
}

/// `ferry undeploy [NAMESPACE/]ID`: removes the flow from the registry; its triggers start no
/// more jobs.
pub async fn undeploy(api: &Target, flow: &str) -> Result<i32> {
    let client = Client::new(api)?;
    let (namespace, flow_id) = match flow.split_once('/') {
        Some((ns, id)) => (Some(ns), id),
        None => (None, flow),
    };
    let mut data = json!({ "flowId": flow_id });
    if let Some(ns) = namespace {
        data["namespace"] = json!(ns);
    }
    exit_for(
        async {
            let deployed = deployed_versions(&client).await?;
            if !deployed.contains_key(flow) {
                return Err(Refused::Invalid(format!(
                    "flow {flow} is not deployed; `ferry flows` lists the deployed flows (NAMESPACE/ID)"
                )));
            }
            client.post_event(ferry_event::kind::FLOW_UNDEPLOY, data).await?;
            errln!("ferry: undeploy of {flow} accepted");
            Ok(EXIT_OK)
        }
        .await,
    )
}

/// `ferry flows [--json]`: the deployed flows, their versions and what triggers them.
pub async fn flows(api: &Target, as_json: bool) -> Result<i32> {
    let client = Client::new(api)?;
    exit_for(
        async {
            let list = client.get_json("/flows").await?;
            if as_json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(anyhow::Error::from)?
                )?;
                return Ok(EXIT_OK);
            }
            let mut rows = vec![["FLOW", "VERSION", "TRIGGERS"].map(String::from)];
            for f in list["flows"].as_array().into_iter().flatten() {
                let key = ferry_event::envelope::flow_key(
                    f["namespace"].as_str(),
                    f["flowId"].as_str().unwrap_or("?"),
                );
                let now = chrono::Utc::now();
                let triggers: Vec<String> = f["triggers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| describe_trigger(t, now))
                    .collect();
                rows.push([
                    visible(&key).into_owned(),
                    f["version"].as_u64().unwrap_or(0).to_string(),
                    visible(&triggers.join(" ")).into_owned(),
                ]);
            }
            print_table(rows)?;
            Ok(EXIT_OK)
        }
        .await,
    )
}

/// A deployed trigger in a line: what it matches (`on`), or its schedule, zone and next tick.
fn describe_trigger(t: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(expression) = t["schedule"].as_str() else {
        return t["on"].to_string();
    };
    let zone = t["timezone"].as_str();
    let next = ferry_flow::schedule::Schedule::parse(expression, zone)
        .ok()
        .and_then(|s| s.next_after(now).map(|at| s.tick(at).time));
    format!(
        "schedule \"{expression}\" {} (next {})",
        zone.unwrap_or(ferry_flow::schedule::DEFAULT_TIMEZONE),
        next.as_deref().unwrap_or("never")
    )
}

/// `ferry cancel JOB` and `ferry retry JOB`.
pub async fn command(api: &Target, job: &str, ty: &str) -> Result<i32> {
    let client = Client::new(api)?;
    let data = json!({ "jobId": job });
    exit_for(
        async {
            client.post_event(ty, data).await?;
            let what = if ty == ferry_event::kind::JOB_CANCEL {
                "cancel"
            } else {
                "retry"
            };
            errln!("ferry: {what} of job {job} accepted");
            Ok(EXIT_OK)
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_shown_with_its_next_tick_in_its_zone() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-06T21:40:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let t = serde_json::json!({"schedule": "0 2 * * *", "timezone": "Europe/Paris"});
        assert_eq!(
            describe_trigger(&t, now),
            "schedule \"0 2 * * *\" Europe/Paris (next 2026-12-07T02:00:00+01:00)"
        );
        let t = serde_json::json!({"schedule": "*/30 * * * *"});
        assert_eq!(
            describe_trigger(&t, now),
            "schedule \"*/30 * * * *\" UTC (next 2026-12-06T22:00:00Z)"
        );
        let t = serde_json::json!({"on": {"type": "com.acme.x"}});
        assert_eq!(describe_trigger(&t, now), r#"{"type":"com.acme.x"}"#);
    }

    #[test]
    fn subtasks_are_listed_under_their_parent() {
        let tasks = serde_json::json!([
            {"taskId": "split"},
            {"taskId": "reduce"},
            {"taskId": "split.a", "parent": "split"},
            {"taskId": "split.b", "parent": "split"},
            {"taskId": "split.a.x", "parent": "split.a"},
            {"taskId": "orphan.y", "parent": "orphan"},
        ]);
        let tasks: Vec<&Value> = tasks.as_array().unwrap().iter().collect();
        let shown: Vec<(usize, &str)> = as_tree(&tasks)
            .into_iter()
            .map(|(depth, t)| (depth, t["taskId"].as_str().unwrap()))
            .collect();
        assert_eq!(
            shown,
            [
                (0, "split"),
                (1, "split.a"),
                (2, "split.a.x"),
                (1, "split.b"),
                (0, "reduce"),
                (0, "orphan.y"),
            ]
        );
    }

    #[test]
    fn api_urls_must_be_http() {
        assert!(
            Client::new(&Target::new("127.0.0.1:8080"))
                .err()
                .unwrap()
                .to_string()
                .contains("http://")
        );
        assert_eq!(
            Client::new(&Target::new("http://h:1/")).unwrap().base,
            "http://h:1"
        );
    }

    #[test]
    fn the_local_admin_token_goes_to_a_loopback_api_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(ferry_api::auth::ADMIN_TOKEN_FILE),
            "ferry_local\n",
        )
        .unwrap();
        let with = |url: &str, token: Option<&str>| {
            let mut t = Target::new(url);
            t.data_dir = dir.path().to_path_buf();
            t.token = token.map(str::to_string);
            Client::new(&t).unwrap()
        };
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "https://[::1]:8443",
        ] {
            assert_eq!(with(url, None).token.as_deref(), Some("ferry_local"), "{url}");
        }
        for url in ["http://10.0.0.1:8080", "https://ferry.example.com"] {
            assert_eq!(with(url, None).token, None, "{url}");
        }
        assert_eq!(
            with("http://127.0.0.1:8080", Some("ferry_given"))
                .token
                .as_deref(),
            Some("ferry_given")
        );
    }
}
