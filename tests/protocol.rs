//! Commands, aliases and error replies of docs/protocol.md sections 2, 3 and 7, over
//! a real socket with the literal frames of the contract.

mod common;

use std::time::Duration;

use awc::ws;
use common::{TestServer, WsClient};
use serde_json::{json, Value};

#[actix_rt::test]
async fn ping_answers_pong_with_server_time_and_echoes_request_id() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let reply = c.request(json!({"type": "ping"})).await;
    assert_eq!(reply["type"], "pong");
    let t = reply["server_time"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
    assert!(reply.get("request_id").is_none());

    let reply = c
        .request(json!({"type": "ping", "request_id": "r-1"}))
        .await;
    assert_eq!(reply["request_id"], "r-1");
    let reply = c.request(json!({"type": "ping", "request_id": 42})).await;
    assert_eq!(reply["request_id"], 42);
}

#[actix_rt::test]
async fn publish_event_and_its_aliases_answer_published_with_increasing_cursors() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let mut last = 0;
    for frame in [
        json!({"type": "publish_event", "event": {"type": "task_created"}, "request_id": 1}),
        json!({"type": "publish", "event": {"type": "task_created"}, "request_id": 2}),
        json!({"action": "publish", "event": {"topic": "task.created"}, "request_id": 3}),
    ] {
        let reply = c.request(frame.clone()).await;
        assert_eq!(reply["type"], "published", "{frame} → {reply}");
        assert_eq!(reply["duplicate"], false);
        assert_eq!(reply["request_id"], frame["request_id"]);
        assert!(uuid::Uuid::parse_str(reply["event_id"].as_str().unwrap()).is_ok());
        let cursor = reply["cursor"].as_u64().unwrap();
        assert!(cursor > last, "cursor {cursor} after {last}");
        last = cursor;
    }
}

#[actix_rt::test]
async fn repeated_id_is_acknowledged_as_duplicate_and_not_routed_again() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all"})).await;
    let mut c = server.ws().await;
    let first = c
        .publish(json!({"id": "evt-1", "type": "task_created"}))
        .await;
    let again = c
        .publish(json!({"id": "evt-1", "type": "task_created"}))
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["cursor"], first["cursor"]);
    assert_eq!(again["event_id"], "evt-1");
    let delivered = sub.recv_event().await;
    assert_eq!(delivered["event"]["id"], "evt-1");
    sub.expect_silence(Duration::from_millis(200)).await;
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["duplicates"], 1);
    assert_eq!(stats["events"]["published"]["total"], 1);
}

#[actix_rt::test]
async fn publish_batch_answers_one_result_per_event_in_order() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let reply = c
        .request(
            json!({"type": "publish_batch", "request_id": "b", "events": [
                {"type": "task_created"},
                {"priority": "urgent", "type": "x"},
                {"topic": "agent.failed", "priority": "critical"},
            ]}),
        )
        .await;
    assert_eq!(reply["type"], "published_batch");
    assert_eq!(reply["request_id"], "b");
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0]["cursor"].as_u64().is_some());
    assert_eq!(results[0]["duplicate"], false);
    assert_eq!(results[1]["error"]["code"], "invalid_event");
    assert!(results[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("priority"));
    assert!(results[2]["cursor"].as_u64().unwrap() > results[0]["cursor"].as_u64().unwrap());
}

#[actix_rt::test]
async fn delivered_envelope_has_every_field_with_defaults_filled() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub.subscribe(json!({"type": "all"})).await;
    let mut c = server.ws().await;
    let published = c
        .publish(json!({"type": "cost_budget_warning", "payload": {"agent_id": "a1", "task_id": "t9", "n": 1}}))
        .await;
    let msg = sub.recv_event().await;
    assert_eq!(msg["subscription_id"], sid.as_str());
    assert_eq!(msg["attempt"], 1);
    let e = &msg["event"];
    assert_eq!(e["id"], published["event_id"]);
    assert_eq!(e["cursor"], published["cursor"]);
    assert_eq!(e["type"], "cost_budget_warning");
    assert_eq!(e["topic"], "cost.budget_warning");
    assert_eq!(e["priority"], "normal");
    assert_eq!(e["source"], "anonymous");
    assert_eq!(e["agent_id"], "a1");
    assert_eq!(e["task_id"], "t9");
    assert_eq!(e["metadata"], json!({}));
    assert_eq!(e["payload"]["n"], 1);
    for key in ["target", "correlation_id", "ttl_ms"] {
        assert_eq!(e[key], Value::Null, "{key}");
        assert!(e.get(key).is_some(), "{key} present");
    }
    assert!(chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).is_ok());
}

