//! What makes two submissions of one job id the same job: the digest of the job they plan.
//!
//! A job id means one job. The api keeps, per job id, the SHA-256 of the planned job (its
//! flow with inputs and defaults applied, in a canonical JSON form: keys sorted, no spaces),
//! so that submitting the same flow and inputs again, even reformatted, is the same job, and a
//! different one under the same id is refused. The read model checks each `job.planned`
//! against it the same way.

use ferry_event::payload::JobPlanned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::{DEFAULT_NAMESPACE, hex_encode};

/// The digest of a planned job, 64 hex digits.
pub fn of_plan(planned: &JobPlanned) -> String {
    let value = serde_json::to_value(planned).unwrap_or(Value::Null);
    let bytes = serde_json::to_vec(&canonical(value)).unwrap_or_default();
    hex_encode(&Sha256::digest(&bytes))
}

/// The namespace a planned job belongs to.
pub fn namespace_of(planned: &JobPlanned) -> &str {
    planned.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

/// The same value with every object's keys in order.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(obj) => {
            let mut entries: Vec<(String, Value)> = obj.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(flow: &str, inputs: Value) -> JobPlanned {
        let flow = ferry_flow::validate(flow, "flow").expect("valid flow");
        let Value::Object(inputs) = inputs else {
            panic!("inputs are an object")
        };
        ferry_flow::plan(&flow, "j1", &inputs).expect("plans")
    }

    const FLOW: &str = "id: f\ninputs:\n  a: { type: string }\n  b: { type: string }\ntasks:\n  - id: t\n    runner: local\n    command: [echo, '{{ inputs.a }}']\n";

    #[test]
    fn the_same_job_has_the_same_digest_however_it_is_written() {
        let one = plan(FLOW, json!({"a": "1", "b": "2"}));
        let reordered = plan(FLOW, json!({"b": "2", "a": "1"}));
        let reformatted = plan(
            "# a comment\nid: f\ninputs: { a: { type: string }, b: { type: string } }\ntasks: [{id: t, runner: local, command: [echo, '{{ inputs.a }}']}]\n",
            json!({"a": "1", "b": "2"}),
        );
        assert_eq!(of_plan(&one), of_plan(&reordered));
        assert_eq!(of_plan(&one), of_plan(&reformatted));
        assert_ne!(of_plan(&one), of_plan(&plan(FLOW, json!({"a": "1", "b": "3"}))));
        assert_ne!(
            of_plan(&one),
            of_plan(&plan(
                &FLOW.replace("echo", "printf"),
                json!({"a": "1", "b": "2"})
            ))
        );
    }

    #[test]
    fn the_planner_s_job_planned_has_the_digest_of_the_api_s_plan() {
        // The planner writes job.planned task by task (plan_job); the read model decodes it.
        let flow = ferry_flow::validate(FLOW, "flow").unwrap();
        let Value::Object(inputs) = json!({"a": "x", "b": "y"}) else {
            unreachable!()
        };
        let streamed = ferry_flow::plan_job(&flow, "j1", &inputs).unwrap();
        let text = serde_json::to_string(&streamed).unwrap();
        let decoded: JobPlanned = serde_json::from_str(&text).unwrap();
        let planned = ferry_flow::plan(&flow, "j1", &inputs).unwrap();
        assert_eq!(of_plan(&decoded), of_plan(&planned));
    }
}
