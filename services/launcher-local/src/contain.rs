//! Ending every process an attempt created, including those that left its process group.
//!
//! Stopping an attempt's process group is not enough: `setsid` or a double fork puts a process
//! in a group of its own, and such a daemon would outlive its task and, since slots are reused,
//! write into a later attempt's working directory. Two ways are used, the first one that works:
//!
//! - **cgroup v2** (Linux, where the launcher may create cgroups below its own: as root, or with
//!   a delegated cgroup): every slot has a cgroup `ferry-<id>/slot-<n>` below the launcher's,
//!   where `<id>` is derived from the data directory. The task's process is born in its slot's
//!   cgroup, and so is everything it starts, whatever group or session it moves to: it is
//!   started there with `clone3` ([`crate::spawn`]). Where that cannot be done, the launcher
//!   steps into the slot's cgroup for a spawn of the standard library's and back out of it
//!   (spawns are taken one at a time for this, and the moves cost 0.4–2 ms of system time).
//!   Moving the process in after the spawn would leave out what it forks in the first
//!   microseconds, and tests showed that happens.
//!   When the attempt ends, the processes left get SIGTERM, the grace period, then
//!   `cgroup.kill`, and the launcher waits until the cgroup is empty before its slot is wiped
//!   and reused.
//! - **sweep** (anywhere else): when an attempt ends, `/proc` is searched for processes whose
//!   environment carries the attempt's `FERRY_ATTEMPT_ID`, and their groups are stopped. A
//!   process that started a program with a cleared environment escapes this; so does one of
//!   another user (run `--run-as` and the launcher as root to have cgroups).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_launcher::backend::{AttemptError, BackendResult};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::process;
use crate::spawn::{self, Leader, Spec, Start};

/// How often a stopping cgroup is looked at.
const POLL: Duration = Duration::from_millis(20);
/// How long processes get to vanish after `cgroup.kill`.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// How the launcher finds the processes of an attempt.
#[derive(Debug)]
pub enum Contain {
    /// Slot cgroups below `base` (a cgroup v2 directory), which is below `home`, the
    /// launcher's own cgroup; `direct` while processes can be started in a slot's cgroup
    /// ([`spawn::start`]), and `spawning` is held while the launcher is in a slot's cgroup
    /// when they cannot.
    Cgroup {
        base: PathBuf,
        home: PathBuf,
        direct: AtomicBool,
        spawning: Mutex<()>,
    },
    /// Processes found by their `FERRY_ATTEMPT_ID`.
    Sweep,
}

impl Contain {
    /// Cgroups when `use_cgroups` and this machine lets the launcher create them below its own
    /// cgroup, else the sweep.
    pub fn detect(data_dir: &Path, use_cgroups: bool) -> Contain {
        if !use_cgroups {
            return Contain::Sweep;
        }
        match cgroup_base(data_dir) {
            Ok((home, base)) => Contain::Cgroup {
                base,
                home,
                // A switch for where clone3 must not be tried (a seccomp filter that kills
                // rather than refuses).
                direct: AtomicBool::new(std::env::var_os("FERRY_NO_CLONE3").is_none()),
                spawning: Mutex::new(()),
            },
            Err(why) => {
                tracing::warn!(
                    why,
                    "cannot use a cgroup per slot; processes that leave a task's process group are found by \
                     their FERRY_ATTEMPT_ID instead, which misses those that clear their environment"
                );
                Contain::Sweep
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Contain::Cgroup { base, .. } => format!("cgroup v2 ({})", base.display()),
            Contain::Sweep => "sweep by FERRY_ATTEMPT_ID".into(),
        }
    }

    fn slot(&self, slot: u32) -> Option<PathBuf> {
        match self {
            Contain::Cgroup { base, .. } => Some(base.join(format!("slot-{slot}"))),
            Contain::Sweep => None,
        }
    }

    /// Starts a task's first process so that it is born in `slot`'s cgroup. Returns it and
    /// whether it was born there (if not, and cgroups are used, [`Self::adopt`] moves it in
    /// after the fact). A process that cannot be started is the task's fault (no such program,
    /// no such directory…); output files that cannot be handed to it are the launcher's.
    pub fn start(&self, slot: u32, spec: &Spec) -> BackendResult<(Leader, bool)> {
        let not_started = |e: io::Error| AttemptError::Task(format!("cannot start {:?}: {e}", spec.arg0));
        let command = || {
            spec.command()
                .map_err(|e| AttemptError::Platform(format!("cannot open the output files: {e}")))
        };
        let (
            Contain::Cgroup {
                home,
                direct,
                spawning,
                ..
            },
            Some(cg),
        ) = (self, self.slot(slot))
        else {
            let child = command()?.spawn().map_err(not_started)?;
            return Ok((Leader::Std(child), false));
        };
        if direct.load(Ordering::Relaxed) {
            // What keeps the process from being born in the cgroup this way is tried the
            // other way below, which falls back to moving it in after the start.
            match open_cgroup(&cg)
                .map_err(Start::Clone)
                .and_then(|dir| spawn::start(spec, &dir))
            {
                Ok(process) => return Ok((Leader::Direct(process), true)),
                Err(Start::Failed(e)) => return Err(not_started(e)),
                Err(Start::Clone(e)) => {
                    tracing::warn!(cgroup = %cg.display(), error = %e, "cannot start the task in its slot's cgroup with clone3")
                }
                Err(Start::Unsupported(e)) => {
                    if direct.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot start processes in a cgroup with clone3; the launcher moves itself into each slot's cgroup for the spawn instead, which costs more");
                    }
                }
            }
        }
        let mut cmd = command()?;
        let _one_at_a_time = spawning.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = move_into(&cg, std::process::id() as i32) {
            tracing::warn!(cgroup = %cg.display(), error = %e, "cannot start the task in its slot's cgroup; moving it there after the start");
            return Ok((Leader::Std(cmd.spawn().map_err(not_started)?), false));
        }
        let spawned = cmd.spawn();
        go_home(home);
        Ok((Leader::Std(spawned.map_err(not_started)?), true))
    }

