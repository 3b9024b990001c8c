//! The planner's durable flow registry: the deployed flows whose triggers start jobs.
//!
//! It lives in SQL ([`ferry_runtime::db`]: SQLite by default, PostgreSQL when several planners
//! share it), in tables of its own (`planner_*`) so that it may share a database with the
//! scheduler:
//!
//! - `planner_flows`: one row per flow ever deployed, by namespace (`''` for none) and id: its
//!   last version, source and whether it is deployed now. An undeployed flow keeps its row so
//!   that a later deploy continues its version numbers.
//! - `planner_requests`: each applied `flow.deploy` / `flow.undeploy` by event id, with the
//!   outcome event it produced. A redelivered request changes nothing and its recorded
//!   outcome is published again, so a crash between the commit and the publish loses nothing
//!   and doubles nothing.
//! - `planner_generation`: a counter bumped by every change, so that each planner instance
//!   reloads its cached copy of the deployed flows only when another one changed them.
//! - `planner_schedules`: for each schedule trigger of a deployed flow, by namespace, flow id
//!   and the trigger's place in `triggers`, the last tick fired (or skipped): the next pass
//!   fires the ticks after it. A deploy starts a new schedule at the deploy time and keeps the
//!   last tick of one deployed already (a new version does not fire a tick again); an
//!   undeploy forgets the flow's schedules.

use std::sync::Arc;

use ferry_event::kind;
use ferry_event::payload::{FlowDeployed, FlowUndeployed};
use ferry_flow::{Flow, ValidFlow};
use ferry_runtime::db::{self, Db};
use sqlx::Row;

/// The tables, created when missing.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS planner_flows (
        namespace TEXT NOT NULL,
        flow_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        source TEXT NOT NULL,
        flow_name TEXT NOT NULL,
        deployed BIGINT NOT NULL,
        changed_at_ms BIGINT NOT NULL,
        PRIMARY KEY (namespace, flow_id)
    )",
    "CREATE TABLE IF NOT EXISTS planner_requests (
        event_id TEXT PRIMARY KEY,
        outcome_type TEXT NOT NULL,
        outcome TEXT NOT NULL,
        applied_at_ms BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS planner_generation (
        id INTEGER PRIMARY KEY,
        generation BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS planner_schedules (
        namespace TEXT NOT NULL,
        flow_id TEXT NOT NULL,
        trigger_index BIGINT NOT NULL,
        last_tick_ms BIGINT NOT NULL,
        PRIMARY KEY (namespace, flow_id, trigger_index)
    )",
];

/// A deployed flow, as the planner matches events against it: validated once, when this
/// instance first read its version, and planned from that for every job its triggers start.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub valid: Arc<ValidFlow>,
    pub version: u64,
}

impl Deployed {
    /// The typed flow (its triggers, id, namespace…).
    pub fn flow(&self) -> &Flow {
        self.valid.flow()
    }
}

/// What a deploy or undeploy request produced: the outcome event's type and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ty: String,
    pub data: serde_json::Value,
}

/// The registry, with this instance's cached copy of the deployed flows.
#[derive(Debug)]
pub struct Registry {
    db: Db,
    generation: Option<i64>,
    flows: Arc<[Deployed]>,
}

impl Registry {
    /// Opens (and creates, if missing) the registry at `url`.
    pub async fn open(url: &str) -> Result<Registry, crate::Error> {
        let db = db::open(url, "planner database")
            .await
            .map_err(|e| e.into_error(crate::Error::Config, crate::Error::Db))?;
        for stmt in SCHEMA {
            db::create_if_missing(&db.pool, stmt).await?;
        }
        sqlx::query("INSERT INTO planner_generation (id, generation) VALUES (1, 0) ON CONFLICT DO NOTHING")
            .execute(&db.pool)
            .await?;
        Ok(Registry {
            db,
            generation: None,
            flows: Arc::from(Vec::new()),
        })
    }

    /// The deployed flows, read again if any instance changed them since the last call (one
    /// small read otherwise).
    pub async fn deployed(&mut self) -> Result<Arc<[Deployed]>, sqlx::Error> {
        let row = sqlx::query("SELECT generation FROM planner_generation WHERE id = 1")
            .fetch_one(&self.db.pool)
            .await?;
        let generation: i64 = row.try_get("generation")?;
        if self.generation != Some(generation) {
            self.flows = self.load().await?.into();
            self.generation = Some(generation);
        }
        Ok(self.flows.clone())
    }

