//! `switchyard publish`: one event from flags, or JSON lines from standard input.
//!
//! Owns: building events from flags or lines and printing each reply. Must not: open
//! sockets itself; it publishes through [`switchyard::client`].

use std::io::{BufRead, IsTerminal};

use serde_json::{json, Map, Value};

use super::ConnectArgs;
use switchyard::client::{Client, ClientError, Published};

/// Events per `publish_batch` when reading standard input.
const BATCH: usize = 100;

#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic, e.g. `task.created` (derived from `--type` when absent).
    #[arg(long)]
    pub topic: Option<String>,
    /// Event type, e.g. `task_created` (derived from `--topic` when absent).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// critical, high, normal or low.
    #[arg(long)]
    pub priority: Option<String>,
    /// JSON payload.
    #[arg(long)]
    pub payload: Option<String>,
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long)]
    pub agent_id: Option<String>,
    #[arg(long)]
    pub task_id: Option<String>,
    #[arg(long)]
    pub correlation_id: Option<String>,
    #[arg(long)]
    pub ttl_ms: Option<u64>,
    /// Print the server's replies as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Why `publish` could not run at all (as opposed to an event being refused).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("--payload is not JSON: {0}")]
    Payload(serde_json::Error),
    #[error("give --topic or --type, or JSON lines on standard input")]
    Nothing,
    #[error("line {line}: not a JSON object: {message}")]
    Line { line: usize, message: String },
    #[error("reading standard input: {0}")]
    Stdin(#[from] std::io::Error),
    #[error("{0}")]
    Client(#[from] ClientError),
}

impl PublishArgs {
    /// The event the flags describe, or `None` when they describe none.
    fn event(&self) -> Result<Option<Value>, PublishError> {
        if self.topic.is_none() && self.event_type.is_none() {
            return Ok(None);
        }
        let mut e = Map::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                e.insert(k.into(), json!(v));
            }
        };
        put("topic", &self.topic);
        put("type", &self.event_type);
        put("priority", &self.priority);
        put("source", &self.source);
        put("target", &self.target);
        put("agent_id", &self.agent_id);
        put("task_id", &self.task_id);
        put("correlation_id", &self.correlation_id);
        if let Some(p) = &self.payload {
            e.insert(
                "payload".into(),
                serde_json::from_str(p).map_err(PublishError::Payload)?,
            );
        }
        if let Some(t) = self.ttl_ms {
            e.insert("ttl_ms".into(), json!(t));
        }
        Ok(Some(Value::Object(e)))
    }
}

/// Runs the command; answers how many events were refused.
pub async fn run(args: PublishArgs) -> Result<usize, PublishError> {
    let single = args.event()?;
    let stdin = std::io::stdin();
    if single.is_none() && stdin.is_terminal() {
        return Err(PublishError::Nothing);
    }
    let client = Client::connect(args.connect.client_config());
    let mut refused = 0;
    if let Some(event) = single {
        refused += report(&args, vec![client.publish(event).await]);
    } else {
        let mut batch = Vec::with_capacity(BATCH);
        for (i, line) in stdin.lock().lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let event: Value = serde_json::from_str(&line).map_err(|e| PublishError::Line {
                line: i + 1,
                message: e.to_string(),
            })?;
            if !event.is_object() {
                return Err(PublishError::Line {
                    line: i + 1,
                    message: "expected an object".into(),
                });
            }
            batch.push(event);
            if batch.len() == BATCH {
                refused += report(
                    &args,
                    client.publish_batch(std::mem::take(&mut batch)).await?,
                );
            }
        }
        if !batch.is_empty() {
            refused += report(&args, client.publish_batch(batch).await?);
        }
    }
    client.close();
    Ok(refused)
}

/// Prints one line per result; answers how many were refused.
fn report(args: &PublishArgs, results: Vec<Result<Published, ClientError>>) -> usize {
    let mut refused = 0;
    for r in results {
        match r {
            Ok(p) if args.json => println!(
                "{}",
                json!({"event_id": p.event_id, "cursor": p.cursor, "duplicate": p.duplicate})
            ),
            Ok(p) => println!(
                "published {} cursor={}{}",
                p.event_id,
                p.cursor,
                if p.duplicate { " (duplicate)" } else { "" }
            ),
            Err(e) => {
                refused += 1;
                if args.json {
                    println!("{}", json!({"error": e.to_string()}));
                } else {
                    eprintln!("refused: {e}");
                }
            }
        }
    }
    refused
}
