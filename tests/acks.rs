//! At-least-once delivery (docs/protocol.md sections 3.5, 3.6 and 4.8): ack, nack,
//! timeouts, attempts, max_in_flight, TTL, dead letters over WebSocket and HTTP.

mod common;

use std::time::Duration;

use common::{TestServer, WsClient};
use serde_json::{json, Value};

async fn ack(c: &mut WsClient, sid: &str, event_id: &Value) {
    c.send(&json!({"type": "ack", "subscription_id": sid, "event_id": event_id}))
        .await;
}

/// Publishes a `job_run` event with `payload` on `p`, receives it on `sub` and rejects
/// it (`nack` without requeue): one dead letter, reason `rejected`.
async fn publish_and_reject(p: &mut WsClient, sub: &mut WsClient, sid: &str, payload: Value) {
    p.publish(json!({"type": "job_run", "payload": payload}))
        .await;
    let e = sub.recv_event().await;
    sub.send(&json!({"type": "nack", "subscription_id": sid, "event_id": e["event"]["id"], "requeue": false}))
        .await;
}

/// A connection with an acknowledged subscription to `job.*`, and its id.
async fn job_worker(server: &TestServer) -> (WsClient, String) {
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "pattern", "patterns": ["job.*"], "ack": true}))
        .await;
    (sub, sid)
}

/// Waits (bounded) until `/api/dead-letters` lists `n` entries.
async fn dead_letters(server: &TestServer, n: usize) -> Vec<Value> {
    dead_letters_until(server, |list| list.len() >= n).await
}

/// Waits (bounded, 4 s) until the list of `/api/dead-letters` satisfies `done`.
async fn dead_letters_until(server: &TestServer, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut list = Vec::new();
    for _ in 0..200 {
        let (status, body) = server.get("/api/dead-letters").await;
        assert_eq!(status, 200);
        list = body.as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("dead letters not as expected after 4 s: {list:?}");
}

#[actix_rt::test]
async fn acked_delivery_is_not_redelivered() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "all", "ack": true, "ack_timeout_ms": 150}))
        .await;
    let mut p = server.ws().await;
    p.publish(json!({"type": "task_created"})).await;
    let e = sub.recv_event().await;
    assert_eq!(e["attempt"], 1);
    ack(&mut sub, &sid, &e["event"]["id"]).await;
    // No reply on success, and no redelivery after the timeout.
    sub.expect_silence(Duration::from_millis(400)).await;
    let (_, subs) = server.get("/api/subscriptions").await;
    let row = &subs["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| !c["subscriptions"].as_array().unwrap().is_empty())
        .unwrap()["subscriptions"][0];
    assert_eq!(row["ack"], true);
    assert_eq!(row["in_flight"], 0);
}

#[actix_rt::test]
async fn event_ids_list_acks_several_and_unknown_ids_get_unknown_event() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub.subscribe(json!({"type": "all", "ack": true})).await;
    let mut p = server.ws().await;
    p.publish(json!({"type": "one_event"})).await;
    p.publish(json!({"type": "two_event"})).await;
    let a = sub.recv_event().await["event"]["id"].clone();
    let b = sub.recv_event().await["event"]["id"].clone();
    sub.send(&json!({"type": "ack", "subscription_id": sid, "event_ids": [a, b]}))
        .await;
    // No error comes back: the next message answers the ping.
    sub.assert_alive().await;
    let reply = sub
        .request(json!({"type": "ack", "subscription_id": sid, "event_ids": [a, "zzz"], "request_id": 1}))
        .await;
    assert_eq!(reply["code"], "unknown_event", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("zzz"));
}

