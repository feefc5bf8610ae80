//! Durable subscriptions: position and unacknowledged events kept under
//! (principal, name) across disconnects and server restarts.

mod common;

use std::time::Duration;

use common::{TestServer, WsClient};
use serde_json::{json, Value};

fn durable(name: &str) -> Value {
    json!({"type": "pattern", "patterns": ["job.>"], "durable": name, "ack_timeout_ms": 60000})
}

/// Reads `event`s until `replay_complete`, returning the events.
async fn until_replay_complete(c: &mut WsClient) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let msg = c.recv().await;
        match msg["type"].as_str() {
            Some("event") => events.push(msg),
            Some("replay_complete") => return events,
            _ => panic!("unexpected {msg}"),
        }
    }
}

async fn ack_all(c: &mut WsClient, sid: &str, events: &[Value]) {
    let ids: Vec<Value> = events.iter().map(|e| e["event"]["id"].clone()).collect();
    c.send(&json!({"type": "ack", "subscription_id": sid, "event_ids": ids}))
        .await;
    c.assert_alive().await;
}

fn payload_ns(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["event"]["payload"]["n"].as_u64().unwrap())
        .collect()
}

async fn publish_jobs(p: &mut WsClient, range: std::ops::Range<u64>) {
    for n in range {
        p.publish(json!({"type": "job_step", "payload": {"n": n}}))
            .await;
    }
}

