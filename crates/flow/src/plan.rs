//! Turning a valid flow and a submission's inputs into a [`JobPlanned`].

use std::collections::BTreeMap;

use ferry_event::payload::{JobPlanned, PlannedTask, Problem, RetryPolicy, Runner};
use serde::ser::{Error as _, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::check::{did_you_mean, field};
use crate::model::{Flow, InputType, RunnerSpec, Task};
use crate::template::FlowTemplate;
use crate::{ValidFlow, check_job_id, rules};

/// A task with everything but the inputs resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prepared {
    pub runner: Runner,
    pub command: Vec<FlowTemplate>,
    pub env: BTreeMap<String, FlowTemplate>,
    pub input_files: BTreeMap<String, FlowTemplate>,
    pub timeout_ms: Option<u64>,
    pub retry: RetryPolicy,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        location: None,
        field: Some(field.into()),
        message: message.into(),
    }
}

/// Resolves a task of a flow that passed validation. Errors here mean validation missed
/// something; they are reported rather than trusted away.
pub(crate) fn prepare(flow: &Flow, i: usize, task: &Task) -> Result<Prepared, Problem> {
    let at = |f: &str| format!("tasks[{i}].{f}");
    let templates = |s: &str, f: String| FlowTemplate::parse(s).map_err(|m| problem(f, m));
    let (ty, own) = match &task.runner {
        RunnerSpec::Type(t) => (t.as_str(), Map::new()),
        RunnerSpec::Params(p) => (task.runner.type_name().unwrap_or_default(), p.clone()),
    };
    let runner = rules::runner(rules::runner_params(ty, flow.defaults.get(ty), own))
        .map_err(|e| problem(at("runner"), e))?;
    let timeout_ms = match &task.timeout {
        Some(d) => Some(d.to_ms().map_err(|m| problem(at("timeout"), m))?),
        None => None,
    };
    let retry = match &task.retry {
        None => RetryPolicy::default(),
        Some(r) => RetryPolicy {
            attempts: r.attempts.max(1),
            backoff: r.backoff,
            initial_ms: match &r.initial {
                Some(d) => d.to_ms().map_err(|m| problem(at("retry.initial"), m))?,
                None => RetryPolicy::default().initial_ms,
            },
        },
    };
    let mut command = Vec::with_capacity(task.command.len());
    for (j, c) in task.command.iter().enumerate() {
        command.push(templates(c, at(&format!("command[{j}]")))?);
    }
    let mut env = BTreeMap::new();
    for (k, v) in &task.env {
        env.insert(k.clone(), templates(v, field(&at("env"), k))?);
    }
    let mut input_files = BTreeMap::new();
    for (k, v) in &task.input_files {
        input_files.insert(k.clone(), templates(v, field(&at("inputFiles"), k))?);
    }
    Ok(Prepared {
        runner,
        command,
        env,
        input_files,
        timeout_ms,
        retry,
    })
}

