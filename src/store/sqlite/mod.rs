//! The SQLite backend (default): one WAL-mode database file, `events.db`, under the data
//! directory. Appends are one transaction per batch (the store actor groups many
//! publishes into one batch), so durable ingest pays one fsync per batch. WAL
//! checkpoints run on a thread of their own (`store::checkpoint`), not inside
//! commits. The log is a run of segment tables, so that retention drops tables instead
//! of deleting rows one by one.
//!
//! - this file: the options, opening the file, and the [`EventStore`] impl, which
//!   hands each method to the file of its concern;
//! - `schema`: the tables and the writer connection's settings;
//! - `segments`: which table holds which cursors, and the row counts kept per segment;
//! - `append` and `reads`: writing and reading the log;
//! - `retention`: deleting what the retention limits no longer keep;
//! - `dead_letters` and `durable`: dead letters and durable subscription state, in
//!   tables of their own beside the log.
//!
//! Owns: the database file and every statement run on it but checkpoints. Must not:
//! decide retention limits or when they apply (the store actor does), or assign
//! cursors.

mod append;
mod dead_letters;
mod durable;
mod reads;
mod retention;
mod schema;
mod segments;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;

use self::segments::Segments;
use super::checkpoint::{self, Checkpointer, WalSizes};
use super::{
    DeadLetter, DurableState, EventQuery, EventReads, EventStore, NewDeadLetter, Order, Retention,
    StoreError, StoreStats, StoredId,
};
use crate::config::{Config, StoreConfig};
use crate::protocol::EncodedEvent;

/// How the database file is opened (`[store]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Every commit survives power loss (`synchronous = FULL`); otherwise a commit
    /// survives a crash of the process, not of the machine.
    pub synchronous_full: bool,
    /// Page size of a file this creates (a power of two, 512 to 65536); an existing
    /// file keeps its own. Larger pages mean fewer writes per event under bulk ingest,
    /// but every commit rewrites at least one whole page.
    pub page_size: u32,
    /// Cursors per segment table of a file this creates; an existing file keeps its
    /// own. The server sets it from the count limit with
    /// [`segment_events_for`](crate::config::segment_events_for).
    pub segment_events: u64,
}

impl From<&StoreConfig> for SqliteOptions {
    fn from(config: &StoreConfig) -> Self {
        SqliteOptions {
            synchronous_full: config.synchronous_full,
            page_size: config.page_size,
            segment_events: config.segment_events(),
        }
    }
}

/// The options of the embedded defaults (`config/switchyard.toml`), so that a store
/// opened without a configuration matches one the server opens.
impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions::from(&Config::defaults().store)
    }
}

pub struct SqliteStore {
    conn: Connection,
    /// The database file; `None` on a connection that only reads, which opens no
    /// readers of its own.
    path: Option<PathBuf>,
    /// `None` on a connection that only reads ([`SqliteStore::open_read_only`]).
    checkpointer: Option<Checkpointer>,
    segments: Segments,
    /// Rows per segment (same keys as `segments.tables`), kept by appends and
    /// retention; their sum is the event count. `count(*)` reads every page it
    /// counts, and `/api/stats` asks for the count each time the dashboard polls.
    rows: BTreeMap<u64, u64>,
    /// Segments whose row count is recorded in `meta`
    /// ([`segments::record_segment`]): those the log has moved past. Opening the file
    /// reads their counts instead of counting, so only the newest segment is counted.
    recorded: BTreeSet<u64>,
}

impl SqliteStore {
    /// Opens (creating if needed) `events.db` in `dir`.
    pub fn open_in(dir: &Path, options: &SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        Self::open(&dir.join("events.db"), options)
    }

