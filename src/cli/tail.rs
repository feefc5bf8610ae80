//! `switchyard tail`: follow events live, one readable line each, coloured by priority
//! on a terminal (plain when piped), or raw JSON lines with `--json`.
//!
//! Owns: the subscription it makes and how deliveries are printed. Must not: open
//! sockets itself; it subscribes through [`switchyard::client`].

use std::io::Write;

use anstyle::{AnsiColor, Style};
use serde_json::{json, Value};

use super::ConnectArgs;
use switchyard::client::{Client, ClientError, Delivery};

#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic pattern to follow (`task.>`, `*.failed`); every topic by default.
    #[arg(default_value = ">")]
    pub pattern: String,
    /// A CEL condition events must also satisfy, e.g. `priority == "critical"`.
    #[arg(long)]
    pub condition: Option<String>,
    /// Replay stored events after this cursor first (0: everything retained).
    #[arg(long)]
    pub from_cursor: Option<u64>,
    /// Print each delivery as a raw JSON line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

impl TailArgs {
    /// The subscription the options describe.
    pub fn subscription(&self) -> Value {
        let mut spec = json!({"type": "pattern", "patterns": [self.pattern]});
        if let Some(c) = &self.condition {
            spec["condition"] = json!(c);
        }
        if let Some(c) = self.from_cursor {
            spec["from_cursor"] = json!(c);
        }
        spec
    }
}

fn style(priority: &str) -> Style {
    let colour = match priority {
        "critical" => AnsiColor::BrightRed,
        "high" => AnsiColor::Yellow,
        "low" => AnsiColor::BrightBlack,
        _ => AnsiColor::Green,
    };
    let style = Style::new().fg_color(Some(colour.into()));
    if priority == "critical" {
        style.bold()
    } else {
        style
    }
}

/// One event as a line: time, priority, topic, cursor, source, payload.
pub fn line(event: &Value) -> String {
    let s = |k: &str| event[k].as_str().unwrap_or("-");
    let time = s("timestamp");
    let time = time.get(11..23).unwrap_or(time);
    let priority = s("priority");
    let payload = match &event["payload"] {
        Value::Object(m) if m.is_empty() => String::new(),
        p => p.to_string(),
    };
    let st = style(priority);
    format!(
        "{time} {st}{priority:<8}{st:#} {topic} #{cursor} {source} {payload}",
        topic = s("topic"),
        cursor = event["cursor"].as_u64().unwrap_or(0),
        source = s("source"),
    )
    .trim_end()
    .to_owned()
}

/// Follows events until `--count` is reached or the connection is given up.
pub async fn run(args: TailArgs) -> Result<(), ClientError> {
    let client = Client::connect(args.connect.client_config());
    let mut sub = client.subscribe(args.subscription()).await?;
    // anstream drops the colour codes when stdout is not a terminal (or NO_COLOR is set).
    let mut out = anstream::stdout();
    let mut seen = 0;
    while let Some(delivery) = sub.next().await {
        let printed = match &delivery {
            Delivery::Event { event, attempt } if args.json => {
                writeln!(out, "{}", json!({"event": event, "attempt": attempt}))
            }
            Delivery::Event { event, .. } => writeln!(out, "{}", line(event)),
            Delivery::ReplayComplete { last_cursor } if !args.json => {
                writeln!(
                    out,
                    "-- replay complete (last cursor {last_cursor}), live from here --"
                )
            }
            Delivery::Dropped { count } => {
                eprintln!(
                    "-- the server dropped {count} events: this terminal reads too slowly --"
                );
                Ok(())
            }
            _ => Ok(()),
        };
        if printed.is_err() {
            break; // stdout closed (piped into `head`, say)
        }
        if matches!(delivery, Delivery::Event { .. }) {
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                break;
            }
        }
    }
    client.close();
    match client.state() {
        switchyard::client::ConnectionState::Failed => Err(ClientError::Failed),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_line() {
        let e = json!({"timestamp": "2026-11-23T15:21:35.781308Z", "priority": "critical",
                       "topic": "agent.failed", "cursor": 42, "source": "planner",
                       "payload": {"reason": "oom"}});
        let plain = anstream::adapter::strip_str(&line(&e)).to_string();
        assert_eq!(
            plain,
            r#"15:21:35.781 critical agent.failed #42 planner {"reason":"oom"}"#
        );
        assert!(line(&e).contains("\u{1b}["), "coloured before stripping");
        let quiet = json!({"timestamp": "x", "priority": "low", "topic": "t", "cursor": 1,
                           "source": "s", "payload": {}});
        assert_eq!(
            anstream::adapter::strip_str(&line(&quiet)).to_string(),
            "x low      t #1 s"
        );
    }
}
