//! Bad flows: each problem is reported with its exact place, its field and an actionable
//! message; all of a flow's problems are reported at once.

use ferry_flow::{Problem, validate};

fn problems(src: &str) -> Vec<Problem> {
    match validate(src, "f.yaml") {
        Ok(_) => panic!("flow was accepted:\n{src}"),
        Err(p) => p,
    }
}

/// Asserts that exactly one problem sits at `line:col` on `field` and mentions every `gist`.
#[track_caller]
fn expect(ps: &[Problem], at: &str, field: &str, gist: &[&str]) {
    let location = format!("f.yaml:{at}");
    let found: Vec<&Problem> = ps
        .iter()
        .filter(|p| {
            p.location.as_deref() == Some(location.as_str()) && p.field.as_deref().unwrap_or("") == field
        })
        .collect();
    let all = ps.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n");
    assert_eq!(
        found.len(),
        1,
        "expected one problem at {location} on {field}, got:\n{all}"
    );
    for g in gist {
        assert!(
            found[0].message.contains(g),
            "{:?} does not mention {g:?}",
            found[0].message
        );
    }
}

/// A one-task flow with `extra` lines added to the task (indented by four spaces).
fn task_with(extra: &str) -> String {
    let mut src = String::from("id: f\ntasks:\n  - id: a\n    runner: local\n    command: [echo]\n");
    for line in extra.lines() {
        src.push_str("    ");
        src.push_str(line);
        src.push('\n');
    }
    src
}

#[test]
fn yaml_syntax_errors_are_located() {
    let ps = problems("id: f\ntasks:\n  - id: a\n    command: [echo, \"x]\n");
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert!(ps[0].message.contains("invalid YAML"), "{}", ps[0]);
    assert!(
        ps[0].location.as_deref().unwrap().starts_with("f.yaml:"),
        "{}",
        ps[0]
    );
}

#[test]
fn an_empty_file_says_what_a_flow_needs() {
    let ps = problems("");
    expect(&ps, "1:1", "", &["expected a mapping", "found nothing"]);
}

#[test]
fn unknown_fields_suggest_and_list_what_is_accepted() {
    let ps = problems(&task_with("dependOn: []"));
    expect(
        &ps,
        "6:5",
        "tasks[0].dependOn",
        &[
            "unknown field `dependOn`",
            "did you mean `dependsOn`?",
            "accepted fields:",
            "`outputFiles`",
        ],
    );
    let ps = problems("id: f\nnamespce: x\ntasks: [{id: a, runner: local, command: [x]}]\n");
    expect(&ps, "2:1", "namespce", &["did you mean `namespace`?"]);
}

#[test]
fn missing_required_fields_are_named_where_they_belong() {
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: local\n");
    expect(
        &ps,
        "3:5",
        "tasks[0].command",
        &["missing required field `command`", "program and its arguments"],
    );
    let ps = problems("tasks:\n  - id: a\n    command: [x]\n");
    expect(&ps, "1:1", "id", &["missing required field `id`"]);
    expect(
        &ps,
        "2:5",
        "tasks[0].runner",
        &["missing required field `runner`"],
    );
    let ps = problems("id: f\n");
    expect(&ps, "1:1", "tasks", &["missing required field `tasks`"]);
}

#[test]
fn wrong_types_say_what_was_expected() {
    let ps =
        problems("id: f\ntasks:\n  - id: a\n    runner: local\n    command: echo hi\n    priority: high\n");
    expect(
        &ps,
        "5:14",
        "tasks[0].command",
        &["expected a list, found the string \"echo hi\""],
    );
    expect(&ps, "6:15", "tasks[0].priority", &["expected an integer"]);
    let ps = problems(&task_with("env: { N: 5 }"));
    expect(
        &ps,
        "6:15",
        "tasks[0].env.N",
        &["expected a string", "put it in quotes"],
    );
}

#[test]
fn duplicate_task_ids_point_at_the_first() {
    let ps = problems(
        "id: f\ntasks:\n  - id: a\n    runner: local\n    command: [x]\n  - id: a\n    runner: local\n    command: [y]\n",
    );
    expect(
        &ps,
        "6:9",
        "tasks[1].id",
        &["duplicate task id `a`", "tasks[0] at f.yaml:3:9"],
    );
}

