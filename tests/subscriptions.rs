//! Subscription kinds, filters, patterns, connect-time subscriptions, priority order,
//! slow consumers and concurrent subscribers (docs/protocol.md sections 1.2, 4 and 5).

mod common;

use std::time::Duration;

use common::{TestServer, WsClient};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(150);

/// Receives exactly `n` events and returns `field` of each envelope; then asserts that
/// nothing else arrives.
async fn receive_field(sub: &mut WsClient, n: usize, field: &str) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(sub.recv_event().await["event"][field].clone());
    }
    sub.expect_silence(QUIET).await;
    got
}

fn strings(v: &[&str]) -> Vec<Value> {
    v.iter().map(|s| json!(s)).collect()
}

#[actix_rt::test]
async fn pattern_subscriptions_follow_the_pattern_rules() {
    let server = TestServer::start().await;
    let published = [
        "task.created",
        "task.created.retry",
        "agent.failed",
        "task",
        "logs.error",
    ];
    let table: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"type": "pattern", "patterns": ["task.*"]}),
            vec!["task.created"],
        ),
        (
            json!({"type": "pattern", "patterns": ["task.>"]}),
            vec!["task.created", "task.created.retry"],
        ),
        (
            json!({"type": "pattern", "patterns": ["task.#"]}),
            vec!["task.created", "task.created.retry"],
        ),
        (
            json!({"type": "pattern", "patterns": [">"]}),
            published.to_vec(),
        ),
        (
            json!({"type": "pattern", "patterns": ["#"]}),
            published.to_vec(),
        ),
        (
            json!({"type": "pattern", "patterns": ["*.failed", "logs.>"]}),
            vec!["agent.failed", "logs.error"],
        ),
        (
            json!({"type": "pattern", "patterns": ["task"]}),
            vec!["task"],
        ),
        (json!({"type": "pattern", "pattern": "*"}), vec!["task"]),
        (
            json!({"type": "PATTERN", "patterns": ["*.created.*"]}),
            vec!["task.created.retry"],
        ),
    ];
    let mut subs = Vec::new();
    for (spec, _) in &table {
        let mut c = server.ws().await;
        c.subscribe(spec.clone()).await;
        subs.push(c);
    }
    let mut p = server.ws().await;
    for topic in published {
        p.publish(json!({"topic": topic})).await;
    }
    for ((spec, want), sub) in table.into_iter().zip(subs.iter_mut()) {
        assert_eq!(
            receive_field(sub, want.len(), "topic").await,
            strings(&want),
            "{spec}"
        );
    }
}

#[actix_rt::test]
async fn subscribe_alias_with_topics_list_is_a_pattern_subscription() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let reply = sub
        .request(json!({"action": "subscribe", "topics": ["agent.*"]}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let mut p = server.ws().await;
    p.publish(json!({"topic": "task.created"})).await;
    p.publish(json!({"topic": "agent.started"})).await;
    assert_eq!(
        receive_field(&mut sub, 1, "topic").await,
        strings(&["agent.started"])
    );
}

#[actix_rt::test]
async fn filtered_subscriptions_match_every_filter_field() {
    let server = TestServer::start().await;
    let events = [
        json!({"type": "task_created", "priority": "low", "source": "planner", "target": "w1", "agent_id": "a1", "task_id": "t1"}),
        json!({"type": "task_failed", "priority": "high", "source": "worker", "target": "w2", "agent_id": "a2", "task_id": "t2"}),
        json!({"type": "agent_started", "priority": "critical", "source": "planner", "payload": {"agent_id": "a1"}}),
        json!({"type": "cost_update", "priority": "normal", "source": "billing", "task_id": "t1"}),
    ];
    let table: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"event_types": ["task_failed", "cost_update"]}),
            vec!["task_failed", "cost_update"],
        ),
        (
            json!({"topics": ["task.*"]}),
            vec!["task_created", "task_failed"],
        ),
        (
            json!({"sources": ["planner"]}),
            vec!["task_created", "agent_started"],
        ),
        (json!({"targets": ["w2"]}), vec!["task_failed"]),
        (
            json!({"priorities": ["critical", "low"]}),
            vec!["task_created", "agent_started"],
        ),
        (
            json!({"min_priority": "high"}),
            vec!["task_failed", "agent_started"],
        ),
        (
            json!({"agent_ids": ["a1"]}),
            vec!["task_created", "agent_started"],
        ),
        (
            json!({"task_ids": ["t1"]}),
            vec!["task_created", "cost_update"],
        ),
        (
            json!({"sources": ["planner"], "min_priority": "critical"}),
            vec!["agent_started"],
        ),
        (
            json!({"event_types": []}),
            vec![
                "task_created",
                "task_failed",
                "agent_started",
                "cost_update",
            ],
        ),
    ];
    let mut subs = Vec::new();
    for (filter, _) in &table {
        let mut c = server.ws().await;
        c.subscribe(json!({"type": "filtered", "filter": filter}))
            .await;
        subs.push(c);
    }
    // Published one at a time so that priority ordering does not reorder them.
    let mut p = server.ws().await;
    for e in events {
        p.publish(e).await;
    }
    for ((filter, want), sub) in table.into_iter().zip(subs.iter_mut()) {
        let mut got = receive_field(sub, want.len(), "type").await;
        let mut want = strings(&want);
        // Events published back to back may be routed highest priority first.
        let key = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want, "filter {filter}");
    }
}

