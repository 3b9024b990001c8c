//! Bad input of every kind, through the `ferry` binary: clear, located errors and exit status 2,
//! and nothing run.

mod common;

use common::*;

fn validate(flow: &std::path::Path) -> Ran {
    let mut c = ferry();
    c.arg("validate").arg(flow);
    output(c)
}

#[test]
fn every_problem_of_a_broken_flow_is_reported_at_once_with_its_place() {
    let ran = validate(&flow("broken.yaml"));
    assert_eq!(ran.code, 2);
    let err = &ran.stderr;
    let expect = [
        // unknown field, with a suggestion
        ("broken.yaml:7:5", "tasks[0].comand", "did you mean `command`"),
        // missing required field
        ("broken.yaml:5:5", "tasks[0].command", "missing required field"),
        // unknown runner type
        ("broken.yaml:9:13", "tasks[1].runner", "did you mean `docker`"),
        // template naming an unknown input
        (
            "broken.yaml:10:21",
            "tasks[1].command[1]",
            "(did you mean `day`?)",
        ),
        // bad duration
        ("broken.yaml:16:14", "tasks[2].timeout", "10 minutes"),
        // duplicate id
        ("broken.yaml:17:9", "tasks[3].id", "duplicate task id `a`"),
        // outputs of a task that is not upstream
        ("broken.yaml:19:21", "tasks[3].command[1]", "not upstream of `a`"),
        // hostile input file name
        ("broken.yaml:21:7", "tasks[3].inputFiles", "../escape.sh"),
    ];
    for (place, field, gist) in expect {
        assert!(
            err.lines()
                .any(|l| l.contains(place) && l.contains(field) && l.contains(gist)),
            "no line with {place}, {field} and {gist:?} in:\n{err}"
        );
    }
    // The cycle, with its path.
    assert!(
        err.lines().any(|l| l.contains("dependency cycle: b -> c -> b")),
        "{err}"
    );
    assert!(err.contains("broken.yaml: 9 problems"), "{err}");
}

#[test]
fn run_refuses_an_invalid_flow_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&flow("broken.yaml"), dir.path(), &[]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("broken.yaml:7:5"), "{}", ran.stderr);
    assert!(!dir.path().join("scheduler.db").exists());
}

#[test]
fn a_task_whose_backend_no_launcher_serves_fails_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&flow("unserved.yaml"), dir.path(), &[]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let all = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        all.contains("no launcher for backend `kubernetes` is running"),
        "{all}"
    );
}

#[test]
fn a_missing_required_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&flow("needs-input.yaml"), dir.path(), &[]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("day"), "{}", ran.stderr);
    assert!(ran.stderr.to_lowercase().contains("required"), "{}", ran.stderr);
}

#[test]
fn an_unknown_input_key_is_named_with_the_declared_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(
        &flow("needs-input.yaml"),
        dir.path(),
        &["--input", "day=x", "--input", "dya=y"],
    );
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("dya"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("count"),
        "the declared inputs are listed: {}",
        ran.stderr
    );
}

#[test]
fn a_mistyped_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(
        &flow("needs-input.yaml"),
        dir.path(),
        &["--input", "day=x", "--input", "count=many"],
    );
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("count") && ran.stderr.contains("integer"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_malformed_input_argument_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&flow("needs-input.yaml"), dir.path(), &["--input", "day"]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("NAME=VALUE"), "{}", ran.stderr);
}

#[test]
fn a_missing_flow_file_is_reported() {
    let ran = validate(std::path::Path::new("no/such/flow.yaml"));
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("no/such/flow.yaml"), "{}", ran.stderr);
}

#[test]
fn yaml_syntax_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("syntax.yaml");
    std::fs::write(&f, "id: x\ntasks:\n  - id: a\n    command: [echo, \"unclosed]\n").unwrap();
    let ran = validate(&f);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("syntax.yaml:4:"), "{}", ran.stderr);
}

#[test]
fn template_values_with_shell_syntax_stay_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let value = format!(
        "$(touch {m}); `touch {m}`; {{{{ secret('X') }}}} && touch {m}",
        m = marker.display()
    );
    let ran = run(
        &example("hello.yaml"),
        &dir.path().join("data"),
        &["--input", &format!("name={value}")],
    );
    assert_eq!(ran.code, 0);
    assert_eq!(ran.lines_of("greet"), [format!("hello, {value}")]);
    assert!(!marker.exists(), "input text was executed");
}

#[test]
fn valid_examples_validate() {
    let mut c = ferry();
    c.arg("validate");
    for e in [
        "hello", "diamond", "fanout", "retry", "failfast", "files", "secret",
    ] {
        c.arg(example(&format!("{e}.yaml")));
    }
    let ran = output(c);
    assert_eq!(ran.code, 0);
    assert_eq!(ran.stdout.lines().filter(|l| l.ends_with("tasks)")).count(), 7);
}

#[test]
fn the_schema_command_prints_the_flow_schema() {
    let mut c = ferry();
    c.arg("schema");
    let ran = output(c);
    assert_eq!(ran.code, 0);
    let schema: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schemas/flow.schema.json")).unwrap())
            .unwrap();
    assert_eq!(schema, committed);
}
