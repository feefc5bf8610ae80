//! An async Rust client for the Switchyard wire protocol (docs/protocol.md), with automatic
//! reconnect, resubscription and resume.
//!
//! Owns: one WebSocket connection at a time (a background task on the current actix
//! system), the requests awaiting replies, and the subscriptions to restore after a
//! reconnect. Must not: depend on the server's internals; it speaks only the wire
//! protocol, like any other client.
//!
//! The files: this one holds the types a caller sees (errors, states, configuration,
//! deliveries); `handle` the [`Client`] and [`Subscription`] handles the caller holds;
//! `connection` the background task that owns the socket; `socket` how a WebSocket is
//! opened; `backoff` the reconnect schedule.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard::client::ClientError> {
//! use switchyard::client::{Client, ClientConfig, Delivery};
//! use serde_json::json;
//!
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:9090/ws"));
//! let mut sub = client.subscribe(json!({"type": "pattern", "patterns": ["task.>"], "ack": true})).await?;
//! client.publish(json!({"type": "task_created", "payload": {"task_id": "t1"}})).await?;
//! while let Some(Delivery::Event { event, .. }) = sub.next().await {
//!     println!("{}", event["topic"]);
//!     sub.ack(&event["id"].as_str().unwrap_or_default()).await;
//! }
//! # Ok(()) }
//! ```
//!
//! Reconnects follow [`Backoff`] (1 s doubling to 30 s, with jitter). After a reconnect
//! every subscription is sent again under the same id, resuming after the highest
//! cursor it delivered (or, before any delivery, from the time it was made), so nothing
//! the server still retains is lost; a durable subscription resumes from its own stored
//! state. Publishes not yet answered when the connection dropped are sent again with the
//! same event id (the client gives every event an id), so the server's duplicate
//! suppression makes the retry safe. Live events are delivered highest priority first,
//! so a resume after the highest cursor can skip a lower-priority event that was still
//! waiting: use `ack: true` or a durable subscription where that matters.

mod backoff;
mod connection;
mod handle;
pub mod socket;

pub use backoff::Backoff;
pub use handle::{Client, Subscription};

use std::time::Duration;

use serde_json::Value;

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an `error` reply.
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the client gave up reconnecting")]
    Failed,
    #[error("the client is closed")]
    Closed,
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Waiting before reconnect attempt `attempt` (1 for the first).
    Reconnecting {
        attempt: u32,
    },
    /// `max_attempts` reconnects failed in a row; calls answer [`ClientError::Failed`].
    Failed,
    Closed,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws` or `wss://...`.
    pub url: String,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    pub backoff: Backoff,
    /// Reconnect attempts in a row before giving up; `None`: never give up.
    pub max_attempts: Option<u32>,
    /// How long a call waits for its reply (across reconnects).
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            token: None,
            backoff: Backoff::default(),
            max_attempts: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub event_id: String,
    pub cursor: u64,
    pub duplicate: bool,
}

/// What a subscription receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Event {
        event: Value,
        attempt: u64,
    },
    /// The replay it asked for (or a resume) is done; live events follow.
    ReplayComplete {
        last_cursor: u64,
    },
    /// The server dropped `count` events because this client read too slowly.
    Dropped {
        count: u64,
    },
}

/// The [`ClientError::Server`] an `error` reply (or a batch item's `error`) stands for.
fn server_error(e: &Value) -> ClientError {
    ClientError::Server {
        code: e["code"].as_str().unwrap_or("unknown").to_owned(),
        message: e["message"].as_str().unwrap_or_default().to_owned(),
    }
}
