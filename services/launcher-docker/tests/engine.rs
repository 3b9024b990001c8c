//! The engine module against a real Docker engine: needs `DOCKER_HOST` (scripts/test.sh, or
//! `source scripts/services.sh && docker_up`, starts a private dockerd and sets it).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::Scope;
use ferry_launcher_docker::{
    Engine, Error, Gpus, InputFile, Limits, LogCursor, LogStream, PullPolicy, State,
};
use futures::{StreamExt, TryStreamExt};

#[tokio::test]
async fn exit_codes_and_argv_without_a_shell() {
    let s = Scope::new().await;
    let ok = s.run(&s.spec(&["echo", "a  b", "$HOME", "*"])).await;
    let three = s.run(&s.spec(&["sh", "-c", "echo bye >&2; exit 3"])).await;
    let missing = s.spec(&["/no/such/program"]);

    let done = s.engine.wait(&ok).await.unwrap();
    assert_eq!(done.state, State::Exited { code: 0 });
    assert!(!done.oom_killed);
    // Both times are there. Not necessarily in order: for a command that ends at once, the
    // engine has been seen to record the start a few microseconds after the end.
    let (started, finished) = (done.started_at.unwrap(), done.finished_at.unwrap());
    assert!(
        (finished - started).abs() < chrono::TimeDelta::seconds(30),
        "{started} {finished}"
    );
    // Arguments reach the program as they are: no shell expands them.
    assert_eq!(s.lines(&ok).await, ["a  b $HOME *"]);

    assert_eq!(
        s.engine.wait(&three).await.unwrap().state,
        State::Exited { code: 3 }
    );
    // Starting again (a redelivered dispatch) does not run the command a second time.
    s.engine.start(&three).await.unwrap();
    let entries: Vec<_> = s
        .engine
        .logs(&three, LogCursor::default(), false)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].stream, entries[0].text.as_slice()),
        (LogStream::Stderr, &b"bye"[..])
    );

    // A program that is not there: the init process cannot run it and ends with 127, saying so
    // in the log, as a shell would.
    let name = s.run(&missing).await;
    assert_eq!(
        s.engine.wait(&name).await.unwrap().state,
        State::Exited { code: 127 }
    );
    let lines = s.lines(&name).await;
    assert!(
        lines.iter().any(|l| l.contains("exec /no/such/program failed")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_such() {
    let s = Scope::new().await;
    let mut spec = s.spec(&["sh", "-c", "x=0123456789; while true; do x=$x$x; done"]);
    spec.memory_bytes = Some(16 * 1024 * 1024);
    let name = s.run(&spec).await;
    let done = s.engine.wait(&name).await.unwrap();
    assert_eq!(done.state, State::Exited { code: 137 }, "{done:?}");
    assert!(done.oom_killed, "{done:?}");
}

#[tokio::test]
async fn cpu_and_memory_limits_reach_the_cgroup() {
    let s = Scope::new().await;
    // cgroup v1 files, or v2's when the engine runs on v2.
    let mut spec = s.spec(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; \
         cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    spec.cpu = Some(0.5);
    spec.memory_bytes = Some(64 * 1024 * 1024);
    let name = s.run(&spec).await;
    s.engine.wait(&name).await.unwrap();
    let lines = s.lines(&name).await;
    assert!(lines[0] == "50000" || lines[0] == "50000 100000", "{lines:?}");
    assert_eq!(lines[1], (64 * 1024 * 1024).to_string());
}

#[tokio::test]
async fn a_gpu_request_is_refused_where_the_engine_has_none() {
    let s = Scope::new().await;
    let mut spec = s.spec(&["true"]);
    spec.gpus = Some(Gpus { count: 1, kind: None });
    let created = s.engine.create_or_adopt(&spec).await.unwrap();
    match s.engine.start(&created.name).await {
        // An engine with a GPU driver runs it.
        Ok(()) => assert_eq!(
            s.engine.wait(&created.name).await.unwrap().state,
            State::Exited { code: 0 }
        ),
        Err(e) => {
            assert!(e.is_task_fault(), "{e}");
            assert!(
                e.to_string().starts_with("resources.gpu cannot be honoured"),
                "{e}"
            );
        }
    }
}

#[tokio::test]
async fn logs_are_complete_and_in_order_across_a_resume_mid_stream() {
    let s = Scope::new().await;
    // About 7 s of output on both streams, so that the cursor's `since` moves while it runs.
    let spec = s.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 700 ]; do echo out $i; if [ $((i % 3)) = 0 ]; then echo err $i >&2; fi; \
         usleep 10000; i=$((i+1)); done",
    ]);
    let name = s.run(&spec).await;

    let mut got = Vec::new();
    let mut cursor = LogCursor::default();
    let mut first_second = None;
    // Read while it runs, dropping the stream three times as a crashed reader would.
    for stop_at in [150usize, 500, 900] {
        let mut logs = Box::pin(s.engine.logs(&name, cursor, true));
        while got.len() < stop_at {
            let Some(entry) = logs.next().await else { break };
            let entry = entry.unwrap();
            assert!(!entry.partial);
            first_second.get_or_insert(entry.timestamp.timestamp());
            got.push((entry.stream, String::from_utf8(entry.text).unwrap()));
            cursor = entry.cursor;
        }
    }
    // 900 entries take more than 6 s to write: the last resume already skipped the first second.
    assert!(cursor.since > first_second.unwrap(), "{cursor} {first_second:?}");
    let rest: Vec<_> = s.engine.logs(&name, cursor, true).try_collect().await.unwrap();
    got.extend(
        rest.into_iter()
            .map(|e| (e.stream, String::from_utf8(e.text).unwrap())),
    );
    assert_eq!(
        s.engine.wait(&name).await.unwrap().state,
        State::Exited { code: 0 }
    );

    let outs: Vec<_> = got
        .iter()
        .filter(|(st, _)| *st == LogStream::Stdout)
        .map(|(_, l)| l.clone())
        .collect();
    let errs: Vec<_> = got
        .iter()
        .filter(|(st, _)| *st == LogStream::Stderr)
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(outs, (0..700).map(|i| format!("out {i}")).collect::<Vec<_>>());
    assert_eq!(
        errs,
        (0..700)
            .step_by(3)
            .map(|i| format!("err {i}"))
            .collect::<Vec<_>>()
    );
    // And exactly what a reader from the start sees now, in its order.
    let whole: Vec<_> = s
        .engine
        .logs(&name, LogCursor::default(), false)
        .map_ok(|e| (e.stream, String::from_utf8(e.text).unwrap()))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(got, whole);
}