#[actix_rt::test]
async fn patterns_and_filter_combine_on_one_subscription() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(
        json!({"type": "pattern", "patterns": ["task.>"], "filter": {"min_priority": "high"}}),
    )
    .await;
    let mut p = server.ws().await;
    p.publish(json!({"topic": "task.created", "priority": "low"}))
        .await;
    p.publish(json!({"topic": "agent.failed", "priority": "critical"}))
        .await;
    p.publish(json!({"topic": "task.failed", "priority": "critical"}))
        .await;
    assert_eq!(
        receive_field(&mut sub, 1, "topic").await,
        strings(&["task.failed"])
    );
}

#[actix_rt::test]
async fn all_subscription_and_client_chosen_ids() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let id = sub.subscribe(json!({"type": "all", "id": "mine"})).await;
    assert_eq!(id, "mine");
    let reply = sub
        .request(json!({"type": "subscribe", "subscription": {"type": "all", "id": "mine"}}))
        .await;
    assert_eq!(
        reply["code"], "invalid_subscription",
        "duplicate id is refused: {reply}"
    );
    let mut p = server.ws().await;
    p.publish(json!({"type": "anything_goes"})).await;
    let msg = sub.recv_event().await;
    assert_eq!(msg["subscription_id"], "mine");
}

#[actix_rt::test]
async fn one_event_matching_two_subscriptions_is_delivered_to_each() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all", "id": "a"})).await;
    sub.subscribe(json!({"type": "pattern", "id": "b", "patterns": ["task.*"]}))
        .await;
    let mut p = server.ws().await;
    p.publish(json!({"type": "task_created"})).await;
    let mut ids = vec![
        sub.recv_event().await["subscription_id"].clone(),
        sub.recv_event().await["subscription_id"].clone(),
    ];
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, [json!("a"), json!("b")]);
}

#[actix_rt::test]
async fn unsubscribe_stops_deliveries() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub.subscribe(json!({"type": "all"})).await;
    let mut p = server.ws().await;
    p.publish(json!({"type": "one_event"})).await;
    sub.recv_event().await;
    let reply = sub
        .request(json!({"type": "unsubscribe", "subscription_id": sid, "request_id": 3}))
        .await;
    assert_eq!(
        reply,
        json!({"type": "unsubscribed", "subscription_id": sid, "request_id": 3})
    );
    p.publish(json!({"type": "two_event"})).await;
    sub.expect_silence(QUIET).await;
    let reply = sub
        .request(json!({"type": "unsubscribe", "subscription_id": sid}))
        .await;
    assert_eq!(reply["code"], "unknown_subscription");
    // The id can be used again.
    let again = sub.subscribe(json!({"type": "all", "id": sid})).await;
    assert_eq!(again, sid);
}

