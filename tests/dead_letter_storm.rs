//! Dead letters under hostile subscribers (issue 21, points 4 and 7): a subscriber that
//! fails everything on many subscriptions cannot multiply store writes, evict other
//! connections' dead letters or push events out of retention; notices show the dead
//! event only to readers allowed to read it; `switchyard.>` is the server's own; and a
//! durable subscription that retention overtook is told which cursors it lost.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, WsClient};
use serde_json::{json, Value};
use switchyard::config::{Config, TokenConfig};

/// `/api/stats`, with the numbers these tests watch.
struct Counts {
    /// Cursors handed out: every event appended to the log.
    last_cursor: u64,
    /// Dead letters ever stored: those listed plus those evicted.
    dead_letters_added: u64,
    evicted: u64,
    shed: u64,
}

async fn counts(server: &TestServer) -> Counts {
    counts_as(server, None).await
}

async fn counts_as(server: &TestServer, token: Option<&str>) -> Counts {
    let (status, stats) = server.call("GET", "/api/stats", token, None).await;
    assert_eq!(status, 200, "{stats}");
    let store = &stats["store"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Counts {
        last_cursor: n(&store["last_cursor"]),
        dead_letters_added: n(&store["dead_letters"]) + n(&store["dead_letters_evicted"]),
        evicted: n(&store["dead_letters_evicted"]),
        shed: n(&stats["events"]["dead_letters_shed"]),
    }
}

/// Publishes one `job.run` event and rejects its delivery on `sub`: one real dead letter.
async fn real_dead_letter(server: &TestServer, sub: &mut WsClient, sid: &str) -> Value {
    let mut p = server.ws().await;
    let published = p
        .publish(json!({"topic": "job.run", "type": "job", "payload": {"real": true}}))
        .await;
    let delivery = sub.recv_event().await;
    assert_eq!(delivery["event"]["id"], published["event_id"]);
    // No reply on success: a ping's pong shows the nack was taken.
    sub.send(&json!({"type": "nack", "subscription_id": sid, "event_id": published["event_id"], "requeue": false}))
        .await;
    sub.assert_alive().await;
    published
}

/// Waits (bounded) until `/api/dead-letters` lists a dead letter of event `event_id`.
async fn listed(server: &TestServer, event_id: &Value) -> bool {
    for _ in 0..100 {
        let (_, list) = server.get("/api/dead-letters?limit=1000").await;
        if list
            .as_array()
            .is_some_and(|l| l.iter().any(|d| d["event"]["id"] == *event_id))
        {
            return true;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Reads whatever arrives on `c` for `wait`, so that its socket never blocks.
async fn drain(c: &mut WsClient, wait: Duration) -> usize {
    let until = Instant::now() + wait;
    let mut n = 0;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match c.try_recv(left.min(Duration::from_millis(50))).await {
            Some(_) => n += 1,
            None if Instant::now() >= until => break,
            None => {}
        }
    }
    n
}

/// 100 subscriptions that let every delivery time out after 1 ms, while events flow:
/// the log gets only the published events (notices are not stored), dead letters are
/// stored at the connection's budget and no faster, the real dead letter of another
/// connection is neither evicted nor lost, every bystander event is still retained
/// and was delivered, and the server stays healthy.
#[actix_rt::test]
async fn a_dead_letter_storm_is_contained() {
    const RATE: u64 = 20;
    const STORM_EVENTS: u64 = 30;
    const KEPT: u64 = 40;
    let server = TestServer::with(|c| {
        c.limits.dead_letters_per_sec = RATE as u32;
        c.store.max_dead_letters = 300;
        c.store.max_events = 400;
    })
    .await;

    // A normal worker whose one rejected job is a real dead letter.
    let mut worker = server.ws().await;
    let wid = worker
        .subscribe(json!({"type": "pattern", "patterns": ["job.>"], "id": "jobs", "ack": true}))
        .await;
    let real = real_dead_letter(&server, &mut worker, &wid).await;
    assert!(listed(&server, &real["event_id"]).await, "real dead letter");

    let mut bystander = server.ws().await;
    bystander
        .subscribe(json!({"type": "pattern", "patterns": ["keep.>"]}))
        .await;
    let mut watcher = server.ws().await;
    watcher
        .subscribe(json!({"type": "pattern", "patterns": ["switchyard.dead_letter"]}))
        .await;

    let mut storm = server.ws().await;
    for i in 0..100 {
        storm
            .subscribe(json!({"type": "all", "id": format!("s{i}"), "ack": true, "max_attempts": 1, "ack_timeout_ms": 1}))
            .await;
    }
    let before = counts(&server).await;
    let started = Instant::now();
    let mut p = server.ws().await;
    for i in 0..STORM_EVENTS.max(KEPT) {
        if i < STORM_EVENTS {
            p.publish(json!({"topic": "storm.tick", "payload": {"i": i}}))
                .await;
        }
        if i < KEPT {
            p.publish(json!({"topic": "keep.note", "payload": {"i": i}}))
                .await;
        }
    }
    // Every (event, subscription) pair of the storm dies once: stored or shed.
    let attempted = 100 * (STORM_EVENTS + KEPT);
    let mut after = counts(&server).await;
    for _ in 0..60 {
        let done =
            (after.dead_letters_added - before.dead_letters_added) + (after.shed - before.shed);
        if done >= attempted {
            break;
        }
        drain(&mut storm, Duration::from_millis(250)).await;
        drain(&mut watcher, Duration::from_millis(10)).await;
        after = counts(&server).await;
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Store writes: the log grew by the published events alone ...
    assert_eq!(
        after.last_cursor - before.last_cursor,
        STORM_EVENTS + KEPT,
        "the log holds only published events, no notices"
    );
    // ... and dead letters by the connection's budget at most (one second's burst, then
    // the rate); the rest were counted as shed.
    let added = after.dead_letters_added - before.dead_letters_added;
    let shed = after.shed - before.shed;
    let most = RATE + (elapsed.ceil() as u64) * RATE;
    assert!(
        added <= most,
        "{added} dead letters stored in {elapsed:.1} s, budget {most}"
    );
    assert_eq!(added + shed, attempted, "{added} stored, {shed} shed");
    assert_eq!(after.evicted, 0, "no dead letter was evicted");
    assert!(
        listed(&server, &real["event_id"]).await,
        "real dead letter kept"
    );

    // Every bystander event is still retained, and was delivered.
    let (status, kept) = server.get("/api/events?topic=keep.%3E&limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(kept.as_array().map(Vec::len), Some(KEPT as usize), "{kept}");
    for i in 0..KEPT {
        assert_eq!(bystander.recv_event().await["event"]["payload"]["i"], i);
    }
    bystander.assert_alive().await;
    storm.assert_alive().await;
    worker.assert_alive().await;
}

/// `switchyard.>` is the server's: a client's publish there is refused `forbidden` over
/// WebSocket, in a batch and over HTTP, and reaches no subscriber.
#[actix_rt::test]
async fn switchyard_topics_are_reserved_to_the_server() {
    let server = TestServer::start().await;
    let mut watcher = server.ws().await;
    watcher
        .subscribe(json!({"type": "pattern", "patterns": ["switchyard.>"]}))
        .await;
    let mut bystander = server.ws().await;
    bystander
        .subscribe(json!({"type": "pattern", "patterns": ["task.>"]}))
        .await;
    let mut p = server.ws().await;
    let forged = json!({"topic": "switchyard.dead_letter", "type": "dead_letter", "payload": {"reason": "forged"}});
    let reply = p
        .request(json!({"type": "publish_event", "event": forged}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");

    let reply = p
        .request(json!({"type": "publish_batch", "events": [{"topic": "switchyard.x"}, {"topic": "task.ok"}]}))
        .await;
    assert_eq!(reply["type"], "published_batch", "{reply}");
    assert_eq!(reply["results"][0]["error"]["code"], "forbidden", "{reply}");
    assert!(reply["results"][1]["cursor"].as_u64().is_some(), "{reply}");

    let (status, body) = server.post("/api/events", &forged).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    assert_eq!(bystander.recv_event().await["event"]["topic"], "task.ok");
    watcher.expect_silence(Duration::from_millis(300)).await;
    let (_, stored) = server.get("/api/events?topic=switchyard.%3E").await;
    assert_eq!(stored, json!([]), "nothing stored under switchyard.>");
    p.assert_alive().await;
}

const WORKER: &str = "worker-token-0123456789";
const WATCHER: &str = "watcher-token-0123456789";
const OPS: &str = "ops-token-0123456789abcd";

fn token(name: &str, token: &str, publish: &[&str], subscribe: &[&str]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token: token.into(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        admin: false,
        sources: vec![],
    }
}

fn with_tokens(c: &mut Config) {
    c.auth.tokens = vec![
        token("worker", WORKER, &["job.>"], &["job.>"]),
        token("watcher", WATCHER, &[], &["switchyard.>"]),
        token("ops", OPS, &[], &[">"]),
    ];
}

/// A dead-letter notice carries the dead letter's metadata to every reader of
/// `switchyard.dead_letter`, and the dead event itself only to readers whose grant
/// covers the event's topic.
#[actix_rt::test]
async fn dead_letter_notices_show_the_event_only_to_readers_of_its_topic() {
    let server = TestServer::with(with_tokens).await;
    let ws = |token: &'static str| {
        let url = server.ws_url("/ws");
        async move {
            WsClient::try_connect_as(&url, Some(token))
                .await
                .expect("upgrade")
        }
    };
    let mut watcher = ws(WATCHER).await;
    watcher
        .subscribe(json!({"type": "pattern", "patterns": ["switchyard.dead_letter"]}))
        .await;
    let mut ops = ws(OPS).await;
    ops.subscribe(json!({"type": "pattern", "patterns": ["switchyard.>"]}))
        .await;
    let mut worker = ws(WORKER).await;
    let sid = worker
        .subscribe(json!({"type": "pattern", "patterns": ["job.>"], "id": "jobs", "ack": true}))
        .await;
    let published = worker
        .publish(json!({"topic": "job.secret", "type": "job", "payload": {"secret": 42}}))
        .await;
    let delivery = worker.recv_event().await;
    assert_eq!(delivery["event"]["id"], published["event_id"]);
    worker
        .send(&json!({"type": "nack", "subscription_id": sid, "event_id": published["event_id"], "requeue": false}))
        .await;
    worker.assert_alive().await;

    let seen = watcher.recv_event().await["event"].clone();
    let full = ops.recv_event().await["event"].clone();
    for notice in [&seen, &full] {
        assert_eq!(notice["topic"], "switchyard.dead_letter", "{notice}");
        let meta = &notice["payload"];
        assert_eq!(meta["event_id"], published["event_id"], "{notice}");
        assert_eq!(meta["event_topic"], "job.secret", "{notice}");
        assert_eq!(meta["event_cursor"], published["cursor"], "{notice}");
        assert_eq!(meta["subscription"], "jobs", "{notice}");
        assert_eq!(meta["reason"], "rejected", "{notice}");
        assert_eq!(meta["attempts"], 1, "{notice}");
        assert!(meta["id"].as_u64().is_some(), "{notice}");
    }
    assert_eq!(seen["id"], full["id"], "one notice, two forms");
    assert!(
        seen["payload"].get("event").is_none(),
        "a reader outside job.> sees no event: {seen}"
    );
    assert_eq!(full["payload"]["event"]["payload"]["secret"], 42, "{full}");
    watcher.assert_alive().await;
    ops.assert_alive().await;
    worker.assert_alive().await;
}

/// `limits.dead_letters_per_sec`, one step over: a connection whose three subscriptions
/// reject one event at once, with a budget of two, stores two dead letters and sheds
/// the third (counted), while another connection's dead letters are not charged.
#[actix_rt::test]
async fn dead_letters_over_the_connection_budget_are_shed_and_counted() {
    let server = TestServer::with(|c| c.limits.dead_letters_per_sec = 2).await;
    let mut sub = server.ws().await;
    for i in 0..3 {
        sub.subscribe(
            json!({"type": "pattern", "patterns": ["job.>"], "id": format!("s{i}"), "ack": true}),
        )
        .await;
    }
    let before = counts(&server).await;
    let mut p = server.ws().await;
    let published = p.publish(json!({"topic": "job.run"})).await;
    let mut nacks = Vec::new();
    for _ in 0..3 {
        let e = sub.recv_event().await;
        nacks.push(json!({"type": "nack", "subscription_id": e["subscription_id"], "event_id": published["event_id"], "requeue": false}));
    }
    for nack in nacks {
        sub.send(&nack).await;
    }
    let mut after = counts(&server).await;
    for _ in 0..100 {
        if after.dead_letters_added + after.shed >= before.dead_letters_added + before.shed + 3 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        after = counts(&server).await;
    }
    assert_eq!(after.dead_letters_added - before.dead_letters_added, 2);
    assert_eq!(after.shed - before.shed, 1);

    // Another connection has a budget of its own.
    let mut worker = server.ws().await;
    let wid = worker
        .subscribe(json!({"type": "pattern", "patterns": ["job.>"], "id": "jobs", "ack": true}))
        .await;
    let real = real_dead_letter(&server, &mut worker, &wid).await;
    assert!(listed(&server, &real["event_id"]).await);
    sub.assert_alive().await;
}

/// Waits (bounded) until retention has removed cursor `cursor`; answers the oldest kept.
async fn retained_after(server: &TestServer, cursor: u64) -> u64 {
    for _ in 0..200 {
        let (_, stats) = server.get("/api/stats").await;
        if let Some(first) = stats["store"]["first_cursor"].as_u64() {
            if first > cursor {
                return first;
            }
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("retention did not pass cursor {cursor}");
}

/// A durable subscription that fell behind while retention removed events it had not
/// received is told, when it resumes, which cursors it lost (`gap`), before its replay
/// of what is left; once told, a later resume is not told again. A live bystander got
/// every event.
#[actix_rt::test]
async fn a_durable_subscription_overtaken_by_retention_is_told_the_lost_range() {
    const MAX_EVENTS: u64 = 20;
    const BEHIND: u64 = 60;
    let server = TestServer::with(|c| c.store.max_events = MAX_EVENTS).await;
    let durable = json!({"type": "pattern", "patterns": ["job.>"], "id": "d", "durable": "jobs"});
    let mut bystander = server.ws().await;
    bystander
        .subscribe(json!({"type": "pattern", "patterns": ["job.>"]}))
        .await;

    let mut sub = server.ws().await;
    let sid = sub.subscribe(durable.clone()).await;
    assert_eq!(sub.recv().await["type"], "replay_complete");
    let mut p = server.ws().await;
    let first = p
        .publish(json!({"topic": "job.run", "payload": {"n": 0}}))
        .await;
    let e = sub.recv_event().await;
    sub.send(&json!({"type": "ack", "subscription_id": sid, "event_ids": [e["event"]["id"]]}))
        .await;
    sub.assert_alive().await;
    drop(sub);

    for n in 1..=BEHIND {
        p.publish(json!({"topic": "job.run", "payload": {"n": n}}))
            .await;
    }
    let acked = first["cursor"].as_u64().unwrap();
    let oldest = retained_after(&server, acked + 1).await;

    let mut sub = server.ws().await;
    sub.subscribe(durable.clone()).await;
    let gap = sub.recv().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["subscription_id"], "d", "{gap}");
    assert_eq!(gap["reason"], "retention", "{gap}");
    assert_eq!(
        gap["from_cursor"],
        acked + 1,
        "the acked cursor was not lost: {gap}"
    );
    let to = gap["to_cursor"].as_u64().unwrap();
    assert!(
        to + 1 >= oldest,
        "the gap reaches the oldest kept ({oldest}): {gap}"
    );
    // Then the replay of what is left, from right after the gap.
    let replayed = sub.recv_event().await;
    assert_eq!(replayed["event"]["cursor"], to + 1, "{replayed}");
    drop(sub);

    // Told once: the position has moved past the lost cursors.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let mut sub = server.ws().await;
    sub.subscribe(durable).await;
    let next = sub.recv().await;
    assert_eq!(next["type"], "event", "no second gap: {next}");
    assert_eq!(next["event"]["cursor"], to + 1, "{next}");
    while sub.recv().await["type"] != "replay_complete" {}

    for n in 0..=BEHIND {
        assert_eq!(bystander.recv_event().await["event"]["payload"]["n"], n);
    }
    bystander.assert_alive().await;
    sub.assert_alive().await;
}

const STORM: &str = "storm-token-0123456789ab";

/// A storm long enough to fill `store.max_dead_letters` (here: no per-second budget, so
/// it fills at once) evicts the storming principal's own dead letters, oldest first,
/// and none of another principal's, even older ones.
#[actix_rt::test]
async fn a_storm_over_the_dead_letter_limit_evicts_only_its_own() {
    const MAX: u64 = 100;
    let server = TestServer::with(|c| {
        with_tokens(c);
        c.auth
            .tokens
            .push(token("storm", STORM, &["storm.>"], &["storm.>"]));
        c.auth.tokens[2].admin = true;
        c.limits.dead_letters_per_sec = 0;
        c.store.max_dead_letters = MAX;
    })
    .await;
    let connect = |token: &'static str| {
        let url = server.ws_url("/ws");
        async move {
            WsClient::try_connect_as(&url, Some(token))
                .await
                .expect("upgrade")
        }
    };
    let mut worker = connect(WORKER).await;
    let wid = worker
        .subscribe(json!({"type": "pattern", "patterns": ["job.>"], "id": "jobs", "ack": true}))
        .await;
    let mut real = Vec::new();
    for n in 0..3 {
        let published = worker
            .publish(json!({"topic": "job.run", "payload": {"n": n}}))
            .await;
        assert_eq!(
            worker.recv_event().await["event"]["id"],
            published["event_id"]
        );
        worker
            .send(&json!({"type": "nack", "subscription_id": wid, "event_id": published["event_id"], "requeue": false}))
            .await;
        real.push(published["event_id"].clone());
    }
    worker.assert_alive().await;

    let mut storm = connect(STORM).await;
    for i in 0..20 {
        storm
            .subscribe(
                json!({"type": "pattern", "patterns": ["storm.>"], "id": format!("s{i}"),
                              "ack": true, "max_attempts": 1, "ack_timeout_ms": 1}),
            )
            .await;
    }
    for i in 0..20 {
        storm
            .publish(json!({"topic": "storm.tick", "payload": {"i": i}}))
            .await;
    }
    // 400 storm dead letters and 3 real ones: wait (bounded) until all were stored.
    let mut after = counts_as(&server, Some(OPS)).await;
    for _ in 0..100 {
        if after.dead_letters_added >= 403 {
            break;
        }
        drain(&mut storm, Duration::from_millis(100)).await;
        after = counts_as(&server, Some(OPS)).await;
    }
    assert_eq!(after.dead_letters_added, 403, "every dead letter stored");
    assert!(after.evicted >= 403 - MAX - 3, "evicted {}", after.evicted);

    let (status, list) = server
        .call("GET", "/api/dead-letters?limit=1000", Some(OPS), None)
        .await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().expect("a list");
    for id in &real {
        assert!(
            list.iter().any(|d| d["event"]["id"] == *id),
            "real dead letter {id} kept"
        );
    }
    let owners: Vec<&str> = list
        .iter()
        .filter_map(|d| d["principal"].as_str())
        .collect();
    assert_eq!(owners.len(), list.len(), "every row names its principal");
    assert_eq!(owners.iter().filter(|p| **p == "worker").count(), 3);
    assert!(list.len() as u64 <= MAX + 1, "{} kept", list.len());
    worker.assert_alive().await;
    storm.assert_alive().await;
}
