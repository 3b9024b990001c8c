//! Running the `ferry` binary in tests.

#![allow(dead_code)]

pub mod otlp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

pub fn flow(name: &str) -> PathBuf {
    root().join("tests").join("flows").join(name)
}

/// What a finished `ferry` process left behind.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Log lines a task printed (`task | text` or `task ! text`), in order.
    pub fn lines_of(&self, task: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let rest = l.strip_prefix(task)?;
                rest.strip_prefix(" | ")
                    .or_else(|| rest.strip_prefix(" ! "))
                    .map(str::to_string)
            })
            .collect()
    }

    /// The summary table row of a task, split into cells.
    pub fn row(&self, task: &str) -> Vec<String> {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.split_whitespace().next() == Some(task))
            .unwrap_or_else(|| panic!("no summary row for {task}:\n{}", self.stdout));
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    }
}

pub fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env_remove("FERRY_DATA_DIR")
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null());
    c
}

pub fn output(mut cmd: Command) -> Ran {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("ferry runs");
    let ran = Ran {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    eprintln!("--- stdout\n{}--- stderr\n{}---", ran.stdout, ran.stderr);
    ran
}

/// A new bus key file in `dir`, made by `ferry key create`, for the services of one deployment.
pub fn bus_key_file(dir: &Path) -> PathBuf {
    let path = dir.join("bus.keys");
    let mut c = ferry();
    c.args(["key", "create"]).arg(&path);
    let ran = output(c);
    assert_eq!(ran.code, 0, "ferry key create failed: {}", ran.stderr);
    path
}

/// `ferry run FLOW --data-dir DIR ARGS…`
pub fn run(flow: &Path, data_dir: &Path, args: &[&str]) -> Ran {
    let mut c = ferry();
    c.arg("run").arg(flow).arg("--data-dir").arg(data_dir).args(args);
    output(c)
}

/// Whether a process with this pid is alive (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Files under a directory, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// What a command wrote before its reader went away (`ferry … | head -1`): the first line of
/// stdout, read before stdout is closed, then the exit status and all of stderr.
pub fn first_line_then_close(mut cmd: Command) -> Ran {
    use std::io::{BufRead, Read};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry runs");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: first,
        stderr,
    }
}

/// A port free on loopback when asked (should another process take it before the service
/// binds it, the start fails saying so).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process a test started (`ferry up`, a Prometheus) running until dropped, when it gets
/// SIGTERM and (bounded) time to stop.
pub struct Up(pub Child);

impl Drop for Up {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bus namespace, removed from its broker when dropped (after the services using it), also
/// when the test fails: on RabbitMQ, runs that leave their queues behind pile up hundreds of
/// quorum queues in the test vhost, which RabbitMQ was seen to handle badly.
pub struct BusNamespace(pub String);

impl Drop for BusNamespace {
    fn drop(&mut self) {
        let groups = ferry_cli::services::standard_groups();
        // Made inside the runtime that runs it: a timer needs one.
        let remove = async {
            tokio::time::timeout(
                Duration::from_secs(30),
                ferry_connect::remove_namespace(&self.0, &groups),
            )
            .await
        };
        let removed = match tokio::runtime::Handle::try_current() {
            Ok(rt) => tokio::task::block_in_place(|| rt.block_on(remove)),
            Err(_) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(remove),
                Err(_) => return,
            },
        };
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("removing the bus namespace failed: {e}"),
            Err(_) => eprintln!("removing the bus namespace took longer than 30s"),
        }
    }
}
