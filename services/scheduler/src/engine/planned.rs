//! A `job.planned` kept as its JSON, and the check that its tasks form a DAG.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use ferry_event::cloudevents::Data;
use ferry_event::payload::PlannedTask;
use ferry_event::{AttributesReader, Event};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// A `job.planned` event's JSON, taken out of the event once it was checked to decode. The
/// tasks stay JSON until they are inserted, a chunk at a time: the event is not held a second
/// time as decoded tasks.
#[derive(Clone)]
pub(crate) struct PlannedJson {
    pub(super) job_id: String,
    json: Arc<Vec<u8>>,
}

/// A `job.planned` payload with its tasks left as JSON, borrowed from the event's data.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlannedHead<'a> {
    pub(super) job_id: String,
    pub(super) flow_id: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) concurrency: Option<u32>,
    /// Read only to be checked, like the rest of a `JobPlanned`.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) inputs: Map<String, Value>,
    #[serde(borrow)]
    pub(super) tasks: Vec<&'a RawValue>,
}

/// What the DAG check reads of a task.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskEdges<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    depends_on: Vec<Cow<'a, str>>,
}

impl PlannedJson {
    /// Checks that the event's data is a `JobPlanned`, every task included (one at a time),
    /// then takes the data out of the event.
    pub(super) fn take(event: &mut Event) -> std::result::Result<PlannedJson, String> {
        let job_id = {
            let invalid = |e: &dyn std::fmt::Display| {
                format!(
                    "event {} ({}) has data that is not valid for its type: {e}",
                    event.id(),
                    event.ty()
                )
            };
            let json: std::borrow::Cow<'_, [u8]> = match event.data() {
                Some(Data::Binary(b)) => b.as_slice().into(),
                Some(Data::String(s)) => s.as_bytes().into(),
                Some(Data::Json(v)) => serde_json::to_vec(v).map_err(|e| invalid(&e))?.into(),
                None => return Err(format!("event {} ({}) has no data", event.id(), event.ty())),
            };
            let head: PlannedHead<'_> = serde_json::from_slice(&json).map_err(|e| invalid(&e))?;
            for t in &head.tasks {
                serde_json::from_str::<PlannedTask>(t.get()).map_err(|e| invalid(&e))?;
            }
            head.job_id
        };
        let json = match event.take_data().2 {
            Some(Data::Binary(b)) => b,
            Some(Data::String(s)) => s.into_bytes(),
            Some(Data::Json(v)) => serde_json::to_vec(&v).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(PlannedJson {
            job_id,
            json: Arc::new(json),
        })
    }

    pub(super) fn head(&self) -> Result<PlannedHead<'_>> {
        serde_json::from_slice(&self.json)
            .map_err(|e| Error::Corrupt(format!("job.planned of {} no longer decodes: {e}", self.job_id)))
    }
}

/// Checks that every dependency names a task of the job and that there is no cycle (Kahn's
/// algorithm, linear in tasks + edges), and counts the tasks ready at once. The planner checks
/// this too; the scheduler does not trust its input, since any publisher can send
/// `job.planned`. Ids are borrowed from the event's JSON and edges kept as pairs of indexes.
pub(super) fn check_dag<'a>(tasks: &[&'a RawValue]) -> std::result::Result<usize, String> {
    fn read<'a>(raw: &'a RawValue) -> std::result::Result<TaskEdges<'a>, String> {
        serde_json::from_str(raw.get()).map_err(|e| format!("invalid plan: {e}"))
    }
    let mut ids: Vec<Cow<'a, str>> = Vec::with_capacity(tasks.len());
    for raw in tasks {
        ids.push(read(raw)?.id);
    }
    let index: HashMap<&str, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_ref(), i as u32))
        .collect();
    if index.len() != tasks.len() {
        return Err("invalid plan: duplicate task ids".into());
    }
    let mut indegree = vec![0u32; tasks.len()];
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for (i, raw) in tasks.iter().enumerate() {
        for d in read(raw)?.depends_on {
            let Some(&u) = index.get(d.as_ref()) else {
                return Err(format!(
                    "invalid plan: task {} depends on unknown task {d}",
                    ids[i]
                ));
            };
            edges.push((u, i as u32));
            indegree[i] += 1;
        }
    }
    drop(index);
    // Each task's dependents, contiguous: edges sorted by upstream task, `start` indexing them.
    edges.sort_unstable();
    let mut start = vec![0usize; tasks.len() + 1];
    for &(u, _) in &edges {
        start[u as usize + 1] += 1;
    }
    for i in 0..tasks.len() {
        start[i + 1] += start[i];
    }
    let mut queue: Vec<usize> = (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    let ready = queue.len();
    let mut seen = 0;
    while let Some(u) = queue.pop() {
        seen += 1;
        for &(_, v) in &edges[start[u]..start[u + 1]] {
            indegree[v as usize] -= 1;
            if indegree[v as usize] == 0 {
                queue.push(v as usize);
            }
        }
    }
    if seen != tasks.len() {
        let stuck: Vec<&str> = (0..tasks.len())
            .filter(|&i| indegree[i] > 0)
            .take(5)
            .map(|i| ids[i].as_ref())
            .collect();
        return Err(format!(
            "invalid plan: dependency cycle among {}",
            stuck.join(", ")
        ));
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(tasks: &[(&str, &[&str])]) -> std::result::Result<usize, String> {
        let json: Vec<String> = tasks
            .iter()
            .map(|(id, deps)| {
                serde_json::json!({
                    "id": id, "runner": {"type": "local"}, "command": ["true"], "dependsOn": deps
                })
                .to_string()
            })
            .collect();
        let raw: Vec<&RawValue> = json.iter().map(|j| serde_json::from_str(j).unwrap()).collect();
        check_dag(&raw)
    }

    #[test]
    fn dag_checks_reject_unknown_deps_and_cycles() {
        assert_eq!(dag(&[("a", &[]), ("b", &["a"]), ("c", &[])]), Ok(2));
        let e = dag(&[("a", &["zz"])]).unwrap_err();
        assert!(e.contains("unknown task zz"), "{e}");
        let e = dag(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]).unwrap_err();
        assert!(e.ends_with("cycle among a, b, c"), "{e}");
        let e = dag(&[("a", &[]), ("a", &[])]).unwrap_err();
        assert!(e.contains("duplicate task ids"), "{e}");
    }
}
