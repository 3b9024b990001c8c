//! Subtasks: tasks a running task submits (the file at `$FERRY_SUBTASKS`), which join its job
//! when its attempt succeeds.
//!
//! They are written in the flow's task format and checked exactly as a flow's tasks are (ids,
//! `dependsOn` among them, runners, templates, no cycle), with problems located by their place
//! in the submission (`subtasks[3].dependsOn`). Once valid they are planned like a flow's tasks
//! and renamed under their parent: subtask `part-1` of task `split` is task `split.part-1` of
//! the job, and its `dependsOn` and `{{ outputs.* }}` are renamed with it. A flow's task ids
//! hold no `.`, so the separator never makes two tasks one, and the name stays one safe path
//! component and routing word.

use ferry_event::payload::{PlannedTask, Problem};
use ferry_event::template::{Part, Template};
use serde_json::{Map, Value};

/// Between a parent task's id and its subtask's own id.
pub const SUBTASK_SEPARATOR: char = '.';

/// The job's id of the subtask `id` that task `parent` submitted.
pub fn subtask_id(parent: &str, id: &str) -> String {
    format!("{parent}{SUBTASK_SEPARATOR}{id}")
}

/// How many subtasks deep a task is: 0 for a flow's own tasks, 1 for their subtasks, …
pub fn subtask_depth(task_id: &str) -> usize {
    task_id.matches(SUBTASK_SEPARATOR).count()
}

/// The task that submitted this one, for a subtask.
pub fn parent_of(task_id: &str) -> Option<&str> {
    task_id.rsplit_once(SUBTASK_SEPARATOR).map(|(parent, _)| parent)
}

/// Checks the subtasks task `parent` submitted as a flow's tasks are checked, and plans them as
/// tasks of its job, renamed under it ([`subtask_id`]). Every problem is reported at once, its
/// field naming the subtask by its place in the submission: `subtasks[3].dependsOn`.
pub fn plan_subtasks(parent: &str, tasks: &[Map<String, Value>]) -> Result<Vec<PlannedTask>, Vec<Problem>> {
    const NAME: &str = "subtasks";
    let flow = serde_json::json!({ "id": NAME, "tasks": tasks });
    let located = |problems: Vec<Problem>| -> Vec<Problem> {
        problems
            .into_iter()
            .map(|p| Problem {
                // A place in JSON this function wrote means nothing to the task's author; its
                // field does.
                location: None,
                field: p.field.map(|f| match f.strip_prefix("tasks") {
                    Some(rest) => format!("{NAME}{rest}"),
                    None => f,
                }),
                message: p.message,
            })
            .collect()
    };
    let valid = crate::validate(&flow.to_string(), NAME).map_err(located)?;
    let planned = crate::plan(&valid, NAME, &Map::new()).map_err(located)?;
    Ok(planned.tasks.into_iter().map(|t| rename(parent, t)).collect())
}

/// A planned subtask with its id, dependencies and upstream outputs named under `parent`.
fn rename(parent: &str, mut t: PlannedTask) -> PlannedTask {
    let under = |template: Template| {
        Template(
            template
                .0
                .into_iter()
                .map(|part| match part {
                    Part::Output { task, key } => Part::Output {
                        task: subtask_id(parent, &task),
                        key,
                    },
                    other => other,
                })
                .collect(),
        )
    };
    t.id = subtask_id(parent, &t.id);
    t.depends_on = t.depends_on.iter().map(|d| subtask_id(parent, d)).collect();
    t.command = t.command.into_iter().map(under).collect();
    t.env = t.env.into_iter().map(|(k, v)| (k, under(v))).collect();
    t.input_files = t.input_files.into_iter().map(|(k, v)| (k, under(v))).collect();
    t
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tasks(v: Value) -> Vec<Map<String, Value>> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn subtasks_are_planned_under_their_parent() {
        let planned = plan_subtasks(
            "split",
            &tasks(json!([
                {"id": "part-1", "runner": "local", "command": ["sh", "-c", "echo 1"]},
                {"id": "sum", "runner": "local", "dependsOn": ["part-1"],
                 "command": ["echo", "{{ outputs.part-1.n }}"], "retry": {"attempts": 2}},
            ])),
        )
        .unwrap();
        let ids: Vec<&str> = planned.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["split.part-1", "split.sum"]);
        assert_eq!(planned[1].depends_on, ["split.part-1"]);
        assert_eq!(
            planned[1].command[1].outputs().collect::<Vec<_>>(),
            [("split.part-1", "n")]
        );
        assert_eq!(planned[1].retry.attempts, 2);
        assert_eq!(subtask_depth("split.sum"), 1);
        assert_eq!(parent_of("a.b.c"), Some("a.b"));
        assert_eq!(parent_of("a"), None);
    }

    #[test]
    fn invalid_subtasks_are_located_by_their_place_in_the_submission() {
        let problems = plan_subtasks(
            "split",
            &tasks(json!([
                {"id": "a", "runner": "local", "command": ["true"]},
                {"id": "b", "runner": "local", "command": ["true"], "dependsOn": ["zz"]},
                {"id": "a", "runner": "nowhere", "command": ["true"]},
            ])),
        )
        .unwrap_err();
        let fields: Vec<String> = problems.iter().filter_map(|p| p.field.clone()).collect();
        assert!(
            fields
                .iter()
                .any(|f| f == "subtasks[1].dependsOn[0]" || f == "subtasks[1].dependsOn"),
            "{problems:?}"
        );
        assert!(
            fields.iter().any(|f| f.starts_with("subtasks[2]")),
            "{problems:?}"
        );
        assert!(problems.iter().all(|p| p.location.is_none()), "{problems:?}");
        let cycle = plan_subtasks(
            "p",
            &tasks(json!([
                {"id": "a", "runner": "local", "command": ["true"], "dependsOn": ["b"]},
                {"id": "b", "runner": "local", "command": ["true"], "dependsOn": ["a"]},
            ])),
        )
        .unwrap_err();
        assert!(cycle.iter().any(|p| p.message.contains("cycle")), "{cycle:?}");
    }
}
