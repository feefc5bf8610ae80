//! Publishes task lifecycle events to a running Switchyard and prints where each landed.
//!
//! Start the router in one terminal, a subscriber in another, then publish:
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example subscriber -- --pattern '>'
//! cargo run --example publisher -- --count 12
//! ```
//!
//! Each task goes through `task_created` (normal), `task_started` (normal) and
//! `task_completed` (high); every fifth event is an `agent_failed` (critical) instead.
//! For each `publish_event` command the server answers `published` with the event's
//! cursor (its position in the router's log), which is printed. Ctrl-C stops early.

use std::pin::pin;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use awc::ws::{Frame, Message};

mod common;
use clap::Parser;
use common::close_reason;
use futures_util::future::{select, Either};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Publish example task events to Switchyard")]
struct Args {
    /// WebSocket address of the router.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    /// How many events to publish.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Pause between events, in milliseconds.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
}

/// The `n`th event (0-based): its type, priority and payload.
fn lifecycle_event(n: u64) -> Value {
    let task_id = format!("task-{}", n / 3 + 1);
    let agent_id = format!("agent-{}", n % 2 + 1);
    let mut payload = json!({"task_id": task_id, "agent_id": agent_id});
    let (event_type, priority) = match n % 3 {
        _ if n % 5 == 4 => {
            payload["error"] = json!("out of memory");
            ("agent_failed", "critical")
        }
        0 => {
            payload["title"] = json!(format!("job {n}"));
            ("task_created", "normal")
        }
        1 => ("task_started", "normal"),
        _ => {
            payload["duration_ms"] = json!(120 + n * 7);
            ("task_completed", "high")
        }
    };
    json!({
        "type": event_type,
        "priority": priority,
        "source": "example-publisher",
        "correlation_id": task_id,
        "payload": payload,
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut ws = common::connect(&args.url).await?;
    println!("connected to {}", args.url);

    for n in 0..args.count {
        let event = lifecycle_event(n);
        let command = json!({"type": "publish_event", "request_id": n, "event": event});
        ws.send(Message::Text(command.to_string().into()))
            .await
            .map_err(|e| anyhow!("sending to the router failed: {e}"))?;

        // We subscribe to nothing, so every text frame is a reply to our own command.
        let reply: Value = loop {
            match ws.next().await {
                Some(Ok(Frame::Text(bytes))) => {
                    break serde_json::from_slice(&bytes).context("reply is not JSON")?
                }
                Some(Ok(Frame::Ping(p))) => ws
                    .send(Message::Pong(p))
                    .await
                    .map_err(|e| anyhow!("sending pong failed: {e}"))?,
                Some(Ok(Frame::Close(reason))) => {
                    bail!("server closed the connection{}", close_reason(reason))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("connection error: {e}"),
                None => bail!("server closed the connection"),
            }
        };
        match reply["type"].as_str() {
            Some("published") => println!(
                "published {:<14} {:<8} cursor={} id={}{}",
                event["type"].as_str().unwrap_or("?"),
                event["priority"].as_str().unwrap_or("?"),
                reply["cursor"],
                reply["event_id"].as_str().unwrap_or("?"),
                if reply["duplicate"] == true {
                    " (duplicate)"
                } else {
                    ""
                },
            ),
            Some("error") => eprintln!(
                "error publishing event {n}: {}: {}",
                reply["code"].as_str().unwrap_or("?"),
                reply["message"].as_str().unwrap_or("")
            ),
            _ => eprintln!("unexpected reply: {reply}"),
        }
        actix_rt::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    let _ = ws.send(Message::Close(None)).await;
    Ok(())
}

#[actix_rt::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match select(pin!(run(args)), pin!(actix_rt::signal::ctrl_c())).await {
        Either::Left((Ok(()), _)) => ExitCode::SUCCESS,
        Either::Left((Err(e), _)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Either::Right(_) => {
            eprintln!("interrupted");
            ExitCode::from(130)
        }
    }
}
