//! Cluster mode end to end: one real `redis-server` (its own port and directory, AOF
//! on) and two or three real `switchyard` processes sharing it, driven over real
//! sockets. Each test starts its own Redis, so tests run in parallel.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::process::SpawnedServer;
use common::redis::RedisServer;
use common::WsClient;
use serde_json::{json, Value};

/// Short beats and leases, so that failover tests wait seconds, not minutes.
const LEASE_MS: u64 = 1500;

fn node(redis: &RedisServer, name: &str) -> SpawnedServer {
    node_with(redis, name, &[])
}

fn node_with(redis: &RedisServer, name: &str, extra: &[(&str, &str)]) -> SpawnedServer {
    let url = redis.url();
    let lease = LEASE_MS.to_string();
    let mut env = vec![
        ("SWITCHYARD_STORE__KIND", "redis"),
        ("SWITCHYARD_STORE__REDIS_URL", url.as_str()),
        ("SWITCHYARD_CLUSTER__NODE_NAME", name),
        ("SWITCHYARD_CLUSTER__HEARTBEAT_MS", "250"),
        ("SWITCHYARD_CLUSTER__LEASE_TTL_MS", lease.as_str()),
        ("SWITCHYARD_CLUSTER__COMMAND_TIMEOUT_MS", "1000"),
    ];
    env.extend_from_slice(extra);
    SpawnedServer::start(&env)
}

async fn http(
    method: &str,
    node: &SpawnedServer,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let url = format!("http://{}{path}", node.addr);
    let request = match method {
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    };
    let mut res = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = res.body().limit(16 << 20).await.unwrap_or_default();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (res.status().as_u16(), value, retry_after)
}

async fn ws(node: &SpawnedServer) -> WsClient {
    WsClient::connect(&node.ws_url()).await
}

/// Reads `count` event deliveries; returns their cursors in arrival order.
async fn cursors_of(client: &mut WsClient, count: usize) -> Vec<u64> {
    let mut cursors = Vec::with_capacity(count);
    while cursors.len() < count {
        let msg = client.recv().await;
        if msg["type"] == "event" {
            cursors.push(msg["event"]["cursor"].as_u64().expect("cursor"));
        }
    }
    cursors
}

/// Publishes `count` events with ids `<prefix>-<i>` as one batch; their cursors.
async fn publish_batch(client: &mut WsClient, prefix: &str, count: usize) -> Vec<u64> {
    let events: Vec<Value> = (0..count)
        .map(|i| json!({"id": format!("{prefix}-{i}"), "topic": format!("job.{prefix}"), "payload": {"i": i}}))
        .collect();
    let reply = client
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    assert_eq!(reply["type"], "published_batch", "{reply}");
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            r["cursor"]
                .as_u64()
                .unwrap_or_else(|| panic!("stored: {r}"))
        })
        .collect()
}

#[actix_rt::test]
async fn events_from_any_node_reach_every_node_in_one_dense_cursor_space() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut on_a = ws(&a).await;
    let mut on_b = ws(&b).await;
    on_a.subscribe(json!({"patterns": ["job.>"]})).await;
    on_b.subscribe(json!({"patterns": ["job.>"]})).await;

    let mut pub_a = ws(&a).await;
    let mut pub_b = ws(&b).await;
    let (from_a, from_b) = futures_util::future::join(
        publish_batch(&mut pub_a, "a", 200),
        publish_batch(&mut pub_b, "b", 200),
    )
    .await;
    let mut all: Vec<u64> = from_a.iter().chain(&from_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>(), "one dense cursor space");

    for (name, client) in [("a", &mut on_a), ("b", &mut on_b)] {
        let got = cursors_of(client, 400).await;
        let unique: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(unique.len(), 400, "node {name}: no event twice");
        assert_eq!(unique, (1..=400).collect(), "node {name}: every event");
        client.expect_silence(Duration::from_millis(300)).await;
    }
    let (status, stats, _) = http("GET", &b, "/api/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["node"], "b", "{stats}");
    assert_eq!(stats["store"]["kind"], "redis");
    assert_eq!(stats["store"]["last_cursor"], 400);
}

