//! Starting a task's first process, born in its slot's cgroup without the launcher entering it.
//!
//! The standard library starts a process in its parent's cgroup, so the fallback (in
//! [`crate::contain`]) moves the launcher into the slot's cgroup around the spawn. That migrates
//! every thread of the launcher, twice per task: 0.4–0.6 ms of system time from a process of 24
//! threads against 0.06 ms for the spawn itself, and 1.6–2.1 ms a task in a fan-out of the
//! embedded system, where the migrations also slow every other thread that forks or exits
//! (BENCHMARKS.md, "Starting each task in its cgroup with `clone3`").
//!
//! Linux 5.7's `clone3` takes the cgroup a child is born in (`CLONE_INTO_CGROUP`). [`start`]
//! clones the way `posix_spawn` does: the child shares the launcher's memory and runs on a stack
//! of its own while the calling thread waits for its exec (`CLONE_VM | CLONE_VFORK`); it resets
//! the signal handlers, joins its own process group, drops to the task's user, sets up its
//! standard streams and directory and executes the program, making only system calls. If a step
//! fails, its error comes back through the memory both share and the child exits. The child's
//! first instructions, on its new stack, are assembly, written for x86-64: elsewhere, and where
//! a seccomp filter refuses `clone3` (Docker's default profile does), [`start`] says so with
//! [`Start::Unsupported`] and the launcher falls back to moving itself.
//!
//! The process is waited for through a pidfd (`CLONE_PIDFD`), which the runtime's event loop
//! watches: [`Leader`] stands for it, or for a child the standard library started.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use nix::libc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::state::Owner;

/// How to start a task's first process.
pub(crate) struct Spec {
    /// The program's path (a bare name has been resolved against the task's PATH).
    pub program: PathBuf,
    /// The name the program sees as its own (`argv[0]`): what the task's command said.
    pub arg0: OsString,
    pub args: Vec<OsString>,
    /// The whole environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    pub stdout: File,
    pub stderr: File,
    /// The user the process runs as, when not the launcher's.
    pub owner: Option<Owner>,
}

impl Spec {
    /// The same start through the standard library (`posix_spawn` unless a user is set): the
    /// process is born in the launcher's cgroup.
    pub fn command(&self) -> io::Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg0(&self.arg0)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(self.stdout.try_clone()?)
            .stderr(self.stderr.try_clone()?)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(owner) = self.owner {
            // The standard library drops the supplementary groups too when it changes the uid.
            cmd.uid(owner.uid).gid(owner.gid);
        }
        Ok(cmd)
    }
}

/// Why [`start`] did not start the process.
#[derive(Debug)]
pub(crate) enum Start {
    /// `clone3` into a cgroup is not available here: start processes another way.
    Unsupported(io::Error),
    /// `clone3` failed this time (a cgroup that cannot take processes, or was removed, …).
    Clone(io::Error),
    /// The process could not be started (the program does not exist, the directory is
    /// missing, …): the same error another way would give.
    Failed(io::Error),
}

/// A task's first process, started by [`start`] or by the standard library. Killed if dropped
/// before it has been waited for, as the standard library's `kill_on_drop` does.
pub(crate) enum Leader {
    Direct(Direct),
    Std(tokio::process::Child),
}

impl Leader {
    pub fn id(&self) -> Option<i32> {
        match self {
            Leader::Direct(d) => Some(d.pid),
            Leader::Std(c) => c.id().map(|p| p as i32),
        }
    }

    /// Waits for the process to end and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Leader::Direct(d) => d.wait().await,
            Leader::Std(c) => c.wait().await,
        }
    }
}

/// A process started by [`start`]: its pid, and a pidfd that becomes readable when it ends.
pub(crate) struct Direct {
    pid: i32,
    pidfd: OwnedFd,
    reaped: bool,
}

