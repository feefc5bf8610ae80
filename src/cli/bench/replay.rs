//! `--replay`: publishes nothing; subscribes to everything from cursor 0 and counts
//! events until `replay_complete`, which times how fast a subscriber catches up on the
//! whole stored log.
//!
//! Owns: the replay run and its report. Must not: publish.

use std::pin::pin;

use actix_web::rt::time::{sleep_until, Instant};
use awc::ws::Message;
use futures_util::SinkExt as _;
use serde_json::{json, Value};

use super::report::{emit, mb_per_s, millis};
use super::wire::{connect, next_text, EVENT};
use super::{BenchArgs, BenchError};

/// `--replay`: subscribes to everything from cursor 0 and counts events until
/// `replay_complete`: how fast a subscriber catches up on the whole stored log.
pub async fn run(args: &BenchArgs, deadline: Instant) -> Result<bool, BenchError> {
    let mut ws = connect(&args.url, args.token.as_deref()).await?;
    let subscribe = json!({"type": "subscribe", "subscription": {"type": "all", "from_cursor": 0}});
    let start = Instant::now();
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .map_err(|e| BenchError::Connection(e.to_string()))?;
    let mut timer = pin!(sleep_until(deadline));
    let (mut replayed, mut dropped, mut bytes) = (0u64, 0u64, 0u64);
    let (mut complete, mut last_cursor, mut problem) = (false, None, None);
    while !complete && problem.is_none() {
        match next_text(&mut ws, &mut timer).await {
            Ok(Some(b)) if b.starts_with(EVENT) => {
                replayed += 1;
                bytes += b.len() as u64;
            }
            Ok(Some(b)) => {
                let msg: Value = serde_json::from_slice(&b).unwrap_or_default();
                match msg["type"].as_str() {
                    Some("subscribed") => {}
                    Some("dropped") => dropped += msg["count"].as_u64().unwrap_or(0),
                    Some("replay_complete") => {
                        complete = true;
                        last_cursor = msg["last_cursor"].as_u64();
                    }
                    _ => problem = Some(format!("unexpected message: {msg}")),
                }
            }
            Ok(None) => problem = Some("timed out".to_owned()),
            Err(e) => problem = Some(e),
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let _ = ws.send(Message::Close(None)).await;
    let report = json!({
        "mode": "replay", "replayed": replayed, "replay_rate": (replayed as f64 / secs).round(),
        "replayed_mb_per_s": mb_per_s(bytes, secs), "last_cursor": last_cursor,
        "dropped": dropped, "seconds": millis(secs), "problems": problem.as_slice(),
    });
    emit(args, &report, print_replay);
    Ok(problem.is_none() && dropped == 0)
}

fn print_replay(r: &Value) {
    println!(
        "replayed   {} events at {} events/s, {} MB/s; last cursor {}, {} dropped",
        r["replayed"], r["replay_rate"], r["replayed_mb_per_s"], r["last_cursor"], r["dropped"]
    );
    println!("wall time  {} s", r["seconds"]);
    for p in r["problems"].as_array().into_iter().flatten() {
        println!("problem: {p}");
    }
}
