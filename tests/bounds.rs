//! Every size a client controls has a bound (issue 21, point 2): each test drives one
//! limit one step over it on a live server, checks the answer (an error code naming the
//! key, a close code, or what is delivered), and ends with the server healthy and a
//! bystander subscriber that received every event published to it.
//!
//! The bounds are set low through [`tight`], the one place that names the new keys.

mod common;

use std::time::Duration;

use actix_http::ws::Item;
use awc::ws::{self, CloseCode};
use bytes::Bytes;
use common::{TestServer, WsClient};
use serde_json::{json, Value};
use switchyard::Config;

/// The bounds under test, set low so that one step over them is cheap.
fn tight(c: &mut Config) {
    c.limits.max_command_bytes = COMMAND_BYTES;
    c.limits.max_patterns_per_subscription = PATTERNS;
    c.limits.max_filter_values = FILTER_VALUES;
    c.limits.max_coalesce_windows = WINDOWS;
    c.limits.max_in_flight = IN_FLIGHT;
    c.limits.max_ack_timeout_ms = ACK_TIMEOUT_MS;
    c.limits.max_attempts = ATTEMPTS;
    c.limits.max_nack_delay_ms = NACK_DELAY_MS;
    c.limits.fragment_timeout_ms = FRAGMENT_TIMEOUT_MS;
    c.limits.max_waiting_bytes_per_subscriber = WAITING_BYTES;
    c.limits.max_pending_replies = PENDING_REPLIES;
}

const COMMAND_BYTES: usize = 4096;
const PATTERNS: usize = 4;
const FILTER_VALUES: usize = 8;
const WINDOWS: usize = 3;
const IN_FLIGHT: u32 = 100;
const ACK_TIMEOUT_MS: u64 = 60_000;
const ATTEMPTS: u32 = 10;
const NACK_DELAY_MS: u64 = 60_000;
const FRAGMENT_TIMEOUT_MS: u64 = 500;
const WAITING_BYTES: usize = 256 << 10;
const PENDING_REPLIES: usize = 8;

async fn server() -> TestServer {
    TestServer::with(tight).await
}

/// A subscriber on `bystander.>` that must receive every event published there.
struct Bystander {
    c: WsClient,
    expected: Vec<Value>,
}

impl Bystander {
    async fn connect(server: &TestServer) -> Bystander {
        let mut c = server.ws().await;
        c.subscribe(json!({"type": "pattern", "patterns": ["bystander.>"]}))
            .await;
        Bystander {
            c,
            expected: Vec::new(),
        }
    }

    /// Publishes one event for the bystander through `publisher`.
    async fn tick(&mut self, publisher: &mut WsClient) {
        let n = self.expected.len();
        let reply = publisher
            .publish(json!({"topic": "bystander.tick", "payload": {"n": n}}))
            .await;
        self.expected.push(reply["event_id"].clone());
    }

    /// Checks it received every tick, in order, and that the server is healthy: a
    /// fresh client can subscribe and publish, and `/health` answers.
    async fn finish(mut self, server: &TestServer) {
        let mut fresh = server.ws().await;
        self.tick(&mut fresh).await;
        for id in &self.expected {
            let e = self.c.recv_event().await;
            assert_eq!(
                &e["event"]["id"], id,
                "the bystander got every event, in order"
            );
        }
        self.c.assert_alive().await;
        assert_eq!(server.get("/health").await.0, 200);
    }
}

/// A command frame whose `request_id` pads it to exactly `len` bytes.
fn padded(mut frame: Value, len: usize) -> String {
    frame["request_id"] = json!("");
    let pad = len - frame.to_string().len();
    frame["request_id"] = json!("r".repeat(pad));
    let text = frame.to_string();
    assert_eq!(text.len(), len);
    text
}