/// Converts one provided input to its declared type. Strings are converted for integer,
/// number and boolean inputs (`--input n=5`); a string holding JSON is parsed for json inputs.
fn convert(ty: InputType, v: &Value) -> Option<Value> {
    match (ty, v) {
        (InputType::String, Value::String(_)) => Some(v.clone()),
        (InputType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(v.clone()),
        (InputType::Integer, Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
        (InputType::Number, Value::Number(_)) => Some(v.clone()),
        (InputType::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        (InputType::Boolean, Value::Bool(_)) => Some(v.clone()),
        (InputType::Boolean, Value::String(s)) => match s.trim() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        (InputType::Json, Value::String(s)) => Some(serde_json::from_str(s).unwrap_or_else(|_| v.clone())),
        (InputType::Json, _) => Some(v.clone()),
        _ => None,
    }
}

/// The text an input value stands for in a template.
fn render(ty: InputType, v: &Value) -> String {
    match (ty, v) {
        (InputType::String, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// What [`plan`] and [`plan_job`] resolve before the tasks: the inputs' values and the text
/// each stands for in templates.
struct Inputs<'f> {
    values: Map<String, Value>,
    texts: BTreeMap<&'f str, String>,
}

/// Checks and converts a submission's inputs and the job id; every problem at once.
fn inputs<'f>(flow: &'f Flow, job_id: &str, inputs: &Map<String, Value>) -> Result<Inputs<'f>, Vec<Problem>> {
    let f = flow;
    let mut problems = Vec::new();
    if let Err(msg) = check_job_id(job_id) {
        problems.push(problem("jobId", msg));
    }
    let declared: Vec<&str> = f.inputs.keys().map(String::as_str).collect();
    for (k, _) in inputs.iter().filter(|(k, _)| !f.inputs.contains_key(*k)) {
        let hint = did_you_mean(k, declared.iter().copied())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        let names = if declared.is_empty() {
            "it declares none".to_string()
        } else {
            format!("declared inputs: {}", declared.join(", "))
        };
        problems.push(problem(
            field("inputs", k),
            format!(
                "unknown input `{k}`: the flow `{}` does not declare it{hint}; {names}",
                f.id
            ),
        ));
    }
    let mut values: Map<String, Value> = Map::new();
    let mut texts: BTreeMap<&str, String> = BTreeMap::new();
    for (name, input) in &f.inputs {
        let given = inputs.get(name).filter(|v| !v.is_null());
        let value = match (given, &input.default) {
            (Some(v), _) => match convert(input.ty, v) {
                Some(v) => v,
                None => {
                    problems.push(problem(
                        field("inputs", name),
                        format!(
                            "input `{name}` is of type `{}`, but {} was given: {}",
                            input.ty.as_str(),
                            kind(v),
                            crate::yaml::truncate(&v.to_string(), 60)
                        ),
                    ));
                    continue;
                }
            },
            (None, Some(d)) => d.clone(),
            (None, None) if input.required => {
                problems.push(problem(
                    field("inputs", name),
                    format!(
                        "missing required input `{name}` (type `{}`){}",
                        input.ty.as_str(),
                        input
                            .description
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                ));
                continue;
            }
            (None, None) => {
                texts.insert(name, String::new());
                continue;
            }
        };
        texts.insert(name, render(input.ty, &value));
        values.insert(name.clone(), value);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Inputs { values, texts })
}

/// A task of the job: resolved, with its inputs filled in.
fn planned_task(
    flow: &Flow,
    i: usize,
    task: &Task,
    texts: &BTreeMap<&str, String>,
) -> Result<PlannedTask, Problem> {
    let p = prepare(flow, i, task)?;
    let fill = |t: &FlowTemplate| t.fill_inputs(|n| texts.get(n).cloned().unwrap_or_default());
    Ok(PlannedTask {
        id: task.id.clone(),
        runner: p.runner,
        command: p.command.iter().map(fill).collect(),
        depends_on: task
            .depends_on
            .iter()
            .enumerate()
            .filter(|(k, d)| !task.depends_on[..*k].contains(d))
            .map(|(_, d)| d.clone())
            .collect(),
        input_files: p.input_files.iter().map(|(k, v)| (k.clone(), fill(v))).collect(),
        output_files: task.output_files.clone(),
        env: p.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect(),
        resources: task.resources.clone(),
        timeout_ms: p.timeout_ms,
        retry: p.retry,
        priority: task.priority,
    })
}

/// Plans a job of a valid flow: checks and converts the inputs, fills `{{ inputs.X }}` as
/// literal text, merges runner defaults and resolves durations and retries. Every problem with
/// the inputs is reported at once.
pub fn plan(flow: &ValidFlow, job_id: &str, inputs: &Map<String, Value>) -> Result<JobPlanned, Vec<Problem>> {
    let job = plan_job(flow, job_id, inputs)?;
    let mut tasks = Vec::with_capacity(job.task_count());
    job.each_task(&mut |t| {
        tasks.push(t);
        Ok(())
    })
    .map_err(|message| {
        vec![Problem {
            location: None,
            field: None,
            message,
        }]
    })?;
    Ok(JobPlanned {
        job_id: job.job_id.to_string(),
        flow_id: job.flow.id.clone(),
        namespace: job.flow.namespace.clone(),
        concurrency: job.flow.concurrency,
        inputs: job.inputs.values,
        tasks,
    })
}

/// A planned job whose tasks are resolved only as they are serialized: it serializes to the
/// same JSON as the [`JobPlanned`] that [`plan`] returns, without holding every task at once.
#[derive(Debug)]
pub struct PlannedJob<'f> {
    valid: &'f ValidFlow,
    flow: &'f Flow,
    job_id: &'f str,
    inputs: Inputs<'f>,
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.values.iter()).finish()
    }
}

impl<'f> PlannedJob<'f> {
    /// How many tasks the job has.
    pub fn task_count(&self) -> usize {
        self.valid.task_count()
    }

    /// Calls `f` with each of the job's tasks in order, each resolved when it is reached;
    /// stops at the first error.
    pub fn each_task(&self, f: &mut dyn FnMut(PlannedTask) -> Result<(), String>) -> Result<(), String> {
        self.valid.each_task(&mut |i, t| {
            let planned = planned_task(self.flow, i, t, &self.inputs.texts).map_err(|p| p.to_string())?;
            f(planned)
        })
    }
}

/// Checks a submission's inputs like [`plan`] and returns the job, ready to serialize as the
/// `job.planned` payload.
pub fn plan_job<'f>(
    flow: &'f ValidFlow,
    job_id: &'f str,
    given: &Map<String, Value>,
) -> Result<PlannedJob<'f>, Vec<Problem>> {
    let inputs = inputs(flow.head(), job_id, given)?;
    Ok(PlannedJob {
        valid: flow,
        flow: flow.head(),
        job_id,
        inputs,
    })
}

