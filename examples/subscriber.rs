//! Subscribes to a running Switchyard with a topic pattern and prints every event.
//!
//! Start the router, this subscriber, then a publisher:
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example subscriber -- --pattern 'task.>' --min-priority normal
//! cargo run --example publisher -- --count 12
//! ```
//!
//! Patterns are dot-separated: `*` matches one segment, `>` (last) one or more, so
//! `task.>` sees `task.created` and `task.completed`, and `>` sees everything
//! (including `agent.failed`). Each event prints as one line,
//! `[priority] topic cursor payload`. If this subscriber falls too far behind, the
//! router drops its lowest-priority, oldest waiting events and says so with a
//! `dropped` notice, printed here too. Ctrl-C closes the connection and exits.

use std::pin::pin;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use awc::ws::{Frame, Message};

mod common;
use clap::Parser;
use common::close_reason;
use futures_util::future::{select, Either};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Print Switchyard events matching a topic pattern")]
struct Args {
    /// WebSocket address of the router.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    /// Topic pattern to subscribe to (`>` for every topic).
    #[arg(long, default_value = "task.>")]
    pattern: String,
    /// Only events at or above this priority: critical, high, normal or low.
    #[arg(long)]
    min_priority: Option<String>,
}

/// One line for a message from the server.
fn describe(msg: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    match msg["type"].as_str() {
        Some("event") => {
            let e = &msg["event"];
            let (priority, topic) = (text(&e["priority"]), text(&e["topic"]));
            format!("[{priority}] {topic} {} {}", e["cursor"], e["payload"])
        }
        Some("dropped") => format!(
            "!! dropped {} events for subscription {} ({})",
            msg["count"],
            text(&msg["subscription_id"]),
            text(&msg["reason"])
        ),
        Some("subscribed") => format!(
            "subscribed as {}; waiting for events (Ctrl-C to stop)",
            text(&msg["subscription_id"])
        ),
        _ => format!("<- {msg}"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut ws = common::connect(&args.url).await?;

    let mut subscription = json!({"type": "pattern", "patterns": [args.pattern]});
    if let Some(min) = &args.min_priority {
        subscription["filter"] = json!({"min_priority": min});
    }
    let command = json!({"type": "subscribe", "request_id": "sub-1", "subscription": subscription});
    ws.send(Message::Text(command.to_string().into()))
        .await
        .map_err(|e| anyhow!("sending to the router failed: {e}"))?;
    println!(
        "connected to {}, subscribing to `{}`",
        args.url, args.pattern
    );

    let mut ctrl_c = pin!(actix_rt::signal::ctrl_c());
    loop {
        let frame = match select(ctrl_c.as_mut(), ws.next()).await {
            Either::Left(_) => {
                eprintln!("interrupted; closing");
                let _ = ws.send(Message::Close(None)).await;
                return Ok(());
            }
            Either::Right((frame, _)) => frame,
        };
        match frame {
            Some(Ok(Frame::Text(bytes))) => {
                let msg: Value = serde_json::from_slice(&bytes).context("server sent non-JSON")?;
                if msg["type"] == "error" && msg["request_id"] == "sub-1" {
                    bail!("subscribe refused: {}: {}", msg["code"], msg["message"]);
                }
                println!("{}", describe(&msg));
            }
            // The router pings every heartbeat interval and closes silent connections.
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
    }
}

#[actix_rt::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