#[actix_rt::test]
async fn unacked_delivery_times_out_and_is_redelivered_with_next_attempt() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "all", "ack": true, "ack_timeout_ms": 100}))
        .await;
    let mut p = server.ws().await;
    let published = p.publish(json!({"type": "task_created"})).await;
    let first = sub.recv_event().await;
    assert_eq!(first["attempt"], 1);
    let second = sub.recv_event().await;
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["event"]["id"], published["event_id"]);
    assert_eq!(second["event"]["cursor"], published["cursor"]);
    ack(&mut sub, &sid, &second["event"]["id"]).await;
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[actix_rt::test]
async fn max_attempts_dead_letters_and_publishes_a_notice() {
    let server = TestServer::start().await;
    let mut watcher = server.ws().await;
    watcher
        .subscribe(json!({"type": "pattern", "patterns": ["switchyard.dead_letter"]}))
        .await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "pattern", "patterns": ["task.>"], "id": "worker", "ack": true, "ack_timeout_ms": 80, "max_attempts": 2}))
        .await;
    let mut p = server.ws().await;
    let published = p
        .publish(json!({"type": "task_failed", "priority": "high"}))
        .await;
    assert_eq!(sub.recv_event().await["attempt"], 1);
    assert_eq!(sub.recv_event().await["attempt"], 2);
    let list = dead_letters(&server, 1).await;
    let dl = &list[0];
    assert_eq!(dl["reason"], "max_attempts");
    assert_eq!(dl["attempts"], 2);
    assert_eq!(dl["subscription"], "worker");
    assert_eq!(dl["event"]["id"], published["event_id"]);
    assert!(dl["id"].as_u64().is_some());
    assert!(chrono::DateTime::parse_from_rfc3339(dl["dead_at"].as_str().unwrap()).is_ok());
    let notice = watcher.recv_event().await["event"].clone();
    assert_eq!(notice["topic"], "switchyard.dead_letter");
    assert_eq!(notice["payload"]["reason"], "max_attempts");
    assert_eq!(notice["payload"]["event"]["id"], published["event_id"]);
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["events"]["dead_lettered"]["high"], 1);
    assert_eq!(stats["store"]["dead_letters"], 1);
    // The dead subscription's event does not come back.
    let _ = sid;
    sub.expect_silence(Duration::from_millis(250)).await;
}

#[actix_rt::test]
async fn nack_with_delay_redelivers_and_nack_without_requeue_dead_letters() {
    let server = TestServer::start().await;
    let (mut sub, sid) = job_worker(&server).await;
    let mut p = server.ws().await;
    p.publish(json!({"type": "job_one"})).await;
    let e = sub.recv_event().await;
    sub.send(&json!({"type": "nack", "subscription_id": sid, "event_id": e["event"]["id"], "requeue": true, "delay_ms": 150}))
        .await;
    let reply = sub.recv().await;
    // No reply to a good nack: the next message is the redelivery, after the delay.
    assert_eq!(reply["type"], "event", "{reply}");
    assert_eq!(reply["attempt"], 2);
    assert_eq!(reply["event"]["id"], e["event"]["id"]);
    sub.send(&json!({"type": "nack", "subscription_id": sid, "event_id": e["event"]["id"], "requeue": false}))
        .await;
    let list = dead_letters(&server, 1).await;
    assert_eq!(list[0]["reason"], "rejected");
    assert_eq!(list[0]["attempts"], 2);
    // Nacking what is not in flight is an error.
    let reply = sub
        .request(json!({"type": "nack", "subscription_id": sid, "event_id": e["event"]["id"]}))
        .await;
    assert_eq!(reply["code"], "unknown_event");
}

#[actix_rt::test]
async fn ack_errors() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub.subscribe(json!({"type": "all", "ack": true})).await;
    let reply = sub
        .request(json!({"type": "ack", "subscription_id": sid, "event_id": "never-sent", "request_id": 4}))
        .await;
    assert_eq!(reply["code"], "unknown_event");
    assert_eq!(reply["request_id"], 4);
    let reply = sub
        .request(json!({"type": "ack", "subscription_id": "nope", "event_id": "x"}))
        .await;
    assert_eq!(reply["code"], "unknown_subscription");
    let reply = sub
        .request(json!({"type": "subscribe", "subscription": {"type": "all", "max_in_flight": 5}}))
        .await;
    assert_eq!(
        reply["code"], "invalid_subscription",
        "ack options need ack: true"
    );
}

