//! The security suite: attacks on a running deployment, each of which must fail. Every case
//! starts `ferry up` on RabbitMQ (its own bus namespace and data directory, the api on a free
//! loopback port) and attacks it from outside, as a stranger would: over HTTP with raw
//! sockets, straight on the broker (tests/clients/rabbit_spy.py), from inside a task, through
//! the file system and the `ferry` command. Each case checks the refusal and that nothing
//! changed or ran. docs/security.md lists the cases and the defences they attack.
//!
//! Forged and replayed dispatches are tried on Kafka too (a Kafka-protocol broker, read and
//! written with tests/clients/kafka_spy.py).
//!
//! Needs FERRY_TEST_AMQP, FERRY_TEST_KAFKA and FERRY_TEST_PYTHON (a Python with pika and
//! kafka-python); scripts/test.sh sets them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run ./scripts/test.sh, which sets it"))
}

fn short_id() -> String {
    ferry_event::new_id().replace('-', "")[16..].to_string()
}

/// A `ferry up` on RabbitMQ in a bus namespace and data directory of its own, stopped on drop,
/// then its namespace removed from the broker.
struct Deployment {
    up: Up,
    _namespace: BusNamespace,
    port: u16,
    ns: String,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn start() -> Deployment {
        Self::start_with(|_| {})
    }

    fn start_with(configure: impl FnOnce(&mut Command)) -> Deployment {
        Self::start_on(bus_url, configure)
    }

