//! Hostile input against a live server: malformed and wrongly typed frames, huge and
//! deeply nested payloads, thousands of subscriptions, odd WebSocket framing, clients
//! that never read, half-open and slowloris connections, connection churn.
//!
//! Every scenario ends by checking the server is healthy (`/health`, `/ready`, a fresh
//! client can subscribe and publish) and that a well-behaved bystander subscriber,
//! connected throughout, received every event published to it. The last test spawns
//! the real binary so that its resident memory can be read from `/proc` and seen to
//! come back near its baseline once the hostile clients have left.
//!
//! Only 127.0.0.1 is used; every loop is bounded; nothing asserts on speed (deadlines
//! are generous upper bounds, there only so that a failure fails instead of hanging).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws::Item;
use awc::ws::{self, CloseCode};
use bytes::Bytes;
use common::process::SpawnedServer;
use common::{TestServer, WsClient};
use serde_json::{json, Value};

// ---- helpers ----

/// A subscriber that reads all the time (so it answers pings) on `bystander.>`, on its
/// own task, until it sees the event of type `bystander_done` (or 30 s pass). Its
/// result is the ids of the events it received, in order.
struct Bystander {
    task: actix_rt::task::JoinHandle<Vec<String>>,
}

impl Bystander {
    async fn connect(ws_url: &str) -> Bystander {
        Bystander {
            task: common::bystander::start(ws_url, None).await,
        }
    }

    /// Ends the bystander and asserts it got exactly `expected`, in order.
    async fn finish(self, http: &Http, expected: &[String]) {
        http.publish(&[json!({"type": "bystander_done", "topic": "bystander.done"})])
            .await;
        let got = self.task.await.expect("bystander task");
        assert_eq!(
            got.len(),
            expected.len(),
            "bystander missed or repeated events"
        );
        assert_eq!(got, expected, "bystander got every event, in order");
    }
}

/// HTTP helpers that need no connection kept open (so no heartbeat to answer).
struct Http {
    base: String,
}

impl Http {
    fn new(addr: &str) -> Http {
        Http {
            base: format!("http://{addr}"),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let mut res = awc::Client::new()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let mut res = awc::Client::new()
            .post(format!("{}{path}", self.base))
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .expect("POST");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// Publishes events over HTTP; returns their ids (asserting each was accepted).
    async fn publish(&self, events: &[Value]) -> Vec<String> {
        let (status, body) = self
            .post_raw("/api/events", Value::Array(events.to_vec()).to_string())
            .await;
        assert_eq!(status, 201, "POST /api/events: {body}");
        body["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| {
                r["event_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("event refused: {r}"))
                    .to_owned()
            })
            .collect()
    }

    /// `n` events for the bystander; returns their ids.
    async fn tick(&self, n: usize) -> Vec<String> {
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"type": "bystander_tick", "topic": "bystander.tick", "payload": {"i": i}}))
            .collect();
        self.publish(&events).await
    }

    async fn stats(&self) -> Value {
        let (status, stats) = self.get("/api/stats").await;
        assert_eq!(status, 200, "/api/stats");
        stats
    }

    /// Polls `/api/stats` until `connections.open` is `want` (or 15 s pass).
    async fn wait_open_connections(&self, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let open = self.stats().await["connections"]["open"].as_u64();
            if open == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "open connections stayed at {open:?}, expected {want}"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server answers over HTTP, and a fresh client can subscribe and publish.
    async fn assert_healthy(&self, ws_url: &str) {
        assert_eq!(self.get("/health").await.0, 200, "/health");
        assert_eq!(self.get("/ready").await.0, 200, "/ready");
        let mut c = WsClient::connect(ws_url).await;
        c.assert_alive().await;
        let sub = c
            .subscribe(json!({"type": "pattern", "patterns": ["health.check"]}))
            .await;
        // The delivery may overtake the `published` reply: take both, in either order.
        c.send(&json!({"type": "publish_event", "event": {"topic": "health.check"}}))
            .await;
        let (a, b) = (c.recv().await, c.recv().await);
        let (published, delivered) = if a["type"] == "published" {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(published["type"], "published", "{published}");
        assert_eq!(delivered["type"], "event", "{delivered}");
        assert_eq!(delivered["subscription_id"], sub.as_str());
        assert_eq!(delivered["event"]["id"], published["event_id"]);
    }
}

fn http_of(server: &TestServer) -> Http {
    Http::new(&server.addr.to_string())
}

/// A server for hostile tests: a bad-frame budget large enough for the tables below.
async fn server_with(tweak: impl FnOnce(&mut switchyard::Config)) -> TestServer {
    TestServer::with(|c| {
        c.limits.max_errors_per_window = 100_000;
        tweak(c);
    })
    .await
}

/// Sends `frame`; asserts the reply is an `error` with `code` (echoing `request_id`).
async fn expect_error(c: &mut WsClient, frame: &str, code: &str) {
    c.send_text(frame).await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "error", "frame {frame} got {reply}");
    assert_eq!(reply["code"], code, "frame {frame} got {reply}");
}

