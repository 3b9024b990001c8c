//! The Cloud Storage store against fake-gcs-server (the test scripts' emulator,
//! `FERRY_TEST_GCS`): files kept, read back, listed and removed under the prefix, large ones in
//! a resumable upload of parts, and the errors of a missing bucket or file.
//!
//! Without `FERRY_TEST_GCS` every case is skipped, saying so, except in CI (`CI=true`), where a
//! missing server fails.

use std::io::Write;

use bytes::Bytes;
use ferry_artifacts::testing::{gcs, gcs_bucket, gcs_options};
use ferry_artifacts::{Error, Kind, Store};
use futures::TryStreamExt;

fn store(endpoint: &str, url: &str) -> Store {
    Store::open_with(url, gcs_options(endpoint)).unwrap()
}

#[tokio::test]
async fn files_are_kept_read_and_removed_under_the_prefix() {
    let Some(endpoint) = gcs() else { return };
    let bucket = gcs_bucket(&endpoint, "artifacts");
    let s = store(&endpoint, &format!("gs://{bucket}/runs"));
    assert_eq!(s.kind(), Kind::Gcs);
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), "a report\n").unwrap();

    // Names that need escaping in a URL's path: spaces, `%`, `?`, `#`, and not ASCII.
    let key = ferry_artifacts::attempt_key("job1", "report", "job1.report.1", "out/a 100%? #ü.txt");
    assert_eq!(s.put_file(&key, src.path()).await.unwrap(), 9);
    // Kept again after a crash between the upload and its record: the same file, no error.
    assert_eq!(s.put_file(&key, src.path()).await.unwrap(), 9);
    s.put("job1/report/job1.report.1/b", Bytes::from_static(b"b"))
        .await
        .unwrap();
    // A sibling whose name starts like the attempt's directory is not under it.
    s.put("job1/report/job1.report.10/c", Bytes::from_static(b"c"))
        .await
        .unwrap();

    let uri = s.uri(&key);
    assert_eq!(
        uri,
        format!("gs://{bucket}/runs/job1/report/job1.report.1/out/a 100%? #ü.txt")
    );
    assert_eq!(s.key_of(&uri).unwrap(), key);
    let (size, stream) = s.get(&key).await.unwrap();
    let bytes: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!((size, bytes.concat()), (9, b"a report\n".to_vec()));

    // Another store on the same bucket without the prefix sees the file where the URI says.
    let whole = store(&endpoint, &format!("gs://{bucket}"));
    assert_eq!(
        whole.read(&whole.key_of(&uri).unwrap()).await.unwrap(),
        Bytes::from_static(b"a report\n")
    );

    assert!(matches!(s.get("job1/report/none").await, Err(Error::NotFound(_))));
    let mut listed = s.list_under("job1/report/job1.report.1").await.unwrap();
    listed.sort();
    assert_eq!(listed, [s.uri("job1/report/job1.report.1/b"), uri.clone()]);
    assert_eq!(s.remove_under("job1/report/job1.report.1").await.unwrap(), 2);
    assert_eq!(
        s.list_under("job1").await.unwrap(),
        [s.uri("job1/report/job1.report.10/c")]
    );
    assert!(matches!(s.get(&key).await, Err(Error::NotFound(_))));
    assert_eq!(s.remove_under("job1/report/job1.report.1").await.unwrap(), 0);
}

#[tokio::test]
async fn a_large_file_goes_up_in_parts_and_comes_back_whole() {
    let Some(endpoint) = gcs() else { return };
    let bucket = gcs_bucket(&endpoint, "large");
    let s = store(&endpoint, &format!("gs://{bucket}"));
    // Two whole parts and a short last one; then exactly two parts, the last one full.
    for len in [20 * 1024 * 1024 + 7, 16 * 1024 * 1024] {
        let mut src = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        src.write_all(&data).unwrap();
        assert_eq!(
            s.put_file("j/t/a/big.bin", src.path()).await.unwrap(),
            data.len() as u64
        );
        let (size, stream) = s.get("j/t/a/big.bin").await.unwrap();
        let read: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(size, len as u64);
        assert!(read.concat() == data, "{len} bytes do not come back whole");
    }
}

#[tokio::test]
async fn a_missing_bucket_is_an_error_that_names_the_file() {
    let Some(endpoint) = gcs() else { return };
    let s = store(&endpoint, "gs://ferry-no-such-bucket/pre");
    let e = s.put("j/t/a/f", Bytes::from_static(b"x")).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("cannot store gs://ferry-no-such-bucket/pre/j/t/a/f"),
        "{text}"
    );
    assert!(!e.is_transient(), "{text}");
    let e = s.list_under("j").await.unwrap_err();
    assert!(e.to_string().contains("cannot list gs://"), "{e}");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_a_transient_error() {
    // A port nothing listens on.
    let s = store("http://127.0.0.1:9", "gs://bucket");
    let e = s.put("j/t/a/f", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}
