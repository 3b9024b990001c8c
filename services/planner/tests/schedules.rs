//! Schedule triggers on the in-memory bus, with the planner's clock set by hand: each tick starts one job with its time in the inputs; a restart fires the ticks missed
//! within the catch-up window and skips older ones; two planners sharing a registry start each
//! tick as one job; a new version does not fire a tick again; an undeploy stops the ticks; a
//! time the spring-forward skips ticks once, after the gap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, Utc};
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{FlowDeploy, FlowSource, FlowUndeploy, JobPlanned, JobRejected};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_planner::{Clock, Config, GROUP, ManualClock, run, schedules};
use ferry_runtime::CancellationToken;
use serde_json::json;
use tokio::task::JoinHandle;

/// Every minute, in Paris; the job echoes its tick.
const FLOW: &str = r#"id: nightly
namespace: ops
inputs:
  at: { type: string, required: true }
  day: { type: string, required: true }
  label: { type: string, default: first }
triggers:
  - schedule: "* * * * *"
    timezone: Europe/Paris
    inputs:
      at: "{{ trigger.time }}"
      day: "{{ trigger.date }}"
tasks:
  - id: report
    runner: local
    command: [echo, '{{ inputs.label }} {{ inputs.at }}']
"#;

/// Longest wait for the planner.
const WAIT: Duration = Duration::from_secs(10);

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

struct Planner {
    shutdown: CancellationToken,
    task: JoinHandle<ferry_planner::Result<()>>,
}

impl Planner {
    fn start(bus: &MemoryBus, db_url: &str, clock: &ManualClock, catch_up: Duration) -> Planner {
        let shutdown = CancellationToken::new();
        let config = Config {
            source: "ferry/planner/test".into(),
            prefetch: 4,
            db_url: db_url.into(),
            catch_up,
            clock: Clock::Manual(clock.clone()),
        };
        let task = tokio::spawn(run(
            config,
            Arc::new(bus.clone()) as Arc<dyn Bus>,
            shutdown.clone(),
        ));
        Planner { shutdown, task }
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("planner did not stop")???;
        Ok(())
    }
}

/// The bus and what the planners publish on it.
struct Watch {
    bus: MemoryBus,
    out: Subscription,
}

impl Watch {
    async fn new() -> Result<Watch> {
        let bus = MemoryBus::new();
        drop(bus.subscribe(Subscribe::new(GROUP, [Topic::Intake])).await?);
        let out = bus
            .subscribe(Subscribe::new("observer", [Topic::Control, Topic::Lifecycle]))
            .await?;
        Ok(Watch { bus, out })
    }

    async fn next(&mut self) -> Result<Event> {
        let d = tokio::time::timeout(WAIT, self.out.next())
            .await
            .context("no event from the planner in time")?
            .context("bus closed")??;
        let event = d.event.clone();
        d.ack().await?;
        Ok(event)
    }

    /// The next planned job.
    async fn planned(&mut self) -> Result<JobPlanned> {
        loop {
            let e = self.next().await?;
            match e.ty() {
                kind::JOB_PLANNED => return Ok(ferry_event::decode(&e)?),
                kind::JOB_REJECTED => {
                    let r: JobRejected = ferry_event::decode(&e)?;
                    anyhow::bail!("a scheduled job was rejected: {:?}", r.problems);
                }
                _ => {}
            }
        }
    }

    /// Deploys `flow` and waits for the outcome.
    async fn deploy(&mut self, flow: &str) -> Result<()> {
        let event = EventBuilder::new("test").flow(
            kind::FLOW_DEPLOY,
            "ops/nightly",
            &FlowDeploy {
                flow: FlowSource::Text(flow.into()),
                flow_name: Some("nightly.yaml".into()),
            },
        );
        self.bus.publish(&[event]).await?;
        loop {
            let e = self.next().await?;
            if e.ty() == kind::FLOW_DEPLOYED {
                return Ok(());
            }
            ensure!(e.ty() != kind::FLOW_REJECTED, "deploy rejected: {e}");
        }
    }
}

/// The tick a planned job of the flow is for, checked against its id and inputs.
fn tick_of(job: &JobPlanned) -> DateTime<Utc> {
    let at = job.inputs["at"].as_str().expect("`at` is a string");
    let tick = utc(at);
    assert_eq!(
        job.job_id,
        schedules::job_id(Some("ops"), "nightly", 0, tick),
        "the job of tick {at}"
    );
    tick
}

