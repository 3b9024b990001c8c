//! What the `ferry` command writes: task output that cannot drive the terminal, a reader that
//! goes away ending the command quietly, and flow files read with a bound.

mod common;

use common::*;

#[test]
fn control_sequences_in_task_output_are_shown_as_text_unless_raw() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&flow("noisy.yaml"), dir.path(), &[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(!ran.stdout.contains('\x1b') && !ran.stdout.contains('\r') && !ran.stdout.contains('\x07'));
    assert_eq!(
        ran.lines_of("paint"),
        ["\\x1b[31mred\\x1b[0m", "\\x1b]0;title\\x07\\x0dforged"]
    );

    let dir = tempfile::tempdir().unwrap();
    let raw = run(&flow("noisy.yaml"), dir.path(), &["--raw"]);
    assert_eq!(raw.code, 0, "{}", raw.stderr);
    assert_eq!(
        raw.lines_of("paint"),
        ["\x1b[31mred\x1b[0m", "\x1b]0;title\x07\rforged"]
    );
}

#[test]
fn a_run_whose_reader_goes_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ferry();
    c.arg("run")
        .arg(flow("noisy.yaml"))
        .arg("--data-dir")
        .arg(dir.path());
    let ran = first_line_then_close(c);
    assert!(!ran.stdout.is_empty(), "a first line was read");
    assert_eq!(ran.code, 141, "{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
}

#[test]
fn any_command_whose_reader_goes_away_ends_quietly() {
    // More output than a pipe holds, so the reader is gone before it is written.
    let hello = example("hello.yaml");
    let mut c = ferry();
    c.arg("validate").args(std::iter::repeat_n(&hello, 5000));
    let ran = first_line_then_close(c);
    assert!(
        ran.stdout.ends_with("hello.yaml: valid (1 tasks)\n"),
        "{}",
        ran.stdout
    );
    assert_eq!(ran.code, 141, "{}", ran.stderr);
    assert!(ran.stderr.is_empty(), "{}", ran.stderr);
}

#[test]
fn an_endless_flow_file_is_refused_at_the_size_limit() {
    for command in ["validate", "run"] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ferry();
        c.arg(command).arg("/dev/zero");
        if command == "run" {
            c.arg("--data-dir").arg(dir.path());
        }
        let ran = output(c);
        assert_eq!(ran.code, 2, "{command}: {}", ran.stderr);
        assert!(
            ran.stderr
                .contains("/dev/zero is larger than the limit of 16 MiB"),
            "{command}: {}",
            ran.stderr
        );
    }
}

/// A job whose output could not be stored (a full disk under the data directory) does not end
/// in a success: `ferry run` fails, naming the directory and saying the disk is full.
#[test]
fn a_run_whose_output_fills_the_disk_fails_saying_so() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        eprintln!("skipped: mounting a 4 MiB tmpfs for the data directory needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    let data_dir = disk.join("ferry");
    let ran = run(&flow("loud.yaml"), &data_dir, &[]);
    let unmounted = std::process::Command::new("umount").arg(&disk).status();
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains(&format!("the disk holding {} is full", data_dir.display())),
        "{}",
        ran.stderr
    );
    assert!(unmounted.is_ok_and(|s| s.success()), "umount failed");
}
