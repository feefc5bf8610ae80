//! The seed systems' own clients against the server, over real sockets
//! (docs/protocol.md section 11): todoki's `useEventStream` at `GET /ws/event-bus`
//! and the Descartes `EventClient` at `ws://host/events`, each with its literal frames,
//! fed by native publishers.

mod common;

use std::time::Duration;

use common::{TestServer, WsClient};
use serde_json::{json, Value};
use switchyard::config::{Config, TokenConfig};

const QUIET: Duration = Duration::from_millis(200);

/// The batch every test publishes to see priority order: routed highest priority first
/// (docs/protocol.md section 5.2), so a subscriber of all of them sees
/// `p_critical, p_high, p_low` whatever the dialect.
fn by_priority(topic: &str, agent: &str) -> Value {
    json!({"type": "publish_batch", "events": [
        {"topic": topic, "agent_id": agent, "priority": "low", "payload": {"p": "low"}},
        {"topic": topic, "agent_id": agent, "priority": "critical", "payload": {"p": "critical"}},
        {"topic": topic, "agent_id": agent, "priority": "high", "payload": {"p": "high"}},
    ]})
}

fn todoki_data(frame: &Value) -> &Value {
    &frame["event"]["data"]
}

fn descartes_data(frame: &Value) -> &Value {
    &frame["payload"]["data"]["data"]
}

async fn todoki(server: &TestServer, query: &str) -> WsClient {
    WsClient::connect(&server.ws_url(&format!("/ws/event-bus?{query}"))).await
}

/// The `data.p` of the next `n` event frames.
async fn payloads(c: &mut WsClient, n: usize, data: fn(&Value) -> &Value) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let frame = c.recv().await;
        got.push(
            data(&frame)["p"]
                .as_str()
                .unwrap_or_else(|| panic!("{frame}"))
                .to_owned(),
        );
    }
    got
}

#[actix_rt::test]
async fn todoki_replays_from_its_cursor_then_streams_live_events_filtered() {
    let server = TestServer::start().await;
    let mut p = server.ws().await;
    let before = p.publish(json!({"topic": "task.created"})).await["cursor"]
        .as_u64()
        .unwrap();
    let stored = p
        .publish(
            json!({"id": "ev-1", "topic": "task.created", "agent_id": "a1", "task_id": "t1",
                        "payload": {"title": "x"}, "metadata": {"session_id": "s1"}}),
        )
        .await;
    p.publish(json!({"topic": "agent.started"})).await;

    // The URL `useEventStream` builds: kinds, cursor (token when auth is on).
    let mut t = todoki(&server, &format!("kinds=task.*&cursor={before}")).await;
    assert_eq!(
        t.recv().await,
        json!({"type": "subscribed", "kinds": ["task.*"], "cursor": before})
    );
    let frame = t.recv().await;
    let fields = json!({"cursor": stored["cursor"], "kind": "task.created", "agent_id": "a1",
                        "session_id": "s1", "task_id": "t1", "data": {"title": "x"},
                        "time": frame["time"]});
    assert!(
        frame["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{frame}"
    );
    let mut want = fields.clone();
    want["type"] = "event".into();
    want["event"] = fields;
    assert_eq!(frame, want);
    let done = t.recv().await;
    assert_eq!(done["type"], "replay_complete", "{done}");
    assert_eq!(done["count"], 1, "{done}");
    assert!(done["cursor"].as_u64().unwrap() >= stored["cursor"].as_u64().unwrap());

    // Live, narrowed to one agent by the query; without kinds, every kind.
    let mut only_a1 = todoki(&server, "agent_id=a1").await;
    assert_eq!(
        only_a1.recv().await,
        json!({"type": "subscribed", "kinds": null, "cursor": 0})
    );
    p.request(
        json!({"type": "publish", "event": {"topic": "task.updated", "agent_id": "a2",
                                                  "payload": {"p": "other agent"}}}),
    )
    .await;
    assert_eq!(
        p.request(by_priority("task.updated", "a1")).await["type"],
        "published_batch"
    );
    assert_eq!(payloads(&mut t, 1, todoki_data).await, ["other agent"]);
    assert_eq!(
        payloads(&mut t, 3, todoki_data).await,
        ["critical", "high", "low"]
    );
    assert_eq!(
        payloads(&mut only_a1, 3, todoki_data).await,
        ["critical", "high", "low"]
    );
    only_a1.expect_silence(QUIET).await;

    // A JSON ping is answered; anything else is an `error` in todoki's shape.
    t.send(&json!({"type": "ping"})).await;
    assert_eq!(t.recv().await, json!({"type": "pong"}));
    t.send(&json!({"type": "pong"})).await;
    t.send(&json!({"type": "subscribe"})).await;
    let err = t.recv().await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("unknown_command"))
    );
    assert!(err["message"].is_string(), "{err}");

    // A query that cannot be served is refused before the upgrade.
    for query in ["cursor=-1", "kinds=task..x", "kinds=ta*"] {
        let url = server.ws_url(&format!("/ws/event-bus?{query}"));
        assert_eq!(
            WsClient::try_connect(&url).await.err(),
            Some(400),
            "{query}"
        );
    }
}

