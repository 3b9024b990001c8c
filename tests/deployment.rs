//! A deployment driven by its clients alone: `ferry up` on the in-memory bus, then `ferry
//! submit`, `status`, `logs`, `cancel` and `retry` through the api, with the admin token `ferry
//! up` made in its data directory, or with tokens of their own.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Up {
    child: Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl Up {
    fn start() -> Up {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "up",
                "--bus",
                "memory://",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--kill-grace",
                "1s",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ferry up did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Up {
            child,
            api: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Runs a client of this deployment, which finds the admin token in the data directory.
    fn ferry(&self, args: &[&str]) -> Ran {
        let mut c = ferry();
        c.args(args).args(["--api", &self.api]);
        c.arg("--data-dir").arg(self._dir.path());
        output(c)
    }

    /// Runs a client with the environment given and no data directory to find a token in.
    fn ferry_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut c = ferry();
        c.args(args).args(["--api", &self.api]).env_remove("FERRY_TOKEN");
        c.envs(env.iter().copied());
        c.current_dir(self._dir.path().parent().unwrap());
        output(c)
    }

    fn wait_state(&self, job: &str, want: &str) -> Ran {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ran = self.ferry(&["status", job]);
            if ran.stdout.lines().next() == Some(want) {
                return ran;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} never became {want}: {}",
                ran.stdout
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

#[test]
fn submit_waits_for_the_job_and_exits_by_its_outcome() {
    let up = Up::start();
    let ok = up.ferry(&["submit", example("diamond.yaml").to_str().unwrap(), "--wait"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let job = ok.stdout.lines().next().unwrap().to_string();
    assert!(ok.stdout.lines().nth(1) == Some("succeeded"), "{}", ok.stdout);
    let logs = up.ferry(&["logs", &job]);
    assert_eq!(
        logs.lines_of("report"),
        ["report for 2026-01-01: 84 (doubled), events-sample"]
    );
    let logs = up.ferry(&["logs", &job, "--task", "count", "--follow"]);
    assert_eq!(
        logs.stdout.lines().collect::<Vec<_>>(),
        ["count | counting 42 rows of events"]
    );

    let failed = up.ferry(&["submit", example("failfast.yaml").to_str().unwrap(), "--wait"]);
    assert_eq!(failed.code, 1);
    assert_eq!(failed.stdout.lines().nth(1), Some("failed"));
    let bad = up.ferry(&["submit", flow("broken.yaml").to_str().unwrap()]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("broken.yaml:7:5"), "{}", bad.stderr);
    assert!(bad.stdout.is_empty(), "no job id for a refused flow");
}

#[test]
fn status_prints_the_job_state_first_and_json_for_scripts() {
    let up = Up::start();
    let ran = up.ferry(&[
        "submit",
        example("hello.yaml").to_str().unwrap(),
        "--input",
        "name=api",
        "--wait",
    ]);
    let job = ran.stdout.lines().next().unwrap().to_string();
    let status = up.ferry(&["status", &job]);
    assert_eq!(status.stdout.lines().next(), Some("succeeded"));
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("greet") && l.contains("succeeded"))
    );
    assert!(
        status.stdout.lines().any(|l| l.starts_with("compute: ")),
        "{}",
        status.stdout
    );
    let json = up.ferry(&["status", &job, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["tasks"][0]["taskId"], "greet");
    // The compute its one attempt held, reported by the launcher, is the job's.
    let held = v["tasks"][0]["computeMs"].as_u64();
    assert!(held.is_some(), "{v}");
    assert_eq!(v["computeMs"].as_u64(), held, "{v}");
    let unknown = up.ferry(&["status", "no-such-job"]);
    assert_eq!(unknown.code, 2);
}

#[test]
fn cancel_stops_a_running_job_and_retry_reruns_only_what_failed() {
    let up = Up::start();
    let sleepy = up.ferry(&["submit", flow("sleepy.yaml").to_str().unwrap()]);
    let job = sleepy.stdout.lines().next().unwrap().to_string();
    up.wait_state(&job, "running");
    // Both tasks must have started before the cancel, so that there is something to stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.ferry(&["logs", &job]).stdout.matches("child ").count() < 2 {
        assert!(Instant::now() < deadline, "the tasks did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids: Vec<i32> = up
        .ferry(&["logs", &job])
        .stdout
        .lines()
        .filter_map(|l| l.split("child ").nth(1)?.trim().parse().ok())
        .collect();
    assert_eq!(up.ferry(&["cancel", &job]).code, 0);
    let status = up.wait_state(&job, "cancelled");
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("three") && l.contains("cancelled"))
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the cancel");
    }

    let marker = tempfile::tempdir().unwrap();
    let arg = format!("marker={}", marker.path().join("ran").display());
    let flaky = up.ferry(&[
        "submit",
        flow("flaky-once.yaml").to_str().unwrap(),
        "--input",
        &arg,
        "--wait",
    ]);
    assert_eq!(flaky.code, 1);
    let job = flaky.stdout.lines().next().unwrap().to_string();
    assert_eq!(up.ferry(&["retry", &job]).code, 0);
    let status = up.wait_state(&job, "succeeded");
    let attempts = |task: &str| -> String {
        let line = status
            .stdout
            .lines()
            .find(|l| l.starts_with(task))
            .unwrap()
            .to_string();
        line.split_whitespace().nth(2).unwrap().to_string()
    };
    assert_eq!(
        attempts("first"),
        "1",
        "a task that had succeeded does not run again"
    );
    assert_eq!(attempts("flaky"), "2");
    assert_eq!(up.ferry(&["cancel", "no-such-job"]).code, 2);
}

#[test]
fn clients_need_a_token_and_are_told_how_to_get_one() {
    let up = Up::start();
    let hello = example("hello.yaml");
    let hello = hello.to_str().unwrap();
    let none = up.ferry_env(&["submit", hello, "--input", "name=x"], &[]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("FERRY_TOKEN"), "{}", none.stderr);
    assert!(none.stdout.is_empty());
    let wrong = up.ferry_env(&["status"], &[("FERRY_TOKEN", "ferry_wrong")]);
    assert_eq!(wrong.code, 2);
    assert!(
        wrong.stderr.contains("not one this api knows"),
        "{}",
        wrong.stderr
    );

    // A token made for reading only, added to the tokens file `ferry up` created.
    let made = output({
        let mut c = ferry();
        c.args(["token", "create", "--name", "dashboard", "--scope", "read"]);
        c
    });
    assert_eq!(made.code, 0, "{}", made.stderr);
    let mut lines = made.stdout.lines();
    let token = lines.next().unwrap().to_string();
    let entry = lines.next().unwrap().to_string();
    assert!(
        token.starts_with("ferry_") && !entry.contains(&token),
        "the file gets the hash only"
    );
    let file = up._dir.path().join("tokens.yaml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!("{entry}\n"));
    std::fs::write(&file, text).unwrap();
    let reader = [("FERRY_TOKEN", token.as_str())];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = up.ferry_env(&["status"], &reader);
        if status.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted: {}",
            status.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = up.ferry_env(&["submit", hello, "--input", "name=x"], &reader);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("`submit`"), "{}", refused.stderr);
    assert!(refused.stderr.contains("FERRY_TOKEN"), "{}", refused.stderr);
}

#[test]
fn logs_show_control_sequences_as_text_and_end_quietly_when_their_reader_goes_away() {
    let up = Up::start();
    let ran = up.ferry(&["submit", flow("noisy.yaml").to_str().unwrap(), "--wait"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let job = ran.stdout.lines().next().unwrap().to_string();
    // Following waits for every line of the finished job.
    let logs = up.ferry(&["logs", &job, "--task", "paint", "--follow"]);
    assert_eq!(
        logs.lines_of("paint"),
        ["\\x1b[31mred\\x1b[0m", "\\x1b]0;title\\x07\\x0dforged"]
    );
    let raw = up.ferry(&["logs", &job, "--task", "paint", "--follow", "--raw"]);
    assert_eq!(
        raw.lines_of("paint"),
        ["\x1b[31mred\x1b[0m", "\x1b]0;title\x07\rforged"]
    );

    // `ferry logs JOB | head -1`: 50,000 lines do not fit in the pipe.
    let mut c = ferry();
    c.args(["logs", &job, "--task", "count", "--follow", "--api", &up.api]);
    c.arg("--data-dir").arg(up._dir.path());
    let head = first_line_then_close(c);
    assert_eq!(head.stdout, "count | 1\n");
    assert_eq!(head.code, 141, "{}", head.stderr);
    assert!(!head.stderr.contains("panicked"), "{}", head.stderr);
}