/// With `max_in_flight: 1`, a critical event published after thirty low ones is
/// delivered within the next couple of deliveries.
#[actix_rt::test]
async fn waiting_deliveries_are_released_highest_priority_first() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "all", "ack": true, "max_in_flight": 1}))
        .await;
    let mut p = server.ws().await;
    for i in 0..30 {
        p.publish(json!({"type": "bulk_low", "priority": "low", "payload": {"i": i}}))
            .await;
    }
    p.publish(json!({"type": "urgent_fix", "priority": "critical"}))
        .await;
    let mut position = None;
    for n in 0..31 {
        let e = sub.recv_event().await;
        assert_eq!(e["attempt"], 1);
        if e["event"]["priority"] == "critical" {
            position = Some(n);
        }
        ack(&mut sub, &sid, &e["event"]["id"]).await;
    }
    let position = position.expect("critical delivered");
    assert!(position <= 2, "critical came as delivery #{position}");
}

#[actix_rt::test]
async fn expired_unacked_delivery_is_dead_lettered_as_expired() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "pattern", "patterns": ["short.*"], "ack": true, "ack_timeout_ms": 200, "max_attempts": 10}))
        .await;
    let mut p = server.ws().await;
    p.publish(json!({"type": "short_lived", "ttl_ms": 100}))
        .await;
    assert_eq!(sub.recv_event().await["attempt"], 1);
    let list = dead_letters(&server, 1).await;
    assert_eq!(list[0]["reason"], "expired");
    assert_eq!(list[0]["attempts"], 1);
    sub.expect_silence(Duration::from_millis(300)).await;
}

/// Past `store.max_dead_letters` the oldest dead letters go, and the count of those
/// deleted is in `/api/stats`; for both stores.
#[actix_rt::test]
async fn dead_letters_are_bounded_oldest_first() {
    use switchyard::config::StoreKind;
    for kind in [StoreKind::Sqlite, StoreKind::Memory] {
        let server = TestServer::with(|c| {
            c.store.kind = kind;
            c.store.max_dead_letters = 2;
        })
        .await;
        let (mut sub, sid) = job_worker(&server).await;
        let mut p = server.ws().await;
        for n in 0..5 {
            publish_and_reject(&mut p, &mut sub, &sid, json!({"n": n})).await;
        }
        let n_of = |d: &Value| d["event"]["payload"]["n"].as_u64();
        // Dead letters are stored asynchronously: wait for the newest to be listed.
        let list = dead_letters_until(&server, |l| l.last().and_then(n_of) == Some(4)).await;
        let kept: Vec<Option<u64>> = list.iter().map(n_of).collect();
        assert_eq!(kept, [Some(3), Some(4)], "{kind:?}");
        let (_, stats) = server.get("/api/stats").await;
        assert_eq!(stats["store"]["dead_letters"], 2, "{kind:?}");
        assert_eq!(stats["store"]["dead_letters_evicted"], 3, "{kind:?}");
        let (_, metrics) = server.get_text("/metrics").await;
        assert!(
            metrics
                .lines()
                .any(|l| l == "switchyard_dead_letters_evicted_total 3"),
            "{kind:?}: {metrics}"
        );
        assert_eq!(stats["events"]["dead_lettered"]["total"], 5, "{kind:?}");
    }
}

