//! Planning: inputs checked, converted and filled as inert text; defaults, durations and
//! retries resolved.

use ferry_event::payload::{Backoff, RetryPolicy, Runner};
use ferry_event::template::{Part, Template};
use ferry_flow::{ValidFlow, check_job_id, plan, validate};
use serde_json::{Map, Value, json};

const FLOW: &str = "id: report
namespace: analytics
inputs:
  day: { type: string, required: true, description: the day to report }
  limit: { type: integer, default: 100 }
  ratio: { type: number, default: 0.5 }
  dry: { type: boolean, default: false }
  cfg: { type: json, default: { a: [1, 2] } }
  note: { type: string }
defaults:
  aws-batch: { image: python, jobQueue: q, region: eu-west-1, assignPublicIp: true }
concurrency: 2
tasks:
  - id: extract
    runner: local
    command: [python3, '{{ workingDir }}/main.py', '--day={{ inputs.day }}', '{{ inputs.limit }}']
    inputFiles: { main.py: 'print({{ inputs.cfg }})' }
    env: { RATIO: '{{ inputs.ratio }}', DRY: '{{inputs.dry}}', NOTE: 'n={{ inputs.note }}' }
    timeout: 1h30m
    retry: { attempts: 3, backoff: exponential, initial: 2s }
    priority: 5
  - id: load
    dependsOn: [extract]
    runner: { type: aws-batch, jobQueue: fast, region: us-west-2 }
    command: [load, '{{ outputs.extract.rows }}', '{{ secret(\"TOKEN\") }}']
    outputFiles: ['*.csv']
";

fn flow() -> ValidFlow {
    validate(FLOW, "report.yaml").unwrap_or_else(|p| panic!("{p:?}"))
}