#[actix_rt::test]
async fn topic_and_type_are_derived_from_each_other() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all"})).await;
    let mut c = server.ws().await;
    for (sent, topic, ty) in [
        (
            json!({"type": "task_created"}),
            "task.created",
            "task_created",
        ),
        (
            json!({"type": "custom_event"}),
            "custom.event",
            "custom_event",
        ),
        (
            json!({"topic": "agent.failed"}),
            "agent.failed",
            "agent_failed",
        ),
        (
            json!({"type": "anything", "topic": "logs.error"}),
            "logs.error",
            "anything",
        ),
    ] {
        c.publish(sent).await;
        let e = sub.recv_event().await;
        assert_eq!(e["event"]["topic"], topic);
        assert_eq!(e["event"]["type"], ty);
    }
}

#[actix_rt::test]
async fn explicit_fields_are_kept() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all"})).await;
    let mut c = server.ws().await;
    let event = json!({
        "id": "e-7", "type": "task_started", "priority": "HIGH", "timestamp": "2026-01-02T03:04:05Z",
        "source": "planner", "target": "worker-1", "correlation_id": "req-9", "agent_id": "a",
        "task_id": "t", "payload": [1, 2], "metadata": {"k": "v"}, "ttl_ms": 600000000000u64
    });
    c.publish(event).await;
    let e = sub.recv_event().await["event"].clone();
    assert_eq!(e["priority"], "high");
    assert_eq!(e["source"], "planner");
    assert_eq!(e["target"], "worker-1");
    assert_eq!(e["correlation_id"], "req-9");
    assert_eq!(e["payload"], json!([1, 2]));
    assert_eq!(e["metadata"], json!({"k": "v"}));
    assert_eq!(e["ttl_ms"], 600000000000u64);
    let t = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05+00:00");
}

#[actix_rt::test]
async fn expired_events_are_not_delivered() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all"})).await;
    let mut c = server.ws().await;
    c.publish(json!({"type": "old_news", "timestamp": "2020-01-01T00:00:00Z", "ttl_ms": 1000}))
        .await;
    c.publish(json!({"type": "fresh_news"})).await;
    assert_eq!(sub.recv_event().await["event"]["type"], "fresh_news");
}

/// Every error code that applies without acks, auth or conditions, each answered on a
/// connection that stays open.
#[actix_rt::test]
async fn bad_frames_get_error_codes_and_never_close_the_connection() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let table: Vec<(Value, &str)> = vec![
        (json!("not json"), "invalid_json"),
        (json!("[1, 2, 3]"), "invalid_json"),
        (json!("{}"), "unknown_command"),
        (json!({"type": "explode"}), "unknown_command"),
        (json!({"type": "publish_event"}), "invalid_event"),
        (
            json!({"type": "publish_event", "event": {}}),
            "invalid_event",
        ),
        (
            json!({"type": "publish_event", "event": {"type": "a", "priority": "urgent"}}),
            "invalid_event",
        ),
        (
            json!({"type": "publish_event", "event": {"topic": "task.*"}}),
            "invalid_event",
        ),
        (
            json!({"type": "publish_event", "event": {"type": "a", "unknown_field": 1}}),
            "invalid_event",
        ),
        (json!({"type": "subscribe"}), "invalid_subscription"),
        (
            json!({"type": "subscribe", "subscription": {"type": "filtered"}}),
            "invalid_subscription",
        ),
        (
            json!({"type": "subscribe", "subscription": {"type": "pattern"}}),
            "invalid_subscription",
        ),
        (
            json!({"type": "subscribe", "subscription": {"type": "nonsense"}}),
            "invalid_subscription",
        ),
        (
            json!({"type": "subscribe", "subscription": {"type": "pattern", "patterns": ["task..x"]}}),
            "invalid_pattern",
        ),
        (
            json!({"type": "subscribe", "subscription": {"type": "pattern", "patterns": ["task."]}}),
            "invalid_pattern",
        ),
        (
            json!({"type": "subscribe", "subscription": {"type": "pattern", "patterns": [">.task"]}}),
            "invalid_pattern",
        ),
        (
            json!({"type": "subscribe", "subscription": {"type": "filtered", "filter": {"topics": ["a..b"]}}}),
            "invalid_pattern",
        ),
        (
            json!({"type": "unsubscribe", "subscription_id": "nope"}),
            "unknown_subscription",
        ),
        (
            json!({"type": "ack", "subscription_id": "nope", "event_id": "e"}),
            "unknown_subscription",
        ),
        (
            json!({"type": "nack", "subscription_id": "nope", "event_id": "e"}),
            "unknown_subscription",
        ),
        (
            json!({"type": "ack", "subscription_id": "nope"}),
            "unknown_event",
        ),
    ];
    for (frame, code) in table {
        let text = match &frame {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        c.send_text(&text).await;
        let reply = c.recv().await;
        assert_eq!(reply["type"], "error", "{text} → {reply}");
        assert_eq!(reply["code"], code, "{text} → {reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
        c.assert_alive().await;
    }
    // The request id is echoed on errors too.
    let reply = c.request(json!({"type": "explode", "request_id": 5})).await;
    assert_eq!(reply["request_id"], 5);
}

#[actix_rt::test]
async fn binary_frames_get_unsupported_frame() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    c.send_message(ws::Message::Binary(bytes::Bytes::from_static(
        b"{\"type\":\"ping\"}",
    )))
    .await;
    let reply = c.recv().await;
    assert_eq!(reply["code"], "unsupported_frame");
    c.assert_alive().await;
}

