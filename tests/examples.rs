//! Every example flow, run end to end by the `ferry` binary on the embedded system: the outcome,
//! outputs, output files and log lines a user would see.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn hello_greets_with_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&example("hello.yaml"), dir.path(), &["--input", "name=ferry"]);
    assert_eq!(ran.code, 0);
    assert_eq!(ran.lines_of("greet"), ["hello, ferry"]);
    let row = ran.row("greet");
    assert_eq!(&row[1..3], ["succeeded", "1"]);
    assert!(ran.stderr.contains("succeeded in"), "{}", ran.stderr);
}

#[test]
fn diamond_passes_outputs_along() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(
        &example("diamond.yaml"),
        dir.path(),
        &["--input", "day=2026-11-22"],
    );
    assert_eq!(ran.code, 0);
    assert_eq!(ran.lines_of("extract"), ["extracting 2026-11-22"]);
    assert_eq!(ran.lines_of("count"), ["counting 42 rows of events"]);
    assert_eq!(ran.lines_of("sample"), ["sampling events"]);
    assert_eq!(
        ran.lines_of("report"),
        ["report for 2026-11-22: 84 (doubled), events-sample"]
    );
    assert!(
        ran.row("extract")
            .iter()
            .any(|c| c.contains("rows=42") && c.contains("table=events"))
    );
    assert!(
        ran.row("report")
            .iter()
            .any(|c| c == "summary=2026-11-22 84 events-sample")
    );
    // report started only after both of its dependencies succeeded.
    let progress: Vec<&str> = ran.stderr.lines().collect();
    let at = |needle: &str| {
        progress
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle}"))
    };
    assert!(at("report started") > at("count succeeded"));
    assert!(at("report started") > at("sample succeeded"));
}

#[test]
fn fanout_runs_two_hundred_workers_between_split_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&example("fanout.yaml"), dir.path(), &[]);
    assert_eq!(ran.code, 0);
    assert_eq!(ran.lines_of("split"), ["splitting into 200 parts"]);
    for i in [0, 57, 199] {
        assert_eq!(ran.lines_of(&format!("w{i:03}")), [format!("part {i}")]);
    }
    assert_eq!(ran.lines_of("merge"), ["merged 0 and 199"]);
    let succeeded = ran
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("succeeded"))
        .count();
    assert_eq!(succeeded, 202);
    assert!(ran.stderr.contains("[202/202 done, 0 running]"), "{}", ran.stderr);
}

#[test]
fn subtasks_fan_out_at_run_time_and_report_waits_for_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&example("subtasks.yaml"), dir.path(), &["--input", "parts=5"]);
    assert_eq!(ran.code, 0);
    assert_eq!(ran.lines_of("split"), ["splitting into 5 parts"]);
    for i in 1..=5 {
        assert_eq!(
            ran.lines_of(&format!("split.part-{i}")),
            [format!("part {i}: {}", i * i)]
        );
        assert_eq!(&ran.row(&format!("split.part-{i}"))[1..3], ["succeeded", "1"]);
    }
    // 1 + 4 + 9 + 16 + 25, from the parts' outputs.
    assert_eq!(ran.lines_of("split.sum"), ["sum of squares: 55"]);
    assert!(ran.row("split.sum").iter().any(|c| c == "sum=55"));
    assert_eq!(ran.lines_of("report"), ["every part and their sum are done"]);
    assert!(
        ran.stderr.contains("split succeeded") && ran.stderr.contains("6 subtasks joined the job"),
        "{}",
        ran.stderr
    );
    // report started only after the last subtask succeeded.
    let progress: Vec<&str> = ran.stderr.lines().collect();
    let at = |needle: &str| {
        progress
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle}"))
    };
    assert!(at("report started") > at("split.sum succeeded"));
    assert!(ran.stderr.contains("[8/8 done, 0 running]"), "{}", ran.stderr);
}

#[test]
fn retry_fails_twice_then_succeeds_on_the_third_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let counter = tempfile::tempdir().unwrap();
    let arg = format!("counter_dir={}", counter.path().display());
    let ran = run(&example("retry.yaml"), dir.path(), &["--input", &arg]);
    assert_eq!(ran.code, 0);
    let lines = ran.lines_of("flaky");
    let attempts: Vec<&String> = lines.iter().filter(|l| l.starts_with("attempt ")).collect();
    assert_eq!(attempts.len(), 3, "{lines:?}");
    for (i, l) in attempts.iter().enumerate() {
        assert!(l.starts_with(&format!("attempt {} (", i + 1)), "{l}");
    }
    // Three distinct attempt ids.
    let ids: std::collections::HashSet<&str> =
        attempts.iter().map(|l| l.split('(').nth(1).unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(lines.iter().filter(|l| *l == "not yet").count(), 2);
    assert_eq!(&ran.row("flaky")[1..3], ["succeeded", "3"]);
    assert!(ran.row("flaky").iter().any(|c| c == "attempts=3"));
    assert_eq!(ran.stderr.matches("retrying in").count(), 2, "{}", ran.stderr);
}