#[test]
fn invalid_task_ids_are_refused() {
    let ps = problems("id: f\ntasks:\n  - id: \"a b\"\n    runner: local\n    command: [x]\n");
    expect(
        &ps,
        "3:9",
        "tasks[0].id",
        &["`a b` is not a valid id", "1 to 64 letters"],
    );
    let long = "x".repeat(65);
    let ps = problems(&format!(
        "id: f\ntasks:\n  - id: {long}\n    runner: local\n    command: [x]\n"
    ));
    expect(&ps, "3:9", "tasks[0].id", &["is not a valid id"]);
}

#[test]
fn unknown_dependencies_suggest_a_task() {
    let ps = problems(
        "id: f\ntasks:\n  - id: load\n    runner: local\n    command: [x]\n  - id: b\n    runner: local\n    command: [y]\n    dependsOn: [lod]\n",
    );
    expect(
        &ps,
        "9:17",
        "tasks[1].dependsOn[0]",
        &[
            "unknown task `lod`",
            "did you mean `load`?",
            "tasks in this flow: `load`, `b`",
        ],
    );
}

#[test]
fn dependency_cycles_print_their_path() {
    let src = "id: f
tasks:
  - id: a
    runner: local
    command: [x]
    dependsOn: [c]
  - id: b
    runner: local
    command: [x]
    dependsOn: [a]
  - id: c
    runner: local
    command: [x]
    dependsOn: [b]
";
    let ps = problems(src);
    assert_eq!(ps.len(), 1, "{ps:?}");
    // Found where the search closes the loop: b's dependency on a.
    expect(
        &ps,
        "10:17",
        "tasks[1].dependsOn[0]",
        &["dependency cycle: a -> c -> b -> a"],
    );
    let ps = problems(&task_with("dependsOn: [a]"));
    expect(
        &ps,
        "6:17",
        "tasks[0].dependsOn[0]",
        &["dependency cycle: a -> a"],
    );
}

#[test]
fn unknown_runner_types_suggest_and_list() {
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: dokcer\n    command: [x]\n");
    expect(
        &ps,
        "4:13",
        "tasks[0].runner",
        &[
            "unknown runner type `dokcer`",
            "did you mean `docker`?",
            "`aws-batch`",
        ],
    );
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: { type: aws_batch }\n    command: [x]\n");
    expect(
        &ps,
        "4:21",
        "tasks[0].runner.type",
        &["unknown runner type `aws_batch`", "did you mean `aws-batch`?"],
    );
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: { image: x }\n    command: [x]\n");
    expect(
        &ps,
        "4:13",
        "tasks[0].runner.type",
        &["missing required field `type`", "`local`"],
    );
}

#[test]
fn runner_parameters_are_checked_for_their_type() {
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: { type: docker, imag: x }\n    command: [x]\n");
    expect(
        &ps,
        "4:29",
        "tasks[0].runner.imag",
        &["unknown field `imag`", "did you mean `image`?"],
    );
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: { type: docker }\n    command: [x]\n");
    expect(
        &ps,
        "4:13",
        "tasks[0].runner",
        &["runner `docker` needs `image`", "defaults.docker.image"],
    );
    let ps =
        problems("id: f\ntasks:\n  - id: a\n    runner: { type: agent, cluster: 5 }\n    command: [x]\n");
    expect(&ps, "4:37", "tasks[0].runner.cluster", &["expected a string"]);
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: docker\n    command: [x]\n");
    expect(&ps, "4:13", "tasks[0].runner", &["needs `image`"]);
}

