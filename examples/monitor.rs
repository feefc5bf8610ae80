//! A monitor with a filtered subscription, using the client library: failures and
//! anything high priority or above, with task progress coalesced per task.
//!
//! ```text
//! cargo run --example monitor -- --min-priority high
//! ```
//!
//! It prints one line per event and keeps going across router restarts: the client
//! resubscribes and resumes after the last cursor it printed.

use clap::Parser;
use serde_json::json;
use switchyard::client::{Client, ClientConfig, ConnectionState, Delivery};

#[derive(Parser)]
#[command(about = "Watch Switchyard for failures and important events")]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    #[arg(long, env = "SWITCHYARD_TOKEN")]
    token: Option<String>,
    /// Events at or above this priority, plus every `*.failed` event.
    #[arg(long, default_value = "high")]
    min_priority: String,
    /// Stop after this many events (0: run until interrupted).
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
    // Report connection changes as they happen.
    let mut states = client.watch_state();
    actix_rt::spawn(async move {
        while states.changed().await.is_ok() {
            let state = *states.borrow();
            if state != ConnectionState::Connected {
                eprintln!("-- {state:?}");
            }
        }
    });
    let mut sub = client
        .subscribe(json!({
            "type": "conditional",
            "condition": format!(
                r#"topic.endsWith(".failed") || priority in {}"#,
                at_or_above(&args.min_priority)
            ),
            "coalesce": {"key": "task_id", "window_ms": 1000},
        }))
        .await?;
    let mut seen = 0;
    while let Some(delivery) = sub.next().await {
        if let Delivery::Event { event, .. } = delivery {
            println!(
                "{:<8} {:<24} {:<16} {}",
                event["priority"].as_str().unwrap_or("-"),
                event["topic"].as_str().unwrap_or("-"),
                event["source"].as_str().unwrap_or("-"),
                event["payload"]
            );
            seen += 1;
            if args.count > 0 && seen >= args.count {
                break;
            }
        }
    }
    client.close();
    Ok(())
}

/// `high` → `["critical", "high"]`, as a CEL list literal.
fn at_or_above(min: &str) -> String {
    let all = ["critical", "high", "normal", "low"];
    let upto = all.iter().position(|p| *p == min).unwrap_or(1);
    serde_json::to_string(&all[..=upto]).unwrap_or_else(|_| "[]".into())
}