#[tokio::test]
async fn a_resume_after_the_end_reads_nothing_more() {
    let s = Scope::new().await;
    let name = s
        .run(&s.spec(&["sh", "-c", "echo one; echo two; printf three"]))
        .await;
    s.engine.wait(&name).await.unwrap();
    let all: Vec<_> = s
        .engine
        .logs(&name, LogCursor::default(), true)
        .try_collect()
        .await
        .unwrap();
    let texts: Vec<_> = all.iter().map(|e| (e.text.as_slice(), e.partial)).collect();
    assert_eq!(texts, [(&b"one"[..], false), (b"two", false), (b"three", true)]);
    let cursor: LogCursor = all[2].cursor.to_string().parse().unwrap();
    assert_eq!(s.engine.logs(&name, cursor, true).count().await, 0);
    let from_second: Vec<_> = s
        .engine
        .logs(&name, all[0].cursor, false)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(from_second, all[1..]);
}

#[tokio::test]
async fn stop_sends_sigterm_through_init_and_kills_after_the_grace() {
    let s = Scope::new().await;
    let polite = s
        .run(&s.spec(&[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done",
        ]))
        .await;
    let stubborn = s
        .run(&s.spec(&[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        ]))
        .await;
    for name in [&polite, &stubborn] {
        // Stop only once the trap is set.
        let first = s
            .engine
            .logs(name, LogCursor::default(), true)
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.text, b"ready");
    }

    let t = Instant::now();
    s.engine.stop(&polite, Duration::from_secs(20)).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "SIGTERM was honoured: {:?}",
        t.elapsed()
    );
    assert_eq!(
        s.engine.inspect(&polite).await.unwrap().state,
        State::Exited { code: 7 }
    );
    assert_eq!(s.lines(&polite).await, ["ready", "got TERM"]);

    let t = Instant::now();
    s.engine
        .stop(&stubborn, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "killed only after the grace: {:?}",
        t.elapsed()
    );
    assert_eq!(
        s.engine.inspect(&stubborn).await.unwrap().state,
        State::Exited { code: 137 }
    );

    // Stopping what has stopped, or is gone, is not an error.
    s.engine.stop(&stubborn, Duration::from_secs(1)).await.unwrap();
    s.engine.remove(&stubborn).await.unwrap();
    s.engine.stop(&stubborn, Duration::from_secs(1)).await.unwrap();
    s.engine.remove(&stubborn).await.unwrap();
    assert!(s.engine.find(&stubborn).await.unwrap().is_none());
}