/// Sets the field at JSON pointer `path` (its parent must exist) to `value`.
fn set_path(root: &mut Value, path: &str, value: Value) {
    let (parent, last) = path.rsplit_once('/').expect("a JSON pointer");
    match root.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last.to_owned(), value);
        }
        Some(Value::Array(list)) => {
            let i: usize = last.parse().expect("an index");
            list[i] = value;
        }
        _ => panic!("no object or array at {parent}"),
    }
}

/// The HTTP upgrade request of a WebSocket on `/ws`.
const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// One masked client frame (RFC 6455 section 5.2), as a raw socket sends it.
fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x1e, 0x77, 0x03];
    let mut frame = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn masked_text_frame(text: &str) -> Vec<u8> {
    masked_frame(0x1, true, text.as_bytes())
}

/// A WebSocket upgraded by hand, so that frames the client library refuses to send
/// (a continuation with no first frame) can be sent. Blocking: use off the test's
/// thread.
fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    tcp.write_all(UPGRADE.as_bytes()).expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("upgrade response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Reads server frames until a close frame; returns its status code.
fn read_close_code(tcp: &mut TcpStream) -> Option<u16> {
    loop {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).ok()?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                tcp.read_exact(&mut n).ok()?;
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                tcp.read_exact(&mut n).ok()?;
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        tcp.read_exact(&mut payload).ok()?;
        if head[0] & 0x0f == 0x8 {
            return Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
        }
    }
}

/// A raw socket that upgrades to a WebSocket, subscribes to `pattern`, and then never
/// reads a byte: what the server sends piles up in its receive buffer. So that the
/// server's heartbeat cannot simply close it as silent, a thread keeps sending it an
/// unsolicited pong every 100 ms (for at most 30 s, until a write fails or `stop`).
fn never_reading_subscriber(addr: SocketAddr, pattern: &str, stop: &Arc<AtomicBool>) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.write_all(UPGRADE.as_bytes()).expect("upgrade request");
    let subscribe = json!({"type": "subscribe", "subscription": {"patterns": [pattern]}});
    tcp.write_all(&masked_text_frame(&subscribe.to_string()))
        .expect("subscribe frame");
    let mut writer = tcp.try_clone().expect("clone the socket");
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("write timeout");
    let stop = stop.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            if writer.write_all(&masked_frame(0xA, true, b"")).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    tcp
}

/// Waits (in a blocking task) until the server ends `tcp`: its reads reach EOF or an
/// error. Reads whatever is buffered first. Returns whether it ended within `limit`.
async fn server_ends(mut tcp: TcpStream, limit: Duration) -> bool {
    actix_rt::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 64 << 10];
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        while Instant::now() < deadline {
            match tcp.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    })
    .await
    .expect("reader task")
}

// ---- scenarios ----

