//! The kubernetes backend beyond the conformance suite: outputs through the termination message,
//! pods stuck Pending, OOM kills, and the API requests an attempt costs.

mod common;

use std::sync::Arc;

use ferry_event::kind;
use ferry_event::payload::{Outcome, Runner};
use ferry_event::template::Template;
use ferry_launcher::conformance::{Harness, Program, Step, Target};

fn p(steps: impl IntoIterator<Item = Step>) -> Program {
    Program::new(steps)
}

/// A harness on a fresh test API server, and the server.
async fn harness(test: &str) -> Option<(Harness, Arc<common::Kube>)> {
    if !common::docker_given(test) {
        return None;
    }
    let kube = Arc::new(common::Kube::new().await);
    let h = Harness::new(kube.clone() as Arc<dyn Target>).await;
    Some((h, kube))
}

fn kubernetes(runner: &mut Runner) -> &mut ferry_event::payload::KubernetesRunner {
    match runner {
        Runner::Kubernetes(r) => r,
        other => panic!("not a kubernetes runner: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_come_back_as_the_termination_message_and_too_large_ones_fail() {
    let Some((mut h, _kube)) = harness("outputs").await else {
        return;
    };
    let launcher = h.start().await;
    let id = h.id("outputs");
    h.dispatch(&h.task(&id, &p([Step::Outputs(r#"{"rows": 3}"#.into())])))
        .await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Succeeded, "{f:?}");
    assert_eq!(f.outputs["rows"], 3, "{f:?}");

    let big = h.id("big-outputs");
    let value = "x".repeat(5000);
    h.dispatch(&h.task(&big, &p([Step::Outputs(format!(r#"{{"v": "{value}"}}"#))])))
        .await;
    let f = h.finished(&big).await;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert!(
        f.error.as_deref().is_some_and(|e| e.contains("FERRY_OUTPUTS")),
        "{f:?}"
    );

    let files = h.id("output-files");
    let mut d = h.task(&files, &p([Step::Out("ran".into())]));
    d.output_files = vec!["*.txt".into()];
    h.dispatch(&d).await;
    let f = h.finished(&files).await;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert!(
        f.error.as_deref().is_some_and(|e| e.contains("outputFiles")),
        "{f:?}"
    );
    assert_eq!(h.count(kind::TASK_STARTED, &files), 0);
    h.assert_nothing_left("after outputs").await;
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_stuck_pending_end_after_the_pending_deadline_naming_why() {
    let Some((mut h, _kube)) = harness("pending").await else {
        return;
    };
    let launcher = h.start().await;
    // An image that is not there: the task's fault.
    let image = h.id("no-image");
    let mut d = h.task(&image, &p([Step::Out("ran".into())]));
    let r = kubernetes(&mut d.runner);
    r.image = "ferry-test/absent:1".into();
    r.pending_deadline_seconds = Some(1);
    h.dispatch(&d).await;
    // No node with that label: the platform's.
    let unschedulable = h.id("no-node");
    let mut d = h.task(&unschedulable, &p([Step::Out("ran".into())]));
    let r = kubernetes(&mut d.runner);
    r.node_selector = [("pool".to_string(), "gpu".to_string())].into();
    r.pending_deadline_seconds = Some(1);
    h.dispatch(&d).await;

    let f = h.finished(&image).await;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert_eq!(f.reason.as_deref(), Some("ImagePullFailed"), "{f:?}");
    assert!(
        f.error
            .as_deref()
            .is_some_and(|e| e.contains("ErrImageNeverPull")),
        "{f:?}"
    );
    let f = h.finished(&unschedulable).await;
    assert_eq!(f.outcome, Outcome::Lost, "{f:?}");
    assert!(
        f.error.as_deref().is_some_and(|e| e.contains("Unschedulable")),
        "{f:?}"
    );
    assert!(h.texts(&image).await.is_empty());
    h.assert_nothing_left("after pods stuck pending").await;
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_reported_as_such() {
    let Some((mut h, _kube)) = harness("oom").await else {
        return;
    };
    let launcher = h.start().await;
    let id = h.id("oom");
    let mut d = h.task(&id, &p([]));
    d.command = [
        "sh",
        "-c",
        "echo filling; head -c 64m /dev/zero | tail > /dev/null",
    ]
    .map(Template::text)
    .to_vec();
    d.resources.memory = Some("8Mi".into());
    h.dispatch(&d).await;
    let f = h.finished(&id).await;
    assert_eq!(f.outcome, Outcome::Failed, "{f:?}");
    assert_eq!(f.reason.as_deref(), Some("OOMKilled"), "{f:?}");
    assert_eq!(f.exit_code, Some(137), "{f:?}");
    // The shell may say "Killed" of the pipeline after it.
    assert_eq!(h.texts(&id).await.first().map(String::as_str), Some("filling"));
    h.assert_nothing_left("after an OOM kill").await;
    launcher.stop().await;
}

/// What `n` attempts cost the API: printed as a table (BENCHMARKS.md has the figures), and held
/// to what the design says — three writes an attempt (Job, Secret, delete), one watch for the
/// launcher, and no polling: reads grow with attempts only by the look before create and the
/// log stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_per_attempt() {
    let Some((mut h, kube)) = harness("requests").await else {
        return;
    };
    let n: usize = std::env::var("FERRY_KUBE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    h.max_parallel = 16;
    kube.server.reset_counts();
    let launcher = h.start().await;
    let ids: Vec<String> = (0..n).map(|i| h.id(&format!("req-{i}"))).collect();
    for id in &ids {
        let mut d = h.task(id, &p([Step::Out("hello".into()), Step::Sleep(200)]));
        d.env.insert("GREETING".into(), Template::text("hi"));
        h.dispatch(&d).await;
    }
    for id in &ids {
        assert_eq!(h.finished(id).await.outcome, Outcome::Succeeded);
    }
    h.assert_nothing_left("after the attempts").await;
    let counts = kube.server.counts();
    launcher.stop().await;
    let total = |verbs: &[&str]| -> u64 {
        counts
            .iter()
            .filter(|((v, _), _)| verbs.contains(&v.as_str()))
            .map(|(_, c)| c)
            .sum()
    };
    println!("API requests for {n} attempts (kubernetes backend, test API server):");
    println!(
        "{:<8} {:<10} {:>8} {:>10}",
        "verb", "resource", "count", "per task"
    );
    for ((verb, resource), count) in &counts {
        println!(
            "{verb:<8} {resource:<10} {count:>8} {:>10.2}",
            *count as f64 / n as f64
        );
    }
    let writes = total(&["create", "delete", "update", "patch"]);
    println!("writes per task: {:.2}", writes as f64 / n as f64);
    assert_eq!(writes, 3 * n as u64, "{counts:?}");
    let watches = total(&["watch"]);
    assert_eq!(watches, 1, "one watch for the launcher: {counts:?}");
    let gets = counts
        .get(&("get".to_string(), "jobs".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(gets <= 2 * n as u64, "the Jobs were polled: {counts:?}");
    let pods = counts
        .get(&("get".to_string(), "pods".to_string()))
        .copied()
        .unwrap_or(0);
    assert_eq!(pods, 0, "pods were polled: {counts:?}");
}
