//! Event storage: a trait and one module per backend.
//!
//! - [`sqlite::SqliteStore`] (default): a WAL-mode SQLite file under `--data-dir`;
//!   survives restarts, cursors continue where they stopped.
//! - [`memory::MemoryStore`] (`store.kind = "memory"`): a bounded in-process log.
//! - [`redis::RedisStore`] (`store.kind = "redis"`): one log in Redis shared by every
//!   node of a cluster; it numbers events itself and is the cluster's duplicate check.
//!
//! Every method of the trait is cursor-based and stateless between calls, so that
//! state lives in the backend, not in the router, and a backend shared by several
//! router nodes can implement it too. The `contract` tests hold every backend to it.
//!
//! Owns: persisted events, dead letters and durable subscription state, the cursor
//! high-water mark, and applying a [`Retention`] (whose limits come from `config`).
//! Cursors: a single node's router assigns them in acceptance order and
//! [`EventStore::append`] stores them; a log shared by several nodes numbers events
//! itself ([`EventStore::numbers_events`], [`EventStore::append_new`]).
//! Must not: route anything, or import from the layers above it (actors, http).
//! Backends are blocking; they run only on threads of their own (the store actor's
//! arbiter, a cluster log's tail), never on a thread shared with the router, workers
//! or sessions.

mod checkpoint;
pub mod eviction;
pub mod memory;
pub mod redis;
pub mod sqlite;

#[cfg(test)]
mod contract;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::config::Retention;
use crate::config::{Config, StoreKind};
use crate::error::{ErrorCode, HttpError};
use crate::protocol::EncodedEvent;
use crate::protocol::Priority;
use crate::routing::pattern::Pattern;

/// Default and maximum page sizes of `/api/events`.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// A query over stored events (the parameters of `GET /api/events`, and replay).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub topic: Option<Pattern>,
    pub event_type: Option<String>,
    pub priority: Option<Priority>,
    /// Only events with a cursor greater than this.
    pub after: Option<u64>,
    pub limit: usize,
    pub order: Order,
}

impl EventQuery {
    /// Does a stored event pass the query's filters (all but `after` and `limit`)?
    pub fn matches(&self, e: &EncodedEvent) -> bool {
        let ev = &e.event;
        self.matches_fields(&ev.topic, &ev.event_type, ev.priority)
    }

    /// [`EventQuery::matches`] on the fields it looks at.
    pub fn matches_fields(&self, topic: &str, event_type: &str, priority: Priority) -> bool {
        self.topic.as_ref().is_none_or(|p| p.matches(topic))
            && self.event_type.as_ref().is_none_or(|t| t == event_type)
            && self.priority.is_none_or(|p| p == priority)
    }
}

/// An event read back from its stored envelope.
fn decode_envelope(cursor: u64, json: Arc<str>) -> Result<Arc<EncodedEvent>, StoreError> {
    let event = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
        cursor,
        message: e.to_string(),
    })?;
    Ok(EncodedEvent::with_json(event, json))
}

/// What `/api/stats` shows of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    pub kind: &'static str,
    pub event_count: u64,
    pub dead_letters: u64,
    pub first_cursor: Option<u64>,
    pub last_cursor: Option<u64>,
    /// Dead letters deleted since the server started because there were more than
    /// `store.max_dead_letters` (filled in by the store actor; backends leave it 0).
    pub dead_letters_evicted: u64,
}

/// An event a subscription could not get acknowledged, kept for inspection and retry.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: u64,
    pub event: Arc<EncodedEvent>,
    /// The subscriber that did not acknowledge it: over `store.max_dead_letters`, the
    /// principals holding the most give theirs up first ([`eviction`]).
    pub principal: String,
    pub subscription_id: String,
    pub connection_id: u64,
    pub reason: String,
    pub attempts: u32,
    pub dead_at: DateTime<Utc>,
}