/// Wrong JSON types in every field of every command, of the event envelope and of the
/// subscription (and its filter and coalesce spec). Each gets an `error` with the
/// documented code; the connection stays open; nothing panics.
#[actix_rt::test]
async fn wrong_types_in_every_field_get_the_documented_error() {
    let server = server_with(|_| {}).await;
    let http = http_of(&server);
    let bystander = Bystander::connect(&server.ws_url("/ws")).await;
    let mut expected = http.tick(3).await;
    let mut c = server.ws().await;

    // Values of every JSON type; each row skips the types its field accepts.
    let values = [
        ("bool", json!(true)),
        ("int", json!(7)),
        ("negative", json!(-1)),
        ("float", json!(1.5)),
        ("string", json!("x")),
        ("array", json!(["x"])),
        ("object", json!({"x": 1})),
    ];
    // (template, path to the field, JSON types the field accepts, expected code)
    let event = json!({"type": "task_created"});
    let publish = json!({"type": "publish_event", "event": event});
    let subscribe_all = json!({"type": "subscribe", "subscription": {"type": "all"}});
    let subscribe_acked =
        json!({"type": "subscribe", "subscription": {"type": "all", "ack": true}});
    let subscribe_filtered =
        json!({"type": "subscribe", "subscription": {"type": "filtered", "filter": {}}});
    let subscribe_coalesced = json!({"type": "subscribe", "subscription":
        {"type": "all", "coalesce": {"key": "payload.k", "window_ms": 10}}});
    let alias = json!({"action": "subscribe", "topics": ["task.*"]});
    let ack = json!({"type": "ack", "subscription_id": "s", "event_id": "e"});
    let nack = json!({"type": "nack", "subscription_id": "s", "event_id": "e"});
    let pattern_sub =
        json!({"type": "subscribe", "subscription": {"type": "pattern", "patterns": ["a"]}});
    let filter_sub = json!({"type": "subscribe", "subscription":
        {"type": "filtered", "filter": {"topics": ["a"], "priorities": ["low"]}}});
    let acks = json!({"type": "ack", "subscription_id": "s", "event_ids": ["e"]});
    let batch = json!({"type": "publish_batch", "events": [event]});
    let unsubscribe = json!({"type": "unsubscribe", "subscription_id": "s"});
    // JSON types a field accepts: a value of such a type is skipped (it may be valid).
    let string: &[&str] = &["string"];
    let list: &[&str] = &["array"];
    let none: &[&str] = &[];
    let table: Vec<(&Value, &str, &[&str], &str)> = vec![
        // The command name.
        (&publish, "/type", none, "unknown_command"),
        (&alias, "/action", none, "unknown_command"),
        // publish_event and its envelope.
        (&publish, "/event", &["object"], "invalid_event"),
        (&publish, "/event/id", string, "invalid_event"),
        (&publish, "/event/type", string, "invalid_event"),
        (&publish, "/event/topic", string, "invalid_event"),
        (&publish, "/event/priority", none, "invalid_event"),
        (&publish, "/event/timestamp", none, "invalid_event"),
        (&publish, "/event/source", string, "invalid_event"),
        (&publish, "/event/target", string, "invalid_event"),
        (&publish, "/event/correlation_id", string, "invalid_event"),
        (&publish, "/event/agent_id", string, "invalid_event"),
        (&publish, "/event/task_id", string, "invalid_event"),
        (&publish, "/event/metadata", &["object"], "invalid_event"),
        (&publish, "/event/ttl_ms", &["int"], "invalid_event"),
        // publish_batch.
        (&batch, "/events", list, "invalid_event"),
        // subscribe and the subscription object.
        (
            &subscribe_all,
            "/subscription",
            &["object"],
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/type",
            none,
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/id",
            string,
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/patterns",
            list,
            "invalid_subscription",
        ),
        (
            &pattern_sub,
            "/subscription/patterns/0",
            string,
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/pattern",
            string,
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/condition",
            string,
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/from_cursor",
            &["int"],
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/since",
            none,
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/ack",
            &["bool"],
            "invalid_subscription",
        ),
        (
            &subscribe_acked,
            "/subscription/ack_timeout_ms",
            &["int"],
            "invalid_subscription",
        ),
        (
            &subscribe_acked,
            "/subscription/max_attempts",
            &["int"],
            "invalid_subscription",
        ),
        (
            &subscribe_acked,
            "/subscription/max_in_flight",
            &["int"],
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/durable",
            string,
            "invalid_subscription",
        ),
        (
            &subscribe_all,
            "/subscription/coalesce",
            none,
            "invalid_subscription",
        ),
        (
            &subscribe_coalesced,
            "/subscription/coalesce/key",
            string,
            "invalid_subscription",
        ),
        (
            &subscribe_coalesced,
            "/subscription/coalesce/window_ms",
            &["int"],
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter",
            &["object"],
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/event_types",
            list,
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/topics",
            list,
            "invalid_subscription",
        ),
        (
            &filter_sub,
            "/subscription/filter/topics/0",
            string,
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/sources",
            list,
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/targets",
            list,
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/priorities",
            none,
            "invalid_subscription",
        ),
        (
            &filter_sub,
            "/subscription/filter/priorities/0",
            none,
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/agent_ids",
            list,
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/task_ids",
            list,
            "invalid_subscription",
        ),
        (
            &subscribe_filtered,
            "/subscription/filter/min_priority",
            none,
            "invalid_subscription",
        ),
        // The alias form of subscribe (`topics` may be a comma-separated string).
        (
            &alias,
            "/topics",
            &["string", "array"],
            "invalid_subscription",
        ),
        (&alias, "/topics/0", string, "invalid_subscription"),
        (&alias, "/agent_id", string, "invalid_subscription"),
        (&alias, "/task_id", string, "invalid_subscription"),
        // unsubscribe, ack, nack. (A string names a subscription or event that does
        // not exist: a different error, tested elsewhere.)
        (
            &unsubscribe,
            "/subscription_id",
            string,
            "invalid_subscription",
        ),
        (&ack, "/subscription_id", string, "invalid_subscription"),
        (&ack, "/event_id", string, "unknown_event"),
        (&acks, "/event_ids", list, "unknown_event"),
        (&acks, "/event_ids/0", string, "unknown_event"),
        (&nack, "/subscription_id", string, "invalid_subscription"),
        (&nack, "/event_id", string, "unknown_event"),
        (&nack, "/requeue", &["bool"], "invalid_subscription"),
        (&nack, "/delay_ms", &["int"], "invalid_subscription"),
    ];
    let mut sent = 0;
    for (template, path, accepted, code) in table {
        for (kind, value) in &values {
            if accepted.contains(kind) {
                continue;
            }
            let mut frame = template.clone();
            set_path(&mut frame, path, value.clone());
            frame["request_id"] = json!(sent);
            let text = frame.to_string();
            c.send_text(&text).await;
            let reply = c.recv().await;
            assert_eq!(reply["type"], "error", "{path} = {value}: {reply}");
            assert_eq!(reply["code"], code, "{path} = {value}: {reply}");
            assert_eq!(reply["request_id"], sent, "{path} = {value}: {reply}");
            sent += 1;
        }
    }
    assert!(sent > 300, "the table ran ({sent} frames)");
    // An element of a batch of the wrong type fails alone, in its result slot.
    for (_, value) in &values[..values.len() - 1] {
        let reply = c
            .request(json!({"type": "publish_batch", "events": [value, {"type": "fine_event"}]}))
            .await;
        assert_eq!(reply["type"], "published_batch", "{reply}");
        assert_eq!(reply["results"][0]["error"]["code"], "invalid_event");
        assert!(reply["results"][1]["cursor"].is_u64(), "{reply}");
    }
    // A null field is the same as an absent one; either way an answer, never a close.
    for frame in [
        json!({"type": "publish_event", "event": {"type": "a_b", "target": null}}),
        json!({"type": "subscribe", "subscription": {"type": "all", "id": null}}),
        json!({"type": "ping", "request_id": null}),
    ] {
        let reply = c.request(frame.clone()).await;
        assert_ne!(reply["type"], "error", "{frame}: {reply}");
    }
    c.assert_alive().await;

    expected.extend(http.tick(3).await);
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&server.ws_url("/ws")).await;
}

