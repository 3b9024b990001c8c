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
//!   [`plan_job`] does the same but resolves each task only as it is serialized, for the
//!   planner, so that a large job is never held as a whole `JobPlanned` besides its JSON;
//! - [`flow_schema`] is the flow's JSON Schema (`schemas/flow.schema.json`), for editors;
//! - [`model`] holds the typed flow, [`template`] the `{{ … }}` syntax;
//! - [`trigger`] matches events against a flow's triggers and fills the inputs they give;
//! - [`schedule`] reads a schedule trigger's cron expression and time zone and finds its ticks;
//! - [`rules`] holds the checks of a task's fields that launchers apply again to a dispatch
//!   (input file names, output patterns, memory quantities);
//! - [`plan_subtasks`] checks and plans the subtasks a running task submits, named under it.

pub mod model;
mod plan;
pub mod rules;
pub mod schedule;
mod schema;
mod subtasks;
pub mod template;
pub mod trigger;

mod check;
mod yaml;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use ferry_event::payload::{JobPlanned, Problem};
pub use model::{
    Duration, EventMatch, Flow, Input, InputType, Retry, RunnerSpec, Task, TextForm, TextMatch, Trigger,
    ValueMatch,
};
pub use plan::{PlannedJob, plan, plan_job};
/// [`rules::memory_bytes`], under the name it had first.
pub use rules::memory_bytes as parse_memory;
pub use schema::{DURATION_PATTERN, FLOW_SCHEMA_ID, flow_schema};
pub use subtasks::{SUBTASK_SEPARATOR, parent_of, plan_subtasks, subtask_depth, subtask_id};

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

/// A flow that passed [`validate`]: every task of it resolves (runner defaults merged,
/// durations converted, templates parsed).
///
/// A flow validated a task at a time keeps its source rather than its typed tasks: [`plan`]
/// and [`plan_job`] read the tasks again one at a time, so that a large flow is not held as
/// typed tasks while it is planned. [`ValidFlow::flow`] builds the whole typed flow the first
/// time it is asked for.
#[derive(Debug, Clone)]
pub struct ValidFlow {
    /// The flow without its tasks.
    head: Flow,
    /// How many tasks it has.
    count: usize,
    /// The source, when the tasks are read from it again.
    source: Option<String>,
    /// The whole typed flow, once built.
    all: OnceLock<Flow>,
}

impl PartialEq for ValidFlow {
    fn eq(&self, other: &Self) -> bool {
        self.flow() == other.flow()
    }
}

impl ValidFlow {
    /// The typed flow, as written.
    pub fn flow(&self) -> &Flow {
        self.all.get_or_init(|| {
            let mut flow = self.head.clone();
            flow.tasks.reserve_exact(self.count);
            // Every task converted when the flow was validated; none can fail now.
            let _ = self.each_task(&mut |_, t| {
                flow.tasks.push(t.clone());
                Ok(())
            });
            flow
        })
    }

    /// The runner each task runs on, in task order, with the flow's `defaults` merged in.
    pub fn runners(&self) -> impl Iterator<Item = ferry_event::payload::Runner> + use<> {
        let mut runners = Vec::with_capacity(self.count);
        let _ = self.each_task(&mut |i, t| {
            if let Ok(p) = plan::prepare(&self.head, i, t) {
                runners.push(p.runner);
            }
            Ok(())
        });
        runners.into_iter()
    }

    /// The flow without its tasks (its `defaults`, inputs, id…).
    pub(crate) fn head(&self) -> &Flow {
        &self.head
    }

    /// How many tasks the flow has (without building the typed flow).
    pub fn task_count(&self) -> usize {
        self.count
    }

    /// The tasks' ids, in task order (without building the typed flow).
    pub fn task_ids(&self) -> Vec<String> {
        let mut ids = Vec::with_capacity(self.count);
        let _ = self.each_task(&mut |_, t| {
            ids.push(t.id.clone());
            Ok(())
        });
        ids
    }

    /// Calls `f` with each task in order, read again from the source if the typed flow was not
    /// built; stops at the first error.
    pub(crate) fn each_task(
        &self,
        f: &mut dyn FnMut(usize, &model::Task) -> Result<(), String>,
    ) -> Result<(), String> {
        let source = match (self.all.get(), &self.source) {
            (Some(_), _) | (None, None) => {
                let tasks = self.all.get().map_or(&[][..], |a| &a.tasks[..]);
                return tasks.iter().enumerate().try_for_each(|(i, t)| f(i, t));
            }
            (None, Some(source)) => source,
        };
        let mut i = 0;
        let mut outcome = Ok(());
        yaml::parse_tasks_apart(source, &mut |node| {
            if outcome.is_ok() {
                outcome = serde_json::from_value::<model::Task>(node.to_json())
                    .map_err(|e| format!("task {i} no longer reads as a task: {e}"))
                    .and_then(|t| f(i, &t));
            }
            i += 1;
        })
        .map_err(|e| e.message)?;
        outcome
    }
}

