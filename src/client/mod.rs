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
//! `connection` the background task that owns the socket; `pending` the requests
//! awaiting replies and which replies are retried; `socket` how a WebSocket is opened;
//! `subs` the subscriptions to restore; `rotation` which URL to try next; `backoff`
//! the reconnect schedule.
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
//! Given several URLs (the nodes of a cluster, [`ClientConfig::cluster`]), the client
//! moves on to the next one, round robin, after a failed connect, a lost connection or an
//! `unavailable` answer; a URL not yet tried since the last good connection is tried at
//! once, and a full round of failures waits the backoff.
//!
//! Reconnects follow [`Backoff`] (1 s doubling to 30 s, with jitter). After a reconnect
//! every subscription is sent again under the same id, resuming after the highest
//! cursor it delivered (or, before any delivery, from the time it was made), so nothing
//! the server still retains is lost; a durable subscription resumes from its own stored
//! state. Publishes not yet answered when the connection dropped are sent again with the
//! same event id (the client gives every event an id), so the server's duplicate
//! suppression makes the retry safe: an event stored before the connection dropped is
//! answered `duplicate: true` with its cursor. A request answered `unavailable` (cluster
//! mode: the node cannot reach the shared log, nothing was stored) is not surfaced but
//! sent again on the next node, until it is answered otherwise or its caller's
//! `request_timeout` passes; in a batch, only the events answered `unavailable` take
//! the resend's answer. Live events are delivered highest priority first,
//! so a resume after the highest cursor can skip a lower-priority event that was still
//! waiting: use `ack: true` or a durable subscription where that matters.

mod backoff;
mod connection;
mod handle;
mod pending;
mod rotation;
pub mod socket;
mod subs;

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
    /// Where to connect, `ws://host:port/ws` or `wss://...`: one server, or several nodes
    /// of one cluster. The client starts with the first and moves on to the next (round
    /// robin) after a failed connect, a lost connection or an `unavailable` answer.
    pub urls: Vec<String>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    pub backoff: Backoff,
    /// Reconnect attempts in a row before giving up, each URL tried counting as one;
    /// `None`: never give up.
    pub max_attempts: Option<u32>,
    /// How long a call waits for its reply (across reconnects).
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// One server, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig::cluster([url])
    }

    /// The nodes of one cluster (docs/cluster.md), with the defaults; tried in this order
    /// first, then round robin.
    pub fn cluster<I>(urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        ClientConfig {
            urls: urls.into_iter().map(Into::into).collect(),
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