#[actix_rt::test]
async fn command_frame_over_max_command_bytes_gets_payload_too_large() {
    let server = server().await;
    let mut bystander = Bystander::connect(&server).await;
    let mut c = server.ws().await;
    let subscribe = json!({"type": "subscribe", "subscription": {"type": "all"}});
    c.send_text(&padded(subscribe.clone(), COMMAND_BYTES)).await;
    assert_eq!(c.recv().await["type"], "subscribed", "at the limit is fine");
    c.send_text(&padded(subscribe, COMMAND_BYTES + 1)).await;
    let reply = c.recv().await;
    assert_eq!(reply["code"], "payload_too_large", "{reply}");
    assert!(reply["message"]
        .as_str()
        .unwrap_or_default()
        .contains("max_command_bytes"));
    assert_eq!(
        reply["request_id"],
        Value::Null,
        "a long request id is not echoed"
    );
    // Any command, a short request id echoed.
    let ping = json!({"type": "ping", "request_id": 7, "pad": "x".repeat(COMMAND_BYTES)});
    let reply = c.request(ping).await;
    assert_eq!(
        (&reply["code"], &reply["request_id"]),
        (&json!("payload_too_large"), &json!(7))
    );
    // A publish is bounded by max_event_bytes alone: it may be longer.
    let big = json!({"topic": "bystander.big", "payload": "x".repeat(4 * COMMAND_BYTES)});
    let reply = c.publish(big).await;
    bystander.expected.push(reply["event_id"].clone());
    c.assert_alive().await;
    bystander.tick(&mut c).await;
    bystander.finish(&server).await;
}

/// `subscribe` of `subscription`: its reply.
async fn subscribe(c: &mut WsClient, subscription: Value) -> Value {
    c.request(json!({"type": "subscribe", "subscription": subscription}))
        .await
}