#[test]
fn failfast_cancels_the_running_sibling_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let ran = run(&example("failfast.yaml"), dir.path(), &[]);
    assert_eq!(ran.code, 1);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the sleeping sibling was waited for"
    );
    assert_eq!(ran.lines_of("boom"), ["giving up"]);
    assert_eq!(&ran.row("boom")[1..2], ["failed"]);
    assert_eq!(&ran.row("slow")[1..2], ["cancelled"]);
    assert_eq!(&ran.row("after")[1..3], ["cancelled", "0"]);
    assert!(ran.lines_of("after").is_empty());
    let child: i32 = ran.lines_of("slow")[0]
        .strip_prefix("child ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(!alive(child), "the sibling's child process {child} survived");
    assert!(ran.stderr.contains("task boom failed"), "{}", ran.stderr);
}

#[test]
fn files_go_in_and_come_back_out_as_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&example("files.yaml"), dir.path(), &["--input", "threshold=2"]);
    assert_eq!(ran.code, 0);
    assert_eq!(
        ran.lines_of("analyse"),
        ["wrote out/report.txt and out/summary.json"]
    );
    let row = ran.row("analyse");
    assert!(row.iter().any(|c| c == "above=2"), "{row:?}");
    let uris: Vec<&str> = ran
        .stdout
        .split_whitespace()
        .filter(|w| w.starts_with("file://"))
        .collect();
    assert_eq!(uris.len(), 2, "{uris:?}");
    let report = uris.iter().find(|u| u.ends_with("out/report.txt")).unwrap();
    let text = std::fs::read_to_string(report.strip_prefix("file://").unwrap()).unwrap();
    assert_eq!(text, "2 of 3 above 2\n");
    let summary = uris.iter().find(|u| u.ends_with("out/summary.json")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary.strip_prefix("file://").unwrap()).unwrap())
            .unwrap();
    assert_eq!(json, serde_json::json!({"above": 2, "total": 3}));
    // Working directories are emptied once their attempt is collected.
    let leftovers: Vec<_> = files_under(&dir.path().join("slots"))
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "work"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn secrets_reach_the_task_but_never_a_log_or_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-value-9f1c";
    let mut cmd = ferry();
    cmd.arg("run")
        .arg(example("secret.yaml"))
        .arg("--data-dir")
        .arg(dir.path());
    cmd.env("FERRY_SECRET_API_TOKEN", secret);
    let ran = output(cmd);
    assert_eq!(ran.code, 0);
    assert_eq!(
        ran.lines_of("call-api"),
        [
            "calling the api with token ****".to_string(),
            format!("length {}", secret.len())
        ]
    );
    assert!(!ran.stdout.contains(secret) && !ran.stderr.contains(secret));
    for f in files_under(dir.path()) {
        let bytes = std::fs::read(dir.path().join(&f)).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is stored in {}",
            f.display()
        );
    }
}

#[test]
fn a_missing_secret_fails_the_task_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = ferry();
    cmd.arg("run")
        .arg(example("secret.yaml"))
        .arg("--data-dir")
        .arg(dir.path());
    cmd.env_remove("FERRY_SECRET_API_TOKEN");
    let ran = output(cmd);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("FERRY_SECRET_API_TOKEN"), "{}", ran.stderr);
}

#[test]
fn ctrl_c_cancels_the_job_and_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = ferry()
        .arg("run")
        .arg(flow("sleepy.yaml"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until both tasks report their child processes.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut pids = Vec::new();
    let mut lines = stdout.lines();
    while pids.len() < 2 {
        let line = lines.next().expect("ferry printed the children").unwrap();
        if let Some(pid) = line.split("child ").nth(1) {
            pids.push(pid.trim().parse::<i32>().unwrap());
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("{err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cancelling job"), "{err}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("one") && l.contains("cancelled")),
        "{rest:?}"
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived ferry");
    }
}

/// The test image (there is no registry here).
fn test_image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").expect(
        "FERRY_TEST_DOCKER_IMAGE is not set: run ./scripts/test.sh, which starts a private dockerd and builds it",
    )
}

