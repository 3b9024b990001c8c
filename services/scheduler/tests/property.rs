//! Properties of the scheduler over random DAGs, random failures and retries, random cancels:
//! every job reaches a terminal state; no task starts before its dependencies succeeded; no task
//! is dispatched after its job began ending, and none runs once the job is finished; no two
//! attempts of a task overlap; the final states agree with each other.

mod sim;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::MemoryBus;
use ferry_event::payload::{JobCancel, Outcome, TaskDispatched, TaskState, TasksState};
use ferry_event::{AttributesReader, kind};
use ferry_runtime::CancellationToken;
use proptest::prelude::*;
use sim::*;

#[derive(Debug, Clone)]
struct Case {
    /// Dependencies of each task, on earlier tasks only (so the graph is acyclic).
    deps: Vec<Vec<usize>>,
    priorities: Vec<i32>,
    attempts: Vec<u32>,
    concurrency: Option<u32>,
    /// Outcome per (task, attempt number), cycling: index = (task * 7 + attempt) % len.
    outcomes: Vec<Outcome>,
    run_ms: Vec<u64>,
    cancel_after_ms: Option<u64>,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Succeeded),
        2 => Just(Outcome::Failed),
        1 => Just(Outcome::TimedOut),
        1 => Just(Outcome::Lost),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..24).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)))
            .collect::<Vec<_>>();
        (
            deps,
            proptest::collection::vec(-2i32..3, n),
            proptest::collection::vec(1u32..4, n),
            proptest::option::of(1u32..4),
            proptest::collection::vec(outcome(), 1..16),
            proptest::collection::vec(0u64..8, 1..8),
            proptest::option::weighted(0.3, 0u64..60),
        )
            .prop_map(
                |(deps, priorities, attempts, concurrency, outcomes, run_ms, cancel_after_ms)| Case {
                    deps,
                    priorities,
                    attempts,
                    concurrency,
                    outcomes,
                    run_ms,
                    cancel_after_ms,
                },
            )
    })
}

fn name(i: usize) -> String {
    format!("t{i}")
}

async fn check(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let bus = MemoryBus::new();
    let stop = CancellationToken::new();
    let rec = Recorder::start(&bus, stop.clone()).await;
    let c = case.clone();
    let script: Script = Arc::new(move |d: &TaskDispatched| {
        let t: usize = d.task_id[1..].parse().unwrap();
        let a = d.attempt as usize;
        Plan {
            outcome: c.outcomes[(t * 7 + a) % c.outcomes.len()],
            run_for: Duration::from_millis(c.run_ms[(t + a) % c.run_ms.len()]),
            outputs: Default::default(),
            subtasks: None,
        }
    });
    let log = launcher(bus.clone(), script, stop.clone()).await;
    declare_scheduler(&bus).await;
    let mut cfg = config(&dir.path().join("s.db"));
    cfg.batch_max = 7; // small batches interleave events of many kinds
    let (_h, token) = start_scheduler(&bus, cfg);

    let n = case.deps.len();
    let tasks = (0..n)
        .map(|i| {
            let deps: Vec<String> = case.deps[i].iter().map(|&d| name(d)).collect();
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            let mut t = task_spec(&name(i), &deps);
            t.priority = case.priorities[i];
            t.retry.attempts = case.attempts[i];
            t.retry.initial_ms = 2;
            // A `timed_out` attempt runs until its launcher times it out.
            t.timeout_ms = Some(100);
            t
        })
        .collect();
    publish(
        &bus,
        kind::JOB_PLANNED,
        "job",
        &planned("job", tasks, case.concurrency),
    )
    .await;
    if let Some(ms) = case.cancel_after_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        publish(
            &bus,
            kind::JOB_CANCEL,
            "job",
            &JobCancel {
                job_id: "job".into(),
                reason: None,
            },
        )
        .await;
    }
    let end = rec.wait_terminal("job", Duration::from_secs(30)).await;
    // Give stray work a moment to show itself, if there were any.
    tokio::time::sleep(Duration::from_millis(30)).await;

    let events = rec.events.lock().unwrap().clone();
    let mut succeeded: HashSet<String> = HashSet::new();
    let mut ending = false;
    let mut finals: HashMap<String, &'static str> = HashMap::new();
    let mut after_end = 0;
    let mut ended = false;
    for e in &events {
        match e.ty() {
            kind::TASK_SUCCEEDED | kind::TASK_FAILED | kind::TASK_CANCELLED => {
                let s: TaskState = ferry_event::decode(e).unwrap();
                let state = match e.ty() {
                    kind::TASK_SUCCEEDED => "succeeded",
                    kind::TASK_FAILED => "failed",
                    _ => "cancelled",
                };
                assert!(
                    finals.insert(s.task_id.clone(), state).is_none(),
                    "{} finished twice",
                    s.task_id
                );
                if state == "succeeded" {
                    succeeded.insert(s.task_id);
                } else {
                    ending = true;
                }
            }
            kind::TASKS_CANCELLED => {
                let s: TasksState = ferry_event::decode(e).unwrap();
                assert!(s.tasks.len() <= TasksState::MAX_TASKS);
                for t in s.tasks {
                    assert!(
                        finals.insert(t.task_id.clone(), "cancelled").is_none(),
                        "{} finished twice",
                        t.task_id
                    );
                }
                ending = true;
            }
            kind::TASK_CANCEL => ending = true,
            kind::TASK_DISPATCHED => {
                let d: TaskDispatched = ferry_event::decode(e).unwrap();
                let t: usize = d.task_id[1..].parse().unwrap();
                for dep in &case.deps[t] {
                    assert!(
                        succeeded.contains(&name(*dep)),
                        "{} dispatched before {} succeeded",
                        d.task_id,
                        name(*dep)
                    );
                }
                assert!(!ending, "{} dispatched after the job began ending", d.task_id);
                if ended {
                    after_end += 1;
                }
            }
            kind::JOB_SUCCEEDED | kind::JOB_FAILED | kind::JOB_CANCELLED => ended = true,
            _ => {}
        }
    }
    assert_eq!(after_end, 0, "tasks dispatched after the job ended");
    assert_eq!(finals.len(), n, "every task reaches a final state: {finals:?}");
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(log.running_in("job"), 0, "a task runs after its job finished");
    assert!(log.overlaps.is_empty(), "attempts overlapped: {:?}", log.overlaps);
    if let Some(c) = case.concurrency {
        assert!(log.max_running.get("job").copied().unwrap_or(0) <= c as usize);
    }
    let all_ok = finals.values().all(|s| *s == "succeeded");
    match end.as_str() {
        kind::JOB_SUCCEEDED => assert!(all_ok),
        kind::JOB_FAILED => assert!(finals.values().any(|s| *s == "failed")),
        kind::JOB_CANCELLED => assert!(case.cancel_after_ms.is_some()),
        other => panic!("unexpected end {other}"),
    }
    if case.cancel_after_ms.is_none() && !case.outcomes.iter().any(|o| *o != Outcome::Succeeded) {
        assert_eq!(end, kind::JOB_SUCCEEDED);
    }
    // The job's counters agree with its tasks.
    let store = ferry_scheduler::Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let job = store.job("job").await.unwrap().unwrap();
    assert_eq!((job.unfinished, job.ready), (0, 0), "{job:?}");
    assert!(job.active >= 0, "{job:?}");
    token.cancel();
    stop.cancel();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_job_ends_and_no_task_runs_out_of_turn(case in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check(case));
    }
}
