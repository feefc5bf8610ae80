//! Cluster-mode helpers: nodes (real `switchyard serve` processes) sharing one
//! [`RedisServer`], plain HTTP calls to them, and batch publishing.

use std::time::Duration;

use serde_json::{json, Value};

use super::process::{signal, SpawnedServer};
use super::redis::RedisServer;
use super::WsClient;

/// Short beats and leases, so that failover tests wait seconds, not minutes.
pub const LEASE_MS: u64 = 1500;

pub fn node(redis: &RedisServer, name: &str) -> SpawnedServer {
    node_with(redis, name, &[])
}

pub fn node_with(redis: &RedisServer, name: &str, extra: &[(&str, &str)]) -> SpawnedServer {
    let url = redis.url();
    let lease = LEASE_MS.to_string();
    let mut env = vec![
        ("SWITCHYARD_STORE__KIND", "redis"),
        ("SWITCHYARD_STORE__REDIS_URL", url.as_str()),
        ("SWITCHYARD_CLUSTER__NODE_NAME", name),
        ("SWITCHYARD_CLUSTER__HEARTBEAT_MS", "250"),
        ("SWITCHYARD_CLUSTER__LEASE_TTL_MS", lease.as_str()),
        ("SWITCHYARD_CLUSTER__COMMAND_TIMEOUT_MS", "1000"),
    ];
    env.extend_from_slice(extra);
    SpawnedServer::start(&env)
}

pub async fn http(
    method: &str,
    node: &SpawnedServer,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let url = format!("http://{}{path}", node.addr);
    let request = match method {
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    };
    let mut res = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = res.body().limit(16 << 20).await.unwrap_or_default();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (res.status().as_u16(), value, retry_after)
}

pub async fn ws(node: &SpawnedServer) -> WsClient {
    WsClient::connect(&node.ws_url()).await
}

/// Reads `count` event deliveries; returns their cursors in arrival order.
pub async fn cursors_of(client: &mut WsClient, count: usize) -> Vec<u64> {
    let mut cursors = Vec::with_capacity(count);
    while cursors.len() < count {
        let msg = client.recv().await;
        if msg["type"] == "event" {
            cursors.push(msg["event"]["cursor"].as_u64().expect("cursor"));
        }
    }
    cursors
}

/// Publishes `count` events with ids `<prefix>-<i>` as one batch; their cursors.
pub async fn publish_batch(client: &mut WsClient, prefix: &str, count: usize) -> Vec<u64> {
    let events: Vec<Value> = (0..count)
        .map(|i| json!({"id": format!("{prefix}-{i}"), "topic": format!("job.{prefix}"), "payload": {"i": i}}))
        .collect();
    let reply = client
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    assert_eq!(reply["type"], "published_batch", "{reply}");
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            r["cursor"]
                .as_u64()
                .unwrap_or_else(|| panic!("stored: {r}"))
        })
        .collect()
}

/// `kill -9` of a node: no shutdown, no last commit.
pub fn kill9(node: &SpawnedServer) {
    signal(node.pid(), "KILL");
}

/// Stops (`SIGSTOP`) or resumes (`SIGCONT`) a node's process: everything in it stands
/// still, its sockets stay open.
pub fn freeze(node: &SpawnedServer, frozen: bool) {
    signal(node.pid(), if frozen { "STOP" } else { "CONT" });
}

/// A node's `/metrics` text.
pub async fn metrics_text(node: &SpawnedServer) -> String {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut res = client
        .get(format!("http://{}/metrics", node.addr))
        .send()
        .await
        .expect("GET /metrics");
    let body = res.body().limit(16 << 20).await.expect("metrics body");
    String::from_utf8_lossy(&body).into_owned()
}
