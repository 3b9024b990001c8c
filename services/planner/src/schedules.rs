//! Schedule triggers: each tick of a deployed flow's `schedule:` starts one job.
//!
//! Between deliveries the planner makes a pass over the schedules of the deployed flows
//! ([`fire_due`]): for each, the ticks after the last one recorded in the registry
//! ([`crate::registry`]) and at or before now ([`Clock::now`]) are due. Each due tick, in
//! order, is planned with the inputs it gives (`{{ trigger.time }}`), its `job.planned` (or
//! `job.rejected`) published, and only then recorded as the last tick. So:
//!
//! - **no tick is lost** while planners are down: the next pass fires what was missed, as long
//!   as it is within the catch-up window ([`crate::Config::catch_up`]); older ticks are skipped
//!   with a warning naming the flow, the trigger and the first and last tick skipped, and
//!   recorded as passed;
//! - **no tick is doubled**: the job's id is [`job_id`] of the flow, the trigger and the tick,
//!   so a tick published again (a planner stopped between the publish and the record, or two
//!   planners sharing a registry firing the same tick) is one job, which the scheduler and the
//!   api treat as the one job it is. The record only moves forward, so a tick never comes due
//!   again; a new version of a flow keeps its schedules' last ticks.
//!
//! The clock is passed in ([`Clock`]) so that tests move time rather than wait for it.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ferry_event::envelope;
use ferry_event::payload::{Problem, TriggeredBy};
use ferry_flow::schedule::Schedule;
use tracing::{error, info, warn};

use crate::registry::Deployed;
use crate::{Planner, outcome_event, plan_limit, plan_valid, publish_outcome};

/// The `eventSource` a scheduled job's [`TriggeredBy`] names.
pub const TICK_SOURCE: &str = "ferry/schedule";
/// The `eventType` a scheduled job's [`TriggeredBy`] names; its `eventId` is the tick, RFC 3339
/// in UTC.
pub const TICK_TYPE: &str = "dev.ferry.schedule.tick";

/// Longest wait between two passes, so that a schedule deployed through another planner
/// sharing the registry starts ticking soon.
pub const POLL: Duration = Duration::from_secs(2);
/// Wait before a pass that failed (registry or bus unavailable) is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// The smallest catch-up window: a tick is never skipped for being a moment old.
pub const MIN_CATCH_UP: Duration = Duration::from_secs(60);
/// Most ticks of one schedule fired in one pass; the next pass follows at once.
const MAX_TICKS_PER_PASS: usize = 100;

/// Where the planner reads the time of day, and waits for it.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's clock.
    #[default]
    System,
    /// A clock that reads what it is set to: tests move it, and the planner's schedules follow
    /// at once.
    Manual(ManualClock),
}

impl Clock {
    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// Waits until the clock reads `at` or later.
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        match self {
            Clock::System => {
                let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
            }
            Clock::Manual(m) => {
                let mut reads = m.0.subscribe();
                // The sender lives as long as this clock: `wait_for` ends only when it reads `at`.
                let _ = reads.wait_for(|now| *now >= at).await;
            }
        }
    }
}

/// A clock set by hand ([`Clock::Manual`]). Clones share one time.
///
/// Tests move it rather than tokio's paused time: the registry's SQLite driver works on threads
/// of its own, during which paused time would leap ahead to the next timer, so a test could not
/// tell which ticks were due.
#[derive(Debug, Clone)]
pub struct ManualClock(std::sync::Arc<tokio::sync::watch::Sender<DateTime<Utc>>>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock(std::sync::Arc::new(tokio::sync::watch::Sender::new(start)))
    }

    /// What it reads.
    pub fn now(&self) -> DateTime<Utc> {
        *self.0.borrow()
    }

    /// Sets it to `to` (never back: a clock that goes back is set to where it was).
    pub fn set(&self, to: DateTime<Utc>) {
        self.0.send_modify(|now| *now = (*now).max(to));
    }

    /// Moves it on by `by`.
    pub fn advance(&self, by: Duration) {
        self.set(self.now() + chrono::Duration::from_std(by).unwrap_or_default());
    }
}

