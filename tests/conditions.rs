//! Conditional (CEL) subscriptions and coalescing over real sockets (docs/protocol.md
//! sections 4.4 and 4.5).

mod common;

use std::time::Duration;

use common::{TestServer, WsClient};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(200);

/// Publishes `events` in order, each with its `n` in the payload, and returns the `n`
/// of every event `sub` then receives (until it goes quiet).
async fn delivered_ns(sub: &mut WsClient, publisher: &mut WsClient, events: &[Value]) -> Vec<i64> {
    for (n, event) in events.iter().enumerate() {
        let mut event = event.clone();
        if event["payload"].is_null() {
            event["payload"] = json!({});
        }
        event["payload"]["n"] = json!(n);
        publisher.publish(event).await;
    }
    // A marker every subscription in these tests matches ends the sequence.
    publisher
        .publish(json!({"type": "end_marker", "payload": {"n": -1, "end": true}}))
        .await;
    let mut got = Vec::new();
    loop {
        let e = sub.recv_event().await;
        let n = e["event"]["payload"]["n"].as_i64().expect("n");
        if n == -1 {
            break;
        }
        got.push(n);
    }
    sub.expect_silence(QUIET).await;
    got
}

fn sample_events() -> Vec<Value> {
    vec![
        // 0: nested payload, list membership
        json!({"type": "task_created", "source": "planner",
               "payload": {"task": {"owner": "team-a", "labels": ["gpu", "urgent"]}}}),
        // 1: cost over the threshold (an integer against a double)
        json!({"type": "cost_update", "payload": {"total_cost": 7}}),
        // 2: cost under the threshold
        json!({"type": "cost_update", "payload": {"total_cost": 2.5}}),
        // 3: critical, no payload fields at all
        json!({"type": "agent_failed", "priority": "critical", "agent_id": "agent-17"}),
        // 4: a string where a number is expected: evaluation error, no match
        json!({"type": "cost_update", "payload": {"total_cost": "lots"}}),
        // 5: target set, agent id matching a regular expression
        json!({"type": "task_assigned", "target": "worker-3", "agent_id": "agent-9"}),
    ]
}

