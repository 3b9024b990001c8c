//! The aws-batch backend driven directly, against moto: what it registers and submits, how it
//! adopts a job submitted twice, and what it refuses before submitting anything.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_event::payload::{AwsBatchPlatform, Resources, Runner, TaskDispatched};
use ferry_event::template::{Part, Template};
use ferry_launcher::Backend;
use ferry_launcher::backend::{ComputeState, Task};
use ferry_launcher::secrets::Secrets;
use ferry_launcher_aws_batch::{AwsBatch, Handle, Settings, names};

fn dispatch(id: &str, runner: Runner, command: &[&str]) -> TaskDispatched {
    TaskDispatched {
        job_id: "job-1".into(),
        task_id: format!("task-{id}"),
        attempt_id: id.into(),
        attempt: 1,
        runner,
        command: command.iter().map(|w| Template::text(*w)).collect(),
        env: BTreeMap::new(),
        input_files: BTreeMap::new(),
        output_files: Vec::new(),
        resources: Resources::default(),
        timeout_ms: None,
        lease_ms: 30_000,
        ready_at_ms: ferry_event::now_ms(),
        flow_id: Some("flow-a".into()),
        namespace: Some("team-a".into()),
        priority: 0,
    }
}

/// Everything the job wrote, read through the backend to the end.
async fn output(backend: &AwsBatch, compute: &ferry_launcher::Compute) -> String {
    let mut log = Vec::new();
    let mut from = ferry_launcher::backend::LogPosition::default();
    for _ in 0..100 {
        let read = backend
            .read_logs(compute, ferry_event::payload::Stream::Stdout, &from, 1 << 16)
            .await
            .expect("read the log");
        log.extend_from_slice(&read.bytes);
        from.stdout += read.bytes.len() as u64;
        from.cursor = read.cursor;
        if read.complete {
            return String::from_utf8_lossy(&log).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the log never completed: {}", String::from_utf8_lossy(&log));
}

async fn ended(backend: &AwsBatch, compute: &ferry_launcher::Compute) -> ComputeState {
    tokio::time::timeout(Duration::from_secs(60), backend.wait(compute))
        .await
        .expect("the job ends within a minute")
        .expect("its state can be read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_registered_once_and_jobs_carry_the_attempts_tags() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let target = common::BatchTarget::new(endpoint).await;
    let backend = target.make("launcher-tags".into());
    let secrets = Secrets::new();
    let prefix = common::fresh("def");
    // A role of this test's own, so that the definitions are this test's alone (the role is
    // part of what names a definition) whatever other tests run on the same server.
    let role = format!("arn:aws:iam::123456789012:role/{prefix}");
    let mut runner = target.runner();
    runner.job_role_arn = Some(role.clone());
    let mut ids = Vec::new();
    for (n, memory) in [(1, None), (2, None), (3, Some("1Gi"))] {
        let id = format!("{prefix}-{n}");
        let mut d = dispatch(
            &id,
            Runner::AwsBatch(runner.clone()),
            &["sh", "-c", "echo \"$FERRY_ATTEMPT_ID $GREETING\""],
        );
        d.env.insert("GREETING".into(), Template::text("hello 'there'"));
        d.resources.memory = memory.map(String::from);
        d.timeout_ms = Some(5_000);
        backend.check(&d).expect("a valid task");
        let task = Task::new(&d, &secrets);
        let reserved = backend.reserve(task).await.expect("reserve");
        let compute = backend.create(task, reserved).await.expect("create");
        match ended(&backend, &compute).await {
            ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
            other => panic!("{other:?}"),
        }
        ids.push((id, compute));
    }
    // One definition for the first two (same image, platform and size), another for the third.
    let names: Vec<String> = [None, Some(1u64 << 30)]
        .into_iter()
        .map(|memory| {
            let (vcpus, memory_mib) = names::size(AwsBatchPlatform::Fargate, None, memory, 0).unwrap();
            names::DefinitionSpec {
                image: runner.image.clone(),
                platform: AwsBatchPlatform::Fargate,
                vcpus,
                memory_mib,
                gpus: 0,
                job_role_arn: Some(role.clone()),
                execution_role_arn: None,
                assign_public_ip: None,
                platform_version: None,
                ephemeral_storage_gib: None,
            }
            .name()
        })
        .collect();
    assert_ne!(names[0], names[1]);
    for name in &names {
        let defs = target
            .batch
            .describe_job_definitions()
            .job_definition_name(name)
            .send()
            .await
            .expect("describe job definitions");
        assert_eq!(
            defs.job_definitions().len(),
            1,
            "{name} was registered more than once: {defs:?}"
        );
        let def = &defs.job_definitions()[0];
        assert_eq!(def.retry_strategy().and_then(|r| r.attempts()), Some(1));
        assert!(
            def.container_properties()
                .is_some_and(|c| c.command().is_empty() && c.environment().is_empty()),
            "the task's command and environment go in the job's overrides, not its definition: {def:?}"
        );
    }
    // The job: tagged, Batch's timeout at its least, the overrides verbatim.
    let (id, compute) = &ids[0];
    let h: Handle = compute.handle_as().expect("a handle");
    let job_id = h.job_id.expect("a submitted job has an id");
    let out = target
        .batch
        .describe_jobs()
        .jobs(&job_id)
        .send()
        .await
        .expect("describe the job");
    let job = &out.jobs()[0];
    assert_eq!(job.job_name(), Some(names::job_name(id).as_str()));
    let tags = job.tags().expect("the job is tagged");
    for (key, value) in [
        ("ferry.job", "job-1"),
        ("ferry.task", format!("task-{id}").as_str()),
        ("ferry.attempt", id.as_str()),
        ("ferry.flow", "flow-a"),
        ("ferry.namespace", "team-a"),
        ("ferry.launcher", "launcher-tags"),
    ] {
        assert_eq!(tags.get(key).map(String::as_str), Some(value), "{key}: {tags:?}");
    }
    assert_eq!(
        job.timeout().and_then(|t| t.attempt_duration_seconds()),
        Some(60),
        "5 s plus the grace, raised to AWS's least"
    );
    assert!(
        job.job_definition().is_some_and(|d| d.contains(&names[0])),
        "{:?}",
        job.job_definition()
    );
    // What the task printed came back through CloudWatch Logs.
    let read = backend
        .read_logs(
            compute,
            ferry_event::payload::Stream::Stdout,
            &Default::default(),
            1 << 20,
        )
        .await
        .expect("read the log");
    assert_eq!(
        String::from_utf8_lossy(&read.bytes),
        format!("{id} hello 'there'\n")
    );
    assert!(read.complete);
    for (_, compute) in &ids {
        backend.release(compute).await.expect("release");
    }
}

/// A "Batch Job State Change" as EventBridge puts it on an SQS queue.
fn state_change(job_id: &str, job_name: &str, status: &str) -> String {
    serde_json::json!({
        "version": "0",
        "id": ferry_event::new_id(),
        "detail-type": ferry_launcher_aws_batch::events::DETAIL_TYPE,
        "source": "aws.batch",
        "account": "123456789012",
        "time": "2026-12-07T10:00:00Z",
        "region": common::REGION,
        "resources": [format!("arn:aws:batch:{}:123456789012:job/{job_id}", common::REGION)],
        "detail": {"jobName": job_name, "jobId": job_id, "status": status},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_event_brings_the_jobs_end_forward_and_the_queue_is_drained() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let target = common::BatchTarget::new(endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&target.sdk);
    let queue = sqs
        .create_queue()
        .queue_name(common::fresh("events"))
        .send()
        .await
        .expect("create the events queue")
        .queue_url()
        .unwrap()
        .to_string();
    // Polling alone would see the end only after two minutes.
    let mut settings = Settings::new("launcher-events");
    settings.poll_interval = Duration::from_secs(120);
    settings.events_queue = Some(queue.clone());
    let backend = AwsBatch::new(&target.sdk, settings);
    let secrets = Secrets::new();
    let id = common::fresh("ev");
    let d = dispatch(&id, Runner::AwsBatch(target.runner()), &["true"]);
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.expect("reserve");
    let compute = backend.create(task, reserved).await.expect("create");
    let h: Handle = compute.handle_as().unwrap();
    let job_id = h.job_id.clone().unwrap();
    // The first look at the job (a round as soon as it is watched) finds it under way.
    assert!(matches!(
        backend.status(&compute).await.unwrap(),
        ComputeState::Pending | ComputeState::Running
    ));
    let waiting = tokio::spawn({
        let (backend, compute) = (backend.clone(), compute.clone());
        async move { backend.wait(&compute).await }
    });
    // Once moto says it ended, EventBridge would say so too: a message that is not a Batch
    // state change first, then the job's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = target.batch.describe_jobs().jobs(&job_id).send().await.unwrap();
        if out.jobs()[0].status() == Some(&aws_sdk_batch::types::JobStatus::Succeeded) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "moto did not run the job");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for body in [
        "{\"detail-type\": \"something else\"}".to_string(),
        state_change(&job_id, &h.job_name, "SUCCEEDED"),
    ] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .expect("send an event");
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the event ends the wait long before the next poll")
        .unwrap()
        .expect("the job's state is read");
    match ended {
        ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Both messages were read and deleted: none comes back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let count = |name: aws_sdk_sqs::types::QueueAttributeName| {
            attrs.attributes().and_then(|a| a.get(&name)).map(String::as_str) == Some("0")
        };
        if count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            && count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages left on the queue: {attrs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    backend.release(&compute).await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_twice_for_one_attempt_runs_once() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let target = common::BatchTarget::new(endpoint).await;
    let first = target.make("launcher-dup".into());
    let secrets = Secrets::new();
    let id = common::fresh("dup");
    let d = dispatch(&id, Runner::AwsBatch(target.runner()), &["sleep", "60"]);
    let task = Task::new(&d, &secrets);
    let reserved = first.reserve(task).await.expect("reserve");
    let created = first.create(task, reserved.clone()).await.expect("create");
    let kept: Handle = created.handle_as().unwrap();
    // Another launcher's submit of the same attempt slipped through (it looked before this
    // one's job existed): a younger job of the same name.
    let definition = target
        .batch
        .describe_jobs()
        .jobs(kept.job_id.as_deref().unwrap())
        .send()
        .await
        .unwrap()
        .jobs()[0]
        .job_definition()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let younger = target
        .batch
        .submit_job()
        .job_name(&kept.job_name)
        .job_queue(&kept.queue)
        .job_definition(definition)
        .send()
        .await
        .expect("submit a duplicate")
        .job_id()
        .unwrap()
        .to_string();
    // A launcher started again on the journal's reservation finds the attempt's job: the
    // older one, and the younger is terminated.
    let second = target.make("launcher-dup".into());
    let found = second
        .find(&reserved)
        .await
        .expect("find")
        .expect("the attempt's job is found by its name");
    let h: Handle = found.handle_as().unwrap();
    assert_eq!(h.job_id, kept.job_id, "the older job is the attempt's");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active = common::active_jobs(&target.batch, &kept.queue).await;
        let of_attempt: Vec<&String> = active
            .iter()
            .filter(|(name, _)| *name == kept.job_name)
            .map(|(_, id)| id)
            .collect();
        if of_attempt.len() == 1 {
            assert_eq!(Some(of_attempt[0]), kept.job_id.as_ref());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the duplicate {younger} still runs beside {:?}: {active:?}",
            kept.job_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.stop(&found, Duration::from_secs(1)).await.expect("stop");
    assert!(matches!(
        second.status(&found).await.unwrap(),
        ComputeState::Exited(_)
    ));
    second.release(&found).await.expect("release");
    assert!(
        common::active_jobs(&target.batch, &kept.queue).await.is_empty(),
        "a job of the attempt is left running"
    );
}

#[tokio::test]
async fn what_batch_cannot_honour_is_refused_before_anything_is_submitted() {
    // No call is made: the endpoint is never reached.
    let backend = AwsBatch::new(
        &common::sdk("http://127.0.0.1:9").await,
        Settings::new("launcher-refuse"),
    );
    let runner = ferry_event::payload::AwsBatchRunner {
        image: "busybox".into(),
        compute_environment: Some("ce".into()),
        ..Default::default()
    };
    let ok = dispatch("ok", Runner::AwsBatch(runner.clone()), &["true"]);
    backend.check(&ok).expect("a valid task");
    let refused = |d: &TaskDispatched| backend.check(d).expect_err("refused").to_string();

    let mut d = ok.clone();
    d.env
        .insert("TOKEN".into(), Template(vec![Part::Secret("API_TOKEN".into())]));
    let e = refused(&d);
    assert!(e.contains("env.TOKEN") && e.contains("DescribeJobs"), "{e}");

    // Without a staging bucket, files are refused naming the flag that brings them.
    let mut d = ok.clone();
    d.input_files.insert("data.csv".into(), Template::text("x"));
    let e = refused(&d);
    assert!(
        e.contains("inputFiles.data.csv") && e.contains("--aws-batch-staging"),
        "{e}"
    );

    let mut d = ok.clone();
    d.output_files.push("*.csv".into());
    let e = refused(&d);
    assert!(
        e.contains("outputFiles") && e.contains("--aws-batch-staging"),
        "{e}"
    );

    let mut d = ok.clone();
    d.command.push(Template(vec![Part::WorkingDir]));
    assert!(refused(&d).contains("command[1]"));

    let mut d = ok.clone();
    d.resources.cpu = Some(1.0);
    d.resources.memory = Some("3000Mi".into());
    let e = refused(&d);
    assert!(e.contains("nearest one is cpu 1 with memory 3072Mi"), "{e}");

    let mut d = ok.clone();
    d.resources.gpu = Some(1);
    d.resources.gpu_type = Some("nvidia-l4".into());
    let mut ec2 = runner.clone();
    ec2.platform = Some(AwsBatchPlatform::Ec2);
    d.runner = Runner::AwsBatch(ec2);
    assert!(refused(&d).contains("resources.gpuType"));

    let mut d = ok.clone();
    d.runner = Runner::AwsBatch(ferry_event::payload::AwsBatchRunner {
        image: "busybox".into(),
        ..Default::default()
    });
    let e = refused(&d);
    assert!(
        e.contains("runner.jobQueue") && e.contains("runner.computeEnvironment"),
        "{e}"
    );

    let mut d = ok.clone();
    d.runner = Runner::default();
    assert!(refused(&d).contains("runner: aws-batch"));

    // A region that is not one, before any client of it is made.
    for bad in ["us-east1", "eu-west-1b", "EU-WEST-1"] {
        let mut d = ok.clone();
        d.runner = Runner::AwsBatch(ferry_event::payload::AwsBatchRunner {
            region: Some(bad.into()),
            ..runner.clone()
        });
        let e = refused(&d);
        assert!(e.contains("runner.region") && e.contains(bad), "{e}");
    }

    // A queue or compute environment of another region than the job's.
    let mut d = ok.clone();
    d.runner = Runner::AwsBatch(ferry_event::payload::AwsBatchRunner {
        region: Some("eu-west-1".into()),
        compute_environment: Some("arn:aws:batch:us-east-1:123456789012:compute-environment/ce".into()),
        ..runner.clone()
    });
    let e = refused(&d);
    assert!(
        e.contains("runner.computeEnvironment") && e.contains("is in us-east-1") && e.contains("eu-west-1"),
        "{e}"
    );

    // Fargate's own settings on EC2, naming the field.
    let mut d = ok.clone();
    d.runner = Runner::AwsBatch(ferry_event::payload::AwsBatchRunner {
        platform: Some(AwsBatchPlatform::Ec2),
        assign_public_ip: Some(true),
        ..runner.clone()
    });
    let e = refused(&d);
    assert!(e.contains("runner.assignPublicIp") && e.contains("EC2"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_job_through_the_bucket_never_its_description() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let target = common::BatchTarget::new(endpoint).await;
    let data = tempfile::tempdir().unwrap();
    let backend = target.make_staged("launcher-secrets".into(), data.path());
    let mut secrets = Secrets::new();
    secrets.insert("API_TOKEN", "t0ken-that-must-not-show");
    let id = common::fresh("secret");
    let mut d = dispatch(&id, Runner::AwsBatch(target.runner()), &["sh", "-c"]);
    d.command.push(Template(vec![
        Part::Text("echo \"arg:".into()),
        Part::Secret("API_TOKEN".into()),
        Part::Text(" env:$TOKEN\"".into()),
    ]));
    d.env
        .insert("TOKEN".into(), Template(vec![Part::Secret("API_TOKEN".into())]));
    d.env.insert("PLAIN".into(), Template::text("shown"));
    d.input_files.insert(
        "token.txt".into(),
        Template(vec![Part::Secret("API_TOKEN".into())]),
    );
    backend.check(&d).expect("secrets are staged");
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.expect("reserve");
    let compute = backend.create(task, reserved).await.expect("create");
    let state = ended(&backend, &compute).await;
    let h: Handle = compute.handle_as().unwrap();
    let job = target
        .batch
        .describe_jobs()
        .jobs(h.job_id.clone().unwrap())
        .send()
        .await
        .expect("describe the job");
    let shown = format!("{:?}", job.jobs());
    assert!(shown.contains("PLAIN"), "{shown}");
    assert!(
        !shown.contains("t0ken"),
        "a secret in the job's description: {shown}"
    );
    match state {
        ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // The job read it (its log has it; the runtime masks it before anything is published),
    // and the staged script was dropped once read.
    let log = output(&backend, &compute).await;
    assert_eq!(
        log.trim(),
        "arg:t0ken-that-must-not-show env:t0ken-that-must-not-show"
    );
    let left = common::staged(&target.staging_bucket).await;
    assert!(
        !left
            .iter()
            .any(|u| u.ends_with("/secrets.sh") || u.ends_with("/inputs.tar")),
        "the secrets were left staged: {left:?}"
    );
    backend.release(&compute).await.expect("release");
    assert!(common::staged(&target.staging_bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_own_bucket_stages_its_files_without_a_launcher_default() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let target = common::BatchTarget::new(endpoint.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings::new("launcher-own-bucket");
    settings.poll_interval = Duration::from_millis(200);
    settings.staging = Some(ferry_launcher_aws_batch::stage::Staging::new(
        None,
        ferry_artifacts::testing::moto_options(&endpoint),
        data.path().join("artifacts"),
        Default::default(),
    ));
    let backend = AwsBatch::new(&target.sdk, settings);
    let bucket = ferry_artifacts::testing::moto_bucket(&endpoint, "own");
    let id = common::fresh("own");
    let mut d = dispatch(
        &id,
        Runner::AwsBatch(target.runner()),
        &["sh", "-c", "cat in.txt > \"$FERRY_OUTPUTS\""],
    );
    d.input_files.insert(
        "in.txt".into(),
        Template::text("{\"from\": \"the task's bucket\"}"),
    );
    // No bucket, and one that is not S3: refused before anything is made.
    let e = backend.check(&d).expect_err("no bucket").to_string();
    assert!(
        e.contains("runner.bucket") && e.contains("--aws-batch-staging"),
        "{e}"
    );
    for bad in ["gs://elsewhere", "https://example.com/b"] {
        let mut runner = target.runner();
        runner.bucket = Some(bad.into());
        d.runner = Runner::AwsBatch(runner);
        let e = backend.check(&d).expect_err("not S3").to_string();
        assert!(e.contains("runner.bucket"), "{e}");
    }
    let mut runner = target.runner();
    runner.bucket = Some(bucket.clone());
    d.runner = Runner::AwsBatch(runner);
    backend.check(&d).expect("the task's bucket stages its files");
    let secrets = Secrets::new();
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.expect("reserve");
    let compute = backend.create(task, reserved).await.expect("create");
    match ended(&backend, &compute).await {
        ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    let h: Handle = compute.handle_as().unwrap();
    assert_eq!(h.stage_bucket.as_deref(), Some(format!("s3://{bucket}").as_str()));
    let collected = backend.collect(&compute, task).await.expect("collect");
    assert_eq!(
        collected.outputs.as_deref(),
        Some(b"{\"from\": \"the task's bucket\"}".as_slice())
    );
    backend.release(&compute).await.expect("release");
    let whole = ferry_artifacts::Store::open_with(
        &format!("s3://{bucket}"),
        ferry_artifacts::testing::moto_options(&endpoint),
    )
    .unwrap();
    assert!(whole.list_under(&d.job_id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_curl_stages_through_python() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let target = common::BatchTarget::new(endpoint).await;
    let data = tempfile::tempdir().unwrap();
    let backend = target.make_staged("launcher-python".into(), data.path());
    let mut runner = target.runner();
    runner.image = common::python_image();
    let id = common::fresh("python");
    let mut d = dispatch(
        &id,
        Runner::AwsBatch(runner),
        &[
            "python3",
            "-c",
            "import json, os; s = open('in/data.txt').read().strip(); \
             json.dump({'read': s, 'token': os.environ['TOKEN']}, open(os.environ['FERRY_OUTPUTS'], 'w')); \
             os.makedirs('out'); open('out/report.txt', 'w').write(s.upper())",
        ],
    );
    d.input_files
        .insert("in/data.txt".into(), Template::text("staged by python\n"));
    d.output_files.push("out/*".into());
    d.env
        .insert("TOKEN".into(), Template(vec![Part::Secret("API_TOKEN".into())]));
    let mut secrets = Secrets::new();
    secrets.insert("API_TOKEN", "python-secret-value");
    backend.check(&d).expect("a valid task");
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.expect("reserve");
    let compute = backend.create(task, reserved).await.expect("create");
    match ended(&backend, &compute).await {
        ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    let collected = backend.collect(&compute, task).await.expect("collect");
    let outputs: serde_json::Value = serde_json::from_slice(&collected.outputs.expect("outputs")).unwrap();
    assert_eq!(outputs["read"], "staged by python");
    assert_eq!(outputs["token"], "python-secret-value");
    assert_eq!(collected.files.len(), 1, "{:?}", collected.files);
    let stored = url::Url::parse(&collected.files[0].uri)
        .unwrap()
        .to_file_path()
        .unwrap();
    assert_eq!(std::fs::read_to_string(stored).unwrap(), "STAGED BY PYTHON");
    // The secrets' script was deleted by the job (python's DELETE) before release.
    let left = common::staged(&target.staging_bucket).await;
    assert!(!left.iter().any(|u| u.ends_with("/secrets.sh")), "{left:?}");
    backend.release(&compute).await.expect("release");
    assert!(common::staged(&target.staging_bucket).await.is_empty());
}

/// Another region than the launcher's (`common::REGION`): moto keeps each region's Batch, logs
/// and queues apart, as AWS does.
const OTHER_REGION: &str = "us-west-2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_in_another_region_runs_there_and_is_found_there_after_a_restart() {
    let Ok(endpoint) = common::moto() else {
        eprintln!("SKIPPED: FERRY_TEST_MOTO is not set");
        return;
    };
    let target = common::BatchTarget::new(endpoint.clone()).await;
    let west_sdk = target
        .sdk
        .to_builder()
        .region(aws_config::Region::new(OTHER_REGION))
        .build();
    let west = aws_sdk_batch::Client::new(&west_sdk);
    // A region's queues are on its own compute environments.
    let west_ce = common::compute_environment(&endpoint, &west).await;
    let data = tempfile::tempdir().unwrap();
    let backend = target.make_staged("launcher-region".into(), data.path());
    let bucket = ferry_artifacts::testing::moto_bucket(&endpoint, "west");
    let mut runner = target.runner();
    runner.region = Some(OTHER_REGION.into());
    runner.compute_environment = Some(west_ce.clone());
    runner.bucket = Some(bucket.clone());
    runner.assign_public_ip = Some(true);
    runner.platform_version = Some("1.4.0".into());
    runner.ephemeral_storage_gib = Some(30);
    // A role of this test's own, so that the definition is this test's alone.
    runner.job_role_arn = Some(format!(
        "arn:aws:iam::123456789012:role/{}",
        common::fresh("west")
    ));
    let id = common::fresh("west");
    let mut d = dispatch(
        &id,
        Runner::AwsBatch(runner),
        &[
            "sh",
            "-c",
            "cat in.txt; sleep 4; echo '{\"ran\": \"west\"}' > \"$FERRY_OUTPUTS\"",
        ],
    );
    d.input_files
        .insert("in.txt".into(), Template::text("hello from the west\n"));
    backend.check(&d).expect("a valid task");
    let secrets = Secrets::new();
    let task = Task::new(&d, &secrets);
    let reserved = backend.reserve(task).await.expect("reserve");
    let journaled: Handle = reserved.handle_as().unwrap();
    assert_eq!(
        journaled.region.as_deref(),
        Some(OTHER_REGION),
        "the reservation names the region"
    );
    let compute = backend.create(task, reserved).await.expect("create");
    let h: Handle = compute.handle_as().unwrap();
    assert_eq!(h.region.as_deref(), Some(OTHER_REGION));
    let job_id = h.job_id.clone().expect("submitted");

    // The job is the region's: DescribeJobs and ListJobs there know it, the launcher's own
    // region's do not.
    let there = west.describe_jobs().jobs(&job_id).send().await.unwrap();
    assert_eq!(there.jobs().len(), 1, "{there:?}");
    let here = target.batch.describe_jobs().jobs(&job_id).send().await.unwrap();
    assert!(here.jobs().is_empty(), "{here:?}");
    let named = |client: aws_sdk_batch::Client| {
        let (queue, name) = (h.queue.clone(), h.job_name.clone());
        async move {
            client
                .list_jobs()
                .job_queue(queue)
                .filters(
                    aws_sdk_batch::types::KeyValuesPair::builder()
                        .name("JOB_NAME")
                        .values(name)
                        .build(),
                )
                .send()
                .await
                .map(|out| out.job_summary_list().len())
                .unwrap_or(0)
        }
    };
    assert_eq!(named(west.clone()).await, 1);
    assert_eq!(named(target.batch.clone()).await, 0);
    // Its definition is registered there, with Fargate's settings.
    let definition = there.jobs()[0].job_definition().unwrap().to_string();
    assert!(definition.contains(OTHER_REGION), "{definition}");
    let defs = west
        .describe_job_definitions()
        .job_definitions(&definition)
        .send()
        .await
        .unwrap();
    let container = defs.job_definitions()[0]
        .container_properties()
        .expect("a container definition");
    assert_eq!(
        container
            .network_configuration()
            .and_then(|n| n.assign_public_ip())
            .map(|a| a.as_str()),
        Some("ENABLED")
    );
    assert_eq!(
        container
            .fargate_platform_configuration()
            .and_then(|f| f.platform_version()),
        Some("1.4.0")
    );
    assert_eq!(
        container.ephemeral_storage().and_then(|e| e.size_in_gib()),
        Some(30)
    );

    // A launcher started again on the journal finds the job in its region, and sweeps that
    // region's queue for jobs of its own while the job runs.
    let second = target.make_staged("launcher-region".into(), data.path());
    let found = second
        .find(&compute)
        .await
        .expect("find")
        .expect("the job is found in its region");
    let owned = second.list_owned().await.expect("list owned");
    assert!(
        owned.iter().any(|c| c.name == h.job_name
            && c.handle_as::<Handle>().unwrap().region.as_deref() == Some(OTHER_REGION)),
        "{owned:?}"
    );
    match ended(&second, &found).await {
        ComputeState::Exited(e) => assert!(e.succeeded(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Its log, from the region's CloudWatch Logs.
    let log = output(&second, &found).await;
    assert_eq!(log, "hello from the west\n");
    let collected = second.collect(&found, task).await.expect("collect");
    assert_eq!(
        collected.outputs.as_deref(),
        Some(b"{\"ran\": \"west\"}\n".as_slice())
    );

    // A handle journaled before attempts had a region is the launcher's region's: a launcher
    // whose own region is the job's finds it, one whose region is another does not.
    let mut old = found.clone();
    old.handle.as_object_mut().expect("a handle").remove("region");
    let mut settings = Settings::new("launcher-region");
    settings.poll_interval = Duration::from_millis(200);
    let west_launcher = AwsBatch::new(&west_sdk, settings);
    let adopted = west_launcher
        .find(&old)
        .await
        .expect("find")
        .expect("found in the launcher's region");
    assert!(matches!(
        west_launcher.status(&adopted).await.unwrap(),
        ComputeState::Exited(e) if e.succeeded()
    ));
    assert!(
        second.find(&old).await.expect("find").is_none(),
        "found in a region the job is not in"
    );

    second.release(&found).await.expect("release");
    let whole = ferry_artifacts::Store::open_with(
        &format!("s3://{bucket}"),
        ferry_artifacts::testing::moto_options(&endpoint),
    )
    .unwrap();
    assert!(whole.list_under(&d.job_id).await.unwrap().is_empty());
}
