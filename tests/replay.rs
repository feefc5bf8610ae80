//! Replay (`from_cursor`, `since`, connect-time `cursor=`) then live delivery, with no
//! gap and no duplicate, also while a publisher keeps publishing.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestServer, WsClient};
use serde_json::{json, Value};

/// Publishes `n` events on `topic` and returns their cursors.
async fn publish_n(c: &mut WsClient, topic: &str, n: usize) -> Vec<u64> {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"topic": topic, "payload": {"i": i}}))
        .collect();
    let reply = c
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    reply["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cursor"].as_u64().expect("published"))
        .collect()
}

/// Reads events until `replay_complete`; returns the replayed cursors and its message.
async fn read_replay(c: &mut WsClient, sid: &str) -> (Vec<u64>, Value) {
    let mut cursors = Vec::new();
    loop {
        let msg = c.recv().await;
        match msg["type"].as_str() {
            Some("event") => {
                assert_eq!(msg["subscription_id"], sid);
                assert_eq!(msg["attempt"], 1);
                cursors.push(msg["event"]["cursor"].as_u64().unwrap());
            }
            Some("replay_complete") => return (cursors, msg),
            _ => panic!("unexpected during replay: {msg}"),
        }
    }
}

#[actix_rt::test]
async fn from_cursor_replays_stored_matches_then_continues_live() {
    let server = TestServer::start().await;
    let mut p = server.ws().await;
    let tasks = publish_n(&mut p, "task.created", 5).await;
    let agents = publish_n(&mut p, "agent.started", 3).await;

    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "pattern", "id": "r", "patterns": ["task.*"], "from_cursor": 0}))
        .await;
    let (replayed, done) = read_replay(&mut sub, &sid).await;
    assert_eq!(replayed, tasks);
    assert_eq!(done["subscription_id"], "r");
    assert!(done["last_cursor"].as_u64().unwrap() >= *agents.last().unwrap());

    let live = publish_n(&mut p, "task.created", 1).await;
    assert_eq!(sub.recv_event().await["event"]["cursor"], live[0]);

    // From a cursor in the middle: only what follows it.
    let mut sub2 = server.ws().await;
    let sid2 = sub2
        .subscribe(json!({"type": "all", "from_cursor": tasks[2]}))
        .await;
    let (replayed, _) = read_replay(&mut sub2, &sid2).await;
    let mut want: Vec<u64> = tasks[3..]
        .iter()
        .chain(&agents)
        .chain(&live)
        .copied()
        .collect();
    want.sort_unstable();
    assert_eq!(replayed, want);
    sub2.expect_silence(Duration::from_millis(150)).await;
}