impl Serialize for PlannedJob<'_> {
    /// Field for field what `JobPlanned`'s derived `Serialize` writes.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Tasks<'a, 'f>(&'a PlannedJob<'f>);
        impl Serialize for Tasks<'_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.task_count()))?;
                let mut failed: Option<S::Error> = None;
                let outcome = self.0.each_task(&mut |t| {
                    seq.serialize_element(&t).map_err(|e| {
                        let message = e.to_string();
                        failed = Some(e);
                        message
                    })
                });
                if let Err(message) = outcome {
                    return Err(failed.unwrap_or_else(|| S::Error::custom(message)));
                }
                seq.end()
            }
        }
        let f = self.flow;
        let mut m = s.serialize_struct("JobPlanned", 6)?;
        m.serialize_field("jobId", self.job_id)?;
        m.serialize_field("flowId", &f.id)?;
        match &f.namespace {
            Some(ns) => m.serialize_field("namespace", ns)?,
            None => m.skip_field("namespace")?,
        }
        match &f.concurrency {
            Some(c) => m.serialize_field("concurrency", c)?,
            None => m.skip_field("concurrency")?,
        }
        m.serialize_field("inputs", &self.inputs.values)?;
        m.serialize_field("tasks", &Tasks(self))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_job_serializes_like_job_planned() {
        let src = "id: f
namespace: team
concurrency: 2
inputs:
  day: { type: string, required: true }
  n: { type: integer, default: 3 }
defaults:
  docker: { image: alpine }
tasks:
  - id: a
    runner: docker
    command: [echo, '{{ inputs.day }}', '{{ inputs.n }}']
    env: { DAY: '{{ inputs.day }}' }
    timeout: 1m
    retry: { attempts: 3, backoff: exponential, initial: 2s }
    priority: 5
  - id: b
    runner: local
    dependsOn: [a, a]
    command: [cat, '{{ outputs.a.x }}']
    inputFiles: { in.txt: 'day {{ inputs.day }}' }
    outputFiles: ['*.json']
    resources: { cpu: 0.5, memory: 1Gi }
";
        let flow = crate::validate(src, "f.yaml").unwrap();
        let inputs: Map<String, Value> = serde_json::from_str(r#"{"day": "2026-01-01"}"#).unwrap();
        let whole = plan(&flow, "job-1", &inputs).unwrap();
        let streamed = plan_job(&flow, "job-1", &inputs).unwrap();
        assert_eq!(streamed.task_count(), 2);
        assert_eq!(
            serde_json::to_string(&streamed).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
        let back: JobPlanned = serde_json::from_slice(&serde_json::to_vec(&streamed).unwrap()).unwrap();
        assert_eq!(back, whole);
    }
}