#[actix_rt::test]
async fn resubscribing_resumes_after_the_last_acknowledged_event() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub.subscribe(durable("billing")).await;
    assert!(
        until_replay_complete(&mut sub).await.is_empty(),
        "a new durable starts with what comes next"
    );
    let mut p = server.ws().await;
    publish_jobs(&mut p, 0..3).await;
    let got: Vec<Value> = vec![
        sub.recv_event().await,
        sub.recv_event().await,
        sub.recv_event().await,
    ];
    assert_eq!(payload_ns(&got), [0, 1, 2]);
    ack_all(&mut sub, &sid, &got[..2]).await;
    drop(sub);

    // Published while nobody listens.
    publish_jobs(&mut p, 3..5).await;
    let mut again = server.ws().await;
    let sid = again.subscribe(durable("billing")).await;
    let resumed = until_replay_complete(&mut again).await;
    assert_eq!(
        payload_ns(&resumed),
        [2, 3, 4],
        "unacked 2, then what came while away"
    );
    ack_all(&mut again, &sid, &resumed).await;
    // Live events keep flowing on the resumed subscription.
    publish_jobs(&mut p, 5..6).await;
    let live = again.recv_event().await;
    assert_eq!(live["event"]["payload"]["n"], 5);
    ack_all(&mut again, &sid, &[live]).await;
    drop(again);

    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let mut third = server.ws().await;
    third.subscribe(durable("billing")).await;
    assert!(
        until_replay_complete(&mut third).await.is_empty(),
        "everything was acknowledged"
    );
    third.expect_silence(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_durable_name_is_open_on_one_connection_at_a_time() {
    let server = TestServer::start().await;
    let mut a = server.ws().await;
    a.subscribe(durable("solo")).await;
    let mut b = server.ws().await;
    let reply = b
        .request(json!({"type": "subscribe", "subscription": durable("solo")}))
        .await;
    assert_eq!(reply["code"], "invalid_subscription", "{reply}");
    drop(a);
    let mut opened = false;
    for _ in 0..50 {
        let reply = b
            .request(json!({"type": "subscribe", "subscription": durable("solo")}))
            .await;
        if reply["type"] == "subscribed" {
            opened = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(opened, "free again once the first connection is gone");
    let (_, subs) = server.get("/api/subscriptions").await;
    assert!(subs.to_string().contains("\"durable\":\"solo\""), "{subs}");
}

#[actix_rt::test]
async fn unacknowledged_events_are_redelivered_after_a_restart() {
    let server = TestServer::start().await;
    let dir = server.data_dir.clone();
    let mut sub = server.ws().await;
    let sid = sub.subscribe(durable("audit")).await;
    until_replay_complete(&mut sub).await;
    let mut p = server.ws().await;
    publish_jobs(&mut p, 0..4).await;
    let got: Vec<Value> = vec![
        sub.recv_event().await,
        sub.recv_event().await,
        sub.recv_event().await,
        sub.recv_event().await,
    ];
    ack_all(&mut sub, &sid, &[got[0].clone(), got[2].clone()]).await;
    drop(sub);
    drop(p);
    server.stop().await;

    let server = TestServer::with_data_dir(dir, |_| {}).await;
    let mut sub = server.ws().await;
    sub.subscribe(durable("audit")).await;
    let redelivered = until_replay_complete(&mut sub).await;
    assert_eq!(payload_ns(&redelivered), [1, 3]);
    assert_eq!(redelivered[0]["event"]["id"], got[1]["event"]["id"]);
}

#[actix_rt::test]
async fn a_new_durable_subscription_can_start_from_a_cursor() {
    let server = TestServer::start().await;
    let mut p = server.ws().await;
    publish_jobs(&mut p, 0..3).await;
    let mut sub = server.ws().await;
    let mut spec = durable("history");
    spec["from_cursor"] = json!(0);
    sub.subscribe(spec).await;
    assert_eq!(
        payload_ns(&until_replay_complete(&mut sub).await),
        [0, 1, 2]
    );
}

/// A dead-lettered event is resolved for its durable subscription: resubscribing does
/// not bring it back (it waits in the dead letters instead).
#[actix_rt::test]
async fn dead_lettered_events_are_not_redelivered_on_resubscribe() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub.subscribe(durable("rejects")).await;
    until_replay_complete(&mut sub).await;
    let mut p = server.ws().await;
    publish_jobs(&mut p, 0..2).await;
    let first = sub.recv_event().await;
    let second = sub.recv_event().await;
    sub.send(&json!({"type": "nack", "subscription_id": sid, "event_id": first["event"]["id"], "requeue": false}))
        .await;
    ack_all(&mut sub, &sid, &[second]).await;
    for _ in 0..100 {
        let (_, list) = server.get("/api/dead-letters").await;
        if !list.as_array().unwrap().is_empty() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sub);
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let mut again = server.ws().await;
    again.subscribe(durable("rejects")).await;
    assert!(until_replay_complete(&mut again).await.is_empty());
}

/// Publishes `count` `job.step` events in batches of 500.
async fn publish_many(p: &mut WsClient, count: u64) {
    for start in (0..count).step_by(500) {
        let events: Vec<Value> = (start..(start + 500).min(count))
            .map(|n| json!({"type": "job_step", "payload": {"n": n}}))
            .collect();
        let reply = p
            .request(json!({"type": "publish_batch", "events": events}))
            .await;
        assert_eq!(reply["type"], "published_batch", "{reply}");
    }
}

/// A durable subscription whose replay is under way (held back by `max_in_flight`)
/// while retention removes cursors its replay has not read yet is told which ones
/// (`gap`), in place, and every other cursor arrives exactly once.
#[actix_rt::test]
async fn retention_overtaking_a_replay_in_progress_is_announced_as_a_gap() {
    const KEPT: u64 = 3000;
    const MORE: u64 = 2500;
    let server = TestServer::with(|c| c.store.max_events = KEPT).await;
    let sub = json!({"type": "pattern", "patterns": ["job.>"], "id": "d", "durable": "slow",
                     "max_in_flight": 10, "ack_timeout_ms": 60000});
    let mut c = server.ws().await;
    c.subscribe(sub.clone()).await;
    assert_eq!(c.recv().await["type"], "replay_complete");
    drop(c);

    let mut p = server.ws().await;
    publish_many(&mut p, KEPT).await;
    let mut c = server.ws().await;
    c.subscribe(sub).await;
    // The first deliveries, unacknowledged: the replay stops after a page or two.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(c.recv_event().await);
    }
    publish_many(&mut p, MORE).await;
    // Wait (bounded) until retention has passed cursor MORE.
    let mut oldest = 0;
    for _ in 0..500 {
        let (_, stats) = server.get("/api/stats").await;
        oldest = stats["store"]["first_cursor"].as_u64().unwrap_or(0);
        if oldest > MORE {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(oldest > MORE, "retention did not run: oldest kept {oldest}");

    let mut seen = Vec::new();
    let mut gaps = Vec::new();
    let mut pending: std::collections::VecDeque<Value> = held.into();
    let total = KEPT + MORE;
    while seen.last().copied().unwrap_or(0) < total {
        let msg = match pending.pop_front() {
            Some(m) => m,
            None => c.recv().await,
        };
        match msg["type"].as_str() {
            Some("event") => {
                seen.push(msg["event"]["cursor"].as_u64().unwrap());
                c.send(&json!({"type": "ack", "subscription_id": "d",
                               "event_ids": [msg["event"]["id"]]}))
                    .await;
            }
            Some("gap") => {
                assert_eq!(msg["reason"], "retention", "{msg}");
                let from = msg["from_cursor"].as_u64().unwrap();
                let to = msg["to_cursor"].as_u64().unwrap();
                assert_eq!(
                    from,
                    seen.last().copied().unwrap_or(0) + 1,
                    "{msg} after {:?}",
                    &seen[seen.len().saturating_sub(30)..]
                );
                gaps.push((from, to));
                seen.extend(from..=to);
            }
            Some("replay_complete") => {}
            _ => panic!("unexpected {msg}"),
        }
    }
    assert_eq!(gaps.len(), 1, "one gap announced: {gaps:?}");
    let (from, to) = gaps[0];
    assert!(
        from > 10 && to < oldest,
        "gap {from}..={to}, oldest kept {oldest}"
    );
    let want: Vec<u64> = (1..=total).collect();
    assert_eq!(seen.len(), want.len(), "every cursor once (gaps included)");
    assert_eq!(seen, want, "in order, with nothing skipped in silence");
    c.assert_alive().await;
}

/// An `ack` sent right before `unsubscribe` is recorded: the durable subscription,
/// resumed, gets none of those events again. (The ack used to reach the delivery
/// worker after the subscription had ended, answered `unknown_event`.)
#[actix_rt::test]
async fn acks_sent_right_before_unsubscribe_are_recorded() {
    let server = TestServer::start().await;
    let mut p = server.ws().await;
    let mut c = server.ws().await;
    let sub = durable("quick");
    for round in 0..10u64 {
        let sid = c.subscribe(sub.clone()).await;
        let replayed = until_replay_complete(&mut c).await;
        assert_eq!(
            replayed,
            Vec::<Value>::new(),
            "round {round}: nothing comes again"
        );
        publish_jobs(&mut p, round * 20..round * 20 + 20).await;
        for e in take_events(&mut c, 20).await {
            c.send(
                &json!({"type": "ack", "subscription_id": sid, "event_ids": [e["event"]["id"]]}),
            )
            .await;
        }
        let reply = c
            .request(json!({"type": "unsubscribe", "subscription_id": sid}))
            .await;
        assert_eq!(reply["type"], "unsubscribed", "round {round}: {reply}");
    }
    c.assert_alive().await;
}

async fn take_events(c: &mut WsClient, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    while events.len() < n {
        events.push(c.recv_event().await);
    }
    events
}
