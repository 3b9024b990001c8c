//! The log store on a temporary SQLite file.

use std::time::Duration;

use anyhow::Result;
use ferry_event::payload::{LogLine, Stream, TaskLog};
use ferry_log_collector::{Cursor, Error, LogQuery, LogRecord, LogStore};
use futures::StreamExt;

/// Lines `seq..seq+n` of an attempt, each reading `ATTEMPT line SEQ`.
fn batch(job: &str, task: &str, attempt: &str, seq: u64, n: u64) -> TaskLog {
    TaskLog {
        job_id: job.into(),
        task_id: task.into(),
        attempt_id: attempt.into(),
        namespace: None,
        seq,
        lines: (seq..seq + n)
            .map(|s| LogLine {
                stream: if s % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                time_ms: 1_000 + s as i64,
                text: format!("{attempt} line {s}"),
            })
            .collect(),
    }
}

async fn temp_store() -> Result<(tempfile::TempDir, String, LogStore)> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("logs/logs.db").display());
    let store = LogStore::open(&url).await?;
    Ok((dir, url, store))
}

fn seqs(records: &[LogRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn texts(records: &[LogRecord]) -> Vec<&str> {
    records.iter().map(|r| r.text.as_str()).collect()
}

#[tokio::test]
async fn lines_are_stored_in_order_and_queryable_by_job_task_and_attempt() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    let stored = store
        .append(&[
            batch("j1", "extract", "a1", 0, 3),
            batch("j1", "load", "b1", 0, 2),
            batch("j1", "extract", "a1", 3, 2),
            batch("j1", "extract", "a2", 0, 1),
            batch("j2", "extract", "c1", 0, 4),
        ])
        .await?;
    assert_eq!(stored, 12);

    let job = store.query(&LogQuery::job("j1")).await?;
    assert_eq!(job.len(), 8);
    assert!(job.iter().all(|r| r.job_id == "j1"));
    assert!(
        job.windows(2).all(|w| w[0].cursor.id() < w[1].cursor.id()),
        "a job's lines come in arrival order"
    );

    let task = store.query(&LogQuery::job("j1").task("extract")).await?;
    assert_eq!(
        texts(&task),
        [
            "a1 line 0",
            "a1 line 1",
            "a1 line 2",
            "a1 line 3",
            "a1 line 4",
            "a2 line 0"
        ]
    );

    let attempt = store.query(&LogQuery::job("j1").attempt("a1")).await?;
    assert_eq!(seqs(&attempt), [0, 1, 2, 3, 4]);
    let first = &attempt[0];
    assert_eq!(
        (first.task_id.as_str(), first.stream, first.time_ms),
        ("extract", Stream::Stdout, 1_000)
    );
    assert_eq!(attempt[1].stream, Stream::Stderr);

    // An attempt id under another job's id selects nothing.
    assert!(store.query(&LogQuery::job("j2").attempt("a1")).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_repeated_or_overlapping_batch_stores_each_line_once() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    assert_eq!(store.append(&[batch("j", "t", "a", 0, 10)]).await?, 10);
    assert_eq!(
        store.append(&[batch("j", "t", "a", 0, 10)]).await?,
        0,
        "redelivered"
    );
    assert_eq!(
        store.append(&[batch("j", "t", "a", 5, 10)]).await?,
        5,
        "overlapping"
    );
    // Twice within one transaction, too.
    let twice = batch("j", "t", "a", 15, 3);
    assert_eq!(store.append(&[twice.clone(), twice]).await?, 3);

    let lines = store.query(&LogQuery::job("j").attempt("a")).await?;
    assert_eq!(seqs(&lines), (0..18).collect::<Vec<_>>());
    assert_eq!(store.lines_stored("a").await?, 18);
    Ok(())
}

#[tokio::test]
async fn batches_arriving_out_of_order_query_in_seq_order_per_attempt() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    store.append(&[batch("j", "t", "a", 5, 5)]).await?;
    store.append(&[batch("j", "t", "a", 0, 5)]).await?;
    // Within one transaction, reversed batches are written in seq order.
    store
        .append(&[batch("j", "t", "b", 3, 3), batch("j", "t", "b", 0, 3)])
        .await?;

    let a = store.query(&LogQuery::job("j").attempt("a")).await?;
    assert_eq!(seqs(&a), (0..10).collect::<Vec<_>>());
    let b = store.query(&LogQuery::job("j").task("t")).await?;
    let b_seqs: Vec<_> = b.iter().filter(|r| r.attempt_id == "b").map(|r| r.seq).collect();
    assert_eq!(b_seqs, [0, 1, 2, 3, 4, 5]);

    // The whole job comes in arrival order: attempt a's late lines 0..5 after its 5..10.
    let job = store.query(&LogQuery::job("j")).await?;
    assert_eq!(seqs(&job[..10]), [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]);
    Ok(())
}

#[tokio::test]
async fn pages_resume_after_the_cursor_in_the_query_order() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    store.append(&[batch("j", "t", "a", 4, 4)]).await?;
    store.append(&[batch("j", "t", "a", 0, 4)]).await?;

    for q in [LogQuery::job("j").attempt("a"), LogQuery::job("j")] {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let mut page_q = q.clone().limit(3);
            page_q.after = after;
            let page = store.query(&page_q).await?;
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(last.cursor);
            all.extend(page);
        }
        assert_eq!(
            all,
            store.query(&q).await?,
            "pages of {q:?} differ from the whole"
        );
        let mut s = seqs(&all);
        s.sort();
        assert_eq!(s, (0..8).collect::<Vec<_>>());
    }
    Ok(())
}