/// Parses and checks a flow. `name` names the source in problem locations (`name:line:column`).
///
/// A flow's tasks are checked and converted one at a time, as the parser completes each: the
/// positioned tree of the whole flow is never built, only that of its other fields and of one
/// task, plus what the task-graph checks need of each task. The problems are the same, in the
/// same order, as if the whole tree were checked at once.
pub fn validate(source: &str, name: &str) -> Result<ValidFlow, Vec<Problem>> {
    let mut report = check::Report::new(name);
    // First the flow without its tasks (counted, not kept).
    let mut count = 0usize;
    let head = match yaml::parse_tasks_apart(source, &mut |_| count += 1) {
        Ok(head) => head,
        Err(e) => {
            report.add(e.pos, "", e.message);
            return Err(report.into_problems());
        }
    };
    if count == 0 {
        // No tasks list to take apart (or an empty one, or one written as an alias).
        drop(head);
        return validate_whole(source, name, report);
    }
    check::head_structure(&head, &mut report);
    let declared = check::head_meaning(&head, &mut report);
    // The flow's own fields typed, to resolve each task with its `defaults`.
    let typed_head: Option<Flow> = if report.is_empty() {
        match serde_json::from_value(head.to_json()) {
            Ok(f) => Some(f),
            Err(e) => return Err(not_the_format(name, e.to_string())),
        }
    } else {
        None
    };
    // Then each task: checked, and while nothing is wrong so far, converted and resolved (to
    // report what the checks missed), then dropped: planning reads it again.
    let mut facts = Vec::with_capacity(count);
    let mut failed: Option<String> = None;
    let mut unresolved: Vec<Problem> = Vec::new();
    let parsed = yaml::parse_tasks_apart(source, &mut |task| {
        let i = facts.len();
        check::task_structure(i, &task, &mut report);
        facts.push(check::task_meaning(i, &task, &head, &declared, &mut report));
        let Some(head) = typed_head
            .as_ref()
            .filter(|_| report.is_empty() && failed.is_none())
        else {
            return;
        };
        match serde_json::from_value::<model::Task>(task.to_json()) {
            Ok(t) => unresolved.extend(plan::prepare(head, i, &t).err()),
            Err(e) => failed = Some(e.to_string()),
        }
    });
    if let Err(e) = parsed {
        report.add(e.pos, "", e.message);
        return Err(report.into_problems());
    }
    check::graph(facts, &mut report);
    if !report.is_empty() {
        return Err(report.into_problems());
    }
    if let Some(e) = failed {
        return Err(not_the_format(name, e));
    }
    if !unresolved.is_empty() {
        return Err(unresolved);
    }
    let Some(head) = typed_head else {
        return Err(not_the_format(name, "the flow could not be read".into()));
    };
    Ok(ValidFlow {
        head,
        count,
        source: Some(source.to_string()),
        all: OnceLock::new(),
    })
}

fn not_the_format(name: &str, e: String) -> Vec<Problem> {
    vec![Problem {
        location: Some(format!("{name}:1:1")),
        field: None,
        message: format!("the flow does not match the flow format: {e}"),
    }]
}

/// [`validate`] for a flow whose tasks could not be taken apart: the whole tree is checked.
fn validate_whole(
    source: &str,
    name: &str,
    mut report: check::Report<'_>,
) -> Result<ValidFlow, Vec<Problem>> {
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
    let flow: Flow =
        serde_json::from_value(root.to_json()).map_err(|e| not_the_format(name, e.to_string()))?;
    resolved(flow)
}

/// A checked typed flow, once each task is resolved: what the checks missed is reported.
fn resolved(flow: Flow) -> Result<ValidFlow, Vec<Problem>> {
    let problems: Vec<Problem> = flow
        .tasks
        .iter()
        .enumerate()
        .filter_map(|(i, task)| plan::prepare(&flow, i, task).err())
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let head = Flow {
        tasks: Vec::new(),
        ..flow.clone()
    };
    Ok(ValidFlow {
        head,
        count: flow.tasks.len(),
        source: None,
        all: OnceLock::from(flow),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Checking a task at a time must report what checking the whole tree reports.
    #[test]
    fn tasks_checked_one_at_a_time_report_as_the_whole_tree() {
        let flows = [
            "id: f\ntasks:\n  - {id: a, runner: local, command: [x]}\n  - {id: a, runner: local, command: [y]}\n",
            "id: f\ntasks:\n  - {id: a, runner: local, command: [x], dependsOn: [b, zz]}\n  - {id: b, runner: local, command: [x], dependsOn: [a]}\n",
            "tasks:\n  - id: 'bad id'\n    runner: dokcer\n    command: []\n    timeout: 10min\n  - {id: c, runner: {type: docker}, command: ['{{ inputs.nope }}', '{{ outputs.a.x }}']}\nid: f\ninputs: {day: {type: integer, default: x}}\n",
            "id: f\ndefaults: {docker: {imag: x}}\ntasks:\n  - {id: a, runner: docker, command: [x], env: {FERRY_X: y}, inputFiles: {/etc/x: y}}\n  - {id: b, runner: local, command: [x], outputFiles: ['../x'], resources: {cpu: 0, memory: 1XB}}\n  - {id: c, runner: local, command: ['{{ outputs.b.k }}'], extra: 1}\n  - 5\n",
            "id: f\ntasks:\n  - &t {id: a, runner: local, command: [x], priority: 1.5}\n  - *t\n",
        ];
        for src in flows {
            let streamed = validate(src, "f.yaml").unwrap_err();
            let whole = validate_whole(src, "f.yaml", check::Report::new("f.yaml")).unwrap_err();
            assert_eq!(streamed, whole, "{src}");
            assert!(!streamed.is_empty(), "{src}");
        }
    }

    /// The ids come from the source, in order, without the typed flow being kept.
    #[test]
    fn task_ids_are_read_without_building_the_typed_flow() {
        let src = "id: f\ntasks:\n  - {id: b, runner: local, command: [x]}\n  - {id: a, runner: local, command: [y], dependsOn: [b]}\n";
        let valid = validate(src, "f.yaml").unwrap();
        assert_eq!(valid.task_ids(), ["b", "a"]);
        assert!(valid.all.get().is_none(), "the typed flow was built");
        assert_eq!(valid.flow().tasks.len(), 2);
        assert_eq!(valid.task_ids(), ["b", "a"]);
    }
}