#[actix_rt::test]
async fn fragmented_text_messages_are_reassembled() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let text = r#"{"type": "ping", "request_id": "frag"}"#;
    let (a, b) = text.split_at(10);
    let (b, d) = b.split_at(10);
    c.send_message(ws::Message::Continuation(actix_http::ws::Item::FirstText(
        bytes::Bytes::copy_from_slice(a.as_bytes()),
    )))
    .await;
    c.send_message(ws::Message::Continuation(actix_http::ws::Item::Continue(
        bytes::Bytes::copy_from_slice(b.as_bytes()),
    )))
    .await;
    c.send_message(ws::Message::Continuation(actix_http::ws::Item::Last(
        bytes::Bytes::copy_from_slice(d.as_bytes()),
    )))
    .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "pong");
    assert_eq!(reply["request_id"], "frag");
}

#[actix_rt::test]
async fn websocket_upgrade_works_at_root_too() {
    let server = TestServer::start().await;
    let mut c = WsClient::connect(&server.ws_url("/")).await;
    c.assert_alive().await;
    // Without an upgrade, `/` serves the dashboard page; the JSON description moved.
    let (status, page) = server.get_text("/").await;
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    let (status, body) = server.get("/api/info").await;
    assert_eq!(status, 200);
    assert_eq!(body["websocket"], "/ws");
    assert_eq!(server.get("/api").await.1, body);
}

#[actix_rt::test]
async fn ack_on_a_subscription_without_acks_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let sid = c.subscribe(json!({"type": "all"})).await;
    let reply = c
        .request(json!({"type": "ack", "subscription_id": sid, "event_id": "e"}))
        .await;
    assert_eq!(reply["code"], "invalid_subscription");
}

/// Commands sent back to back without waiting are answered in the order sent, though
/// publishes are answered only after their commit and pings at once.
#[actix_rt::test]
async fn pipelined_commands_are_answered_in_order() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let mut expected = Vec::new();
    for i in 0..200 {
        let frame = match i % 5 {
            0 => json!({"type": "ping", "request_id": i}),
            1 => json!({"type": "explode", "request_id": i}),
            2 => {
                json!({"type": "publish_batch", "events": [{"type": "a_b"}, {"type": "c_d"}], "request_id": i})
            }
            _ => json!({"type": "publish_event", "event": {"type": "pipe_line"}, "request_id": i}),
        };
        c.send(&frame).await;
        expected.push(i);
    }
    let mut last_cursor = 0;
    for i in expected {
        let reply = c.recv().await;
        assert_eq!(reply["request_id"], i, "{reply}");
        if reply["type"] == "published" {
            let cursor = reply["cursor"].as_u64().unwrap();
            assert!(
                cursor > last_cursor,
                "cursors follow the order of publishes"
            );
            last_cursor = cursor;
        }
    }
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["published"]["total"], 40 * 2 + 80);
}