#[tokio::test]
async fn creating_twice_adopts_the_first_container() {
    let s = Scope::new().await;
    let spec = s.spec(&["true"]);
    let first = s.engine.create_or_adopt(&spec).await.unwrap();
    assert!(!first.adopted);
    assert_eq!(
        first.name,
        ferry_launcher_docker::container_name(&spec.attempt.attempt_id)
    );
    let again = s.engine.create_or_adopt(&spec).await.unwrap();
    assert_eq!((again.id.as_str(), again.adopted), (first.id.as_str(), true));

    // Two launchers racing on one attempt: one creates, the other adopts the same container.
    let spec = s.spec(&["true"]);
    let (a, b) = tokio::join!(s.engine.create_or_adopt(&spec), s.engine.create_or_adopt(&spec));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, b.id);
    assert!(a.adopted != b.adopted, "{a:?} {b:?}");

    let status = s.engine.inspect(&a.name).await.unwrap();
    assert_eq!(status.state, State::Created);
    assert_eq!(status.attempt.as_ref(), Some(&spec.attempt));
    assert_eq!(status.launcher.as_deref(), Some(s.launcher.as_str()));
}

#[tokio::test]
async fn list_owned_finds_exactly_the_launchers_containers() {
    let mine = Scope::new().await;
    let theirs = Scope::new().await;
    let a = mine.spec(&["true"]);
    let b = mine.spec(&["sleep", "30"]);
    let c = theirs.spec(&["true"]);
    mine.engine.create_or_adopt(&a).await.unwrap();
    mine.run(&b).await;
    theirs.engine.create_or_adopt(&c).await.unwrap();

    let owned = mine.engine.list_owned(&mine.launcher).await.unwrap();
    let ids: HashSet<_> = owned.iter().map(|o| o.attempt.attempt_id.clone()).collect();
    assert_eq!(
        ids,
        HashSet::from([a.attempt.attempt_id.clone(), b.attempt.attempt_id.clone()])
    );
    let running = owned.iter().find(|o| o.attempt == b.attempt).unwrap();
    assert_eq!(
        (running.state.as_str(), running.name.as_str()),
        ("running", b.name().as_str())
    );
    assert_eq!(theirs.engine.list_owned(&theirs.launcher).await.unwrap().len(), 1);
}

#[tokio::test]
async fn events_hint_at_start_and_end() {
    let s = Scope::new().await;
    let since = chrono::Utc::now().timestamp() - 1;
    let spec = s.spec(&["sh", "-c", "exit 4"]);
    let name = s.run(&spec).await;
    s.engine.wait(&name).await.unwrap();
    let mut events = Box::pin(s.engine.events(&s.launcher, Some(since)));
    let mut seen = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .unwrap()
    {
        let e = e.unwrap();
        assert_eq!(e.attempt_id.as_deref(), Some(spec.attempt.attempt_id.as_str()));
        seen.push((e.action.clone(), e.exit_code));
        if e.action == "die" {
            break;
        }
    }
    assert_eq!(seen, [("start".to_string(), None), ("die".to_string(), Some(4))]);
}