/// Invalid JSON, unknown commands, binary frames and fragmented (continuation) frames.
#[actix_rt::test]
async fn invalid_json_unknown_commands_binary_and_fragmented_frames() {
    let server = server_with(|c| {
        c.limits.max_event_bytes = 4096;
        c.limits.max_frame_bytes = 8192;
    })
    .await;
    let http = http_of(&server);
    let bystander = Bystander::connect(&server.ws_url("/ws")).await;
    let mut expected = http.tick(2).await;
    let mut c = server.ws().await;

    for bad in [
        "",
        " ",
        "nul",
        "{",
        "}",
        "{\"type\": \"ping\"",
        "{\"type\": \"ping\"}}",
        "{'type': 'ping'}",
        "{\"type\": \"ping\",}",
        "[]",
        "null",
        "42",
        "\"ping\"",
        "{\"type\": \"ping\"} {\"type\": \"ping\"}",
        "\u{feff}{\"type\": \"ping\"}",
        "{\"type\": \"\\ud800\"}",
        "{\"a\": 1e999999}",
    ] {
        expect_error(&mut c, bad, "invalid_json").await;
    }
    for unknown in [
        r#"{"type": "explode"}"#,
        r#"{"type": ""}"#,
        r#"{"type": "PING"}"#,
        r#"{"type": "publish_event\u0000"}"#,
        r#"{"action": "drop_tables"}"#,
        r#"{"request_id": 1}"#,
        r#"{"type": null}"#,
    ] {
        expect_error(&mut c, unknown, "unknown_command").await;
    }

    // Binary frames, whole and fragmented.
    c.send_message(ws::Message::Binary(Bytes::from_static(
        b"{\"type\": \"ping\"}",
    )))
    .await;
    assert_eq!(c.recv().await["code"], "unsupported_frame");
    c.send_message(ws::Message::Continuation(Item::FirstBinary(
        Bytes::from_static(b"\x00\x01"),
    )))
    .await;
    c.send_message(ws::Message::Continuation(Item::Last(Bytes::from_static(
        b"\x02",
    ))))
    .await;
    assert_eq!(c.recv().await["code"], "unsupported_frame");

    // A command in three fragments, with a ping (a control frame) between two of them.
    let text = r#"{"type": "ping", "request_id": "frag"}"#;
    let (a, rest) = text.split_at(5);
    let (b, last) = rest.split_at(10);
    c.send_message(ws::Message::Continuation(Item::FirstText(
        Bytes::copy_from_slice(a.as_bytes()),
    )))
    .await;
    c.send_message(ws::Message::Ping(Bytes::from_static(b"p")))
        .await;
    c.send_message(ws::Message::Continuation(Item::Continue(
        Bytes::copy_from_slice(b.as_bytes()),
    )))
    .await;
    c.send_message(ws::Message::Continuation(Item::Last(
        Bytes::copy_from_slice(last.as_bytes()),
    )))
    .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "pong", "{reply}");
    assert_eq!(reply["request_id"], "frag");
    // Fragments that are not valid JSON together: an error, the connection stays.
    c.send_message(ws::Message::Continuation(Item::FirstText(
        Bytes::from_static(b"{\"ty"),
    )))
    .await;
    c.send_message(ws::Message::Continuation(Item::Last(Bytes::from_static(
        b"pe\": 1",
    ))))
    .await;
    assert_eq!(c.recv().await["code"], "invalid_json");
    c.assert_alive().await;

    // Protocol violations close the connection, with the fitting code, and only it.
    let text = |t: &str, fin: bool| masked_frame(0x1, fin, t.as_bytes());
    let more = |t: &[u8], fin: bool| masked_frame(0x0, fin, t);
    let violations: Vec<(&str, Vec<Vec<u8>>, u16)> = vec![
        ("continuation first", vec![more(b"x", false)], 1002),
        ("last continuation first", vec![more(b"x", true)], 1002),
        (
            "text inside a fragmented message",
            vec![text("{", false), text("{\"type\": \"ping\"}", true)],
            1002,
        ),
        (
            "fragments over max_frame_bytes",
            vec![text(&" ".repeat(5000), false), more(&[b' '; 5000], true)],
            1009,
        ),
        (
            "fragments that are not UTF-8",
            vec![text("", false), more(b"\xff\xfe", true)],
            1007,
        ),
        ("reserved opcode", vec![masked_frame(0x3, true, b"x")], 1002),
        ("unmasked frame", vec![vec![0x81, 0x01, b'x']], 1002),
    ];
    let addr = server.addr;
    for (what, frames, code) in violations {
        let got = actix_rt::task::spawn_blocking(move || {
            let mut tcp = raw_ws(addr);
            for frame in frames {
                tcp.write_all(&frame).expect("frame");
            }
            read_close_code(&mut tcp)
        })
        .await
        .expect("raw client");
        assert_eq!(got, Some(code), "{what}");
    }
    c.assert_alive().await;

    expected.extend(http.tick(2).await);
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&server.ws_url("/ws")).await;
}

