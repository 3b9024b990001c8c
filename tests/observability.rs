//! Metrics, health and readiness for real: `ferry up --metrics` runs a job while a real
//! Prometheus (Debian's `prometheus`, installed by `scripts/services.sh prometheus_tools`)
//! scrapes it; every query of every dashboard in infra/grafana/dashboards must return data
//! through Prometheus's API, every alert rule of infra/prometheus/alerts.yml must evaluate
//! without error there, and promtool checks and unit-tests the rules. `ferry run --metrics`
//! serves the same endpoint while its flow runs, scraped here mid-run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `GET http://127.0.0.1:PORT/PATH`: the status and body (HTTP/1.0, so never chunked).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = Vec::new();
    s.read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text);
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Percent-encodes a query parameter's value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The tool at `env` (set by `scripts/services.sh prometheus_tools`), or `name` on PATH, or
/// installed by that script now. `None` only when the install failed.
fn tool(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "{env} names {}, which does not exist",
            path.display()
        );
        return Some(path);
    }
    let on_path = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let Some(p) = on_path() {
        return Some(p);
    }
    let installed = Command::new("bash")
        .args(["-c", "source scripts/services.sh && prometheus_tools"])
        .current_dir(root())
        .status()
        .is_ok_and(|s| s.success());
    if installed { on_path() } else { None }
}

/// Waits up to `limit` for `f` to give a value.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prometheus's `/api/v1/query` answer for `expr`: its result list.
fn query(port: u16, expr: &str) -> Result<Vec<Value>, String> {
    let (status, body) = get(port, &format!("/api/v1/query?query={}", encode(expr))).ok_or("no answer")?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Every panel query of a dashboard, with its panel's title; template variables are given
/// their "All" value.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in d["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            out.push((title.clone(), expr.replace("$backend", ".*")));
        }
    }
    assert!(!out.is_empty(), "{} has no queries", path.display());
    out
}

