//! Rules on a task's fields that more than one part of ferry applies, each written once: the
//! flow checker calls them to report located problems, and a launcher calls them again on what a
//! dispatch carries (defence in depth: a dispatch need not come from a checked flow).
//!
//! - [`input_file_name`]: an `inputFiles` name stays inside the working directory;
//! - [`output_pattern`]: an `outputFiles` pattern is a relative glob that stays inside it;
//! - [`memory_bytes`]: a `resources.memory` quantity in bytes;
//! - [`runner_params`], [`runner`]: a task's runner with the flow's `defaults` merged in.
//!
//! Each returns what is wrong as a sentence without the value's location, for the caller to
//! place (`tasks[0].inputFiles["a"]` for the checker, the attempt's report for a launcher).

use std::path::{Component, Path, PathBuf};

use ferry_event::payload::Runner;
use serde_json::{Map, Value};

use crate::yaml::truncate;

/// Checks an input file name and returns the relative path it names, normalized (`./a/b` is
/// `a/b`): relative, without `..`, `\` or NUL, naming a file rather than a directory.
pub fn input_file_name(name: &str) -> Result<PathBuf, &'static str> {
    if name.is_empty() {
        return Err("a file name must not be empty");
    }
    if name.contains('\0') {
        return Err("a file name must not contain NUL");
    }
    if name.contains('\\') {
        return Err("a file name must not contain `\\`; separate directories with `/`");
    }
    if name.starts_with('/') {
        return Err("a file name must be relative to the working directory, not absolute");
    }
    if name.split('/').any(|c| c == "..") {
        return Err("a file name must not contain `..`: files stay inside the working directory");
    }
    if name.ends_with('/') {
        return Err("a file name must name a file, not end with `/`");
    }
    let mut normal = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => normal.push(p),
            Component::CurDir => {}
            // Refused above; kept so that no other component can ever pass.
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err("a file name must stay inside the working directory");
            }
        }
    }
    if normal.as_os_str().is_empty() {
        return Err("a file name must name a file, not the working directory itself");
    }
    Ok(normal)
}

/// Checks an output file pattern: a glob relative to the working directory, without `..`.
pub fn output_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        Err("a pattern must not be empty".into())
    } else if p.starts_with('/') || p.contains('\\') || p.contains('\0') {
        Err("a pattern must be relative to the working directory, with `/` between directories".into())
    } else if p.split('/').any(|c| c == "..") {
        Err("a pattern must not contain `..`: outputs are collected from inside the working directory".into())
    } else {
        glob::Pattern::new(p)
            .map(|_| ())
            .map_err(|e| format!("`{}` is not a glob pattern: {}", truncate(p, 60), e.msg))
    }
}

/// Bytes in a Kubernetes-style memory quantity: `512Mi`, `2Gi`, `1G`, `1.5Gi`, or bytes. Typed
/// once, in the event crate, for the checker and every backend.
pub use ferry_event::payload::memory_bytes;

/// A task's runner parameters of type `ty`: the flow's `defaults` for that type, each overridden
/// by the task's own, with `type` set.
pub fn runner_params(
    ty: &str,
    defaults: Option<&Map<String, Value>>,
    own: impl IntoIterator<Item = (String, Value)>,
) -> Map<String, Value> {
    let mut merged = defaults.cloned().unwrap_or_default();
    merged.extend(own.into_iter().filter(|(k, _)| k != "type"));
    merged.insert("type".into(), ty.into());
    merged
}

/// The runner that merged parameters (from [`runner_params`]) describe, or why they describe none.
pub fn runner(params: Map<String, Value>) -> Result<Runner, String> {
    let ty = params
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let runner: Runner = serde_json::from_value(Value::Object(params))
        .map_err(|e| format!("invalid parameters for runner `{ty}`: {e}"))?;
    if let Runner::Agent(a) = &runner {
        a.task_ref()
            .map_err(|e| format!("invalid parameters for runner `{ty}`: {e}"))?;
    }
    Ok(runner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_names_stay_inside_and_name_a_file() {
        assert_eq!(input_file_name("./a/b.txt"), Ok(PathBuf::from("a/b.txt")));
        assert_eq!(input_file_name("a//b"), Ok(PathBuf::from("a/b")));
        for bad in [
            "",
            "../x",
            "/etc/x",
            "a/../../x",
            "a/..",
            "a\\b",
            "a\0b",
            ".",
            "./",
            "a/",
            "./.",
        ] {
            assert!(input_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_are_relative_globs_that_stay_inside() {
        assert!(output_pattern("out/**/*.json").is_ok());
        for bad in ["", "/etc/*", "../*", "a/../../*", "[x", "a\\b", "a\0"] {
            assert!(output_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(output_pattern("[x").unwrap_err().contains("not a glob pattern"));
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(memory_bytes("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("1.5Ki"), Ok(1536));
        assert_eq!(memory_bytes("2048"), Ok(2048));
        for bad in ["", "Mi", "12MB", "1,5Gi", "-1Gi", "1e3"] {
            assert!(memory_bytes(bad).is_err(), "{bad}");
        }
    }
}
