//! Event sources (`[[sources]]`, docs/sources.md) end to end: another process writes a
//! SQLite table or appends to files, a real server publishes the changes, subscribers
//! and the store see each exactly once, across restarts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{assert_config_refused, switchyard};
use common::{TestServer, WsClient};
use serde_json::{json, Value};
use switchyard::config::{SourceConfig, SourceKind};
use switchyard::Config;

/// Runs each statement in its own transaction, from a separate `python3` process
/// (without fsync: a burst of updates stays a burst on a busy disk).
fn sql(db: &Path, statements: &[&str]) {
    let script = "import sqlite3, sys, json\n\
                  c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)\n\
                  c.execute('PRAGMA synchronous=OFF')\n\
                  for s in json.loads(sys.argv[2]):\n    c.execute(s)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(serde_json::to_string(statements).unwrap())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends `text` to `file` from a separate shell process.
fn append(dir: &Path, shell: &str) {
    let out = Command::new("sh")
        .args(["-c", shell])
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sqlite_source(db: &Path) -> SourceConfig {
    SourceConfig {
        kind: SourceKind::Sqlite,
        name: String::new(),
        path: db.to_owned(),
        topic: "task".into(),
        table: "tasks".into(),
        key: "id".into(),
        status_column: "status".into(),
        debounce_ms: 100,
        glob: "*.jsonl".into(),
        poll_interval_ms: 20,
    }
}

fn file_source(dir: &Path) -> SourceConfig {
    SourceConfig {
        kind: SourceKind::File,
        name: String::new(),
        path: dir.to_owned(),
        topic: "file".into(),
        table: String::new(),
        key: String::new(),
        status_column: String::new(),
        debounce_ms: 100,
        glob: "*.jsonl".into(),
        poll_interval_ms: 20,
    }
}

/// The one source of `server`, as `GET /api/sources` shows it.
async fn source(server: &TestServer) -> Value {
    let (status, body) = server.get("/api/sources").await;
    assert_eq!(status, 200, "{body}");
    body["sources"][0].clone()
}

/// Waits until the source has nothing left to publish.
async fn settled(server: &TestServer) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = source(server).await;
        if s["state"] == "running" && s["lag"] == 0 {
            return s;
        }
        assert!(Instant::now() < deadline, "source never settled: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every stored event of `pattern`, oldest first.
async fn stored(server: &TestServer, pattern: &str) -> Vec<Value> {
    let (status, body) = server
        .get(&format!("/api/events?topic={pattern}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

/// Receives events until one satisfies `last`; returns them all.
async fn until(ws: &mut WsClient, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let e = ws.recv_event().await["event"].clone();
        let done = last(&e);
        got.push(e);
        if done {
            return got;
        }
    }
}

/// `(topic, key)` of each task event.
fn changes(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or("").to_owned(),
                e["payload"]["task_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn assert_unique_ids(events: &[Value]) {
    let mut ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was stored twice");
}

#[actix_rt::test]
async fn sqlite_changes_are_events_exactly_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    sql(
        &db,
        &["CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT, agent_id TEXT, title TEXT)"],
    );
    let tweak = |db: PathBuf| move |c: &mut Config| c.sources = vec![sqlite_source(&db)];
    let server = TestServer::with(tweak(db.clone())).await;
    settled(&server).await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"type": "pattern", "patterns": ["task.>"]}))
        .await;

    sql(
        &db,
        &[
            "INSERT INTO tasks VALUES ('t1', 'pending', 'a1', 'first')",
            "UPDATE tasks SET status = 'running' WHERE id = 't1'",
            // Rolled back: never an event.
            "BEGIN",
            "INSERT INTO tasks VALUES ('tx', 'x', NULL, NULL)",
            "ROLLBACK",
            "DELETE FROM tasks WHERE id = 't1'",
        ],
    );
    let live = until(&mut ws, |e| e["topic"] == "task.deleted").await;
    assert_eq!(
        changes(&live),
        [
            ("task.created".into(), "t1".into()),
            ("task.updated".into(), "t1".into()),
            ("task.deleted".into(), "t1".into())
        ]
    );
    let (created, updated, deleted) = (&live[0], &live[1], &live[2]);
    assert_eq!(created["payload"]["task"]["title"], "first");
    assert_eq!(created["agent_id"], "a1");
    assert_eq!(created["task_id"], "t1");
    assert_eq!(created["source"], "sqlite-tasks");
    assert_eq!(updated["payload"]["previous_status"], "pending");
    assert_eq!(updated["payload"]["new_status"], "running");
    assert_eq!(deleted["payload"]["task"], Value::Null);
    assert_eq!(deleted["agent_id"], "a1", "from the deleted row");

    // Twenty rapid updates of one row: merged, the latest wins, nothing lost.
    let mut burst = vec!["INSERT INTO tasks VALUES ('t2', 's0', NULL, NULL)".to_owned()];
    burst.extend((1..=20).map(|i| format!("UPDATE tasks SET status = 's{i}' WHERE id = 't2'")));
    let burst: Vec<&str> = burst.iter().map(String::as_str).collect();
    sql(&db, &burst);
    let events = until(&mut ws, |e| e["payload"]["new_status"] == "s20").await;
    assert_eq!(events[0]["topic"], "task.created");
    let updates = &events[1..];
    assert!(
        updates.len() < 20,
        "{} updates were not merged",
        updates.len()
    );
    assert_eq!(updates[0]["payload"]["previous_status"], "s0");
    for pair in updates.windows(2) {
        assert_eq!(
            pair[1]["payload"]["previous_status"],
            pair[0]["payload"]["new_status"]
        );
    }
    ws.expect_silence(Duration::from_millis(300)).await;
    let s = settled(&server).await;
    assert_eq!(s["published"], 4 + updates.len() as u64, "{s}");
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("switchyard_source_up{source=\"sqlite-tasks\"} 1"),
        "{metrics}"
    );

    // A column added while running: the triggers are installed again and carry it.
    sql(&db, &["ALTER TABLE tasks ADD COLUMN priority TEXT"]);
    let mut added = 0;
    loop {
        added += 1;
        let insert =
            format!("INSERT INTO tasks (id, status, priority) VALUES ('p{added}', 'new', 'high')");
        sql(&db, &[&insert]);
        let e = ws.recv_event().await["event"].clone();
        assert_eq!(e["payload"]["task_id"], format!("p{added}"));
        if e["payload"]["task"]["priority"] == "high" {
            break;
        }
        assert!(added < 50, "the new column never reached the events: {e}");
    }

    // Down: changes wait in the outbox. A crash after publishing, before draining, is
    // the first outbox row back in the outbox.
    let data = server.data_dir.clone();
    server.stop().await;
    sql(
        &db,
        &[
            "INSERT INTO tasks VALUES ('t3', 'new', NULL, 'while down', NULL)",
            "DELETE FROM tasks WHERE id = 't2'",
            "INSERT INTO switchyard_outbox (id, source, op, key, row, at) \
             SELECT 1, 'sqlite-tasks', 'insert', 't1', '{}', '2026-01-01T00:00:00Z'",
        ],
    );
    let before = 4 + updates.len() + added;
    let server = TestServer::with_data_dir(data, tweak(db.clone())).await;
    let s = settled(&server).await;
    assert_eq!(
        s["position"]["outbox_id"].as_u64().map(|n| n > 1),
        Some(true),
        "{s}"
    );
    let all = stored(&server, "task.%3E").await;
    assert_unique_ids(&all);
    assert_eq!(all.len(), before + 2, "{:#?}", changes(&all));
    assert_eq!(
        changes(&all[before..]),
        [
            ("task.created".into(), "t3".into()),
            ("task.deleted".into(), "t2".into())
        ]
    );
    server.stop().await;
}

#[actix_rt::test]
async fn file_lines_are_events_through_new_files_rotation_truncation_and_restarts() {
    let watched = tempfile::tempdir().unwrap();
    let dir = watched.path().to_owned();
    let tweak = |dir: PathBuf| move |c: &mut Config| c.sources = vec![file_source(&dir)];
    let server = TestServer::with(tweak(dir.clone())).await;
    settled(&server).await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"type": "pattern", "patterns": ["file.>"]}))
        .await;

    append(
        &dir,
        "echo '{\"step\": 1}' >> progress.jsonl; \
         echo '{\"type\": \"done\", \"priority\": \"high\", \"payload\": {\"step\": 2}}' >> progress.jsonl; \
         echo 'not json' >> progress.jsonl; \
         echo '{\"step\": 3}' >> progress.jsonl; \
         echo 'ignored' >> notes.txt",
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(ws.recv_event().await["event"].clone());
    }
    // Delivered highest priority first; published (cursors) in line order.
    got.sort_by_key(|e| e["cursor"].as_u64());
    assert_eq!(got[0]["topic"], "file.progress");
    assert_eq!(got[0]["payload"], json!({"step": 1}));
    assert_eq!(got[0]["source"], "file-file");
    assert_eq!(
        (got[1]["type"].as_str(), got[1]["priority"].as_str()),
        (Some("done"), Some("high"))
    );
    assert_eq!(got[1]["topic"], "file.progress");
    let s = settled(&server).await;
    assert_eq!(
        (s["published"].as_u64(), s["skipped"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );

    // A new file; then rotation with a line written just before it; then truncation.
    append(&dir, "echo '{\"n\": \"other\"}' >> other.jsonl");
    assert_eq!(ws.recv_event().await["event"]["topic"], "file.other");
    append(
        &dir,
        "echo '{\"step\": 4}' >> progress.jsonl; mv progress.jsonl progress.jsonl.1; \
         echo '{\"step\": 5}' >> progress.jsonl",
    );
    let got = until(&mut ws, |e| e["payload"]["step"] == 5).await;
    let steps: Vec<&Value> = got.iter().map(|e| &e["payload"]["step"]).collect();
    assert_eq!(steps, [&json!(4), &json!(5)]);
    append(&dir, "echo '{\"m\": 1}' > other.jsonl");
    assert_eq!(ws.recv_event().await["event"]["payload"], json!({"m": 1}));
    ws.expect_silence(Duration::from_millis(200)).await;
    settled(&server).await;

    // Lines appended while the server is down: each once after the restart.
    let data = server.data_dir.clone();
    server.stop().await;
    append(
        &dir,
        "echo '{\"step\": 6}' >> progress.jsonl; echo '{\"m\": 2}' >> other.jsonl",
    );
    let server = TestServer::with_data_dir(data, tweak(dir.clone())).await;
    let s = settled(&server).await;
    let all = stored(&server, "file.%3E").await;
    assert_unique_ids(&all);
    let payloads: Vec<Value> = all.iter().map(|e| e["payload"].clone()).collect();
    assert_eq!(payloads.len(), 9, "{payloads:#?}");
    assert!(payloads[7..].contains(&json!({"step": 6})), "{payloads:#?}");
    assert!(payloads[7..].contains(&json!({"m": 2})), "{payloads:#?}");
    assert_eq!(
        s["position"]["files"].as_array().map(Vec::len),
        Some(3),
        "{s}"
    );
    server.stop().await;
}

/// A source that cannot read says why in `/api/sources`, and starts once it can.
#[actix_rt::test]
async fn a_source_that_cannot_read_says_why_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("later.db");
    let server = TestServer::with(|c| c.sources = vec![sqlite_source(&db)]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = source(&server).await;
        if s["state"] == "error" {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        s["error"].as_str().unwrap_or("").contains("later.db"),
        "{s}"
    );
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("switchyard_source_up{source=\"sqlite-tasks\"} 0"),
        "{metrics}"
    );

    sql(
        &db,
        &["CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT)"],
    );
    settled(&server).await;
    sql(&db, &["INSERT INTO tasks VALUES ('t1', 'new')"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(&server, "task.%3E").await.len() != 1 {
        assert!(Instant::now() < deadline, "the insert was never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// A source named like a configured token publishes with that token's grants.
#[actix_rt::test]
async fn a_source_named_like_a_token_has_its_grants() {
    const READER: &str = "reader-token-0123456789";
    let watched = tempfile::tempdir().unwrap();
    let server = TestServer::with(|c| {
        let mut source = file_source(watched.path());
        source.name = "ingest".into();
        c.sources = vec![source];
        c.auth.tokens = serde_json::from_value(json!([
            {"name": "ingest", "token": "ingest-token-0123456789", "publish": ["file.allowed"]},
            {"name": "reader", "token": READER, "subscribe": [">"]},
        ]))
        .unwrap();
    })
    .await;
    append(
        watched.path(),
        "echo '{\"n\": 1}' >> denied.jsonl; echo '{\"n\": 2}' >> allowed.jsonl",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let (status, body) = server.call("GET", "/api/sources", Some(READER), None).await;
        assert_eq!(status, 200, "{body}");
        let s = body["sources"][0].clone();
        if s["published"] == 1 && s["skipped"] == 1 {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s["state"], "running");
    let (_, events) = server
        .call("GET", "/api/events?topic=file.%3E", Some(READER), None)
        .await;
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(events[0]["topic"], "file.allowed");
    assert_eq!(events[0]["source"], "ingest");
    server.stop().await;
}

/// GET `path` of a spawned server, as JSON.
async fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let mut res = awc::Client::new()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("GET");
    let body = res.body().limit(16 << 20).await.expect("body");
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

/// Waits until every source of a spawned server is running with nothing left.
async fn spawned_settled(addr: std::net::SocketAddr) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = get_json(addr, "/api/sources").await;
        let sources = body["sources"].as_array().cloned().unwrap_or_default();
        if !sources.is_empty()
            && sources
                .iter()
                .all(|s| s["state"] == "running" && s["lag"] == 0)
        {
            return body;
        }
        assert!(Instant::now() < deadline, "sources never settled: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kill -9` while both sources publish, then a restart: every change and line is
/// stored exactly once, and the bad line is logged with its file and line number.
#[actix_rt::test]
async fn a_killed_server_loses_and_repeats_nothing() {
    use common::process::{signal, ChildGuard, SpawnedServer};
    let dir = tempfile::tempdir().unwrap();
    let (db, watched, data) = (
        dir.path().join("state.db"),
        dir.path().join("events"),
        dir.path().join("data"),
    );
    std::fs::create_dir_all(&watched).unwrap();
    sql(
        &db,
        &["CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT)"],
    );
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[sources]]\nkind = \"sqlite\"\npath = {db:?}\ntable = \"tasks\"\nkey = \"id\"\n\
             topic = \"task\"\ndebounce_ms = 0\npoll_interval_ms = 20\n\
             [[sources]]\nkind = \"file\"\npath = {watched:?}\npoll_interval_ms = 20\n"
        ),
    )
    .unwrap();
    let env = [("SWITCHYARD_CONFIG", config.to_str().unwrap())];
    let server = SpawnedServer::start_in(&data, &env);
    spawned_settled(server.addr).await;

    // Two writers, each its own process, slow enough to be cut in the middle.
    let rows = "import sqlite3, sys, time\n\
                c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)\n\
                for i in range(300):\n    \
                c.execute(\"INSERT INTO tasks VALUES (?, 'new')\", ('t%d' % i,)); time.sleep(0.002)\n";
    let mut rows = ChildGuard::spawn(Command::new("python3").args(["-c", rows]).arg(&db), false)
        .expect("python3");
    let lines = "for i in $(seq 0 299); do \
                 if [ $i = 1 ]; then echo 'bad line' >> run.jsonl; \
                 else echo \"{\\\"i\\\": $i}\" >> run.jsonl; fi; \
                 case $i in *0) sleep 0.01;; esac; done";
    let mut lines = ChildGuard::spawn(
        Command::new("sh").args(["-c", lines]).current_dir(&watched),
        false,
    )
    .expect("sh");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = get_json(server.addr, "/api/sources").await;
        if body["sources"][0]["published"].as_u64() >= Some(30) {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(server.pid(), "KILL");
    let first_log = server.log();
    let _ = server.wait();
    assert!(rows.wait().unwrap().success());
    assert!(lines.wait().unwrap().success());

    let server = SpawnedServer::start_in(&data, &env);
    spawned_settled(server.addr).await;
    let tasks = get_json(server.addr, "/api/events?topic=task.%3E&limit=1000").await;
    let tasks = tasks.as_array().cloned().unwrap_or_default();
    assert_unique_ids(&tasks);
    let mut keys: Vec<String> = tasks
        .iter()
        .map(|e| e["payload"]["task_id"].as_str().unwrap_or("").to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!((tasks.len(), keys.len()), (300, 300), "each insert once");
    let files = get_json(server.addr, "/api/events?topic=file.%3E&limit=1000").await;
    let files = files.as_array().cloned().unwrap_or_default();
    assert_unique_ids(&files);
    let mut seen: Vec<u64> = files
        .iter()
        .filter_map(|e| e["payload"]["i"].as_u64())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!((files.len(), seen.len()), (299, 299), "each good line once");
    let log = format!("{first_log}{}", server.log());
    assert!(log.contains("run.jsonl line 2 skipped"), "{log}");
}

#[test]
fn a_bad_source_is_a_one_line_error_naming_the_key_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    for (content, key) in [
        (
            "[[sources]]\nkind = \"sqlite\"\npath = \"x.db\"\ntable = \"t a\"\nkey = \"id\"\n",
            "sources[0].table",
        ),
        (
            "[[sources]]\nkind = \"file\"\npath = \"d\"\n[[sources]]\nkind = \"file\"\npath = \"e\"\n",
            "sources[1].name",
        ),
        ("[[sources]]\nkind = \"file\"\npath = \"d\"\ntabel = \"x\"\n", "tabel"),
        ("[[sources]]\nkind = \"kafka\"\npath = \"d\"\n", "kafka"),
    ] {
        std::fs::write(&file, content).unwrap();
        let mut serve = switchyard();
        serve
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file);
        assert_config_refused(&mut serve, content, key);
    }
}

/// Not an assertion (speed is never asserted): how much the triggers and the source's
/// reads cost a writer, printed for the record (`--nocapture`).
#[actix_rt::test]
async fn writer_transactions_per_second_with_and_without_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let bench = "import sqlite3, sys, time\n\
                 c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)\n\
                 c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=NORMAL')\n\
                 n = 400; t = time.time(); base = sys.argv[2]\n\
                 for i in range(n):\n    c.execute(\"INSERT INTO tasks VALUES (?, 'new', 'a', 't')\", (base + str(i),))\n    \
                 c.execute(\"UPDATE tasks SET status = 'done' WHERE id = ?\", (base + str(i),))\n\
                 print(2 * n / (time.time() - t))\n";
    // Each run writes rows of its own (`r1-0`, `r2-0` ...).
    let runs = std::cell::Cell::new(0);
    let run = |db: &Path| -> f64 {
        runs.set(runs.get() + 1);
        let out = Command::new("python3")
            .args(["-c", bench])
            .arg(db)
            .arg(format!("r{}-", runs.get()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0)
    };
    let create = "CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT, agent_id TEXT, title TEXT)";
    let plain = dir.path().join("plain.db");
    sql(&plain, &[create]);
    let without = run(&plain);
    let watched = dir.path().join("watched.db");
    sql(&watched, &[create]);
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let tweak = |c: &mut Config| c.sources = vec![sqlite_source(&watched)];
    let server = TestServer::with_data_dir(data.clone(), tweak).await;
    settled(&server).await;
    let with = run(&watched);
    settled(&server).await;
    server.stop().await;
    // The triggers alone: the server is down, the outbox fills.
    let triggers_only = run(&watched);
    let server = TestServer::with_data_dir(data, tweak).await;
    let s = settled(&server).await;
    eprintln!(
        "writer transactions/s: {without:.0} without a source, {triggers_only:.0} with its \
         triggers alone, {with:.0} with the source running ({} events published)",
        s["published"]
    );
    server.stop().await;
}