    /// A `ferry up` on the bus `bus` names for a namespace.
    fn start_on(bus: fn(&str) -> String, configure: impl FnOnce(&mut Command)) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let ns = format!("s{}", short_id());
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(["up", "--no-docker", "--no-kubernetes", "--kill-grace", "1s"])
            .args(["--header-read-timeout", "1s", "--request-timeout", "2s"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            // In the environment, as docs/security.md advises, not on the command line.
            .env("FERRY_BUS", bus(&ns))
            .env("FERRY_LOG", "info")
            .env_remove("FERRY_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        configure(&mut cmd);
        let namespace = BusNamespace(bus(&ns));
        let mut up = Up(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = up.0.try_wait() {
                panic!("ferry up exited ({status}): {}", read(&dir.path().join("up.log")));
            }
            assert!(
                Instant::now() < deadline,
                "ferry up did not start: {}",
                read(&dir.path().join("up.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Deployment {
            up,
            _namespace: namespace,
            port,
            ns,
            dir,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn admin(&self) -> String {
        read(&self.data().join("admin.token")).trim().to_string()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An HTTP request with the admin token.
    fn admin_request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let token = self.admin();
        http(self.port, &self.host(), method, path, Some(&token), body)
    }

    /// A submission of `flow` under `job` with `token`.
    fn submit_as(&self, token: Option<&str>, job: &str, flow: &str) -> Reply {
        http(
            self.port,
            &self.host(),
            "POST",
            "/events",
            token,
            Some(&submission(job, flow)),
        )
    }

    fn submit(&self, job: &str, flow: &str) -> Reply {
        let r = self.submit_as(Some(&self.admin()), job, flow);
        assert_eq!(r.status, 202, "{}", r.body);
        r
    }

    fn cancel_as(&self, token: Option<&str>, job: &str) -> Reply {
        let event = json!({"specversion": "1.0", "id": ferry_event::new_id(), "source": "/security",
            "type": "dev.ferry.job.cancel", "data": {"jobId": job}});
        http(self.port, &self.host(), "POST", "/events", token, Some(&event))
    }

    /// The job as the api knows it (with the admin token), or None for 404.
    fn job(&self, job: &str) -> Option<Value> {
        let r = self.admin_request("GET", &format!("/jobs/{job}"), None);
        match r.status {
            404 => None,
            200 => Some(serde_json::from_str(&r.body).unwrap()),
            s => panic!("GET /jobs/{job}: {s} {}", r.body),
        }
    }

    fn state(&self, job: &str) -> Option<String> {
        self.job(job)
            .map(|j| j["state"].as_str().unwrap_or("").to_string())
    }

    fn wait_state(&self, job: &str, states: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.state(job);
            if let Some(s) = state.as_deref()
                && states.contains(&s)
            {
                return s.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "job {job} did not reach {states:?} (last {state:?}); log: {}",
                read(&self.dir.path().join("up.log"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ferry logs JOB` as the admin on this machine.
    fn logs(&self, job: &str) -> Ran {
        let mut c = ferry();
        c.args(["logs", job, "--api", &self.api(), "--data-dir"])
            .arg(self.data());
        output(c)
    }

    /// Adds a token made by `ferry token create` to the tokens file and waits until the api
    /// knows it.
    fn token(&self, scopes: &str, namespaces: Option<&str>) -> String {
        let mut c = ferry();
        c.args([
            "token",
            "create",
            "--name",
            &format!("t{}", short_id()),
            "--scope",
            scopes,
        ]);
        if let Some(ns) = namespaces {
            c.args(["--namespace", ns]);
        }
        let ran = output(c);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let mut lines = ran.stdout.lines();
        let token = lines.next().unwrap().to_string();
        let entry = lines.next().unwrap().to_string();
        let file = self.data().join("tokens.yaml");
        let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
        writeln!(f, "{entry}").unwrap();
        drop(f);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(self.port, &self.host(), "GET", "/jobs", Some(&token), None).status == 401 {
            assert!(Instant::now() < deadline, "the api did not take up the new token");
            std::thread::sleep(Duration::from_millis(200));
        }
        token
    }

    fn python(&self, args: &[&str], stdin: Option<&str>) -> String {
        client("rabbit_spy.py", args, stdin.unwrap_or(""))
    }

    /// Binds a queue of the attacker's own to the namespace's exchange with `key`.
    fn spy(&self, key: &str) -> String {
        let queue = format!("spy-{}-{}", self.ns, short_id());
        self.python(&["spy", &amqp(), &self.ns, key, &queue], None);
        queue
    }

    /// What the spy queue heard, as messages (the queue is deleted).
    fn take(&self, queue: &str) -> Vec<Value> {
        serde_json::from_str(&self.python(&["take", &amqp(), queue], None)).unwrap()
    }

    fn publish(&self, messages: &[Value]) {
        self.python(
            &["publish", &amqp(), &self.ns],
            Some(&Value::from(messages.to_vec()).to_string()),
        );
    }

    /// The dead letters of the namespace, taken off its dead-letter queue.
    fn dead(&self) -> Vec<Value> {
        serde_json::from_str(&self.python(&["dead", &amqp(), &self.ns], None)).unwrap()
    }

    /// Waits until `n` dead letters have come (bounded), and returns them.
    fn wait_dead(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut dead = Vec::new();
        while dead.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} dead letters came: {dead:?}",
                dead.len()
            );
            std::thread::sleep(Duration::from_millis(200));
            dead.extend(self.dead());
        }
        dead
    }
}

fn amqp() -> String {
    env("FERRY_TEST_AMQP")
}

/// Runs the attacker's broker client tests/clients/SCRIPT with `args`, fed `stdin`; what it
/// printed. It must succeed.
fn client(script: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env("FERRY_TEST_PYTHON"))
        .arg(root().join("tests/clients").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Kafka-protocol broker's `kafka://HOST:PORT`.
fn kafka() -> String {
    env("FERRY_TEST_KAFKA")
}

fn kafka_url(ns: &str) -> String {
    format!("{}?namespace={ns}", kafka())
}

fn bus_url(ns: &str) -> String {
    let base = amqp();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}namespace={ns}")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn submission(job: &str, flow: &str) -> Value {
    json!({"specversion": "1.0", "id": ferry_event::new_id(), "source": "/security",
        "type": "dev.ferry.job.submitted", "data": {"jobId": job, "flow": flow, "inputs": {}}})
}

/// A flow of one local task running `sh -c SCRIPT`.
fn shell_flow(namespace: Option<&str>, script: &str) -> String {
    let ns = namespace.map(|n| format!("namespace: {n}\n")).unwrap_or_default();
    let script = serde_json::to_string(script).unwrap();
    format!("id: attack\n{ns}tasks:\n  - id: t\n    runner: local\n    command: [sh, -c, {script}]\n")
}

/// An answer to a raw HTTP/1.1 request.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a connection of its own, with the `Host` given.
fn http(port: u16, host: &str, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/cloudevents+json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&String::from_utf8_lossy(&raw))
}

fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        head: head.to_string(),
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sends `head` at once, then `trickle` a byte at a time every `every`, until the server
/// answers or closes; returns what it answered (empty when it closed without a word) and when.
fn trickle(port: u16, head: &str, trickle: &[u8], every: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    for b in trickle.iter().cycle() {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if !got.is_empty() && got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if s.write_all(&[*b]).is_err() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the api kept a trickling client for 30 s"
        );
        std::thread::sleep(every);
    }
    (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
}

fn error_text(r: &Reply) -> String {
    serde_json::from_str::<Value>(&r.body)
        .ok()
        .map(|v| v.to_string())
        .unwrap_or_else(|| r.body.clone())
}

// --- Who is asking --------------------------------------------------------------------------

#[test]
fn requests_without_a_token_or_with_an_unknown_one_are_401_and_make_no_job() {
    let d = Deployment::start();
    let flow = shell_flow(None, "echo ran");
    let forged = format!("ferry_{}", "A".repeat(43));
    for (token, job) in [(None, "no-token"), (Some(forged.as_str()), "forged-token")] {
        let r = d.submit_as(token, job, &flow);
        assert_eq!(r.status, 401, "{r:?}");
        assert!(
            r.head.to_ascii_lowercase().contains("www-authenticate: bearer"),
            "{}",
            r.head
        );
        for path in ["/jobs", &format!("/jobs/{job}"), "/launchers"] {
            let r = http(d.port, &d.host(), "GET", path, token, None);
            assert_eq!(r.status, 401, "GET {path}: {r:?}");
        }
        assert_eq!(d.job(job), None, "a refused submission made job {job}");
    }
    // A real job cannot be cancelled without a token either.
    d.submit("victim", &shell_flow(None, "sleep 30"));
    d.wait_state("victim", &["running"]);
    assert_eq!(d.cancel_as(None, "victim").status, 401);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.state("victim").as_deref(), Some("running"));
}

#[test]
fn tokens_without_the_scope_are_403_and_change_nothing() {
    let d = Deployment::start();
    let reader = d.token("read", None);
    let submitter = d.token("submit", None);
    let r = d.submit_as(Some(&reader), "by-reader", &shell_flow(None, "echo ran"));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        error_text(&r).contains("submit"),
        "the refusal names the missing scope: {}",
        r.body
    );
    assert_eq!(d.job("by-reader"), None);

    d.submit("victim", &shell_flow(None, "sleep 30"));
    d.wait_state("victim", &["running"]);
    for token in [&reader, &submitter] {
        let r = d.cancel_as(Some(token), "victim");
        assert_eq!(r.status, 403, "{r:?}");
        assert!(error_text(&r).contains("cancel"), "{}", r.body);
    }
    assert_eq!(
        http(d.port, &d.host(), "GET", "/jobs/victim", Some(&submitter), None).status,
        403
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.state("victim").as_deref(), Some("running"));
}

#[test]
fn a_namespace_limited_token_can_neither_submit_nor_see_nor_cancel_elsewhere() {
    let d = Deployment::start();
    let team_a = d.token("submit,read,cancel", Some("team-a"));
    // Into another namespace, or into none (`default`): refused, no job.
    for (job, ns) in [("into-b", Some("team-b")), ("into-default", None)] {
        let r = d.submit_as(Some(&team_a), job, &shell_flow(ns, "echo ran"));
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(d.job(job), None);
    }
    // Another team's job: answered as if it did not exist, and not cancelled.
    d.submit("b-job", &shell_flow(Some("team-b"), "sleep 30"));
    d.wait_state("b-job", &["running"]);
    for path in ["/jobs/b-job", "/jobs/b-job/events", "/jobs/b-job/logs"] {
        let r = http(d.port, &d.host(), "GET", path, Some(&team_a), None);
        assert_eq!(r.status, 404, "GET {path}: {r:?}");
    }
    let r = http(d.port, &d.host(), "GET", "/jobs/never-used", Some(&team_a), None);
    assert_eq!(r.status, 404);
    let list = http(d.port, &d.host(), "GET", "/jobs", Some(&team_a), None);
    assert_eq!(list.status, 200);
    assert!(!list.body.contains("b-job"), "{}", list.body);
    let r = d.cancel_as(Some(&team_a), "b-job");
    assert!(matches!(r.status, 403 | 404), "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.state("b-job").as_deref(), Some("running"));
    // Its own namespace works: the refusals above were about the namespace.
    let r = d.submit_as(Some(&team_a), "a-job", &shell_flow(Some("team-a"), "echo ran"));
    assert_eq!(r.status, 202, "{r:?}");
}

// --- The HTTP surface -----------------------------------------------------------------------

#[test]
fn a_request_for_a_foreign_host_is_421_and_makes_no_job() {
    let d = Deployment::start();
    let token = d.admin();
    for host in [
        "evil.example",
        &format!("evil.example:{}", d.port),
        "127.0.0.1.nip.io",
    ] {
        let r = http(
            d.port,
            host,
            "POST",
            "/events",
            Some(&token),
            Some(&submission("rebound", &shell_flow(None, "echo ran"))),
        );
        assert_eq!(r.status, 421, "Host {host}: {r:?}");
        assert_eq!(http(d.port, host, "GET", "/jobs", Some(&token), None).status, 421);
    }
    assert_eq!(d.job("rebound"), None);
}

#[test]
fn headers_trickled_byte_by_byte_get_the_connection_closed() {
    let d = Deployment::start();
    let head = format!("GET /jobs HTTP/1.1\r\nHost: {}\r\nX-Slow: ", d.host());
    let (answer, took) = trickle(d.port, &head, b"aaaaaaaa", Duration::from_millis(200));
    // Closed (or 408) after --header-read-timeout 1s, never answered as a request.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(10), "closed only after {took:?}");
    // Nothing sent at all: closed as well.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    let _ = s.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_body_trickled_byte_by_byte_is_408_and_makes_no_job() {
    let d = Deployment::start();
    let body = submission("trickled", &shell_flow(None, "echo ran")).to_string();
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n",
        d.host(),
        d.admin(),
        body.len()
    );
    let (answer, took) = trickle(d.port, &head, body.as_bytes(), Duration::from_millis(200));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(10), "answered only after {took:?}");
    assert_eq!(d.job("trickled"), None);
}

#[test]
fn a_second_job_under_a_taken_id_is_409_and_the_first_is_unchanged() {
    let d = Deployment::start();
    d.submit("taken", &shell_flow(None, "echo first"));
    assert_eq!(d.wait_state("taken", &["succeeded", "failed"]), "succeeded");
    let before = d.job("taken").unwrap();
    let r = d.submit_as(Some(&d.admin()), "taken", &shell_flow(None, "echo second"));
    assert_eq!(r.status, 409, "{r:?}");
    // A token limited to a namespace gets the same answer.
    let team = d.token("submit", Some("team-a"));
    let r = d.submit_as(Some(&team), "taken", &shell_flow(Some("team-a"), "echo third"));
    assert_eq!(r.status, 409, "{r:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(d.job("taken").unwrap(), before);
    let logs = d.logs("taken");
    assert!(logs.stdout.contains("first"), "{}", logs.stdout);
    assert!(
        !logs.stdout.contains("second") && !logs.stdout.contains("third"),
        "{}",
        logs.stdout
    );
}

#[test]
fn a_yaml_alias_bomb_through_the_api_is_refused_and_makes_no_job() {
    let d = Deployment::start();
    // Nine levels of nine aliases: about 387 million strings once expanded, 1 KiB as sent.
    let mut bomb = String::from("id: bomb\nx0: &x0 \"lol lol lol lol\"\n");
    for i in 1..=9 {
        let prev = format!("*x{}", i - 1);
        bomb.push_str(&format!("x{i}: &x{i} [{}]\n", vec![prev; 9].join(", ")));
    }
    bomb.push_str("tasks:\n  - id: t\n    runner: local\n    command: [echo, *x9]\n");
    let started = Instant::now();
    let r = d.submit_as(Some(&d.admin()), "bomb", &bomb);
    assert!(matches!(r.status, 400 | 413), "{r:?}");
    assert!(error_text(&r).contains("alias"), "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(d.job("bomb"), None);
    // The api still serves.
    assert_eq!(d.admin_request("GET", "/jobs", None).status, 200);
}

// --- The bus --------------------------------------------------------------------------------

/// The events of captured messages, each as a structured CloudEvent (binary-mode messages
/// turned into one; batch messages split).
fn events_of(messages: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for m in messages {
        let body: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap_or(Value::Null);
        let ct = m["contentType"].as_str().unwrap_or("");
        if ct.starts_with("application/cloudevents-batch+json") {
            out.extend(body.as_array().cloned().unwrap_or_default());
        } else if ct.starts_with("application/cloudevents+json") {
            out.push(body);
        } else {
            let mut e = serde_json::Map::new();
            for (k, v) in m["headers"].as_object().unwrap() {
                if let Some(name) = k.strip_prefix("cloudEvents:") {
                    e.insert(name.to_string(), v.clone());
                }
            }
            e.insert("datacontenttype".into(), json!(ct));
            e.insert("data".into(), body);
            out.push(Value::Object(e));
        }
    }
    out
}

/// A structured-mode message carrying `event` on `key`.
fn structured(key: &str, event: &Value) -> Value {
    json!({"routingKey": key, "contentType": "application/cloudevents+json",
        "messageId": event["id"], "headers": {}, "body": event.to_string()})
}

/// Runs a job and captures, off the broker, the signed events its run sent on `key`.
fn captured(d: &Deployment, key: &str, job: &str, script: &str) -> Vec<Value> {
    let spy = d.spy(key);
    d.submit(job, &shell_flow(None, script));
    assert_eq!(d.wait_state(job, &["succeeded", "failed"]), "succeeded");
    let events = events_of(&d.take(&spy));
    assert!(!events.is_empty(), "nothing heard on {key}");
    for e in &events {
        assert!(
            e["ferrysig"].as_str().is_some_and(|s| s.starts_with("v1:")),
            "unsigned: {e}"
        );
    }
    events
}

fn reasons(dead: &[Value]) -> String {
    dead.iter()
        .map(|m| {
            m["headers"]["x-ferry-dead-reason"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn a_forged_task_dispatched_unsigned_or_tampered_is_dead_lettered_and_never_runs() {
    let d = Deployment::start();
    let proof = d.dir.path().join("pwned");
    let events = captured(&d, "dispatch.local", "model", "echo model");
    let real = events
        .iter()
        .find(|e| e["type"] == "dev.ferry.task.dispatched")
        .expect("a task.dispatched was heard");
    // The real dispatch turned into one that writes the proof, for a new attempt of a new job.
    let mut forged = real.clone();
    let attempt = ferry_event::new_id();
    forged["id"] = json!(ferry_event::new_id());
    forged["ferryattempt"] = json!(attempt);
    forged["ferryjob"] = json!("forged");
    forged["partitionkey"] = json!("forged");
    forged["data"]["jobId"] = json!("forged");
    forged["data"]["attemptId"] = json!(attempt);
    forged["data"]["command"] = json!(["touch", proof.to_str().unwrap()]);
    let tampered = forged.clone();
    let mut unsigned = forged.clone();
    unsigned.as_object_mut().unwrap().remove("ferrysig");
    unsigned["id"] = json!(ferry_event::new_id());
    let mut wrong_key = unsigned.clone();
    wrong_key["id"] = json!(ferry_event::new_id());
    let sig = real["ferrysig"].as_str().unwrap();
    let key_id = sig.split(':').nth(1).unwrap();
    wrong_key["ferrysig"] = json!(format!("v1:{key_id}:{}", "A".repeat(43) + "="));
    let mut unknown_key = unsigned.clone();
    unknown_key["id"] = json!(ferry_event::new_id());
    unknown_key["ferrysig"] = json!(format!("v1:attacker-key:{}", "A".repeat(43) + "="));
    d.publish(&[
        structured("dispatch.local", &tampered),
        structured("dispatch.local", &unsigned),
        structured("dispatch.local", &wrong_key),
        structured("dispatch.local", &unknown_key),
    ]);
    let dead = d.wait_dead(4);
    assert_eq!(dead.len(), 4, "{dead:?}");
    let reasons = reasons(&dead);
    assert!(reasons.contains("sign"), "{reasons}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!proof.exists(), "a forged dispatch ran its command");
    assert_eq!(d.job("forged"), None);
}

#[test]
fn a_forged_task_finished_does_not_end_a_running_job() {
    let d = Deployment::start();
    let events = captured(&d, "control", "model", "echo model");
    let real = events
        .iter()
        .find(|e| e["type"] == "dev.ferry.task.finished")
        .expect("a task.finished was heard");
    d.submit("victim", &shell_flow(None, "sleep 30"));
    d.wait_state("victim", &["running"]);
    let victim = d.job("victim").unwrap();
    let task = &victim["tasks"][0];
    let attempt = task["attemptId"]
        .as_str()
        .expect("the running task's attempt")
        .to_string();
    let mut forged = real.clone();
    forged["id"] = json!(ferry_event::new_id());
    forged["ferryattempt"] = json!(attempt);
    forged["ferryjob"] = json!("victim");
    forged["partitionkey"] = json!("victim");
    forged["data"]["jobId"] = json!("victim");
    forged["data"]["attemptId"] = json!(attempt);
    let tampered = forged.clone();
    let mut unsigned = forged;
    unsigned.as_object_mut().unwrap().remove("ferrysig");
    unsigned["id"] = json!(ferry_event::new_id());
    d.publish(&[structured("control", &tampered), structured("control", &unsigned)]);
    let dead = d.wait_dead(2);
    assert!(reasons(&dead).contains("sign"), "{}", reasons(&dead));
    std::thread::sleep(Duration::from_secs(1));
    let after = d.job("victim").unwrap();
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["tasks"][0]["state"], "running", "{after}");
}

#[test]
fn a_replayed_signed_dispatch_runs_nothing_again() {
    let d = Deployment::start();
    let tally = d.dir.path().join("tally");
    let spy = d.spy("dispatch.local");
    let script = format!("echo ran >> {}", tally.display());
    d.submit("once", &shell_flow(None, &script));
    assert_eq!(d.wait_state("once", &["succeeded", "failed"]), "succeeded");
    let heard = d.take(&spy);
    assert!(!heard.is_empty());
    let before = d.job("once").unwrap();
    // Captured as it was, published again: twice, and once more as a structured event.
    d.publish(&heard);
    d.publish(&heard);
    let events: Vec<Value> = events_of(&heard)
        .iter()
        .map(|e| structured("dispatch.local", e))
        .collect();
    d.publish(&events);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        read(&tally),
        "ran\n",
        "the replayed dispatch ran the command again"
    );
    assert_eq!(d.job("once").unwrap(), before);
}

// --- What a task can reach ------------------------------------------------------------------

#[test]
fn a_task_cannot_read_the_launchers_environment_or_command_line() {
    let secret = format!("s3cret-{}", short_id());
    let root = nix::unistd::geteuid().is_root();
    let d = Deployment::start_with(|c| {
        c.env("FERRY_SECRET_API_KEY", &secret)
            .env("UNRELATED_CREDENTIAL", &secret);
        if root {
            // A root task could read everything (CAP_SYS_PTRACE); tasks run as another user.
            c.args(["--run-as", "nobody"]);
        }
    });
    if root {
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let pid = d.up.0.id();
    let password = url::Url::parse(&amqp())
        .unwrap()
        .password()
        .unwrap_or("")
        .to_string();
    assert!(
        !password.is_empty(),
        "FERRY_TEST_AMQP has no password to look for"
    );
    let script = format!(
        "for p in $PPID {pid}; do \
           for f in environ cmdline; do \
             if cat /proc/$p/$f >/dev/null 2>&1; then echo \"$f readable\"; else echo \"$f denied\"; fi; \
           done; \
           tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -q -e FERRY_SECRET_ -e UNRELATED_CREDENTIAL -e FERRY_BUS && echo 'FOUND the launcher environment'; \
           tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -qF ':{password}@' && echo 'FOUND the bus password'; \
         done; \
         env | grep -q -e FERRY_SECRET_ -e UNRELATED_CREDENTIAL -e FERRY_BUS && echo 'FOUND in own environment'; \
         echo checked"
    );
    d.submit("snoop", &shell_flow(None, &script));
    assert_eq!(d.wait_state("snoop", &["succeeded", "failed"]), "succeeded");
    let logs = d.logs("snoop");
    assert!(logs.stdout.contains("checked"), "{}", logs.stdout);
    assert!(!logs.stdout.contains("FOUND"), "{}", logs.stdout);
    assert!(logs.stdout.contains("environ denied"), "{}", logs.stdout);
    assert!(
        !logs.stdout.contains(&secret) && !logs.stdout.contains("****"),
        "{}",
        logs.stdout
    );
}

/// A task that starts `sleep 300` in a session of its own (setsid), which writes its pid to
/// `pidfile`, then ends (`then` "exit") or keeps running (`then` "sleep").
fn escaping_flow(pidfile: &Path, then: &str) -> String {
    shell_flow(
        None,
        &format!(
            "setsid sh -c 'echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 300' </dev/null >/dev/null 2>&1 & \
             while [ ! -s {0} ]; do sleep 0.05; done; {then}",
            pidfile.display()
        ),
    )
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        if Instant::now() > deadline {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            panic!("the daemon {pid} outlived its attempt");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_daemon_escaping_with_setsid_is_gone_after_finish_and_after_cancel() {
    let d = Deployment::start();
    let finished = d.dir.path().join("finished.pid");
    d.submit("finishes", &escaping_flow(&finished, "exit 0"));
    assert_eq!(d.wait_state("finishes", &["succeeded", "failed"]), "succeeded");
    let pid: i32 = read(&finished).trim().parse().unwrap();
    wait_gone(pid);

    let cancelled = d.dir.path().join("cancelled.pid");
    d.submit("cancelled", &escaping_flow(&cancelled, "exec sleep 300"));
    d.wait_state("cancelled", &["running"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cancelled.exists() {
        assert!(Instant::now() < deadline, "the task did not start its daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid: i32 = read(&cancelled).trim().parse().unwrap();
    assert!(alive(pid));
    assert_eq!(d.cancel_as(Some(&d.admin()), "cancelled").status, 202);
    assert_eq!(
        d.wait_state("cancelled", &["cancelled", "failed", "succeeded"]),
        "cancelled"
    );
    wait_gone(pid);
}

// --- Files and start-up ---------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_data_directory_databases_journal_and_artifacts_are_private() {
    // A umask that leaves what is created readable by all, as a careless service unit might
    // (each test is a process of its own: the umask is inherited by this test's ferry up only).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let d = Deployment::start();
    let flow = "id: files\ntasks:\n  - id: t\n    runner: local\n    inputFiles:\n      in.txt: secret-ish\n    \
                command: [sh, -c, 'mkdir -p out && cp in.txt out/report.txt']\n    outputFiles: [out/report.txt]\n";
    d.submit("files", flow);
    assert_eq!(d.wait_state("files", &["succeeded", "failed"]), "succeeded");
    let data = d.data();
    let mut wrong = Vec::new();
    let mut check = |path: PathBuf, want: u32| {
        if path.exists() && mode(&path) != want {
            wrong.push(format!("{} is {:o}, not {want:o}", path.display(), mode(&path)));
        }
    };
    check(data.clone(), 0o700);
    for dir in ["artifacts", "slots"] {
        check(data.join(dir), 0o700);
    }
    let files = files_under(&data);
    assert!(
        files.iter().any(|f| f.starts_with("artifacts")),
        "no artifact was kept: {files:?}"
    );
    for file in files {
        let path = data.join(&file);
        // The lock file holds nothing; everything else is the deployment's.
        if file.as_os_str() != "lock" {
            check(path.clone(), 0o600);
        }
        let mut dir = path.parent().unwrap().to_path_buf();
        while dir != data {
            check(dir.clone(), 0o700);
            dir = dir.parent().unwrap().to_path_buf();
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_short_secret_stops_ferry_up_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ns = format!("s{}", short_id());
    let _namespace = BusNamespace(bus_url(&ns));
    let mut c = ferry();
    c.args([
        "up",
        "--no-docker",
        "--no-kubernetes",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir.path().join("data"))
    .env("FERRY_BUS", bus_url(&ns))
    .env("FERRY_SECRET_TINY", "x7q");
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            panic!("ferry up started with a 3-byte secret");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = waiter.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TINY"), "the error names the secret: {stderr}");
    assert!(
        !stderr.contains("x7q"),
        "the error shows the secret's value: {stderr}"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

// --- Control characters and unbounded reads -------------------------------------------------

#[test]
fn control_characters_are_refused_in_job_ids_and_shown_as_text_in_logs() {
    let d = Deployment::start();
    for job in ["evil\u{1b}[2Jjob", "evil\njob", "evil\u{7}job", "../evil"] {
        let r = d.submit_as(Some(&d.admin()), job, &shell_flow(None, "echo ran"));
        assert_eq!(r.status, 400, "job id {job:?}: {r:?}");
    }
    let list = d.admin_request("GET", "/jobs", None);
    assert!(!list.body.contains("evil"), "{}", list.body);

    d.submit(
        "noisy",
        &shell_flow(
            None,
            "printf '\\033]0;owned\\007\\033[31mred\\033[0m\\r\\n'; printf 'x\\033[2J\\n' >&2",
        ),
    );
    assert_eq!(d.wait_state("noisy", &["succeeded", "failed"]), "succeeded");
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs = d.logs("noisy");
        if logs.stdout.contains("red") && logs.stdout.contains("2J") || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(
        !logs.stdout.bytes().any(|b| b == 0x1b || b == 0x07 || b == b'\r'),
        "raw control characters reached the terminal: {:?}",
        logs.stdout
    );
    assert!(logs.stdout.contains("\\x1b[31mred"), "{:?}", logs.stdout);
}

#[test]
fn an_endless_flow_file_is_read_boundedly_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["validate", "/dev/zero"],
        vec!["submit", "/dev/zero", "--api", "http://127.0.0.1:9"],
        vec!["run", "/dev/zero", "--data-dir"],
    ] {
        let mut c = ferry();
        c.args(&args);
        if args[0] == "run" {
            c.arg(dir.path().join("data"));
        }
        let started = Instant::now();
        let ran = output(c);
        assert_ne!(ran.code, 0);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert!(ran.stderr.contains("/dev/zero"), "{args:?}: {}", ran.stderr);
        assert!(
            ran.stderr.to_lowercase().contains("larger than") || ran.stderr.contains("MiB"),
            "{args:?}: {}",
            ran.stderr
        );
    }
}

// --- The bus, on Kafka ----------------------------------------------------------------------

/// tests/clients/kafka_spy.py with `args` (the broker's address after the command), fed `stdin`:
/// what it printed.
fn kafka_spy(args: &[&str], stdin: &str) -> String {
    let brokers = kafka().trim_start_matches("kafka://").to_string();
    let mut all = vec![args[0], &brokers];
    all.extend_from_slice(&args[1..]);
    client("kafka_spy.py", &all, stdin)
}

/// The messages on `topic` from its start, once at least `least` are there (30 s at most).
fn kafka_read(topic: &str, least: usize) -> Vec<Value> {
    serde_json::from_str(&kafka_spy(&["read", topic, &least.to_string()], "")).unwrap()
}

fn kafka_publish(topic: &str, messages: &[Value]) {
    kafka_spy(&["publish", topic], &Value::from(messages.to_vec()).to_string());
}

#[test]
fn forged_and_replayed_dispatches_on_kafka_are_dead_lettered_or_ignored_and_never_run() {
    let d = Deployment::start_on(kafka_url, |_| {});
    let topic = format!("{}.dispatch.local", d.ns);
    let dead_topic = format!("{}.dead", d.ns);
    let tally = d.dir.path().join("tally");
    let proof = d.dir.path().join("pwned");
    d.submit(
        "once",
        &shell_flow(None, &format!("echo ran >> {}", tally.display())),
    );
    assert_eq!(d.wait_state("once", &["succeeded", "failed"]), "succeeded");
    let heard = kafka_read(&topic, 1);
    let real = heard
        .iter()
        .find(|m| m["headers"]["ce_type"] == "dev.ferry.task.dispatched")
        .unwrap_or_else(|| panic!("no task.dispatched heard on {topic}: {heard:?}"))
        .clone();
    let sig = real["headers"]["ce_ferrysig"]
        .as_str()
        .unwrap_or_else(|| panic!("the dispatch is not signed: {real}"))
        .to_string();
    assert!(sig.starts_with("v1:"), "{sig}");
    // The real dispatch turned into one that writes the proof, for a new attempt of a new job:
    // with the real signature (tampered), without one, and with one by a key ferry does not hold.
    let attempt = ferry_event::new_id();
    let mut data: Value = serde_json::from_str(real["value"].as_str().unwrap()).unwrap();
    data["jobId"] = json!("forged");
    data["attemptId"] = json!(attempt);
    data["command"] = json!(["touch", proof.to_str().unwrap()]);
    let mut tampered = real.clone();
    tampered["key"] = json!("forged");
    tampered["value"] = json!(data.to_string());
    for (name, value) in [
        ("ce_id", ferry_event::new_id()),
        ("ce_ferryattempt", attempt.clone()),
        ("ce_ferryjob", "forged".into()),
        ("ce_partitionkey", "forged".into()),
    ] {
        tampered["headers"][name] = json!(value);
    }
    let mut unsigned = tampered.clone();
    unsigned["headers"].as_object_mut().unwrap().remove("ce_ferrysig");
    unsigned["headers"]["ce_id"] = json!(ferry_event::new_id());
    let mut unknown_key = unsigned.clone();
    unknown_key["headers"]["ce_id"] = json!(ferry_event::new_id());
    unknown_key["headers"]["ce_ferrysig"] = json!(format!("v1:attacker-key:{}", "A".repeat(43) + "="));
    kafka_publish(&topic, &[tampered, unsigned, unknown_key]);
    // And the real one again, as it was: a replay.
    kafka_publish(&topic, std::slice::from_ref(&real));
    let dead = kafka_read(&dead_topic, 3);
    assert_eq!(dead.len(), 3, "{dead:?}");
    for m in &dead {
        let reason = m["headers"]["ferry_dead_reason"].as_str().unwrap_or("");
        assert!(reason.contains("sign"), "{m}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(!proof.exists(), "a forged dispatch ran its command");
    assert_eq!(d.job("forged"), None);
    assert_eq!(
        read(&tally),
        "ran\n",
        "the replayed dispatch ran the command again"
    );
    assert_eq!(d.state("once").as_deref(), Some("succeeded"));
}

// --- What one namespace can keep ------------------------------------------------------------

#[test]
fn a_namespace_past_its_artifact_quota_keeps_no_more_files_and_others_are_untouched() {
    let d = Deployment::start_with(|c| {
        c.args(["--namespace-artifact-quota", "team-a=1000"]);
    });
    let flow = |ns: &str| {
        format!(
            "id: files\nnamespace: {ns}\ntasks:\n  - id: t\n    runner: local\n    \
             command: [sh, -c, 'head -c 600 /dev/zero > out.bin']\n    outputFiles: [out.bin]\n"
        )
    };
    d.submit("first", &flow("team-a"));
    assert_eq!(d.wait_state("first", &["succeeded", "failed"]), "succeeded");
    // 600 bytes more would make 1,200 of team-a's 1,000.
    d.submit("second", &flow("team-a"));
    assert_eq!(d.wait_state("second", &["succeeded", "failed"]), "failed");
    let second = d.job("second").unwrap();
    let error = second["tasks"][0]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("team-a") && error.contains("--namespace-artifact-quota"),
        "{second}"
    );
    assert!(
        second["tasks"][0]["outputFiles"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        "{second}"
    );
    let kept = files_under(&d.data().join("artifacts"));
    assert!(
        kept.iter().all(|f| !f.starts_with("second")),
        "the refused attempt's files were kept: {kept:?}"
    );
    assert!(kept.iter().any(|f| f.starts_with("first")), "{kept:?}");
    // Another namespace is not held back by team-a's quota.
    d.submit("other", &flow("team-b"));
    assert_eq!(d.wait_state("other", &["succeeded", "failed"]), "succeeded");
}