#[tokio::test]
async fn cursors_round_trip_through_their_text_form() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    store.append(&[batch("j", "t", "a", 0, 3)]).await?;
    let lines = store.query(&LogQuery::job("j")).await?;
    let text = lines[0].cursor.to_string();
    let cursor: Cursor = text.parse()?;
    assert_eq!(cursor, lines[0].cursor);
    let rest = store.query(&LogQuery::job("j").after(cursor)).await?;
    assert_eq!(seqs(&rest), [1, 2]);
    let err = "12".parse::<Cursor>().unwrap_err();
    assert!(matches!(err, Error::InvalidCursor(_)));
    assert!(err.to_string().contains("ID.SEQ"), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_store_survives_reopening() -> Result<()> {
    let (_dir, url, store) = temp_store().await?;
    store.append(&[batch("j", "t", "a", 0, 4)]).await?;
    store.close().await;

    let again = LogStore::open(&url).await?;
    assert_eq!(
        texts(&again.query(&LogQuery::job("j")).await?),
        ["a line 0", "a line 1", "a line 2", "a line 3"]
    );
    // Still deduplicating after the reopen, and arrival keeps increasing.
    assert_eq!(again.append(&[batch("j", "t", "a", 2, 4)]).await?, 2);
    let lines = again.query(&LogQuery::job("j")).await?;
    assert_eq!(seqs(&lines), [0, 1, 2, 3, 4, 5]);
    assert!(lines.windows(2).all(|w| w[0].cursor.id() < w[1].cursor.id()));
    Ok(())
}

#[tokio::test]
async fn an_in_memory_store_keeps_its_lines_while_open() -> Result<()> {
    let store = LogStore::open("sqlite::memory:").await?;
    store.append(&[batch("j", "t", "a", 0, 2)]).await?;
    let clone = store.clone();
    assert_eq!(clone.lines_stored("a").await?, 2);
    assert_eq!(store.query(&LogQuery::job("j")).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn lines_stored_counts_an_attempts_distinct_lines() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    assert_eq!(store.lines_stored("a").await?, 0);
    store
        .append(&[batch("j", "t", "a", 0, 7), batch("j", "t", "b", 0, 2)])
        .await?;
    store.append(&[batch("j", "t", "a", 6, 2)]).await?;
    assert_eq!(store.lines_stored("a").await?, 8);
    assert_eq!(store.lines_stored("b").await?, 2);
    Ok(())
}

#[tokio::test]
async fn an_invalid_batch_is_rejected_and_nothing_of_its_transaction_stored() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    let mut no_attempt = batch("j", "t", "", 0, 1);
    let err = store
        .append(&[batch("j", "t", "a", 0, 2), no_attempt.clone()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("attemptId is empty"), "{err}");
    assert!(!err.is_transient());
    no_attempt.attempt_id = "x".into();
    no_attempt.seq = u64::MAX;
    let err = store.append(&[no_attempt]).await.unwrap_err();
    assert!(err.to_string().contains("largest storable seq"), "{err}");
    assert_eq!(store.lines_stored("a").await?, 0);
    Ok(())
}

#[tokio::test]
async fn unsupported_urls_name_what_is_accepted() {
    let err = LogStore::open("mysql://db/logs").await.unwrap_err();
    assert!(err.to_string().contains("sqlite:///path/to/logs.db"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused() -> Result<()> {
    let (_dir, url, store) = temp_store().await?;
    store.close().await;
    let pool = sqlx::SqlitePool::connect(&url).await?;
    sqlx::query("INSERT INTO log_store_migrations VALUES (99, 'future', 0)")
        .execute(&pool)
        .await?;
    pool.close().await;
    let err = LogStore::open(&url).await.unwrap_err();
    assert!(matches!(err, Error::SchemaTooNew { found: 99, .. }), "{err}");
    Ok(())
}

const WAIT: Duration = Duration::from_secs(10);

async fn take<S>(stream: &mut S, n: usize) -> Result<Vec<LogRecord>>
where
    S: futures::Stream<Item = ferry_log_collector::Result<LogRecord>> + Unpin,
{
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no line within {WAIT:?} after {} lines", out.len()))?;
        out.push(next.ok_or_else(|| anyhow::anyhow!("follow ended"))??);
    }
    Ok(out)
}

#[tokio::test]
async fn follow_yields_stored_lines_then_new_ones_without_repeats() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    // A poll long enough that only the append notification can wake the follower in time.
    let store = store.with_follow_poll(Duration::from_secs(3600));
    store.append(&[batch("j", "t", "a", 0, 3)]).await?;
    let mut follow = Box::pin(store.follow(LogQuery::job("j")));
    assert_eq!(seqs(&take(&mut follow, 3).await?), [0, 1, 2]);

    let writer = store.clone();
    let append = tokio::spawn(async move {
        // Overlaps what is stored: only 3..6 are new.
        writer.append(&[batch("j", "t", "a", 1, 5)]).await?;
        writer.append(&[batch("other", "t", "z", 0, 2)]).await?;
        writer.append(&[batch("j", "u", "b", 0, 1)]).await
    });
    let more = take(&mut follow, 4).await?;
    append.await??;
    assert_eq!(texts(&more), ["a line 3", "a line 4", "a line 5", "b line 0"]);
    // Nothing else is pending: no line came twice.
    let extra = tokio::time::timeout(Duration::from_millis(200), follow.next()).await;
    assert!(extra.is_err(), "unexpected extra line {extra:?}");
    Ok(())
}

#[tokio::test]
async fn following_an_attempt_gives_stored_lines_by_seq_then_new_ones() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    let store = store.with_follow_poll(Duration::from_secs(3600));
    store.append(&[batch("j", "t", "a", 3, 3)]).await?;
    store.append(&[batch("j", "t", "a", 0, 3)]).await?;
    let mut follow = Box::pin(store.follow(LogQuery::job("j").attempt("a").limit(8)));
    assert_eq!(seqs(&take(&mut follow, 6).await?), [0, 1, 2, 3, 4, 5]);
    store.append(&[batch("j", "t", "a", 6, 4)]).await?;
    assert_eq!(seqs(&take(&mut follow, 2).await?), [6, 7]);
    assert!(follow.next().await.is_none(), "the stream ends at its limit");
    Ok(())
}

#[tokio::test]
async fn follow_finds_lines_written_by_another_process() -> Result<()> {
    let (_dir, url, store) = temp_store().await?;
    let store = store.with_follow_poll(Duration::from_millis(20));
    let mut follow = Box::pin(store.follow(LogQuery::job("j").task("t")));
    // A second store on the same file shares no notifications with the first.
    let other = LogStore::open(&url).await?;
    other.append(&[batch("j", "t", "a", 0, 2)]).await?;
    assert_eq!(texts(&take(&mut follow, 2).await?), ["a line 0", "a line 1"]);
    Ok(())
}

/// Processes that share a store (the log collector and the api) open it at the same moment,
/// often before it exists. Turning a new file to WAL mode takes a lock that SQLite does not
/// wait for: every open must still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opened_at_once_on_a_new_file_all_open() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("logs.db").display());
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { LogStore::open(&url).await })
            })
            .collect();
        for open in opens {
            if let Err(e) = open.await.unwrap() {
                panic!("round {round}: {e}");
            }
        }
    }
}