impl Direct {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        // SAFETY: the pidfd is open and stays so (`self` owns it) while `ready` lives.
        let ready = unsafe { AsyncFd::register_with_interest(self.pidfd.as_raw_fd(), Interest::READABLE)? };
        loop {
            let mut guard = ready.readable().await?;
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            guard.clear_ready();
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        // SAFETY: waitpid writes the status into the integer it is given.
        match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
            0 => Ok(None),
            -1 => Err(io::Error::last_os_error()),
            _ => {
                self.reaped = true;
                Ok(Some(ExitStatus::from_raw(status)))
            }
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        if !self.reaped {
            // Not reaped, so the pid still names our child, even if it has ended.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
            let _ = self.try_wait();
        }
    }
}

/// What the child reads, and where it writes why it failed. Shared with the launcher's thread,
/// which waits, suspended, until the child has executed the program or exited.
#[repr(C)]
struct Shared {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// stdin, stdout and stderr, in that order.
    fds: [libc::c_int; 3],
    /// `(uid, gid)` to switch to, when `owner` is set.
    owner: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// Set by the child when a step failed: which (a `STEP_*`) and its errno.
    failed_step: libc::c_int,
    errno: libc::c_int,
}

/// The child's steps, numbered for `Shared::failed_step`.
const STEP_NONE: libc::c_int = 0;
const STEP_GROUP: libc::c_int = 1;
const STEP_USER: libc::c_int = 2;
const STEP_STREAMS: libc::c_int = 3;
const STEP_DIR: libc::c_int = 4;
const STEP_EXEC: libc::c_int = 5;

/// `CLONE_INTO_CGROUP` (the libc crate has it, deprecated for its type).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child's stack: it makes a few dozen system calls and calls nothing that recurses.
const STACK_BYTES: usize = 64 * 1024;

/// Starts `spec`'s process in the cgroup whose directory is open as `cgroup`, returning once the
/// program has been executed (or has failed to be).
pub(crate) fn start(spec: &Spec, cgroup: &File) -> Result<Direct, Start> {
    let failed = |e: io::Error| Start::Failed(e);
    let c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| {
            failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{s:?} holds a NUL byte"),
            ))
        })
    };
    let program = c(spec.program.as_os_str())?;
    let argv = std::iter::once(c(&spec.arg0))
        .chain(spec.args.iter().map(|a| c(a)))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            c(&kv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = c(spec.cwd.as_os_str())?;
    let argv_ptrs: Vec<_> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp_ptrs: Vec<_> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let stdin = File::open("/dev/null").map_err(failed)?;
    let mut shared = Shared {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: cwd.as_ptr(),
        fds: [
            stdin.as_raw_fd(),
            spec.stdout.as_raw_fd(),
            spec.stderr.as_raw_fd(),
        ],
        owner: spec.owner.is_some(),
        uid: spec.owner.map_or(0, |o| o.uid),
        gid: spec.owner.map_or(0, |o| o.gid),
        failed_step: STEP_NONE,
        errno: 0,
    };
    let mut process = clone_into(cgroup, &mut shared)?;
    // SAFETY: the child has executed the program or exited (CLONE_VFORK), so it no longer
    // writes to `shared`; the read is volatile since the compiler cannot see that write.
    let (step, errno) = unsafe {
        (
            std::ptr::read_volatile(&shared.failed_step),
            std::ptr::read_volatile(&shared.errno),
        )
    };
    if step == STEP_NONE {
        return Ok(process);
    }
    // The child exited with status 127 right after failing: reap it now.
    let mut status = 0;
    // SAFETY: waitpid writes the status into the integer it is given.
    unsafe { libc::waitpid(process.pid, &mut status, 0) };
    process.reaped = true;
    let e = io::Error::from_raw_os_error(errno);
    Err(failed(match step {
        STEP_EXEC => e,
        STEP_DIR => io::Error::new(e.kind(), format!("cannot change to {}: {e}", spec.cwd.display())),
        STEP_USER => io::Error::new(e.kind(), format!("cannot switch to the task's user: {e}")),
        STEP_STREAMS => io::Error::new(e.kind(), format!("cannot set up the standard streams: {e}")),
        _ => io::Error::new(e.kind(), format!("cannot start a process group: {e}")),
    }))
}