/// Payloads just under and over `max_event_bytes` and `max_frame_bytes`; deeply nested
/// JSON (100,000 levels) over WebSocket and HTTP must not overflow the server's stack.
#[actix_rt::test]
async fn huge_and_deeply_nested_payloads() {
    // Commands up to 4 MiB, so that the deep frames below reach the JSON parser (by
    // default `max_command_bytes` refuses them unparsed: tests/bounds.rs).
    let server = server_with(|c| c.limits.max_command_bytes = 4 << 20).await;
    let http = http_of(&server);
    let limits = switchyard::Config::defaults().limits;
    let bystander = Bystander::connect(&server.ws_url("/ws")).await;
    let mut expected = http.tick(2).await;
    let mut c = server.ws().await;

    // A publish frame of exactly `max_event_bytes` bytes, and one byte more.
    let frame_of = |size: usize| {
        let empty =
            json!({"type": "publish_event", "event": {"topic": "bystander.big", "payload": ""}})
                .to_string();
        let filler = "x".repeat(size - empty.len());
        json!({"type": "publish_event", "event": {"topic": "bystander.big", "payload": filler}})
            .to_string()
    };
    let at_limit = frame_of(limits.max_event_bytes);
    assert_eq!(at_limit.len(), limits.max_event_bytes);
    c.send_text(&at_limit).await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "published", "at the limit: {reply}");
    expected.push(reply["event_id"].as_str().unwrap_or_default().to_owned());
    expect_error(
        &mut c,
        &frame_of(limits.max_event_bytes + 1),
        "payload_too_large",
    )
    .await;
    // A large frame that is not a publish is judged by `max_command_bytes` only.
    let big_junk = format!("{{\"type\": \"ping\", \"x\": \"{}\"}}", "y".repeat(2 << 20));
    let reply = c.request(serde_json::from_str(&big_junk).unwrap()).await;
    assert_eq!(reply["type"], "pong", "{reply}");
    c.assert_alive().await;

    // 100,000 nested arrays and objects: rejected by the parser's depth limit.
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let unclosed = "[".repeat(100_000);
    for deep in [&deep_array, &deep_object, &unclosed] {
        expect_error(&mut c, deep, "invalid_json").await;
        let as_payload = format!(
            "{{\"type\": \"publish_event\", \"event\": {{\"type\": \"deep_one\", \"payload\": {deep}}}}}"
        );
        expect_error(&mut c, &as_payload, "invalid_json").await;
        let as_condition = json!({"type": "subscribe", "subscription": {"condition": deep}});
        c.send(&as_condition).await;
        let reply = c.recv().await;
        assert_eq!(reply["type"], "error", "{reply}");
        let (status, body) = http.post_raw("/api/events", deep.clone()).await;
        assert_eq!(status, 400, "POST of deep JSON: {body}");
    }
    // Deep nesting inside a CEL condition, within its length limit: refused.
    for condition in [
        format!("{}true{}", "(".repeat(2000), ")".repeat(2000)),
        format!("{}1{}", "[".repeat(2000), "]".repeat(2000)),
        format!("{}[1]{}", "size(".repeat(40), ")".repeat(40)),
        format!("{}a{}", "{\"a\": ".repeat(600), "}".repeat(600)),
        "payload".to_owned() + &".a".repeat(2000),
        "1 + ".repeat(1000) + "1 == 0",
    ] {
        let reply = c
            .request(json!({"type": "subscribe", "subscription": {"condition": condition}}))
            .await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "invalid_condition", "{reply}");
    }
    // Long but shallow conditions compile, and the router evaluates them (below, on a
    // deeply nested event) without trouble.
    let mut deep = server.ws().await;
    for condition in [
        format!("{}true", "!".repeat(4000)),
        format!("{}1 == 1", "-".repeat(4000)),
        "payload == payload && event == event".to_owned(),
    ] {
        deep.subscribe(json!({"patterns": ["bystander.nested"], "condition": condition}))
            .await;
    }
    // The deepest nesting the parser accepts is stored, delivered and read back.
    let nested = format!("{}{}", "[".repeat(120), "]".repeat(120));
    let event: Value = serde_json::from_str(&format!(
        "{{\"topic\": \"bystander.nested\", \"payload\": {nested}}}"
    ))
    .unwrap();
    expected.push(
        c.publish(event).await["event_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    for _ in 0..3 {
        let delivered = deep.recv_event().await;
        assert_eq!(delivered["event"]["topic"], "bystander.nested");
    }
    let (status, stored) = http.get("/api/events?topic=bystander.nested").await;
    assert_eq!(status, 200);
    assert_eq!(stored.as_array().map(Vec::len), Some(1), "{stored}");

    // Over `max_frame_bytes`: this connection is closed with 1009; the others are not.
    let mut huge = server.ws().await;
    huge.send_text(&"z".repeat(limits.max_frame_bytes + 1))
        .await;
    assert_eq!(
        huge.recv_close().await.expect("close reason").code,
        CloseCode::Size
    );
    c.assert_alive().await;

    expected.extend(http.tick(2).await);
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&server.ws_url("/ws")).await;
}

