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
        remove_queues(&self.0, &ferry_cli::services::standard_groups());
    }
}

/// Queues of groups other than the standard ones (agents' shared queues), removed from the
/// broker with the namespace's exchanges when dropped.
pub struct Queues(pub String, pub Vec<ferry_bus::Subscribe>);

impl Drop for Queues {
    fn drop(&mut self) {
        remove_queues(&self.0, &self.1);
    }
}

/// Removes the queues of `groups` and the exchanges of the namespace `url` names.
fn remove_queues(url: &str, groups: &[ferry_bus::Subscribe]) {
    // Made inside the runtime that runs it: a timer needs one.
    let remove = async {
        tokio::time::timeout(
            Duration::from_secs(30),
            ferry_connect::remove_namespace(url, groups),
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

/// `ferry up` on a broker, in a bus namespace of its own, with its api on a free port: stopped,
/// and its namespace removed from the broker, when dropped (also when the test fails).
pub struct Deployment {
    pub up: Up,
    /// The bus namespace (`namespace=` of the bus URL).
    pub ns: String,
    /// The bus URL, namespace included.
    pub bus: String,
    pub api: String,
    pub data: PathBuf,
    pub dir: tempfile::TempDir,
    _namespace: BusNamespace,
}

impl Deployment {
    /// On the RabbitMQ of `FERRY_TEST_AMQP`, with the local launcher only; `args` are added to
    /// `ferry up`'s command line.
    pub fn start(args: &[&str]) -> Deployment {
        let url = std::env::var("FERRY_TEST_AMQP")
            .expect("FERRY_TEST_AMQP is not set: run ./scripts/test.sh, which sets it");
        let mut all = vec!["--no-docker", "--no-kubernetes"];
        all.extend_from_slice(args);
        Deployment::up_with(&url, &all)
    }

    /// On a fresh namespace of the broker at `bus_base`.
    pub fn up(bus_base: &str) -> Deployment {
        Deployment::up_with(bus_base, &[])
    }

    /// The same, with `args` added to `ferry up`'s command line.
    pub fn up_with(bus_base: &str, args: &[&str]) -> Deployment {
        Deployment::up_in_env(bus_base, args, &[])
    }

    /// The same, with `env` added to `ferry up`'s environment.
    pub fn up_in_env(bus_base: &str, args: &[&str], env: &[(String, String)]) -> Deployment {
        let ns = format!("t{}", &ferry_event::new_id().replace('-', "")[..16]);
        let sep = if bus_base.contains('?') { '&' } else { '?' };
        let bus = format!("{bus_base}{sep}namespace={ns}");
        let namespace = BusNamespace(bus.clone());
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = free_port();
        let log_path = dir.path().join("up.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let up = Up(ferry()
            .args(["up", "--bus", &bus, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("FERRY_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ferry up did not start: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Deployment {
            up,
            ns,
            bus,
            api: format!("http://127.0.0.1:{port}"),
            data,
            dir,
            _namespace: namespace,
        }
    }

    /// Waits (up to 90 s) until the job is final; its state.
    pub fn final_state(&self, job: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut c = ferry();
            c.args(["status", job, "--api", &self.api, "--data-dir"])
                .arg(&self.data);
            let o = c.output().unwrap();
            let state = String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            if matches!(state.as_str(), "succeeded" | "failed" | "cancelled" | "rejected") {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} did not finish (last state {state:?}); see {}",
                self.dir.path().join("up.log").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `ferry ARGS… --api API --data-dir DATA`.
    pub fn client(&self, args: &[&str]) -> Ran {
        let mut c = ferry();
        c.args(args)
            .args(["--api", &self.api, "--data-dir"])
            .arg(&self.data);
        output(c)
    }

    /// `ferry status JOB --json`.
    pub fn status(&self, job: &str) -> serde_json::Value {
        let mut c = ferry();
        c.args(["status", job, "--json", "--api", &self.api, "--data-dir"])
            .arg(&self.data);
        let o = c.output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The job's status once `check` holds for it.
    pub fn status_when(
        &self,
        job: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let s = self.status(job);
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: never seen; last status {s:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts `ferry agent` of `cluster` with the configuration `config`, in a data directory
    /// named `name` of its own, logging to `name.log`; `args` are added.
    pub fn agent(&self, name: &str, cluster: &str, config: &Path, args: &[&str]) -> Up {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        Up(ferry()
            .args(["agent", "--bus", &self.bus, "--bus-key-file"])
            .arg(self.data.join("bus.keys"))
            .arg("--data-dir")
            .arg(self.dir.path().join(name))
            .args(["--cluster", cluster, "--config"])
            .arg(config)
            .args(args)
            .env("FERRY_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap())
    }

    /// What the logs of `ferry up` and of each agent say, for a failed assertion.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                out += &format!(
                    "--- {}\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
        out
    }
}

/// The task `id` of a job's status.
pub fn task<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["taskId"] == id))
        .unwrap_or(&serde_json::Value::Null)
}