fn minutes(from: &str, count: i64) -> Vec<DateTime<Utc>> {
    (0..count)
        .map(|i| utc(from) + chrono::Duration::minutes(i))
        .collect()
}

fn temp_db() -> Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("planner.db").display());
    Ok((dir, url))
}

/// The clock at `at`, moved in steps of a minute at most so that each step is a planner pass.
fn walk(clock: &ManualClock, at: &str) {
    let at = utc(at);
    while clock.now() < at {
        clock.set((clock.now() + chrono::Duration::minutes(1)).min(at));
    }
}

#[tokio::test]
async fn each_tick_starts_one_job_with_its_time_in_the_schedules_zone() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut w = Watch::new().await?;
    let clock = ManualClock::new(utc("2026-12-06T10:00:30Z"));
    let p = Planner::start(&w.bus, &db, &clock, Duration::from_secs(3600));
    w.deploy(FLOW).await?;
    let mut ticks = Vec::new();
    for minute in ["10:01:00", "10:02:00", "10:03:00"] {
        walk(&clock, &format!("2026-12-06T{minute}Z"));
        let job = w.planned().await?;
        if ticks.is_empty() {
            // In Paris, with its offset; the date is Paris's.
            assert_eq!(job.inputs["at"], json!("2026-12-06T11:01:00+01:00"));
            assert_eq!(job.inputs["day"], json!("2026-12-06"));
            assert_eq!(
                job.tasks[0].command[1].as_text().as_deref(),
                Some("first 2026-12-06T11:01:00+01:00")
            );
        }
        ticks.push(tick_of(&job));
    }
    // Deployed at 10:00:30: the ticks after it, one job each, in order.
    assert_eq!(ticks, minutes("2026-12-06T10:01:00Z", 3));
    p.stop().await
}

#[tokio::test]
async fn a_restart_fires_the_missed_ticks_once_within_the_catch_up_window() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut w = Watch::new().await?;
    let clock = ManualClock::new(utc("2026-12-06T10:00:30Z"));
    let catch_up = Duration::from_secs(3600);
    let p = Planner::start(&w.bus, &db, &clock, catch_up);
    w.deploy(FLOW).await?;
    walk(&clock, "2026-12-06T10:01:10Z");
    assert_eq!(tick_of(&w.planned().await?), utc("2026-12-06T10:01:00Z"));
    p.stop().await?;
    // Down for ten minutes.
    clock.set(utc("2026-12-06T10:11:10Z"));
    let p = Planner::start(&w.bus, &db, &clock, catch_up);
    let mut ticks = Vec::new();
    while ticks.len() < 10 {
        ticks.push(tick_of(&w.planned().await?));
    }
    walk(&clock, "2026-12-06T10:12:00Z");
    ticks.push(tick_of(&w.planned().await?));
    // Every minute after the first, once each, in order: none doubled, none lost.
    assert_eq!(ticks, minutes("2026-12-06T10:02:00Z", 11));
    p.stop().await
}

#[tokio::test]
async fn ticks_older_than_the_catch_up_window_are_skipped() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut w = Watch::new().await?;
    let clock = ManualClock::new(utc("2026-12-06T10:00:30Z"));
    let catch_up = Duration::from_secs(300);
    let p = Planner::start(&w.bus, &db, &clock, catch_up);
    w.deploy(FLOW).await?;
    walk(&clock, "2026-12-06T10:01:10Z");
    assert_eq!(tick_of(&w.planned().await?), utc("2026-12-06T10:01:00Z"));
    p.stop().await?;
    // Down for half an hour: at 10:31:10 the window keeps the ticks from 10:26:10 on.
    clock.set(utc("2026-12-06T10:31:10Z"));
    let p = Planner::start(&w.bus, &db, &clock, catch_up);
    let mut ticks = Vec::new();
    while ticks.len() < 5 {
        ticks.push(tick_of(&w.planned().await?));
    }
    walk(&clock, "2026-12-06T10:32:00Z");
    ticks.push(tick_of(&w.planned().await?));
    assert_eq!(ticks, minutes("2026-12-06T10:27:00Z", 6));
    p.stop().await
}

