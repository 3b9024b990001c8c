//! The S3 store against moto's S3 (the test scripts' server, `FERRY_TEST_MOTO`): files kept,
//! read back, listed, removed, large ones in parts, and URLs signed for one object.
//!
//! Without `FERRY_TEST_MOTO` every case is skipped, saying so, except in CI (`CI=true`), where a
//! missing server fails.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use ferry_artifacts::testing::{moto, moto_bucket, moto_options};
use ferry_artifacts::{Error, Method, Store};
use futures::TryStreamExt;

fn store(endpoint: &str, url: &str) -> Store {
    Store::open_with(url, moto_options(endpoint)).unwrap()
}

#[tokio::test]
async fn files_are_kept_read_and_removed_under_the_prefix() {
    let Some(endpoint) = moto() else { return };
    let bucket = moto_bucket(&endpoint, "artifacts");
    let s = store(&endpoint, &format!("s3://{bucket}/runs"));
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), "a report\n").unwrap();

    let key = ferry_artifacts::attempt_key("job1", "report", "job1.report.1", "out/a report.txt");
    assert_eq!(s.put_file(&key, src.path()).await.unwrap(), 9);
    // Kept again after a crash between the upload and its record: the same file, no error.
    assert_eq!(s.put_file(&key, src.path()).await.unwrap(), 9);
    s.put("job1/report/job1.report.1/b", Bytes::from_static(b"b"))
        .await
        .unwrap();

    let uri = s.uri(&key);
    assert_eq!(
        uri,
        format!("s3://{bucket}/runs/job1/report/job1.report.1/out/a report.txt")
    );
    assert_eq!(s.key_of(&uri).unwrap(), key);
    let (size, stream) = s.get(&key).await.unwrap();
    let bytes: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!((size, bytes.concat()), (9, b"a report\n".to_vec()));

    // Another store on the same bucket without the prefix sees the file where the URI says.
    let whole = store(&endpoint, &format!("s3://{bucket}"));
    assert_eq!(
        whole.read(&whole.key_of(&uri).unwrap()).await.unwrap(),
        Bytes::from_static(b"a report\n")
    );

    assert!(matches!(s.get("job1/report/none").await, Err(Error::NotFound(_))));
    let mut listed = s.list_under("job1/report").await.unwrap();
    listed.sort();
    assert_eq!(listed, [s.uri("job1/report/job1.report.1/b"), uri.clone()]);
    assert_eq!(s.remove_under("job1/report/job1.report.1").await.unwrap(), 2);
    assert!(s.list_under("job1").await.unwrap().is_empty());
    assert!(matches!(s.get(&key).await, Err(Error::NotFound(_))));
    assert_eq!(s.remove_under("job1/report/job1.report.1").await.unwrap(), 0);
}

#[tokio::test]
async fn a_large_file_goes_up_in_parts_and_comes_back_whole() {
    let Some(endpoint) = moto() else { return };
    let bucket = moto_bucket(&endpoint, "large");
    let s = store(&endpoint, &format!("s3://{bucket}"));
    let mut src = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    src.write_all(&data).unwrap();
    assert_eq!(
        s.put_file("j/t/a/big.bin", src.path()).await.unwrap(),
        data.len() as u64
    );
    assert!(s.read("j/t/a/big.bin").await.unwrap() == data);
}

#[tokio::test]
async fn a_missing_bucket_is_an_error_that_names_the_file() {
    let Some(endpoint) = moto() else { return };
    let s = store(&endpoint, "s3://ferry-no-such-bucket");
    let e = s.put("j/t/a/f", Bytes::from_static(b"x")).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("cannot store s3://") && text.contains("/j/t/a/f"),
        "{text}"
    );
}

/// One request over a fresh connection, with no credentials: the status and the body.
fn plain(method: &str, url: &url::Url, body: &[u8]) -> (u16, Vec<u8>) {
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let mut conn = std::net::TcpStream::connect(&host).unwrap();
    write!(
        conn,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(body).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text[9..12].parse().unwrap();
    let start = text.find("\r\n\r\n").map_or(answer.len(), |i| i + 4);
    (status, answer[start..].to_vec())
}

#[tokio::test]
async fn a_signed_url_reads_or_writes_one_object_without_credentials() {
    let Some(endpoint) = moto() else { return };
    let bucket = moto_bucket(&endpoint, "signed");
    let s = store(&endpoint, &format!("s3://{bucket}/stage"));
    let hour = Duration::from_secs(3600);
    let put = s
        .signed_url(Method::PUT, "j/t/a/outputs.json", hour)
        .await
        .unwrap();
    assert!(put.as_str().contains("X-Amz-Signature="), "{put}");
    assert_eq!(plain("PUT", &put, b"{\"n\": 1}").0, 200);
    assert_eq!(
        s.read("j/t/a/outputs.json").await.unwrap(),
        Bytes::from_static(b"{\"n\": 1}")
    );
    let get = s
        .signed_url(Method::GET, "j/t/a/outputs.json", hour)
        .await
        .unwrap();
    assert_eq!(plain("GET", &get, b""), (200, b"{\"n\": 1}".to_vec()));
    // A key that could leave the prefix is refused before anything is signed; a directory
    // store signs nothing.
    assert!(matches!(
        s.signed_url(Method::GET, "../other", hour).await,
        Err(Error::Key { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let local = Store::open(dir.path().to_str().unwrap()).unwrap();
    assert!(matches!(
        local.signed_url(Method::GET, "j/t/a/x", hour).await,
        Err(Error::Config { .. })
    ));
}