impl DeadLetter {
    /// The row of `GET /api/dead-letters`.
    pub fn to_json(&self) -> serde_json::Value {
        let event: serde_json::Value = serde_json::from_str(&self.event.json).unwrap_or_default();
        serde_json::json!({
            "id": self.id,
            "event": event,
            "principal": self.principal,
            "subscription": self.subscription_id,
            "connection_id": self.connection_id,
            "reason": self.reason,
            "attempts": self.attempts,
            "dead_at": self.dead_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }
}

/// A dead letter before it is stored (the store assigns `id` and `dead_at`).
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub event: Arc<EncodedEvent>,
    pub principal: String,
    pub subscription_id: String,
    pub connection_id: u64,
    pub reason: String,
    pub attempts: u32,
}

impl NewDeadLetter {
    /// The dead letter as stored under `id` at `dead_at`.
    pub fn stored(self, id: u64, dead_at: DateTime<Utc>) -> DeadLetter {
        DeadLetter {
            id,
            event: self.event,
            principal: self.principal,
            subscription_id: self.subscription_id,
            connection_id: self.connection_id,
            reason: self.reason,
            attempts: self.attempts,
            dead_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored event at cursor {cursor} is unreadable: {message}")]
    Corrupt { cursor: u64, message: String },
    #[error("cannot start the store's thread: {source}")]
    Thread { source: std::io::Error },
    /// The shared log cannot be reached, or did not answer in time: nothing was
    /// stored, or (`outcome unknown`) a retry is answered `duplicate` if it was.
    #[error("event log unreachable: {0}")]
    Unavailable(String),
    /// The shared log answered with an error (a script failed, Redis is out of memory).
    #[error("redis: {0}")]
    Redis(String),
    /// The shared log is not the one this node joined (wiped, or another Redis).
    #[error(
        "event log replaced: its epoch is {found}, this node joined epoch {joined}; \
         restart the node with cluster.accept_new_log = true to accept it"
    )]
    LogReplaced { joined: String, found: String },
    /// The shared log cannot be used as configured (AOF off, an old Redis).
    #[error("{0}")]
    Unsuitable(String),
}

impl StoreError {
    /// The wire code a client is answered with when this fails its request.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Unavailable(_) | StoreError::LogReplaced { .. } => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// A store failure answering an HTTP request: logged here, shown to the client as
/// `unavailable` (503, retry) when the shared log is out of reach, else `internal`,
/// since nothing the client sends can fix it.
impl From<StoreError> for HttpError {
    fn from(err: StoreError) -> Self {
        log::error!("store request failed: {err}");
        HttpError::new(err.code(), format!("store request failed: {err}"))
    }
}

/// A stored event's id in the scope the duplicate window keeps it in
/// ([`EventStore::recent_ids`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredId {
    /// The principal that published it ([`Event::publisher`](crate::protocol::Event)).
    pub publisher: String,
    pub id: String,
    pub cursor: u64,
}

impl StoredId {
    pub fn new(publisher: impl Into<String>, id: impl Into<String>, cursor: u64) -> StoredId {
        StoredId {
            publisher: publisher.into(),
            id: id.into(),
            cursor,
        }
    }
}

/// What [`EventStore::append_new`] did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this cursor.
    Stored(u64),
    /// Not stored: the log already holds this event id, under this cursor.
    Duplicate(u64),
}

/// An event for [`EventStore::append_new`]: not numbered yet (`cursor` 0).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Arc<EncodedEvent>,
    /// Answer [`Appended::Duplicate`] if the log holds its id; `false` stores it again
    /// (a dead letter republished).
    pub check_duplicate: bool,
}

impl NewEvent {
    /// The log need not keep its id for later duplicate checks: the server made the id
    /// up, so no other publish can repeat it.
    pub fn id_is_unique(&self) -> bool {
        self.event.event.id_generated && self.check_duplicate
    }
}

/// Reads of the event log on a connection of their own, beside the one that commits:
/// a long query (a topic pattern with no literal prefix, a type nothing has, a replay
/// from cursor 0) then holds up no publish. Each query sees what was committed when
/// it starts, as [`EventStore::query`] does.
pub trait EventReads: Send {
    /// [`EventStore::query`], on this connection.
    fn query(&mut self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError>;
}

/// A backend for the event log.
pub trait EventStore: Send {
    fn kind(&self) -> &'static str;

    /// A connection that only reads, for the store's read pool; `None` when reads must
    /// go through this one. (The memory store's readers share its log behind a lock
    /// and scan it a chunk at a time.)
    fn reader(&self) -> Result<Option<Box<dyn EventReads>>, StoreError> {
        Ok(None)
    }

    /// The highest cursor ever stored, `0` for a new store. Survives retention, so
    /// cursors are never reused.
    fn last_cursor(&self) -> Result<u64, StoreError>;

