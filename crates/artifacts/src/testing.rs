//! What tests of the S3 store share: moto (the test scripts' server, `FERRY_TEST_MOTO`), a
//! bucket of each test's own on it, and the settings that reach it.

use std::io::{Read, Write};

/// The moto endpoint; `None`, saying so, when the test scripts started none, except in CI
/// (`CI=true`), where a missing server fails.
pub fn moto() -> Option<String> {
    match std::env::var("FERRY_TEST_MOTO").ok().filter(|v| !v.is_empty()) {
        Some(url) => Some(url),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("FERRY_TEST_MOTO is not set: run ./scripts/test.sh")
        }
        None => {
            eprintln!(
                "skipped: FERRY_TEST_MOTO is not set (source scripts/services.sh && docker_up && moto_up)"
            );
            None
        }
    }
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("ferry-{what}-{}-{nanos}", std::process::id());
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("moto answers");
    write!(
        conn,
        "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("moto takes the request");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("moto answers");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "moto did not make the bucket: {answer}"
    );
    name
}
