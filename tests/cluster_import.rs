//! `switchyard cluster import --from-sqlite DIR`, end to end: a real single node on
//! SQLite builds a log (with a retention gap, a durable subscription and a dead
//! letter), stops, is imported into a real `redis-server`, and a cluster node on that
//! Redis serves the same cursors to the same clients.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::cluster::{http, node as cluster_node, publish_batch, ws};
use common::process::{signal, switchyard, SpawnedServer};
use common::redis::RedisServer;
use common::WsClient;
use serde_json::{json, Value};

fn durable() -> Value {
    json!({"id": "d", "patterns": ["job.>"], "durable": "billing", "ack_timeout_ms": 60000})
}

fn single_node(dir: &Path, env: &[(&str, &str)]) -> SpawnedServer {
    let mut all = vec![("SWITCHYARD_STORE__SYNCHRONOUS_FULL", "false")];
    all.extend_from_slice(env);
    SpawnedServer::start_in(dir, &all)
}

/// SIGTERM, and a clean exit: the store is flushed.
fn stop(node: SpawnedServer) {
    signal(node.pid(), "TERM");
    let exit = node.wait().expect("wait for the node");
    assert!(exit.success(), "the node stops cleanly: {exit:?}");
}

fn import(redis: &RedisServer, dir: &Path) -> Output {
    switchyard()
        .args(["cluster", "import", "--from-sqlite"])
        .arg(dir)
        .env("SWITCHYARD_STORE__KIND", "redis")
        .env("SWITCHYARD_STORE__REDIS_URL", redis.url())
        .output()
        .expect("run switchyard cluster import")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn get(node: &SpawnedServer, path: &str) -> Value {
    http("GET", node, path, None).await.1
}

/// Polls `GET path` until `done` holds of it (5 s at most).
async fn wait_for(node: &SpawnedServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = get(node, path).await;
        if done(&v) {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{path}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a subscribe replayed: its events, and the `gap` frames (ranges retention
/// removed before a durable subscription resolved them).
struct Replayed {
    client: WsClient,
    events: Vec<Value>,
    gaps: Vec<Value>,
}

/// Subscribes with `spec` and reads events until `replay_complete`.
async fn replay(node: &SpawnedServer, spec: Value) -> Replayed {
    let mut client = WsClient::connect(&node.ws_url()).await;
    client.subscribe(spec).await;
    let (mut events, mut gaps) = (Vec::new(), Vec::new());
    loop {
        let msg = client.recv().await;
        match msg["type"].as_str() {
            Some("event") => events.push(msg["event"].clone()),
            Some("gap") => gaps.push(msg),
            Some("replay_complete") => {
                return Replayed {
                    client,
                    events,
                    gaps,
                }
            }
            _ => panic!("unexpected {msg}"),
        }
    }
}

/// Every retained event: (cursor, id, payload).
async fn whole_log(node: &SpawnedServer) -> Vec<(u64, String, Value)> {
    let events = replay(node, json!({"patterns": [">"], "from_cursor": 0}))
        .await
        .events;
    events
        .iter()
        .map(|e| {
            let cursor = e["cursor"].as_u64().expect("cursor");
            (
                cursor,
                e["id"].as_str().unwrap_or("").to_owned(),
                e["payload"].clone(),
            )
        })
        .collect()
}

fn stream_len(redis: &RedisServer, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut redis.connection())
        .expect("XLEN")
}

#[actix_rt::test]
async fn a_single_nodes_log_moves_to_redis_with_cursors_durables_and_dead_letters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = single_node(dir.path(), &[("SWITCHYARD_STORE__MAX_EVENTS", "10")]);
    let mut sub = replay(&node, durable()).await.client;
    assert_eq!(
        publish_batch(&mut ws(&node).await, "e", 20).await,
        (1..=20).collect::<Vec<_>>()
    );
    // Even cursors acknowledged, 19 dead-lettered, the other odd ones left unacked.
    for _ in 0..20 {
        let e = sub.recv_event().await["event"].clone();
        let cursor = e["cursor"].as_u64().expect("cursor");
        if cursor == 19 {
            sub.send(&json!({"type": "nack", "subscription_id": "d", "event_id": e["id"], "requeue": false}))
                .await;
        } else if cursor % 2 == 0 {
            sub.send(&json!({"type": "ack", "subscription_id": "d", "event_id": e["id"]}))
                .await;
        }
    }
    sub.assert_alive().await;
    wait_for(&node, "/api/dead-letters", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    // Retention (every second) keeps the newest 10 (the dead letter's notice is one).
    wait_for(&node, "/api/stats", |v| v["store"]["event_count"] == 10).await;
    let before = whole_log(&node).await;
    let (first, last) = match (before.first(), before.last()) {
        (Some(f), Some(l)) => (f.0, l.0),
        _ => panic!("a log is left"),
    };
    assert!(first > 10, "retention left a gap: {first}");
    drop(sub);
    stop(node);

    let db = dir.path().join("events.db");
    let file_before = std::fs::read(&db).expect("events.db");
    let redis = RedisServer::start();
    let out = import(&redis, dir.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let summary = format!("10 events, cursors {first}..{last}; the log's last cursor is {last}");
    assert!(stdout.contains(&summary), "{stdout}");
    assert!(stdout.contains("1 dead letters"), "{stdout}");
    assert!(stdout.contains("1 durable subscriptions"), "{stdout}");
    assert_eq!(std::fs::read(&db).expect("events.db"), file_before);

    // A second import is refused and writes nothing.
    let again = import(&redis, dir.path());
    let stderr = text(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(stderr.contains("import into an empty log"), "{stderr}");
    assert_eq!(stream_len(&redis, "sy:{dl}:letters"), 1);

    let node = cluster_node(&redis, "a");
    assert_eq!(whole_log(&node).await, before, "same cursors and payloads");
    let (_, stats, _) = http("GET", &node, "/api/stats", None).await;
    assert_eq!(stats["store"]["event_count"], 10, "imported once: {stats}");
    let resumed = replay(&node, durable()).await;
    // Retention removed unacknowledged events below `first` on the single node: the
    // resumed subscription is told, once, up to the cursor before the oldest kept.
    assert_eq!(resumed.gaps.len(), 1, "{:?}", resumed.gaps);
    assert_eq!(
        resumed.gaps[0]["to_cursor"],
        first - 1,
        "{:?}",
        resumed.gaps
    );
    assert_eq!(resumed.gaps[0]["reason"], "retention");
    let mut unacked: Vec<u64> = resumed
        .events
        .iter()
        .map(|e| e["cursor"].as_u64().expect("cursor"))
        .collect();
    unacked.sort_unstable();
    let retained_unacked: Vec<u64> = [11, 13, 15, 17]
        .into_iter()
        .filter(|&c| c >= first)
        .collect();
    assert_eq!(
        unacked, retained_unacked,
        "exactly the unacknowledged events"
    );
    let mut publisher = WsClient::connect(&node.ws_url()).await;
    let reply = publisher
        .publish(json!({"topic": "other.thing", "payload": {}}))
        .await;
    assert_eq!(reply["cursor"], last + 1, "{reply}");
    let letters = get(&node, "/api/dead-letters").await;
    let letters = letters.as_array().expect("a list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["cursor"], 19);
    assert_eq!(letters[0]["subscription"], "d");
}

#[actix_rt::test]
async fn a_log_that_retention_emptied_keeps_its_last_cursor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = single_node(dir.path(), &[("SWITCHYARD_STORE__MAX_AGE_SECS", "1")]);
    assert_eq!(publish_batch(&mut ws(&node).await, "e", 3).await, [1, 2, 3]);
    wait_for(&node, "/api/stats", |v| v["store"]["event_count"] == 0).await;
    stop(node);

    let redis = RedisServer::start();
    let out = import(&redis, dir.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("0 events; the log's last cursor is 3"),
        "{stdout}"
    );
    let node = cluster_node(&redis, "a");
    let mut publisher = WsClient::connect(&node.ws_url()).await;
    let reply = publisher.publish(json!({"topic": "job.next"})).await;
    assert_eq!(reply["cursor"], 4, "no cursor is handed out twice: {reply}");
}

/// A log written by nodes from before one entry per group commit (one event per
/// entry: `e`, `t`, `p`) is replayed as it is, and new events are numbered after it.
#[actix_rt::test]
async fn a_log_written_one_event_per_entry_is_replayed_and_continued() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    for cursor in 1..=3u64 {
        let envelope = json!({
            "id": format!("old-{cursor}"), "type": "job_old", "topic": "job.old",
            "priority": "normal", "timestamp": "2026-12-01T00:00:00.000000Z",
            "source": "old", "target": null, "correlation_id": null, "agent_id": null,
            "task_id": null, "payload": {"i": cursor}, "metadata": {}, "ttl_ms": null,
            "cursor": cursor
        });
        redis::cmd("XADD")
            .arg("sy:{log}:events")
            .arg(format!("{cursor}-0"))
            .arg("e")
            .arg(envelope.to_string())
            .arg("t")
            .arg(1_764_547_200_000u64)
            .query::<String>(&mut conn)
            .expect("XADD");
    }
    redis::cmd("SET")
        .arg("sy:{log}:seq")
        .arg(3)
        .query::<()>(&mut conn)
        .expect("SET seq");

    let node = cluster_node(&redis, "a");
    let mut sub = ws(&node).await;
    sub.subscribe(json!({"id": "r", "patterns": ["job.>"], "from_cursor": 0}))
        .await;
    let (mut got, mut published) = (Vec::new(), false);
    let mut publisher = ws(&node).await;
    while got.len() < 5 {
        if got.len() == 3 && !published {
            published = true;
            // Replayed: now two live ones, numbered after the old log.
            assert_eq!(publish_batch(&mut publisher, "new", 2).await, [4, 5]);
        }
        let msg = sub.recv().await;
        if msg["type"] == "event" {
            let e = &msg["event"];
            got.push((e["cursor"].as_u64().expect("cursor"), e["id"].clone()));
        }
    }
    let want: Vec<(u64, Value)> = (1..=3)
        .map(|c| (c, json!(format!("old-{c}"))))
        .chain((0..2).map(|i| (4 + i, json!(format!("new-{i}")))))
        .collect();
    assert_eq!(got, want);
    assert_eq!(whole_log(&node).await.len(), 5);
}