    /// The ids, publishers and cursors of the newest `limit` stored events, oldest
    /// first: the router's duplicate window starts with them, so a publisher retrying
    /// across a restart is still answered `duplicate`. An event stored before
    /// publishers were recorded reads as
    /// [`ANONYMOUS`](crate::protocol::ANONYMOUS)'s.
    fn recent_ids(&self, limit: usize) -> Result<Vec<StoredId>, StoreError>;

    /// Stores events in one transaction, all or nothing. Cursors are strictly
    /// increasing across calls.
    fn append(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError>;

    /// Whether this log numbers events itself ([`EventStore::append_new`]): it is
    /// shared by several nodes, so no router can. Then every node routes what it reads
    /// back from the log, and [`EventStore::append`] is only for importing events
    /// that already have cursors.
    fn numbers_events(&self) -> bool {
        false
    }

    /// Stores events in one transaction, all or nothing, numbering them after the
    /// highest cursor ever stored; one outcome per event, in order. A log shared by
    /// several nodes is the cluster's duplicate check and answers
    /// [`Appended::Duplicate`] for an id it holds; a single node's log leaves that to
    /// the router and stores every event.
    fn append_new(&mut self, events: &[NewEvent]) -> Result<Vec<Appended>, StoreError> {
        let mut next = self.last_cursor()?;
        let numbered: Vec<_> = events
            .iter()
            .map(|e| {
                next += 1;
                e.event.numbered(next)
            })
            .collect();
        self.append(&numbered)?;
        Ok(numbered
            .iter()
            .map(|e| Appended::Stored(e.event.cursor))
            .collect())
    }

    /// Events matching `q`, in its order, at most `q.limit`.
    fn query(&self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError>;

    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Deletes what `retention` no longer keeps; returns how many events went.
    fn apply_retention(&mut self, retention: &Retention) -> Result<u64, StoreError>;

    /// Stores a dead letter; ids are strictly increasing.
    fn add_dead_letter(&mut self, dl: NewDeadLetter) -> Result<DeadLetter, StoreError>;

    /// Dead letters with an id greater than `after`, oldest first, at most `limit`.
    fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// One dead letter.
    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError>;

    /// Removes and returns a dead letter.
    fn take_dead_letter(&mut self, id: u64) -> Result<Option<DeadLetter>, StoreError>;

    /// Deletes dead letters so that at most `max` remain, taking them as
    /// [`eviction::fair_eviction`] says (from the principals holding the most, each one's
    /// oldest first); returns how many went.
    fn trim_dead_letters(&mut self, max: u64) -> Result<u64, StoreError>;

    fn dead_letter_count(&self) -> Result<u64, StoreError>;

    /// The state of durable subscription `name` of `principal`; created with `floor`
    /// when it does not exist yet.
    fn durable_open(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<DurableState, StoreError>;

    /// Records acknowledged (or dead-lettered) cursors of a durable subscription.
    fn durable_ack(
        &mut self,
        principal: &str,
        name: &str,
        cursors: &[u64],
    ) -> Result<(), StoreError>;

    /// Moves the floor up (never down) and forgets acknowledged cursors at or below it.
    fn durable_set_floor(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<(), StoreError>;

    /// Claims durable subscription `name` of `principal` for `owner` (a connection of
    /// some node) for `ttl`: `false` when another owner holds an unexpired claim. A
    /// claim by the same owner renews it. A store used by one node only answers
    /// `true`: that node's router already keeps one connection per name.
    fn durable_claim(
        &mut self,
        _principal: &str,
        _name: &str,
        _owner: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives up `owner`'s claim (nothing if another owner holds it now).
    fn durable_release(
        &mut self,
        _principal: &str,
        _name: &str,
        _owner: &str,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where a durable subscription stands: every match at or below `floor` is resolved
/// (acknowledged or dead-lettered), and so are the `acked` cursors above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableState {
    pub floor: u64,
    pub acked: std::collections::BTreeSet<u64>,
}

/// Opens the backend the configuration names.
pub fn open(config: &Config) -> Result<Box<dyn EventStore>, StoreError> {
    match config.store.kind {
        StoreKind::Memory => Ok(Box::new(memory::MemoryStore::with_capacity(
            config.store.retention().max_events,
        ))),
        StoreKind::Sqlite => Ok(Box::new(sqlite::SqliteStore::open_in(
            &config.server.data_dir,
            &sqlite::SqliteOptions::from(&config.store),
        )?)),
        StoreKind::Redis => Ok(Box::new(redis::RedisStore::open(
            &redis::RedisOptions::from(config),
        )?)),
    }
}