fn inputs(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn text(t: &Template) -> String {
    t.as_text().unwrap_or_else(|| panic!("not plain text: {t:?}"))
}

#[test]
fn a_plan_has_inputs_filled_and_everything_resolved() {
    let planned = plan(
        &flow(),
        "job-1",
        &inputs(json!({"day": "2024-05-01", "limit": "7"})),
    )
    .unwrap();
    assert_eq!(planned.job_id, "job-1");
    assert_eq!(planned.flow_id, "report");
    assert_eq!(planned.namespace.as_deref(), Some("analytics"));
    assert_eq!(planned.concurrency, Some(2));
    assert_eq!(
        Value::Object(planned.inputs.clone()),
        json!({"day": "2024-05-01", "limit": 7, "ratio": 0.5, "dry": false, "cfg": {"a": [1, 2]}})
    );
    let ids: Vec<&str> = planned.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["extract", "load"]);

    let extract = &planned.tasks[0];
    assert_eq!(extract.runner, Runner::default());
    assert_eq!(
        extract.command[1].0,
        [Part::WorkingDir, Part::Text("/main.py".into())]
    );
    assert_eq!(text(&extract.command[2]), "--day=2024-05-01");
    assert_eq!(text(&extract.command[3]), "7");
    assert_eq!(text(&extract.input_files["main.py"]), "print({\"a\":[1,2]})");
    assert_eq!(text(&extract.env["RATIO"]), "0.5");
    assert_eq!(text(&extract.env["DRY"]), "false");
    assert_eq!(text(&extract.env["NOTE"]), "n=");
    assert_eq!(extract.timeout_ms, Some(5_400_000));
    assert_eq!(
        extract.retry,
        RetryPolicy {
            attempts: 3,
            backoff: Backoff::Exponential,
            initial_ms: 2000
        }
    );
    assert_eq!(extract.priority, 5);

    let load = &planned.tasks[1];
    match &load.runner {
        Runner::AwsBatch(r) => {
            assert_eq!(r.image, "python", "from defaults");
            assert_eq!(r.job_queue.as_deref(), Some("fast"), "the task's own value wins");
            assert_eq!(
                r.region.as_deref(),
                Some("us-west-2"),
                "the task's own value wins"
            );
            assert_eq!(r.assign_public_ip, Some(true), "from defaults");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(load.depends_on, ["extract"]);
    assert_eq!(
        load.command[1].0,
        [Part::Output {
            task: "extract".into(),
            key: "rows".into()
        }]
    );
    assert_eq!(load.command[2].0, [Part::Secret("TOKEN".into())]);
    assert_eq!(load.retry, RetryPolicy::default());
    assert_eq!(load.timeout_ms, None);
    assert_eq!(load.output_files, ["*.csv"]);
}

#[test]
fn input_values_stay_inert_text() {
    let hostile = "x'; rm -rf / #{{ secret('TOKEN') }}{{ workingDir }}";
    let planned = plan(&flow(), "job-2", &inputs(json!({"day": hostile}))).unwrap();
    let arg = &planned.tasks[0].command[2];
    assert_eq!(arg.0, [Part::Text(format!("--day={hostile}"))]);
    assert_eq!(arg.secrets().count(), 0);
    // Round trip through the wire format: still one text argument.
    let wire = serde_json::to_string(&planned).unwrap();
    let back: ferry_event::payload::JobPlanned = serde_json::from_str(&wire).unwrap();
    assert_eq!(back.tasks[0].command[2], *arg);
}

#[test]
fn input_problems_are_all_reported() {
    let ps = plan(
        &flow(),
        "job-3",
        &inputs(json!({"limit": "lots", "dry": "maybe", "dya": "x", "ratio": [1]})),
    )
    .unwrap_err();
    let fields: Vec<&str> = ps.iter().map(|p| p.field.as_deref().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "inputs.dya",
            "inputs.day",
            "inputs.dry",
            "inputs.limit",
            "inputs.ratio"
        ],
        "{ps:#?}"
    );
    assert!(ps[0].message.contains("unknown input `dya`"), "{}", ps[0]);
    assert!(ps[0].message.contains("did you mean `day`?"), "{}", ps[0]);
    assert!(
        ps[0]
            .message
            .contains("declared inputs: cfg, day, dry, limit, note, ratio"),
        "{}",
        ps[0]
    );
    assert!(
        ps[1].message.contains("missing required input `day`"),
        "{}",
        ps[1]
    );
    assert!(ps[1].message.contains("the day to report"), "{}", ps[1]);
    assert!(
        ps[2]
            .message
            .contains("of type `boolean`, but a string was given"),
        "{}",
        ps[2]
    );
    assert!(ps[3].message.contains("of type `integer`"), "{}", ps[3]);
    assert!(
        ps[4].message.contains("of type `number`, but a list was given"),
        "{}",
        ps[4]
    );
}

#[test]
fn strings_convert_to_the_declared_type() {
    let planned = plan(
        &flow(),
        "job-4",
        &inputs(json!({"day": "d", "ratio": "2.5", "dry": "true", "cfg": "{\"b\": true}"})),
    )
    .unwrap();
    assert_eq!(planned.inputs["ratio"], json!(2.5));
    assert_eq!(planned.inputs["dry"], json!(true));
    assert_eq!(planned.inputs["cfg"], json!({"b": true}));
    assert_eq!(
        text(&planned.tasks[0].input_files["main.py"]),
        "print({\"b\":true})"
    );
    let ps = plan(&flow(), "job-5", &inputs(json!({"day": 5}))).unwrap_err();
    assert!(
        ps[0].message.contains("of type `string`, but a number was given"),
        "{ps:?}"
    );
}

#[test]
fn job_ids_must_be_safe_directory_names() {
    for good in [
        "job-1",
        "0193a6f2-7c1e-7e4a-9b1d-2f0c3e4d5a6b",
        "nightly.2024_05_01",
        &"x".repeat(128),
    ] {
        assert_eq!(check_job_id(good), Ok(()), "{good}");
    }
    for bad in ["", ".hidden", "..", "a/b", "a b", "é", &"x".repeat(129)] {
        let e = check_job_id(bad).unwrap_err();
        assert!(e.contains("1 to 128"), "{bad}: {e}");
    }
    let ps = plan(&flow(), "../etc", &inputs(json!({"day": "d"}))).unwrap_err();
    assert_eq!(ps[0].field.as_deref(), Some("jobId"));
}
