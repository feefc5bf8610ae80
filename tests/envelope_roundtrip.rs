//! An event read back from the store is the event that was routed live (found by the
//! `event_roundtrip` fuzz target): a number in `metadata` with more digits than an f64
//! holds was parsed one step off when the stored envelope was read again, so a
//! condition matched it live and not on replay. Ends with the server healthy and a
//! bystander that received everything.

mod common;

use common::{TestServer, WsClient};
use serde_json::json;

/// The f64 nearest to 98446744073709551615, as Rust's and Python's parsers read it.
const CONDITION: &str = "metadata.big == 9.844674407370955e19 || topic == \"m.end\"";

async fn topics_until(sub: &mut WsClient, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let msg = sub.recv().await;
        if msg["type"] == "replay_complete" {
            continue;
        }
        let topic = msg["event"]["topic"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        got.push(topic.clone());
        if topic == last {
            return got;
        }
    }
}

#[actix_rt::test]
async fn a_replayed_event_matches_the_conditions_its_live_delivery_matched() {
    let server = TestServer::start().await;
    let mut bystander = server.ws().await;
    bystander.subscribe(json!({"type": "all"})).await;
    let mut live = server.ws().await;
    live.subscribe(json!({"condition": CONDITION})).await;
    let mut publisher = server.ws().await;
    // As the client sends it: a number no JSON value type here can hold exactly.
    publisher
        .send_text(r#"{"type": "publish_event", "event": {"topic": "m.x", "metadata": {"big": 98446744073709551615}}}"#)
        .await;
    let reply = publisher.recv().await;
    assert_eq!(reply["type"], "published", "{reply}");
    publisher.publish(json!({"topic": "m.end"})).await;
    assert_eq!(topics_until(&mut live, "m.end").await, ["m.x", "m.end"]);

    let mut replay = server.ws().await;
    replay
        .subscribe(json!({"condition": CONDITION, "from_cursor": 0}))
        .await;
    assert_eq!(
        topics_until(&mut replay, "m.end").await,
        ["m.x", "m.end"],
        "the stored event no longer matches what it matched live"
    );
    assert_eq!(
        topics_until(&mut bystander, "m.end").await,
        ["m.x", "m.end"]
    );
    bystander.assert_alive().await;
    server.stop().await;
}
