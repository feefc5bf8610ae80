//! The Rust client's failover in cluster mode: one real `redis-server`, two real
//! `switchyard` nodes, and a client given both URLs. Node A is killed with SIGKILL in
//! the middle of a bounded publish; the client must finish on node B, and the shared
//! log must then hold every event exactly once, at the cursor the client was told.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_rt::time::{sleep, timeout};
use common::cluster::{kill9, node};
use common::process::SpawnedServer;
use common::redis::RedisServer;
use serde_json::{json, Value};
use switchyard::client::{Backoff, Client, ClientConfig, Published, Subscription};

const EVENTS: usize = 3000;
const BATCH: usize = 25;
/// Publishing tasks sharing the one client, each with one batch in flight.
const WORKERS: usize = 6;
/// Node A dies once this many events are answered.
const KILL_AT: usize = EVENTS / 2;
/// The whole publish, failover included, must end within this.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the publishers saw, shared by the tasks on this one thread.
#[derive(Default)]
struct Tally {
    answers: RefCell<BTreeMap<String, Published>>,
    answered: Cell<usize>,
    killed: Cell<bool>,
    /// Events whose batch was sent before the kill and answered after it: the ones the
    /// client had to send again on node B.
    across_kill: Cell<usize>,
}

async fn publisher(client: Client, worker: usize, tally: Rc<Tally>) {
    let batches = (0..EVENTS / BATCH).filter(|b| b % WORKERS == worker);
    for b in batches {
        let events: Vec<Value> = (b * BATCH..(b + 1) * BATCH)
            .map(|i| json!({"id": format!("fo-{i}"), "topic": "fo.event", "payload": {"i": i}}))
            .collect();
        let sent_before_kill = !tally.killed.get();
        let results = client
            .publish_batch(events)
            .await
            .unwrap_or_else(|e| panic!("batch {b}: {e}"));
        if sent_before_kill && tally.killed.get() {
            tally
                .across_kill
                .set(tally.across_kill.get() + results.len());
        }
        for r in results {
            let p = r.unwrap_or_else(|e| panic!("batch {b}: an event refused: {e}"));
            tally.answers.borrow_mut().insert(p.event_id.clone(), p);
        }
        tally.answered.set(tally.answered.get() + BATCH);
    }
}

/// Reads deliveries until `count` distinct event ids are seen; answers how many times
/// each id arrived.
async fn follow(mut sub: Subscription, count: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    while seen.len() < count {
        match sub.next_event().await {
            Some((event, _)) => {
                let id = event["id"].as_str().expect("id").to_owned();
                *seen.entry(id).or_insert(0) += 1;
            }
            None => break,
        }
    }
    seen
}

/// The whole log through `node`'s HTTP API, in pages of 1000.
async fn stored_log(node: &SpawnedServer) -> Vec<Value> {
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut all: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("http://{}/api/events?after={after}&limit=1000", node.addr);
        let mut res = http.get(url).send().await.expect("GET /api/events");
        assert_eq!(res.status().as_u16(), 200);
        let page: Vec<Value> = res.json().limit(64 << 20).await.expect("a JSON array");
        let Some(last) = page.last() else {
            return all;
        };
        after = last["cursor"].as_u64().expect("cursor");
        all.extend(page);
    }
}

#[actix_rt::test]
async fn a_publisher_finishes_on_node_b_after_node_a_is_killed() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let client = Client::connect(ClientConfig {
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            ..Backoff::default()
        },
        request_timeout: Duration::from_secs(30),
        ..ClientConfig::cluster([a.ws_url(), b.ws_url()])
    });
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected to A");
    // A live subscription on the same client: it must move to B with the publishes and
    // resume by cursor.
    let sub = client
        .subscribe(json!({"patterns": ["fo.>"]}))
        .await
        .expect("subscribed");
    let following = actix_rt::spawn(follow(sub, EVENTS));

    let tally = Rc::new(Tally::default());
    let started = Instant::now();
    let workers = (0..WORKERS).map(|w| publisher(client.clone(), w, tally.clone()));
    let killer = {
        let tally = tally.clone();
        async move {
            while tally.answered.get() < KILL_AT {
                sleep(Duration::from_millis(5)).await;
            }
            kill9(&a);
            tally.killed.set(true);
            a
        }
    };
    let (_, a) = timeout(
        DEADLINE,
        futures_util::future::join(futures_util::future::join_all(workers), killer),
    )
    .await
    .expect("every batch answered in time");
    let took = started.elapsed();
    assert!(tally.killed.get());
    drop(a);

    let answers = tally.answers.borrow().clone();
    let duplicates = answers.values().filter(|p| p.duplicate).count();
    assert_eq!(answers.len(), EVENTS, "an answer per event id");

    // The log, read through B: every id once, at the cursor the client was told.
    let log = stored_log(&b).await;
    let mut cursor_of = BTreeMap::new();
    for e in &log {
        let id = e["id"].as_str().expect("id").to_owned();
        let cursor = e["cursor"].as_u64().expect("cursor");
        assert!(
            cursor_of.insert(id.clone(), cursor).is_none(),
            "{id} stored twice"
        );
    }
    assert_eq!(log.len(), EVENTS, "stored events");
    for (id, p) in &answers {
        assert_eq!(cursor_of.get(id), Some(&p.cursor), "cursor of {id}");
    }

    // The subscription saw every event once, across the failover.
    let seen = timeout(Duration::from_secs(30), following)
        .await
        .expect("the subscription follows every event in time")
        .expect("follower task");
    let repeated: BTreeSet<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(seen.len(), EVENTS, "events delivered to the subscription");
    assert!(repeated.is_empty(), "delivered twice: {repeated:?}");

    eprintln!(
        "failover: sent {EVENTS}, published {}, duplicate {duplicates}, in flight across the kill {}, stored {}, in {took:?}",
        EVENTS - duplicates,
        tally.across_kill.get(),
        log.len(),
    );
    client.close();
}
