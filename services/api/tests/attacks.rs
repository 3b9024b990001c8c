//! Attacks on the api, each of which must fail: no or a wrong credential, a scope or a
//! namespace the token lacks, a foreign `Host`, headers and bodies trickled for ever, a job id
//! reused for another job, an open api beyond loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Api, eventually, new_job};
use ferry_api::{Access, Config, TlsFiles};
use ferry_bus::{Bus, MemoryBus};
use ferry_event::payload::{JobPlanned, JobRejected, Problem};
use ferry_event::{AttributesReader, kind};
use ferry_runtime::CancellationToken;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for "closed by the server": far above the short timeouts configured here.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

fn flow(id: &str, namespace: Option<&str>, word: &str) -> String {
    let ns = namespace.map(|n| format!("namespace: {n}\n")).unwrap_or_default();
    format!("id: {id}\n{ns}tasks:\n  - id: say\n    runner: local\n    command: [echo, {word}]\n")
}

fn submission(event_id: &str, job_id: &str, flow: &str) -> Value {
    json!({
        "specversion": "1.0", "id": event_id, "source": "/test", "type": kind::JOB_SUBMITTED,
        "data": {"jobId": job_id, "flow": flow, "inputs": {}}
    })
}

fn command(ty: &str, job_id: &str) -> Value {
    json!({"specversion": "1.0", "id": ferry_event::new_id(), "source": "/test", "type": ty, "data": {"jobId": job_id}})
}