#[actix_rt::test]
async fn the_same_id_on_another_node_is_a_duplicate_of_the_first() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut on_a = ws(&a).await;
    let first = on_a.publish(json!({"id": "once", "topic": "job.x"})).await;
    assert_eq!(first["duplicate"], false);
    let mut on_b = ws(&b).await;
    let again = on_b.publish(json!({"id": "once", "topic": "job.x"})).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["cursor"], first["cursor"]);
    // Over HTTP too, and nothing more was stored.
    let (status, body, _) = http(
        "POST",
        &b,
        "/api/events",
        Some(json!({"id": "once", "topic": "job.x"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["results"][0]["duplicate"], true, "{body}");
    let (_, stats, _) = http("GET", &a, "/api/stats", None).await;
    assert_eq!(stats["store"]["event_count"], 1, "{stats}");
}

#[actix_rt::test]
async fn a_client_resumes_on_another_node_with_no_gap_and_no_repeat() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut publisher = ws(&a).await;
    let first = publish_batch(&mut publisher, "one", 50).await;
    let seen = *first.last().expect("cursors");
    let more = publish_batch(&mut publisher, "two", 100).await;

    let mut resumed = ws(&b).await;
    resumed
        .subscribe(json!({"id": "r", "patterns": ["job.>"], "from_cursor": seen}))
        .await;
    let mut got = Vec::new();
    loop {
        let msg = resumed.recv().await;
        match msg["type"].as_str() {
            Some("event") => got.push(msg["event"]["cursor"].as_u64().expect("cursor")),
            Some("replay_complete") => break,
            _ => panic!("unexpected {msg}"),
        }
    }
    // Whatever the replay did not cover arrives live, once.
    let live = publish_batch(&mut publisher, "three", 10).await;
    let expected: Vec<u64> = more.iter().chain(&live).copied().collect();
    while got.len() < expected.len() {
        got.extend(cursors_of(&mut resumed, 1).await);
    }
    assert_eq!(
        got, expected,
        "exactly the events after {seen}, in cursor order"
    );
    resumed.expect_silence(Duration::from_millis(300)).await;
}

/// Acks half of what a durable subscription gets; returns the cursors left unacked.
async fn ack_half(client: &mut WsClient, count: usize) -> Vec<u64> {
    let mut unacked = Vec::new();
    let mut i = 0;
    while i < count {
        let msg = client.recv().await;
        if msg["type"] != "event" {
            continue;
        }
        let cursor = msg["event"]["cursor"].as_u64().expect("cursor");
        if i % 2 == 0 {
            let id = msg["event"]["id"].clone();
            client
                .send(&json!({"type": "ack", "subscription_id": "d", "event_id": id}))
                .await;
        } else {
            unacked.push(cursor);
        }
        i += 1;
    }
    unacked
}

#[actix_rt::test]
async fn a_durable_name_is_held_by_one_connection_in_the_cluster() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let durable =
        json!({"id": "d", "patterns": ["job.>"], "durable": "billing", "ack_timeout_ms": 60000});
    let mut holder = ws(&a).await;
    holder.subscribe(durable.clone()).await;
    let mut publisher = ws(&b).await;
    publish_batch(&mut publisher, "d", 20).await;
    let unacked = ack_half(&mut holder, 20).await;
    // Acks are written by the node's store actor: a ping after them orders nothing in
    // Redis, so wait until the acks show in the durable state.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut rival = ws(&b).await;
    let reply = rival
        .request(json!({"type": "subscribe", "subscription": durable}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "invalid_subscription", "{reply}");

    drop(holder);
    // Released on close: the name opens on the other node at once (well within the lease).
    let started = Instant::now();
    let mut taker = loop {
        let mut c = ws(&b).await;
        let reply = c
            .request(json!({"type": "subscribe", "subscription": durable}))
            .await;
        if reply["type"] == "subscribed" {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never released: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut got = cursors_of(&mut taker, unacked.len()).await;
    got.sort_unstable();
    assert_eq!(got, unacked, "exactly the unacknowledged events");
}

#[actix_rt::test]
async fn a_killed_nodes_durable_names_free_up_after_the_lease() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let durable = json!({"id": "d", "patterns": ["job.>"], "durable": "audit"});
    let mut holder = ws(&a).await;
    holder.subscribe(durable.clone()).await;
    let killed = Instant::now();
    unsafe_kill9(&a);
    // A fresh connection per attempt: a client's refused subscribes count against its
    // connection's error budget (limits.max_errors_per_window).
    loop {
        let mut taker = ws(&b).await;
        let reply = taker
            .request(json!({"type": "subscribe", "subscription": durable}))
            .await;
        if reply["type"] == "subscribed" {
            break;
        }
        assert_eq!(reply["code"], "invalid_subscription", "{reply}");
        let waited = killed.elapsed();
        assert!(
            waited < Duration::from_millis(LEASE_MS + 1000),
            "still held {waited:?} after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(holder);
}

fn unsafe_kill9(node: &SpawnedServer) {
    let status = std::process::Command::new("kill")
        .args(["-s", "KILL", &node.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[actix_rt::test]
async fn with_redis_down_publishes_are_refused_at_once_and_sessions_stay() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut watcher = ws(&b).await;
    watcher.subscribe(json!({"patterns": ["job.>"]})).await;
    let mut publisher = ws(&a).await;
    publish_batch(&mut publisher, "before", 5).await;
    assert_eq!(cursors_of(&mut watcher, 5).await, [1, 2, 3, 4, 5]);

    redis.kill9();
    let reply = publisher
        .request(json!({"type": "publish_event", "event": {"id": "down-1", "topic": "job.down"}}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let (status, body, retry_after) = http(
        "POST",
        &a,
        "/api/events",
        Some(json!({"topic": "job.down"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = http("GET", &b, "/ready", None).await;
        if status == 503 {
            assert_eq!(body["status"], "log_unavailable", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/ready still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.assert_alive().await;
    watcher.assert_alive().await;

    redis.restart();
    // A retry of the refused event is stored now, and the tails deliver it, gapless.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cursor = loop {
        let reply = publisher
            .request(
                json!({"type": "publish_event", "event": {"id": "down-1", "topic": "job.down"}}),
            )
            .await;
        if reply["type"] == "published" {
            break reply["cursor"].as_u64().expect("cursor");
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(
            Instant::now() < deadline,
            "Redis back, publishes still refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(cursor, 6, "cursors continue after an AOF restart");
    assert_eq!(cursors_of(&mut watcher, 1).await, [6]);
    let (status, _, _) = http("GET", &b, "/ready", None).await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_redis_without_aof_is_refused_unless_allowed() {
    let redis = RedisServer::start_with(&["--appendonly", "no"]);
    let mut command = common::process::switchyard();
    let output = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SWITCHYARD_STORE__KIND", "redis")
        .env("SWITCHYARD_STORE__REDIS_URL", redis.url())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run switchyard");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("appendonly"), "{err}");
    assert!(err.contains("redis_require_aof"), "{err}");

    let allowed = node_with(
        &redis,
        "a",
        &[("SWITCHYARD_STORE__REDIS_REQUIRE_AOF", "false")],
    );
    let mut client = ws(&allowed).await;
    let reply = client.publish(json!({"topic": "job.x"})).await;
    assert_eq!(reply["cursor"], 1);
}

#[actix_rt::test]
async fn a_wiped_log_is_not_reused_silently() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let mut watcher = ws(&a).await;
    watcher.subscribe(json!({"patterns": ["job.>"]})).await;
    let mut publisher = ws(&a).await;
    publish_batch(&mut publisher, "old", 3).await;
    cursors_of(&mut watcher, 3).await;

    redis::cmd("FLUSHALL")
        .query::<()>(&mut redis.connection())
        .expect("FLUSHALL");
    // Over HTTP: the node closes its WebSocket sessions once its tail sees the change.
    let (status, body, _) =
        http("POST", &a, "/api/events", Some(json!({"topic": "job.new"}))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("replaced"), "{message}");
    drop(publisher);
    let reason = watcher.recv_close().await.expect("a close reason");
    let text = reason.description.unwrap_or_default();
    assert!(text.contains("event log replaced"), "{text}");
}
