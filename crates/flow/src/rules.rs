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

/// Bytes in a Kubernetes-style memory quantity: `512Mi`, `2Gi`, `1G`, `1.5Gi`, or bytes.
pub fn memory_bytes(q: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{}` is not a memory quantity: write bytes or a number with a unit Ki, Mi, Gi, Ti, k, M, G or T, e.g. `512Mi`, `2Gi`",
            truncate(q, 40)
        )
    };
    const UNITS: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let (num, mult) = UNITS
        .iter()
        .find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let (int, frac) = num.split_once('.').unwrap_or((num, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = (value * mult).ceil();
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("`{q}` is more memory than can be expressed"));
    }
    Ok(bytes as u64)
}

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
    serde_json::from_value(Value::Object(params))
        .map_err(|e| format!("invalid parameters for runner `{ty}`: {e}"))
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
