//! Every configured limit, driven one step over it: what happens, and that the server
//! (and, where promised, the connection) survives.

mod common;

use std::time::Duration;

use awc::ws::CloseCode;
use common::{TestServer, WsClient};
use serde_json::{json, Value};

#[actix_rt::test]
async fn event_over_max_event_bytes_gets_payload_too_large_and_connection_stays() {
    let server = TestServer::with(|c| c.limits.max_event_bytes = 4096).await;
    let mut c = server.ws().await;
    let at_limit = "x".repeat(3900);
    let reply = c
        .request(
            json!({"type": "publish_event", "event": {"type": "big_one", "payload": at_limit}}),
        )
        .await;
    assert_eq!(reply["type"], "published", "just under the limit is fine");
    let over = "x".repeat(4096);
    let reply = c
        .request(json!({"type": "publish_event", "request_id": 1, "event": {"type": "big_one", "payload": over}}))
        .await;
    assert_eq!(reply["code"], "payload_too_large");
    assert_eq!(reply["request_id"], 1);
    let reply = c
        .request(json!({"type": "publish_batch", "events": [{"type": "a_b", "payload": over}]}))
        .await;
    assert_eq!(reply["code"], "payload_too_large");
    c.assert_alive().await;
    let (status, body) = server
        .post("/api/events", &json!({"type": "big_one", "payload": over}))
        .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[actix_rt::test]
async fn frame_over_max_frame_bytes_closes_with_1009() {
    let server = TestServer::with(|c| {
        c.limits.max_event_bytes = 1024;
        c.limits.max_frame_bytes = 8192;
    })
    .await;
    let mut c = server.ws().await;
    c.send_text(&"x".repeat(8193)).await;
    let reason = c.recv_close().await.expect("close reason");
    assert_eq!(reason.code, CloseCode::Size);
    // The server is fine.
    server.ws().await.assert_alive().await;
}

#[actix_rt::test]
async fn batch_over_max_batch_events_is_refused() {
    let server = TestServer::with(|c| c.limits.max_batch_events = 3).await;
    let mut c = server.ws().await;
    let events: Vec<_> = (0..4).map(|_| json!({"type": "a_b"})).collect();
    let reply = c
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    assert_eq!(reply["code"], "payload_too_large");
    let (status, _) = server
        .post("/api/events", &serde_json::Value::Array(events))
        .await;
    assert_eq!(status, 413);
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(
        stats["events"]["published"]["total"], 0,
        "nothing of a refused batch is routed"
    );
}

#[actix_rt::test]
async fn subscriptions_over_the_limit_get_too_many_subscriptions() {
    let server = TestServer::with(|c| c.limits.max_subscriptions_per_connection = 3).await;
    let mut c = server.ws().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(c.subscribe(json!({"type": "all"})).await);
    }
    let reply = c
        .request(json!({"type": "subscribe", "subscription": {"type": "all"}}))
        .await;
    assert_eq!(reply["code"], "too_many_subscriptions");
    // Unsubscribing frees a slot.
    c.request(json!({"type": "unsubscribe", "subscription_id": ids[0]}))
        .await;
    c.subscribe(json!({"type": "all"})).await;
}

