//! Cluster mode under faults: Redis killed, restarted, wiped or without AOF; a node
//! frozen past the log's retention; a log that lost its newest events. Real
//! `redis-server` and `switchyard` processes, over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{cursors_of, freeze, http, metrics_text, node, node_with, publish_batch, ws};
use common::redis::RedisServer;
use serde_json::json;

#[actix_rt::test]
async fn with_redis_down_publishes_are_refused_at_once_and_sessions_stay() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut watcher = ws(&b).await;
    watcher.subscribe(json!({"patterns": ["job.>"]})).await;
    let mut publisher = ws(&a).await;
    let mut acknowledged = Vec::new();
    for round in 0..20 {
        acknowledged.extend(publish_batch(&mut publisher, &format!("before{round}"), 100).await);
    }
    assert_eq!(acknowledged, (1..=2000).collect::<Vec<_>>());
    assert_eq!(cursors_of(&mut watcher, 2000).await, acknowledged);

    // kill -9 with AOF on (appendfsync always): nothing acknowledged may be lost.
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
    assert_eq!(cursor, 2001, "cursors continue after an AOF restart");
    assert_eq!(cursors_of(&mut watcher, 1).await, [2001]);
    let (_, stats, _) = http("GET", &b, "/api/stats", None).await;
    assert_eq!(
        stats["store"]["event_count"], 2001,
        "every acknowledged event survived: {stats}"
    );
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
    // A new log, not a regression of the old one: nothing was fenced into it.
    let metrics = metrics_text(&a).await;
    assert!(
        metrics.contains("switchyard_cluster_cursor_regressions_total 0"),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn a_node_that_fell_behind_retention_closes_its_sessions_instead_of_a_gap() {
    let redis = RedisServer::start();
    let retention = [("SWITCHYARD_STORE__MAX_EVENTS", "100")];
    let (a, b) = (
        node_with(&redis, "a", &retention),
        node_with(&redis, "b", &retention),
    );
    let mut watcher = ws(&b).await;
    watcher.subscribe(json!({"patterns": ["job.>"]})).await;
    let mut publisher = ws(&a).await;
    publish_batch(&mut publisher, "seen", 5).await;
    assert_eq!(cursors_of(&mut watcher, 5).await, [1, 2, 3, 4, 5]);

    // b stands still while a publishes far past the retention limit.
    freeze(&b, true);
    for round in 0..10 {
        publish_batch(&mut publisher, &format!("r{round}"), 100).await;
    }
    let (_, stats, _) = http("GET", &a, "/api/stats", None).await;
    let first = stats["store"]["first_cursor"]
        .as_u64()
        .expect("first cursor");
    assert!(first > 6, "retention trimmed past b's tail: {stats}");
    freeze(&b, false);

    // b notices the gap: its session is closed with a reason, not left with a hole.
    let mut got = Vec::new();
    let reason = loop {
        match watcher.try_recv_open(Duration::from_secs(10)).await {
            Ok(Some(msg)) if msg["type"] == "event" => {
                got.push(msg["event"]["cursor"].as_u64().expect("cursor"))
            }
            Ok(Some(msg)) => panic!("unexpected {msg}"),
            Ok(None) => panic!("b neither delivered nor closed"),
            Err(reason) => break reason,
        }
    };
    // What b had read before it froze may arrive first; never anything past the gap.
    let expected: Vec<u64> = (6..6 + got.len() as u64).collect();
    assert_eq!(got, expected, "only events before the gap, in order");
    let text = reason.and_then(|r| r.description).unwrap_or_default();
    assert!(
        text.contains("lagged") && text.contains("reconnect"),
        "{text}"
    );
    let text = metrics_text(&b).await;
    assert!(
        text.contains("switchyard_cluster_tail_lagged_total 1"),
        "{text}"
    );

    // A client that resumes by cursor gets everything still retained, in order.
    let mut resumed = ws(&b).await;
    resumed
        .subscribe(json!({"patterns": ["job.>"], "from_cursor": 5}))
        .await;
    let last = stats["store"]["last_cursor"].as_u64().expect("last cursor");
    let mut cursors = Vec::new();
    loop {
        let msg = resumed.recv().await;
        if msg["type"] == "replay_complete" {
            break;
        }
        cursors.push(msg["event"]["cursor"].as_u64().expect("cursor"));
    }
    assert_eq!(
        cursors.last().copied(),
        Some(last),
        "up to the end of the log"
    );
    assert!(
        cursors.windows(2).all(|w| w[1] == w[0] + 1),
        "no hole in what is retained"
    );
}

#[actix_rt::test]
async fn a_log_that_lost_its_newest_events_never_hands_their_cursors_out_again() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let mut watcher = ws(&a).await;
    watcher.subscribe(json!({"patterns": ["job.>"]})).await;
    let mut publisher = ws(&a).await;
    publish_batch(&mut publisher, "kept", 10).await;
    publish_batch(&mut publisher, "lost", 10).await;
    assert_eq!(cursors_of(&mut watcher, 20).await.last(), Some(&20));

    // What a failover to a replica that missed the last write (the second batch, one
    // entry of the log) leaves behind.
    let mut conn = redis.connection();
    let events = "sy:{log}:events";
    redis::cmd("XDEL")
        .arg(events)
        .arg("20-0")
        .query::<()>(&mut conn)
        .expect("XDEL");
    redis::cmd("XSETID")
        .arg(events)
        .arg("10-0")
        .query::<()>(&mut conn)
        .expect("XSETID");
    redis::cmd("SET")
        .arg("sy:{log}:seq")
        .arg(10)
        .query::<()>(&mut conn)
        .expect("SET seq");

    // The node saw 20: once it has looked at the log's head, numbering goes on above it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(&a).await;
        if text.contains("switchyard_cluster_cursor_regressions_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "regression not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = publisher.publish(json!({"topic": "job.after"})).await;
    assert_eq!(reply["cursor"], 21, "{reply}");
    let delivered = cursors_of(&mut watcher, 1).await;
    assert_eq!(delivered, [21]);
}

#[actix_rt::test]
async fn a_redis_that_stops_answering_gets_publishes_refused_after_the_timeout_not_hung() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let mut publisher = ws(&a).await;
    publish_batch(&mut publisher, "before", 3).await;

    redis.freeze(true);
    // cluster.command_timeout_ms is 1000 here: the answer comes within the client's
    // 5 s receive timeout, as an error, and the connection stays usable.
    let reply = publisher
        .request(json!({"type": "publish_event", "event": {"id": "frozen-1", "topic": "job.x"}}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    publisher.assert_alive().await;

    redis.freeze(false);
    // The outcome of the timed-out call was unknown: a retry settles it, stored once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let reply = publisher
            .request(
                json!({"type": "publish_event", "event": {"id": "frozen-1", "topic": "job.x"}}),
            )
            .await;
        if reply["type"] == "published" {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "Redis answers again, publishes still refused: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cursor = reply["cursor"].as_u64().expect("cursor");
    assert_eq!(cursor, 4, "{reply}");
    let (_, stats, _) = http("GET", &a, "/api/stats", None).await;
    assert_eq!(stats["store"]["event_count"], 4, "stored once: {stats}");
}
