//! The `ferry` command.
//!
//! - [`run`]: `ferry run FLOW` — the whole system in one process ([`embedded`]): in-memory bus,
//!   SQLite, the local launcher; streams logs, shows progress, prints a summary;
//! - `ferry validate FLOW…` and `ferry schema [NAME]`: check flows, print JSON Schemas;
//! - [`services`]: `ferry up` (every service in one process on a broker) and `ferry service NAME`;
//! - [`client`]: `ferry submit`, `status`, `logs`, `cancel`, `retry` against a deployment's api;
//! - [`keys`]: `ferry key create` and `ferry key add`, the bus key file services sign with.

pub mod client;
pub mod embedded;
pub mod keys;
pub mod run;
pub mod services;

use std::path::Path;

use anyhow::{Context, Result, bail};
use ferry_event::payload::Problem;
use serde_json::{Map, Value};

pub const EXIT_OK: i32 = 0;
/// The job failed or was cancelled, or ferry itself failed.
pub const EXIT_FAILED: i32 = 1;
/// The flow, the inputs or the command line are invalid.
pub const EXIT_INVALID: i32 = 2;

/// Reads a flow file; returns its text and the name used in problem locations.
pub fn read_flow(path: &Path) -> Result<(String, String)> {
    let source =
        std::fs::read_to_string(path).with_context(|| format!("cannot read flow file {}", path.display()))?;
    Ok((source, path.display().to_string()))
}

/// `k=v` pairs from `--input`; values are strings, converted by the flow's input types.
pub fn parse_inputs(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut inputs = Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--input {pair:?} is not of the form NAME=VALUE");
        };
        if k.is_empty() {
            bail!("--input {pair:?} has an empty name");
        }
        if inputs
            .insert(k.to_string(), Value::String(v.to_string()))
            .is_some()
        {
            bail!("--input {k} is given twice");
        }
    }
    Ok(inputs)
}

/// Prints problems one per line on stderr, then a count.
pub fn print_problems(name: &str, problems: &[Problem]) {
    for p in problems {
        eprintln!("error: {p}");
    }
    let n = problems.len();
    eprintln!("{name}: {n} problem{}", if n == 1 { "" } else { "s" });
}

/// `ferry validate`: exit 0 when every flow is valid, 2 otherwise.
pub fn validate(paths: &[std::path::PathBuf]) -> i32 {
    let mut code = EXIT_OK;
    for path in paths {
        let (source, name) = match read_flow(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                code = EXIT_INVALID;
                continue;
            }
        };
        match ferry_flow::validate(&source, &name) {
            Ok(flow) => println!("{name}: valid ({} tasks)", flow.task_count()),
            Err(problems) => {
                print_problems(&name, &problems);
                code = EXIT_INVALID;
            }
        }
    }
    code
}

/// `ferry schema [NAME]`: the flow schema, or an event payload's schema.
pub fn schema(name: Option<&str>) -> Result<String> {
    let schema = match name {
        None | Some("flow") => ferry_flow::flow_schema(),
        Some(event) => {
            let all = ferry_event::payload::schemas();
            match all.iter().find(|(n, _)| *n == event) {
                Some((_, s)) => s.clone(),
                None => {
                    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
                    bail!(
                        "no schema named {event:?}; choose flow or one of: {}",
                        names.join(", ")
                    )
                }
            }
        }
    };
    Ok(serde_json::to_string_pretty(&schema)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_must_be_name_value_pairs() {
        let ok = parse_inputs(&["day=2026-01-01".into(), "q=a=b".into()]).unwrap();
        assert_eq!(ok["q"], "a=b");
        assert!(
            parse_inputs(&["day".into()])
                .unwrap_err()
                .to_string()
                .contains("NAME=VALUE")
        );
        assert!(parse_inputs(&["=x".into()]).is_err());
        assert!(
            parse_inputs(&["a=1".into(), "a=2".into()])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn schemas_are_found_by_name() {
        assert!(schema(None).unwrap().contains("\"tasks\""));
        assert!(schema(Some("task.dispatched")).unwrap().contains("attemptId"));
        assert!(
            schema(Some("nope"))
                .unwrap_err()
                .to_string()
                .contains("task.finished")
        );
    }
}