#[actix_rt::test]
async fn connections_over_max_connections_are_refused_with_503() {
    let server = TestServer::with(|c| c.limits.max_connections = 2).await;
    let mut a = server.ws().await;
    let _b = server.ws().await;
    let refused = WsClient::try_connect(&server.ws_url("/ws")).await.err();
    assert_eq!(refused, Some(503));
    a.assert_alive().await;
    drop(a);
    // The slot is released when a connection closes.
    let mut third = None;
    for _ in 0..50 {
        if let Ok(c) = WsClient::try_connect(&server.ws_url("/ws")).await {
            third = Some(c);
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    third
        .expect("a freed slot is reusable")
        .assert_alive()
        .await;
    let (_, stats) = server.get("/api/stats").await;
    assert!(stats["connections"]["refused"].as_u64().unwrap() >= 1);
}

#[actix_rt::test]
async fn too_many_bad_frames_close_with_1008() {
    let server = TestServer::with(|c| {
        c.limits.max_errors_per_window = 5;
        c.limits.error_window_ms = 60_000;
    })
    .await;
    let mut c = server.ws().await;
    for _ in 0..5 {
        c.send_text("garbage").await;
        assert_eq!(c.recv().await["code"], "invalid_json");
    }
    c.send_text("garbage").await;
    assert_eq!(c.recv().await["code"], "invalid_json");
    let reason = c.recv_close().await.expect("close reason");
    assert_eq!(reason.code, CloseCode::Policy);
    server.ws().await.assert_alive().await;
}

#[actix_rt::test]
async fn silent_connection_is_closed_after_two_heartbeat_intervals() {
    let server = TestServer::with(|c| c.server.heartbeat_interval_ms = 100).await;
    // A raw TCP client that completes the upgrade, then never answers pings. Blocking
    // reads run off the test's thread, where the server's own tasks live.
    let addr = server.addr;
    let (seen, elapsed) = actix_rt::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        write!(
            tcp,
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        // Read until the server closes the TCP connection (or 5 s pass).
        loop {
            match tcp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!("server did not close a silent connection: {e}"),
            }
        }
        (seen, started.elapsed())
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // A close frame (opcode 0x8) with code 1001 was sent before the connection ended.
    let close = seen
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2..4] == [0x03, 0xE9]);
    assert!(close, "close frame with 1001 expected");
    assert!(
        elapsed >= Duration::from_millis(200),
        "not before two intervals"
    );
    // A connection that answers pings (the harness does, while it reads) stays open.
    let mut live = server.ws().await;
    live.expect_silence(Duration::from_millis(450)).await;
    live.assert_alive().await;
}

/// Of a `published_batch` reply: events stored, and events refused `rate_limited`.
fn accepted_and_limited(reply: &Value) -> (usize, usize) {
    let results = reply["results"].as_array().expect("results");
    let accepted = results.iter().filter(|r| r["cursor"].is_u64()).count();
    let limited = results
        .iter()
        .filter(|r| r["error"]["code"] == "rate_limited")
        .count();
    (accepted, limited)
}

#[actix_rt::test]
async fn router_queue_full_answers_rate_limited_and_loses_nothing_accepted() {
    let server = TestServer::with(|c| c.router.max_queued_events = 5).await;
    let mut p = server.ws().await;
    // One batch larger than the queue: the first five are accepted, the rest refused.
    let events: Vec<_> = (0..8)
        .map(|i| json!({"type": "burst_event", "payload": {"i": i}}))
        .collect();
    let reply = p
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    let (accepted, limited) = accepted_and_limited(&reply);
    assert_eq!((accepted, limited), (5, 3), "{reply}");
    // Once routed, the queue has room again.
    assert!(publishes_once_drained(&mut p).await, "queue drains");
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["rejected_busy"], 3);
    assert_eq!(
        stats["store"]["event_count"], 6,
        "every accepted event is stored"
    );
}

#[actix_rt::test]
async fn router_queue_full_of_bytes_answers_rate_limited_and_loses_nothing_accepted() {
    // Stored envelopes (id, timestamp, cursor …) are several times the size of these
    // tiny frames, so one batch within `max_event_bytes` overfills the byte bound.
    let server = TestServer::with(|c| {
        c.limits.max_event_bytes = 8192;
        c.router.max_queued_bytes = 8192;
    })
    .await;
    let mut p = server.ws().await;
    let events: Vec<_> = (0..100)
        .map(|i| json!({"type": "bulk_event", "payload": {"i": i}}))
        .collect();
    let reply = p
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    let (accepted, limited) = accepted_and_limited(&reply);
    assert!(accepted > 0 && limited > 0, "{reply}");
    assert_eq!(accepted + limited, 100, "{reply}");
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["rejected_busy"], limited as u64);
    assert_eq!(stats["store"]["event_count"], accepted as u64);
    // Routed, the bytes are given back: a later publish is accepted.
    assert!(publishes_once_drained(&mut p).await, "queue drains");
}

