//! The launcher conformance suite against the local backend: real processes in slots, their
//! output in files, on the in-memory bus.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_event::payload::{Resources, Runner};
use ferry_event::template::Template;
use ferry_launcher::Backend;
use ferry_launcher::conformance::{Program, Target};
use ferry_launcher::journal::Journal;
use ferry_launcher_local::{Config, Secrets};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgid};

struct Local;

/// The processes whose environment names an attempt (`FERRY_ATTEMPT_ID`), and that attempt.
fn attempt_processes() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // A zombie has exited: nothing of it runs, only its parent has not reaped it yet.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        if zombie {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if let Some(id) = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"FERRY_ATTEMPT_ID="))
        {
            found.push((pid, String::from_utf8_lossy(id).into_owned()));
        }
    }
    found
}

#[async_trait]
impl Target for Local {
    fn name(&self) -> &'static str {
        ferry_launcher_local::BACKEND
    }

    async fn backend(&self, data_dir: &Path, journal: &Journal) -> Arc<dyn Backend> {
        let mut config = Config::new(data_dir);
        config.service.secrets = Secrets::new();
        // Containment in cgroups has tests of its own (launcher.rs); here every launcher start
        // would leave a cgroup behind, since the suite crashes launchers on purpose.
        config.cgroups = false;
        ferry_launcher_local::backend(config, journal)
            .await
            .expect("the local backend opens")
    }

    fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
        let command = ["sh", "-c", &program.sh()].map(Template::text).to_vec();
        (Runner::default(), command)
    }

    fn refused(&self) -> Option<(Resources, &'static str)> {
        let gpu = Resources {
            gpu: Some(1),
            ..Resources::default()
        };
        Some((gpu, "resources.gpu"))
    }

    async fn leftovers(&self, _: &Path) -> Vec<String> {
        attempt_processes()
            .into_iter()
            .map(|(pid, id)| format!("ferry-{id} (pid {pid})"))
            .collect()
    }

    async fn kill(&self, attempt_id: &str) -> Result<(), String> {
        let groups: Vec<Pid> = attempt_processes()
            .into_iter()
            .filter(|(_, id)| id == attempt_id)
            .filter_map(|(pid, _)| getpgid(Some(Pid::from_raw(pid))).ok())
            .collect();
        if groups.is_empty() {
            return Err(format!("no process of attempt {attempt_id} runs"));
        }
        for pgid in groups {
            killpg(pgid, Signal::SIGKILL).map_err(|e| format!("cannot kill group {pgid}: {e}"))?;
        }
        Ok(())
    }
}

ferry_launcher::launcher_conformance!(async { Arc::new(Local) });

/// The same suite against an agent: the local backend behind a task registry, receiving the
/// dispatches of one request (`probe@1.0` in cluster `conformance`) that its registered
/// `probe@1.2` serves. The registered command runs the task's own as its arguments, so every
/// case runs its program through the registry.
mod agent {
    use super::*;
    use ferry_event::payload::AgentRunner;
    use ferry_launcher_local::agent::{AgentConfig, Registry};

    struct Agent;

    const REQUEST: &str = "agent.conformance.probe.1.0";

    #[async_trait]
    impl Target for Agent {
        fn name(&self) -> &'static str {
            REQUEST
        }

        fn dispatch_group(&self) -> String {
            ferry_event::agent::group(REQUEST)
        }

        async fn backend(&self, data_dir: &Path, journal: &Journal) -> Arc<dyn Backend> {
            let mut launcher = Config::new(data_dir);
            launcher.service.secrets = Secrets::new();
            launcher.cgroups = false;
            let registry = Registry::parse(
                "tasks:\n  - name: probe\n    version: '1.2'\n    command: [sh, -c, 'exec \"$@\"', probe]\n",
                "agent.yaml",
            )
            .expect("the registry parses");
            let mut config = AgentConfig::new("conformance", registry, launcher).expect("a valid agent");
            config.drain = std::time::Duration::from_secs(5);
            ferry_launcher_local::agent::backend(config, journal)
                .await
                .expect("the agent backend opens")
        }

        fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
            let command = ["sh", "-c", &program.sh()].map(Template::text).to_vec();
            let runner = Runner::Agent(AgentRunner {
                cluster: "conformance".into(),
                task: "probe@1.0".into(),
            });
            (runner, command)
        }

        fn refused(&self) -> Option<(Resources, &'static str)> {
            Local.refused()
        }

        async fn leftovers(&self, data_dir: &Path) -> Vec<String> {
            Local.leftovers(data_dir).await
        }

        async fn kill(&self, attempt_id: &str) -> Result<(), String> {
            Local.kill(attempt_id).await
        }
    }

    ferry_launcher::launcher_conformance!(async { Arc::new(Agent) });
}

/// The same suite with a cgroup per slot, where this machine allows (root and a cgroup v2
/// mount; elsewhere the launcher falls back to the sweep): each attempt's process is started
/// in its slot's cgroup (`clone3`), and what it leaves is killed with the cgroup.
mod in_cgroups {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;

    /// The local target, with cgroups; the cgroups of the launchers it made are removed when
    /// it is dropped (the suite kills launchers, which then leave theirs behind).
    #[derive(Default)]
    struct InCgroups {
        data_dirs: Mutex<Vec<PathBuf>>,
    }

    impl Drop for InCgroups {
        fn drop(&mut self) {
            let dirs = self.data_dirs.get_mut().unwrap_or_else(|e| e.into_inner());
            for dir in dirs
                .iter()
                .flat_map(|d| [d.clone(), d.canonicalize().unwrap_or_default()])
            {
                let Some(base) = ferry_launcher_local::slots_cgroup(&dir) else {
                    continue;
                };
                for slot in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                    // An rmdir of a cgroup that still holds processes fails: it stays.
                    let _ = std::fs::remove_dir(slot.path());
                }
                let _ = std::fs::remove_dir(&base);
            }
        }
    }

    #[async_trait]
    impl Target for InCgroups {
        fn name(&self) -> &'static str {
            ferry_launcher_local::BACKEND
        }

        async fn backend(&self, data_dir: &Path, journal: &Journal) -> Arc<dyn Backend> {
            self.data_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(data_dir.to_path_buf());
            let mut config = Config::new(data_dir);
            config.service.secrets = Secrets::new();
            config.cgroups = true;
            ferry_launcher_local::backend(config, journal)
                .await
                .expect("the local backend opens")
        }

        fn command(&self, program: &Program) -> (Runner, Vec<Template>) {
            Local.command(program)
        }

        fn refused(&self) -> Option<(Resources, &'static str)> {
            Local.refused()
        }

        async fn leftovers(&self, data_dir: &Path) -> Vec<String> {
            Local.leftovers(data_dir).await
        }

        async fn kill(&self, attempt_id: &str) -> Result<(), String> {
            Local.kill(attempt_id).await
        }
    }

    ferry_launcher::launcher_conformance!(async { Arc::new(InCgroups::default()) });
}