#[tokio::test]
async fn two_planners_sharing_a_registry_start_each_tick_as_one_job() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut w = Watch::new().await?;
    let clock = ManualClock::new(utc("2026-12-06T10:00:30Z"));
    let catch_up = Duration::from_secs(3600);
    let a = Planner::start(&w.bus, &db, &clock, catch_up);
    let b = Planner::start(&w.bus, &db, &clock, catch_up);
    w.deploy(FLOW).await?;
    // Both may publish a tick's job; it is the same job, under the same id, each time.
    let mut published: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for minute in 1..=6 {
        walk(&clock, &format!("2026-12-06T10:{minute:02}:00Z"));
        let tick = utc(&format!("2026-12-06T10:{minute:02}:00Z"));
        while !published.contains_key(&tick) {
            *published.entry(tick_of(&w.planned().await?)).or_default() += 1;
        }
    }
    let ticks: Vec<_> = published.keys().copied().collect();
    assert_eq!(ticks, minutes("2026-12-06T10:01:00Z", 6));
    for (tick, n) in &published {
        ensure!(*n <= 2, "tick {tick} published {n} times by two planners");
    }
    a.stop().await?;
    b.stop().await
}

#[tokio::test]
async fn a_new_version_fires_no_tick_again_and_an_undeploy_stops_the_ticks() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut w = Watch::new().await?;
    let clock = ManualClock::new(utc("2026-12-06T10:00:30Z"));
    let p = Planner::start(&w.bus, &db, &clock, Duration::from_secs(3600));
    w.deploy(FLOW).await?;
    walk(&clock, "2026-12-06T10:01:30Z");
    assert_eq!(tick_of(&w.planned().await?), utc("2026-12-06T10:01:00Z"));
    // Version 2 changes what the job does; its schedule goes on from the last tick.
    w.deploy(&FLOW.replace("default: first", "default: second"))
        .await?;
    walk(&clock, "2026-12-06T10:02:30Z");
    let next = w.planned().await?;
    assert_eq!(tick_of(&next), utc("2026-12-06T10:02:00Z"));
    assert_eq!(
        next.tasks[0].command[1].as_text().as_deref(),
        Some("second 2026-12-06T11:02:00+01:00")
    );
    let undeploy = EventBuilder::new("test").flow(
        kind::FLOW_UNDEPLOY,
        "ops/nightly",
        &FlowUndeploy {
            namespace: Some("ops".into()),
            flow_id: "nightly".into(),
        },
    );
    w.bus.publish(&[undeploy]).await?;
    loop {
        let e = w.next().await?;
        ensure!(e.ty() != kind::JOB_PLANNED, "a job before the undeploy: {e}");
        if e.ty() == kind::FLOW_UNDEPLOYED {
            break;
        }
    }
    // Ten minutes on, another flow's schedule ticks: the pass that fires it would have fired
    // the undeployed one's too.
    walk(&clock, "2026-12-06T10:12:30Z");
    w.deploy(&FLOW.replace("id: nightly", "id: other")).await?;
    walk(&clock, "2026-12-06T10:13:30Z");
    let job = w.planned().await?;
    assert_eq!(job.flow_id, "other", "{job:?}");
    assert_eq!(job.inputs["at"], json!("2026-12-06T11:13:00+01:00"));
    p.stop().await
}

#[tokio::test]
async fn a_time_the_spring_forward_skips_ticks_once_after_the_gap() -> Result<()> {
    let (_dir, db) = temp_db()?;
    let mut w = Watch::new().await?;
    // 01:59 in Paris on 2026-03-29: at 02:00 the clocks go to 03:00, so 02:30 never comes.
    let clock = ManualClock::new(utc("2026-03-29T00:59:00Z"));
    let p = Planner::start(&w.bus, &db, &clock, Duration::from_secs(3600));
    w.deploy(&FLOW.replace("\"* * * * *\"", "\"30 2 * * *\"")).await?;
    walk(&clock, "2026-03-29T01:00:00Z");
    let job = w.planned().await?;
    assert_eq!(job.inputs["at"], json!("2026-03-29T03:00:00+02:00"));
    assert_eq!(tick_of(&job), utc("2026-03-29T01:00:00Z"));
    // Through the rest of the day nothing else ticks; the next job is the next day's 02:30,
    // in summer time.
    walk(&clock, "2026-03-30T00:30:00Z");
    let next = w.planned().await?;
    assert_eq!(next.inputs["at"], json!("2026-03-30T02:30:00+02:00"));
    p.stop().await
}