/// Asserts `reply` is `invalid_subscription` naming `key`.
fn refused(reply: &Value, key: &str) {
    assert_eq!(reply["code"], "invalid_subscription", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(message.contains(key), "{message} should name {key}");
}

#[actix_rt::test]
async fn patterns_and_filter_values_over_their_limits_are_refused() {
    let server = server().await;
    let mut bystander = Bystander::connect(&server).await;
    let mut c = server.ws().await;
    let patterns = |n: usize| (0..n).map(|i| format!("p{i}.>")).collect::<Vec<_>>();
    let ok = subscribe(&mut c, json!({"patterns": patterns(PATTERNS)})).await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    let over = subscribe(&mut c, json!({"patterns": patterns(PATTERNS + 1)})).await;
    refused(&over, "limits.max_patterns_per_subscription");
    // The filter's topics count with the patterns.
    let mixed = json!({"patterns": patterns(PATTERNS - 1), "filter": {"topics": ["a.b", "c.d"]}});
    refused(
        &subscribe(&mut c, mixed).await,
        "max_patterns_per_subscription",
    );
    let alias = json!({"action": "subscribe", "topics": patterns(PATTERNS + 1)});
    refused(&c.request(alias).await, "max_patterns_per_subscription");

    let ids = |n: usize| (0..n).map(|i| format!("agent-{i}")).collect::<Vec<_>>();
    let ok = subscribe(&mut c, json!({"filter": {"agent_ids": ids(FILTER_VALUES)}})).await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    for list in ["event_types", "sources", "targets", "agent_ids", "task_ids"] {
        let over = subscribe(&mut c, json!({"filter": {list: ids(FILTER_VALUES + 1)}})).await;
        refused(&over, &format!("filter.{list}"));
        refused(&over, "limits.max_filter_values");
    }
    c.assert_alive().await;
    bystander.tick(&mut c).await;
    bystander.finish(&server).await;
}

#[actix_rt::test]
async fn ack_options_and_nack_delay_over_their_limits_are_refused() {
    let server = server().await;
    let mut bystander = Bystander::connect(&server).await;
    let mut c = server.ws().await;
    let ack = |key: &str, v: u64| json!({"type": "all", "ack": true, key: v});
    let table = [
        (
            "max_in_flight",
            u64::from(IN_FLIGHT),
            "limits.max_in_flight",
        ),
        (
            "ack_timeout_ms",
            ACK_TIMEOUT_MS,
            "limits.max_ack_timeout_ms",
        ),
        ("max_attempts", u64::from(ATTEMPTS), "limits.max_attempts"),
    ];
    for (key, max, names) in table {
        refused(&subscribe(&mut c, ack(key, max + 1)).await, names);
    }
    // Far over: refused too, where it once reached the delivery worker's clock.
    refused(
        &subscribe(&mut c, ack("ack_timeout_ms", u64::MAX)).await,
        "limits.max_ack_timeout_ms",
    );
    // At the limits, a working subscription; its nack delay is bounded as well.
    let at = json!({"type": "pattern", "patterns": ["job.>"], "ack": true, "id": "jobs",
        "max_in_flight": IN_FLIGHT, "ack_timeout_ms": ACK_TIMEOUT_MS, "max_attempts": ATTEMPTS});
    assert_eq!(subscribe(&mut c, at).await["type"], "subscribed");
    let mut p = server.ws().await;
    p.publish(json!({"topic": "job.run"})).await;
    let delivery = c.recv_event().await;
    let id = delivery["event"]["id"].clone();
    for delay in [NACK_DELAY_MS + 1, u64::MAX] {
        let nack = json!({"type": "nack", "subscription_id": "jobs", "event_id": id,
            "delay_ms": delay, "request_id": 1});
        refused(&c.request(nack).await, "limits.max_nack_delay_ms");
    }
    // The refused nacks changed nothing: the event is still in flight, and acked.
    let ack_frame = json!({"type": "ack", "subscription_id": "jobs", "event_id": id});
    c.send(&ack_frame).await;
    c.assert_alive().await;
    bystander.tick(&mut p).await;
    bystander.finish(&server).await;
}

#[actix_rt::test]
async fn fragmented_message_not_finished_in_time_closes_with_1008() {
    let server = server().await;
    let mut bystander = Bystander::connect(&server).await;
    let mut c = server.ws().await;
    // A fragmented command finished in time is answered, and its timer does not fire
    // later on.
    let text = r#"{"type": "ping", "request_id": "frag"}"#;
    let (a, b) = text.split_at(9);
    let first =
        |s: &str| ws::Message::Continuation(Item::FirstText(Bytes::copy_from_slice(s.as_bytes())));
    c.send_message(first(a)).await;
    let last = ws::Message::Continuation(Item::Last(Bytes::copy_from_slice(b.as_bytes())));
    c.send_message(last).await;
    assert_eq!(c.recv().await["request_id"], "frag");
    actix_rt::time::sleep(Duration::from_millis(FRAGMENT_TIMEOUT_MS * 2)).await;
    c.assert_alive().await;

    // A first fragment, then only pings (the connection is otherwise alive): closed.
    let mut slow = server.ws().await;
    slow.send_message(first(a)).await;
    for _ in 0..3 {
        slow.send_message(ws::Message::Ping(Bytes::from_static(b"p")))
            .await;
        actix_rt::time::sleep(Duration::from_millis(FRAGMENT_TIMEOUT_MS / 5)).await;
    }
    let reason = slow.recv_close().await.expect("a close reason");
    assert_eq!(reason.code, CloseCode::Policy);
    assert_eq!(
        reason.description.as_deref(),
        Some("fragmented message not finished in time")
    );
    c.assert_alive().await;
    bystander.tick(&mut c).await;
    bystander.finish(&server).await;
}

#[actix_rt::test]
async fn coalesce_windows_over_the_limit_end_the_oldest_early() {
    let server = server().await;
    let mut bystander = Bystander::connect(&server).await;
    let mut sub = server.ws().await;
    // Windows of an hour: without the bound, a held event would wait that long.
    sub.subscribe(json!({"type": "pattern", "patterns": ["task.>"],
        "coalesce": {"key": "payload.k", "window_ms": 3_600_000}}))
        .await;
    let mut p = server.ws().await;
    let update = |k: usize, n: usize| json!({"topic": "task.update", "payload": {"k": k, "n": n}});
    let mut sent = Vec::new();
    // Key 0 opens a window, its second event is held, keys 1 and 2 fill the bound.
    for (k, n) in [(0, 0), (0, 1), (1, 2), (2, 3)] {
        sent.push(p.publish(update(k, n)).await["event_id"].clone());
    }
    for want in [0, 2, 3] {
        assert_eq!(sub.recv_event().await["event"]["id"], sent[want]);
    }
    sub.expect_silence(Duration::from_millis(200)).await;
    // A fourth key: the window of key 0, the oldest, ends now; what it held goes
    // out first.
    sent.push(p.publish(update(3, 4)).await["event_id"].clone());
    assert_eq!(
        sub.recv_event().await["event"]["id"],
        sent[1],
        "held by key 0"
    );
    assert_eq!(sub.recv_event().await["event"]["id"], sent[4]);
    // Many more keys than the bound: every first event goes out at once.
    for k in 10..60 {
        let id = p.publish(update(k, k)).await["event_id"].clone();
        assert_eq!(sub.recv_event().await["event"]["id"], id);
    }
    sub.assert_alive().await;
    bystander.tick(&mut p).await;
    bystander.finish(&server).await;
}

#[actix_rt::test]
async fn waiting_bytes_over_the_limit_overflow_like_the_count() {
    let server = server().await;
    let mut bystander = Bystander::connect(&server).await;
    // One event in flight at a time and never acked: the rest wait for the subscriber.
    let mut sub = server.ws().await;
    sub.subscribe(
        json!({"type": "pattern", "patterns": ["big.>"], "ack": true,
        "max_in_flight": 1, "ack_timeout_ms": ACK_TIMEOUT_MS}),
    )
    .await;
    let mut p = server.ws().await;
    let chunk = 60 << 10;
    let events = WAITING_BYTES / chunk + 4;
    for n in 0..events {
        p.publish(json!({"topic": "big.blob", "payload": {"n": n, "pad": "x".repeat(chunk)}}))
            .await;
    }
    assert_eq!(sub.recv_event().await["event"]["payload"]["n"], 0);
    // Far fewer events than `max_waiting_per_subscriber`, but more bytes than the
    // byte bound: the oldest overflow into dead letters, as over the count.
    let mut overflowed = 0;
    for _ in 0..200 {
        let (status, list) = server.get("/api/dead-letters").await;
        assert_eq!(status, 200);
        let list = list.as_array().cloned().unwrap_or_default();
        overflowed = list.iter().filter(|d| d["reason"] == "overflow").count();
        if overflowed > 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(overflowed >= 1, "no overflow dead letter");
    let (_, subs) = server.get("/api/subscriptions").await;
    let waiting: u64 = subs["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subscriptions"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["waiting"].as_u64())
        .sum();
    assert!(
        (waiting as usize) * chunk <= WAITING_BYTES,
        "{waiting} events of {chunk} bytes wait, over {WAITING_BYTES} bytes"
    );
    sub.assert_alive().await;
    bystander.tick(&mut p).await;
    bystander.finish(&server).await;
}

#[actix_rt::test]
async fn replies_owed_past_the_limit_stop_the_reading() {
    // A Redis that stops answering stalls a publish's commit: what the connection
    // sends after it is answered only once it commits.
    let redis = common::redis::RedisServer::start();
    let server = TestServer::with(|c| {
        tight(c);
        c.store.kind = switchyard::config::StoreKind::Redis;
        c.store.redis_url = redis.url();
        c.cluster.command_timeout_ms = 10_000;
    })
    .await;
    let mut bystander = Bystander::connect(&server).await;
    let mut c = server.ws().await;
    assert!(
        c.ws_ping(Duration::from_secs(2)).await,
        "answers pings at first"
    );
    redis.freeze(true);
    let event = json!({"topic": "bystander.stalled"});
    c.send(&json!({"type": "publish_event", "event": event, "request_id": "p"}))
        .await;
    let pings = PENDING_REPLIES * 3;
    for i in 0..pings {
        c.send(&json!({"type": "ping", "request_id": i})).await;
    }
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    // Every reply is owed behind the publish, past the bound: the server reads no
    // more of this socket, so not even a WebSocket ping is seen.
    let answered = c.ws_ping(Duration::from_secs(1)).await;
    redis.freeze(false);
    assert!(
        !answered,
        "the server went on reading with {pings} replies owed"
    );
    let reply = c.recv().await;
    assert_eq!(
        (&reply["type"], &reply["request_id"]),
        (&json!("published"), &json!("p"))
    );
    bystander.expected.push(reply["event_id"].clone());
    for i in 0..pings {
        let pong = c.recv().await;
        assert_eq!(
            (&pong["type"], &pong["request_id"]),
            (&json!("pong"), &json!(i))
        );
    }
    assert!(c.ws_ping(Duration::from_secs(2)).await, "reading again");
    bystander.tick(&mut c).await;
    bystander.finish(&server).await;
}