#[actix_rt::test]
async fn conditions_select_by_fields_nested_payload_strings_lists_and_in() {
    let server = TestServer::start().await;
    let mut publisher = server.ws().await;
    let end = r#" || (has(payload.end) && payload.end == true)"#;
    let table: Vec<(&str, Vec<i64>)> = vec![
        (
            r#"priority == "critical" || (topic.startsWith("cost.") && payload.total_cost > 5.0)"#,
            vec![1, 3],
        ),
        (r#""gpu" in payload.task.labels"#, vec![0]),
        // Narrowed through the index by its topic prefix, then evaluated.
        (
            r#"topic.startsWith("cost.") && payload.total_cost > 2.0"#,
            vec![1, 2],
        ),
        (
            r#"event.topic in ["agent.failed", "task.assigned"]"#,
            vec![3, 5],
        ),
        (
            r#"payload.task.owner.endsWith("-a") && source == "planner""#,
            vec![0],
        ),
        (
            r#"event.type in ["agent_failed", "task_assigned"]"#,
            vec![3, 5],
        ),
        (
            r#"agent_id != null && agent_id.matches("^agent-[0-9]+$")"#,
            vec![3, 5],
        ),
        (r#"target == "worker-3""#, vec![5]),
        (
            r#"payload.task.labels.exists(l, l.upperAscii() == "URGENT")"#,
            vec![0],
        ),
        (
            r#"size(topic.split(".")) == 2 && topic.contains("assign")"#,
            vec![5],
        ),
        // Referencing a field most events lack: those events simply do not match.
        (r#"payload.total_cost < 3"#, vec![2]),
    ];
    for (condition, want) in table {
        let mut sub = server.ws().await;
        let full = format!("({condition}){end}");
        sub.subscribe(json!({"type": "conditional", "condition": full}))
            .await;
        let got = delivered_ns(&mut sub, &mut publisher, &sample_events()).await;
        assert_eq!(got, want, "condition {condition}");
    }
    server.stop().await;
}

#[actix_rt::test]
async fn conditions_narrowed_by_topic_in_the_expression() {
    // No `|| end` here: these conditions are filed under their topic prefix in the
    // index, and must still see every event they match.
    let server = TestServer::start().await;
    let mut publisher = server.ws().await;
    let mut cost = server.ws().await;
    cost.subscribe(
        json!({"condition": r#"topic.startsWith("cost.") && payload.total_cost > 2.0"#}),
    )
    .await;
    let mut named = server.ws().await;
    named
        .subscribe(json!({"condition": r#"event.topic in ["agent.failed", "task.assigned"]"#}))
        .await;
    for event in sample_events() {
        publisher.publish(event).await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(cost.recv_event().await["event"]["payload"]["total_cost"].clone());
    }
    assert_eq!(got, [json!(7), json!(2.5)]);
    assert_eq!(named.recv_event().await["event"]["topic"], "agent.failed");
    assert_eq!(named.recv_event().await["event"]["topic"], "task.assigned");
    cost.expect_silence(QUIET).await;
    named.expect_silence(QUIET).await;
    server.stop().await;
}

#[actix_rt::test]
async fn condition_combines_with_patterns_and_filter() {
    let server = TestServer::start().await;
    let mut publisher = server.ws().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({
        "type": "conditional",
        "condition": "payload.n % 2 == 0 || has(payload.end)",
        "patterns": ["task.*", "end.*"],
        "filter": {"priorities": ["normal", "high"]},
    }))
    .await;
    let events = vec![
        json!({"type": "task_a"}),                     // 0 even, task, normal: yes
        json!({"type": "task_b"}),                     // 1 odd: no
        json!({"type": "agent_a"}),                    // 2 even, wrong topic: no
        json!({"type": "task_c", "priority": "low"}),  // 3 odd: no
        json!({"type": "task_d", "priority": "low"}),  // 4 even, low: filtered out
        json!({"type": "task_e", "priority": "high"}), // 5 odd: no
        json!({"type": "task_f", "priority": "high"}), // 6 even, high: yes
    ];
    assert_eq!(
        delivered_ns(&mut sub, &mut publisher, &events).await,
        vec![0, 6]
    );
    server.stop().await;
}

#[actix_rt::test]
async fn bad_conditions_answer_invalid_condition_with_the_position() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    for (condition, request_id) in [
        ("priority == ", 1),
        ("topic.startsWith(\"a\"", 2),
        ("payload.x >> 3", 3),
        ("", 4),
    ] {
        let reply = c
            .request(json!({"type": "subscribe", "request_id": request_id,
                            "subscription": {"type": "conditional", "condition": condition}}))
            .await;
        assert_eq!(reply["type"], "error", "{condition}: {reply}");
        assert_eq!(reply["code"], "invalid_condition", "{condition}: {reply}");
        assert_eq!(reply["request_id"], request_id);
        let message = reply["message"].as_str().unwrap();
        if !condition.is_empty() {
            assert!(message.contains("line 1, column"), "{message}");
        }
    }
    // A loop inside a loop is refused before it ever runs on the router.
    let reply = c
        .request(
            json!({"type": "subscribe", "request_id": 5, "subscription": {
            "type": "conditional",
            "condition": "payload.items.all(a, payload.items.exists(b, a == b))"}}),
        )
        .await;
    assert_eq!(reply["code"], "invalid_condition", "{reply}");
    assert_eq!(reply["request_id"], 5);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("loop inside a loop"),
        "{reply}"
    );
    // `conditional` without a condition is a subscription error, not a condition one.
    let reply = c
        .request(json!({"type": "subscribe", "subscription": {"type": "conditional"}}))
        .await;
    assert_eq!(reply["code"], "invalid_subscription");
    // Nothing was subscribed, and the connection still works.
    c.assert_alive().await;
    let (_, subs) = server.get("/api/subscriptions").await;
    let total: usize = subs["connections"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["subscriptions"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(total, 0, "{subs}");
    server.stop().await;
}

#[actix_rt::test]
async fn evaluation_errors_are_counted_and_never_close_anything() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let id = sub
        .subscribe(json!({"condition": "payload.level > 3"}))
        .await;
    let mut publisher = server.ws().await;
    publisher
        .publish(json!({"type": "log_line", "payload": {"level": "high"}}))
        .await;
    publisher
        .publish(json!({"type": "log_line", "payload": {}}))
        .await;
    publisher
        .publish(json!({"type": "log_line", "payload": [1, 2]}))
        .await;
    publisher
        .publish(json!({"type": "log_line", "payload": {"level": 5}}))
        .await;
    assert_eq!(sub.recv_event().await["event"]["payload"]["level"], 5);
    sub.expect_silence(QUIET).await;
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["condition_errors"], 3, "{stats}");
    let row = subscription_row(&server, &id).await;
    assert_eq!(row["kind"], "conditional");
    assert_eq!(row["condition"], "payload.level > 3");
    assert_eq!(row["condition_errors"], 3);
    assert_eq!(row["delivered"], 1);
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("switchyard_condition_errors_total 3"),
        "{metrics}"
    );
    sub.assert_alive().await;
    server.stop().await;
}

#[actix_rt::test]
async fn conditions_apply_to_replay_too() {
    let server = TestServer::start().await;
    let mut publisher = server.ws().await;
    for n in 0..6 {
        publisher
            .publish(json!({"type": "job_done", "payload": {"n": n}}))
            .await;
    }
    let mut sub = server.ws().await;
    let id = sub
        .subscribe(json!({"condition": "payload.n >= 4", "from_cursor": 0}))
        .await;
    assert_eq!(sub.recv_event().await["event"]["payload"]["n"], 4);
    assert_eq!(sub.recv_event().await["event"]["payload"]["n"], 5);
    let done = sub.recv().await;
    assert_eq!(done["type"], "replay_complete", "{done}");
    assert_eq!(done["subscription_id"], id.as_str());
    server.stop().await;
}

/// Twenty rapid updates of one task: the first goes out at once, the latest follows
/// when the window ends, the rest are counted as coalesced.
async fn rapid_updates(ack: bool) {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let mut spec = json!({"type": "pattern", "patterns": ["task.>"],
                          "coalesce": {"key": "payload.task_id", "window_ms": 300}});
    if ack {
        spec["ack"] = json!(true);
    }
    let id = sub.subscribe(spec).await;
    let mut publisher = server.ws().await;
    let batch: Vec<Value> = (1..=20)
        .map(|n| json!({"type": "task_progress", "payload": {"task_id": "t1", "percent": n * 5}}))
        .chain(std::iter::once(
            json!({"type": "task_progress", "payload": {"task_id": "t2", "percent": 1}}),
        ))
        .collect();
    let reply = publisher
        .request(json!({"type": "publish_batch", "events": batch}))
        .await;
    assert_eq!(reply["type"], "published_batch", "{reply}");

    let mut got: Vec<(String, i64)> = Vec::new();
    while let Some(msg) = sub.try_recv(Duration::from_millis(1500)).await {
        assert_eq!(msg["type"], "event", "{msg}");
        let e = &msg["event"];
        if ack {
            sub.send(&json!({"type": "ack", "subscription_id": id, "event_id": e["id"]}))
                .await;
        }
        got.push((
            e["payload"]["task_id"].as_str().unwrap().to_owned(),
            e["payload"]["percent"].as_i64().unwrap(),
        ));
    }
    let t1: Vec<i64> = got
        .iter()
        .filter(|(t, _)| t == "t1")
        .map(|(_, p)| *p)
        .collect();
    let t2: Vec<i64> = got
        .iter()
        .filter(|(t, _)| t == "t2")
        .map(|(_, p)| *p)
        .collect();
    assert!(
        (1..=2).contains(&t1.len()),
        "one or two deliveries of t1, got {t1:?}"
    );
    assert_eq!(
        t1.last(),
        Some(&100),
        "the latest update is delivered: {t1:?}"
    );
    assert_eq!(t2, [1], "another key is not held back by t1");
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(
        stats["events"]["coalesced"].as_u64(),
        Some(20 - t1.len() as u64),
        "{stats}"
    );
    if ack {
        // Nothing is left unacknowledged or dead-lettered: replaced events are resolved.
        let (_, dead) = server.get("/api/dead-letters").await;
        assert_eq!(dead.as_array().map(Vec::len), Some(0), "{dead}");
    }
    server.stop().await;
}

#[actix_rt::test]
async fn coalescing_delivers_the_latest_per_key() {
    rapid_updates(false).await;
}

#[actix_rt::test]
async fn coalescing_works_with_acks() {
    rapid_updates(true).await;
}

#[actix_rt::test]
async fn events_without_the_key_are_not_coalesced_and_bad_specs_are_refused() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"coalesce": {"key": "payload.task_id", "window_ms": 1000}}))
        .await;
    let mut publisher = server.ws().await;
    for n in 0..5 {
        publisher
            .publish(json!({"type": "heartbeat", "payload": {"n": n}}))
            .await;
    }
    for n in 0..5 {
        assert_eq!(sub.recv_event().await["event"]["payload"]["n"], n);
    }
    for bad in [
        json!({"coalesce": {"key": "", "window_ms": 10}}),
        json!({"coalesce": {"key": "payload.x", "window_ms": 0}}),
        json!({"coalesce": {"key": "payload.x", "every": 10}}),
        json!({"coalesce": "payload.x"}),
    ] {
        let reply = sub
            .request(json!({"type": "subscribe", "subscription": bad}))
            .await;
        assert_eq!(reply["code"], "invalid_subscription", "{bad}: {reply}");
    }
    server.stop().await;
}