/// Example `name` with its image replaced by the test image, written into `dir`.
fn container_example(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let flow = std::fs::read_to_string(example(name))
        .unwrap()
        .replace("busybox:1.36", &test_image());
    let path = dir.join(name);
    std::fs::write(&path, flow).unwrap();
    path
}

/// What the docker and kubernetes examples print and leave, `from` what they say they ran in.
fn assert_container_example_ran(ran: &Ran, from: &str) {
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.lines_of("count"), ["counted 5 words in /ferry"]);
    assert_eq!(ran.lines_of("report"), ["the first task counted 5 words"]);
    let row = ran.row("count");
    assert!(row.iter().any(|c| c == "words=5"), "{row:?}");
    let stored = row
        .iter()
        .find_map(|c| c.strip_prefix("file://"))
        .unwrap_or_else(|| panic!("no output file: {row:?}"));
    assert_eq!(
        std::fs::read_to_string(stored).unwrap(),
        format!("HELLO FERRY FROM A {from}\n")
    );
}

#[test]
fn docker_runs_in_containers_and_passes_outputs_along() {
    let dir = tempfile::tempdir().unwrap();
    let flow = container_example(dir.path(), "docker.yaml");
    let data = dir.path().join("data");
    // The test image is imported, never pulled.
    let flow_text = std::fs::read_to_string(&flow)
        .unwrap()
        .replace("network: none", "network: none, pullPolicy: never");
    std::fs::write(&flow, flow_text).unwrap();
    let ran = run(&flow, &data, &["--input", "name=ferry"]);
    assert_container_example_ran(&ran, "CONTAINER");
}

#[test]
fn kubernetes_example_runs_on_local_docker_with_runner_docker() {
    let dir = tempfile::tempdir().unwrap();
    let flow = container_example(dir.path(), "kubernetes.yaml");
    let ran = run(
        &flow,
        &dir.path().join("data"),
        &["--input", "name=ferry", "--runner", "docker"],
    );
    assert_container_example_ran(&ran, "POD");
}

/// The aws-batch example with `--runner docker`: its Python script, shipped as an input file,
/// runs in a container of the local engine with the task's resources, its outputs reach the
/// next task's command and its output file is stored.
#[test]
fn aws_batch_example_runs_on_local_docker_with_runner_docker() {
    batch_example_runs_on_local_docker("aws-batch.yaml", "AWS Batch", "awsBatch");
}

/// The google-batch example, the same way.
#[test]
fn google_batch_example_runs_on_local_docker_with_runner_docker() {
    batch_example_runs_on_local_docker("google-batch.yaml", "Google Batch", "googleBatch");
}

