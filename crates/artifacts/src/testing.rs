//! What tests of the bucket stores share: moto (the test scripts' S3 server, `FERRY_TEST_MOTO`)
//! and fake-gcs-server (their Cloud Storage emulator, `FERRY_TEST_GCS`), a bucket of each
//! test's own on them, and the settings that reach them.

use std::io::{Read, Write};

/// The moto endpoint; `None`, saying so, when the test scripts started none, except in CI
/// (`CI=true`), where a missing server fails.
pub fn moto() -> Option<String> {
    server("FERRY_TEST_MOTO", "docker_up && moto_up")
}

/// The fake-gcs-server endpoint; `None`, saying so, when the test scripts started none, except
/// in CI, where a missing server fails.
pub fn gcs() -> Option<String> {
    server("FERRY_TEST_GCS", "gcs_up")
}

fn server(var: &str, up: &str) -> Option<String> {
    match std::env::var(var).ok().filter(|v| !v.is_empty()) {
        Some(url) => Some(url),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set: run ./scripts/test.sh")
        }
        None => {
            eprintln!("skipped: {var} is not set (source scripts/services.sh && {up})");
            None
        }
    }
}

/// The store settings that reach fake-gcs-server at `endpoint`, which takes no token.
pub fn gcs_options(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("base_url".to_string(), endpoint.to_string()),
        ("skip_signature".to_string(), "true".to_string()),
    ]
}

/// Makes a bucket of its own on fake-gcs-server at `endpoint`, and returns its name.
pub fn gcs_bucket(endpoint: &str, what: &str) -> String {
    let name = fresh(what);
    let body = format!("{{\"name\":\"{name}\"}}");
    let answer = request(
        endpoint,
        &format!(
            "POST /storage/v1/b HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "fake-gcs-server did not make the bucket: {answer}"
    );
    name
}

/// A bucket name of this test's own.
fn fresh(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("ferry-{what}-{}-{nanos}", std::process::id())
}

/// Sends `request` (where `{host}` stands for the server's) over a connection of its own and
/// returns the whole answer.
fn request(endpoint: &str, request: &str) -> String {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("the server answers");
    conn.write_all(request.replace("{host}", host).as_bytes())
        .expect("the server takes the request");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("the server answers");
    answer
}

/// The store settings that reach moto at `endpoint` with its test credentials.
pub fn moto_options(endpoint: &str) -> Vec<(String, String)> {
    [
        ("endpoint_url", endpoint),
        ("allow_http", "true"),
        ("region", "us-east-1"),
        ("access_key_id", "test"),
        ("secret_access_key", "test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Makes a bucket of its own on moto at `endpoint` (which checks no signature) with a plain
/// PUT, and returns its name.
pub fn moto_bucket(endpoint: &str, what: &str) -> String {
    let name = fresh(what);
    let answer = request(
        endpoint,
        &format!("PUT /{name} HTTP/1.1\r\nHost: {{host}}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "moto did not make the bucket: {answer}"
    );
    name
}