#[actix_rt::test]
async fn descartes_subscribes_with_its_filter_and_receives_descartes_events() {
    let server = TestServer::start().await;
    let mut d = WsClient::connect(&server.ws_url("/events")).await;
    // The seed document's frame, literally.
    d.send_text(r#"{"type":"Subscribe","payload":{"filter":{"agent_ids":["agent-1"],"event_categories":["Agent","Task"]}}}"#).await;
    let confirmed = d.recv().await;
    assert_eq!(confirmed["type"], "Subscribed", "{confirmed}");
    assert!(confirmed["payload"]["subscription_id"].is_string());

    let mut p = server.ws().await;
    let spawned = p
        .publish(
            json!({"id": "evt-123", "topic": "agent.spawned", "agent_id": "agent-1",
                        "timestamp": "2025-11-24T12:00:00Z", "payload": {"config": "basic"}}),
        )
        .await;
    assert_eq!(spawned["type"], "published");
    for skipped in [
        json!({"topic": "agent.spawned", "agent_id": "agent-2"}),
        json!({"topic": "system.health_check", "agent_id": "agent-1"}),
    ] {
        p.publish(skipped).await;
    }
    p.publish(
        json!({"topic": "task.progress", "payload": {"agent_id": "agent-1", "task_id": "t-9",
                                                          "progress": 0.5}}),
    )
    .await;
    assert_eq!(
        d.recv().await,
        json!({"type": "Event", "payload": {"type": "AgentEvent", "data": {
            "id": "evt-123", "agent_id": "agent-1", "task_id": null, "workflow_id": null,
            "event_type": "spawned", "timestamp": "2025-11-24T12:00:00.000000Z",
            "data": {"config": "basic"}}}})
    );
    let task = d.recv().await;
    assert_eq!(task["payload"]["type"], "TaskEvent", "{task}");
    let data = &task["payload"]["data"];
    assert_eq!(
        (data["event_type"].as_str(), data["task_id"].as_str()),
        (Some("progress"), Some("t-9"))
    );
    assert_eq!(data["agent_id"], "agent-1");

    // The issue's literal frame: empty lists place no constraint; it replaces the first.
    d.send_text(r#"{"type":"Subscribe","payload":{"filter":{"agent_ids":[],"task_ids":[],"workflow_ids":[],"event_categories":[]}}}"#).await;
    assert_eq!(d.recv().await["type"], "Subscribed");
    p.publish(json!({"topic": "file.progress"})).await; // no Descartes category
    assert_eq!(
        p.request(by_priority("workflow.started", "agent-7")).await["type"],
        "published_batch"
    );
    assert_eq!(
        payloads(&mut d, 3, descartes_data).await,
        ["critical", "high", "low"]
    );

    // Workflow ids narrow on the payload's `workflow_id`.
    d.send(&json!({"type": "Subscribe", "payload": {"filter": {"workflow_ids": ["w1"]}}}))
        .await;
    assert_eq!(d.recv().await["type"], "Subscribed");
    for w in ["w2", "w1"] {
        p.publish(
            json!({"topic": "workflow.step_completed", "payload": {"workflow_id": w, "p": w}}),
        )
        .await;
    }
    let only = d.recv().await;
    assert_eq!(only["payload"]["type"], "WorkflowEvent", "{only}");
    assert_eq!(only["payload"]["data"]["workflow_id"], "w1", "{only}");

    // Ping, errors in Descartes's shape, and Unsubscribe (no reply, no more events).
    d.send_text(r#"{"type":"Ping"}"#).await;
    let pong = d.recv().await;
    assert_eq!(pong["type"], "Pong", "{pong}");
    d.send_text(r#"{"type":"Subscribe","payload":{"filter":{"event_categories":["Gizmo"]}}}"#)
        .await;
    let err = d.recv().await;
    assert_eq!(err["type"], "Error", "{err}");
    assert_eq!(err["payload"]["code"], "invalid_subscription", "{err}");
    assert!(
        err["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("Gizmo"),
        "{err}"
    );
    d.send_text(r#"{"type":"Unsubscribe"}"#).await;
    d.send_text(r#"{"type":"Ping"}"#).await;
    assert_eq!(d.recv().await["type"], "Pong");
    p.publish(json!({"topic": "workflow.step_completed", "payload": {"workflow_id": "w1"}}))
        .await;
    d.expect_silence(QUIET).await;

    // Without an upgrade, `GET /events` is still the REST listing.
    let (status, listing) = server.get("/events?topic=agent.spawned").await;
    assert_eq!(status, 200);
    assert_eq!(listing.as_array().map(Vec::len), Some(2), "{listing}");
}

#[actix_rt::test]
async fn both_dialects_send_their_json_heartbeat() {
    let server = TestServer::with(|c| c.server.heartbeat_interval_ms = 100).await;
    let mut t = todoki(&server, "kinds=task.*").await;
    assert_eq!(t.recv().await["type"], "subscribed");
    assert_eq!(t.recv().await, json!({"type": "ping"}));
    let mut d = WsClient::connect(&server.ws_url("/events")).await;
    let ping = d.recv().await;
    assert_eq!(ping["type"], "Ping", "{ping}");
    assert!(ping["payload"]["timestamp"].is_string(), "{ping}");
}

const READER: &str = "task-reader-token-0123456789";

fn with_reader(c: &mut Config) {
    c.auth.tokens = vec![TokenConfig {
        name: "reader".into(),
        token: READER.into(),
        publish: vec![">".into()],
        subscribe: vec!["task.>".into()],
        admin: false,
        sources: Vec::new(),
    }];
}

/// Auth, the origin guard and read grants are the native ones on both endpoints.
#[actix_rt::test]
async fn dialects_authenticate_and_are_held_to_grants_and_origins() {
    let server = TestServer::with(with_reader).await;
    let todoki_url = server.ws_url("/ws/event-bus?kinds=*");
    let descartes_url = server.ws_url("/events");
    for url in [&todoki_url, &descartes_url] {
        assert_eq!(WsClient::try_connect(url).await.err(), Some(401), "{url}");
        assert_eq!(
            WsClient::try_connect_as(url, Some("wrong-token-0123456789"))
                .await
                .err(),
            Some(401)
        );
        let foreign = awc::Client::new()
            .ws(url.as_str())
            .origin("http://evil.example")
            .bearer_auth(READER)
            .connect()
            .await;
        assert!(
            matches!(foreign, Err(awc::error::WsClientError::InvalidResponseStatus(s)) if s == 403),
            "{url}"
        );
    }
    // todoki's browser client passes `?token=`; its other clients the header.
    let mut by_query =
        WsClient::connect(&server.ws_url(&format!("/ws/event-bus?kinds=*&token={READER}"))).await;
    assert_eq!(by_query.recv().await["type"], "subscribed");
    let mut by_header = WsClient::try_connect_as(&todoki_url, Some(READER))
        .await
        .unwrap();
    assert_eq!(by_header.recv().await["type"], "subscribed");
    let mut d = WsClient::try_connect_as(&descartes_url, Some(READER))
        .await
        .unwrap();
    d.send_text(r#"{"type":"Subscribe","payload":{"filter":null}}"#)
        .await;
    assert_eq!(d.recv().await["type"], "Subscribed");
    // Only Agent events: outside the `task.>` grant, refused as natively.
    d.send_text(r#"{"type":"Subscribe","payload":{"filter":{"event_categories":["Agent"]}}}"#)
        .await;
    let refused = d.recv().await;
    assert_eq!(refused["payload"]["code"], "forbidden", "{refused}");

    let mut p = WsClient::try_connect_as(&server.ws_url("/ws"), Some(READER))
        .await
        .unwrap();
    p.publish(json!({"topic": "agent.spawned", "payload": {"p": "agent"}}))
        .await;
    p.publish(json!({"topic": "task.created", "payload": {"p": "task"}}))
        .await;
    assert_eq!(payloads(&mut by_query, 1, todoki_data).await, ["task"]);
    assert_eq!(payloads(&mut by_header, 1, todoki_data).await, ["task"]);
    d.expect_silence(QUIET).await; // its refused Subscribe replaced the first
}

/// Bad frames count against the native error budget: past it, close code 1008.
#[actix_rt::test]
async fn dialect_clients_share_the_native_error_budget() {
    let server = TestServer::with(|c| c.limits.max_errors_per_window = 2).await;
    let mut t = todoki(&server, "kinds=task.*").await;
    assert_eq!(t.recv().await["type"], "subscribed");
    let mut d = WsClient::connect(&server.ws_url("/events")).await;
    for (c, bad, error) in [
        (&mut t, "{\"type\":\"nope\"}", "error"),
        (&mut d, "[]", "Error"),
    ] {
        for _ in 0..3 {
            c.send_text(bad).await;
            assert_eq!(c.recv().await["type"], error);
        }
        let reason = c.recv_close().await.expect("a close frame");
        assert_eq!(reason.code, awc::ws::CloseCode::Policy);
    }
}
