//! Turning a dispatch into something to run: templates filled, input files checked and
//! written, the environment built. Every failure is a message for the attempt's report.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry_event::template::Template;
use ferry_launcher::backend::{AttemptError, Task};
use ferry_launcher::secrets::ENV_PREFIX;
use ferry_launcher::template::check_input_name;

use crate::state::Owner;

/// What to start, fully resolved.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment of the process.
    pub env: Vec<(OsString, OsString)>,
    /// Input files: path relative to the working directory, and content.
    pub inputs: Vec<(PathBuf, String)>,
    /// The directory the process starts in, when not the attempt's working directory (an
    /// agent's registered `workingDir`).
    pub cwd: Option<PathBuf>,
}

/// Resolves a dispatch for the working directory `work_dir`. `base_env` is the launcher's own
/// environment. The runner, the resources and the ids were checked before
/// ([`crate::backend::Local`]'s `check`); every failure here is the task's.
pub fn prepare(
    task: Task<'_>,
    work_dir: &str,
    outputs_path: &str,
    subtasks_path: &str,
    base_env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Prepared, AttemptError> {
    let d = task.dispatch;
    let fill = |t: &Template, field: &str| task.fill(t, field, work_dir);
    let refuse = |why: String| AttemptError::Task(why);

    let mut argv = Vec::with_capacity(d.command.len());
    for (i, t) in d.command.iter().enumerate() {
        argv.push(fill(t, &format!("command[{i}]"))?);
    }
    let Some((program, args)) = argv.split_first() else {
        return Err(refuse(
            "command is empty: give at least the program to run".into(),
        ));
    };
    if program.is_empty() {
        return Err(refuse(
            "command[0] is empty: it must name the program to run".into(),
        ));
    }

    let mut task_env = Vec::with_capacity(d.env.len());
    for (name, t) in &d.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(refuse(format!(
                "env: {name:?} is not a valid variable name (it must be non-empty, without '=' or NUL)"
            )));
        }
        task_env.push((name.clone(), fill(t, &format!("env.{name}"))?));
    }

    let mut inputs = Vec::with_capacity(d.input_files.len());
    for (name, t) in &d.input_files {
        let path = check_input_name(name).map_err(refuse)?;
        inputs.push((path, fill(t, &format!("inputFiles.{name}"))?));
    }

    let ferry_env = [
        ("FERRY_JOB_ID", d.job_id.clone()),
        ("FERRY_TASK_ID", d.task_id.clone()),
        ("FERRY_ATTEMPT_ID", d.attempt_id.clone()),
        ("FERRY_WORKING_DIR", work_dir.to_string()),
        ("FERRY_OUTPUTS", outputs_path.to_string()),
        ("FERRY_SUBTASKS", subtasks_path.to_string()),
    ];
    for (name, value) in &ferry_env {
        if value.contains('\0') {
            return Err(refuse(format!("{name} would contain a NUL byte")));
        }
    }
    Ok(Prepared {
        program: program.clone(),
        args: args.to_vec(),
        env: build_env(base_env, task_env, ferry_env),
        inputs,
        cwd: None,
    })
}

/// Writes input files into `work` (which exists), private to `owner` (the user tasks run as,
/// when not the launcher's): directories 0700, files 0600, whatever the umask. Names must have
/// passed [`check_input_name`]; each file's directory is checked again, after creation, to be
/// inside `work`, and the file itself is never opened through a symbolic link.
pub fn write_inputs(work: &Path, inputs: &[(PathBuf, String)], owner: Option<Owner>) -> Result<(), String> {
    if inputs.is_empty() {
        return Ok(());
    }
    let root = work
        .canonicalize()
        .map_err(|e| format!("cannot resolve the working directory {}: {e}", work.display()))?;
    for (rel, content) in inputs {
        let shown = rel.display();
        let path = root.join(rel);
        let parent = path.parent().unwrap_or(&root);
        // Each missing directory is made (and given to the owner) one at a time.
        let missing: Vec<&Path> = parent
            .ancestors()
            .take_while(|p| *p != root && !p.exists())
            .collect();
        for dir in missing.into_iter().rev() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("inputFiles: cannot create the directory of {shown:?}: {e}"))?;
            if let Some(o) = owner {
                std::os::unix::fs::lchown(dir, Some(o.uid), Some(o.gid)).map_err(|e| {
                    format!("inputFiles: cannot give the directory of {shown:?} to the task's user: {e}")
                })?;
            }
        }
        let real_parent = parent
            .canonicalize()
            .map_err(|e| format!("inputFiles: cannot resolve the directory of {shown:?}: {e}"))?;
        if !real_parent.starts_with(&root) {
            return Err(format!(
                "inputFiles: {shown:?} is refused: its directory resolves outside the working directory"
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("inputFiles: cannot write {shown:?}: {e}"))?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))
                .map_err(|e| format!("inputFiles: cannot give {shown:?} to the task's user: {e}"))?;
        }
        file.write_all(content.as_bytes())
            .map_err(|e| format!("inputFiles: cannot write {shown:?}: {e}"))?;
    }
    Ok(())
}