/// A string function of a condition builds at most 1 MiB (docs/limits.md): a
/// `replace` that would turn a 512 KiB payload string into 2 GB is an evaluation error
/// (no match, counted), refused before anything is built, and the server stays
/// healthy for a bystander.
#[actix_rt::test]
async fn string_functions_cannot_grow_a_payload_without_bound() {
    let server = TestServer::start().await;
    let long = "x".repeat(4000);
    let condition = format!(r#"payload.s.replace("", "{long}").size() > 0"#);
    let mut greedy = server.ws().await;
    let id = greedy.subscribe(json!({"condition": condition})).await;
    let mut bystander = server.ws().await;
    bystander.subscribe(json!({"pattern": "big.>"})).await;
    let mut publisher = server.ws().await;
    let s = "a".repeat(512 << 10);
    for n in 0..2 {
        publisher
            .publish(json!({"type": "big_text", "topic": "big.text", "payload": {"n": n, "s": s}}))
            .await;
    }
    for n in 0..2 {
        let got = bystander.recv_event().await;
        assert_eq!(got["event"]["payload"]["n"], n);
    }
    greedy.expect_silence(QUIET).await;
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["condition_errors"], 2, "{stats}");
    let row = subscription_row(&server, &id).await;
    assert_eq!(row["condition_errors"], 2, "{row}");
    // The same condition on a string short enough to fit still matches.
    publisher
        .publish(json!({"type": "big_text", "topic": "big.text", "payload": {"n": 2, "s": "ab"}}))
        .await;
    assert_eq!(greedy.recv_event().await["event"]["payload"]["n"], 2);
    assert_eq!(bystander.recv_event().await["event"]["payload"]["n"], 2);
    greedy.assert_alive().await;
    bystander.assert_alive().await;
    server.stop().await;
}

/// The `/api/subscriptions` row of subscription `id`.
async fn subscription_row(server: &TestServer, id: &str) -> Value {
    let (_, subs) = server.get("/api/subscriptions").await;
    subs["connections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["subscriptions"].as_array().unwrap().iter())
        .find(|s| s["subscription_id"] == id)
        .expect("subscription listed")
        .clone()
}
