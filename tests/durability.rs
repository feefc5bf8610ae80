//! The durable store through the real server: restarts keep events and continue
//! cursors, `kill -9` loses nothing that was acknowledged, a bad data directory is a
//! clear startup error, and commits grow with the publishes waiting on them.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{signal, switchyard, SpawnedServer};
use common::{TestServer, WsClient};
use serde_json::{json, Value};

/// Every stored event, paging through `/api/events` in cursor order.
async fn all_events(server_url: impl Fn(&str) -> String) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let mut res = awc::Client::new()
            .get(server_url(&format!("/api/events?after={after}&limit=1000")))
            .send()
            .await
            .expect("GET /api/events");
        let page: Vec<Value> =
            serde_json::from_slice(&res.body().limit(64 << 20).await.unwrap()).unwrap();
        let Some(last) = page.last() else { return out };
        after = last["cursor"].as_u64().unwrap();
        out.extend(page);
    }
}

#[actix_rt::test]
async fn restart_keeps_events_and_continues_cursors() {
    let server = TestServer::start().await;
    let dir = server.data_dir.clone();
    let mut c = server.ws().await;
    let mut cursors = Vec::new();
    for i in 0..20 {
        let r = c
            .publish(json!({"type": "task_created", "payload": {"i": i}}))
            .await;
        cursors.push(r["cursor"].as_u64().unwrap());
    }
    drop(c);
    server.stop().await;

    let server = TestServer::with_data_dir(dir, |_| {}).await;
    let stored = all_events(|p| server.url(p)).await;
    let stored_cursors: Vec<u64> = stored
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(stored_cursors, cursors);
    assert_eq!(stored[7]["payload"]["i"], 7);
    let mut c = server.ws().await;
    let next = c.publish(json!({"type": "task_created"})).await;
    assert!(
        next["cursor"].as_u64().unwrap() > *cursors.last().unwrap(),
        "cursors continue: {next}"
    );
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["store"]["event_count"], 21);
    assert_eq!(stats["store"]["first_cursor"], cursors[0]);
}

/// A publisher that retries after a restart (it never saw the reply, say) is answered
/// `duplicate` with the original cursor: the duplicate window starts with the ids of
/// the newest stored events, as many as `router.dedupe_window`.
#[actix_rt::test]
async fn duplicate_window_survives_a_restart() {
    let server = TestServer::with(|c| c.router.dedupe_window = 2).await;
    let dir = server.data_dir.clone();
    let mut c = server.ws().await;
    let mut cursors = Vec::new();
    for id in ["job-1", "job-2", "job-3"] {
        let r = c.publish(json!({"id": id, "type": "job_run"})).await;
        assert_eq!(r["duplicate"], false);
        cursors.push(r["cursor"].as_u64().unwrap());
    }
    drop(c);
    server.stop().await;

    let server = TestServer::with_data_dir(dir, |c| c.router.dedupe_window = 2).await;
    let mut c = server.ws().await;
    for (id, cursor) in [("job-3", cursors[2]), ("job-2", cursors[1])] {
        let r = c.publish(json!({"id": id, "type": "job_run"})).await;
        assert_eq!(r["duplicate"], true, "{id}: {r}");
        assert_eq!(r["cursor"], cursor, "{id}: the original cursor");
    }
    // Older than the window: stored again, as before a restart.
    let r = c.publish(json!({"id": "job-1", "type": "job_run"})).await;
    assert_eq!(r["duplicate"], false, "{r}");
    assert!(r["cursor"].as_u64().unwrap() > cursors[2]);
    let stored = all_events(|p| server.url(p)).await;
    assert_eq!(stored.len(), 4);
}

/// The page size recorded in a SQLite file's header (bytes 16-17, big-endian; 1 means
/// 65536).
fn page_size_of(db: &std::path::Path) -> u32 {
    let header = std::fs::read(db).expect("events.db");
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    }
}