/// Whether a publish is accepted within half a second, once the router has routed
/// what filled its queue.
async fn publishes_once_drained(p: &mut WsClient) -> bool {
    for _ in 0..50 {
        let r = p
            .request(json!({"type": "publish_event", "event": {"type": "later_event"}}))
            .await;
        if r["type"] == "published" {
            return true;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Stored events of one type, in cursor order.
async fn stored(server: &TestServer, event_type: &str) -> Vec<serde_json::Value> {
    let (status, body) = server
        .get(&format!("/api/events?type={event_type}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

/// `payload.i` of the stored events of type `kind`, oldest first.
async fn stored_payload_ids(server: &TestServer, kind: &str) -> Vec<Value> {
    stored(server, kind)
        .await
        .iter()
        .map(|e| e["payload"]["i"].clone())
        .collect()
}

/// A server whose connections may publish `burst` events at once, then one a second.
async fn rate_limited_server(burst: u32) -> TestServer {
    TestServer::with(|c| {
        c.limits.publish_rate_per_sec = 1;
        c.limits.publish_burst = burst;
    })
    .await
}

#[actix_rt::test]
async fn publishes_over_the_connection_rate_get_rate_limited_and_are_not_stored() {
    let server = rate_limited_server(3).await;
    let mut c = server.ws().await;
    // Sent back to back, faster than the one token a second that refills the bucket.
    for i in 0..8 {
        c.send(&json!({"type": "publish_event", "request_id": i,
                       "event": {"type": "rated_event", "payload": {"i": i}}}))
            .await;
    }
    for i in 0..8 {
        let reply = c.recv().await;
        assert_eq!(reply["request_id"], i, "replies in command order: {reply}");
        if i < 3 {
            assert_eq!(reply["type"], "published", "{reply}");
        } else {
            assert_eq!(reply["type"], "error", "{reply}");
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            let message = reply["message"].as_str().unwrap_or_default();
            assert!(message.contains("at most 1 events per second"), "{message}");
            assert!(message.contains("bursts of 3"), "{message}");
            assert!(message.contains("retry in"), "{message}");
        }
    }
    c.assert_alive().await;
    assert_eq!(
        stored_payload_ids(&server, "rated_event").await,
        [0, 1, 2],
        "only the accepted events are stored"
    );
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["rejected_over_rate"], 5);
    assert_eq!(stats["events"]["published"]["total"], 3);
    let mut res = awc::Client::new()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    let text = String::from_utf8(res.body().await.expect("body").to_vec()).expect("UTF-8");
    assert!(
        text.lines()
            .any(|l| l == "switchyard_publishes_rejected_over_rate_total 5"),
        "{text}"
    );
    // The budget is per connection: another one starts with a full bucket.
    let mut other = server.ws().await;
    other.publish(json!({"type": "rated_event"})).await;
}

/// `POST /api/events` takes the path a WebSocket publish does: each HTTP connection
/// has a budget, shared by the requests it keeps alive for.
#[actix_rt::test]
async fn http_publishes_over_the_connection_rate_get_rate_limited_and_are_not_stored() {
    let server = rate_limited_server(3).await;
    // One connection, kept alive: `awc` reuses it for every request of this client.
    let client = awc::Client::new();
    let post = |body: Value| {
        let request = client
            .post(server.url("/api/events"))
            .insert_header(("content-type", "application/json"))
            .send_body(body.to_string());
        async move {
            let mut res = request.await.expect("POST /api/events");
            let body = res.body().await.expect("body");
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (res.status().as_u16(), body)
        }
    };
    for i in 0..5 {
        let (status, body) = post(json!({"type": "http_rated", "payload": {"i": i}})).await;
        if i < 3 {
            assert_eq!(status, 201, "{body}");
        } else {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
    }
    // A batch on the same connection: every event finds the bucket empty.
    let (status, body) = post(json!([{"type": "http_rated"}, {"type": "http_rated"}])).await;
    assert_eq!(status, 201, "{body}");
    for result in body["results"].as_array().cloned().unwrap_or_default() {
        assert_eq!(result["error"]["code"], "rate_limited", "{body}");
    }
    assert_eq!(
        stored_payload_ids(&server, "http_rated").await,
        [0, 1, 2],
        "only the accepted events are stored"
    );
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["rejected_over_rate"], 4);
}

#[actix_rt::test]
async fn a_batch_over_the_connection_rate_gets_mixed_results() {
    let server = rate_limited_server(3).await;
    let mut c = server.ws().await;
    // An invalid event costs no token: it never reaches the router.
    let events = json!([
        {"type": "batch_event", "payload": {"i": 0}},
        {"type": "batch_event", "payload": {"i": 1}},
        {"payload": {"i": "no type"}},
        {"type": "batch_event", "payload": {"i": 2}},
        {"type": "batch_event", "payload": {"i": 3}},
        {"type": "batch_event", "payload": {"i": 4}},
    ]);
    let reply = c
        .request(json!({"type": "publish_batch", "request_id": "b1", "events": events}))
        .await;
    assert_eq!(reply["type"], "published_batch", "{reply}");
    assert_eq!(reply["request_id"], "b1");
    let outcome: Vec<_> = reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| match r["error"]["code"].as_str() {
            Some(code) => code.to_owned(),
            None if r["cursor"].is_u64() => "published".to_owned(),
            None => format!("unexpected {r}"),
        })
        .collect();
    assert_eq!(
        outcome,
        [
            "published",
            "published",
            "invalid_event",
            "published",
            "rate_limited",
            "rate_limited"
        ]
    );
    let message = reply["results"][4]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("retry in"), "{message}");
    // The bucket is empty now: a single event is refused too, and the connection stays.
    let refused = c
        .request(json!({"type": "publish_event", "event": {"type": "batch_event"}}))
        .await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    c.assert_alive().await;
    let kept: Vec<_> = stored(&server, "batch_event")
        .await
        .iter()
        .map(|e| e["payload"]["i"].clone())
        .collect();
    assert_eq!(kept, [0, 1, 2]);
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["rejected_over_rate"], 3);
}

#[actix_rt::test]
async fn publishing_works_again_once_the_bucket_refills() {
    let server = rate_limited_server(1).await;
    let mut c = server.ws().await;
    c.publish(json!({"type": "refill_event", "payload": {"i": 0}}))
        .await;
    let refused = c
        .request(json!({"type": "publish_event", "event": {"type": "refill_event"}}))
        .await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // Retry as a client would, until the token is back (one a second); refusals in
    // the meantime are `rate_limited`, never a closed connection.
    let mut accepted = None;
    for _ in 0..100 {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let reply = c
            .request(json!({"type": "publish_event",
                            "event": {"type": "refill_event", "payload": {"i": 1}}}))
            .await;
        if reply["type"] == "published" {
            accepted = Some(reply);
            break;
        }
        assert_eq!(reply["code"], "rate_limited", "{reply}");
    }
    assert!(accepted.is_some(), "the bucket refills");
    let kept: Vec<_> = stored(&server, "refill_event")
        .await
        .iter()
        .map(|e| e["payload"]["i"].clone())
        .collect();
    assert_eq!(kept, [0, 1], "refused attempts were not stored");
}

#[actix_rt::test]
async fn rate_limited_publishes_are_not_charged_to_the_error_budget() {
    let server = TestServer::with(|c| {
        c.limits.publish_rate_per_sec = 1;
        c.limits.publish_burst = 1;
        c.limits.max_errors_per_window = 2;
        c.limits.error_window_ms = 60_000;
    })
    .await;
    let mut c = server.ws().await;
    c.publish(json!({"type": "budget_event"})).await;
    for _ in 0..5 {
        let reply = c
            .request(json!({"type": "publish_event", "event": {"type": "budget_event"}}))
            .await;
        assert_eq!(reply["code"], "rate_limited", "{reply}");
    }
    // Five refusals, over a budget of two bad frames: the connection stays open.
    c.expect_silence(Duration::from_millis(100)).await;
    c.assert_alive().await;
}

/// A counter or gauge from `/metrics`, 0 when absent.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A batch of `n` events of `priority` on `overload.tick`, numbered from `first`.
fn tick_batch(first: usize, n: usize, priority: &str) -> serde_json::Value {
    let events: Vec<_> = (first..first + n)
        .map(|i| json!({"topic": "overload.tick", "type": "tick", "priority": priority, "payload": {"i": i}}))
        .collect();
    json!({"type": "publish_batch", "events": events})
}

async fn publish_all(c: &mut WsClient, batch: serde_json::Value) {
    let reply = c.request(batch).await;
    assert_eq!(reply["type"], "published_batch", "{reply}");
    let results = reply["results"].as_array().expect("results");
    assert!(results.iter().all(|r| r["cursor"].is_u64()), "{reply}");
}

/// A critical event, published and answered.
async fn alarm(urgent: &mut WsClient) {
    urgent
        .publish(json!({"topic": "overload.alarm", "type": "alarm", "priority": "critical"}))
        .await;
}

/// A server where every critical delivery is late (a 1 µs target), with
/// `low_rate_floor_per_sec = floor` and whatever else `limits` sets; a watcher of
/// `overload.alarm`, and a connection to publish alarms on.
async fn late_urgent_events(
    floor: u32,
    limits: impl FnOnce(&mut switchyard::config::LimitsConfig),
) -> (TestServer, WsClient, WsClient) {
    let server = TestServer::with(|c| {
        c.limits.urgent_latency_target_us = 1;
        c.limits.low_rate_floor_per_sec = floor;
        limits(&mut c.limits);
    })
    .await;
    let mut watcher = server.ws().await;
    watcher
        .subscribe(json!({"type": "pattern", "patterns": ["overload.alarm"]}))
        .await;
    let urgent = server.ws().await;
    (server, watcher, urgent)
}

#[actix_rt::test]
async fn low_only_publishers_are_slowed_while_urgent_events_are_late_and_lose_nothing() {
    // Against a 1 µs target every critical delivery is late.
    let server = TestServer::with(|c| {
        c.limits.urgent_latency_target_us = 1;
        c.limits.low_rate_floor_per_sec = 2000;
    })
    .await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "pattern", "patterns": ["overload.>"]}))
        .await;
    let mut urgent = server.ws().await;
    let mut mixed = server.ws().await;
    let mut low = server.ws().await;
    let mut sent = 0;
    let mut critical = 0;
    // Late critical deliveries, and a publisher whose batches carry a high event
    // among the low ones, until low events are limited: it is never paused.
    for _ in 0..100 {
        alarm(&mut urgent).await;
        critical += 1;
        let mut batch = tick_batch(sent, 50, "low");
        batch["events"][0]["priority"] = json!("high");
        publish_all(&mut mixed, batch).await;
        sent += 50;
        if metric(&server, "switchyard_low_admission_rate").await > 0.0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&server, "switchyard_low_admission_rate").await >= 2000.0);
    assert_eq!(
        metric(&server, "switchyard_low_publish_pauses_total").await,
        0.0
    );
    // A publisher of low events only is paused now; every event still gets through.
    for _ in 0..10 {
        alarm(&mut urgent).await;
        critical += 1;
        publish_all(&mut low, tick_batch(sent, 100, "low")).await;
        sent += 100;
    }
    let pauses = metric(&server, "switchyard_low_publish_pauses_total").await;
    assert!(pauses > 0.0, "no pause");
    // So is one over HTTP: 1,000 low events leave the bucket (20 ms of the rate) in debt.
    alarm(&mut urgent).await;
    critical += 1;
    let batch = tick_batch(sent, 1000, "low");
    let (status, reply) = server.post("/api/events", &batch["events"]).await;
    assert_eq!(status, 201, "{reply}");
    sent += 1000;
    let after = metric(&server, "switchyard_low_publish_pauses_total").await;
    assert_eq!(after, pauses + 1.0, "the HTTP publish did not wait");
    let pauses = after;
    let mut seen = vec![false; sent];
    let mut alarms = 0;
    for _ in 0..sent + critical {
        let e = sub.recv_event().await;
        match e["event"]["payload"]["i"].as_u64() {
            Some(i) => seen[i as usize] = true,
            None => alarms += 1,
        }
    }
    assert_eq!(alarms, critical);
    assert!(seen.iter().all(|s| *s), "a low event was lost");
    // A quiet second without urgent deliveries lifts the limit.
    actix_rt::time::sleep(switchyard::overload::QUIET + switchyard::overload::WINDOW).await;
    publish_all(&mut low, tick_batch(sent, 100, "low")).await;
    assert_eq!(metric(&server, "switchyard_low_admission_rate").await, 0.0);
    assert_eq!(
        metric(&server, "switchyard_low_publish_pauses_total").await,
        pauses
    );
}

