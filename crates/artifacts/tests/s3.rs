//! The S3 store against moto's S3 (the test scripts' server, `FERRY_TEST_MOTO`): files kept,
//! read back, removed, large ones in parts.
//!
//! Without `FERRY_TEST_MOTO` every case is skipped, saying so, except in CI (`CI=true`), where a
//! missing server fails.

use std::io::Write;

use bytes::Bytes;
use ferry_artifacts::testing::{moto, moto_bucket, moto_options};
use ferry_artifacts::{Error, Store};
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
    assert_eq!(s.remove_under("job1/report/job1.report.1").await.unwrap(), 2);
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