/// The id of the job that the tick at `tick` of schedule `trigger` (its place in the flow's
/// `triggers`) of a flow starts: [`crate::triggers::job_id`] of the tick as an event from
/// [`TICK_SOURCE`] whose id is the tick in RFC 3339, UTC.
pub fn job_id(namespace: Option<&str>, flow_id: &str, trigger: usize, tick: DateTime<Utc>) -> String {
    crate::triggers::job_id(namespace, flow_id, trigger, TICK_SOURCE, &tick_id(tick))
}

/// A tick as it names a job: RFC 3339, UTC, whole seconds (`2026-12-07T01:00:00Z`).
fn tick_id(tick: DateTime<Utc>) -> String {
    tick.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One schedule trigger of a deployed flow.
struct Due {
    deployed: Deployed,
    trigger: usize,
    schedule: Schedule,
}

/// Why a pass stopped early: it is tried again after [`RETRY`].
struct Interrupted;

/// Fires the due ticks of every deployed schedule. Returns when the next pass is due, on the
/// planner's clock: the next tick of any schedule, at most [`POLL`] after this pass began.
pub(crate) async fn fire_due(planner: &mut Planner<'_>) -> DateTime<Utc> {
    let now = planner.clock.now();
    now + chrono::Duration::from_std(pass(planner, now).await).unwrap_or_default()
}

/// One pass at `now`; how long after `now` the next one is due.
async fn pass(planner: &mut Planner<'_>, now: DateTime<Utc>) -> Duration {
    let flows = match planner.registry.deployed().await {
        Ok(flows) => flows,
        Err(e) => {
            warn!(error = %e, "the flow registry cannot be read; schedules are tried again soon");
            return RETRY;
        }
    };
    let mut schedules = Vec::new();
    for deployed in flows.iter() {
        for (i, trigger) in deployed.flow().triggers.iter().enumerate() {
            let Some(expression) = &trigger.schedule else {
                continue;
            };
            match Schedule::parse(expression, trigger.timezone.as_deref()) {
                Ok(schedule) => schedules.push(Due {
                    deployed: deployed.clone(),
                    trigger: i,
                    schedule,
                }),
                // Checked when deployed: a time zone this build no longer knows, say.
                Err(problems) => error!(
                    flow = %envelope::flow_key(deployed.flow().namespace.as_deref(), &deployed.flow().id),
                    trigger = i,
                    problems = ?problems,
                    "a deployed schedule cannot be read; it does not tick until its flow is deployed again"
                ),
            }
        }
    }
    let mut next: Option<DateTime<Utc>> = None;
    for due in schedules {
        match fire(planner, &due, now).await {
            Ok(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
            Ok(None) => {}
            Err(Interrupted) => return RETRY,
        }
    }
    next.map_or(POLL, |at| (at - now).to_std().unwrap_or(Duration::ZERO).min(POLL))
}

/// Fires the due ticks of one schedule. Returns its next tick after `now`.
async fn fire(
    planner: &Planner<'_>,
    due: &Due,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Interrupted> {
    let flow = due.deployed.flow();
    let namespace = flow.namespace.as_deref();
    let key = envelope::flow_key(namespace, &flow.id);
    let registry_failed = |e: sqlx::Error| {
        warn!(error = %e, flow = %key, trigger = due.trigger, "the schedule's last tick cannot be read or recorded; tried again soon");
        Interrupted
    };
    let last_ms = planner
        .registry
        .last_tick(namespace, &flow.id, due.trigger, now.timestamp_millis())
        .await
        .map_err(registry_failed)?;
    let mut last = DateTime::from_timestamp_millis(last_ms).unwrap_or(now);
    let window = planner.catch_up.max(MIN_CATCH_UP);
    let cutoff = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    if let Some(first) = due.schedule.next_after(last)
        && first < cutoff
    {
        let skipped = due
            .schedule
            .last_at_or_before(cutoff - chrono::Duration::milliseconds(1))
            .filter(|t| *t >= first)
            .unwrap_or(first);
        warn!(
            flow = %key,
            trigger = due.trigger,
            first_skipped = %tick_id(first),
            last_skipped = %tick_id(skipped),
            catch_up = ?window,
            "schedule ticks older than the catch-up window were missed while no planner ran; they are skipped"
        );
        planner
            .registry
            .advance(namespace, &flow.id, due.trigger, skipped.timestamp_millis())
            .await
            .map_err(registry_failed)?;
        last = skipped;
    }
    let ticks = due.schedule.ticks_between(last, now, MAX_TICKS_PER_PASS);
    for &tick in &ticks {
        start(planner, due, tick).await?;
        // Recorded only once its job is published: a planner stopped in between publishes the
        // same job again, under the same id.
        planner
            .registry
            .advance(namespace, &flow.id, due.trigger, tick.timestamp_millis())
            .await
            .map_err(registry_failed)?;
    }
    if ticks.len() == MAX_TICKS_PER_PASS {
        return Ok(Some(now));
    }
    Ok(due.schedule.next_after(now))
}

/// Plans and publishes the job of one tick.
async fn start(planner: &Planner<'_>, due: &Due, tick: DateTime<Utc>) -> Result<(), Interrupted> {
    let deployed = &due.deployed;
    let flow = deployed.flow();
    let i = due.trigger;
    let job_id = job_id(flow.namespace.as_deref(), &flow.id, i, tick);
    let facts = due.schedule.tick(tick);
    let key = envelope::flow_key(flow.namespace.as_deref(), &flow.id);
    let named = |mut p: Problem| {
        p.message = format!(
            "trigger {i} of flow `{key}` (version {}), tick {}: {}",
            deployed.version, facts.time, p.message
        );
        p
    };
    let inputs = flow.triggers.get(i).map(|t| t.inputs.clone()).unwrap_or_default();
    let outcome = match ferry_flow::trigger::tick_inputs(&inputs, &facts) {
        Ok(inputs) => {
            let max_bytes = plan_limit(planner.bus);
            let (id, valid) = (job_id.clone(), deployed.valid.clone());
            match tokio::task::spawn_blocking(move || plan_valid(&valid, &id, &inputs, max_bytes)).await {
                Ok(outcome) => outcome.map_err(|problems| problems.into_iter().map(named).collect()),
                Err(e) => Err(vec![named(Problem {
                    location: None,
                    field: None,
                    message: format!(
                        "planning the job failed unexpectedly: {e}; this is a defect in ferry, please report it"
                    ),
                })]),
            }
        }
        Err(message) => Err(vec![named(Problem {
            location: None,
            field: Some(format!("triggers[{i}].inputs")),
            message,
        })]),
    };
    let trigger = TriggeredBy {
        namespace: flow.namespace.clone(),
        flow_id: flow.id.clone(),
        version: deployed.version,
        trigger: u32::try_from(i).unwrap_or(u32::MAX),
        event_id: tick_id(tick),
        event_source: TICK_SOURCE.into(),
        event_type: TICK_TYPE.into(),
    };
    info!(%job_id, flow = %key, trigger = i, tick = %facts.time, "schedule ticked");
    let event = outcome_event(&planner.builder, &job_id, outcome, Some(trigger.clone()));
    publish_outcome(&planner.builder, planner.bus, &job_id, event, Some(&trigger))
        .await
        .map_err(|e| {
            warn!(error = %e, %job_id, "publishing a scheduled job failed; the tick is fired again soon");
            Interrupted
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_name_distinct_valid_jobs() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let a = job_id(Some("ns"), "nightly", 0, t("2026-12-07T01:00:00Z"));
        assert!(a.starts_with("nightly-"), "{a}");
        assert_eq!(ferry_flow::check_job_id(&a), Ok(()));
        // The same instant however it is written.
        assert_eq!(
            a,
            job_id(Some("ns"), "nightly", 0, t("2026-12-07T02:00:00+01:00"))
        );
        for other in [
            job_id(Some("ns"), "nightly", 0, t("2026-12-08T01:00:00Z")),
            job_id(Some("ns"), "nightly", 1, t("2026-12-07T01:00:00Z")),
            job_id(None, "nightly", 0, t("2026-12-07T01:00:00Z")),
        ] {
            assert_ne!(a, other);
        }
    }

    #[tokio::test]
    async fn a_manual_clock_wakes_what_waits_for_it() {
        let start = DateTime::parse_from_rfc3339("2026-03-29T00:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let manual = ManualClock::new(start);
        let clock = Clock::Manual(manual.clone());
        assert_eq!(clock.now(), start);
        let at = start + chrono::Duration::seconds(90);
        let waiting = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(at).await }
        });
        manual.advance(Duration::from_secs(60));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "woke before its time");
        manual.advance(Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken when the clock reached its time")
            .unwrap();
        assert_eq!(clock.now(), at);
        // Never back.
        manual.set(start);
        assert_eq!(clock.now(), at);
    }
}