#[actix_rt::test]
async fn store_page_size_applies_to_a_new_file_only() {
    let server = TestServer::with(|c| c.store.page_size = 65536).await;
    let dir = server.data_dir.clone();
    let db = dir.path().join("events.db");
    let mut c = server.ws().await;
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"type": "bulk_event", "payload": {"i": i, "pad": "x".repeat(500)}}))
        .collect();
    let reply = c
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    assert_eq!(reply["results"].as_array().unwrap().len(), 300);
    drop(c);
    server.stop().await;
    assert_eq!(page_size_of(&db), 65536);

    // Restarted with the default setting, the file keeps its pages and its events.
    let server = TestServer::with_data_dir(dir.clone(), |_| {}).await;
    let stored = all_events(|p| server.url(p)).await;
    assert_eq!(stored.len(), 300);
    assert_eq!(stored[299]["payload"]["i"], 299);
    let mut c = server.ws().await;
    let next = c.publish(json!({"type": "task_created"})).await;
    assert_eq!(
        next["cursor"].as_u64().unwrap(),
        stored[299]["cursor"].as_u64().unwrap() + 1
    );
    drop(c);
    server.stop().await;
    assert_eq!(page_size_of(&db), 65536);
}

/// Publishes one `bulk_event` per number of `range`, in batches of up to 1000, each
/// accepted.
async fn publish_bulk(c: &mut WsClient, range: std::ops::Range<u64>) {
    let numbers: Vec<u64> = range.collect();
    for chunk in numbers.chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"type": "bulk_event", "payload": {"i": i}}))
            .collect();
        let reply = c
            .request(json!({"type": "publish_batch", "events": events}))
            .await;
        assert_eq!(reply["type"], "published_batch", "{reply}");
    }
}

/// A restart reads the row counts of the log's full segments from the file instead
/// of counting them: only the newest segment (16,384 events by default) is counted.
/// Changing a recorded count by hand shows which it did.
#[actix_rt::test]
async fn a_restart_reads_full_segments_counts_instead_of_counting() {
    let server = TestServer::start().await;
    let dir = server.data_dir.clone();
    let mut c = server.ws().await;
    publish_bulk(&mut c, 0..17_000).await;
    drop(c);
    server.stop().await;

    let db = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let recorded = |key: &str| -> i64 {
        db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(recorded("segment_1_rows"), 16_384);
    db.execute(
        "UPDATE meta SET value = 16000 WHERE key = 'segment_1_rows'",
        [],
    )
    .unwrap();
    drop(db);

    let server = TestServer::with_data_dir(dir, |_| {}).await;
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["store"]["event_count"], 16_000 + (17_000 - 16_384));
    assert_eq!(stats["store"]["last_cursor"], 17_000);
}

/// `store.segment_events` sizes the segment tables of a new file; a file keeps its
/// size when the setting changes.
#[actix_rt::test]
async fn store_segment_events_sizes_a_new_file() {
    let server = TestServer::with(|c| c.store.segment_events = 1024).await;
    let dir = server.data_dir.clone();
    let mut c = server.ws().await;
    publish_bulk(&mut c, 0..3000).await;
    drop(c);
    server.stop().await;
    let tables = || {
        let db = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
        let mut stmt = db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'events_*' ORDER BY name")
            .unwrap();
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        names
    };
    // 3,000 cursors at 1,024 per segment.
    assert_eq!(tables(), ["events_1", "events_2", "events_3"]);

    let server = TestServer::with_data_dir(dir.clone(), |_| {}).await;
    let mut c = server.ws().await;
    publish_bulk(&mut c, 3000..4000).await;
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["store"]["event_count"], 4000);
    drop(c);
    server.stop().await;
    assert_eq!(tables(), ["events_1", "events_2", "events_3", "events_4"]);
}

#[actix_rt::test]
async fn graceful_shutdown_stores_every_accepted_event() {
    let server = TestServer::start().await;
    let dir = server.data_dir.clone();
    let mut c = server.ws().await;
    let events: Vec<Value> = (0..500)
        .map(|i| json!({"type": "bulk_event", "payload": {"i": i}}))
        .collect();
    let reply = c
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    assert_eq!(reply["results"].as_array().unwrap().len(), 500);
    server.stop().await;
    let server = TestServer::with_data_dir(dir, |_| {}).await;
    assert_eq!(all_events(|p| server.url(p)).await.len(), 500);
}

