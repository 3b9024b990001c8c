//! Process groups: who is in one (from `/proc`), and stopping one (SIGTERM, grace, SIGKILL).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

/// How often a stopping group is looked at. There is no event for "the last member of a process
/// group exited" that covers members which are not our children, so this polls `/proc`.
const POLL: Duration = Duration::from_millis(20);
/// How long processes get to vanish after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// The fields of `/proc/<pid>/stat` the launcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    /// Clock ticks after boot at which the process started.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); pgrp is field 5, starttime field 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of a process, if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

/// Whether a process exists and is not a zombie (a zombie has exited; it only awaits reaping).
pub fn is_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Live (not zombie) members of a process group.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X'))
        .collect()
}

/// Live processes whose environment holds `name=value`: how the processes of an attempt whose
/// pid was never recorded are found.
pub fn processes_with_env(name: &str, value: &str) -> Vec<i32> {
    let needle = format!("{name}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                && is_alive(pid)
        })
        .collect()
}

/// The process group of a process.
pub fn group_of(pid: i32) -> Option<i32> {
    proc_stat(pid).map(|s| s.pgrp)
}

/// Whether no live process is left in group `pgid`. Asking the kernel (signal 0) answers at
/// once when the group is gone, the common case; only when it still has members is `/proc`
/// read, to tell live ones from zombies nobody reaps.
pub fn group_is_empty(pgid: i32) -> bool {
    match killpg(Pid::from_raw(pgid), None) {
        Err(nix::errno::Errno::ESRCH) => true,
        _ => group_members(pgid).is_empty(),
    }
}

pub fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, %signal, error = %e, "cannot signal process group"),
    }
}

/// Stops every process in group `pgid`: SIGTERM, up to `grace` for them to exit, then SIGKILL,
/// and waits (bounded) until none is left. Does nothing when the group is already empty.
pub async fn stop_group(pgid: i32, grace: Duration) {
    if group_is_empty(pgid) {
        return;
    }
    tracing::debug!(pgid, "sending SIGTERM to the process group");
    signal_group(pgid, Signal::SIGTERM);
    if wait_empty(pgid, Instant::now() + grace).await {
        return;
    }
    tracing::debug!(pgid, "grace period over: sending SIGKILL to the process group");
    signal_group(pgid, Signal::SIGKILL);
    if !wait_empty(pgid, Instant::now() + AFTER_KILL).await {
        tracing::error!(pgid, members = ?group_members(pgid), "processes survived SIGKILL");
    }
}

async fn wait_empty(pgid: i32, deadline: Instant) -> bool {
    loop {
        if group_is_empty(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + POLL)).await;
    }
}

/// How a process ended, as (exit code, error): `(Some(0), None)` for success.
pub fn describe_exit(status: ExitStatus) -> (Option<i32>, Option<String>) {
    if let Some(code) = status.code() {
        let error = (code != 0).then(|| format!("exited with status {code}"));
        return (Some(code), error);
    }
    if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {sig}"));
        return (None, Some(format!("killed by signal {name}")));
    }
    (None, Some(format!("ended without an exit status ({status})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "1234 (a) b (c)) S 1 1230 1230 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 1230);
        assert_eq!(s.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn our_own_process_is_visible() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(start_time(me).is_some());
    }

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), (Some(0), None));
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            (Some(3), Some("exited with status 3".into()))
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            (None, Some("killed by signal SIGKILL".into()))
        );
    }
}