#[tokio::test]
async fn input_files_go_in_and_outputs_come_out() {
    let s = Scope::new().await;
    let mut spec = s.spec(&[
        "sh",
        "-c",
        "id -u; pwd; echo $GREETING; mkdir out out/deep && cat a.txt sub/b.txt > out/joined.txt && \
         echo deep > out/deep/d.txt && echo scratch > scratch.txt && \
         ln -s /etc/passwd out/leak.txt && ln -s ../a.txt out/up.txt && \
         printf '{\"rows\": 3}' > /ferry/outputs.json && ln -s /etc/passwd /ferry/link.json",
    ]);
    // Not root: the files and directories put in must be the task's to write in.
    spec.user = Some("65534".into());
    spec.env = vec![("GREETING".into(), "hello there".into())];
    let created = s.engine.create_or_adopt(&spec).await.unwrap();
    let inputs = [
        InputFile {
            path: "a.txt".into(),
            contents: b"first\n".to_vec(),
        },
        InputFile {
            path: "sub/b.txt".into(),
            contents: b"second\n".to_vec(),
        },
    ];
    s.engine.put_files(&created.name, "/work", &inputs).await.unwrap();
    s.engine.put_files(&created.name, "/ferry", &[]).await.unwrap();
    s.engine.start(&created.name).await.unwrap();
    let done = s.engine.wait(&created.name).await.unwrap();
    assert_eq!(
        done.state,
        State::Exited { code: 0 },
        "{:?}",
        s.lines(&created.name).await
    );
    assert_eq!(s.lines(&created.name).await, ["65534", "/work", "hello there"]);

    let outputs = s
        .engine
        .read_file(&created.name, "/ferry/outputs.json", 1024)
        .await
        .unwrap();
    assert_eq!(outputs.as_deref(), Some(&br#"{"rows": 3}"#[..]));
    assert!(
        s.engine
            .read_file(&created.name, "/ferry/none.json", 1024)
            .await
            .unwrap()
            .is_none()
    );
    let e = s
        .engine
        .read_file(&created.name, "/ferry/link.json", 1024)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("must be a regular file, and the task left a symbolic link"),
        "{e}"
    );
    let e = s
        .engine
        .read_file(&created.name, "/ferry/outputs.json", 4)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("larger than the 4 bytes"), "{e}");

    let dest = tempfile::tempdir().unwrap();
    let patterns = vec!["out/**/*.txt".to_string()];
    let got = s
        .engine
        .collect_files(&created.name, "/work", &patterns, dest.path(), Limits::default())
        .await
        .unwrap();
    let files: Vec<_> = got.files.iter().map(|f| (f.path.as_str(), f.size)).collect();
    assert_eq!(files, [("out/deep/d.txt", 5), ("out/joined.txt", 13)]);
    assert_eq!(
        std::fs::read(dest.path().join("out/joined.txt")).unwrap(),
        b"first\nsecond\n"
    );
    let mut skipped: Vec<_> = got.skipped.iter().map(|s| s.path.as_str()).collect();
    skipped.sort();
    assert_eq!(skipped, ["out/leak.txt", "out/up.txt"]);
    assert!(got.skipped.iter().all(|s| s.why.starts_with("a symbolic link")));
    let mut stored = Vec::new();
    for entry in walk(dest.path()) {
        stored.push(entry.strip_prefix(dest.path()).unwrap().display().to_string());
    }
    stored.sort();
    assert_eq!(
        stored,
        ["out/deep/d.txt", "out/joined.txt"],
        "nothing else was written"
    );

    // Limits hold against the real archive too, and leave nothing behind.
    let tight = Limits {
        max_total_bytes: 10,
        ..Limits::default()
    };
    let dest = tempfile::tempdir().unwrap();
    let e = s
        .engine
        .collect_files(&created.name, "/work", &patterns, dest.path(), tight)
        .await
        .unwrap_err();
    assert!(e.is_task_fault(), "{e}");
    assert!(walk(dest.path()).is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn hostile_input_names_send_nothing() {
    let s = Scope::new().await;
    let created = s.engine.create_or_adopt(&s.spec(&["true"])).await.unwrap();
    let files = [
        InputFile {
            path: "fine.txt".into(),
            contents: b"x".to_vec(),
        },
        InputFile {
            path: "../../etc/evil".into(),
            contents: b"x".to_vec(),
        },
    ];
    let e = s
        .engine
        .put_files(&created.name, "/work", &files)
        .await
        .unwrap_err();
    assert!(e.is_task_fault());
    assert!(
        e.to_string()
            .starts_with("inputFiles: \"../../etc/evil\" is refused"),
        "{e}"
    );
    assert!(
        s.engine
            .read_file(&created.name, "/work/fine.txt", 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.engine
            .read_file(&created.name, "/etc/evil", 10)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_missing_image_is_refused_naming_it_and_nothing_is_created() {
    let s = Scope::new().await;
    let mut spec = s.spec(&["true"]);
    spec.image = "ferry-test/absent:0".into();
    spec.pull = PullPolicy::Never;
    let e = s.engine.create_or_adopt(&spec).await.unwrap_err();
    assert!(matches!(e, Error::ImageMissing { .. }), "{e}");
    assert!(e.is_task_fault());
    assert!(
        e.to_string()
            .starts_with("image `ferry-test/absent:0` is not on the Docker engine"),
        "{e}"
    );
    assert!(s.engine.find(&spec.name()).await.unwrap().is_none());

    // `missing` with the image present creates without pulling (there is no registry here).
    let mut present = s.spec(&["true"]);
    present.pull = PullPolicy::Missing;
    assert!(!s.engine.create_or_adopt(&present).await.unwrap().adopted);

    // A pull that cannot reach its registry (a closed port on loopback) fails naming the image.
    for pull in [PullPolicy::Missing, PullPolicy::Always] {
        let mut unreachable = s.spec(&["true"]);
        unreachable.image = "127.0.0.1:9/ferry-absent:1".into();
        unreachable.pull = pull;
        let e = s.engine.create_or_adopt(&unreachable).await.unwrap_err();
        assert!(matches!(e, Error::ImagePull { .. }), "{pull}: {e}");
        assert!(
            e.to_string()
                .starts_with("pulling image `127.0.0.1:9/ferry-absent:1` failed"),
            "{e}"
        );
        assert!(s.engine.find(&unreachable.name()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn no_engine_is_a_clear_error() {
    let e = Engine::connect_to("unix:///nonexistent/ferry/docker.sock")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(
            "no Docker engine at unix:///nonexistent/ferry/docker.sock: is dockerd running? set DOCKER_HOST"
        ),
        "{text}"
    );
    assert!(!e.is_task_fault());
}

#[tokio::test]
async fn a_long_line_comes_in_pieces_that_say_so() {
    let s = Scope::new().await;
    let name = s
        .run(&s.spec(&[
            "sh",
            "-c",
            "head -c 40000 /dev/zero | tr '\\0' x; echo; echo after",
        ]))
        .await;
    s.engine.wait(&name).await.unwrap();
    let entries: Vec<_> = s
        .engine
        .logs(&name, LogCursor::default(), false)
        .try_collect()
        .await
        .unwrap();
    let pieces: Vec<_> = entries.iter().map(|e| (e.text.len(), e.partial)).collect();
    // The engine cuts lines at 16 KiB; only the last piece of the line ends it.
    assert_eq!(pieces, [(16384, true), (16384, true), (7232, false), (5, false)]);
    assert!(entries[..3].iter().all(|e| e.text.iter().all(|&b| b == b'x')));
    // Resuming between the pieces gives the rest of the line, once.
    let rest: Vec<_> = s
        .engine
        .logs(&name, entries[0].cursor, false)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rest, entries[1..]);
}

#[tokio::test]
async fn a_command_replaces_the_images_entrypoint_and_none_keeps_it() {
    let s = Scope::new().await;
    let mut own = s.spec(&["echo", "mine"]);
    own.image = common::entrypoint_image();
    let mut image_default = s.spec(&[]);
    image_default.image = common::entrypoint_image();
    let own = s.run(&own).await;
    let image_default = s.run(&image_default).await;
    s.engine.wait(&own).await.unwrap();
    s.engine.wait(&image_default).await.unwrap();
    assert_eq!(s.lines(&own).await, ["mine"]);
    assert_eq!(s.lines(&image_default).await, ["entrypoint default args"]);
}