/// The google-batch example through `ferry up`, against the Google Batch test server (its jobs
/// run as containers of the test engine, its files staged on fake-gcs-server): the script, an
/// input file, runs in a Batch job, says so, and its outputs and output file come back.
#[test]
fn google_batch_example_runs_through_ferry_up_on_the_batch_test_server() {
    let (Ok(gcs), Ok(image)) = (
        std::env::var("FERRY_TEST_GCS"),
        std::env::var("FERRY_TEST_PYTHON_IMAGE"),
    ) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "FERRY_TEST_GCS and FERRY_TEST_PYTHON_IMAGE are not set: run ./scripts/test.sh"
        );
        eprintln!("SKIPPED: FERRY_TEST_GCS and FERRY_TEST_PYTHON_IMAGE are not set");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(ferry_google_batch_test_server::TestServer::start(
            ferry_google_batch_test_server::Options {
                gcs_endpoint: Some(gcs.clone()),
                stop_grace: Duration::from_secs(1),
                ..Default::default()
            },
        ))
        .expect("start the Google Batch test server");
    let bucket = format!("ferry-example-{}", &ferry_event::new_id().to_lowercase()[..12]);
    let made = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{gcs}/storage/v1/b"))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await
    });
    assert!(
        made.is_ok_and(|r| r.status().is_success()),
        "create bucket {bucket}"
    );
    let url = server.url();
    let staging = format!("gs://{bucket}/stage");
    let d = Deployment::start(&[
        "--google-project",
        "ferry-test",
        "--google-region",
        "test-region1",
        "--google-batch-endpoint",
        &url,
        "--google-logging-endpoint",
        &url,
        "--google-storage-endpoint",
        &gcs,
        "--google-anonymous",
        "--google-batch-staging",
        &staging,
        "--google-batch-poll-interval",
        "300ms",
    ]);
    let source = std::fs::read_to_string(example("google-batch.yaml")).unwrap();
    let flow = d.dir.path().join("google-batch.yaml");
    std::fs::write(&flow, source.replace("python:3.12-slim", &image)).unwrap();
    let ran = d.client(&["submit", flow.to_str().unwrap(), "--input", "name=ferry"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let job = ran.stdout.lines().next().unwrap().trim().to_string();
    assert_eq!(d.final_state(&job), "succeeded", "{}", d.logs());

    let s = d.status(&job);
    let report = task(&s, "report");
    assert_eq!(report["outputs"]["greeting"], "hello ferry", "{s:#}");
    assert_eq!(report["outputs"]["googleBatch"], true, "{s:#}");
    let file = &report["outputFiles"][0];
    assert_eq!(file["path"], "report/environment.json", "{s:#}");
    let out = d.dir.path().join("environment.json");
    let got = d.client(&[
        "download",
        &job,
        "report",
        "report/environment.json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(got.code, 0, "{}", got.stderr);
    let found: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(found["workingDir"], "/ferry", "{found:#}");
    assert!(found["batchEnv"]["BATCH_JOB_UID"].is_string(), "{found:#}");
    let logs = d.client(&["logs", &job]);
    assert!(
        logs.stdout.contains("hello ferry from Python 3.") && logs.stdout.contains(", Google Batch job "),
        "{}\n{}",
        logs.stdout,
        logs.stderr
    );
    assert!(
        logs.stdout.contains("(Google Batch: true)"),
        "{}\n{}",
        logs.stdout,
        logs.stderr
    );
    drop(d);
    rt.block_on(server.shutdown());
}

/// A batch example (`file`) whose script says where it ran (`platform`, and false in the
/// output `key`), run with `--runner docker`.
fn batch_example_runs_on_local_docker(file: &str, platform_name: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    // Python from this machine, imported into the test engine: the default pull policy
    // (`missing`) never asks a registry for it.
    let image = std::env::var("FERRY_TEST_PYTHON_IMAGE").expect(
        "FERRY_TEST_PYTHON_IMAGE is not set: run ./scripts/test.sh, which starts a private dockerd and builds it",
    );
    let source = std::fs::read_to_string(example(file)).unwrap();
    let text = source.replace("python:3.12-slim", &image);
    assert_ne!(
        source, text,
        "the example's image is not python:3.12-slim any more"
    );
    let flow = dir.path().join(file);
    std::fs::write(&flow, text).unwrap();
    let ran = run(
        &flow,
        &dir.path().join("data"),
        &["--input", "name=ferry", "--runner", "docker"],
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);

    let said = ran.lines_of("report");
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].starts_with("hello ferry from Python 3.")
            && said[0].ends_with(&format!(", outside {platform_name}")),
        "{said:?}"
    );
    assert_eq!(said[1], "wrote report/environment.json");
    let row = ran.row("report");
    assert!(
        row.iter()
            .any(|c| c.starts_with("greeting=hello ferry python=3.")),
        "{row:?}"
    );
    let stored = row
        .iter()
        .find_map(|c| c.strip_prefix("file://"))
        .unwrap_or_else(|| panic!("no output file: {row:?}"));
    assert!(stored.ends_with("/report/environment.json"), "{stored}");
    let found: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stored).unwrap()).unwrap();
    for key in [
        "python",
        "platform",
        "cpus",
        "hostname",
        "kernel",
        "executable",
        "cpuQuota",
    ] {
        assert!(!found[key].is_null(), "no {key}: {found:#}");
    }
    assert_eq!(found["greeting"], "hello ferry", "{found:#}");
    assert_eq!(found[key], false, "{found:#}");
    assert_eq!(found["implementation"], "CPython", "{found:#}");
    assert_eq!(found["workingDir"], "/ferry", "{found:#}");
    assert_eq!(found["ferryEnv"]["FERRY_TASK_ID"], "report", "{found:#}");
    // The task's `memory: 512Mi` came along to the container.
    assert_eq!(found["memoryLimit"], "536870912", "{found:#}");

    let python = found["python"].as_str().unwrap();
    let platform = found["platform"].as_str().unwrap();
    assert!(
        row.iter()
            .any(|c| c.contains(&format!("python={python} platform={platform}"))),
        "{row:?}"
    );
    assert_eq!(
        ran.lines_of("summary"),
        [format!(
            "report said \"hello ferry\" from Python {python} on {platform} ({platform_name}: false)"
        )]
    );
}