#[actix_rt::test]
async fn dead_letters_can_be_retried_listed_and_deleted_over_http() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "pattern", "patterns": ["job.*"], "id": "w", "ack": true}))
        .await;
    let mut p = server.ws().await;
    for n in 0..3 {
        publish_and_reject(&mut p, &mut sub, &sid, json!({"n": n})).await;
    }
    let list = dead_letters(&server, 3).await;
    let ids: Vec<u64> = list.iter().map(|d| d["id"].as_u64().unwrap()).collect();
    let (_, page) = server
        .get(&format!("/api/dead-letters?after={}&limit=1", ids[0]))
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["id"], ids[1]);

    // Retry to the live subscription: delivered again, as attempt 1.
    let (status, body) = server
        .post(&format!("/api/dead-letters/{}/retry", ids[0]), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retried"], "redelivered");
    let again = sub.recv_event().await;
    assert_eq!(again["event"]["payload"]["n"], 0);
    assert_eq!(again["attempt"], 1);
    ack(&mut sub, &sid, &again["event"]["id"]).await;

    // Delete.
    let res = awc::Client::new()
        .delete(server.url(&format!("/api/dead-letters/{}", ids[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let (status, body) = server
        .post(&format!("/api/dead-letters/{}/retry", ids[1]), &json!({}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    // Retry after the subscription is gone: republished as a new event.
    drop(sub);
    let mut watcher = server.ws().await;
    watcher
        .subscribe(json!({"type": "pattern", "patterns": ["job.*"]}))
        .await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = server
        .post(&format!("/api/dead-letters/{}/retry", ids[2]), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retried"], "republished");
    let e = watcher.recv_event().await;
    assert_eq!(e["event"]["payload"]["n"], 2);
    assert_eq!(e["event"]["cursor"], body["cursor"]);
    let (_, rest) = server.get("/api/dead-letters").await;
    assert!(rest.as_array().unwrap().is_empty());
    let (status, _) = server.get("/api/dead-letters?limit=zero").await;
    assert_eq!(status, 400);
}

/// Replayed events of an acknowledged subscription are deliveries like live ones:
/// bounded by `max_in_flight` and redelivered until acknowledged.
#[actix_rt::test]
async fn replayed_events_are_acknowledged_deliveries_too() {
    let server = TestServer::start().await;
    let mut p = server.ws().await;
    for i in 0..3 {
        p.publish(json!({"type": "audit_entry", "payload": {"i": i}}))
            .await;
    }
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "pattern", "patterns": ["audit.*"], "from_cursor": 0, "ack": true, "max_in_flight": 1, "ack_timeout_ms": 150}))
        .await;
    let first = sub.recv_event().await;
    assert_eq!(first["event"]["payload"]["i"], 0);
    // max_in_flight 1: nothing else until the first is acked; unacked, it comes back.
    let again = sub.recv_event().await;
    assert_eq!(again["event"]["id"], first["event"]["id"]);
    assert_eq!(again["attempt"], 2);
    ack(&mut sub, &sid, &again["event"]["id"]).await;
    for i in 1..3 {
        let e = sub.recv_event().await;
        assert_eq!(e["event"]["payload"]["i"], i);
        ack(&mut sub, &sid, &e["event"]["id"]).await;
    }
    assert_eq!(sub.recv().await["type"], "replay_complete");
    sub.expect_silence(Duration::from_millis(300)).await;
}

/// A subscriber that never acknowledges dead-letter notices does not start a loop:
/// a notice is not in the log and the dead letter it announces is stored already, so
/// an unacknowledged notice is let go, neither stored nor announced again.
#[actix_rt::test]
async fn dead_notices_do_not_feed_themselves() {
    let server = TestServer::start().await;
    let mut lazy = server.ws().await;
    lazy.subscribe(json!({"type": "pattern", "patterns": ["switchyard.>"], "ack": true, "ack_timeout_ms": 50, "max_attempts": 1}))
        .await;
    let (mut sub, sid) = job_worker(&server).await;
    let mut p = server.ws().await;
    publish_and_reject(&mut p, &mut sub, &sid, json!({})).await;
    let notice = lazy.recv_event().await;
    assert_eq!(notice["event"]["topic"], "switchyard.dead_letter");
    assert_eq!(notice["event"]["cursor"], 0, "not in the log");
    dead_letters(&server, 1).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let (_, all) = server.get("/api/dead-letters").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    lazy.expect_silence(Duration::from_millis(100)).await;
}
