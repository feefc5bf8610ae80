//! Cluster mode end to end: one real `redis-server` (its own port and directory, AOF
//! on) and two or three real `switchyard` processes sharing it, driven over real
//! sockets. Each test starts its own Redis, so tests run in parallel.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{
    cursors_of, http, kill9, metrics_text, node, node_with, publish_batch, ws, LEASE_MS,
};
use common::process::SpawnedServer;
use common::redis::RedisServer;
use common::WsClient;
use serde_json::{json, Value};

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

/// Subscribes to `durable` on `node` until it is granted, `within` of `since`; every
/// refusal must say the name is held. A fresh connection per attempt: refused
/// subscribes count against a connection's error budget.
async fn take_durable(
    node: &SpawnedServer,
    durable: &Value,
    since: Instant,
    within: Duration,
) -> WsClient {
    loop {
        let mut c = ws(node).await;
        let reply = c
            .request(json!({"type": "subscribe", "subscription": durable}))
            .await;
        if reply["type"] == "subscribed" {
            return c;
        }
        assert_eq!(reply["code"], "invalid_subscription", "{reply}");
        let waited = since.elapsed();
        assert!(waited < within, "still held {waited:?} later: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let mut taker = take_durable(&b, &durable, Instant::now(), Duration::from_secs(5)).await;
    let mut got = cursors_of(&mut taker, unacked.len()).await;
    got.sort_unstable();
    assert_eq!(got, unacked, "exactly the unacknowledged events");
}

#[actix_rt::test]
async fn a_killed_nodes_durable_names_free_up_after_the_lease() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let durable =
        json!({"id": "d", "patterns": ["job.>"], "durable": "audit", "ack_timeout_ms": 60000});
    let mut holder = ws(&a).await;
    holder.subscribe(durable.clone()).await;
    let mut publisher = ws(&b).await;
    publish_batch(&mut publisher, "audit", 10).await;
    let unacked = ack_half(&mut holder, 10).await;
    // The acks reach Redis through a's store actor; give them a moment before the kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    kill9(&a);
    let within = Duration::from_millis(LEASE_MS + 1000);
    let mut taker = take_durable(&b, &durable, killed, within).await;
    let mut got = cursors_of(&mut taker, unacked.len()).await;
    got.sort_unstable();
    assert_eq!(got, unacked, "exactly the unacknowledged events");
    drop(holder);
}

#[actix_rt::test]
async fn dead_letters_are_shared_by_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut worker = ws(&a).await;
    worker
        .subscribe(json!({"id": "jobs", "patterns": ["job.>"], "ack": true}))
        .await;
    let mut publisher = ws(&b).await;
    publisher
        .publish(json!({"id": "bad-1", "topic": "job.fail"}))
        .await;
    publisher
        .publish(json!({"id": "bad-2", "topic": "job.fail"}))
        .await;
    for _ in 0..2 {
        let msg = worker.recv_event().await;
        let id = msg["event"]["id"].clone();
        worker
            .send(&json!({"type": "nack", "subscription_id": "jobs", "event_id": id, "requeue": false}))
            .await;
    }

    // Dead-lettered on a, listed, retried and deleted from b.
    let deadline = Instant::now() + Duration::from_secs(5);
    let letters = loop {
        let (status, list, _) = http("GET", &b, "/api/dead-letters", None).await;
        assert_eq!(status, 200, "{list}");
        if list.as_array().is_some_and(|l| l.len() == 2) {
            break list;
        }
        assert!(Instant::now() < deadline, "dead letters not shared: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: Vec<u64> = letters
        .as_array()
        .expect("a list")
        .iter()
        .map(|l| l["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(letters[0]["event"]["id"], "bad-1", "{letters}");
    let (status, retried, _) = http(
        "POST",
        &b,
        &format!("/api/dead-letters/{}/retry", ids[0]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(
        retried["retried"], "republished",
        "b does not hold the subscription: {retried}"
    );
    // The republished event reaches the subscriber on a.
    let again = worker.recv_event().await;
    assert_eq!(again["event"]["id"], "bad-1", "{again}");
    let (status, _, _) = http("DELETE", &b, &format!("/api/dead-letters/{}", ids[1]), None).await;
    assert_eq!(status, 204);
    let (_, list, _) = http("GET", &a, "/api/dead-letters", None).await;
    assert_eq!(list, json!([]), "gone for a too");
}

#[actix_rt::test]
async fn late_urgent_deliveries_on_one_node_slow_a_low_flood_published_on_another() {
    let redis = RedisServer::start();
    // A 1 µs target makes every urgent delivery late: b's are, and a, which delivers
    // nothing itself, must hear of them and throttle the low events published on it.
    let late = [("SWITCHYARD_LIMITS__URGENT_LATENCY_TARGET_US", "1")];
    let (a, b) = (node_with(&redis, "a", &late), node_with(&redis, "b", &late));
    let mut watcher = ws(&b).await;
    watcher.subscribe(json!({"patterns": ["job.>"]})).await;
    let mut urgent = ws(&b).await;
    let mut flood = ws(&a).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for round in 0.. {
        let low: Vec<Value> = (0..20)
            .map(|i| json!({"topic": "job.bulk", "priority": "low", "payload": {"i": i}}))
            .collect();
        flood
            .send(&json!({"type": "publish_batch", "events": low}))
            .await;
        urgent
            .send(&json!({"type": "publish_event", "event": {"topic": "job.alarm", "priority": "critical"}}))
            .await;
        // Keep the sockets drained; the replies and deliveries are not the point.
        while flood.try_recv(Duration::from_millis(1)).await.is_some() {}
        while urgent.try_recv(Duration::from_millis(1)).await.is_some() {}
        while watcher.try_recv(Duration::from_millis(5)).await.is_some() {}
        if round % 10 == 0 && low_admission_rate(&a).await > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a never throttled its low publishers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `switchyard_low_admission_rate` of a node: 0 while low events are not throttled.
async fn low_admission_rate(node: &SpawnedServer) -> u64 {
    common::metric(&metrics_text(node).await, "low_admission_rate").unwrap_or(0.0) as u64
}