#[test]
fn defaults_complete_runner_parameters() {
    let src = "id: f
defaults:
  docker: { image: alpine }
tasks:
  - id: a
    runner: docker
    command: [x]
  - id: b
    runner: { type: docker, image: busybox }
    command: [x]
";
    let flow = validate(src, "f.yaml").unwrap();
    let images: Vec<String> = flow
        .runners()
        .map(|r| match r {
            ferry_event::payload::Runner::Docker(d) => d.image.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(images, ["alpine", "busybox"]);
}

#[test]
fn unknown_backends_under_defaults_are_refused() {
    let ps =
        problems("id: f\ndefaults:\n  dokcer: { image: x }\ntasks: [{id: a, runner: local, command: [x]}]\n");
    expect(
        &ps,
        "3:3",
        "defaults.dokcer",
        &["unknown backend `dokcer`", "did you mean `docker`?", "`agent`"],
    );
    let ps =
        problems("id: f\ndefaults:\n  docker: { imgae: x }\ntasks: [{id: a, runner: local, command: [x]}]\n");
    expect(
        &ps,
        "3:13",
        "defaults.docker.imgae",
        &["unknown field `imgae`", "did you mean `image`?"],
    );
}

#[test]
fn bad_durations_say_what_is_accepted() {
    let ps = problems(&task_with(
        "timeout: 10 minutes\nretry: { attempts: 2, initial: 1.5s }",
    ));
    expect(
        &ps,
        "6:14",
        "tasks[0].timeout",
        &["`10 minutes` is not a duration", "e.g. `30s`, `10m`, `1h30m`"],
    );
    expect(
        &ps,
        "7:36",
        "tasks[0].retry.initial",
        &["`1.5s` is not a duration"],
    );
    let ps = problems(&task_with("timeout: 0s"));
    expect(&ps, "6:14", "tasks[0].timeout", &["longer than 0"]);
    let ps = problems(&task_with("timeout: 30"));
    expect(
        &ps,
        "6:14",
        "tasks[0].timeout",
        &["expected a string", "found the integer 30"],
    );
}

#[test]
fn templates_must_name_declared_inputs() {
    let src = "id: f\ninputs:\n  day: { type: string }\ntasks:\n  - id: a\n    runner: local\n    command: [echo, \"--day={{ inputs.dya }}\"]\n";
    let ps = problems(src);
    expect(
        &ps,
        "7:21",
        "tasks[0].command[1]",
        &[
            "`{{ inputs.dya }}`",
            "does not declare",
            "did you mean `day`?",
            "declared inputs: `day`",
        ],
    );
}

#[test]
fn templates_may_use_outputs_of_upstream_tasks_only() {
    let src = "id: f
tasks:
  - id: a
    runner: local
    command: [x]
  - id: b
    runner: local
    command: [x]
    dependsOn: [a]
  - id: c
    runner: local
    command: [x]
    dependsOn: [b]
    env:
      FROM_A: '{{ outputs.a.rows }}'
      FROM_D: '{{ outputs.d.rows }}'
  - id: d
    runner: local
    command: ['{{ outputs.c.x }}', '{{ outputs.b.x }}']
";
    let ps = problems(src);
    assert_eq!(ps.len(), 3, "{ps:?}");
    expect(
        &ps,
        "16:15",
        "tasks[2].env.FROM_D",
        &[
            "outputs of task `d`, which is not upstream of `c`",
            "add `d` to the `dependsOn` of `c`",
        ],
    );
    expect(
        &ps,
        "19:15",
        "tasks[3].command[0]",
        &["task `c`, which is not upstream of `d`"],
    );
    expect(
        &ps,
        "19:36",
        "tasks[3].command[1]",
        &["task `b`, which is not upstream of `d`"],
    );
    let ps = problems(&task_with("env: { X: '{{ outputs.zz.k }}' }"));
    expect(&ps, "6:15", "tasks[0].env.X", &["unknown task `zz`"]);
}

#[test]
fn unknown_template_expressions_list_the_accepted_ones() {
    let ps = problems(&task_with("inputFiles: { run.sh: 'cd {{ workdir }}' }"));
    expect(
        &ps,
        "6:27",
        "tasks[0].inputFiles[\"run.sh\"]",
        &[
            "unknown template expression `{{ workdir }}`",
            "did you mean `workingDir`?",
            "{{ secret('NAME') }}",
        ],
    );
    let ps = problems(&task_with("env: { T: \"{{ secret(TOKEN) }}\" }"));
    expect(&ps, "6:15", "tasks[0].env.T", &["secret('NAME')"]);
}

#[test]
fn hostile_input_file_names_are_refused() {
    let cases = [
        ("/etc/passwd", "absolute"),
        ("../escape", "`..`"),
        ("a/../../b", "`..`"),
        ("a\\\\b", "`\\`"),
        ("dir/", "end with `/`"),
        ("", "empty"),
        ("a\\0b", "NUL"),
    ];
    for (name, gist) in cases {
        let ps = problems(&task_with(&format!("inputFiles:\n  \"{name}\": x")));
        let p = ps
            .iter()
            .find(|p| p.location.as_deref() == Some("f.yaml:7:7"))
            .unwrap_or_else(|| panic!("{name}: {ps:?}"));
        assert!(p.message.contains(gist), "{name}: {p}");
        assert!(
            p.field.as_deref().unwrap().starts_with("tasks[0].inputFiles"),
            "{p}"
        );
    }
    assert!(validate(&task_with("inputFiles: { a/b.txt: x, ..hidden: y }"), "f.yaml").is_ok());
}

#[test]
fn output_patterns_stay_inside_the_working_directory() {
    let ps = problems(&task_with(
        "outputFiles: ['*.json', /abs/*.csv, '../up/*', 'a/[b']",
    ));
    expect(
        &ps,
        "6:29",
        "tasks[0].outputFiles[1]",
        &["relative to the working directory"],
    );
    expect(&ps, "6:41", "tasks[0].outputFiles[2]", &["must not contain `..`"]);
    expect(&ps, "6:52", "tasks[0].outputFiles[3]", &["not a glob pattern"]);
    assert_eq!(ps.len(), 3, "{ps:?}");
}

#[test]
fn env_names_must_be_portable_and_not_reserved() {
    let ps = problems(&task_with(
        "env:\n  FERRY_JOB_ID: x\n  1BAD: y\n  has-dash: z\n  _ok: w",
    ));
    expect(&ps, "7:7", "tasks[0].env.FERRY_JOB_ID", &["reserved"]);
    expect(
        &ps,
        "8:7",
        "tasks[0].env.1BAD",
        &["not a valid environment variable name"],
    );
    expect(
        &ps,
        "9:7",
        "tasks[0].env.has-dash",
        &["not a valid environment variable name"],
    );
    assert_eq!(ps.len(), 3, "{ps:?}");
}

#[test]
fn concurrency_and_retry_attempts_start_at_one() {
    let ps = problems(
        "id: f\nconcurrency: 0\ntasks:\n  - id: a\n    runner: local\n    command: [x]\n    retry: { attempts: 0 }\n",
    );
    expect(&ps, "2:14", "concurrency", &["must be at least 1, found 0"]);
    expect(
        &ps,
        "7:24",
        "tasks[0].retry.attempts",
        &["must be at least 1, found 0"],
    );
    let ps = problems(&task_with("retry: { backoff: exponential }"));
    expect(
        &ps,
        "6:12",
        "tasks[0].retry.attempts",
        &["missing required field `attempts`"],
    );
    let ps = problems(&task_with("retry: { attempts: 2, backoff: linear }"));
    expect(
        &ps,
        "6:36",
        "tasks[0].retry.backoff",
        &["unknown value `linear`", "`constant`, `exponential`"],
    );
}

#[test]
fn bad_memory_quantities_say_what_is_accepted() {
    let ps = problems(&task_with("resources: { cpu: 0, memory: 12MB }"));
    expect(
        &ps,
        "6:34",
        "tasks[0].resources.memory",
        &["`12MB` is not a memory quantity", "`512Mi`"],
    );
    expect(&ps, "6:23", "tasks[0].resources.cpu", &["more than 0"]);
}

#[test]
fn input_declarations_are_checked() {
    let ps = problems(
        "id: f\ninputs:\n  n: { type: integer, default: five }\n  d: { type: strng }\ntasks: [{id: a, runner: local, command: [x]}]\n",
    );
    expect(
        &ps,
        "3:32",
        "inputs.n.default",
        &["of the input's type `integer`"],
    );
    expect(
        &ps,
        "4:14",
        "inputs.d.type",
        &["unknown input type `strng`", "did you mean `string`?"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let src = "id: f
inputs:
  day: { type: string }
concurrency: 0
defaults:
  dokcer: {}
tasks:
  - id: a
    runner: dokcer
    command: [echo, '{{ inputs.dya }}']
    dependOn: [b]
  - id: b
    runner: { type: docker }
    command: ['{{ nope }}']
    dependsOn: [c, zz]
    timeout: soon
    env: { FERRY_X: a }
    inputFiles: { /etc/passwd: x }
    outputFiles: [../up]
    resources: { memory: lots }
  - id: c
    runner: local
    command: ['{{ outputs.a.k }}']
    dependsOn: [b]
    retry: { attempts: 0 }
  - id: a
    runner: local
    command: [x]
";
    let ps = problems(src);
    let fields: Vec<&str> = ps.iter().map(|p| p.field.as_deref().unwrap_or("")).collect();
    assert_eq!(
        fields,
        [
            "concurrency",
            "defaults.dokcer",
            "tasks[0].runner",
            "tasks[0].command[1]",
            "tasks[0].dependOn",
            "tasks[1].runner",
            "tasks[1].command[0]",
            "tasks[1].dependsOn[1]",
            "tasks[1].timeout",
            "tasks[1].env.FERRY_X",
            "tasks[1].inputFiles[\"/etc/passwd\"]",
            "tasks[1].outputFiles[0]",
            "tasks[1].resources.memory",
            "tasks[2].command[0]",
            "tasks[2].dependsOn[0]",
            "tasks[2].retry.attempts",
            "tasks[3].id",
        ],
        "{ps:#?}"
    );
    assert!(
        ps.iter()
            .all(|p| p.location.as_deref().is_some_and(|l| l.starts_with("f.yaml:")))
    );
}

#[test]
fn a_hundred_thousand_tasks_validate() {
    let mut src = String::from("id: big\ntasks:\n");
    for i in 0..100_000 {
        src.push_str(&format!(
            "  - {{id: t{i}, runner: local, command: [echo, '{{{{ outputs.t{}.n }}}}']",
            i.max(1) - 1
        ));
        if i > 0 {
            src.push_str(&format!(", dependsOn: [t{}, t{}]", i - 1, i / 2));
        }
        src.push_str("}\n");
    }
    let ps = validate(&src, "big.yaml").err().unwrap_or_default();
    // t0 refers to its own outputs: the only problem.
    assert_eq!(ps.len(), 1, "{:?}", &ps[..ps.len().min(3)]);
    assert!(ps[0].message.contains("not upstream of `t0`"), "{}", ps[0]);
}

#[test]
fn a_deep_chain_does_not_overflow_the_stack() {
    let n = 10_000;
    let mut src = String::from("id: chain\ntasks:\n");
    for i in 0..n {
        src.push_str(&format!("  - {{id: t{i}, runner: local, command: [x]"));
        if i > 0 {
            src.push_str(&format!(", dependsOn: [t{}]", i - 1));
        }
        if i == n - 1 {
            // Far upstream, found through the whole chain.
            src.push_str(", env: {FIRST: '{{ outputs.t0.k }}'}");
        }
        src.push_str("}\n");
    }
    assert!(validate(&src, "chain.yaml").is_ok());
    // Closing the chain into a cycle is found and printed without recursion either.
    let cyclic = src.replacen(
        "{id: t0, runner: local, command: [x]",
        &format!("{{id: t0, runner: local, command: [x], dependsOn: [t{}]", n - 1),
        1,
    );
    let ps = validate(&cyclic, "chain.yaml").unwrap_err();
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert!(
        ps[0]
            .message
            .starts_with("dependency cycle: t0 -> t9999 -> t9998"),
        "{}",
        &ps[0].message[..80]
    );
}

#[test]
fn trigger_problems_are_located_with_what_is_accepted() {
    let src = "id: f
inputs:
  day: { type: string }
triggers:
  - on:
      type: 'com.acme.*[x'
      source: { prefix: '' }
      data: { 'a..b': 1 }
    inputs:
      dya: '{{ event.data.day }}'
      day: '{{ inputs.day }}'
tasks:
  - { id: a, runner: local, command: [echo] }
";
    let ps = problems(src);
    expect(
        &ps,
        "6:13",
        "triggers[0].on.type",
        &["not a valid glob", "{ exact: … }"],
    );
    expect(&ps, "7:15", "triggers[0].on.source", &["must not be empty"]);
    expect(&ps, "8:15", "triggers[0].on.data[\"a..b\"]", &["not a data path"]);
    expect(
        &ps,
        "10:7",
        "triggers[0].inputs.dya",
        &["does not declare", "did you mean `day`"],
    );
    expect(
        &ps,
        "11:12",
        "triggers[0].inputs.day",
        &["before the job has inputs", "{{ event.data.PATH }}"],
    );
    assert_eq!(ps.len(), 5, "{ps:#?}");
}

#[test]
fn agent_runners_name_a_cluster_and_a_versioned_task_and_may_leave_the_command_out() {
    let ok = "id: f\ntasks:\n  - id: a\n    runner: { type: agent, cluster: gpu, task: train@2.1 }\n";
    assert!(
        validate(ok, "f.yaml").is_ok(),
        "an agent task without a command is valid"
    );
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: { type: agent, cluster: gpu }\n");
    expect(&ps, "4:13", "tasks[0].runner", &["runner `agent` needs `task`"]);
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: { type: agent, cluster: gpu, task: train }\n");
    expect(
        &ps,
        "4:13",
        "tasks[0].runner",
        &["invalid parameters for runner `agent`", "NAME@MAJOR.MINOR"],
    );
    let ps =
        problems("id: f\ntasks:\n  - id: a\n    runner: { type: agent, cluster: GPU, task: train@2.1 }\n");
    expect(
        &ps,
        "4:13",
        "tasks[0].runner",
        &["cluster \"GPU\" may hold only lowercase"],
    );
    let ps =
        problems("id: f\ntasks:\n  - id: a\n    runner: { type: agent, cluster: gpu, task: train@2.x }\n");
    expect(
        &ps,
        "4:13",
        "tasks[0].runner",
        &["version \"2.x\" must be MAJOR.MINOR"],
    );
    // Every other runner still needs its command.
    let ps = problems("id: f\ntasks:\n  - id: a\n    runner: local\n");
    expect(
        &ps,
        "3:5",
        "tasks[0].command",
        &[
            "missing required field `command`",
            "only `runner: agent` tasks may leave it out",
        ],
    );
}

#[test]
fn schedule_problems_are_located_with_what_is_accepted() {
    let src = "id: f
inputs:
  day: { type: string }
triggers:
  - schedule: '0 25 * * *'
    timezone: Europe/Pariss
    inputs:
      day: '{{ event.data.day }}'
  - schedule: '@fortnightly'
  - schedule: '* * * * *'
    on: { type: com.acme.x }
  - inputs: { day: x }
  - on: { type: com.acme.x }
    timezone: UTC
    inputs: { day: '{{ trigger.date }}' }
  - schedule: '*/5 * * * * *'
    timezone: America/New_York
    inputs: { day: 'run {{ trigger.time }}' }
tasks:
  - { id: a, runner: local, command: [echo] }
";
    let ps = problems(src);
    expect(
        &ps,
        "5:15",
        "triggers[0].schedule",
        &["field 2 (hour) `25`", "0-23"],
    );
    expect(
        &ps,
        "6:15",
        "triggers[0].timezone",
        &[
            "unknown time zone `Europe/Pariss`",
            "did you mean `Europe/Paris`?",
        ],
    );
    expect(
        &ps,
        "8:12",
        "triggers[0].inputs.day",
        &["a schedule starts its jobs without one", "{{ trigger.time }}"],
    );
    expect(
        &ps,
        "9:15",
        "triggers[1].schedule",
        &["not a schedule name", "@daily"],
    );
    expect(&ps, "10:15", "triggers[2].schedule", &["not both"]);
    expect(&ps, "12:5", "triggers[3]", &["needs `on:`", "or `schedule:`"]);
    expect(&ps, "14:15", "triggers[4].timezone", &["is for a `schedule:`"]);
    expect(&ps, "15:20", "triggers[4].inputs.day", &["`{{ event.time }}`"]);
    assert_eq!(ps.len(), 8, "{ps:#?}");
}