    pub fn open(path: &Path, options: &SqliteOptions) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, options, WalSizes::default())
    }

    fn open_with(
        path: &Path,
        options: &SqliteOptions,
        wal: WalSizes,
    ) -> Result<SqliteStore, StoreError> {
        let mut conn = schema::connect(path, options)?;
        checkpoint::watch(&conn);
        let segments = Segments::load(&conn, options.segment_events)?;
        for &n in &segments.tables {
            schema::add_publisher_column(&conn, &Segments::name(n))?;
        }
        let (rows, recorded) = segments::count_rows(&mut conn, &segments, true)?;
        let checkpointer = Checkpointer::start(path, options.synchronous_full, wal)?;
        Ok(SqliteStore {
            conn,
            path: Some(path.to_owned()),
            checkpointer: Some(checkpointer),
            segments,
            rows,
            recorded,
        })
    }

    /// Opens the existing `events.db` in `dir` for reading only (`switchyard cluster
    /// import`): the file is not changed, and every write method fails. Reads see what
    /// was committed when each one runs, so the server using the file must be stopped
    /// for them to add up to one consistent copy.
    pub fn open_read_only(dir: &Path) -> Result<SqliteStore, StoreError> {
        let mut conn = schema::connect_read_only(&dir.join("events.db"))?;
        let segments = Segments::read(&conn, SqliteOptions::default().segment_events)?;
        let (rows, recorded) = segments::count_rows(&mut conn, &segments, false)?;
        Ok(SqliteStore {
            conn,
            path: None,
            checkpointer: None,
            segments,
            rows,
            recorded,
        })
    }

    /// Every durable subscription's state, by principal and name (an export; the
    /// router opens them one by one with [`EventStore::durable_open`]).
    pub fn durables(&self) -> Result<Vec<StoredDurable>, StoreError> {
        durable::list(&self.conn)
    }
}

/// A read-only connection to the writer's file (the store's read pool). WAL lets it
/// read while the writer commits; each query runs in one read transaction, so it sees
/// one snapshot even when retention drops a segment meanwhile, and it finds the
/// segment tables anew, since the writer adds and drops them.
pub struct SqliteReader {
    conn: Connection,
    /// Cursors per segment, as the writer recorded them.
    per: u64,
}

impl EventReads for SqliteReader {
    fn query(&mut self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        let tx = self.conn.transaction()?;
        let segments = Segments::read(&tx, self.per)?;
        let found = reads::query(&tx, &segments, q)?;
        // Read only: ending the transaction releases its snapshot.
        tx.rollback()?;
        Ok(found)
    }
}

/// A durable subscription as stored: whose, which, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDurable {
    pub principal: String,
    pub name: String,
    pub state: DurableState,
}

fn decode(cursor: u64, envelope: &str) -> Result<Arc<EncodedEvent>, StoreError> {
    super::decode_envelope(cursor, envelope.into())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EventStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn reader(&self) -> Result<Option<Box<dyn EventReads>>, StoreError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        Ok(Some(Box::new(SqliteReader {
            conn: schema::connect_read_only(path)?,
            per: self.segments.per,
        })))
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        self.last_cursor_ever()
    }

    fn recent_ids(&self, limit: usize) -> Result<Vec<StoredId>, StoreError> {
        self.newest_ids(limit)
    }

    fn append(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError> {
        self.append_batch(events)
    }

    fn query(&self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        self.run_query(q)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        // Primary-key searches; the count is kept, not counted.
        Ok(StoreStats {
            kind: self.kind(),
            event_count: self.rows.values().sum(),
            dead_letters: self.dead_letter_count()?,
            first_cursor: self.edge_cursor(Order::Asc)?,
            last_cursor: self.edge_cursor(Order::Desc)?,
            dead_letters_evicted: 0,
        })
    }

    fn apply_retention(&mut self, retention: &Retention) -> Result<u64, StoreError> {
        self.retain(retention)
    }

    fn add_dead_letter(&mut self, dl: NewDeadLetter) -> Result<DeadLetter, StoreError> {
        dead_letters::add(&self.conn, dl)
    }

    fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        dead_letters::list(&self.conn, after, limit)
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        dead_letters::get(&self.conn, id)
    }

    fn take_dead_letter(&mut self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        dead_letters::take(&mut self.conn, id)
    }

    fn trim_dead_letters(&mut self, max: u64) -> Result<u64, StoreError> {
        dead_letters::trim(&self.conn, max)
    }

    fn dead_letter_count(&self) -> Result<u64, StoreError> {
        dead_letters::count(&self.conn)
    }

    fn durable_open(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<DurableState, StoreError> {
        durable::open(&mut self.conn, principal, name, floor)
    }

    fn durable_ack(
        &mut self,
        principal: &str,
        name: &str,
        cursors: &[u64],
    ) -> Result<(), StoreError> {
        durable::ack(&mut self.conn, principal, name, cursors)
    }

    fn durable_set_floor(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<(), StoreError> {
        durable::set_floor(&mut self.conn, principal, name, floor)
    }
}