    /// Reads the deployed flows. A flow whose version this instance holds already is kept as
    /// it is: only new versions are validated.
    async fn load(&self) -> Result<Vec<Deployed>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT namespace, flow_id, version, source, flow_name FROM planner_flows WHERE deployed = 1 \
             ORDER BY namespace, flow_id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut flows = Vec::with_capacity(rows.len());
        for row in rows {
            let namespace: String = row.try_get("namespace")?;
            let flow_id: String = row.try_get("flow_id")?;
            let version = u64::try_from(row.try_get::<i64, _>("version")?).unwrap_or(0);
            let held = self.flows.iter().find(|d| {
                let f = d.flow();
                d.version == version
                    && f.id == flow_id
                    && f.namespace.as_deref().unwrap_or_default() == namespace
            });
            if let Some(held) = held {
                flows.push(held.clone());
                continue;
            }
            let source: String = row.try_get("source")?;
            let flow_name: String = row.try_get("flow_name")?;
            // Validated when deployed; a flow this version of ferry no longer reads is left
            // out, loudly, rather than stopping every other flow's triggers.
            match ferry_flow::validate(&source, &flow_name) {
                Ok(valid) => {
                    // Built once here, so that planning its jobs reads no source again.
                    valid.flow();
                    flows.push(Deployed {
                        valid: Arc::new(valid),
                        version,
                    });
                }
                Err(problems) => {
                    tracing::error!(
                        flow = %flow_id,
                        version,
                        problems = ?problems,
                        "a deployed flow is no longer valid; its triggers are off until it is deployed again"
                    );
                }
            }
        }
        Ok(flows)
    }

    /// The outcome recorded for request `event_id`, if it was applied already.
    pub async fn applied(&self, event_id: &str) -> Result<Option<Outcome>, sqlx::Error> {
        let row = sqlx::query("SELECT outcome_type, outcome FROM planner_requests WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.db.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let ty: String = row.try_get("outcome_type")?;
        let text: String = row.try_get("outcome")?;
        let data = serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Some(Outcome { ty, data }))
    }

    /// Deploys a validated flow from request `event_id`: a new version of it, live at once. Its
    /// schedules start at `clock_ms` (the planner's clock), or go on from their last tick if
    /// the flow is deployed already.
    pub async fn deploy(
        &self,
        event_id: &str,
        flow: &Flow,
        source: &str,
        flow_name: &str,
        clock_ms: i64,
    ) -> Result<Outcome, sqlx::Error> {
        let now = ferry_event::now_ms();
        let mut tx = self.db.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO planner_flows (namespace, flow_id, version, source, flow_name, deployed, changed_at_ms) \
             VALUES ($1, $2, 1, $3, $4, 1, $5) \
             ON CONFLICT (namespace, flow_id) DO UPDATE SET version = planner_flows.version + 1, \
             source = excluded.source, flow_name = excluded.flow_name, deployed = 1, \
             changed_at_ms = excluded.changed_at_ms \
             RETURNING version",
        )
        .bind(flow.namespace.clone().unwrap_or_default())
        .bind(flow.id.clone())
        .bind(source.to_string())
        .bind(flow_name.to_string())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let version: i64 = row.try_get("version")?;
        let namespace = flow.namespace.clone().unwrap_or_default();
        // A trigger that is no schedule in this version keeps no last tick: if a later version
        // makes it one again, it starts then.
        for (i, t) in flow.triggers.iter().enumerate() {
            let index = i64::try_from(i).unwrap_or(i64::MAX);
            if t.schedule.is_some() {
                sqlx::query(
                    "INSERT INTO planner_schedules (namespace, flow_id, trigger_index, last_tick_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(namespace.clone())
                .bind(flow.id.clone())
                .bind(index)
                .bind(clock_ms)
                .execute(&mut *tx)
                .await?;
            } else {
                forget_schedules(&mut tx, &namespace, &flow.id, Some(index)).await?;
            }
        }
        sqlx::query(
            "DELETE FROM planner_schedules WHERE namespace = $1 AND flow_id = $2 AND trigger_index >= $3",
        )
        .bind(namespace.clone())
        .bind(flow.id.clone())
        .bind(i64::try_from(flow.triggers.len()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        let deployed = FlowDeployed {
            namespace: flow.namespace.clone(),
            flow_id: flow.id.clone(),
            version: u64::try_from(version).unwrap_or(0),
            triggers: flow
                .triggers
                .iter()
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .collect(),
            deployed_at_ms: now,
        };
        let outcome = Outcome {
            ty: kind::FLOW_DEPLOYED.into(),
            data: serde_json::to_value(&deployed).unwrap_or_default(),
        };
        record(&mut tx, event_id, &outcome, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Undeploys a flow from request `event_id`. `None` when it is not deployed.
    pub async fn undeploy(
        &self,
        event_id: &str,
        namespace: Option<&str>,
        flow_id: &str,
    ) -> Result<Option<Outcome>, sqlx::Error> {
        let now = ferry_event::now_ms();
        let mut tx = self.db.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE planner_flows SET deployed = 0, changed_at_ms = $1 \
             WHERE namespace = $2 AND flow_id = $3 AND deployed = 1 RETURNING version",
        )
        .bind(now)
        .bind(namespace.unwrap_or_default().to_string())
        .bind(flow_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: i64 = row.try_get("version")?;
        forget_schedules(&mut tx, namespace.unwrap_or_default(), flow_id, None).await?;
        let outcome = Outcome {
            ty: kind::FLOW_UNDEPLOYED.into(),
            data: serde_json::to_value(FlowUndeployed {
                namespace: namespace.map(str::to_string),
                flow_id: flow_id.to_string(),
                version: u64::try_from(version).unwrap_or(0),
                undeployed_at_ms: now,
            })
            .unwrap_or_default(),
        };
        record(&mut tx, event_id, &outcome, now).await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }
}

impl Registry {
    /// The last tick fired (or skipped) of schedule `trigger` of a flow, in milliseconds since
    /// the epoch. A schedule without one (its flow was deployed by a planner that kept none)
    /// starts at `now_ms`.
    pub async fn last_tick(
        &self,
        namespace: Option<&str>,
        flow_id: &str,
        trigger: usize,
        now_ms: i64,
    ) -> Result<i64, sqlx::Error> {
        let namespace = namespace.unwrap_or_default();
        let index = i64::try_from(trigger).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO planner_schedules (namespace, flow_id, trigger_index, last_tick_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(namespace.to_string())
        .bind(flow_id.to_string())
        .bind(index)
        .bind(now_ms)
        .execute(&self.db.pool)
        .await?;
        let row = sqlx::query(
            "SELECT last_tick_ms FROM planner_schedules WHERE namespace = $1 AND flow_id = $2 AND trigger_index = $3",
        )
        .bind(namespace.to_string())
        .bind(flow_id.to_string())
        .bind(index)
        .fetch_one(&self.db.pool)
        .await?;
        row.try_get("last_tick_ms")
    }

    /// Records `tick_ms` as the last tick of a schedule, if it is later than the one recorded:
    /// several planners may fire the same tick, and the record never goes back. A schedule its
    /// flow's undeploy forgot stays forgotten.
    pub async fn advance(
        &self,
        namespace: Option<&str>,
        flow_id: &str,
        trigger: usize,
        tick_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE planner_schedules SET last_tick_ms = $1 \
             WHERE namespace = $2 AND flow_id = $3 AND trigger_index = $4 AND last_tick_ms < $1",
        )
        .bind(tick_ms)
        .bind(namespace.unwrap_or_default().to_string())
        .bind(flow_id.to_string())
        .bind(i64::try_from(trigger).unwrap_or(i64::MAX))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}

/// Forgets the last ticks of a flow's schedules: one trigger's, or all of them.
async fn forget_schedules(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    namespace: &str,
    flow_id: &str,
    trigger: Option<i64>,
) -> Result<(), sqlx::Error> {
    match trigger {
        Some(index) => {
            sqlx::query(
                "DELETE FROM planner_schedules WHERE namespace = $1 AND flow_id = $2 AND trigger_index = $3",
            )
            .bind(namespace.to_string())
            .bind(flow_id.to_string())
            .bind(index)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM planner_schedules WHERE namespace = $1 AND flow_id = $2")
                .bind(namespace.to_string())
                .bind(flow_id.to_string())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Records an applied request and its outcome, and tells every instance the flows changed.
async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    event_id: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO planner_requests (event_id, outcome_type, outcome, applied_at_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(event_id.to_string())
    .bind(outcome.ty.clone())
    .bind(outcome.data.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE planner_generation SET generation = generation + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}