#[actix_rt::test]
async fn connect_time_subscription_via_query_parameters() {
    let server = TestServer::start().await;
    let mut by_topics = WsClient::connect(&server.ws_url("/ws?topics=task.*,agent.%3E")).await;
    let mut by_kinds = WsClient::connect(&server.ws_url("/?kinds=logs.error")).await;
    let mut by_agent = WsClient::connect(&server.ws_url("/ws?topics=task.*&agent_id=a1")).await;
    let mut by_task = WsClient::connect(&server.ws_url("/ws?topics=%3E&task_id=t7")).await;
    for c in [&mut by_topics, &mut by_kinds, &mut by_agent, &mut by_task] {
        let first = c.recv().await;
        assert_eq!(first["type"], "subscribed", "{first}");
        assert!(first["subscription_id"].as_str().is_some());
    }
    let mut p = server.ws().await;
    p.publish(json!({"topic": "task.created", "agent_id": "a1"}))
        .await;
    p.publish(json!({"topic": "agent.started.now", "agent_id": "a2"}))
        .await;
    p.publish(json!({"topic": "logs.error", "payload": {"task_id": "t7"}}))
        .await;
    p.publish(json!({"topic": "task.created", "agent_id": "a2"}))
        .await;
    let mut got = receive_field(&mut by_topics, 3, "topic").await;
    got.sort_by_key(|v| v.to_string());
    assert_eq!(
        got,
        strings(&["agent.started.now", "task.created", "task.created"])
    );
    assert_eq!(
        receive_field(&mut by_kinds, 1, "topic").await,
        strings(&["logs.error"])
    );
    assert_eq!(
        receive_field(&mut by_agent, 1, "agent_id").await,
        strings(&["a1"])
    );
    assert_eq!(
        receive_field(&mut by_task, 1, "topic").await,
        strings(&["logs.error"])
    );
}

#[actix_rt::test]
async fn bad_connect_time_pattern_is_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    let status = WsClient::try_connect(&server.ws_url("/ws?topics=task..x"))
        .await
        .err();
    assert_eq!(status, Some(400));
}

#[actix_rt::test]
async fn batch_is_routed_highest_priority_first() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all"})).await;
    let mut p = server.ws().await;
    let reply = p
        .request(json!({"type": "publish_batch", "events": [
            {"type": "a_1", "priority": "low"},
            {"type": "a_2", "priority": "low"},
            {"type": "a_3", "priority": "normal"},
            {"type": "a_4", "priority": "critical"},
            {"type": "a_5", "priority": "high"},
        ]}))
        .await;
    assert_eq!(reply["type"], "published_batch");
    assert_eq!(
        receive_field(&mut sub, 5, "type").await,
        strings(&["a_4", "a_5", "a_3", "a_1", "a_2"])
    );
}

/// A subscriber that stops reading is bounded: the lowest-priority, oldest events are
/// dropped first, it is told how many, every critical event survives, and another
/// subscriber on the same events loses nothing.
#[actix_rt::test]
async fn slow_consumer_drops_lowest_priority_oldest_first_and_others_are_unaffected() {
    const WAITING: usize = 50;
    let server = TestServer::with(|c| c.limits.max_waiting_per_subscriber = WAITING).await;
    let mut slow = server.ws().await;
    slow.subscribe(json!({"type": "all", "id": "slow"})).await;
    let mut fast = server.ws().await;
    fast.subscribe(json!({"type": "pattern", "id": "fast", "patterns": ["load.critical"]}))
        .await;

    // Enough low-priority bytes to fill the socket buffers of the stalled reader.
    let blob = "x".repeat(16 * 1024);
    let mut p = server.ws().await;
    let total_low = 1500;
    let mut criticals = 0;
    for i in 0..total_low {
        let mut batch = vec![
            json!({"topic": "load.low", "priority": "low", "payload": {"i": i, "blob": blob}}),
        ];
        if i % 100 == 99 {
            batch.push(
                json!({"topic": "load.critical", "priority": "critical", "payload": {"i": i}}),
            );
            criticals += 1;
        }
        let reply = p
            .request(json!({"type": "publish_batch", "events": batch}))
            .await;
        assert_eq!(reply["type"], "published_batch");
    }
    // The fast subscriber got every critical event while the slow one was stalled.
    for _ in 0..criticals {
        assert_eq!(fast.recv_event().await["event"]["priority"], "critical");
    }

    // Now the slow subscriber reads everything it was left with.
    let (mut low, mut critical, mut dropped) = (0u64, 0u64, 0u64);
    while low + critical + dropped < (total_low + criticals) as u64 {
        let msg = slow.recv().await;
        match msg["type"].as_str() {
            Some("event") if msg["event"]["priority"] == "critical" => critical += 1,
            Some("event") => low += 1,
            Some("dropped") => {
                assert_eq!(msg["subscription_id"], "slow");
                assert_eq!(msg["reason"], "slow_consumer");
                dropped += msg["count"].as_u64().unwrap();
            }
            _ => panic!("unexpected {msg}"),
        }
    }
    assert!(dropped > 0, "a stalled reader must have lost something");
    assert_eq!(
        critical, criticals as u64,
        "critical events outrank the lows and survive"
    );
    assert_eq!(low + dropped, total_low as u64);
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["dropped"]["low"].as_u64(), Some(dropped));
    assert_eq!(stats["events"]["dropped"]["critical"], 0);
}

