//! Dispatching ready tasks, with `{{ outputs.* }}` filled in.

use std::collections::{HashMap, HashSet};

use ferry_event::kind;
use ferry_event::payload::{DEFAULT_NAMESPACE, JobStatus, PlannedTask, TaskDispatched, TaskStatus};
use ferry_event::template::{Part, Template};
use serde_json::{Map, Value};
use sqlx::{Any, Row, Transaction};

use super::Cx;
use crate::{Error, Result};
use ferry_runtime::db::Dialect;
use ferry_runtime::db::{placeholders, sized};

/// The quota of `namespace`: its own, else `*`'s, else none.
fn quota_of(quotas: &std::collections::BTreeMap<String, u32>, namespace: &str) -> Option<i64> {
    quotas
        .get(namespace)
        .or_else(|| quotas.get("*"))
        .map(|q| i64::from(*q))
}

/// An attempt dispatched in this pass, recorded by [`Cx::insert_attempts`].
struct NewAttempt {
    attempt_id: String,
    job_id: String,
    task_id: String,
    number: i64,
}
impl Cx<'_> {
    /// Dispatches ready tasks, higher priority first, within each job's concurrency and each
    /// namespace's quota. Returns true when it stopped at `dispatch_max` with more possibly
    /// waiting.
    pub(super) async fn dispatch(&mut self) -> Result<bool> {
        self.flush_all().await?;
        let limit = self.cfg.dispatch_max;
        // Room left under each namespace's quota; jobs of a namespace with none left are not
        // even looked at, so they cannot crowd out the others.
        let mut quota_left = self.quota_left().await?;
        let full_namespaces: Vec<&String> = quota_left
            .iter()
            .filter(|(_, left)| **left <= 0)
            .map(|(ns, _)| ns)
            .collect();
        let not_full = match full_namespaces.len() {
            0 => String::new(),
            n => format!(
                "AND COALESCE(namespace, '{DEFAULT_NAMESPACE}') NOT IN ({})",
                (2..n + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
            ),
        };
        // Jobs with ready tasks and room under their concurrency; then each one's best ready
        // tasks, from an index. A job at its limit costs nothing however many tasks it has.
        // On PostgreSQL the jobs are locked, skipping those another instance is working on.
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "SELECT job_id, flow_id, namespace, concurrency, active FROM jobs
             WHERE ready > 0 AND state = 'running' AND ending IS NULL
               AND (concurrency IS NULL OR active < concurrency) {not_full}
             ORDER BY created_at
             LIMIT $1 {lock}"
        );
        let mut query = sqlx::query(&sql).bind(limit as i64);
        for ns in full_namespaces {
            query = query.bind(ns.clone());
        }
        let jobs = query.fetch_all(&mut *self.tx).await?;
        let mut rows = Vec::new();
        for job in &jobs {
            let job_id: String = job.try_get("job_id")?;
            let flow: (String, Option<String>) = (job.try_get("flow_id")?, job.try_get("namespace")?);
            let concurrency: Option<i64> = job.try_get("concurrency")?;
            let active: i64 = job.try_get("active")?;
            let room = concurrency.map_or(limit as i64, |c| (c - active).min(limit as i64));
            let tasks = sqlx::query(
                "SELECT job_id, task_id, attempts, ready_at, backend, spec, priority, ord FROM tasks
                 WHERE job_id = $1 AND state = 'ready'
                 ORDER BY priority DESC, ready_at, ord
                 LIMIT $2",
            )
            .bind(job_id)
            .bind(room)
            .fetch_all(&mut *self.tx)
            .await?;
            for t in tasks {
                let key = (
                    -t.try_get::<i64, _>("priority")?,
                    t.try_get::<Option<i64>, _>("ready_at")?,
                    t.try_get::<i64, _>("ord")?,
                );
                rows.push((key, concurrency, active, flow.clone(), t));
            }
        }
        // Higher priority first across jobs too.
        rows.sort_by_key(|(key, ..)| *key);
        let full = rows.len() >= limit;
        rows.truncate(limit);
        let mut room: HashMap<String, Option<i64>> = HashMap::new();
        let mut dispatched: Vec<NewAttempt> = Vec::new();
        let mut total = 0;
        let mut outputs = OutputCache::default();
        // Dispatches each backend's launchers have not picked up yet.
        let mut waiting: HashMap<String, i64> = HashMap::new();
        if !rows.is_empty() {
            for r in sqlx::query(
                "SELECT backend, COUNT(*) AS n FROM tasks WHERE state = 'dispatched' GROUP BY backend",
            )
            .fetch_all(&mut *self.tx)
            .await?
            {
                waiting.insert(r.try_get("backend")?, r.try_get("n")?);
            }
        }
        let max_waiting = self.cfg.max_waiting as i64;
        for (_, concurrency, active, (flow_id, namespace), row) in rows {
            let job_id: String = row.try_get("job_id")?;
            let backend: String = row.try_get("backend")?;
            if waiting.get(&backend).copied().unwrap_or(0) >= max_waiting {
                continue;
            }
            let ns = namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            if let Some(quota) = quota_of(&self.cfg.namespace_quotas, ns)
                && *quota_left.entry(ns.to_string()).or_insert(quota) <= 0
            {
                continue;
            }
            let left = room
                .entry(job_id.clone())
                .or_insert(concurrency.map(|c| c - active));
            if *left == Some(0) {
                continue;
            }
            let task_id: String = row.try_get("task_id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let ready_at: Option<i64> = row.try_get("ready_at")?;
            let priority: i64 = row.try_get("priority")?;
            let spec: String = row.try_get("spec")?;
            let spec: PlannedTask = serde_json::from_str(&spec)
                .map_err(|e| Error::Corrupt(format!("task {job_id}/{task_id} spec: {e}")))?;
            let rendered = match render(&spec, &job_id, &mut outputs, &mut self.tx).await? {
                Ok(r) => r,
                Err(problem) => {
                    // The flow refers to an output the upstream task did not produce: retrying
                    // cannot help. Ending the job reads its tasks: record what was dispatched.
                    self.insert_attempts(&mut dispatched).await?;
                    let task = self.task(&job_id, &task_id).await?.expect("selected above");
                    self.add_ready(&job_id, -1);
                    let msg = format!("task {task_id} failed: {problem}");
                    self.task_terminal(&task, TaskStatus::Failed, Some(problem), self.now)
                        .await?;
                    self.begin_ending(&job_id, JobStatus::Failed, &msg).await?;
                    room.insert(job_id, Some(0));
                    continue;
                }
            };
            if let Some(l) = left.as_mut() {
                *l -= 1;
            }
            if let Some(l) = quota_left.get_mut(ns) {
                *l -= 1;
            }
            let attempt = attempts + 1;
            let attempt_id = ferry_event::new_id();
            dispatched.push(NewAttempt {
                attempt_id: attempt_id.clone(),
                job_id: job_id.clone(),
                task_id: task_id.clone(),
                number: attempt,
            });
            total += 1;
            self.count(&job_id, |d| {
                d.active += 1;
                d.ready -= 1;
            });
            *waiting.entry(backend.clone()).or_default() += 1;
            let data = TaskDispatched {
                job_id: job_id.clone(),
                task_id: task_id.clone(),
                attempt_id: attempt_id.clone(),
                attempt: attempt as u32,
                runner: spec.runner,
                command: rendered.command,
                env: rendered.env,
                input_files: rendered.input_files,
                output_files: spec.output_files,
                resources: spec.resources,
                timeout_ms: spec.timeout_ms,
                lease_ms: self.cfg.lease.as_millis() as u64,
                ready_at_ms: ready_at.unwrap_or(self.now),
                flow_id: Some(flow_id),
                namespace,
                priority: i32::try_from(priority).unwrap_or(if priority < 0 { i32::MIN } else { i32::MAX }),
            };
            tracing::debug!(%job_id, %task_id, %attempt_id, attempt, "dispatching");
            let e = self.in_job(&job_id, || {
                self.events.dispatch(
                    kind::TASK_DISPATCHED,
                    &job_id,
                    &task_id,
                    &attempt_id,
                    &backend,
                    &data,
                )
            });
            self.out.push(e);
        }
        self.insert_attempts(&mut dispatched).await?;
        // Go on only if this pass filled a whole batch; a pass held back by `max_waiting` waits
        // for the launchers instead.
        Ok(full && total >= limit)
    }

    /// Room left under the quota of each namespace that has one (named, or `*`) and tasks
    /// dispatched or running; a namespace not in the map has its whole quota, or none.
    async fn quota_left(&mut self) -> Result<HashMap<String, i64>> {
        let quotas = &self.cfg.namespace_quotas;
        let mut left = HashMap::new();
        if quotas.is_empty() {
            return Ok(left);
        }
        // Named namespaces with a quota of 0 are full even with nothing running.
        for (ns, q) in quotas {
            if ns != "*" && *q == 0 {
                left.insert(ns.clone(), 0);
            }
        }
        let rows = sqlx::query(&format!(
            "SELECT COALESCE(namespace, '{DEFAULT_NAMESPACE}') AS ns, CAST(SUM(active) AS BIGINT) AS n
             FROM jobs WHERE active > 0 GROUP BY COALESCE(namespace, '{DEFAULT_NAMESPACE}')"
        ))
        .fetch_all(&mut *self.tx)
        .await?;
        for r in rows {
            let ns: String = r.try_get("ns")?;
            let active: i64 = r.try_get("n")?;
            if let Some(q) = quota_of(quotas, &ns) {
                left.insert(ns, q - active);
            }
        }
        Ok(left)
    }

    /// Records new attempts and moves their tasks to `dispatched`: two statements per chunk
    /// of attempts, not two per attempt.
    async fn insert_attempts(&mut self, attempts: &mut Vec<NewAttempt>) -> Result<()> {
        const ROWS: usize = 100;
        for chunk in attempts.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO attempts (attempt_id, job_id, task_id, number, state, cancel_requested, dispatched_at)
                 VALUES {}",
                placeholders(self.dialect, chunk.len(), 7)
            );
            let mut q = sized(&sql, chunk.len());
            for a in chunk {
                q = q
                    .bind(a.attempt_id.clone())
                    .bind(a.job_id.clone())
                    .bind(a.task_id.clone())
                    .bind(a.number)
                    .bind("dispatched")
                    .bind(0i64)
                    .bind(self.now);
            }
            q.execute(&mut *self.tx).await?;
            let sql = format!(
                "WITH d (job_id, task_id, attempts, attempt_id) AS (VALUES {})
                 UPDATE tasks SET state = 'dispatched', attempts = d.attempts, attempt_id = d.attempt_id,
                        lease_until = NULL, deadline = NULL, started_at = NULL
                 FROM d WHERE tasks.job_id = d.job_id AND tasks.task_id = d.task_id",
                placeholders(self.dialect, chunk.len(), 4)
            );
            let mut q = sized(&sql, chunk.len());
            for a in chunk {
                q = q
                    .bind(a.job_id.clone())
                    .bind(a.task_id.clone())
                    .bind(a.number)
                    .bind(a.attempt_id.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        attempts.clear();
        Ok(())
    }
}

/// Upstream outputs read during one dispatch pass.
#[derive(Default)]
struct OutputCache(HashMap<(String, String), Option<Map<String, Value>>>);

struct Rendered {
    command: Vec<Template>,
    env: std::collections::BTreeMap<String, Template>,
    input_files: std::collections::BTreeMap<String, Template>,
}

/// Fills `{{ outputs.TASK.KEY }}` from the upstream tasks' stored outputs.
async fn render(
    spec: &PlannedTask,
    job_id: &str,
    cache: &mut OutputCache,
    tx: &mut Transaction<'static, Any>,
) -> Result<std::result::Result<Rendered, String>> {
    let all = spec
        .command
        .iter()
        .chain(spec.env.values())
        .chain(spec.input_files.values());
    let needed: HashSet<&str> = all.flat_map(|t| t.outputs().map(|(task, _)| task)).collect();
    for task in needed {
        let key = (job_id.to_string(), task.to_string());
        if cache.0.contains_key(&key) {
            continue;
        }
        let row = sqlx::query("SELECT outputs FROM tasks WHERE job_id = $1 AND task_id = $2")
            .bind(job_id.to_string())
            .bind(task.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        let outputs = match row {
            Some(r) => {
                let text: Option<String> = r.try_get("outputs")?;
                text.and_then(|t| serde_json::from_str(&t).ok())
            }
            None => None,
        };
        cache.0.insert(key, outputs);
    }
    let fill = |t: &Template| {
        t.fill(|part| match part {
            Part::Output { task, key } => {
                let outputs = cache
                    .0
                    .get(&(job_id.to_string(), task.clone()))
                    .and_then(|o| o.as_ref());
                lookup(outputs, task, key).map(Some)
            }
            _ => Ok(None),
        })
    };
    let mut rendered = Rendered {
        command: Vec::new(),
        env: Default::default(),
        input_files: Default::default(),
    };
    for t in &spec.command {
        match fill(t) {
            Ok(t) => rendered.command.push(t),
            Err(e) => return Ok(Err(e)),
        }
    }
    for (k, t) in &spec.env {
        match fill(t) {
            Ok(t) => rendered.env.insert(k.clone(), t),
            Err(e) => return Ok(Err(e)),
        };
    }
    for (k, t) in &spec.input_files {
        match fill(t) {
            Ok(t) => rendered.input_files.insert(k.clone(), t),
            Err(e) => return Ok(Err(e)),
        };
    }
    Ok(Ok(rendered))
}

/// The text of `outputs.TASK.KEY` (KEY may be a dotted path). Strings are used as they are,
/// anything else as compact JSON.
fn lookup(
    outputs: Option<&Map<String, Value>>,
    task: &str,
    key: &str,
) -> std::result::Result<String, String> {
    let empty = Map::new();
    let outputs = outputs.unwrap_or(&empty);
    let mut parts = key.split('.');
    let first = parts.next().unwrap_or_default();
    let mut v = outputs.get(first);
    for p in parts {
        v = v.and_then(|v| match v {
            Value::Object(m) => m.get(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        });
    }
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => {
            let have: Vec<&str> = outputs.keys().map(String::as_str).collect();
            let have = if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            };
            Err(format!(
                "{{{{ outputs.{task}.{key} }}}}: task {task} produced no output {key:?} (its outputs: {have})"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_looked_up_by_dotted_path() {
        let outputs: Map<String, Value> = serde_json::from_value(
            serde_json::json!({"rows": 3, "name": "x", "deep": {"a": [1, {"b": "y"}]}}),
        )
        .unwrap();
        assert_eq!(lookup(Some(&outputs), "t", "rows").unwrap(), "3");
        assert_eq!(lookup(Some(&outputs), "t", "name").unwrap(), "x");
        assert_eq!(lookup(Some(&outputs), "t", "deep.a.1.b").unwrap(), "y");
        let e = lookup(Some(&outputs), "t", "rowz").unwrap_err();
        assert!(e.contains("no output \"rowz\"") && e.contains("rows"), "{e}");
    }
}
