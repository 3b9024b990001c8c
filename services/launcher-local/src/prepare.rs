//! Turning a dispatch into something to run: templates filled, input files checked and
//! written, the environment built. Every failure is a message for the attempt's report.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use ferry_event::payload::{Runner, TaskDispatched};
use ferry_event::template::{Part, Template};

use crate::secrets::{ENV_PREFIX, Secrets};
use crate::state;

/// What to start, fully resolved.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment of the process.
    pub env: Vec<(OsString, OsString)>,
    /// Input files: path relative to the working directory, and content.
    pub inputs: Vec<(PathBuf, String)>,
}

/// Resolves a dispatch for the working directory `work_dir`. `base_env` is the launcher's own
/// environment.
pub fn prepare(
    d: &TaskDispatched,
    work_dir: &str,
    outputs_path: &str,
    secrets: &Secrets,
    base_env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Prepared, String> {
    if !matches!(d.runner, Runner::Local(_)) {
        return Err(format!(
            "runner type {:?} cannot run on the local launcher",
            d.runner.backend()
        ));
    }
    if !d.output_files.is_empty() {
        // Output files are stored under <artifact_dir>/<job>/<task>/<attempt>/.
        for (what, id) in [("job id", &d.job_id), ("task id", &d.task_id)] {
            state::check_id(id).map_err(|why| {
                format!("{what} {id:?} cannot name the directory output files are stored in: {why}")
            })?;
        }
    }
    let fill = |t: &Template, field: &str| fill(t, field, work_dir, secrets);

    let mut argv = Vec::with_capacity(d.command.len());
    for (i, t) in d.command.iter().enumerate() {
        argv.push(fill(t, &format!("command[{i}]"))?);
    }
    let Some((program, args)) = argv.split_first() else {
        return Err("command is empty: give at least the program to run".into());
    };
    if program.is_empty() {
        return Err("command[0] is empty: it must name the program to run".into());
    }

    let mut task_env = Vec::with_capacity(d.env.len());
    for (name, t) in &d.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "env: {name:?} is not a valid variable name (it must be non-empty, without '=' or NUL)"
            ));
        }
        task_env.push((name.clone(), fill(t, &format!("env.{name}"))?));
    }

    let mut inputs = Vec::with_capacity(d.input_files.len());
    for (name, t) in &d.input_files {
        let path = check_input_name(name)?;
        inputs.push((path, fill(t, &format!("inputFiles.{name}"))?));
    }

    let ferry_env = [
        ("FERRY_JOB_ID", d.job_id.clone()),
        ("FERRY_TASK_ID", d.task_id.clone()),
        ("FERRY_ATTEMPT_ID", d.attempt_id.clone()),
        ("FERRY_WORKING_DIR", work_dir.to_string()),
        ("FERRY_OUTPUTS", outputs_path.to_string()),
    ];
    for (name, value) in &ferry_env {
        if value.contains('\0') {
            return Err(format!("{name} would contain a NUL byte"));
        }
    }
    Ok(Prepared {
        program: program.clone(),
        args: args.to_vec(),
        env: build_env(base_env, task_env, ferry_env),
        inputs,
    })
}

/// Fills the launcher's placeholders of one template; `field` names it in errors.
pub fn fill(t: &Template, field: &str, work_dir: &str, secrets: &Secrets) -> Result<String, String> {
    let filled = t.fill(|part| match part {
        Part::WorkingDir => Ok(Some(work_dir.to_string())),
        Part::Secret(name) => match secrets.get(name) {
            Some(v) => Ok(Some(v.to_string())),
            None => Err(format!(
                "{field}: secret {name:?} is not set: set {ENV_PREFIX}{name} in the launcher's \
                 environment or add {name} to its secrets file"
            )),
        },
        Part::Output { task, key } => Err(format!(
            "{field}: {{{{ outputs.{task}.{key} }}}} was not filled in before dispatch \
             (the scheduler resolves upstream outputs)"
        )),
        Part::Text(_) => Ok(None),
    })?;
    let text = filled
        .as_text()
        .ok_or_else(|| format!("{field}: a placeholder was left unfilled"))?;
    if text.contains('\0') {
        return Err(format!("{field}: the value contains a NUL byte"));
    }
    Ok(text)
}

