//! Collecting what an attempt produced: its outputs object and its subtasks (parsed and
//! limited here for every backend) and its output files, copied into the artifact store (`file://` for now: a
//! directory of the launcher's machine; `s3://` and `gs://` arrive with the cloud backends).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry_event::payload::OutputFile;
use serde_json::{Map, Value};

/// Where an attempt's output files go in the artifact directory: `JOB/TASK/ATTEMPT`. Every
/// backend stores them there, and the namespace quotas count them there.
pub fn attempt_artifacts(d: &ferry_event::payload::TaskDispatched) -> PathBuf {
    [&d.job_id, &d.task_id, &d.attempt_id].iter().collect()
}

/// The largest outputs file accepted.
pub const MAX_OUTPUTS_BYTES: u64 = 1024 * 1024;

/// Reads the JSON object a task wrote at `$FERRY_OUTPUTS`; no file, or an empty one, means no
/// outputs. The flag says whether the file exists. The file is never opened through a symbolic
/// link, and at most [`MAX_OUTPUTS_BYTES`] of it are read.
pub fn read_outputs(path: &Path) -> Result<(Map<String, Value>, bool), String> {
    match read_outputs_file(path)? {
        Some(bytes) => Ok((parse_outputs(&bytes)?, true)),
        None => Ok((Map::new(), false)),
    }
}

/// The bytes of the outputs file at `path`, `None` when there is none: never through a
/// symbolic link, at most [`MAX_OUTPUTS_BYTES`] + 1 of them (so that [`parse_outputs`] can
/// refuse a larger one).
pub fn read_outputs_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    read_task_file(path, "the outputs file $FERRY_OUTPUTS", MAX_OUTPUTS_BYTES)
}

/// The bytes of the subtasks file at `path`, `None` when there is none: never through a
/// symbolic link, at most [`MAX_SUBTASKS_BYTES`] + 1 of them (so that [`parse_subtasks`] can
/// refuse a larger one).
pub fn read_subtasks_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    read_task_file(path, "the subtasks file $FERRY_SUBTASKS", MAX_SUBTASKS_BYTES)
}

/// A file a task wrote for ferry (`what` names it in errors), at most `max` + 1 bytes of it.
fn read_task_file(path: &Path, what: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {what}: {e}")),
    };
    if !meta.is_file() {
        return Err(format!(
            "{what} must be a regular file (the task replaced it with something else)"
        ));
    }
    if meta.len() > max {
        return Err(too_large_file(what, meta.len(), max));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    Ok(Some(bytes))
}

fn too_large(n: u64) -> String {
    too_large_file("the outputs file $FERRY_OUTPUTS", n, MAX_OUTPUTS_BYTES)
}

fn too_large_file(what: &str, n: u64, max: u64) -> String {
    format!(
        "{what} is too large ({n} bytes); at most {max} bytes ({} MiB) are accepted",
        max / (1024 * 1024)
    )
}

/// The largest subtasks file accepted: its subtasks travel in one `task.finished` event.
pub const MAX_SUBTASKS_BYTES: u64 = 4 * 1024 * 1024;

/// The subtasks in what a task wrote at `$FERRY_SUBTASKS`, however it was fetched: a list of
/// tasks in the flow's task format, JSON or YAML, of at most [`MAX_SUBTASKS_BYTES`]; nothing
/// at all means none. Only the shape is checked here; the scheduler checks the tasks as a
/// flow's. Errors are the task's fault and say what is accepted.
pub fn parse_subtasks(bytes: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    const WHAT: &str = "the subtasks file $FERRY_SUBTASKS";
    if bytes.len() as u64 > MAX_SUBTASKS_BYTES {
        return Err(too_large_file(WHAT, bytes.len() as u64, MAX_SUBTASKS_BYTES));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("{WHAT} is neither JSON nor YAML: it is not UTF-8 text"))?;
            ferry_flow::to_json(text, "$FERRY_SUBTASKS")
                .map_err(|p| format!("{WHAT} is neither JSON nor YAML: {p}"))?
        }
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "{WHAT} must hold a list of tasks (each {{id, runner, command, dependsOn…}}), not {}",
            kind_of(&value)
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(task) => Ok(task),
            other => Err(format!(
                "{WHAT}: subtasks[{i}] must be a task (an object with id, runner, command…), not {}",
                kind_of(&other)
            )),
        })
        .collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The outputs object in what a task wrote at `$FERRY_OUTPUTS`, however it was fetched: a JSON
/// object of at most [`MAX_OUTPUTS_BYTES`]; nothing at all means no outputs. Errors are the
/// task's fault and say what is accepted.
pub fn parse_outputs(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    if bytes.len() as u64 > MAX_OUTPUTS_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("the outputs file $FERRY_OUTPUTS is not valid JSON: {e}"))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "the outputs file $FERRY_OUTPUTS must hold a JSON object, not {}",
            kind_of(&other)
        )),
    }
}

/// Checks an outputFiles pattern ([`ferry_flow::rules::output_pattern`]): relative, without
/// `..`.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    ferry_flow::rules::output_pattern(pattern)
        .map_err(|why| format!("outputFiles: pattern {pattern:?} is refused: {why}"))
}