/// A line of `job` stamped `time_ms`.
fn stamped(job: &str, attempt: &str, seq: u64, time_ms: i64) -> TaskLog {
    TaskLog {
        job_id: job.into(),
        task_id: "t".into(),
        attempt_id: attempt.into(),
        namespace: None,
        seq,
        lines: vec![LogLine {
            stream: Stream::Stdout,
            time_ms,
            text: format!("{attempt} line {seq}"),
        }],
    }
}

#[tokio::test]
async fn expire_deletes_the_oldest_lines_a_bounded_batch_at_a_time_and_marks_their_jobs() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    // j-old: five lines at 100..104; j-new: two lines at 10_000; j-mixed: one old, one new.
    let mut batches: Vec<TaskLog> = (0..5).map(|s| stamped("j-old", "a", s, 100 + s as i64)).collect();
    batches.push(stamped("j-new", "b", 0, 10_000));
    batches.push(stamped("j-new", "b", 1, 10_001));
    batches.push(stamped("j-mixed", "c", 0, 50));
    batches.push(stamped("j-mixed", "c", 1, 10_002));
    assert_eq!(store.append(&batches).await?, 9);

    // Six lines are older than 1_000; a batch of four takes the four oldest.
    assert_eq!(store.expire(1_000, 4).await?, 4);
    assert_eq!(seqs(&store.query(&LogQuery::job("j-mixed")).await?), [1]);
    assert_eq!(seqs(&store.query(&LogQuery::job("j-old")).await?), [3, 4]);
    assert!(store.expired("j-old").await? && store.expired("j-mixed").await?);
    assert!(!store.expired("j-new").await?, "no line of j-new was old enough");

    // The rest, then nothing: a short batch says none older is left.
    assert_eq!(store.expire(1_000, 4).await?, 2);
    assert_eq!(store.expire(1_000, 4).await?, 0);
    assert!(store.query(&LogQuery::job("j-old")).await?.is_empty());
    assert_eq!(seqs(&store.query(&LogQuery::job("j-new")).await?), [0, 1]);
    assert!(!store.expired("j-new").await?);
    assert!(!store.expired("j-unknown").await?);
    Ok(())
}

