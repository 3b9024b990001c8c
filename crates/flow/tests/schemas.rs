//! The committed JSON Schemas under `schemas/` are what the Rust types generate, and they agree
//! with the Rust types on real documents: sample flows, and a sample of every event payload.
//!
//! `FERRY_BLESS=1 cargo test -p ferry-flow --test schemas` rewrites the committed files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferry_event::payload::*;
use ferry_event::template::{Part, Template};
use serde_json::{Map, Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pretty(schema: &schemars::Schema) -> Result<String> {
    Ok(serde_json::to_string_pretty(schema)? + "\n")
}

/// Every schema file with the content the Rust types generate.
fn generated() -> Result<Vec<(PathBuf, String)>> {
    let dir = repo_root().join("schemas");
    let mut out = vec![(dir.join("flow.schema.json"), pretty(&ferry_flow::flow_schema())?)];
    for (name, schema) in schemas() {
        out.push((
            dir.join("events").join(format!("{name}.schema.json")),
            pretty(&schema)?,
        ));
    }
    Ok(out)
}

#[test]
fn committed_schemas_match_the_rust_types() -> Result<()> {
    let bless = std::env::var_os("FERRY_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (path, content) in generated()? {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed == content {
            continue;
        }
        if bless {
            std::fs::create_dir_all(path.parent().context("schema path has a parent")?)?;
            std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        } else {
            stale.push(path.display().to_string());
        }
    }
    let events_dir = repo_root().join("schemas/events");
    let expected: Vec<String> = schemas()
        .iter()
        .map(|(n, _)| format!("{n}.schema.json"))
        .collect();
    for entry in std::fs::read_dir(&events_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !expected.contains(&name) {
            stale.push(format!(
                "{} (no such event payload)",
                events_dir.join(name).display()
            ));
        }
    }
    if !stale.is_empty() {
        bail!(
            "schemas out of date with the Rust types:\n  {}\nrun `FERRY_BLESS=1 cargo test -p ferry-flow --test schemas` and commit the result",
            stale.join("\n  ")
        );
    }
    Ok(())
}

fn validator(path: &str) -> Result<jsonschema::Validator> {
    let text = std::fs::read_to_string(repo_root().join(path)).with_context(|| path.to_string())?;
    let schema: Value = serde_json::from_str(&text)?;
    jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

fn samples(kind: &str) -> Result<Vec<(String, String)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(kind);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, std::fs::read_to_string(&path)?));
    }
    out.sort();
    Ok(out)
}

#[test]
fn valid_sample_flows_pass_the_schema_and_the_rust_types() -> Result<()> {
    let schema = validator("schemas/flow.schema.json")?;
    let samples = samples("valid")?;
    assert!(samples.len() >= 3);
    for (name, source) in samples {
        let json = ferry_flow::to_json(&source, &name).map_err(|p| anyhow::anyhow!("{p}"))?;
        let errors: Vec<String> = schema
            .iter_errors(&json)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name} fails the schema: {errors:#?}");
        let flow = ferry_flow::validate(&source, &name).map_err(|p| anyhow::anyhow!("{name}: {p:#?}"))?;
        // The typed flow serializes back to a document the schema accepts too.
        let back = serde_json::to_value(flow.flow())?;
        assert!(
            schema.is_valid(&back),
            "{name} re-serialized fails the schema: {back}"
        );
    }
    Ok(())
}

#[test]
fn invalid_sample_flows_are_rejected_by_both() -> Result<()> {
    let schema = validator("schemas/flow.schema.json")?;
    let samples = samples("invalid")?;
    assert!(samples.len() >= 8);
    for (name, source) in samples {
        let json = ferry_flow::to_json(&source, &name).map_err(|p| anyhow::anyhow!("{p}"))?;
        assert!(!schema.is_valid(&json), "{name} passes the schema");
        assert!(
            ferry_flow::validate(&source, &name).is_err(),
            "{name} passes validation"
        );
    }
    Ok(())
}

fn text(s: &str) -> Template {
    Template::text(s)
}

fn placeholders() -> Template {
    Template(vec![
        Part::Text("--in=".into()),
        Part::WorkingDir,
        Part::Output {
            task: "a".into(),
            key: "rows".into(),
        },
        Part::Secret("TOKEN".into()),
    ])
}