#[actix_rt::test]
async fn many_concurrent_subscribers_each_get_every_event_in_order() {
    let server = TestServer::start().await;
    let mut subs = Vec::new();
    for _ in 0..20 {
        let mut c = server.ws().await;
        c.subscribe(json!({"type": "pattern", "patterns": ["work.>"]}))
            .await;
        subs.push(c);
    }
    let mut publishers = Vec::new();
    for _ in 0..2 {
        publishers.push(server.ws().await);
    }
    let n = 200;
    let mut futures = Vec::new();
    for (pi, mut p) in publishers.into_iter().enumerate() {
        futures.push(actix_rt::spawn(async move {
            for i in 0..n {
                p.publish(json!({"topic": format!("work.p{pi}"), "payload": {"i": i}}))
                    .await;
            }
        }));
    }
    for f in futures {
        f.await.unwrap();
    }
    for sub in subs.iter_mut() {
        let mut next = [0u64; 2];
        let mut last_cursor = 0;
        for _ in 0..(2 * n) {
            let e = sub.recv_event().await["event"].clone();
            let pi = if e["topic"] == "work.p0" { 0 } else { 1 };
            assert_eq!(
                e["payload"]["i"].as_u64(),
                Some(next[pi]),
                "per-publisher order"
            );
            next[pi] += 1;
            let cursor = e["cursor"].as_u64().unwrap();
            assert!(
                cursor > last_cursor,
                "same-priority events arrive in cursor order"
            );
            last_cursor = cursor;
        }
    }
}

/// A subscriber handed far more than one write turn at once (a batch of 400 events of
/// ~1.3 KB: a delivery worker hands them over 256 at a time, and a session queues ~128
/// KB per turn) gets every one, in cursor order, each once.
#[actix_rt::test]
async fn a_burst_larger_than_a_write_turn_arrives_whole_and_in_order() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "pattern", "patterns": ["burst.>"]}))
        .await;
    let mut publisher = server.ws().await;
    let n = 400;
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"topic": "burst.a", "payload": {"i": i, "pad": "x".repeat(1000)}}))
        .collect();
    let reply = publisher
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    assert_eq!(reply["type"], "published_batch", "{reply}");
    let mut last_cursor = 0;
    for i in 0..n {
        let e = sub.recv_event().await["event"].clone();
        assert_eq!(e["payload"]["i"].as_u64(), Some(i), "publish order");
        let cursor = e["cursor"].as_u64().unwrap();
        assert!(cursor > last_cursor, "cursor order");
        last_cursor = cursor;
    }
    sub.expect_silence(Duration::from_millis(200)).await;
}

/// Connections that were delivered to and then closed leave nothing behind in the
/// delivery workers: a router with connections coming and going does not grow.
#[actix_rt::test]
async fn closed_connections_leave_no_delivery_state_behind() {
    let server = TestServer::start().await;
    let mut subscribers = Vec::new();
    for _ in 0..10 {
        let mut c = server.ws().await;
        c.subscribe(json!({"type": "pattern", "patterns": ["churn.>"]}))
            .await;
        subscribers.push(c);
    }
    let mut publisher = server.ws().await;
    publisher.publish(json!({"topic": "churn.one"})).await;
    for c in &mut subscribers {
        assert_eq!(c.recv_event().await["event"]["topic"], "churn.one");
    }
    assert_eq!(server.metric("delivery_sessions").await, 10.0);
    drop(subscribers);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metric("delivery_sessions").await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} closed connections still held",
            server.metric("delivery_sessions").await
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // The publisher, never delivered to, was never held; it still publishes.
    assert_eq!(
        publisher.publish(json!({"topic": "churn.two"})).await["type"],
        "published"
    );
}