/// A publisher pipelines batches as fast as it can; the server is killed with SIGKILL
/// mid-stream. After a restart, every event whose `published_batch` result the client
/// had received is stored, exactly once, in cursor order.
#[actix_rt::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = SpawnedServer::start_in(dir.path(), &[]);
    let mut c = WsClient::connect(&server.ws_url()).await;

    let mut acked: Vec<u64> = Vec::new();
    let mut sent = 0u64;
    let mut in_flight = 0;
    let started = Instant::now();
    let mut killed = false;
    loop {
        // Keep up to 4 batches in flight.
        while in_flight < 4 && !killed {
            let events: Vec<Value> = (0..50)
                .map(|_| {
                    sent += 1;
                    json!({"id": format!("e-{sent}"), "type": "crash_test"})
                })
                .collect();
            c.send(&json!({"type": "publish_batch", "events": events}))
                .await;
            in_flight += 1;
        }
        if !killed && started.elapsed() > Duration::from_millis(700) {
            signal(server.pid(), "KILL");
            killed = true;
        }
        match c.try_recv(Duration::from_secs(5)).await {
            Some(reply) => {
                assert_eq!(reply["type"], "published_batch", "{reply}");
                for r in reply["results"].as_array().unwrap() {
                    acked.push(r["cursor"].as_u64().expect("acknowledged with a cursor"));
                }
                in_flight -= 1;
            }
            None => break,
        }
    }
    let _ = server.wait();
    assert!(killed);
    assert!(
        acked.len() >= 50,
        "the publisher got acknowledgements before the kill"
    );

    let server = SpawnedServer::start_in(dir.path(), &[]);
    let addr = server.addr;
    let stored = all_events(|p| format!("http://{addr}{p}")).await;
    signal(server.pid(), "TERM");
    let _ = server.wait();
    eprintln!(
        "kill -9: {} acknowledged, {} stored",
        acked.len(),
        stored.len()
    );

    let stored_cursors: Vec<u64> = stored
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    let mut sorted = stored_cursors.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        stored_cursors, sorted,
        "stored in strictly increasing cursor order, no duplicates"
    );
    let stored_set: std::collections::HashSet<u64> = stored_cursors.iter().copied().collect();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|c| !stored_set.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost after kill -9: {missing:?}"
    );
    // Ids are unique: nothing was stored twice.
    let ids: std::collections::HashSet<&str> =
        stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), stored.len());
}

/// `switchyard_store_commit_batch_size` from `/metrics`: (commits, events).
async fn commit_totals(server: &TestServer) -> (f64, f64) {
    (
        server.metric("store_commit_batch_size_count").await,
        server.metric("store_commit_batch_size_sum").await,
    )
}

/// One connection pipelining single publishes without a window (a log shipper, a
/// naive agent) while each commit waits, as on a slow disk: what arrives meanwhile goes
/// into the next commit, so commits grow with the load.
#[actix_rt::test]
async fn a_burst_of_single_publishes_is_committed_in_large_groups() {
    const EVENTS: u64 = 1000;
    let server = TestServer::start().await;
    let (commits_before, events_before) = commit_totals(&server).await;
    // Another connection holds the write lock half the time: a commit that meets it
    // waits (the writer's busy timeout), as on a slow disk, whatever the machine's
    // speed.
    let db = server.data_dir.path().join("events.db");
    let stop = Arc::new(AtomicBool::new(false));
    let locker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                std::thread::sleep(Duration::from_millis(10));
                conn.execute_batch("COMMIT").unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut c = server.ws().await;
    for i in 0..EVENTS {
        c.send(&json!({"type": "publish_event", "request_id": i, "event": {"topic": "burst.one", "payload": {"i": i}}}))
            .await;
    }
    for i in 0..EVENTS {
        let reply = c.recv().await;
        assert_eq!(
            (reply["type"].as_str(), reply["request_id"].as_u64()),
            (Some("published"), Some(i)),
            "{reply}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    locker.join().unwrap();
    let (commits, events) = commit_totals(&server).await;
    let (commits, events) = (commits - commits_before, events - events_before);
    assert_eq!(events, EVENTS as f64);
    // A connection keeps at most 64 publishes awaiting their commit, so a commit that
    // waited carries up to 64: 15-17 per commit here on average, against 4 when the
    // session waited on one publish at a time past 64.
    assert!(
        events / commits >= 8.0,
        "{events} events in {commits} commits: {:.1} per commit",
        events / commits
    );
}

#[test]
fn unusable_data_directory_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("events.db"), vec![0x42u8; 8192]).unwrap();
    for (data_dir, expect) in [
        (file.as_path(), "data directory"),
        (corrupt.as_path(), "event store"),
    ] {
        let out = switchyard()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{data_dir:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error: cannot open the event store"), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
