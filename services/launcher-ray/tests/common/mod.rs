//! Shared by the tests: a real Ray head on 127.0.0.1 and the ray backend on it, as the
//! conformance suite sees it.
//!
//! The head is the one the test scripts started (`FERRY_TEST_RAY`, its dashboard URL: one for
//! the whole run, as `cargo nextest` runs each test in a process of its own), else one this
//! test process starts on free ports and shares among its tests (`cargo test`). That one runs
//! `ray start --head --block` under a watcher in a session of its own: when the test process is
//! gone, the watcher kills every process of the session (Ray's workers are in process groups of
//! their own, but not in sessions of their own) and removes the head's temporary directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use ferry_event::payload::{RayRunner, Resources, Runner};
use ferry_event::template::Template;
use ferry_launcher::Backend;
use ferry_launcher::conformance::{Program, Target};
use ferry_launcher::journal::Journal;
use ferry_launcher_ray::api::Client;
use ferry_launcher_ray::{Ray, Settings};

/// The Ray version the test scripts install (scripts/services.sh `ray_tools`).
pub const RAY_VERSION: &str = "2.60.0";

/// The `ray` command: `FERRY_TEST_RAY_BIN`, else where `ray_tools` installs it.
pub fn ray_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("FERRY_TEST_RAY_BIN").filter(|b| !b.is_empty()) {
        return Some(bin.into());
    }
    let tools = std::env::var_os("FERRY_TOOLS").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("ferry/tools"))
    })?;
    let bin = tools.join(format!("ray-{RAY_VERSION}/bin/ray"));
    bin.exists().then_some(bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// The dashboard URL of the Ray head the tests use, or why there is none.
pub fn address() -> Result<String, String> {
    static HEAD: OnceLock<Result<String, String>> = OnceLock::new();
    HEAD.get_or_init(|| {
        if let Some(url) = std::env::var("FERRY_TEST_RAY").ok().filter(|u| !u.is_empty()) {
            return Ok(url);
        }
        let bin = ray_bin().ok_or(
            "Ray is not installed: source scripts/services.sh && ray_tools (or set FERRY_TEST_RAY to a head's dashboard URL)",
        )?;
        start_head(&bin)
    })
    .clone()
}

/// Starts a head for this process (see the module's text) and waits until its Jobs API
/// answers.
fn start_head(bin: &Path) -> Result<String, String> {
    let gcs = free_port();
    let dashboard = free_port();
    let temp = std::env::temp_dir().join(format!("ferry-ray-{gcs}"));
    let ports = [
        ("--port", gcs),
        ("--dashboard-port", dashboard),
        ("--ray-client-server-port", free_port()),
        ("--dashboard-agent-listen-port", free_port()),
        ("--dashboard-agent-grpc-port", free_port()),
        ("--metrics-export-port", free_port()),
        ("--runtime-env-agent-port", free_port()),
        ("--node-manager-port", free_port()),
        ("--object-manager-port", free_port()),
    ];
    let watcher = r#"
ray=$1; parent=$2; temp=$3; shift 3
"$ray" start --head --block "$@" >"$temp.log" 2>&1 &
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
for p in $(pgrep -s $$); do [ "$p" = $$ ] || kill -9 "$p" 2>/dev/null; done
rm -rf "$temp" "$temp.log"
"#;
    let mut cmd = std::process::Command::new("setsid");
    cmd.args(["sh", "-c", watcher, "sh"])
        .arg(bin)
        .arg(std::process::id().to_string())
        .arg(&temp)
        .args([
            "--node-ip-address",
            "127.0.0.1",
            "--dashboard-host",
            "127.0.0.1",
            "--num-cpus",
            "8",
            "--disable-usage-stats",
            "--include-dashboard",
            "true",
        ])
        .arg("--temp-dir")
        .arg(&temp);
    for (flag, port) in ports {
        cmd.arg(flag).arg(port.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn()
        .map_err(|e| format!("cannot run setsid to start a Ray head: {e}"))?;
    let url = format!("http://127.0.0.1:{dashboard}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if jobs_api_answers(dashboard) {
            eprintln!(
                "a Ray head for this test process at {url} (log: {}.log)",
                temp.display()
            );
            return Ok(url);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "the Ray head did not answer at {url} within 2 minutes; its log: {}.log",
        temp.display()
    ))
}

/// Whether `GET /api/jobs/` answers 200 (plain HTTP/1.0 on a socket: this runs inside the
/// tests' tokio runtimes, which cannot block on another).
fn jobs_api_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /api/jobs/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// Whether a Ray head can be had. Outside CI a missing Ray skips the test, saying so; in CI
/// (`CI=true`) it fails it.
pub fn ray_given(test: &str) -> bool {
    match address() {
        Ok(_) => true,
        Err(why) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{why}");
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// The settings of a backend of the launcher whose journal is in `data_dir`.
pub fn settings(data_dir: &Path, journal: &Journal) -> Settings {
    let launcher = journal.identity().expect("the launcher's identity");
    let data_dir = std::path::absolute(data_dir).expect("an absolute data directory");
    let mut s = Settings::new(launcher, data_dir.join("ray"));
    s.address = Some(address().expect("a Ray head"));
    s.artifact_dir = Some(data_dir.join("artifacts"));
    s.kill_grace = Duration::from_secs(1);
    s
}

/// The ray backend on the tests' head, as the conformance suite sees it.
pub struct RayTarget {
    pub address: String,
    client: Client,
}

impl RayTarget {
    pub fn new() -> RayTarget {
        RayTarget {
            address: address().expect("a Ray head"),
            client: Client::new(),
        }
    }
}

impl Default for RayTarget {
    fn default() -> Self {
        RayTarget::new()
    }
}

/// The processes whose environment holds `FERRY_ATTEMPT_ID=<attempt_id>`: the task's.
pub fn task_processes(attempt_id: &str) -> Vec<i32> {
    let needle = format!("FERRY_ATTEMPT_ID={attempt_id}\0");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut with_nul = env;
        with_nul.push(0);
        if with_nul.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[async_trait]
impl Target for RayTarget {
    fn name(&self) -> &'static str {
        ferry_launcher_ray::BACKEND
    }

    async fn backend(&self, data_dir: &Path, journal: &Journal) -> Arc<dyn Backend> {
        Arc::new(Ray::new(settings(data_dir, journal)))
    }

    fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
        (
            Runner::Ray(RayRunner::default()),
            vec![
                Template::text("sh"),
                Template::text("-c"),
                Template::text(program.sh()),
            ],
        )
    }

    fn refused(&self) -> Option<(Resources, &'static str)> {
        Some((
            Resources {
                gpu: Some(1),
                gpu_type: Some("nvidia-tesla-t4".into()),
                ..Resources::default()
            },
            "resources.gpuType",
        ))
    }

    /// The jobs on the cluster that have not ended (the records of those that have, which
    /// hold no compute, are deleted a few seconds after their end: `records_go`), and the
    /// attempt directories left in the data directory.
    async fn leftovers(&self, data_dir: &Path) -> Vec<String> {
        let mut left: Vec<String> = self
            .client
            .list(&self.address)
            .await
            .expect("the Ray head lists its jobs")
            .into_iter()
            .filter(|j| !j.is_terminal())
            .filter_map(|j| j.submission_id)
            .collect();
        for entry in std::fs::read_dir(data_dir.join("ray"))
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("directory {}", entry.path().display()));
        }
        left
    }

    async fn kill(&self, attempt_id: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pids = task_processes(attempt_id);
            if !pids.is_empty() {
                for pid in pids {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .map_err(|e| format!("kill -9 {pid}: {e}"))?;
                }
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no process of attempt {attempt_id} runs"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A target whose every case is skipped, saying why: no Ray head can be had here.
pub struct Skip;

#[async_trait]
impl Target for Skip {
    fn name(&self) -> &'static str {
        ferry_launcher_ray::BACKEND
    }
    async fn backend(&self, _: &Path, _: &Journal) -> Arc<dyn Backend> {
        unreachable!("every case is skipped")
    }
    fn command(&self, _: &Program) -> (Runner, Vec<Template>) {
        unreachable!("every case is skipped")
    }
    fn refused(&self) -> Option<(Resources, &'static str)> {
        None
    }
    async fn leftovers(&self, _: &Path) -> Vec<String> {
        Vec::new()
    }
    async fn kill(&self, _: &str) -> Result<(), String> {
        Err("skipped".into())
    }
    fn cannot(&self, _: &str) -> Option<&'static str> {
        Some("no Ray head: source scripts/services.sh && ray_up (or ray_tools, and the tests start one)")
    }
}