/// Copies the regular files matching `patterns` inside `work` to `dest/<relative path>`.
/// Matches that resolve outside `work` (through symbolic links) and directories are skipped.
pub fn collect_files(work: &Path, patterns: &[String], dest: &Path) -> Result<Vec<OutputFile>, String> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let root = work
        .canonicalize()
        .map_err(|e| format!("cannot resolve the working directory {}: {e}", work.display()))?;
    let root_str = root
        .to_str()
        .ok_or_else(|| format!("the working directory {} is not valid UTF-8", root.display()))?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut found: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for pattern in patterns {
        check_pattern(pattern)?;
        let full = format!("{}/{pattern}", glob::Pattern::escape(root_str));
        let paths = glob::glob_with(&full, options)
            .map_err(|e| format!("outputFiles: pattern {pattern:?} is invalid: {e}"))?;
        for entry in paths {
            let path = match entry {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(pattern, error = %e, "skipping an unreadable match");
                    continue;
                }
            };
            let Ok(real) = path.canonicalize() else {
                continue; // a dangling link
            };
            if !real.starts_with(&root) {
                tracing::warn!(path = %path.display(), "skipping an output file that leads outside the working directory");
                continue;
            }
            if !real.is_file() {
                continue;
            }
            let Ok(rel) = path.strip_prefix(&root) else {
                continue;
            };
            found.insert(rel.to_path_buf(), real);
        }
    }
    let mut files = Vec::with_capacity(found.len());
    for (rel, real) in found {
        let shown = rel.to_string_lossy().into_owned();
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| format!("cannot store output file {shown:?} in {}: {e}", parent.display()))?;
        }
        let size = copy_private(&real, &target)
            .map_err(|e| format!("cannot copy output file {shown:?} to {}: {e}", target.display()))?;
        let uri = url::Url::from_file_path(&target)
            .map_err(|()| format!("cannot name {} as a file:// URI", target.display()))?;
        files.push(OutputFile {
            path: shown,
            uri: uri.to_string(),
            size,
        });
    }
    Ok(files)
}

/// Copies `from` to a new file `to` that only the launcher's user can read (mode 0600, whatever
/// the file copied allowed), never through a symbolic link on either side.
fn copy_private(from: &Path, to: &Path) -> std::io::Result<u64> {
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(from)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(to)?;
    std::io::copy(&mut src, &mut dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_be_a_small_json_object() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("outputs.json");
        assert_eq!(read_outputs(&p).unwrap(), (Map::new(), false));
        std::fs::write(&p, r#"{"rows": 3}"#).unwrap();
        let (outputs, found) = read_outputs(&p).unwrap();
        assert_eq!((outputs["rows"].as_i64(), found), (Some(3), true));
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_outputs(&p).unwrap(), (Map::new(), true));
        std::fs::write(&p, "[1]").unwrap();
        assert!(read_outputs(&p).unwrap_err().contains("an array"));
        std::fs::write(&p, "{").unwrap();
        assert!(read_outputs(&p).unwrap_err().contains("not valid JSON"));
        std::fs::write(&p, vec![b' '; MAX_OUTPUTS_BYTES as usize + 1]).unwrap();
        assert!(read_outputs(&p).unwrap_err().contains("too large"));
    }

    #[test]
    fn subtasks_are_a_bounded_list_of_tasks_in_json_or_yaml() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("subtasks.json");
        assert_eq!(read_subtasks_file(&p).unwrap(), None);
        assert!(parse_subtasks(b"").unwrap().is_empty());
        assert!(parse_subtasks(b" \n").unwrap().is_empty());
        let json = parse_subtasks(br#"[{"id": "a", "runner": "local", "command": ["true"]}]"#).unwrap();
        let yaml = parse_subtasks(b"- id: a\n  runner: local\n  command: [\"true\"]\n").unwrap();
        assert_eq!(json, yaml);
        assert_eq!(json[0]["id"], "a");
        let e = parse_subtasks(br#"{"id": "a"}"#).unwrap_err();
        assert!(
            e.contains("must hold a list of tasks") && e.contains("an object"),
            "{e}"
        );
        let e = parse_subtasks(br#"[{"id": "a"}, 5]"#).unwrap_err();
        assert!(
            e.contains("subtasks[1] must be a task") && e.contains("a number"),
            "{e}"
        );
        let e = parse_subtasks(b"[: {").unwrap_err();
        assert!(e.contains("neither JSON nor YAML"), "{e}");
        std::fs::write(&p, vec![b' '; MAX_SUBTASKS_BYTES as usize + 1]).unwrap();
        let e = read_subtasks_file(&p).unwrap_err();
        assert!(
            e.contains("$FERRY_SUBTASKS is too large") && e.contains("4 MiB"),
            "{e}"
        );
        let e = parse_subtasks(&vec![b' '; MAX_SUBTASKS_BYTES as usize + 1]).unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn patterns_stay_inside() {
        assert!(check_pattern("out/**/*.json").is_ok());
        for bad in ["", "/etc/*", "../*", "a/../../*", "[x"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