/// Late critical events and low publishes on `low` (ticks numbered from `sent`) until
/// the server throttles low events.
async fn throttle(
    server: &TestServer,
    urgent: &mut WsClient,
    watcher: &mut WsClient,
    low: &mut WsClient,
    sent: &mut usize,
) {
    for _ in 0..100 {
        alarm(urgent).await;
        watcher.recv_event().await;
        publish_all(low, tick_batch(*sent, 10, "low")).await;
        *sent += 10;
        if metric(server, "switchyard_low_admission_rate").await > 0.0 {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("low events were never throttled");
}

#[actix_rt::test]
async fn a_paused_publisher_goes_on_receiving_its_deliveries() {
    // Against a 1 µs target every critical delivery is late; a subscriber's waiting
    // queue holds 400 events past the 512 its session may have unwritten.
    let (server, mut watcher, mut urgent) =
        late_urgent_events(1000, |l| l.max_waiting_per_subscriber = 400).await;
    let mut low = server.ws().await;
    low.subscribe(json!({"type": "pattern", "patterns": ["feed.>"]}))
        .await;
    let mut feeder = server.ws().await;
    let mut sent = 0;
    throttle(&server, &mut urgent, &mut watcher, &mut low, &mut sent).await;
    let pauses = metric(&server, "switchyard_low_publish_pauses_total").await;
    // 1,000 low events at ~1,000/s: the publisher stops reading for 100 ms ...
    low.send(&tick_batch(sent, 1000, "low")).await;
    // ... and, meanwhile, 1,500 events arrive for its subscription. A session that
    // stopped writing too would hold 512, and its worker would drop past 400 more.
    const FEED: u64 = 1500;
    let reader = actix_rt::spawn(async move {
        let (mut fed, mut dropped, mut answered) = (0, 0, false);
        while fed + dropped < FEED || !answered {
            let msg = low.recv().await;
            match msg["type"].as_str() {
                Some("event") => fed += 1,
                Some("dropped") => dropped += msg["count"].as_u64().expect("count"),
                Some("published_batch") => answered = true,
                _ => panic!("unexpected {msg}"),
            }
        }
        (fed, dropped, low)
    });
    for batch in 0..FEED / 100 {
        let events: Vec<_> = (0..100)
            .map(|i| json!({"topic": "feed.x", "type": "fed", "payload": {"i": batch * 100 + i}}))
            .collect();
        publish_all(
            &mut feeder,
            json!({"type": "publish_batch", "events": events}),
        )
        .await;
    }
    let (fed, dropped, mut low) = reader.await.expect("reader");
    let paused = metric(&server, "switchyard_low_publish_pauses_total").await;
    assert!(paused > pauses, "the publisher was not paused");
    assert_eq!((fed, dropped), (FEED, 0));
    // The limit lifts a second after the last urgent delivery (overload::QUIET), and
    // on a busy machine the feed takes longer than that: put it in force again.
    sent += 1000;
    throttle(&server, &mut urgent, &mut watcher, &mut low, &mut sent).await;
    alarm(&mut urgent).await;
    watcher.recv_event().await;
    let paused = metric(&server, "switchyard_low_publish_pauses_total").await;
    // A publisher that closes while paused: what it sent before still gets through.
    let mut tail = server.ws().await;
    tail.subscribe(json!({"type": "pattern", "patterns": ["overload.tick"]}))
        .await;
    low.send(&tick_batch(sent, 300, "low")).await;
    low.send(&tick_batch(sent + 300, 10, "low")).await;
    low.send_message(actix_http::ws::Message::Close(None)).await;
    for i in sent..sent + 310 {
        let event = tail.recv_event().await;
        assert_eq!(event["event"]["payload"]["i"], i);
    }
    assert!(metric(&server, "switchyard_low_publish_pauses_total").await > paused);
}

#[actix_rt::test]
async fn a_cut_that_does_not_make_urgent_events_timely_is_given_back() {
    // Against a 1 µs target every critical delivery is late, whatever the low rate:
    // cutting it cannot help, and the controller must find that out.
    let (server, mut watcher, mut urgent) = late_urgent_events(100, |_| {}).await;
    let mut low = server.ws().await;
    let alarms: Vec<_> = (0..20)
        .map(|_| json!({"topic": "overload.alarm", "type": "alarm", "priority": "critical"}))
        .collect();
    let alarms = json!({"type": "publish_batch", "events": alarms});
    let (mut sent, mut lowest) = (0, f64::MAX);
    for _ in 0..1000 {
        publish_all(&mut urgent, alarms.clone()).await;
        for _ in 0..20 {
            watcher.recv_event().await;
        }
        publish_all(&mut low, tick_batch(sent, 100, "low")).await;
        sent += 100;
        let rate = metric(&server, "switchyard_low_admission_rate").await;
        if rate > 0.0 {
            lowest = lowest.min(rate);
        }
        if metric(&server, "switchyard_low_admission_cuts_undone_total").await > 0.0 {
            break;
        }
    }
    assert!(
        metric(&server, "switchyard_low_admission_cuts_undone_total").await > 0.0,
        "never given back (lowest rate {lowest})"
    );
    // Back to where cutting started, at least twice the lowest rate it reached.
    let rate = metric(&server, "switchyard_low_admission_rate").await;
    assert!(rate >= 2.0 * lowest, "{rate} against {lowest}");
}
