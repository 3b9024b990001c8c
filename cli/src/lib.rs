//! The `ferry` command.
//!
//! - [`run`]: `ferry run FLOW` — the whole system in one process ([`embedded`]): in-memory bus,
//!   SQLite, the local launcher; streams logs, shows progress, prints a summary;
//! - `ferry validate FLOW…` and `ferry schema [NAME]`: check flows, print JSON Schemas;
//! - [`services`]: `ferry up` (every service in one process on a broker) and `ferry service NAME`;
//! - [`client`]: `ferry submit`, `status`, `logs`, `cancel`, `retry` against a deployment's api;
//! - [`keys`]: `ferry key create` and `ferry key add`, the bus key file services sign with.
//! - [`output`]: task output shown safely on a terminal, and a closed stdout ending the command
//!   quietly.

#[macro_use]
pub mod output;
pub mod client;
pub mod embedded;
pub mod keys;
pub mod launchers;
pub mod run;
pub mod services;

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ferry_event::payload::Problem;
use serde_json::{Map, Value};

pub const EXIT_OK: i32 = 0;
/// The job failed or was cancelled, its output could not be stored in full, or ferry itself
/// failed.
pub const EXIT_FAILED: i32 = 1;
/// The flow, the inputs or the command line are invalid.
pub const EXIT_INVALID: i32 = 2;

/// The largest flow file read: the api's limit on a request, which a submitted flow must fit in.
pub const FLOW_SIZE_LIMIT: usize = ferry_api::DEFAULT_BODY_LIMIT;

/// Reads a flow file of at most [`FLOW_SIZE_LIMIT`] bytes; returns its text and the name used in
/// problem locations. A larger file (or an endless one, `/dev/zero`) is refused after reading
/// one byte past the limit.
pub fn read_flow(path: &Path) -> Result<(String, String)> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read flow file {name}"))?;
    let mut bytes = Vec::new();
    file.take(FLOW_SIZE_LIMIT as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read flow file {name}"))?;
    if bytes.len() > FLOW_SIZE_LIMIT {
        bail!(
            "flow file {name} is larger than the limit of {} MiB; a flow is a description of tasks, keep data in files its tasks read",
            FLOW_SIZE_LIMIT / (1024 * 1024)
        );
    }
    let source = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "flow file {name} is not UTF-8 text (byte {} is not)",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((source, name))
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

/// Prints problems one per line on stderr, then a count. They quote the flow, so control
/// characters in it are shown, not obeyed.
pub fn print_problems(name: &str, problems: &[Problem]) {
    for p in problems {
        errln!("error: {}", output::visible(&p.to_string()));
    }
    let n = problems.len();
    errln!(
        "{}: {n} problem{}",
        output::visible(name),
        if n == 1 { "" } else { "s" }
    );
}

/// `ferry validate`: exit 0 when every flow is valid, 2 otherwise.
pub fn validate(paths: &[std::path::PathBuf]) -> Result<i32> {
    let mut code = EXIT_OK;
    for path in paths {
        let (source, name) = match read_flow(path) {
            Ok(s) => s,
            Err(e) => {
                errln!("error: {e:#}");
                code = EXIT_INVALID;
                continue;
            }
        };
        match ferry_flow::validate(&source, &name) {
            Ok(flow) => outln!("{name}: valid ({} tasks)", flow.task_count())?,
            Err(problems) => {
                print_problems(&name, &problems);
                code = EXIT_INVALID;
            }
        }
    }
    Ok(code)
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