/// Thousands of subscriptions on one connection, up to and past the limit, and
/// across connections; all of them go away with their connections.
#[actix_rt::test]
async fn thousands_of_subscriptions_on_one_and_many_connections() {
    const PER_CONNECTION: usize = 2000;
    const CONNECTIONS: usize = 10;
    let server = server_with(|c| c.limits.max_subscriptions_per_connection = PER_CONNECTION).await;
    let http = http_of(&server);
    let bystander = Bystander::connect(&server.ws_url("/ws")).await;
    let mut expected = http.tick(2).await;

    // One connection: pipelined subscribes, every third with a condition.
    let mut one = server.ws().await;
    for i in 0..=PER_CONNECTION {
        let sub = match i % 3 {
            0 => json!({"patterns": [format!("load.{i}.*")]}),
            1 => json!({"filter": {"topics": [format!("load.{i}.>")], "min_priority": "high"}}),
            _ => json!({"condition": format!("topic == \"load.{i}.x\" && payload.n > {i}")}),
        };
        one.send(&json!({"type": "subscribe", "subscription": sub, "request_id": i}))
            .await;
    }
    for i in 0..=PER_CONNECTION {
        let reply = one.recv().await;
        assert_eq!(reply["request_id"], i, "{reply}");
        if i < PER_CONNECTION {
            assert_eq!(reply["type"], "subscribed", "{reply}");
        } else {
            assert_eq!(reply["code"], "too_many_subscriptions", "{reply}");
        }
    }
    // Across connections: each with a few hundred.
    let mut many = Vec::new();
    for c in 0..CONNECTIONS {
        let mut conn = server.ws().await;
        for i in 0..200 {
            conn.send(&json!({"type": "subscribe", "subscription": {"patterns": [format!("conn.{c}.{i}")]}}))
                .await;
        }
        for _ in 0..200 {
            assert_eq!(conn.recv().await["type"], "subscribed");
        }
        many.push(conn);
    }
    let stats = http.stats().await;
    assert_eq!(
        stats["subscriptions"].as_u64(),
        Some(1 + PER_CONNECTION as u64 + CONNECTIONS as u64 * 200),
        "{stats}"
    );
    // Events on those topics reach exactly the subscriber that asked for them.
    let ev = json!({"topic": "load.3.x", "priority": "critical", "payload": {"n": 0}});
    http.publish(&[ev]).await;
    let delivered = one.recv_event().await;
    assert_eq!(delivered["event"]["topic"], "load.3.x");
    one.assert_alive().await;
    expected.extend(http.tick(5).await);

    drop(one);
    many.clear();
    let deadline = Instant::now() + Duration::from_secs(15);
    while http.stats().await["subscriptions"].as_u64() != Some(1) {
        assert!(
            Instant::now() < deadline,
            "subscriptions outlived their connections"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    expected.extend(http.tick(2).await);
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&server.ws_url("/ws")).await;
}

/// A client that subscribes and then never reads while a flood is published to it.
/// The server must close it (its socket stays full, so its session cannot even run its
/// heartbeat), and meanwhile every other subscriber gets everything.
#[actix_rt::test]
async fn never_reading_client_is_closed_and_harms_no_one() {
    // Short enough that the server gives up on the deaf clients (after two intervals)
    // within the test, long enough for every well-behaved client on a busy machine.
    let server = server_with(|c| {
        c.server.heartbeat_interval_ms = 1000;
        c.limits.max_waiting_per_subscriber = 50;
    })
    .await;
    let http = http_of(&server);
    let bystander = Bystander::connect(&server.ws_url("/ws")).await;
    let mut expected = http.tick(2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let deaf: Vec<TcpStream> = (0..3)
        .map(|_| never_reading_subscriber(server.addr, ">", &stop))
        .collect();
    http.wait_open_connections(4).await;

    // 24 MiB of events in 64 KiB payloads: far more than the socket buffers hold.
    let payload = "f".repeat(64 << 10);
    for _ in 0..32 {
        let batch: Vec<Value> = (0..12)
            .map(|_| json!({"topic": "flood.data", "priority": "low", "payload": payload}))
            .collect();
        http.publish(&batch).await;
        expected.extend(http.tick(1).await);
    }
    // The deaf connections are closed; the bystander stays.
    http.wait_open_connections(1).await;
    for tcp in deaf {
        assert!(
            server_ends(tcp, Duration::from_secs(20)).await,
            "the server never ended a connection that does not read"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let stats = http.stats().await;
    assert_eq!(
        stats["subscriptions"].as_u64(),
        Some(1),
        "the deaf connections' subscriptions are gone: {stats}"
    );
    expected.extend(http.tick(2).await);
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&server.ws_url("/ws")).await;
}

/// Half-open connections (TCP connect, then silence) and slowloris upgrades (the
/// request a byte at a time) are dropped by the server; nobody else notices.
#[actix_rt::test]
async fn half_open_and_slowloris_connections_are_dropped() {
    let server = server_with(|_| {}).await;
    let http = http_of(&server);
    let bystander = Bystander::connect(&server.ws_url("/ws")).await;
    let mut expected = http.tick(2).await;
    let addr = server.addr;

    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // Each slowloris socket sends one byte of the upgrade request every 250 ms (the
    // whole request would take over 40 s) until the server ends the connection.
    let slow: Vec<_> = (0..5)
        .map(|_| {
            actix_rt::task::spawn_blocking(move || {
                let mut tcp = TcpStream::connect(addr).expect("connect");
                tcp.set_read_timeout(Some(Duration::from_millis(250)))
                    .expect("read timeout");
                let mut buf = [0u8; 512];
                for byte in UPGRADE.as_bytes() {
                    if tcp.write_all(&[*byte]).is_err() {
                        return true;
                    }
                    match tcp.read(&mut buf) {
                        Ok(_) => return true, // EOF or a 408: dropped
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return true,
                    }
                }
                false // the whole request went through, slowly: not dropped
            })
        })
        .collect();
    // Meanwhile the server serves everyone else.
    for _ in 0..5 {
        expected.extend(http.tick(2).await);
        http.assert_healthy(&server.ws_url("/ws")).await;
        actix_rt::time::sleep(Duration::from_millis(300)).await;
    }
    for task in slow {
        assert!(
            task.await.expect("slowloris task"),
            "a slowloris upgrade was served"
        );
    }
    for tcp in silent {
        assert!(
            server_ends(tcp, Duration::from_secs(15)).await,
            "a silent connection was kept open"
        );
    }
    expected.extend(http.tick(2).await);
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&server.ws_url("/ws")).await;
}

/// 2,000 rapid connect/disconnect cycles: WebSocket upgrades dropped at once or after a
/// subscribe, and bare TCP connections closed before a request.
#[actix_rt::test]
async fn rapid_connect_disconnect_cycles() {
    let server = server_with(|_| {}).await;
    let http = http_of(&server);
    let bystander = Bystander::connect(&server.ws_url("/ws")).await;
    let mut expected = http.tick(2).await;
    let url = server.ws_url("/ws");
    for i in 0..2000 {
        match i % 4 {
            0 => drop(WsClient::connect(&url).await),
            1 => {
                let mut c = WsClient::connect(&url).await;
                c.send(&json!({"type": "subscribe", "subscription": {"type": "all"}}))
                    .await;
            }
            2 => drop(TcpStream::connect(server.addr).expect("connect")),
            _ => {
                let mut tcp = TcpStream::connect(server.addr).expect("connect");
                let _ = tcp.write_all(UPGRADE.as_bytes());
            }
        }
        if i % 500 == 0 {
            expected.extend(http.tick(1).await);
        }
    }
    http.wait_open_connections(1).await;
    let stats = http.stats().await;
    assert_eq!(stats["subscriptions"].as_u64(), Some(1), "{stats}");
    expected.extend(http.tick(2).await);
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&server.ws_url("/ws")).await;
}

/// The real binary under every kind of hostile client at once: never-reading
/// subscribers under a flood, thousands of subscriptions, events just under
/// `max_event_bytes`, deeply nested frames and connection churn. Once they have left,
/// its resident memory comes back near its baseline (within 64 MiB: the allocator
/// keeps some), and the bystander got everything.
#[actix_rt::test]
async fn spawned_server_memory_returns_near_baseline_after_hostile_clients() {
    const MARGIN_MIB: f64 = 64.0;
    let server = SpawnedServer::start(&[
        ("SWITCHYARD_SERVER__HEARTBEAT_INTERVAL_MS", "1000"),
        (
            "SWITCHYARD_LIMITS__MAX_SUBSCRIPTIONS_PER_CONNECTION",
            "2000",
        ),
        ("SWITCHYARD_LIMITS__MAX_ERRORS_PER_WINDOW", "100000"),
        ("SWITCHYARD_STORE__SYNCHRONOUS_FULL", "false"),
    ]);
    let http = Http::new(&server.addr.to_string());
    let url = server.ws_url();
    let bystander = Bystander::connect(&url).await;
    // Warm up: the paths the hostile clients take, once, before the baseline.
    let mut expected = http.tick(20).await;
    for _ in 0..20 {
        let mut c = WsClient::connect(&url).await;
        c.subscribe(json!({"patterns": ["warm.*.none"]})).await;
        c.publish(json!({"type": "warm_up", "payload": "w".repeat(4096)}))
            .await;
    }
    http.wait_open_connections(1).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let baseline = server.rss_mib();
    let mut peak = baseline;

    // Never-reading subscribers, and a flood for them (15 MiB).
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr;
    let deaf: Vec<TcpStream> = (0..5)
        .map(|_| never_reading_subscriber(addr, "flood.>", &stop))
        .collect();
    let payload = "f".repeat(64 << 10);
    for _ in 0..16 {
        let batch: Vec<Value> = (0..15)
            .map(|_| json!({"topic": "flood.data", "payload": payload}))
            .collect();
        http.publish(&batch).await;
        expected.extend(http.tick(1).await);
        peak = peak.max(server.rss_mib());
    }
    // Thousands of subscriptions, on one connection and across ten.
    let mut subscribers = Vec::new();
    for (conn, count) in [(0, 2000), (1, 200), (2, 200), (3, 200), (4, 200), (5, 200)] {
        let mut c = WsClient::connect(&url).await;
        for i in 0..count {
            let pattern = format!("load.{conn}.{i}.*");
            c.send(&json!({"type": "subscribe", "subscription": {"patterns": [pattern]}}))
                .await;
        }
        for _ in 0..count {
            assert_eq!(c.recv().await["type"], "subscribed");
        }
        subscribers.push(c);
    }
    peak = peak.max(server.rss_mib());
    // Events just under `max_event_bytes`, and deeply nested frames.
    let mut big = WsClient::connect(&url).await;
    let filler = "b".repeat(1_000_000);
    for _ in 0..8 {
        big.publish(json!({"topic": "big.one", "payload": filler}))
            .await;
        // Over `max_command_bytes`: refused before it is parsed.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        expect_error(&mut big, &deep, "payload_too_large").await;
    }
    peak = peak.max(server.rss_mib());
    // Issue 21's shapes: subscriptions at the pattern and filter-value limits, a
    // coalescing subscription holding thousands of windows open, and a dead-letter
    // storm (every delivery on 50 subscriptions times out after 1 ms).
    let mut wide = WsClient::connect(&url).await;
    let patterns: Vec<String> = (0..64).map(|i| format!("wide.{i}.>")).collect();
    let values: Vec<String> = (0..256).map(|i| format!("agent-{i}")).collect();
    for _ in 0..50 {
        wide.subscribe(json!({"patterns": patterns, "filter": {"agent_ids": values}}))
            .await;
    }
    wide.subscribe(json!({"patterns": ["windows.>"],
                          "coalesce": {"key": "payload.k", "window_ms": 3_600_000}}))
        .await;
    for round in 0..5 {
        let batch: Vec<Value> = (0..1000)
            .map(|k| json!({"topic": "windows.k", "payload": {"k": round * 1000 + k}}))
            .collect();
        http.publish(&batch).await;
    }
    let mut storm = WsClient::connect(&url).await;
    for i in 0..50 {
        storm
            .subscribe(
                json!({"patterns": ["storm.>"], "id": format!("s{i}"), "ack": true,
                              "max_attempts": 1, "ack_timeout_ms": 1}),
            )
            .await;
    }
    for _ in 0..4 {
        let batch: Vec<Value> = (0..25)
            .map(|i| json!({"topic": "storm.t", "payload": {"i": i}}))
            .collect();
        http.publish(&batch).await;
        expected.extend(http.tick(1).await);
        peak = peak.max(server.rss_mib());
    }
    // Churn.
    for i in 0..500 {
        let c = WsClient::connect(&url).await;
        if i % 2 == 0 {
            drop(c);
        } else {
            drop(TcpStream::connect(addr).expect("connect"));
        }
    }
    peak = peak.max(server.rss_mib());
    expected.extend(http.tick(5).await);

    // Everyone hostile leaves (the deaf ones are closed by the server).
    drop(big);
    drop(wide);
    drop(storm);
    subscribers.clear();
    http.wait_open_connections(1).await;
    stop.store(true, Ordering::Relaxed);
    drop(deaf);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = server.rss_mib();
    while after > baseline + MARGIN_MIB && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(250)).await;
        after = server.rss_mib();
    }
    eprintln!(
        "resident memory: baseline {baseline:.1} MiB, peak {peak:.1} MiB, after {after:.1} MiB"
    );
    assert!(
        after <= baseline + MARGIN_MIB,
        "resident memory stayed at {after:.1} MiB (baseline {baseline:.1}, peak {peak:.1})"
    );
    bystander.finish(&http, &expected).await;
    http.assert_healthy(&url).await;
}