#[cfg(target_arch = "x86_64")]
fn clone_into(cgroup: &File, shared: &mut Shared) -> Result<Direct, Start> {
    let mut stack = vec![0u128; STACK_BYTES / 16];
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone_args is plain integers; zero is "not used" for every field set below.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    args.stack = stack.as_mut_ptr() as u64;
    args.stack_size = STACK_BYTES as u64;
    args.cgroup = cgroup.as_raw_fd() as u64;

    // Every signal is blocked across the clone, so that no handler of the launcher's runs in
    // the child (on the launcher's memory); the child resets the handlers before unblocking.
    // SAFETY: sigfillset and pthread_sigmask write into the sets they are given.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
    }
    let ret: libc::c_long;
    // SAFETY: clone3 with CLONE_VM | CLONE_VFORK suspends this thread until the child has
    // executed a program or exited. The child starts on `stack` (the kernel sets its stack
    // pointer to the end of it; 16-byte aligned, as a call needs) with this thread's other
    // registers, so `child` and `shared` are where the child finds them; `child` never
    // returns. rcx and r11 are not used for the inputs: `syscall` overwrites them. `stack`,
    // `shared` and the strings it points to outlive the child's use of them.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            // The child, on its own stack: no frame above this one.
            "xor ebp, ebp",
            "mov rdi, {shared}",
            "call {child}",
            "ud2",
            "2:",
            child = in(reg) child as extern "C" fn(*mut Shared) -> !,
            shared = in(reg) shared as *mut Shared,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &mut args as *mut libc::clone_args,
            in("rsi") std::mem::size_of::<libc::clone_args>(),
            out("rcx") _,
            out("r11") _,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
    }
    drop(stack);
    if ret < 0 {
        let e = io::Error::from_raw_os_error(-ret as i32);
        return Err(match -ret as i32 {
            // No clone3 (before 5.3, or refused by a seccomp filter), no CLONE_INTO_CGROUP
            // (before 5.7) or not allowed to: start the process another way.
            libc::ENOSYS | libc::EINVAL | libc::EPERM | libc::E2BIG | libc::EOPNOTSUPP => {
                Start::Unsupported(e)
            }
            // EACCES, EBUSY (a cgroup that cannot take processes), ENOENT, EAGAIN, ENOMEM…
            _ => Start::Clone(e),
        });
    }
    // SAFETY: CLONE_PIDFD stored a new file descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Direct {
        pid: ret as i32,
        pidfd,
        reaped: false,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn clone_into(_: &File, _: &mut Shared) -> Result<Direct, Start> {
    Err(Start::Unsupported(io::Error::new(
        io::ErrorKind::Unsupported,
        "starting a process in a cgroup is written for x86-64 only",
    )))
}

