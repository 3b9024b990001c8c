//! The test API server as kube-rs sees it: the wire format of creates, conflicts, misses,
//! lists, watches (with `410 Gone`), deletes with propagation, and a Job's pod run for real on
//! the Docker engine with its log, exit code and OOM kill.

use std::time::Duration;

use ferry_kube_test_server::{Options, TestServer};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "wire";

fn docker_given() -> bool {
    if std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty()) {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "DOCKER_HOST is not set in CI: the test scripts start a private dockerd"
    );
    eprintln!("SKIPPED: DOCKER_HOST is not set (source scripts/services.sh && docker_up)");
    false
}

fn image() -> String {
    std::env::var("FERRY_TEST_DOCKER_IMAGE").unwrap_or_else(|_| "ferry-test/busybox:1".into())
}

async fn start(history: usize) -> (TestServer, Client) {
    let server = TestServer::start_from_env(Options {
        history,
        ..Options::default()
    })
    .await
    .expect("the server starts");
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig(NS)).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a config");
    (server, Client::try_from(config).expect("a client"))
}

fn job(name: &str, command: &str, memory: Option<&str>) -> Job {
    let mut resources = json!({});
    if let Some(m) = memory {
        resources = json!({"limits": {"memory": m}});
    }
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "wire"}},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "wire"}}, "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image(), "imagePullPolicy": "Never",
                "command": ["sh", "-c", command], "resources": resources,
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}}]}]
        }}}
    }))
    .expect("a Job")
}