fn one_of_each_payload() -> Result<BTreeMap<&'static str, Vec<Value>>> {
    let runner = Runner::AwsBatch(AwsBatchRunner {
        image: "python:3.12".into(),
        job_queue: Some("q".into()),
        ..AwsBatchRunner::default()
    });
    let task = PlannedTask {
        id: "b".into(),
        runner: runner.clone(),
        command: vec![text("run"), placeholders()],
        depends_on: vec!["a".into()],
        input_files: BTreeMap::from([("main.py".into(), text("print(1)"))]),
        output_files: vec!["*.csv".into()],
        env: BTreeMap::from([("TOKEN".into(), placeholders())]),
        resources: Resources {
            cpu: Some(0.5),
            memory: Some("512Mi".into()),
            gpu: Some(1),
            gpu_type: Some("nvidia-l4".into()),
        },
        timeout_ms: Some(60_000),
        retry: RetryPolicy {
            attempts: 3,
            backoff: Backoff::Exponential,
            initial_ms: 500,
        },
        priority: -1,
    };
    let minimal_task = PlannedTask {
        id: "a".into(),
        runner: Runner::default(),
        command: vec![text("echo")],
        depends_on: vec![],
        input_files: BTreeMap::new(),
        output_files: vec![],
        env: BTreeMap::new(),
        resources: Resources::default(),
        timeout_ms: None,
        retry: RetryPolicy::default(),
        priority: 0,
    };
    let mut inputs = Map::new();
    inputs.insert("day".into(), json!("2024-05-01"));
    let output_file = OutputFile {
        path: "out/a.csv".into(),
        uri: "file:///tmp/a.csv".into(),
        size: 12,
    };
    let v = |x: &dyn erased::Ser| x.value();
    let mut m: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    m.insert(
        "job.submitted",
        vec![
            v(&JobSubmitted {
                job_id: Some("j".into()),
                flow: FlowSource::Text("id: x".into()),
                flow_name: Some("x.yaml".into()),
                inputs: inputs.clone(),
            })?,
            v(&JobSubmitted {
                job_id: None,
                flow: FlowSource::Object(Map::from_iter([("id".into(), json!("x"))])),
                flow_name: None,
                inputs: Map::new(),
            })?,
        ],
    );
    m.insert(
        "job.planned",
        vec![v(&JobPlanned {
            job_id: "j".into(),
            flow_id: "f".into(),
            namespace: Some("ns".into()),
            concurrency: Some(2),
            inputs: inputs.clone(),
            tasks: vec![minimal_task, task],
        })?],
    );
    m.insert(
        "job.rejected",
        vec![
            v(&JobRejected {
                job_id: "j".into(),
                problems: vec![
                    Problem {
                        location: Some("f.yaml:3:5".into()),
                        field: Some("tasks[0].command".into()),
                        message: "missing".into(),
                    },
                    Problem {
                        location: None,
                        field: None,
                        message: "bad".into(),
                    },
                ],
                trigger: None,
            })?,
            v(&JobRejected {
                job_id: "nightly-0123456789abcdef".into(),
                problems: vec![Problem {
                    location: None,
                    field: Some("inputs.day".into()),
                    message: "trigger 0 of flow `nightly`: input `day`: the event has no `data.day`".into(),
                }],
                trigger: Some(TriggeredBy {
                    namespace: Some("ns".into()),
                    flow_id: "nightly".into(),
                    version: 3,
                    trigger: 0,
                    event_id: "e-1".into(),
                    event_source: "s3://landing".into(),
                    event_type: "com.acme.file.uploaded".into(),
                }),
            })?,
        ],
    );
    m.insert(
        "tasks.state",
        [TaskStatus::Cancelled, TaskStatus::Pending]
            .into_iter()
            .map(|state| {
                v(&TasksState {
                    job_id: "j".into(),
                    state,
                    tasks: vec![TaskAttempts {
                        task_id: "b".into(),
                        attempts: 1,
                    }],
                    error: (state == TaskStatus::Cancelled).then(|| "the job was cancelled".into()),
                    at_ms: 5,
                })
            })
            .collect::<Result<_>>()?,
    );
    m.insert(
        "flow.deploy",
        vec![
            v(&FlowDeploy {
                flow: FlowSource::Text("id: x".into()),
                flow_name: Some("x.yaml".into()),
            })?,
            v(&FlowDeploy {
                flow: FlowSource::Object(Map::from_iter([("id".into(), json!("x"))])),
                flow_name: None,
            })?,
        ],
    );
    m.insert(
        "flow.undeploy",
        vec![v(&FlowUndeploy {
            namespace: Some("ns".into()),
            flow_id: "x".into(),
        })?],
    );
    m.insert(
        "flow.deployed",
        vec![v(&FlowDeployed {
            namespace: None,
            flow_id: "x".into(),
            version: 2,
            triggers: vec![json!({"on": {"type": "com.acme.*"}, "inputs": {"day": "{{ event.data.day }}"}})],
            deployed_at_ms: 5,
        })?],
    );
    m.insert(
        "flow.undeployed",
        vec![v(&FlowUndeployed {
            namespace: Some("ns".into()),
            flow_id: "x".into(),
            version: 2,
            undeployed_at_ms: 6,
        })?],
    );
    m.insert(
        "flow.rejected",
        vec![v(&FlowRejected {
            namespace: None,
            flow_id: Some("x".into()),
            problems: vec![Problem {
                location: Some("x.yaml:1:1".into()),
                field: None,
                message: "bad".into(),
            }],
        })?],
    );
    m.insert(
        "job.cancel",
        vec![v(&JobCancel {
            job_id: "j".into(),
            reason: Some("asked".into()),
        })?],
    );
    m.insert("job.retry", vec![v(&JobRetry { job_id: "j".into() })?]);
    m.insert(
        "job.state",
        [
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .map(|state| {
            v(&JobState {
                job_id: "j".into(),
                flow_id: "f".into(),
                state,
                reason: None,
                tasks: 2,
            })
        })
        .collect::<Result<_>>()?,
    );
    m.insert(
        "task.dispatched",
        vec![v(&TaskDispatched {
            job_id: "j".into(),
            task_id: "b".into(),
            attempt_id: "at".into(),
            attempt: 1,
            runner,
            command: vec![text("run"), placeholders()],
            env: BTreeMap::from([("A".into(), text("1"))]),
            input_files: BTreeMap::new(),
            output_files: vec!["*.csv".into()],
            resources: Resources::default(),
            timeout_ms: Some(1000),
            lease_ms: 30_000,
            ready_at_ms: 1_700_000_000_000,
            flow_id: Some("nightly".into()),
            namespace: Some("team-a".into()),
            priority: 5,
        })?],
    );
    m.insert(
        "task.cancel",
        vec![v(&TaskCancel {
            job_id: "j".into(),
            task_id: "b".into(),
            attempt_id: "at".into(),
            reason: None,
        })?],
    );
    m.insert(
        "task.accepted",
        vec![v(&TaskAccepted {
            job_id: "j".into(),
            task_id: "b".into(),
            attempt_id: "at".into(),
            attempt: 2,
            accepted_at_ms: 2,
            ready_at_ms: 1,
            launcher: "ferry/launcher-kubernetes/h/1".into(),
            compute: Some("batch/ferry-at-1a2b3c".into()),
        })?],
    );
    m.insert(
        "task.started",
        vec![
            v(&TaskStarted {
                job_id: "j".into(),
                task_id: "b".into(),
                attempt_id: "at".into(),
                attempt: 2,
                started_at_ms: 2,
                ready_at_ms: 1,
                launcher: "ferry/launcher-local/h/1".into(),
                compute: None,
            })?,
            v(&TaskStarted {
                job_id: "j".into(),
                task_id: "b".into(),
                attempt_id: "at".into(),
                attempt: 2,
                started_at_ms: 2,
                ready_at_ms: 1,
                launcher: "ferry/launcher-docker/h/1".into(),
                compute: Some("4f2a9c0e1b7d".into()),
            })?,
        ],
    );
    m.insert(
        "launcher.presence",
        vec![
            v(&LauncherPresence {
                backend: "docker".into(),
                instance: "ferry/launcher-docker/h/1".into(),
                capacity: 64,
                running: 3,
                at_ms: 5,
                leaving: false,
                ..Default::default()
            })?,
            v(&LauncherPresence {
                backend: "local".into(),
                instance: "ferry/launcher-local/h/1".into(),
                capacity: 64,
                running: 0,
                at_ms: 6,
                leaving: true,
                ..Default::default()
            })?,
            v(&LauncherPresence {
                backend: "agent".into(),
                instance: "ferry/agent-gpu/h/1".into(),
                capacity: 4,
                running: 1,
                at_ms: 7,
                leaving: false,
                serves: vec!["agent.gpu.train.2.0".into(), "agent.gpu.train.2.1".into()],
                cluster: Some("gpu".into()),
                tasks: vec!["train@2.1".into()],
            })?,
        ],
    );
    m.insert(
        "task.heartbeat",
        vec![v(&TaskHeartbeat {
            job_id: "j".into(),
            task_id: "b".into(),
            attempt_id: "at".into(),
        })?],
    );
    m.insert(
        "task.log",
        vec![v(&TaskLog {
            job_id: "j".into(),
            task_id: "b".into(),
            attempt_id: "at".into(),
            namespace: None,
            seq: 0,
            lines: vec![
                LogLine {
                    stream: Stream::Stdout,
                    time_ms: 1,
                    text: "hello".into(),
                },
                LogLine {
                    stream: Stream::Stderr,
                    time_ms: 2,
                    text: "".into(),
                },
            ],
        })?],
    );
    m.insert(
        "task.finished",
        [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Cancelled,
            Outcome::Lost,
        ]
        .into_iter()
        .map(|outcome| {
            v(&TaskFinished {
                job_id: "j".into(),
                task_id: "b".into(),
                attempt_id: "at".into(),
                attempt: 1,
                outcome,
                exit_code: Some(1),
                error: Some("exit 1".into()),
                outputs: Map::from_iter([("rows".into(), json!(3))]),
                output_files: vec![output_file.clone()],
                log_lines: 10,
                started_at_ms: Some(1),
                finished_at_ms: 2,
                reason: None,
                compute_ms: None,
                subtasks: match json!({"id": "part-1", "runner": "local", "command": ["true"]}) {
                    Value::Object(task) => vec![task],
                    _ => unreachable!("an object"),
                },
            })
        })
        .collect::<Result<_>>()?,
    );
    m.insert(
        "task.state",
        [
            TaskStatus::Pending,
            TaskStatus::Dispatched,
            TaskStatus::Running,
            TaskStatus::Retrying,
            TaskStatus::Succeeded,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .into_iter()
        .map(|state| {
            v(&TaskState {
                job_id: "j".into(),
                task_id: "b".into(),
                state,
                attempts: 1,
                attempt_id: Some("at".into()),
                error: None,
                outputs: Map::new(),
                output_files: vec![output_file.clone()],
                retry_at_ms: Some(5),
                started_at_ms: None,
                finished_at_ms: None,
                subtasks: vec!["b.part-1".into()],
                subtask_backends: vec!["local".into()],
            })
        })
        .collect::<Result<_>>()?,
    );
    Ok(m)
}

/// Serializing any payload to JSON, object-safe.
mod erased {
    pub trait Ser {
        fn value(&self) -> anyhow::Result<serde_json::Value>;
    }

    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> anyhow::Result<serde_json::Value> {
            Ok(serde_json::to_value(self)?)
        }
    }
}

#[test]
fn every_event_payload_validates_against_its_schema() -> Result<()> {
    let samples = one_of_each_payload()?;
    for (name, _) in schemas() {
        let docs = samples
            .get(name)
            .with_context(|| format!("no sample for {name}"))?;
        let schema = validator(&format!("schemas/events/{name}.schema.json"))?;
        for doc in docs {
            let errors: Vec<String> = schema
                .iter_errors(doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{name}: {doc}\n{errors:#?}");
        }
        // And the schema is not vacuous: an empty object misses required fields.
        assert!(!schema.is_valid(&json!({})), "{name} accepts an empty object");
    }
    Ok(())
}
