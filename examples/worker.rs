//! An at-least-once worker, using the client library: a durable subscription to
//! `task.created`, acknowledging each task once handled and rejecting (`nack`, retried
//! after a delay) the ones it cannot handle yet. Stop it and start it again: it resumes
//! with whatever it had not acknowledged, even across a router restart.
//!
//! ```text
//! cargo run --example worker -- --name task-runner
//! cargo run --example agent -- --tasks 5
//! ```

use std::time::Duration;

use clap::Parser;
use serde_json::json;
use switchyard::client::{Client, ClientConfig};

#[derive(Parser)]
#[command(about = "Handle task.created events at least once")]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    #[arg(long, env = "SWITCHYARD_TOKEN")]
    token: Option<String>,
    /// Durable subscription name: the router keeps its position under this name.
    #[arg(long, default_value = "task-runner")]
    name: String,
    /// Stop after handling this many tasks (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::connect(ClientConfig {
        token: args.token.clone(),
        ..ClientConfig::new(args.url.clone())
    });
    let mut sub = client
        .subscribe(json!({
            "type": "pattern", "patterns": ["task.created"], "durable": args.name,
            "ack_timeout_ms": 30000, "max_attempts": 5, "max_in_flight": 10,
        }))
        .await?;
    let mut handled = 0;
    while let Some((event, attempt)) = sub.next_event().await {
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        let task = event["task_id"].as_str().unwrap_or("?");
        // Pretend every third task needs a second try.
        if event["cursor"].as_u64().unwrap_or(0) % 3 == 0 && attempt == 1 {
            println!("{task}: not yet (attempt {attempt}), retry in 500 ms");
            sub.nack(&id, true, Duration::from_millis(500));
            continue;
        }
        println!("{task}: handled (attempt {attempt})");
        sub.ack(&id).await;
        handled += 1;
        if args.count > 0 && handled >= args.count {
            break;
        }
    }
    client.close();
    Ok(())
}