    /// Puts a task's first process, just started, into its slot's cgroup (when
    /// [`Self::start`] could not start it there).
    pub fn adopt(&self, slot: u32, pid: i32) -> io::Result<()> {
        match self.slot(slot) {
            Some(cg) => move_into(&cg, pid),
            None => Ok(()),
        }
    }

    /// Stops everything of the attempt `attempt_id` in `slot`: its process group `pgid` (when
    /// there is one) and every process that left it. SIGTERM, up to `grace`, then SIGKILL;
    /// returns once none is left (or, bounded, when some survive SIGKILL, which is logged).
    pub async fn stop(&self, slot: u32, attempt_id: &str, pgid: Option<i32>, grace: Duration) {
        match (self, self.slot(slot)) {
            (Contain::Cgroup { home, .. }, Some(cg)) => stop_cgroup(&cg, home, pgid, grace).await,
            _ => {
                if let Some(pgid) = pgid {
                    process::stop_group(pgid, grace).await;
                }
                sweep(attempt_id, grace).await;
            }
        }
    }

    /// Kills what is left in the cgroups of slots not in `busy` (a previous run's daemons),
    /// before those slots are wiped.
    pub async fn clear_idle(&self, busy: &[u32]) {
        let Contain::Cgroup { base, home, .. } = self else {
            return;
        };
        for (n, cg) in slot_cgroups(base) {
            if !busy.contains(&n) && populated(&cg) {
                tracing::warn!(cgroup = %cg.display(), "stopping processes a previous run left in a slot's cgroup");
                stop_cgroup(&cg, home, None, Duration::ZERO).await;
            }
        }
    }

    /// Removes the slot cgroups that are empty, and the launcher's, when it stops.
    pub fn remove(&self) {
        let Contain::Cgroup { base, .. } = self else {
            return;
        };
        for (_, cg) in slot_cgroups(base) {
            if !populated(&cg) {
                let _ = std::fs::remove_dir(&cg);
            }
        }
        let _ = std::fs::remove_dir(base);
    }
}

/// Opens cgroup `cg`'s directory, creating the cgroup if needed.
fn open_cgroup(cg: &Path) -> io::Result<std::fs::File> {
    match std::fs::File::open(cg) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(cg)?;
            std::fs::File::open(cg)
        }
        other => other,
    }
}

/// Moves process `pid` into cgroup `cg`, creating the cgroup if needed.
fn move_into(cg: &Path, pid: i32) -> io::Result<()> {
    match std::fs::write(cg.join("cgroup.procs"), pid.to_string()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(cg)?;
            std::fs::write(cg.join("cgroup.procs"), pid.to_string())
        }
        other => other,
    }
}

