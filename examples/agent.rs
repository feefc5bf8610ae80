//! An agent publishing its task lifecycle with the client library: `agent.started`, then
//! for each task `task.created` → `task.progress` (a few) → `task.completed` (or
//! `task.failed`, high priority), then `agent.stopped`.
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example monitor            # in another terminal
//! cargo run --example agent -- --tasks 3
//! ```
//!
//! The client reconnects by itself if the router restarts meanwhile; every event carries
//! an id, so a publish retried after a reconnect is not stored twice.

use std::time::Duration;

use clap::Parser;
use serde_json::json;
use switchyard::client::{Client, ClientConfig};

#[derive(Parser)]
#[command(about = "Publish an agent's task lifecycle events to Switchyard")]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    #[arg(long, env = "SWITCHYARD_TOKEN")]
    token: Option<String>,
    #[arg(long, default_value = "agent-7")]
    agent_id: String,
    #[arg(long, default_value_t = 3)]
    tasks: u32,
    /// Pause between steps, in milliseconds.
    #[arg(long, default_value_t = 200)]
    step_ms: u64,
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::connect(ClientConfig {
        token: args.token.clone(),
        max_attempts: Some(5),
        ..ClientConfig::new(args.url.clone())
    });
    let agent = args.agent_id.as_str();
    let step = Duration::from_millis(args.step_ms);
    client
        .publish(json!({"type": "agent_started", "source": agent, "agent_id": agent}))
        .await?;
    for n in 1..=args.tasks {
        let task = format!("{agent}-task-{n}");
        let base = json!({"source": agent, "agent_id": agent, "task_id": task});
        let with = |extra: serde_json::Value| {
            let mut e = base.clone();
            if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
                e.extend(x.clone());
            }
            e
        };
        client
            .publish(with(json!({"type": "task_created"})))
            .await?;
        for percent in [25, 50, 75] {
            actix_rt::time::sleep(step).await;
            // Progress is frequent and cheap: low priority, coalescable by task_id.
            client
                .publish(with(json!({"type": "task_progress", "priority": "low",
                                     "payload": {"task_id": task, "percent": percent}})))
                .await?;
        }
        let done = if n % 4 == 0 {
            json!({"type": "task_failed", "priority": "high", "payload": {"error": "timeout"}})
        } else {
            json!({"type": "task_completed", "payload": {"duration_ms": 3 * args.step_ms}})
        };
        let published = client.publish(with(done)).await?;
        println!("{task}: done at cursor {}", published.cursor);
    }
    client
        .publish(json!({"type": "agent_stopped", "source": agent, "agent_id": agent}))
        .await?;
    client.close();
    Ok(())
}