/// What a replay sends is what live delivery sent, field for field, from either store
/// (the memory store keeps only the envelope and decodes it when read).
#[actix_rt::test]
async fn replayed_envelopes_equal_the_live_ones_in_both_stores() {
    use switchyard::config::StoreKind;
    for kind in [StoreKind::Memory, StoreKind::Sqlite] {
        let server = TestServer::with(|c| c.store.kind = kind).await;
        let mut live = server.ws().await;
        live.subscribe(json!({"type": "all"})).await;
        let mut p = server.ws().await;
        let events = [
            json!({"topic": "task.created", "type": "task_created", "priority": "high",
                   "payload": {"id": "t-1", "nested": {"n": [1, 2.5, null, "é\u{0}"]}},
                   "metadata": {"team": "a"}, "correlation_id": "c-1", "ttl_ms": 60000}),
            json!({"topic": "agent.failed", "priority": "critical", "agent_id": "a-7",
                   "payload": "just text"}),
            json!({"topic": "logs.error", "type": "error_line", "priority": "low"}),
        ];
        let reply = p
            .request(json!({"type": "publish_batch", "events": events}))
            .await;
        assert_eq!(reply["results"].as_array().unwrap().len(), 3, "{reply}");
        let mut delivered = Vec::new();
        for _ in 0..3 {
            delivered.push(live.recv_event().await["event"].clone());
        }
        // Live delivery is in priority order; the log is in cursor order.
        delivered.sort_by_key(|e| e["cursor"].as_u64());

        let mut sub = server.ws().await;
        let sid = sub
            .subscribe(json!({"type": "pattern", "patterns": [">"], "from_cursor": 0}))
            .await;
        let mut replayed = Vec::new();
        loop {
            let msg = sub.recv().await;
            match msg["type"].as_str() {
                Some("event") => {
                    assert_eq!(msg["subscription_id"], sid);
                    replayed.push(msg["event"].clone());
                }
                Some("replay_complete") => break,
                _ => panic!("unexpected during replay: {msg}"),
            }
        }
        assert_eq!(replayed, delivered, "{kind:?}");
        assert_eq!(replayed[0]["payload"]["nested"]["n"][3], "é\u{0}");
        assert_eq!(replayed[1]["agent_id"], "a-7");

        // The HTTP log reads the same envelopes, filtered by the stored fields.
        let (_, page) = server
            .get("/api/events?topic=task.*&type=task_created&priority=high")
            .await;
        assert_eq!(page, json!([delivered[0]]), "{kind:?}");
        let (_, page) = server.get("/api/events?order=desc&limit=2").await;
        assert_eq!(page, json!([delivered[2], delivered[1]]), "{kind:?}");
    }
}

/// With the memory store too, a read that follows a `published` reply finds the event,
/// every time.
#[actix_rt::test]
async fn memory_store_reads_after_published_see_the_event() {
    use switchyard::config::StoreKind;
    let server = TestServer::with(|c| c.store.kind = StoreKind::Memory).await;
    let mut p = server.ws().await;
    for i in 0..50 {
        let cursor = p
            .publish(json!({"topic": "task.created", "payload": {"i": i}}))
            .await["cursor"]
            .as_u64()
            .unwrap();
        let (_, page) = server
            .get(&format!("/api/events?after={}", cursor - 1))
            .await;
        assert_eq!(page[0]["cursor"], cursor, "HTTP read after publish {i}");
        let mut sub = server.ws().await;
        let sid = sub
            .subscribe(json!({"type": "all", "from_cursor": cursor - 1}))
            .await;
        let (replayed, _) = read_replay(&mut sub, &sid).await;
        assert_eq!(replayed, [cursor], "replay after publish {i}");
    }
}

#[actix_rt::test]
async fn since_replays_events_from_that_time() {
    let server = TestServer::start().await;
    let mut p = server.ws().await;
    p.publish(json!({"type": "old_one", "timestamp": "2026-01-01T00:00:00Z"}))
        .await;
    let newer = p
        .publish(json!({"type": "new_one", "timestamp": "2026-06-01T00:00:00Z"}))
        .await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "all", "since": "2026-03-01T00:00:00Z"}))
        .await;
    let (replayed, _) = read_replay(&mut sub, &sid).await;
    assert_eq!(replayed, [newer["cursor"].as_u64().unwrap()]);
}

#[actix_rt::test]
async fn connect_time_cursor_replays_after_subscribed() {
    let server = TestServer::start().await;
    let mut p = server.ws().await;
    let c = publish_n(&mut p, "task.created", 4).await;
    let mut sub =
        WsClient::connect(&server.ws_url(&format!("/ws?topics=task.*&cursor={}", c[1]))).await;
    let first = sub.recv().await;
    assert_eq!(first["type"], "subscribed");
    let sid = first["subscription_id"].as_str().unwrap().to_owned();
    let (replayed, _) = read_replay(&mut sub, &sid).await;
    assert_eq!(replayed, c[2..]);
    let bad = WsClient::try_connect(&server.ws_url("/ws?topics=task.*&cursor=abc"))
        .await
        .err();
    assert_eq!(bad, Some(400));
}

