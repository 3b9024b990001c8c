//! Output files as users fetch them: `ferry files` lists a job's, `ferry download` brings one
//! through the api, from `ferry up`'s own artifact directory or from an S3 bucket (moto) that
//! its launchers store them in with `--artifact-store`.

mod common;

use std::path::Path;

use common::{Deployment, Ran};

const FLOW: &str = r#"id: report
tasks:
  - id: make
    runner: local
    command: [sh, -c, 'mkdir -p out && printf "rows: 3\n" > "out/the report.txt" && printf x > skipped.log']
    outputFiles: ["out/*.txt"]
"#;

fn submit_and_wait(d: &Deployment) -> String {
    let flow = d.dir.path().join("report.yaml");
    std::fs::write(&flow, FLOW).unwrap();
    let ran = d.client(&["submit", flow.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let job = ran.stdout.lines().next().unwrap().trim().to_string();
    assert_eq!(d.final_state(&job), "succeeded", "{}", d.logs());
    job
}

/// `ferry download JOB make PATH -o OUT` and what `OUT` holds after it.
fn download(d: &Deployment, job: &str, path: &str, out: &Path) -> (Ran, Option<String>) {
    let ran = d.client(&["download", job, "make", path, "-o", out.to_str().unwrap()]);
    (ran, std::fs::read_to_string(out).ok())
}

/// The job's report, downloaded whole through the api.
fn downloads_the_report(d: &Deployment, job: &str) {
    let out = d.dir.path().join("got.txt");
    let (ran, got) = download(d, job, "out/the report.txt", &out);
    assert_eq!(
        (ran.code, got.as_deref()),
        (0, Some("rows: 3\n")),
        "{}",
        ran.stderr
    );
}

#[test]
fn files_are_listed_and_downloaded_from_the_artifact_directory() {
    let d = Deployment::start(&[]);
    let job = submit_and_wait(&d);

    let listed = d.client(&["files", &job]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let rows: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{}", listed.stdout);
    let cells: Vec<&str> = rows[1]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells[..3],
        ["make", "out/the report.txt", "8"],
        "{}",
        listed.stdout
    );
    assert!(
        cells[3].starts_with("file:///") && cells[3].ends_with("/out/the%20report.txt"),
        "{}",
        listed.stdout
    );

    downloads_the_report(&d, &job);
    let to_stdout = d.client(&["download", &job, "make", "out/the report.txt", "-o", "-"]);
    assert_eq!(to_stdout.stdout, "rows: 3\n");

    // A file the task did not list, and a task the job does not have: said so, nothing written.
    let none = d.dir.path().join("none.txt");
    let (ran, got) = download(&d, &job, "skipped.log", &none);
    assert_eq!((ran.code, got), (2, None));
    assert!(
        ran.stderr.contains("has no output file \"skipped.log\""),
        "{}",
        ran.stderr
    );
    let ran = d.client(&["download", &job, "nope", "x", "-o", none.to_str().unwrap()]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("has no task \"nope\""), "{}", ran.stderr);
}

#[test]
fn files_stored_in_a_bucket_are_named_by_it_and_downloaded_through_the_api() {
    let Some(endpoint) = ferry_artifacts::testing::moto() else {
        return;
    };
    let bucket = ferry_artifacts::testing::moto_bucket(&endpoint, "up");
    let url = std::env::var("FERRY_TEST_AMQP").expect("FERRY_TEST_AMQP is not set: run ./scripts/test.sh");
    let env: Vec<(String, String)> = ferry_artifacts::testing::moto_options(&endpoint)
        .into_iter()
        .map(|(k, v)| (format!("AWS_{}", k.to_uppercase()), v))
        .collect();
    let store = format!("s3://{bucket}/runs");
    let d = Deployment::up_in_env(
        &url,
        &["--no-docker", "--no-kubernetes", "--artifact-store", &store],
        &env,
    );
    let job = submit_and_wait(&d);

    let s = d.status(&job);
    let files = &common::task(&s, "make")["outputFiles"];
    let uri = files[0]["uri"].as_str().unwrap_or_default();
    assert!(
        uri.starts_with(&format!("{store}/{job}/make/")) && uri.ends_with("/out/the report.txt"),
        "{files:#}"
    );
    // Stored, nothing is left in the artifact directory.
    assert!(common::files_under(&d.data.join("artifacts")).is_empty());

    downloads_the_report(&d, &job);
}