#[tokio::test]
async fn a_store_from_before_retention_is_migrated_and_expires() -> Result<()> {
    let (_dir, url, store) = temp_store().await?;
    store.append(&[stamped("j", "a", 0, 100)]).await?;
    store.close().await;
    // Opening again applies nothing new and keeps the lines.
    let store = LogStore::open(&url).await?;
    assert_eq!(store.expire(1_000, 10).await?, 1);
    assert!(store.expired("j").await?);
    Ok(())
}

/// Lines `seq..seq+n` of an attempt in `namespace`, each `text`, stamped `time_ms`.
fn in_namespace(namespace: Option<&str>, attempt: &str, seq: u64, n: u64, text: &str) -> TaskLog {
    TaskLog {
        job_id: format!("job-{attempt}"),
        task_id: "t".into(),
        attempt_id: attempt.into(),
        namespace: namespace.map(String::from),
        seq,
        lines: (0..n)
            .map(|_| LogLine {
                stream: Stream::Stdout,
                time_ms: 100,
                text: text.into(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_namespace_at_its_log_quota_stores_one_marker_per_attempt_and_counts_the_rest() -> Result<()> {
    use ferry_log_collector::{Appended, LogQuotas, quota_marker};
    let (_dir, _, store) = temp_store().await?;
    let quotas = LogQuotas::new([("analytics".to_string(), 10), ("*".to_string(), 1000)]);

    // 4 bytes a line: three lines reach 12 >= 10, the last two are dropped.
    let a1 = in_namespace(Some("analytics"), "a1", 0, 5, "aaaa");
    let got = store.append_within(std::slice::from_ref(&a1), &quotas).await?;
    assert_eq!(
        got,
        Appended {
            stored: 4,
            dropped: 2
        }
    );
    let lines = store.query(&LogQuery::job("job-a1").attempt("a1")).await?;
    assert_eq!(seqs(&lines), [0, 1, 2, 3]);
    assert_eq!(lines[3].text, quota_marker("analytics", 10));
    assert_eq!(lines[3].stream, Stream::Stderr);
    assert_eq!(store.namespace_bytes("analytics").await?, 12);
    // The log is complete: 5 lines accounted for, as task.finished will say.
    assert_eq!(store.lines_stored("a1").await?, 5);

    // Delivered again: nothing new, nothing counted twice.
    assert_eq!(store.append_within(&[a1], &quotas).await?, Appended::default());
    assert_eq!(store.lines_stored("a1").await?, 5);

    // More lines of a1, from a launcher that does not say the namespace: the attempt's own is
    // used; no second marker.
    let more = in_namespace(None, "a1", 5, 2, "aaaa");
    assert_eq!(
        store.append_within(&[more], &quotas).await?,
        Appended {
            stored: 0,
            dropped: 2
        }
    );
    assert_eq!(store.lines_stored("a1").await?, 7);
    assert_eq!(store.query(&LogQuery::job("job-a1")).await?.len(), 4);

    // Another attempt of the namespace: all dropped, its own marker.
    let a2 = in_namespace(Some("analytics"), "a2", 0, 3, "bb");
    assert_eq!(
        store.append_within(&[a2], &quotas).await?,
        Appended {
            stored: 1,
            dropped: 3
        }
    );
    let lines = store.query(&LogQuery::job("job-a2")).await?;
    assert_eq!(texts(&lines), [quota_marker("analytics", 10).as_str()]);

    // Other namespaces are not held back; lines without one count against `default`, under `*`.
    let ml = in_namespace(Some("ml"), "m1", 0, 3, "cccc");
    let plain = in_namespace(None, "p1", 0, 2, "dd");
    assert_eq!(
        store.append_within(&[ml, plain], &quotas).await?,
        Appended {
            stored: 5,
            dropped: 0
        }
    );
    assert_eq!(store.namespace_bytes("ml").await?, 12);
    assert_eq!(store.namespace_bytes("default").await?, 4);

    // Retention frees a namespace's bytes: its lines are stored again.
    store.expire(1_000, 100).await?;
    assert_eq!(store.namespace_bytes("analytics").await?, 0);
    let a3 = in_namespace(Some("analytics"), "a3", 0, 2, "eeee");
    assert_eq!(
        store.append_within(&[a3], &quotas).await?,
        Appended {
            stored: 2,
            dropped: 0
        }
    );
    Ok(())
}

#[tokio::test]
async fn without_quotas_every_line_is_stored_and_still_counted() -> Result<()> {
    let (_dir, _, store) = temp_store().await?;
    let big = in_namespace(Some("analytics"), "a1", 0, 100, "0123456789");
    assert_eq!(store.append(&[big]).await?, 100);
    assert_eq!(store.namespace_bytes("analytics").await?, 1000);
    Ok(())
}

/// A store written by a version before retention and quotas (schema version 1, with lines)
/// opens, its lines counted against `default`, and expires.
#[tokio::test]
async fn a_version_1_store_with_lines_is_migrated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("logs.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    for statement in [
        "CREATE TABLE log_store_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         applied_at_ms BIGINT NOT NULL)",
        "INSERT INTO log_store_migrations VALUES (1, 'log lines', 0)",
        "CREATE TABLE log_lines (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, \
         task_id TEXT NOT NULL, attempt_id TEXT NOT NULL, seq BIGINT NOT NULL, stream TEXT NOT NULL, \
         time_ms BIGINT NOT NULL, text TEXT NOT NULL, UNIQUE (attempt_id, seq))",
        "INSERT INTO log_lines (job_id, task_id, attempt_id, seq, stream, time_ms, text) \
         VALUES ('j', 't', 'a', 0, 'stdout', 100, 'héllo')",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    pool.close().await;

    let store = LogStore::open(&url).await?;
    assert_eq!(
        store.namespace_bytes("default").await?,
        6,
        "bytes, not characters"
    );
    assert_eq!(texts(&store.query(&LogQuery::job("j")).await?), ["héllo"]);
    // Its next lines count against the attempt's namespace, default.
    let next = in_namespace(None, "a", 1, 1, "abc");
    let next = TaskLog {
        job_id: "j".into(),
        ..next
    };
    assert_eq!(store.append(&[next]).await?, 1);
    assert_eq!(store.namespace_bytes("default").await?, 9);
    assert_eq!(store.expire(1_000, 10).await?, 2);
    assert!(store.expired("j").await?);
    assert_eq!(store.namespace_bytes("default").await?, 0);
    Ok(())
}