#[actix_rt::test]
async fn empty_replay_still_completes() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "all", "from_cursor": 0}))
        .await;
    let (replayed, done) = read_replay(&mut sub, &sid).await;
    assert!(replayed.is_empty());
    assert_eq!(done["last_cursor"], 0);
}

/// A publisher keeps publishing while subscribers join with `from_cursor: 0` at
/// different moments: each sees every event exactly once.
#[actix_rt::test]
async fn replay_then_live_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    use switchyard::config::StoreKind;
    for kind in [StoreKind::Sqlite, StoreKind::Memory] {
        replay_then_live_without_gap(TestServer::with(|c| c.store.kind = kind).await).await;
    }
}

async fn replay_then_live_without_gap(server: TestServer) {
    let total = 3000usize;
    let mut p = server.ws().await;
    let publisher = actix_rt::spawn(async move {
        let mut cursors = Vec::new();
        for _ in 0..(total / 20) {
            cursors.extend(publish_n(&mut p, "flow.event", 20).await);
        }
        cursors
    });
    let mut subs = Vec::new();
    for delay in [5u64, 40, 120] {
        actix_rt::time::sleep(Duration::from_millis(delay)).await;
        let mut c = server.ws().await;
        let sid = c.subscribe(json!({"type": "all", "from_cursor": 0})).await;
        subs.push((c, sid));
    }
    let published: Vec<u64> = publisher.await.unwrap();
    assert_eq!(published.len(), total);
    for (mut c, sid) in subs {
        let (replayed, _) = read_replay(&mut c, &sid).await;
        assert!(
            replayed.windows(2).all(|w| w[0] < w[1]),
            "replay in cursor order"
        );
        let mut seen: Vec<u64> = replayed;
        while seen.len() < total {
            let msg = c.recv().await;
            assert_eq!(msg["type"], "event", "{msg}");
            seen.push(msg["event"]["cursor"].as_u64().unwrap());
        }
        let unique: HashSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no duplicate");
        assert_eq!(
            unique,
            published.iter().copied().collect::<HashSet<u64>>(),
            "no gap"
        );
        c.expect_silence(Duration::from_millis(100)).await;
    }
}

/// A subscriber disconnects mid-stream and reconnects with `from_cursor` = the last
/// cursor it saw: it receives everything after it exactly once.
#[actix_rt::test]
async fn reconnect_from_last_seen_cursor_resumes_exactly() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "pattern", "patterns": ["job.>"]}))
        .await;
    let mut p = server.ws().await;
    let first = publish_n(&mut p, "job.step", 10).await;
    let mut last_seen = 0;
    for _ in 0..4 {
        last_seen = sub.recv_event().await["event"]["cursor"].as_u64().unwrap();
    }
    drop(sub);
    let second = publish_n(&mut p, "job.step", 10).await;

    let mut again = server.ws().await;
    let sid = again
        .subscribe(json!({"type": "pattern", "patterns": ["job.>"], "from_cursor": last_seen}))
        .await;
    let (replayed, _) = read_replay(&mut again, &sid).await;
    let want: Vec<u64> = first[4..].iter().chain(&second).copied().collect();
    assert_eq!(replayed, want);
    again.expect_silence(Duration::from_millis(150)).await;
}

#[actix_rt::test]
async fn replay_reads_the_durable_store_after_a_restart() {
    let server = TestServer::start().await;
    let dir = server.data_dir.clone();
    let mut p = server.ws().await;
    let mut cursors = Vec::new();
    for _ in 0..5 {
        cursors.extend(publish_n(&mut p, "audit.entry", 500).await);
    }
    drop(p);
    server.stop().await;

    let server = TestServer::with_data_dir(dir, |_| {}).await;
    let mut sub = server.ws().await;
    let sid = sub
        .subscribe(json!({"type": "pattern", "patterns": ["audit.*"], "from_cursor": 0}))
        .await;
    let (replayed, done) = read_replay(&mut sub, &sid).await;
    assert_eq!(replayed, cursors);
    assert_eq!(done["last_cursor"].as_u64(), cursors.last().copied());
}
