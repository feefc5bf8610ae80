//! The subscribers: each its own connection following `bench.>` (or a CEL condition
//! with `--conditional`), acknowledging every delivery with `--ack`, and measuring
//! publish→deliver latency from the send time stamped in each event.
//!
//! Owns: subscribing, counting deliveries and `dropped` notices, and their latency.
//! Must not: publish, or decide when the load ends (the publishers set the target).

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix_web::rt::time::{sleep_until, Instant};
use awc::ws::Message;
use futures_util::future::join_all;
use futures_util::SinkExt as _;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::report::histogram;
use super::threads::Ready;
use super::wire::{connect, micros_now, next_text, Conn, Scanner, EVENT, PRIORITIES};
use super::BenchError;

/// What one subscriber saw.
#[derive(Default)]
pub struct SubResult {
    pub received: u64,
    pub dropped: u64,
    pub bytes: u64,
    /// Publish→deliver latency by priority ([`PRIORITIES`] order).
    pub latency: Vec<Histogram<u64>>,
    pub finished: Option<Instant>,
    pub problem: Option<String>,
}

/// Opens a subscriber's connection and subscribes `bench-{index}` to the load's topic.
async fn open_subscriber(
    url: &str,
    token: Option<&str>,
    index: u64,
    conditional: bool,
    ack: bool,
    deadline: Instant,
) -> Result<(Conn, String), BenchError> {
    let mut ws = connect(url, token).await?;
    let id = format!("bench-{index}");
    let mut spec = json!({"id": id, "type": "pattern", "patterns": ["bench.>"]});
    if conditional {
        spec["type"] = json!("conditional");
        spec["condition"] = json!(
            r#"payload.seq % 2 == 0 && priority in ["critical", "high", "normal", "low"] && size(payload.pad) >= 0"#
        );
    }
    if ack {
        spec["ack"] = json!(true);
        spec["max_in_flight"] = json!(1000);
    }
    let frame = json!({"type": "subscribe", "subscription": spec});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| BenchError::Connection(e.to_string()))?;
    let mut timer = pin!(sleep_until(deadline));
    let reply = next_text(&mut ws, &mut timer)
        .await
        .map_err(BenchError::Connection)?;
    let reply = String::from_utf8_lossy(&reply.unwrap_or_default()).into_owned();
    if !reply.starts_with(r#"{"type":"subscribed""#) {
        return Err(BenchError::Connection(format!(
            "subscribe refused: {reply}"
        )));
    }
    Ok((ws, id))
}

/// One client thread's subscribers: opens them all, says so on `ready`, then reads
/// until each has seen `target` events (or the deadline).
pub async fn subscriber_group(
    url: String,
    token: Option<String>,
    indices: Vec<u64>,
    options: (bool, bool),
    ready: Ready,
    target: Arc<AtomicU64>,
    deadline: Instant,
) -> Vec<SubResult> {
    let (conditional, ack) = options;
    let mut conns = Vec::with_capacity(indices.len());
    for i in indices {
        match open_subscriber(&url, token.as_deref(), i, conditional, ack, deadline).await {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                let _ = ready.send(Err(e));
                return Vec::new();
            }
        }
    }
    let _ = ready.send(Ok(()));
    join_all(
        conns
            .into_iter()
            .map(|(ws, id)| subscriber(ws, id, ack, target.clone(), deadline)),
    )
    .await
}

/// Counts deliveries until `received + dropped` reaches `target` (set by the publishers
/// once they know how many events were accepted and match), or the deadline.
async fn subscriber(
    mut ws: Conn,
    id: String,
    ack: bool,
    target: Arc<AtomicU64>,
    deadline: Instant,
) -> SubResult {
    let mut out = SubResult::default();
    let mut latency: Vec<Histogram<u64>> = PRIORITIES.iter().map(|_| histogram()).collect();
    let scan = Scanner::new();
    let tick = || deadline.min(Instant::now() + Duration::from_millis(100));
    let mut timer = pin!(sleep_until(tick()));
    while out.received + out.dropped < target.load(Relaxed) {
        match next_text(&mut ws, &mut timer).await {
            Ok(Some(b)) if b.starts_with(EVENT) => {
                out.received += 1;
                out.bytes += b.len() as u64;
                if let (Some(sent), Some(p)) = (scan.sent_us(&b), scan.priority(&b)) {
                    latency[p].saturating_record(micros_now().saturating_sub(sent).max(1));
                }
                if ack {
                    if let Some(event_id) = scan.id(&b) {
                        let frame =
                            json!({"type": "ack", "subscription_id": id, "event_id": event_id});
                        if let Err(e) = ws.send(Message::Text(frame.to_string().into())).await {
                            out.problem = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            Ok(Some(b)) => {
                let msg: Value = serde_json::from_slice(&b).unwrap_or_default();
                match msg["type"].as_str() {
                    Some("dropped") => out.dropped += msg["count"].as_u64().unwrap_or(0),
                    _ => out.problem = Some(format!("unexpected message: {msg}")),
                }
            }
            Ok(None) if Instant::now() >= deadline => {
                out.problem = Some("timed out".into());
                break;
            }
            Ok(None) => timer.as_mut().reset(tick()),
            Err(e) => {
                out.problem = Some(e);
                break;
            }
        }
    }
    out.finished = Some(Instant::now());
    out.latency = latency;
    let _ = ws.send(Message::Close(None)).await;
    out
}