/// POSTs a structured event with the token given (or none).
async fn post_as(api: &Api, token: Option<&str>, event: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("POST answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

/// A job.planned for `job` in `namespace`, as the planner publishes it.
fn planned(api: &Api, job: &str, namespace: Option<&str>, word: &str) -> ferry_event::Event {
    let f = ferry_flow::validate(&flow("f", namespace, word), "flow").expect("valid");
    let p: JobPlanned = ferry_flow::plan(&f, job, &Default::default()).expect("plans");
    api.events.job(kind::JOB_PLANNED, job, &p)
}

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

// ----------------------------------------------------------------------------------------------
// Credentials
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_token_or_a_wrong_one_is_401_with_a_bearer_challenge_and_nothing_is_published() {
    let mut api = Api::start().await;
    let job = new_job();
    for token in [
        None,
        Some("ferry_not-a-token-of-this-api"),
        Some(""),
        Some("Basic abc"),
    ] {
        let (status, body, headers) =
            post_as(&api, token, &submission("e1", &job, &flow("f", None, "hi"))).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        let challenge = headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge:?}");
        assert!(error_of(&body).contains("FERRY_TOKEN"), "{body}");
        for path in [
            "/jobs".to_string(),
            format!("/jobs/{job}"),
            format!("/jobs/{job}/events"),
            format!("/jobs/{job}/logs"),
        ] {
            let (status, _) = api.get_as(token, &path).await;
            assert_eq!(status, 401, "{token:?} {path}");
        }
    }
    let (_, body, headers) = post_as(&api, Some("ferry_wrong"), &command(kind::JOB_CANCEL, &job)).await;
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"),
        "{body}"
    );
    api.published_nothing().await;
    // Health checks need no credential.
    assert_eq!(api.get_as(None, "/healthz").await.0, 200);
    api.stop().await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_without_a_restart() {
    let api = Api::start().await;
    let token = api.add_token("ci", &["read"], None).await;
    assert_eq!(api.get_as(Some(&token), "/jobs").await.0, 200);
    let text = std::fs::read_to_string(&api.tokens_file).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.contains("name: ci"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&api.tokens_file, kept).unwrap();
    eventually("the revoked token is refused", || async {
        (api.get_as(Some(&token), "/jobs").await.0 == 401).then_some(())
    })
    .await;
    // A file that no longer reads leaves the tokens in force rather than opening the api.
    std::fs::write(&api.tokens_file, "tokens: [{ name: broken").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.get_as(None, "/jobs").await.0, 401);
    assert_eq!(api.get("/jobs").await.0, 200, "the admin token still works");
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Scopes and namespaces
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_without_the_scope_is_403_naming_it_and_nothing_is_published() {
    let mut api = Api::start().await;
    let reader = api.add_token("reader", &["read"], None).await;
    let submitter = api.add_token("submitter", &["submit"], None).await;
    let job = new_job();

    let (status, body, _) = post_as(
        &api,
        Some(&reader),
        &submission("e1", &job, &flow("f", None, "hi")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("`submit`"), "{body}");
    api.published_nothing().await;
    assert_eq!(
        api.get(&format!("/jobs/{job}")).await.0,
        404,
        "nothing was recorded"
    );

    let (status, body, _) = post_as(
        &api,
        Some(&submitter),
        &submission("e2", &job, &flow("f", None, "hi")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    api.published().await;
    let (status, body) = api.get_as(Some(&submitter), "/jobs").await;
    assert_eq!(status, 403);
    assert!(error_of(&body).contains("`read`"), "{body}");
    assert_eq!(api.get_as(Some(&submitter), &format!("/jobs/{job}")).await.0, 403);
    for ty in [kind::JOB_CANCEL, kind::JOB_RETRY] {
        let (status, body, _) = post_as(&api, Some(&submitter), &command(ty, &job)).await;
        assert_eq!(status, 403, "{body}");
        assert!(error_of(&body).contains("`cancel`"), "{body}");
    }
    api.published_nothing().await;
    let (status, _) = api.get_as(Some(&reader), &format!("/jobs/{job}")).await;
    assert_eq!(status, 200);
    api.stop().await;
}

#[tokio::test]
async fn a_token_limited_to_a_namespace_sees_and_touches_nothing_else() {
    let mut api = Api::start().await;
    let team = api
        .add_token("team", &["submit", "read", "cancel"], Some(&["analytics"]))
        .await;

    // Submitting into another namespace (or the default one) is refused.
    for (ns, id) in [(Some("billing"), new_job()), (None, new_job())] {
        let (status, body, _) = post_as(&api, Some(&team), &submission("e", &id, &flow("f", ns, "hi"))).await;
        assert_eq!(status, 403, "{body}");
        assert!(error_of(&body).contains("namespace"), "{body}");
    }
    api.published_nothing().await;
    let mine = new_job();
    let (status, body, _) = post_as(
        &api,
        Some(&team),
        &submission("e", &mine, &flow("f", Some("analytics"), "hi")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    api.published().await;

    // Jobs of other namespaces, and jobs whose namespace is not known yet, stay hidden.
    let theirs = new_job();
    let unplanned = new_job();
    api.publish(&[
        planned(&api, &mine, Some("analytics"), "hi"),
        planned(&api, &theirs, Some("billing"), "hi"),
        api.job_state(
            kind::JOB_STARTED,
            &unplanned,
            ferry_event::payload::JobStatus::Running,
            None,
        ),
    ])
    .await;
    for _ in 0..2 {
        // The spy sees the two job.planned on the control topic.
        assert_eq!(api.published().await.ty(), kind::JOB_PLANNED);
    }
    api.job_when(&theirs, "the other job planned", |j| j["state"] == "planned")
        .await;
    api.job_when(&unplanned, "the unplanned job known", |j| j["state"] == "running")
        .await;
    let (status, list) = api.get_as(Some(&team), "/jobs").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    let (_, all) = api.get("/jobs").await;
    assert_eq!(
        all["jobs"].as_array().unwrap().len(),
        3,
        "an unrestricted token sees all"
    );
    // They answer exactly as a job id nobody used does: a limited token cannot probe for them.
    let unused = new_job();
    let answer = |path: &str, job: &str| path.replace(job, "JOB");
    let mut unknown = Vec::new();
    for path in [
        format!("/jobs/{unused}"),
        format!("/jobs/{unused}/events"),
        format!("/jobs/{unused}/logs"),
    ] {
        let (status, body) = api.get_as(Some(&team), &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        unknown.push((answer(&path, &unused), body.to_string().replace(&unused, "JOB")));
    }
    for job in [&theirs, &unplanned] {
        let mut seen = Vec::new();
        for path in [
            format!("/jobs/{job}"),
            format!("/jobs/{job}/events"),
            format!("/jobs/{job}/logs"),
        ] {
            let (status, body) = api.get_as(Some(&team), &path).await;
            assert_eq!(status, 404, "{path}: {body}");
            seen.push((answer(&path, job), body.to_string().replace(job.as_str(), "JOB")));
        }
        assert_eq!(seen, unknown, "another namespace's job answers as an unknown one");
        let (status, _, _) = post_as(&api, Some(&team), &command(kind::JOB_CANCEL, job)).await;
        assert_eq!(status, 404);
    }
    assert_eq!(api.get_as(Some(&team), &format!("/jobs/{mine}")).await.0, 200);
    let (status, _, _) = post_as(&api, Some(&team), &command(kind::JOB_CANCEL, &mine)).await;
    assert_eq!(status, 202);
    api.published().await;

    // Events of one's own reach triggers of every namespace: not for a limited token.
    let external =
        json!({"specversion": "1.0", "id": "x1", "source": "/s3", "type": "com.acme.uploaded", "data": {}});
    let (status, body, _) = post_as(&api, Some(&team), &external).await;
    assert_eq!(status, 403, "{body}");
    api.published_nothing().await;
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Host
// ----------------------------------------------------------------------------------------------

/// Sends one raw HTTP/1.1 request and reads the answer until the server closes.
async fn raw(api: &Api, request: String) -> String {
    let mut s = TcpStream::connect(api.addr()).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, s.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .expect("read");
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test]
async fn a_request_for_another_host_is_refused_as_a_rebinding_page_would_send_it() {
    let mut api = Api::start().await;
    let port = api.addr().port();
    let event = submission("e1", &new_job(), &flow("f", None, "hi")).to_string();
    let token = api.admin_token.clone();
    let post = |host: &str| {
        format!(
            "POST /events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/cloudevents+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{event}",
            event.len()
        )
    };
    let answer = raw(&api, post(&format!("rebound.evil.example:{port}"))).await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert!(answer.contains("--allowed-host"), "{answer}");
    api.published_nothing().await;
    let answer = raw(
        &api,
        "GET /healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_string(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    let answer = raw(&api, post(&format!("localhost:{port}"))).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    api.published().await;
    api.stop().await;

    let api = Api::start_with(|c| c.allowed_hosts = vec!["ferry.example.com".into()]).await;
    let answer = raw(
        &api,
        format!(
            "GET /jobs HTTP/1.1\r\nHost: FERRY.example.com:{port}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            api.admin_token
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Slow clients
// ----------------------------------------------------------------------------------------------

/// Writes `bytes` one at a time, `every` apart, until the server closes the connection;
/// returns what it answered. Panics if the connection is still open after [`CLOSED_WITHIN`].
async fn trickle(api: &Api, head: &[u8], bytes: &[u8], every: Duration) -> String {
    let mut s = TcpStream::connect(api.addr()).await.expect("connect");
    s.write_all(head).await.expect("write");
    let (mut rd, mut wr) = s.into_split();
    let writer = {
        let bytes = bytes.to_vec();
        tokio::spawn(async move {
            for b in bytes.iter().cycle() {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CLOSED_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        read.is_ok(),
        "the connection was still open after {CLOSED_WITHIN:?}; answered so far: {}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test]
async fn headers_trickled_byte_by_byte_get_the_connection_closed() {
    let api = Api::start_with(|c| c.header_read_timeout = Duration::from_millis(500)).await;
    // A header line that never ends: a byte every 50 ms would go on for ever.
    trickle(
        &api,
        b"GET /jobs HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        b"a",
        Duration::from_millis(50),
    )
    .await;
    // Nothing at all after connecting, the same.
    trickle(&api, b"", b"", Duration::from_secs(3600)).await;
    assert_eq!(api.get("/healthz").await.0, 200, "others are still served");
    api.stop().await;
}

#[tokio::test]
async fn a_body_trickled_byte_by_byte_is_408_and_the_connection_closed() {
    let mut api = Api::start_with(|c| c.request_timeout = Duration::from_secs(1)).await;
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/cloudevents+json\r\nContent-Length: 100000\r\n\r\n{{",
        api.admin_token
    );
    let answer = trickle(&api, head.as_bytes(), b" ", Duration::from_millis(50)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1s"), "{answer}");
    api.published_nothing().await;
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Job ids
// ----------------------------------------------------------------------------------------------

async fn post(api: &Api, event: &Value) -> (u16, Value) {
    let (status, body, _) = post_as(api, Some(&api.admin_token), event).await;
    (status, body)
}

#[tokio::test]
async fn a_job_id_means_one_job_resubmitting_is_idempotent_and_another_flow_is_409() {
    let mut api = Api::start().await;
    let job = new_job();
    let first = flow("report", None, "one");
    let (status, body) = post(&api, &submission("e1", &job, &first)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(api.published().await.id(), "e1");

    // The same flow and inputs again, even reformatted and in another event: the same job.
    let reformatted = format!("# again\n{first}");
    let (status, body) = post(&api, &submission("e2", &job, &reformatted)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["jobId"], job.as_str());
    api.published_nothing().await;

    // Another flow, or other inputs, under the same id: refused, nothing changes.
    for other in [flow("report", None, "two"), flow("other", None, "one")] {
        let (status, body) = post(&api, &submission("e3", &job, &other)).await;
        assert_eq!(status, 409, "{body}");
        assert!(error_of(&body).contains("another job id"), "{body}");
    }
    api.published_nothing().await;
    let (_, j) = api.get(&format!("/jobs/{job}")).await;
    assert_eq!(j["flowId"], "report");

    // In a batch, the whole batch is refused and the first event's id is not kept.
    let fresh = new_job();
    let batch = json!([
        submission("b1", &fresh, &flow("f", None, "one")),
        submission("b2", &job, &flow("f", None, "three")),
    ]);
    let r = api
        .http
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    api.published_nothing().await;
    let (status, body) = post(&api, &submission("b3", &fresh, &flow("g", None, "four"))).await;
    assert_eq!(status, 202, "the refused batch kept no job id: {body}");
    api.stop().await;
}

#[tokio::test]
async fn a_submission_refused_by_the_bus_keeps_no_job_id() {
    let mut api = Api::start().await;
    let job = new_job();
    api.flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, _) = post(&api, &submission("e1", &job, &flow("f", None, "one"))).await;
    assert_eq!(status, 503);
    api.flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = post(&api, &submission("e2", &job, &flow("g", None, "two"))).await;
    assert_eq!(status, 202, "{body}");
    api.published().await;
    api.stop().await;
}

#[tokio::test]
async fn the_read_model_keeps_the_first_job_when_another_is_planned_under_its_id() {
    // A submission published straight on the broker bypasses the api's check; the planner
    // plans it and the read model must not take its flow or tasks for the existing job's.
    let api = Api::start().await;
    let job = new_job();
    api.publish(&[planned(&api, &job, None, "one")]).await;
    api.job_when(&job, "planned", |j| j["state"] == "planned").await;
    let mut other = planned(&api, &job, Some("elsewhere"), "two");
    {
        let mut p: JobPlanned = ferry_event::decode(&other).unwrap();
        p.flow_id = "intruder".into();
        p.tasks[0].id = "intruding-task".into();
        other = api.events.job(kind::JOB_PLANNED, &job, &p);
    }
    let rejected = api.events.job(
        kind::JOB_REJECTED,
        &job,
        &JobRejected {
            job_id: job.clone(),
            problems: vec![Problem {
                location: None,
                field: None,
                message: "an invalid resubmission".into(),
            }],
            trigger: None,
        },
    );
    let marker = new_job();
    api.publish(&[other, rejected, planned(&api, &marker, None, "x")])
        .await;
    api.job_when(&marker, "the later events applied", |j| j["state"] == "planned")
        .await;
    let (_, j) = api.get(&format!("/jobs/{job}")).await;
    assert_eq!(j["state"], "planned", "{j}");
    assert_eq!(j["flowId"], "f");
    assert_eq!(
        common::task_states(&j),
        [("say".to_string(), "pending".to_string())]
    );
    // And a submission through the api under that id must match the first plan.
    let (status, _) = post(
        &api,
        &submission("e9", &job, &flow("f", Some("elsewhere"), "two")),
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = post(&api, &submission("e10", &job, &flow("f", None, "one"))).await;
    assert_eq!(status, 202, "{body}");
    api.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Starting without credentials, and TLS
// ----------------------------------------------------------------------------------------------

async fn serve_on(addr: &str, tweak: impl FnOnce(&mut Config)) -> ferry_api::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(
        format!("sqlite://{}", dir.path().join("api.db").display()),
        format!("sqlite://{}", dir.path().join("logs.db").display()),
    );
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let served = tokio::spawn(ferry_api::serve(config, bus, listener, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    served.await.unwrap()
}

#[tokio::test]
async fn the_api_never_starts_open_by_accident() {
    let none = serve_on("127.0.0.1:0", |_| {}).await.unwrap_err();
    assert!(none.to_string().contains("--tokens-file"), "{none}");
    let open = serve_on("0.0.0.0:0", |c| c.access = Some(Access::InsecureNoAuth))
        .await
        .unwrap_err();
    assert!(open.to_string().contains("loopback"), "{open}");
    serve_on("127.0.0.1:0", |c| c.access = Some(Access::InsecureNoAuth))
        .await
        .expect("open on loopback, when asked");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tls")
        .join(name)
}

#[tokio::test]
async fn tls_is_served_and_a_renewed_certificate_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::copy(fixture("a.crt"), &cert).unwrap();
    std::fs::copy(fixture("a.key"), &key).unwrap();
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let api = Api::start_with(|c| c.tls = Some(files)).await;
    assert!(api.base.starts_with("https://"));
    let (status, _) = api.get("/jobs").await;
    assert_eq!(status, 200, "the client trusting certificate a is served");
    // Plain HTTP to the TLS port gets no answer.
    let plain = raw(
        &api,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(!plain.contains("200 OK"), "{plain}");

    // Renew: the files are replaced by certificate b; new connections get it.
    std::fs::copy(fixture("b.key"), dir.path().join("new.key")).unwrap();
    std::fs::copy(fixture("b.crt"), dir.path().join("new.crt")).unwrap();
    std::fs::rename(dir.path().join("new.key"), &key).unwrap();
    std::fs::rename(dir.path().join("new.crt"), &cert).unwrap();
    let trusts_b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(fixture("b.crt")).unwrap()).unwrap()])
        .build()
        .unwrap();
    eventually("certificate b is served", || async {
        let r = trusts_b
            .get(api.url("/jobs"))
            .bearer_auth(&api.admin_token)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    api.stop().await;
}

#[tokio::test]
async fn launchers_are_listed_only_to_tokens_of_the_whole_deployment() {
    let api = Api::start().await;
    let everywhere = api.add_token("ops", &["read"], None).await;
    let team = api.add_token("team", &["read"], Some(&["team-a"])).await;
    let submitter = api.add_token("ci", &["submit"], None).await;
    assert_eq!(api.get_as(Some(&everywhere), "/launchers").await.0, 200);
    let (status, body) = api.get_as(Some(&team), "/launchers").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("limited to some"), "{body}");
    assert_eq!(api.get_as(Some(&submitter), "/launchers").await.0, 403);
    assert_eq!(api.get_as(None, "/launchers").await.0, 401);
    api.stop().await;
}