/// Moves the launcher back to its own cgroup. Staying in a slot's would have the launcher
/// killed with that slot's processes, so a failure is retried, and [`stop_cgroup`] checks again.
fn go_home(home: &Path) {
    let me = std::process::id() as i32;
    for _ in 0..3 {
        match move_into(home, me) {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(cgroup = %home.display(), error = %e, "cannot move the launcher back to its cgroup")
            }
        }
    }
}

/// The cgroup below which a launcher of this process with data directory `data_dir` makes its
/// slots' cgroups, if it uses cgroups: `<the launcher's cgroup>/ferry-<id>`.
pub fn slots_cgroup(data_dir: &Path) -> Option<PathBuf> {
    cgroup_paths(data_dir).ok().map(|(_, base)| base)
}

/// `(<cgroup2 mount><the launcher's cgroup>, that/ferry-<id>)`, the latter created, after
/// checking that the kernel has `cgroup.kill` (Linux 5.14) and that a slot cgroup can be made
/// there.
fn cgroup_base(data_dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (parent, base) = cgroup_paths(data_dir)?;
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    if !base.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&base);
        return Err("the kernel has no cgroup.kill (Linux 5.14 or later has)".into());
    }
    // A probe: a cgroup that cannot take processes fails here rather than at the first attempt.
    let probe = base.join("probe");
    std::fs::create_dir_all(&probe).map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
    let _ = std::fs::remove_dir(&probe);
    Ok((parent, base))
}

/// `(<cgroup2 mount><the launcher's cgroup>, that/ferry-<id>)`.
fn cgroup_paths(data_dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4))?
        })
        .ok_or("no cgroup v2 hierarchy is mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process is in no cgroup v2")?;
    let parent = Path::new(mount).join(own.trim_start_matches('/'));
    if !parent.join("cgroup.procs").exists() {
        return Err(format!(
            "the launcher's cgroup {} is not visible",
            parent.display()
        ));
    }
    let base = parent.join(format!(
        "ferry-{:016x}",
        fnv1a(data_dir.as_os_str().as_encoded_bytes())
    ));
    Ok((parent, base))
}

/// FNV-1a: a name for the data directory that stays the same across versions of the launcher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn slot_cgroups(base: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.strip_prefix("slot-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

/// Whether a live process is in cgroup `cg` (or below it). A missing cgroup holds none.
pub fn populated(cg: &Path) -> bool {
    match std::fs::read_to_string(cg.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 1"),
        Err(_) => false,
    }
}

fn members(cg: &Path) -> Vec<i32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

async fn stop_cgroup(cg: &Path, home: &Path, pgid: Option<i32>, grace: Duration) {
    let empty = || pgid.is_none_or(process::group_is_empty) && !populated(cg);
    if empty() {
        return;
    }
    if !grace.is_zero() {
        if let Some(pgid) = pgid {
            process::signal_group(pgid, Signal::SIGTERM);
        }
        let me = std::process::id() as i32;
        for pid in members(cg).into_iter().filter(|&p| p != me) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while !empty() {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + POLL)).await;
        }
        if empty() {
            return;
        }
    }
    if let Some(pgid) = pgid {
        process::signal_group(pgid, Signal::SIGKILL);
    }
    if members(cg).contains(&(std::process::id() as i32)) {
        tracing::error!(cgroup = %cg.display(), "the launcher is in a slot's cgroup; leaving it before killing it");
        go_home(home);
    }
    if let Err(e) = std::fs::write(cg.join("cgroup.kill"), "1")
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(cgroup = %cg.display(), error = %e, "cannot kill the slot's cgroup");
    }
    let deadline = Instant::now() + AFTER_KILL;
    while !empty() {
        if Instant::now() >= deadline {
            tracing::error!(cgroup = %cg.display(), members = ?members(cg), "processes survived SIGKILL");
            return;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + POLL)).await;
    }
}

/// Stops the groups of every process that carries `FERRY_ATTEMPT_ID=attempt_id`, until none is
/// left (a process may start another while its group is being stopped).
async fn sweep(attempt_id: &str, grace: Duration) {
    for _ in 0..3 {
        let pids = process::processes_with_env("FERRY_ATTEMPT_ID", attempt_id);
        if pids.is_empty() {
            return;
        }
        let mut groups: Vec<i32> = pids.iter().filter_map(|&p| process::group_of(p)).collect();
        groups.sort_unstable();
        groups.dedup();
        for pgid in groups {
            tracing::debug!(pgid, "stopping a process group that left the attempt's");
            process::stop_group(pgid, grace).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_name_of_a_data_directory_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_ne!(fnv1a(b"/data/1"), fnv1a(b"/data/2"));
    }
}
