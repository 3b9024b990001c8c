//! ferry's flow format.
//!
//! A flow is YAML (JSON is accepted, being YAML) describing a graph of tasks. This crate reads
//! it and turns it into a job:
//!
//! - [`validate`] parses a flow keeping every value's line and column, checks its structure
//!   against the flow schema and its meaning (unique ids, known dependencies, no cycles,
//!   templates that refer to declared inputs and upstream tasks, safe file names, durations,
//!   runner parameters after `defaults`), and reports **every** problem at once, each with
//!   `file:line:column`, the field and what is accepted instead;
//! - [`plan`] checks a submission's inputs and produces the [`JobPlanned`] the scheduler runs,
//!   with inputs filled in as literal text (a value is never parsed as a template again);
//! - [`flow_schema`] is the flow's JSON Schema (`schemas/flow.schema.json`), for editors;
//! - [`model`] holds the typed flow, [`template`] the `{{ … }}` syntax.

pub mod model;
mod plan;
mod schema;
pub mod template;

mod check;
mod yaml;

use std::path::{Path, PathBuf};

pub use check::parse_memory;
pub use ferry_event::payload::{JobPlanned, Problem};
pub use model::{Duration, EventMatch, Flow, Input, InputType, Retry, RunnerSpec, Task, Trigger};
pub use plan::plan;
pub use schema::{DURATION_PATTERN, FLOW_SCHEMA_ID, flow_schema};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a flow could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read flow file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid flow:\n{}", name, lines(problems))]
    Invalid { name: String, problems: Vec<Problem> },
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A flow that passed [`validate`]: the typed flow and each task with runner defaults merged,
/// durations converted and templates parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidFlow {
    flow: Flow,
    prepared: Vec<plan::Prepared>,
}

impl ValidFlow {
    /// The typed flow, as written.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// The runner each task runs on, in task order, with the flow's `defaults` merged in.
    pub fn runners(&self) -> impl Iterator<Item = &ferry_event::payload::Runner> {
        self.prepared.iter().map(|p| &p.runner)
    }
}

/// Parses and checks a flow. `name` names the source in problem locations (`name:line:column`).
pub fn validate(source: &str, name: &str) -> Result<ValidFlow, Vec<Problem>> {
    let mut report = check::Report::new(name);
    let root = match yaml::parse(source) {
        Ok(root) => root,
        Err(e) => {
            report.add(e.pos, "", e.message);
            return Err(report.into_problems());
        }
    };
    check::structure(&root, &mut report);
    check::meaning(&root, &mut report);
    if !report.is_empty() {
        return Err(report.into_problems());
    }
    let flow: Flow = serde_json::from_value(root.to_json()).map_err(|e| {
        vec![Problem {
            location: Some(format!("{name}:1:1")),
            field: None,
            message: format!("the flow does not match the flow format: {e}"),
        }]
    })?;
    let mut prepared = Vec::with_capacity(flow.tasks.len());
    let mut problems = Vec::new();
    for (i, task) in flow.tasks.iter().enumerate() {
        match plan::prepare(&flow, i, task) {
            Ok(p) => prepared.push(p),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ValidFlow { flow, prepared })
}

/// Reads and validates a flow file; problems are located by the file's path.
pub fn validate_file(path: &Path) -> Result<ValidFlow> {
    let source = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    validate(&source, &name).map_err(|problems| Error::Invalid { name, problems })
}

/// Parses YAML or JSON source into JSON, without checking it against the flow format.
pub fn to_json(source: &str, name: &str) -> Result<serde_json::Value, Problem> {
    yaml::parse(source).map(|n| n.to_json()).map_err(|e| Problem {
        location: Some(format!("{name}:{}:{}", e.pos.line, e.pos.col)),
        field: None,
        message: e.message,
    })
}

/// Checks a job id: 1 to 128 characters of letters, digits, `.`, `_` and `-`, not starting
/// with `.` (job ids become directory names).
pub fn check_job_id(id: &str) -> Result<(), String> {
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if id.is_empty() || id.len() > 128 || !valid_chars || id.starts_with('.') {
        Err(format!(
            "job id `{}` is not valid: use 1 to 128 letters, digits, `.`, `_` or `-`, not starting with `.`",
            yaml::truncate(id, 140)
        ))
    } else {
        Ok(())
    }
}
