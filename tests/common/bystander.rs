//! The well-behaved subscriber every hostile scenario keeps connected: it reads all
//! the time (so it answers pings) on `bystander.>`, on its own task, until the event
//! of type `bystander_done` (or 30 s pass). Each suite publishes to it and checks the
//! ids in its own way.

use std::time::{Duration, Instant};

use serde_json::json;

use super::WsClient;

/// Connects (with `token`, if any), subscribes to `bystander.>` and starts reading;
/// the task's result is the ids of the events received, in order.
pub async fn start(ws_url: &str, token: Option<&str>) -> actix_rt::task::JoinHandle<Vec<String>> {
    let mut c = WsClient::try_connect_as(ws_url, token)
        .await
        .expect("bystander connects");
    c.subscribe(json!({"type": "pattern", "patterns": ["bystander.>"]}))
        .await;
    actix_rt::spawn(async move {
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let msg = match c.try_recv_open(Duration::from_millis(500)).await {
                Ok(Some(msg)) => msg,
                Ok(None) => continue,
                Err(reason) => panic!("the bystander was disconnected: {reason:?}"),
            };
            assert_eq!(msg["type"], "event", "bystander got {msg}");
            if msg["event"]["type"] == "bystander_done" {
                return ids;
            }
            ids.push(msg["event"]["id"].as_str().unwrap_or_default().to_owned());
        }
        panic!(
            "bystander: no `bystander_done` within 30 s ({} events)",
            ids.len()
        );
    })
}