/// The variables of the launcher's environment a task gets unless the launcher is told to
/// pass more ([`crate::Config::pass_env`]); a name ending in `*` stands for every name that
/// starts with what comes before it. Nothing else of the launcher's environment reaches a task:
/// not the bus URL, not cloud credentials, not `FERRY_SECRET_*`.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
];

/// A task's `PATH` when the launcher has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Whether `name` is one of `allowed` (see [`DEFAULT_PASS_ENV`] for the form).
pub fn env_allowed<'a>(name: &[u8], allowed: impl IntoIterator<Item = &'a str>) -> bool {
    allowed.into_iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix.as_bytes()),
        None => name == a.as_bytes(),
    })
}

/// The part of the launcher's environment `vars` that tasks receive: the variables
/// [`DEFAULT_PASS_ENV`] and `extra` name, never a `FERRY_SECRET_*`, with `PATH` set to
/// [`DEFAULT_PATH`] when the launcher has none.
pub fn base_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[String],
) -> Vec<(OsString, OsString)> {
    let allowed = || {
        DEFAULT_PASS_ENV
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
    };
    let mut env: BTreeMap<OsString, OsString> = vars
        .into_iter()
        .filter(|(k, _)| {
            let k = k.as_encoded_bytes();
            !k.starts_with(ENV_PREFIX.as_bytes()) && env_allowed(k, allowed())
        })
        .collect();
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    env.into_iter().collect()
}

/// The environment of a task: `base` (what [`base_env`] kept), then the task's own variables,
/// then ferry's (which win).
pub fn build_env<'a>(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    task: Vec<(String, String)>,
    ferry: impl IntoIterator<Item = (&'a str, String)>,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = base
        .into_iter()
        .filter(|(k, _)| !k.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()))
        .collect();
    for (k, v) in task {
        env.insert(k.into(), v.into());
    }
    for (k, v) in ferry {
        env.insert(k.into(), v.into());
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_not_written_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, work.join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), work.join("f")).unwrap();
        let err = write_inputs(&work, &[("dir/x".into(), "no".into())], None).unwrap_err();
        assert!(err.contains("outside the working directory"), "{err}");
        assert!(write_inputs(&work, &[("f".into(), "no".into())], None).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        write_inputs(&work, &[("a/b/c.txt".into(), "yes".into())], None).unwrap();
        assert_eq!(std::fs::read_to_string(work.join("a/b/c.txt")).unwrap(), "yes");
    }

    #[test]
    fn only_allowed_variables_of_the_launcher_pass() {
        let vars: Vec<(OsString, OsString)> = [
            ("PATH", "/bin"),
            ("LC_ALL", "C"),
            ("FERRY_BUS", "amqp://u:pw@h"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("FERRY_SECRET_TOKEN", "t"),
            ("EXTRA_ONE", "1"),
            ("EXTRA_PREFIXED_A", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let names = |env: Vec<(OsString, OsString)>| {
            env.into_iter()
                .map(|(k, _)| k.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(base_env(vars.clone(), &[])), ["LC_ALL", "PATH"]);
        let extra = [
            "EXTRA_ONE".to_string(),
            "EXTRA_PREFIXED_*".into(),
            "FERRY_SECRET_*".into(),
        ];
        assert_eq!(
            names(base_env(vars, &extra)),
            ["EXTRA_ONE", "EXTRA_PREFIXED_A", "LC_ALL", "PATH"]
        );
        let path = base_env(Vec::new(), &[]);
        assert_eq!(path, [("PATH".into(), DEFAULT_PATH.into())]);
    }

    #[test]
    fn secret_variables_never_reach_the_task_and_ferry_variables_win() {
        let env = build_env(
            [
                ("FERRY_SECRET_TOKEN".into(), "s3cret".into()),
                ("PATH".into(), "/bin".into()),
                ("FERRY_JOB_ID".into(), "stale".into()),
            ],
            vec![
                ("GREETING".into(), "hi".into()),
                ("FERRY_JOB_ID".into(), "forged".into()),
            ],
            [("FERRY_JOB_ID", "j1".to_string())],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("FERRY_SECRET_TOKEN"), None);
        assert_eq!(get("PATH").unwrap(), "/bin");
        assert_eq!(get("GREETING").unwrap(), "hi");
        assert_eq!(get("FERRY_JOB_ID").unwrap(), "j1");
    }
}