/// The child, between the clone and the exec. It shares the launcher's memory (and, since the
/// C library does not know of it, the calling thread's errno), so it only makes system calls and
/// writes nothing but `shared`'s error fields.
#[cfg(target_arch = "x86_64")]
extern "C" fn child(shared: *mut Shared) -> ! {
    // SAFETY: `shared` points to the launcher's `Shared`, alive until this child has executed
    // a program or exited; every call below is a system call on values it holds.
    unsafe {
        let s = &*shared;
        let fail = |step: libc::c_int| -> ! {
            let errno = *libc::__errno_location();
            std::ptr::write_volatile(&raw mut (*shared).errno, errno);
            std::ptr::write_volatile(&raw mut (*shared).failed_step, step);
            libc::_exit(127)
        };
        // Handlers of the launcher's must not run here (they would on its memory), and exec
        // resets them anyway; SIGPIPE, which the launcher ignores, gets its default back as the
        // standard library's spawn gives it. Other ignored signals stay ignored.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let handler = old.sa_sigaction;
            if handler != libc::SIG_DFL && (handler != libc::SIG_IGN || sig == libc::SIGPIPE) {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        if libc::setpgid(0, 0) != 0 {
            fail(STEP_GROUP);
        }
        if s.owner {
            // Raw system calls: the C library's setuid would ask every thread of what it takes
            // for this process (the launcher's) to switch too.
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setgid, s.gid) != 0
                || libc::syscall(libc::SYS_setuid, s.uid) != 0
            {
                fail(STEP_USER);
            }
        }
        // Each stream is first copied above 2, so that setting one up cannot overwrite the
        // source of the next; the copies close on exec, the dup2'd ones stay open.
        let mut above = [0; 3];
        for (i, fd) in s.fds.iter().enumerate() {
            above[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
            if above[i] < 0 {
                fail(STEP_STREAMS);
            }
        }
        for (target, fd) in above.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail(STEP_STREAMS);
            }
        }
        if libc::chdir(s.cwd) != 0 {
            fail(STEP_DIR);
        }
        libc::execve(s.program, s.argv, s.envp);
        fail(STEP_EXEC)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use ferry_launcher::backend::AttemptError;

    use super::*;
    use crate::contain::Contain;

    /// A directory, and slot cgroups to start processes in, when this machine lets tests make
    /// them (root and a cgroup v2 mount); None elsewhere, where [`start`] is not used.
    fn slot_cgroups() -> Option<(tempfile::TempDir, Contain)> {
        let dir = tempfile::tempdir().unwrap();
        let c = Contain::detect(dir.path(), nix::unistd::Uid::effective().is_root());
        if !matches!(c, Contain::Cgroup { .. }) {
            eprintln!("no cgroup v2 to start processes in here: not checked");
            return None;
        }
        Some((dir, c))
    }

    fn spec(dir: &Path, program: &str, args: &[&str]) -> Spec {
        let out = |name: &str| File::create(dir.join(name)).unwrap();
        Spec {
            program: program.into(),
            arg0: Path::new(program).file_name().unwrap().into(),
            args: args.iter().map(OsString::from).collect(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("ONLY".into(), "this".into()),
            ],
            cwd: dir.to_path_buf(),
            stdout: out("stdout"),
            stderr: out("stderr"),
            owner: None,
        }
    }

    async fn run(c: &Contain, spec: &Spec) -> io::Result<(ExitStatus, String)> {
        let (mut leader, born_in_cgroup) =
            c.start(0, spec).map_err(|e| io::Error::other(format!("{e:?}")))?;
        assert!(born_in_cgroup);
        let Contain::Cgroup { direct, .. } = c else {
            unreachable!()
        };
        assert_eq!(
            matches!(leader, Leader::Direct(_)),
            direct.load(Ordering::Relaxed)
        );
        let status = leader.wait().await?;
        Ok((status, std::fs::read_to_string(spec.cwd.join("stdout"))?))
    }

    #[tokio::test]
    async fn a_process_is_born_in_the_slot_cgroup_with_only_what_it_was_given() {
        born_in_the_slot_cgroup(true).await
    }

    /// The same through the standard library, the launcher moving itself into the cgroup.
    #[tokio::test]
    async fn without_clone3_a_process_is_born_in_the_slot_cgroup_too() {
        born_in_the_slot_cgroup(false).await
    }

    async fn born_in_the_slot_cgroup(with_clone3: bool) {
        let Some((dir, c)) = slot_cgroups() else {
            return;
        };
        let Contain::Cgroup { direct, .. } = &c else {
            unreachable!()
        };
        direct.store(with_clone3, Ordering::Relaxed);
        // The shell's signal masks are read first and by builtins: a shell waiting for a child
        // it forked blocks signals meanwhile, which a `grep` of its status would catch.
        let script = "while read -r l; do case $l in Sig[BI]*) echo \"$l\";; esac; done < /proc/$$/status; \
                      cat /proc/self/cgroup; echo \"argv0=$0 cwd=$(pwd)\"; env; \
                      read -r stat < /proc/$$/stat; echo \"stat=$stat\"; echo pid=$$; \
                      cat; echo err >&2";
        let spec = spec(dir.path(), "/bin/sh", &["-c", script]);
        let (status, out) = run(&c, &spec).await.unwrap();
        assert!(status.success(), "{status:?}: {out}");
        let Contain::Cgroup { base, .. } = &c else {
            unreachable!()
        };
        let slot = base.join("slot-0");
        let cgroup = out.lines().find_map(|l| l.strip_prefix("0::/")).unwrap();
        assert!(slot.ends_with(cgroup), "{cgroup} is not {}", slot.display());
        assert!(
            out.contains(&format!("argv0=sh cwd={}\n", dir.path().display())),
            "{out}"
        );
        let env: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("ONLY=") || l.starts_with("PATH="))
            .collect();
        assert_eq!(env, ["PATH=/usr/bin:/bin", "ONLY=this"], "{out}");
        assert!(!out.contains("HOME="), "the launcher's environment leaked: {out}");
        // Its own process group; no signal blocked, SIGPIPE not ignored (the test process ignores
        // it; signals ignored since before the test process started stay ignored, as with exec).
        let pid = out.lines().find_map(|l| l.strip_prefix("pid=")).unwrap();
        let stat = out.lines().find_map(|l| l.strip_prefix("stat=")).unwrap();
        let pgrp = stat.rsplit_once(") ").unwrap().1.split(' ').nth(2).unwrap();
        assert_eq!(pgrp, pid, "{stat}");
        assert!(out.contains("SigBlk:\t0000000000000000\n"), "{out}");
        let ignored = out.lines().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE is ignored: {out}"
        );
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();
        let ours = ours.lines().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
        let ours = u64::from_str_radix(ours, 16).unwrap();
        assert_ne!(
            ours & (1 << (libc::SIGPIPE - 1)),
            0,
            "the test process should ignore SIGPIPE"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stderr")).unwrap(),
            "err\n"
        );
        c.remove();
    }

    #[tokio::test]
    async fn exits_and_signals_come_back_as_the_standard_library_reports_them() {
        let Some((dir, c)) = slot_cgroups() else {
            return;
        };
        let (status, _) = run(&c, &spec(dir.path(), "/bin/sh", &["-c", "exit 3"]))
            .await
            .unwrap();
        assert_eq!(status.code(), Some(3));
        let (status, _) = run(&c, &spec(dir.path(), "/bin/sh", &["-c", "kill -TERM $$"]))
            .await
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        c.remove();
    }

    #[tokio::test]
    async fn what_cannot_be_started_fails_with_the_error_of_its_step() {
        let Some((dir, c)) = slot_cgroups() else {
            return;
        };
        let Contain::Cgroup { base, .. } = &c else {
            unreachable!()
        };
        std::fs::create_dir_all(base.join("slot-0")).unwrap();
        let cgroup = File::open(base.join("slot-0")).unwrap();
        let failed = |spec: &Spec| match start(spec, &cgroup) {
            Err(Start::Failed(e)) => e,
            Err(other) => panic!("not a failure of the process's: {other:?}"),
            Ok(_) => panic!("started"),
        };
        let e = failed(&spec(dir.path(), "/nonexistent/program", &[]));
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

        let not_executable = dir.path().join("data.txt");
        std::fs::write(&not_executable, "x").unwrap();
        let e = failed(&spec(dir.path(), not_executable.to_str().unwrap(), &[]));
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");

        let mut elsewhere = spec(dir.path(), "/bin/true", &[]);
        elsewhere.cwd = dir.path().join("gone");
        let e = failed(&elsewhere);
        assert!(e.to_string().starts_with("cannot change to "), "{e}");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

        // Through the launcher's start, it is the task's fault, naming the program.
        match c.start(0, &spec(dir.path(), "/nonexistent/program", &[])) {
            Err(AttemptError::Task(m)) => {
                assert!(m.starts_with("cannot start \"program\": "), "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(cgroup);
        c.remove();
    }

    #[tokio::test]
    async fn a_process_dropped_before_it_was_waited_for_is_killed() {
        let Some((dir, c)) = slot_cgroups() else {
            return;
        };
        let (leader, _) = c.start(0, &spec(dir.path(), "/bin/sleep", &["1000"])).unwrap();
        let pid = leader.id().unwrap();
        assert!(crate::process::is_alive(pid));
        drop(leader);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::process::is_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} outlived its handle");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        c.remove();
    }
}
