//! The subscriptions the client restores after a reconnect (on the same node or the
//! next), and which frames are deliveries.
//!
//! Owns: what a subscription remembers to resume (its highest delivered cursor, or when
//! it was made) and the subscribe command that resumes it. Must not: touch the socket.

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Delivery;

pub(super) struct Sub {
    pub spec: Value,
    pub deliveries: mpsc::Sender<Delivery>,
    /// Highest cursor delivered: a resume starts after it. Cursors are the same on
    /// every node of a cluster, so this holds across nodes too.
    pub last_cursor: Option<u64>,
    /// When it was made: a resume before any delivery starts there.
    pub since: String,
}

impl Sub {
    /// The subscribe command that restores it after a reconnect.
    pub fn resume_frame(&self) -> Value {
        let mut spec = self.spec.clone();
        if spec.get("durable").is_none() {
            if let Some(obj) = spec.as_object_mut() {
                obj.remove("from_cursor");
                obj.remove("since");
            }
            match self.last_cursor {
                Some(c) => spec["from_cursor"] = json!(c),
                None => spec["since"] = json!(self.since),
            }
        }
        json!({"type": "subscribe", "subscription": spec})
    }

    /// Remembers the cursor of a delivered event.
    pub fn note(&mut self, delivery: &Delivery) {
        if let Delivery::Event { event, .. } = delivery {
            if let Some(c) = event["cursor"].as_u64() {
                self.last_cursor = Some(self.last_cursor.map_or(c, |l| l.max(c)));
            }
        }
    }
}

/// The delivery a server frame stands for, if it is one.
pub(super) fn delivery(msg: &Value) -> Option<Delivery> {
    match msg["type"].as_str()? {
        "event" => Some(Delivery::Event {
            attempt: msg["attempt"].as_u64().unwrap_or(1),
            event: msg["event"].clone(),
        }),
        "replay_complete" => Some(Delivery::ReplayComplete {
            last_cursor: msg["last_cursor"].as_u64().unwrap_or(0),
        }),
        "dropped" => Some(Delivery::Dropped {
            count: msg["count"].as_u64().unwrap_or(0),
        }),
        _ => None,
    }
}