/// Waits until the Job has a Complete or Failed condition, and returns it.
async fn finished(jobs: &Api<Job>, name: &str) -> (String, String) {
    for _ in 0..400 {
        let j = jobs.get(name).await.expect("the Job");
        if let Some(c) = j
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        {
            return (c.type_, c.reason.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Job {name} did not finish");
}

#[tokio::test]
async fn objects_answer_as_the_api_does() {
    if !docker_given() {
        return;
    }
    let (server, client) = start(10_000).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s1", "labels": {"app": "wire"}},
        "stringData": {"token": "hunter2"}
    }))
    .unwrap();
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create");
    assert!(created.metadata.resource_version.is_some() && created.metadata.uid.is_some());
    assert_eq!(
        created.data.unwrap()["token"].0,
        b"hunter2",
        "stringData is merged into data"
    );
    let conflict = secrets.create(&PostParams::default(), &secret).await.unwrap_err();
    match conflict {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("{other}"),
    }
    assert!(secrets.get_opt("missing").await.unwrap().is_none(), "404 is None");
    match secrets.get("missing").await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("{other}"),
    }
    let mut bad = secret.clone();
    bad.metadata.name = Some("s2".into());
    bad.metadata.labels = Some([("app".to_string(), "no/slash".to_string())].into());
    match secrets.create(&PostParams::default(), &bad).await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (422, "Invalid")),
        other => panic!("{other}"),
    }
    let list = secrets
        .list(&ListParams::default().labels("app=wire"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    server.stop().await;
}

#[tokio::test]
async fn watches_resume_by_version_and_too_old_is_gone() {
    if !docker_given() {
        return;
    }
    let (server, client) = start(3).await;
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    let list = secrets.list(&ListParams::default()).await.unwrap();
    let start = list.metadata.resource_version.unwrap();
    let mut watch = secrets
        .watch(&WatchParams::default().labels("app=wire"), &start)
        .await
        .unwrap()
        .boxed();
    for i in 0..2 {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("w{i}"), "labels": {"app": "wire"}}, "data": {}
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    secrets.delete("w0", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match watch.try_next().await.unwrap().expect("an event") {
            WatchEvent::Added(s) => seen.push(format!("ADDED {}", s.metadata.name.unwrap())),
            WatchEvent::Deleted(s) => seen.push(format!("DELETED {}", s.metadata.name.unwrap())),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED w0", "ADDED w1", "DELETED w0"]);
    // The history holds 3 changes: the version the watch started from is gone.
    for i in 2..6 {
        let s: Secret = serde_json::from_value(json!({"metadata": {"name": format!("w{i}")}})).unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let mut old = secrets
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    match old.try_next().await.unwrap().expect("an event") {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_jobs_pod_runs_for_real_and_goes_with_it() {
    if !docker_given() {
        return;
    }
    let (server, client) = start(10_000).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    // The pod waits for its Secret, created after the Job and owned by it.
    let j = jobs
        .create(
            &PostParams::default(),
            &job("ok", "echo token=$TOKEN; echo to-stderr >&2", None),
        )
        .await
        .unwrap();
    let owned: Secret = serde_json::from_value(json!({
        "metadata": {"name": "ok", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
            "name": "ok", "uid": j.metadata.uid.clone().unwrap()}]},
        "stringData": {"token": "t0k"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &owned).await.unwrap();
    assert_eq!(
        finished(&jobs, "ok").await,
        ("Complete".into(), "CompletionsReached".into())
    );
    let pod = pods
        .list(&ListParams::default().labels("job-name=ok"))
        .await
        .unwrap()
        .items
        .remove(0);
    let name = pod.metadata.name.clone().unwrap();
    let terminated = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    let params = LogParams {
        timestamps: true,
        follow: true,
        ..LogParams::default()
    };
    let mut lines = pods.log_stream(&name, &params).await.unwrap().lines();
    let mut texts = Vec::new();
    while let Some(line) = lines.next().await {
        let line = line.unwrap();
        let (stamp, text) = line.split_once(' ').unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(stamp).is_ok(), "{line}");
        texts.push(text.to_string());
    }
    texts.sort();
    assert_eq!(texts, ["to-stderr", "token=t0k"]);
    // Background deletion takes the pod and the Secret; the container goes too.
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    jobs.delete("ok", &dp).await.unwrap();
    for _ in 0..100 {
        if server.objects().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.objects().is_empty(), "{:?}", server.objects());

    // Exit codes and OOM kills are the engine's.
    for (name, command, memory, reason) in [
        ("fails", "exit 3", None, "Error"),
        (
            "oom",
            // The shell outlives the kill a moment, so the engine's OOM event has the time
            // to arrive before the container's exit, as it does for a workload's wrapper.
            "head -c 64m /dev/zero | tail > /dev/null; s=$?; sleep 1; exit $s",
            Some("8Mi"),
            "OOMKilled",
        ),
    ] {
        jobs.create(&PostParams::default(), &job(name, command, memory))
            .await
            .unwrap();
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"token": "x"}}))
                .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
        assert_eq!(
            finished(&jobs, name).await,
            ("Failed".into(), "BackoffLimitExceeded".into())
        );
        let pod = pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await
            .unwrap()
            .items
            .remove(0);
        let t = pod.status.unwrap().container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(t.reason.as_deref(), Some(reason), "{name}: {t:?}");
        if name == "fails" {
            assert_eq!(t.exit_code, 3);
        }
    }
    // Orphan leaves the pod behind.
    jobs.delete(
        "fails",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    assert!(jobs.get_opt("fails").await.unwrap().is_none());
    let orphans = pods
        .list(&ListParams::default().labels("job-name=fails"))
        .await
        .unwrap();
    assert_eq!(orphans.items.len(), 1);
    assert!(orphans.items[0].metadata.owner_references.is_none());
    server.stop().await;
}

#[tokio::test]
async fn pods_that_cannot_run_say_why() {
    if !docker_given() {
        return;
    }
    let (server, client) = start(10_000).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut no_image = job("noimage", "true", None);
    let c = &mut no_image
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    c.image = Some("ferry-test/absent:1".into());
    c.env = None;
    jobs.create(&PostParams::default(), &no_image).await.unwrap();
    let mut unschedulable = job("nonode", "true", None);
    let spec = unschedulable
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap();
    spec.node_selector = Some([("gpu".to_string(), "a100".to_string())].into());
    spec.containers[0].env = None;
    jobs.create(&PostParams::default(), &unschedulable).await.unwrap();
    let mut seen = (None, None);
    for _ in 0..100 {
        for p in pods.list(&ListParams::default()).await.unwrap().items {
            let st = p.status.unwrap_or_default();
            let waiting = st
                .container_statuses
                .iter()
                .flatten()
                .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
            let unscheduled = st
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.reason.clone());
            if p.metadata.name.as_deref().unwrap_or("").starts_with("noimage") {
                seen.0 = waiting.filter(|w| w != "ContainerCreating");
            } else {
                seen.1 = unscheduled;
            }
        }
        if seen.0.is_some() && seen.1.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        (Some("ErrImageNeverPull".into()), Some("Unschedulable".into()))
    );
    server.stop().await;
}

#[tokio::test]
async fn deadlines_and_ttls_are_the_servers() {
    if !docker_given() {
        return;
    }
    let (server, client) = start(10_000).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // activeDeadlineSeconds: the Job fails with DeadlineExceeded and its pod goes.
    let mut long = job("long", "sleep 30", None);
    let spec = long.spec.as_mut().unwrap();
    spec.active_deadline_seconds = Some(1);
    let pod_spec = spec.template.spec.as_mut().unwrap();
    pod_spec.containers[0].env = None;
    pod_spec.termination_grace_period_seconds = Some(0);
    jobs.create(&PostParams::default(), &long).await.unwrap();
    assert_eq!(
        finished(&jobs, "long").await,
        ("Failed".into(), "DeadlineExceeded".into())
    );
    for _ in 0..100 {
        if pods
            .list(&ListParams::default().labels("job-name=long"))
            .await
            .unwrap()
            .items
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pods.list(&ListParams::default().labels("job-name=long"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // ttlSecondsAfterFinished: a finished Job is deleted, with its pod.
    let mut short = job("short", "true", None);
    let spec = short.spec.as_mut().unwrap();
    spec.ttl_seconds_after_finished = Some(1);
    spec.template.spec.as_mut().unwrap().containers[0].env = None;
    jobs.create(&PostParams::default(), &short).await.unwrap();
    assert_eq!(finished(&jobs, "short").await.0, "Complete");
    let mut gone = false;
    for _ in 0..100 {
        if jobs.get_opt("short").await.unwrap().is_none()
            && pods
                .list(&ListParams::default().labels("job-name=short"))
                .await
                .unwrap()
                .items
                .is_empty()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "{:?}", server.objects());
    server.stop().await;
}

/// A pod's containers run side by side and share its `emptyDir`, which starts empty; the pod
/// ends with the last of them. `pods/exec` runs a command in one of them as the API server does: its output on the
/// stdout and stderr channels, then a `Status` (`Success`, `NonZeroExitCode` with the code,
/// `InternalError` for a command that cannot start); `404` for a pod that is not there, `400`
/// for a container it does not have or that does not run.
#[tokio::test]
async fn containers_share_a_pod_and_exec_speaks_the_channel_protocol() {
    if !docker_given() {
        return;
    }
    use kube::api::AttachParams;
    use tokio::io::AsyncReadExt;
    let (server, client) = start(10_000).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "pair"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "work", "emptyDir": {}}],
            "containers": [
                {"name": "main", "image": image(), "imagePullPolicy": "Never",
                 "command": ["sh", "-c", "printf shared > /etc/f.txt"],
                 "volumeMounts": [{"name": "work", "mountPath": "/etc"}]},
                {"name": "holder", "image": image(), "imagePullPolicy": "Never",
                 "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
                 "volumeMounts": [{"name": "work", "mountPath": "/held", "readOnly": true}]}
            ]
        }}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.expect("create");
    // The first container ends; the pod runs on with the second, and the Job with it.
    let mut pod = None;
    for _ in 0..400 {
        let found = pods
            .list(&ListParams::default().labels("job-name=pair"))
            .await
            .unwrap()
            .items
            .pop();
        let state = |p: &Pod, name: &str| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .find(|c| c.name == name)
                .and_then(|c| c.state.clone())
                .unwrap_or_default()
        };
        if let Some(p) = found
            && state(&p, "main").terminated.is_some()
            && state(&p, "holder").running.is_some()
        {
            assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
            pod = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pod = pod.expect("main ended while holder runs");
    let name = pod.metadata.name.clone().unwrap();
    let run = |command: Vec<&'static str>, container: &'static str| {
        let pods = pods.clone();
        let name = name.clone();
        async move {
            let params = AttachParams::default()
                .container(container)
                .stdin(false)
                .stdout(true)
                .stderr(true);
            let mut p = pods.exec(&name, command, &params).await?;
            let (mut out, mut err) = (p.stdout().unwrap(), p.stderr().unwrap());
            let status = p.take_status().unwrap();
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let (a, b) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
            a.unwrap();
            b.unwrap();
            Ok::<_, kube::Error>((o, e, status.await.unwrap()))
        }
    };
    let (out, _, status) = run(vec!["cat", "/held/f.txt"], "holder").await.unwrap();
    assert_eq!(
        (out.as_slice(), status.status.as_deref()),
        (&b"shared"[..], Some("Success"))
    );
    // An emptyDir starts empty: what the image had at /etc is hidden, not copied in (the
    // engine's own mount points for /etc/hosts and the like show, as the kubelet's do).
    let (out, _, _) = run(vec!["ls", "-A", "/held"], "holder").await.unwrap();
    let listed = String::from_utf8(out).unwrap();
    assert!(listed.contains("f.txt") && !listed.contains("passwd"), "{listed}");
    let (_, err, status) = run(vec!["sh", "-c", "echo oops >&2; exit 3"], "holder")
        .await
        .unwrap();
    assert_eq!(err, b"oops\n");
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let causes = status.details.unwrap().causes.unwrap();
    assert_eq!(causes[0].message.as_deref(), Some("3"));
    let (_, _, status) = run(vec!["no-such-program"], "holder").await.unwrap();
    assert_eq!(status.reason.as_deref(), Some("InternalError"), "{status:?}");
    assert!(status.message.unwrap_or_default().contains("no-such-program"));
    for (container, code) in [("main", 400), ("nope", 400)] {
        match run(vec!["true"], container).await.err() {
            Some(kube::Error::Api(s)) => assert_eq!(s.code, code, "{container}: {s:?}"),
            other => panic!("{container}: {other:?}"),
        }
    }
    match pods.exec("gone", ["true"], &AttachParams::default()).await.err() {
        Some(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server
            .counts()
            .get(&("create".to_string(), "pods/exec".to_string())),
        Some(&7)
    );
    // Deleting the Job stops the holder at once (it traps SIGTERM) and takes the pod.
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    jobs.delete("pair", &params).await.unwrap();
    for _ in 0..200 {
        if server.objects().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    server.stop().await;
}
