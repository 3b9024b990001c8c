//! Fencing: an attempt's reports are accepted only from the launcher that first took it up.
//!
//! A dispatch can reach two launchers (one took it up and died before acknowledging it, and the
//! broker delivered it again elsewhere): both would run the attempt, and whichever reported
//! first would decide it. The first `task.accepted` or `task.started` claims the attempt for
//! its launcher (`ferrylauncher`, an identity that survives the launcher's restarts); a start
//! from another launcher is answered with a cancel addressed to that launcher alone, and its
//! heartbeats and reports change nothing. Words without a launcher (older launchers, reports
//! written in a launcher's place) are taken as before.

use std::collections::HashMap;

use ferry_event::envelope::EXT_LAUNCHER;
use ferry_event::kind;
use ferry_event::payload::TaskCancel;
use sqlx::Row;

use super::{Cx, Input};
use crate::Result;
use ferry_runtime::db::{in_list, placeholders, sized};

impl Cx<'_> {
    /// The launcher each attempt named by a launcher's word in `inputs` is claimed by (`None`:
    /// not claimed yet). Attempts the scheduler does not know are left out.
    pub(super) async fn owners(
        &mut self,
        inputs: &[(String, Input)],
    ) -> Result<HashMap<String, Option<String>>> {
        const ROWS: usize = 500;
        let mut attempts: Vec<&str> = inputs
            .iter()
            .filter_map(|(_, i)| i.launcher_word().map(|(a, _)| a))
            .collect();
        attempts.sort_unstable();
        attempts.dedup();
        let mut owners = HashMap::with_capacity(attempts.len());
        for chunk in attempts.chunks(ROWS) {
            let sql = format!(
                "SELECT attempt_id, launcher FROM attempts WHERE attempt_id IN ({})",
                in_list(self.dialect, chunk.len())
            );
            let mut q = sized(&sql, chunk.len());
            for a in chunk {
                q = q.bind(a.to_string());
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                owners.insert(r.try_get("attempt_id")?, r.try_get("launcher")?);
            }
        }
        Ok(owners)
    }

    /// Records the launchers that claimed attempts in this batch, where none had yet.
    pub(super) async fn claim(&mut self, claims: &[(String, String)]) -> Result<()> {
        const ROWS: usize = 100;
        for chunk in claims.chunks(ROWS) {
            let sql = format!(
                "WITH c (attempt_id, launcher) AS (VALUES {})
                 UPDATE attempts SET launcher = c.launcher
                 FROM c WHERE attempts.attempt_id = c.attempt_id AND attempts.launcher IS NULL",
                placeholders(self.dialect, chunk.len(), 2)
            );
            let mut q = sized(&sql, chunk.len());
            for (attempt, launcher) in chunk {
                q = q.bind(attempt.clone()).bind(launcher.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// A launcher's word about an attempt another launcher holds: a start or an acceptance is
    /// answered with a cancel addressed to the newcomer alone; anything else is dropped.
    pub(super) async fn fence(&mut self, input: &Input, launcher: &str, owner: &str) -> Result<()> {
        let (job_id, task_id, attempt_id) = match input {
            Input::Accepted(s) => (&s.p.job_id, &s.p.task_id, &s.p.attempt_id),
            Input::Started(s) => (&s.p.job_id, &s.p.task_id, &s.p.attempt_id),
            Input::Heartbeat(s) => (&s.p.job_id, &s.p.task_id, &s.p.attempt_id),
            Input::Finished(s) => (&s.p.job_id, &s.p.task_id, &s.p.attempt_id),
            _ => return Ok(()),
        };
        tracing::warn!(%job_id, %task_id, %attempt_id, %launcher, %owner,
            "a launcher's word about an attempt another launcher holds; fenced off");
        if !matches!(input, Input::Accepted(_) | Input::Started(_)) {
            return Ok(());
        }
        let Some(task) = self.task(job_id, task_id).await? else {
            return Ok(());
        };
        let data = TaskCancel {
            job_id: job_id.clone(),
            task_id: task_id.clone(),
            attempt_id: attempt_id.clone(),
            reason: Some(format!(
                "the attempt runs on launcher {owner} already: this copy of it is stopped"
            )),
        };
        let mut e = self.in_job(job_id, || {
            self.events.dispatch(
                kind::TASK_CANCEL,
                job_id,
                task_id,
                attempt_id,
                &task.backend,
                &data,
            )
        });
        e.set_extension(EXT_LAUNCHER, launcher.to_string());
        self.out.push(e);
        Ok(())
    }
}