#[test]
fn without_a_docker_engine_a_docker_task_fails_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let flow = container_example(dir.path(), "docker.yaml");
    let mut c = ferry();
    c.env(
        "DOCKER_HOST",
        format!("unix://{}/no-engine.sock", dir.path().display()),
    )
    .arg("run")
    .arg(&flow)
    .arg("--data-dir")
    .arg(dir.path().join("data"));
    let started = Instant::now();
    let ran = output(c);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("count failed: no Docker engine at unix://"),
        "{}",
        ran.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30), "it must not hang");
}

/// `ferry up` serves kubernetes tasks when a cluster is configured and answers: the kubernetes
/// example runs as Jobs on the test API server (whose pods run on the test Docker engine),
/// submitted with `ferry submit --wait`, with its output and output file back, and nothing left
/// in the cluster.
#[test]
fn kubernetes_example_runs_as_jobs_under_ferry_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(ferry_kube_test_server::TestServer::start_from_env(
            Default::default(),
        ))
        .expect("the test API server starts on DOCKER_HOST's engine (./scripts/test.sh starts one)");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("default")).unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut c = ferry();
    c.args([
        "up",
        "--bus",
        "memory://",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(&data)
    .env("KUBECONFIG", &kubeconfig)
    // The output file comes back through a stage container: of the test image here, where
    // nothing can be pulled.
    .env("FERRY_KUBE_STAGE_IMAGE", test_image())
    .env("FERRY_LOG", "info")
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let up = Up(c.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "ferry up did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        started.contains("kubernetes (Kubernetes "),
        "ferry up does not say it serves kubernetes: {started}"
    );

    let flow = container_example(dir.path(), "kubernetes.yaml");
    let mut c = ferry();
    c.arg("submit")
        .arg(&flow)
        .args(["--input", "name=ferry", "--wait", "--api", &api, "--data-dir"])
        .arg(&data);
    let ran = output(c);
    assert_eq!(ran.code, 0, "{}", std::fs::read_to_string(&log_path).unwrap());
    let job = ran.stdout.lines().next().unwrap().trim().to_string();

    let mut c = ferry();
    c.args(["logs", &job, "--api", &api, "--data-dir"]).arg(&data);
    let logs = output(c);
    assert!(
        logs.stdout.contains("count | counted 5 words in /ferry"),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout.contains("report | the first task counted 5 words"),
        "{}",
        logs.stdout
    );

    let mut c = ferry();
    c.args(["status", &job, "--json", "--api", &api, "--data-dir"])
        .arg(&data);
    let status = output(c);
    let detail: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let count = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["taskId"] == "count")
        .unwrap_or_else(|| panic!("no task count: {detail:#}"));
    assert_eq!(count["backend"], "kubernetes", "{count:#}");
    assert_eq!(count["outputs"]["words"], 5, "{count:#}");
    let uri = count["outputFiles"][0]["uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{count:#}"));
    let stored = uri.strip_prefix("file://").unwrap();
    assert_eq!(
        std::fs::read_to_string(stored).unwrap(),
        "HELLO FERRY FROM A POD\n"
    );

    // The subtasks example with every task a Job: `split` submits its parts and their sum
    // from its pod, and `report` waits for all of them.
    let image = test_image();
    let pod = format!("{{ type: kubernetes, image: \"{image}\" }}");
    let pod_json = format!(r#"{{"type": "kubernetes", "image": "{image}"}}"#);
    let flow = std::fs::read_to_string(example("subtasks.yaml"))
        .unwrap()
        .replace("runner: local", &format!("runner: {pod}"))
        .replace(r#""runner": "local""#, &format!(r#""runner": {pod_json}"#));
    assert!(!flow.contains("local"), "{flow}");
    let path = dir.path().join("subtasks.yaml");
    std::fs::write(&path, flow).unwrap();
    let mut c = ferry();
    c.arg("submit")
        .arg(&path)
        .args(["--input", "parts=2", "--wait", "--api", &api, "--data-dir"])
        .arg(&data);
    let ran = output(c);
    assert_eq!(ran.code, 0, "{}", std::fs::read_to_string(&log_path).unwrap());
    let job = ran.stdout.lines().next().unwrap().trim().to_string();
    let mut c = ferry();
    c.args(["status", &job, "--json", "--api", &api, "--data-dir"])
        .arg(&data);
    let detail: serde_json::Value = serde_json::from_str(&output(c).stdout).unwrap();
    let tasks = detail["tasks"].as_array().unwrap();
    let ids: Vec<&str> = tasks.iter().filter_map(|t| t["taskId"].as_str()).collect();
    assert_eq!(
        ids.len(),
        5,
        "split, its two parts and their sum, and report: {detail:#}"
    );
    for t in tasks {
        assert_eq!(t["backend"], "kubernetes", "{t:#}");
        assert_eq!(t["state"], "succeeded", "{t:#}");
        // `namespace/job`: each ran as a Job in the cluster.
        let compute = t["compute"].as_str().unwrap_or_default();
        assert!(compute.starts_with("default/ferry-"), "{t:#}");
    }
    let sum = tasks.iter().find(|t| t["taskId"] == "split.sum").unwrap();
    // 1 + 4, from the parts' outputs.
    assert_eq!(sum["outputs"]["sum"], 5, "{sum:#}");
    assert_eq!(sum["parent"], "split", "{sum:#}");

    // Each Job, its pod and its Secret are deleted once the task is reported.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.objects().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left in the cluster: {:?}",
            server.objects()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(up);
    rt.block_on(server.stop());
}

/// `ferry up --ray-address` serves ray tasks: the ray example runs as Ray jobs on the Ray head
/// the test scripts start (`FERRY_TEST_RAY`), submitted with `ferry submit --wait`, with its
/// output and output file back, and no job of it left running on the cluster.
#[test]
fn ray_example_runs_as_ray_jobs_under_ferry_up() {
    let Some(address) = std::env::var("FERRY_TEST_RAY").ok().filter(|a| !a.is_empty()) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "FERRY_TEST_RAY is not set: ./scripts/test.sh starts a Ray head (ray_up)"
        );
        eprintln!(
            "SKIPPED ray_example_runs_as_ray_jobs_under_ferry_up: FERRY_TEST_RAY is not set (source scripts/services.sh && ray_up)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut c = ferry();
    c.args([
        "up",
        "--bus",
        "memory://",
        "--no-docker",
        "--no-kubernetes",
        "--ray-address",
        &address,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(&data)
    .env("FERRY_LOG", "info")
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let up = Up(c.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "ferry up did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        started.contains("ray (Ray Jobs API at "),
        "ferry up does not say it serves ray: {started}"
    );

    let mut c = ferry();
    c.arg("submit")
        .arg(example("ray.yaml"))
        .args(["--input", "name=ferry", "--wait", "--api", &api, "--data-dir"])
        .arg(&data);
    let ran = output(c);
    assert_eq!(ran.code, 0, "{}", std::fs::read_to_string(&log_path).unwrap());
    let job = ran.stdout.lines().next().unwrap().trim().to_string();

    let mut c = ferry();
    c.args(["logs", &job, "--api", &api, "--data-dir"]).arg(&data);
    let logs = output(c);
    assert!(
        logs.stdout.contains("count | counted 4 words in work"),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout.contains("report | the first task counted 4 words"),
        "{}",
        logs.stdout
    );

    let mut c = ferry();
    c.args(["status", &job, "--json", "--api", &api, "--data-dir"])
        .arg(&data);
    let status = output(c);
    let detail: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let count = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["taskId"] == "count")
        .unwrap_or_else(|| panic!("no task count: {detail:#}"));
    assert_eq!(count["backend"], "ray", "{count:#}");
    assert_eq!(count["outputs"]["words"], 4, "{count:#}");
    let uri = count["outputFiles"][0]["uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{count:#}"));
    let stored = uri.strip_prefix("file://").unwrap();
    assert_eq!(std::fs::read_to_string(stored).unwrap(), "HELLO FERRY FROM RAY\n");
    // The attempts' directories are removed once they are reported.
    let work = data.join("ray/ray");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "attempt directories left: {left:?}");
    // No job of it is left running or waiting on the cluster.
    let jobs = ray_jobs(&address);
    let running: Vec<&serde_json::Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["ferry.job"] == job.as_str())
        .filter(|j| matches!(j["status"].as_str(), Some("PENDING" | "RUNNING")))
        .collect();
    assert!(running.is_empty(), "Ray jobs left: {running:#?}");
    drop(up);
}

/// `GET /api/jobs/` of the Ray head at `address` (`http://127.0.0.1:PORT`), over plain HTTP/1.0.
fn ray_jobs(address: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /api/jobs/ HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[test]
fn triggered_runs_by_hand_with_the_inputs_a_trigger_would_give() {
    // Its trigger is exercised end to end in tests/triggers.rs; by hand, it is a plain flow.
    let dir = tempfile::tempdir().unwrap();
    let ran = run(
        &example("triggered.yaml"),
        dir.path(),
        &["--input", "file=day.csv", "--input", "rows=42"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.lines_of("report"), ["day.csv in landing: 42 rows"]);
}

/// The agent example on RabbitMQ: its tasks wait for agents (queued, and `ferry status` says
/// for what); agent demo-a (prepare@1.0, train@2.1) runs what it registered, never
/// `train-latest`, which asks for train@2.3; demo-b (train@2.4), started later, picks that up
/// at once. Each task runs once.
#[test]
fn agent_example_waits_for_agents_and_routes_by_task_and_version() {
    agent_example_routes(&Deployment::start(&[]));
}

/// The same on Kafka: each task request is a topic of its own, and what was dispatched before
/// any agent consumed it waits there for the first that does.
#[test]
fn agent_example_routes_the_same_on_kafka() {
    let url = std::env::var("FERRY_TEST_KAFKA")
        .expect("FERRY_TEST_KAFKA is not set: run ./scripts/test.sh, which sets it");
    agent_example_routes(&Deployment::up_with(&url, &["--no-docker", "--no-kubernetes"]));
}

fn agent_example_routes(d: &Deployment) {
    let _queues = Queues(
        d.bus.clone(),
        [
            "prepare.1.0",
            "train.2.0",
            "train.2.1",
            "train.2.2",
            "train.2.3",
            "train.2.4",
        ]
        .iter()
        .map(|t| {
            let backend = format!("agent.demo.{t}");
            ferry_bus::Subscribe::new(
                ferry_event::agent::group(&backend),
                [ferry_event::Topic::Dispatch(backend)],
            )
        })
        .collect(),
    );
    let ran = d.client(&["submit", example("agent.yaml").to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let job = ran.stdout.lines().next().unwrap().trim().to_string();
    let s = d.status_when(&job, "prepare waits for an agent", |s| {
        task(s, "prepare")["waiting"].is_string()
    });
    let why = task(&s, "prepare")["waiting"].as_str().unwrap();
    assert!(
        why.contains("waiting for an agent in cluster demo serving prepare@1.0"),
        "{why}"
    );
    let listed = d.client(&["status", &job]);
    assert!(
        listed
            .stdout
            .contains("waiting for an agent in cluster demo serving prepare@1.0"),
        "{}",
        listed.stdout
    );

    let _a = d.agent("demo-a", "demo", &example("agents/demo-a.yaml"), &[]);
    let s = d.status_when(&job, "prepare and train ran on demo-a", |s| {
        task(s, "train")["state"] == "succeeded"
    });
    assert_eq!(task(&s, "prepare")["outputs"]["agent"], "demo-a", "{s:#}");
    assert_eq!(task(&s, "train")["outputs"]["agent"], "demo-a", "{s:#}");
    assert_eq!(task(&s, "train")["backend"], "agent.demo.train.2.1", "{s:#}");
    // demo-a registers train 2.1, which cannot run a request for 2.3: it waits on.
    let latest = task(&s, "train-latest");
    assert_eq!(latest["state"], "pending", "{s:#}");
    assert!(
        latest["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("serving train@2.3")),
        "{s:#}"
    );
    let agents = d.client(&["agents"]);
    assert!(
        agents.stdout.contains("demo") && agents.stdout.contains("prepare@1.0,train@2.1"),
        "{}",
        agents.stdout
    );

    let _b = d.agent("demo-b", "demo", &example("agents/demo-b.yaml"), &[]);
    let s = d.status_when(&job, "the job ends", |s| {
        matches!(s["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
    });
    assert_eq!(s["state"], "succeeded", "{s:#}\n{}", d.logs());
    let latest = task(&s, "train-latest");
    assert_eq!(
        (&latest["outputs"]["agent"], &latest["outputs"]["version"]),
        (&serde_json::json!("demo-b"), &serde_json::json!("2.4")),
        "{s:#}"
    );
    for t in ["prepare", "train", "train-latest"] {
        assert_eq!(task(&s, t)["attempts"], 1, "{t}: {s:#}");
    }
    let logs = d.client(&["logs", &job]);
    assert!(
        logs.stdout
            .contains("train-latest | train 2.4 on demo-b with 120 rows in /tmp"),
        "{}",
        logs.stdout
    );
    let agents = d.client(&["agents", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&agents.stdout).unwrap();
    assert_eq!(list["agents"].as_array().map(Vec::len), Some(2), "{list:#}");
}

#[test]
fn scheduled_runs_by_hand_with_the_inputs_a_tick_would_give() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(
        &example("scheduled.yaml"),
        dir.path(),
        &[
            "--input",
            "at=2026-12-07T02:00:00+01:00",
            "--input",
            "day=2026-12-07",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.lines_of("report"),
        ["report for 2026-12-07 (tick 2026-12-07T02:00:00+01:00)"]
    );
}

/// `ferry up`, then the scheduled example deployed with its schedule made every second: each
/// tick runs one job whose task sees `trigger.time`, the ticks follow one another with none
/// lost, `ferry flows` shows the next tick, and after `ferry undeploy` no tick starts a job.
#[test]
fn scheduled_starts_one_job_per_tick_under_ferry_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut c = ferry();
    c.args([
        "up",
        "--bus",
        "memory://",
        "--no-docker",
        "--no-kubernetes",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(&data)
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let up = Up(c.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "ferry up did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = |args: &[&str]| {
        let mut c = ferry();
        c.args(args).args(["--api", &api, "--data-dir"]).arg(&data);
        output(c)
    };
    let source = std::fs::read_to_string(example("scheduled.yaml")).unwrap();
    let every_second = source.replace(r#"schedule: "0 2 * * *""#, r#"schedule: "* * * * * *""#);
    assert_ne!(
        source, every_second,
        "the example's schedule is not `0 2 * * *` any more"
    );
    let flow = dir.path().join("scheduled.yaml");
    std::fs::write(&flow, every_second).unwrap();
    let deployed = client(&["deploy", flow.to_str().unwrap()]);
    assert_eq!(deployed.code, 0, "{}", deployed.stderr);
    let flows = client(&["flows"]);
    assert!(
        flows
            .stdout
            .contains(r#"schedule "* * * * * *" Europe/Paris (next "#),
        "{}",
        flows.stdout
    );

    // The jobs of the flow: (tick, job id), read from what each job's task printed.
    let jobs_of_flow = || -> Vec<String> {
        let ran = client(&["status", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        list["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["flowId"] == "nightly-report")
            .map(|j| j["jobId"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs_of_flow().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no three scheduled jobs: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let undeployed = client(&["undeploy", "examples/nightly-report"]);
    assert_eq!(undeployed.code, 0, "{}", undeployed.stderr);
    // Anything the planner published before it took the undeploy is planned by the time a
    // submission it takes afterwards has run.
    let hello = client(&["submit", example("hello.yaml").to_str().unwrap(), "--wait"]);
    assert_eq!(hello.code, 0, "{}", hello.stderr);
    let jobs = jobs_of_flow();
    let mut ticks = Vec::new();
    for job in &jobs {
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let s = client(&["status", job]);
            let state = s.stdout.lines().next().unwrap_or("").to_string();
            if matches!(state.as_str(), "succeeded" | "failed" | "cancelled" | "rejected") {
                break state;
            }
            assert!(Instant::now() < deadline, "job {job} did not finish ({state})");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(state, "succeeded", "job {job}");
        let logs = client(&["logs", job]);
        let line = logs
            .stdout
            .lines()
            .find_map(|l| l.split_once("report | report for "))
            .unwrap_or_else(|| panic!("job {job} printed no report: {}", logs.stdout))
            .1;
        // `2026-12-06 (tick 2026-12-06T22:41:07+01:00)`
        let (day, at) = line.split_once(" (tick ").unwrap();
        let at = at.trim_end_matches(')');
        let tick = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap_or_else(|e| panic!("`{at}` is not RFC 3339: {e}"));
        assert!(
            at.ends_with("+01:00") || at.ends_with("+02:00"),
            "{at} is not Paris time"
        );
        assert_eq!(tick.format("%Y-%m-%d").to_string(), day);
        let tick = tick.with_timezone(&chrono::Utc);
        assert_eq!(
            *job,
            ferry_planner::schedules::job_id(Some("examples"), "nightly-report", 0, tick),
            "the job of tick {at}"
        );
        ticks.push(tick.timestamp());
    }
    // One job per tick, every second from the first to the last: none doubled, none lost.
    ticks.sort_unstable();
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    assert_eq!(ticks, (first..=last).collect::<Vec<_>>());

    // Undeployed: the seconds go by and no tick starts a job.
    std::thread::sleep(Duration::from_secs(2));
    let hello = client(&["submit", example("hello.yaml").to_str().unwrap(), "--wait"]);
    assert_eq!(hello.code, 0, "{}", hello.stderr);
    assert_eq!(
        jobs_of_flow().len(),
        jobs.len(),
        "an undeployed schedule started jobs"
    );
    drop(up);
}