/// Checks an input file name: a relative path that stays inside the working directory.
pub fn check_input_name(name: &str) -> Result<PathBuf, String> {
    let refuse = |why: &str| Err(format!("inputFiles: {name:?} is refused: {why}"));
    if name.is_empty() {
        return refuse("the name is empty");
    }
    if name.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    if name.contains('\\') {
        return refuse("it contains a backslash; separate directories with '/'");
    }
    if name.starts_with('/') {
        return refuse("it is an absolute path; give a path relative to the working directory");
    }
    let path = Path::new(name);
    let mut normal = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => normal.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return refuse("it contains a '..' component; it must stay inside the working directory");
            }
            Component::RootDir | Component::Prefix(_) => {
                return refuse("it is an absolute path; give a path relative to the working directory");
            }
        }
    }
    if normal.as_os_str().is_empty() {
        return refuse("it names the working directory itself, not a file");
    }
    Ok(normal)
}

/// Writes input files into `work` (which exists). Names must have passed
/// [`check_input_name`]; each file's directory is checked again, after creation, to be inside
/// `work`, and the file itself is never opened through a symbolic link.
pub fn write_inputs(work: &Path, inputs: &[(PathBuf, String)]) -> Result<(), String> {
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
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("inputFiles: cannot create the directory of {shown:?}: {e}"))?;
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
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("inputFiles: cannot write {shown:?}: {e}"))?;
        file.write_all(content.as_bytes())
            .map_err(|e| format!("inputFiles: cannot write {shown:?}: {e}"))?;
    }
    Ok(())
}

/// The launcher's environment as tasks inherit it: without any `FERRY_SECRET_*` variable.
pub fn base_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| !k.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()))
        .collect()
}

/// The environment of a task: `base` without any `FERRY_SECRET_*` variable, then the task's
/// own variables, then ferry's (which win).
pub fn build_env<'a>(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    task: Vec<(String, String)>,
    ferry: impl IntoIterator<Item = (&'a str, String)>,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = base_env(base).into_iter().collect();
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
    fn hostile_input_names_are_refused_with_the_name() {
        for bad in [
            "../x",
            "/etc/x",
            "a/../../x",
            "a/..",
            "",
            "a\\b",
            "a\0b",
            ".",
            "./",
        ] {
            let err = check_input_name(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(check_input_name("./a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
    }

    #[test]
    fn inputs_are_not_written_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, work.join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), work.join("f")).unwrap();
        let err = write_inputs(&work, &[("dir/x".into(), "no".into())]).unwrap_err();
        assert!(err.contains("outside the working directory"), "{err}");
        assert!(write_inputs(&work, &[("f".into(), "no".into())]).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        write_inputs(&work, &[("a/b/c.txt".into(), "yes".into())]).unwrap();
        assert_eq!(std::fs::read_to_string(work.join("a/b/c.txt")).unwrap(), "yes");
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

    #[test]
    fn templates_fill_working_dir_and_secrets_and_refuse_outputs() {
        let mut secrets = Secrets::new();
        secrets.insert("TOKEN", "s3cret");
        let t = Template(vec![
            Part::WorkingDir,
            Part::Text("/x?".into()),
            Part::Secret("TOKEN".into()),
        ]);
        assert_eq!(fill(&t, "command[1]", "/w", &secrets).unwrap(), "/w/x?s3cret");
        let missing = Template(vec![Part::Secret("NOPE".into())]);
        let err = fill(&missing, "env.X", "/w", &secrets).unwrap_err();
        assert!(
            err.contains("FERRY_SECRET_NOPE") && err.contains("env.X"),
            "{err}"
        );
        let out = Template(vec![Part::Output {
            task: "a".into(),
            key: "k".into(),
        }]);
        let err = fill(&out, "command[0]", "/w", &secrets).unwrap_err();
        assert!(err.contains("outputs.a.k"), "{err}");
    }
}