fn promtool(promtool: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const FLOW: &str = r#"
id: observed
namespace: obs
tasks:
  - id: first
    runner: local
    command: [sh, -c, 'for i in 1 2 3; do echo "line $i"; done; sleep 1']
  - id: second
    runner: local
    dependsOn: [first]
    command: [sh, -c, 'echo done']
"#;

#[test]
fn prometheus_scrapes_a_running_deployment_and_every_dashboard_query_has_data() {
    let (Some(prometheus), Some(promtool_bin)) = (
        tool("FERRY_TEST_PROMETHEUS", "prometheus"),
        tool("FERRY_TEST_PROMTOOL", "promtool"),
    ) else {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: Prometheus is not installed and `scripts/services.sh prometheus_tools` \n\
             could not install it (apt-get install prometheus): the dashboards and alert rules \n\
             were NOT checked against a real Prometheus.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    };
    let infra = root().join("infra");
    let rules_dir = infra.join("prometheus");
    promtool(&promtool_bin, &rules_dir, &["check", "rules", "alerts.yml"]);
    promtool(&promtool_bin, &rules_dir, &["test", "rules", "alerts_test.yml"]);
    promtool(&promtool_bin, &rules_dir, &["check", "config", "prometheus.yml"]);

    let dir = tempfile::tempdir().unwrap();
    let (api, metrics, prom) = (free_port(), free_port(), free_port());
    let up = Up(Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["up", "--bus", "memory://", "--kill-grace", "1s"])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap());
    // Alive at once, ready once the bus and the databases answer.
    eventually(Duration::from_secs(60), "/healthz", || {
        get(metrics, "/healthz").filter(|(s, _)| *s == 200)
    });
    let (_, ready) = eventually(Duration::from_secs(60), "/readyz", || {
        get(metrics, "/readyz").filter(|(s, _)| *s == 200)
    });
    assert_eq!(ready, "ready\n");

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: ferry\n    static_configs: [{{ targets: ['127.0.0.1:{metrics}'] }}]\n",
            rules = rules_dir.join("alerts.yml").display().to_string()
        ),
    )
    .unwrap();
    let _prometheus = Up(Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap());

    // A job: two tasks, logs, dispatch, compute.
    let flow = dir.path().join("observed.yaml");
    std::fs::write(&flow, FLOW).unwrap();
    let mut submit = ferry();
    submit
        .arg("submit")
        .arg(&flow)
        .arg("--wait")
        .args(["--api", &format!("http://127.0.0.1:{api}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    let ran = output(submit);
    assert_eq!(ran.code, 0, "the job failed: {}", ran.stderr);
    let job_id = ran.stdout.lines().next().unwrap().trim().to_string();

    // What the process exposes names no job, task or attempt.
    let (status, exposed) = get(metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(!exposed.contains(&job_id), "a job id in a label:\n{exposed}");
    for wanted in [
        "ferry_tasks_ended_total{outcome=\"succeeded\"} 2",
        "ferry_jobs_ended_total{outcome=\"succeeded\"} 1",
        "ferry_dispatch_latency_seconds_count{backend=\"local\"} 2",
        "ferry_compute_seconds_total{backend=\"local\",namespace=\"obs\",flow=\"observed\"}",
    ] {
        assert!(exposed.contains(wanted), "{wanted} missing from:\n{exposed}");
    }

    // Prometheus has the job's metrics once it scraped after the job and the scheduler's
    // sample of its state.
    eventually(Duration::from_secs(90), "Prometheus to scrape the job", || {
        let done = query(prom, "sum(ferry_tasks_ended_total{outcome=\"succeeded\"}) >= 2").ok()?;
        let sampled = query(prom, "ferry_launchers{backend=\"local\"}").ok()?;
        (!done.is_empty() && !sampled.is_empty()).then_some(())
    });

    // Every dashboard query returns data. Rates need two scrapes in their window: retried a
    // while before an empty answer counts as missing.
    let dashboards = infra.join("grafana").join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dashboards)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "overview, backends and cost: {files:?}");
    let mut checked = 0;
    for file in &files {
        for (panel, expr) in dashboard_queries(file) {
            let what = format!("{} / {panel}: {expr}", file.display());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match query(prom, &expr) {
                    Ok(result) if !result.is_empty() => break,
                    Err(e) => panic!("{what} is not a valid query: {e}"),
                    Ok(_) if Instant::now() >= deadline => panic!("{what} returns no data"),
                    Ok(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
            checked += 1;
        }
    }
    eprintln!("{checked} dashboard queries returned data");

    // Prometheus loaded every alert rule and evaluated it without error.
    let rules = eventually(Duration::from_secs(30), "the rules to be evaluated", || {
        let (_, body) = get(prom, "/api/v1/rules")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules.iter().all(|r| r["health"] == "ok").then_some(rules)
    });
    assert_eq!(rules.len(), 6, "{rules:?}");

    drop(up);
}

/// A flow whose one task waits until the file its input names exists.
const GATED: &str = r#"id: gated
namespace: observe
inputs:
  gate: { type: string }
tasks:
  - id: wait
    runner: local
    command: [sh, -c, "echo waiting; until [ -e \"$GATE\" ]; do sleep 0.05; done; echo passed"]
    env: { GATE: "{{ inputs.gate }}" }
"#;

#[test]
fn ferry_run_serves_the_metrics_of_all_its_services_while_the_flow_runs() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("gated.yaml");
    std::fs::write(&flow, GATED).unwrap();
    let gate = dir.path().join("gate");
    let port = free_port();
    let mut run = Up(ferry()
        .arg("run")
        .arg(&flow)
        .args(["--input", &format!("gate={}", gate.display())])
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap());
    // Mid-run: the task holds its attempt until the gate opens. Every service's metrics are
    // in the one exposition: the planner's, the scheduler's, the launcher's, the log
    // collector's and the bus's.
    // Series and the least value each has then; `exact` ones have just that.
    let wanted: [(&str, f64, bool); 9] = [
        ("ferry_jobs_planned_total{outcome=\"planned\"}", 1.0, true),
        ("ferry_jobs_started_total", 1.0, true),
        ("ferry_attempts_in_flight{backend=\"local\"}", 1.0, true),
        (
            "ferry_dispatch_latency_seconds_count{backend=\"local\"}",
            1.0,
            true,
        ),
        ("ferry_log_lines_stored_total", 1.0, false),
        (
            "ferry_db_transaction_seconds_count{store=\"scheduler\"}",
            1.0,
            false,
        ),
        ("ferry_db_transaction_seconds_count{store=\"logs\"}", 1.0, false),
        ("ferry_bus_published_total{topic=\"dispatch\"}", 1.0, false),
        ("ferry_bus_deliveries_total{topic=\"dispatch\"}", 1.0, false),
    ];
    let sample = |body: &str, series: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let exposed = eventually(Duration::from_secs(60), "the running task's metrics", || {
        let (status, body) = get(port, "/metrics")?;
        let all = wanted
            .iter()
            .all(|(series, least, _)| sample(&body, series).is_some_and(|v| v >= *least));
        (status == 200 && all).then_some(body)
    });
    for (series, value, exact) in wanted {
        if exact {
            assert_eq!(sample(&exposed, series), Some(value), "{series}:\n{exposed}");
        }
    }
    assert_eq!(
        sample(&exposed, "ferry_tasks_ended_total{outcome=\"succeeded\"}"),
        Some(0.0),
        "the task has not ended yet:\n{exposed}"
    );
    // One registry for every service: no family twice (a family without a series yet, like
    // the scheduler's sampled gauges before their first sample, is not shown at all).
    for name in ferry_runtime::metrics::name::ALL {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let declared = exposed.matches(&format!("# TYPE {family} ")).count();
        assert!(declared <= 1, "{family} is declared {declared} times:\n{exposed}");
    }
    assert_eq!(get(port, "/healthz"), Some((200, "ok\n".to_string())));
    assert_eq!(get(port, "/readyz"), Some((200, "ready\n".to_string())));

    // The job ends: the endpoint goes with the run.
    std::fs::write(&gate, "").unwrap();
    let status = run.0.wait().unwrap();
    // Reaped: nothing is left to stop.
    std::mem::forget(run);
    assert!(status.success(), "ferry run failed: {status}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the endpoint outlived the run"
    );
}

#[test]
fn ferry_run_metrics_on_a_taken_address_fails_before_running_anything() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut c = ferry();
    c.arg("run")
        .arg(example("hello.yaml"))
        .args(["--metrics", &addr.to_string()])
        .arg("--data-dir")
        .arg(dir.path());
    let ran = output(c);
    assert_ne!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!("cannot serve metrics on {addr}")) && ran.stderr.contains("--metrics"),
        "the error names the address and the flag: {}",
        ran.stderr
    );
    assert!(
        !ran.stdout.contains("hello"),
        "the flow did not run: {}",
        ran.stdout
    );
}
