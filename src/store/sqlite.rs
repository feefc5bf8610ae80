//! The SQLite backend (default): one WAL-mode database file, `events.db`, under the data
//! directory. Appends are one transaction per batch (the store actor groups many
//! publishes into one batch), so durable ingest pays one fsync per batch. WAL
//! checkpoints run on a thread of their own (`checkpoint`), not inside commits. The
//! log is a run of segment tables (`Segments`), so that retention drops tables instead
//! of deleting rows one by one.
//!
//! Owns: the database file and every statement run on it. Must not: decide retention
//! limits or when they apply (the store actor does), or assign cursors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::checkpoint::{self, Checkpointer};
use super::{
    DeadLetter, DurableState, EventQuery, EventStore, NewDeadLetter, Order, Retention, StoreError,
    StoreStats,
};
use crate::config::{Config, StoreConfig};
use crate::protocol::EncodedEvent;

const SCHEMA: &str = "
-- The events are in segment tables (see `Segments`), created as the log reaches them.
-- Retention by age walks a segment's primary key (see apply_retention): an index on
-- stored_ms cost each insert a second B-tree and is dropped from older files.
DROP INDEX IF EXISTS events_stored;
CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT    NOT NULL,
    connection_id   INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    dead_at         TEXT    NOT NULL,
    envelope        TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS durable_subscriptions (
    principal TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    floor     INTEGER NOT NULL,
    PRIMARY KEY (principal, name)
);
CREATE TABLE IF NOT EXISTS durable_acks (
    principal TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    cursor    INTEGER NOT NULL,
    PRIMARY KEY (principal, name, cursor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// One segment of the log: the table `name`, with the columns of the single `events`
/// table of files from before segments.
fn create_segment(name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (
            cursor    INTEGER PRIMARY KEY,
            id        TEXT    NOT NULL,
            topic     TEXT    NOT NULL,
            type      TEXT    NOT NULL,
            priority  TEXT    NOT NULL,
            stored_ms INTEGER NOT NULL,
            envelope  TEXT    NOT NULL
        )"
    )
}

/// Records the newest cursor before retention may delete it, so cursors are never
/// reused.
const RECORD_LAST_CURSOR: &str = "
    INSERT INTO meta (key, value) VALUES ('last_cursor', ?1)
    ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)";

const SELECT_DEAD_LETTER: &str =
    "SELECT id, subscription_id, connection_id, reason, attempts, dead_at, envelope
     FROM dead_letters WHERE id = ?1";

/// Rows read per page when a topic pattern must be checked in Rust.
const PAGE: usize = 1000;

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
    checkpointer: Checkpointer,
    segments: Segments,
    /// Rows per segment (same keys as `segments.tables`), kept by appends and
    /// retention; their sum is the event count. `count(*)` reads every page it counts
    /// (270 ms on the store thread for a million events), and `/api/stats` asks for
    /// it each time the dashboard polls.
    rows: BTreeMap<u64, u64>,
    /// Segments whose row count is recorded in `meta` ([`record_segment`]): those the
    /// log has moved past. Opening the file reads their counts instead of counting,
    /// so only the newest segment is counted.
    recorded: BTreeSet<u64>,
}

/// The event log's tables. Segment `n` (from 1) is the table `events_<n>` and holds
/// the cursors `(n - 1) * per + 1 ..= n * per`; segment 0 is the single `events` table
/// of a file from before segments, older than all the others. Retention deletes whole
/// segments with `DROP TABLE`, which frees their pages as they are; deleting rows
/// rewrites every page it touches and rebalances the tree (measured: 0.70 s and 75 MB
/// of WAL for 100,000 rows against 26 ms and 64 KB for the same rows as one table).
struct Segments {
    per: u64,
    /// Segments that have a table, oldest first. A table may be empty (an older
    /// file's empty `events` table, or a segment whose rows all fell under a count
    /// limit when cursors had gaps): reads skip empty ones and retention drops them.
    tables: BTreeSet<u64>,
}

impl Segments {
    fn of(&self, cursor: u64) -> u64 {
        cursor.saturating_sub(1) / self.per + 1
    }

    fn name(n: u64) -> String {
        if n == 0 {
            "events".to_owned()
        } else {
            format!("events_{n}")
        }
    }

    /// The segments that have a table, oldest first (`Asc`) or newest first (`Desc`).
    fn in_order(&self, order: Order) -> Vec<u64> {
        match order {
            Order::Asc => self.tables.iter().copied().collect(),
            Order::Desc => self.tables.iter().rev().copied().collect(),
        }
    }

    /// The highest cursor segment `n` may hold.
    fn last_cursor_of(&self, n: u64) -> u64 {
        if n == 0 {
            u64::MAX
        } else {
            n.saturating_mul(self.per)
        }
    }

    /// Reads the segment size (recording `per` in a new file) and finds the tables.
    fn load(conn: &Connection, per: u64) -> Result<Segments, StoreError> {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('segment_events', ?1)
             ON CONFLICT(key) DO NOTHING",
            params![to_i64(per)],
        )?;
        let per: i64 = conn.query_row(
            "SELECT value FROM meta WHERE key = 'segment_events'",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'events*'",
        )?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let tables = names
            .iter()
            .filter_map(|name| match name.as_str() {
                "events" => Some(0),
                other => other
                    .strip_prefix("events_")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0),
            })
            .collect();
        Ok(Segments {
            per: per.max(1) as u64,
            tables,
        })
    }
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
        Self::open_with(path, options, checkpoint::CHECKPOINT_BYTES)
    }

    fn open_with(
        path: &Path,
        options: &SqliteOptions,
        checkpoint_bytes: usize,
    ) -> Result<SqliteStore, StoreError> {
        let synchronous_full = options.synchronous_full;
        let mut conn = Connection::open(path)?;
        // Takes effect only while the file is new (before the first table exists).
        conn.pragma_update(None, "page_size", options.page_size)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Checkpoints are the checkpoint thread's job, and the writer's between commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", checkpoint::WAL_SIZE_LIMIT)?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Reads and appends name one statement per segment.
        conn.set_prepared_statement_cache_capacity(64);
        let segments = Segments::load(&conn, options.segment_events)?;
        // A sealed segment's count is read from `meta` when its cursor edges still
        // match what was recorded with it; the newest segment, and any other that was
        // not recorded (a file from before this) or no longer matches, is counted, and
        // every sealed one counted is recorded for the next open. These are the only
        // counts this connection makes (see `rows`).
        let newest = segments.tables.last().copied();
        let mut rows = BTreeMap::new();
        let mut recorded = BTreeSet::new();
        let tx = conn.transaction()?;
        for &n in &segments.tables {
            // Segment 0, a file's table from before segments, never gets appends.
            let sealed = n == 0 || Some(n) != newest;
            let count = match sealed.then(|| recorded_rows(&tx, n)).transpose()? {
                Some(Some(count)) => count,
                _ => {
                    let count: i64 = tx.query_row(
                        &format!("SELECT count(*) FROM {}", Segments::name(n)),
                        [],
                        |r| r.get(0),
                    )?;
                    let count = count.max(0) as u64;
                    if sealed {
                        record_segment(&tx, n, count)?;
                    }
                    count
                }
            };
            if sealed {
                recorded.insert(n);
            }
            rows.insert(n, count);
        }
        tx.commit()?;
        let checkpointer = Checkpointer::start(path, synchronous_full, checkpoint_bytes)?;
        Ok(SqliteStore {
            conn,
            checkpointer,
            segments,
            rows,
            recorded,
        })
    }

    fn decode(cursor: u64, envelope: &str) -> Result<Arc<EncodedEvent>, StoreError> {
        super::decode_envelope(cursor, envelope.into())
    }

    /// The lowest (`Order::Asc`) or highest (`Order::Desc`) stored cursor: from the
    /// first segment, in that direction, that has one.
    fn edge_cursor(&self, end: Order) -> Result<Option<u64>, StoreError> {
        let aggregate = if end == Order::Asc { "min" } else { "max" };
        for n in self.segments.in_order(end) {
            let sql = format!("SELECT {aggregate}(cursor) FROM {}", Segments::name(n));
            let found: Option<i64> = self
                .conn
                .prepare_cached(&sql)?
                .query_row([], |r| r.get(0))?;
            if let Some(c) = found {
                return Ok(Some(c.max(0) as u64));
            }
        }
        Ok(None)
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Empties and drops one segment; returns its row count. Without a `WHERE` clause
/// SQLite frees the table's pages whole instead of deleting row by row, and still
/// counts the rows.
fn drop_segment(tx: &rusqlite::Transaction<'_>, n: u64) -> Result<u64, StoreError> {
    let name = Segments::name(n);
    let rows = tx.execute(&format!("DELETE FROM {name}"), [])?;
    tx.execute_batch(&format!("DROP TABLE {name}"))?;
    tx.execute(
        "DELETE FROM meta WHERE key IN (?1, ?2, ?3)",
        params_from_iter(segment_keys(n)),
    )?;
    Ok(rows as u64)
}

/// The `meta` keys of a sealed segment: its row count, lowest and highest cursor.
fn segment_keys(n: u64) -> [String; 3] {
    ["rows", "first", "last"].map(|what| format!("segment_{n}_{what}"))
}

/// A segment's lowest and highest cursor (0 when it is empty), each a primary-key
/// search: SQLite optimises `min` or `max` alone, not both in one `SELECT`.
fn segment_edges(conn: &Connection, n: u64) -> Result<[i64; 2], StoreError> {
    Ok(
        conn.query_row(&segment_edges_sql(&Segments::name(n)), [], |r| {
            Ok([r.get(0)?, r.get(1)?])
        })?,
    )
}

fn segment_edges_sql(name: &str) -> String {
    format!(
        "SELECT coalesce((SELECT min(cursor) FROM {name}), 0),
                coalesce((SELECT max(cursor) FROM {name}), 0)"
    )
}

/// Records that segment `n` holds `rows` rows, with its cursor edges, in the
/// transaction that sealed it (or changed it since). One `meta` write per segment
/// sealed: appends otherwise leave `meta` alone (see `apply_retention`).
fn record_segment(tx: &rusqlite::Transaction<'_>, n: u64, rows: u64) -> Result<(), StoreError> {
    let [first, last] = segment_edges(tx, n)?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?;
    let [rows_key, first_key, last_key] = segment_keys(n);
    upsert.execute(params![rows_key, to_i64(rows)])?;
    upsert.execute(params![first_key, first])?;
    upsert.execute(params![last_key, last])?;
    Ok(())
}

/// The recorded row count of segment `n`, if there is one and its cursor edges still
/// match the table's (a file changed by a version that did not record counts, or by
/// hand at an edge, is counted again).
fn recorded_rows(conn: &Connection, n: u64) -> Result<Option<u64>, StoreError> {
    let Some([rows, first, last]) = segment_record(conn, n)? else {
        return Ok(None);
    };
    Ok((segment_edges(conn, n)? == [first, last]).then_some(rows.max(0) as u64))
}

/// What `meta` holds for segment `n` ([`segment_keys`]): rows, first and last
/// cursor; `None` unless all three are there.
fn segment_record(conn: &Connection, n: u64) -> Result<Option<[i64; 3]>, StoreError> {
    let mut get = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
    let mut values = [0i64; 3];
    for (value, key) in values.iter_mut().zip(segment_keys(n)) {
        match get.query_row(params![key], |r| r.get(0)).optional()? {
            Some(v) => *value = v,
            None => return Ok(None),
        }
    }
    Ok(Some(values))
}

impl EventStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        // The newest stored event, or what retention recorded before deleting it.
        let recorded: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'last_cursor'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let recorded = recorded.unwrap_or(0).max(0) as u64;
        Ok(recorded.max(self.edge_cursor(Order::Desc)?.unwrap_or(0)))
    }

    fn recent_ids(&self, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let mut ids = Vec::new();
        for &n in self.segments.tables.iter().rev() {
            if ids.len() >= limit {
                break;
            }
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT id, cursor FROM {} ORDER BY cursor DESC LIMIT ?1",
                Segments::name(n)
            ))?;
            let rows = stmt.query_map(params![to_i64((limit - ids.len()) as u64)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })?;
            for row in rows {
                ids.push(row?);
            }
        }
        ids.reverse();
        Ok(ids)
    }

    fn append(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        let mut bytes = 0;
        let mut created = Vec::new();
        let mut added: BTreeMap<u64, u64> = BTreeMap::new();
        let tx = self.conn.transaction()?;
        // Cursors ascend within a batch: one run of events per segment it reaches.
        for run in events
            .chunk_by(|a, b| self.segments.of(a.event.cursor) == self.segments.of(b.event.cursor))
        {
            let n = self.segments.of(run[0].event.cursor);
            let name = Segments::name(n);
            if !self.segments.tables.contains(&n) {
                tx.execute_batch(&create_segment(&name))?;
                created.push(n);
            }
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO {name} (cursor, id, topic, type, priority, stored_ms, envelope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))?;
            for e in run {
                let ev = &e.event;
                insert.execute(params![
                    to_i64(ev.cursor),
                    ev.id,
                    ev.topic,
                    ev.event_type,
                    ev.priority.as_str(),
                    now,
                    &*e.json
                ])?;
                bytes += e.json.len();
            }
            *added.entry(n).or_default() += run.len() as u64;
        }
        // A new segment seals every one before it: record their counts with this
        // commit. (Cursors only grow, so a recorded segment gets no rows; if one did,
        // it is recorded again.) Most appends create none and look at nothing here.
        let mut sealed: Vec<u64> = added
            .keys()
            .copied()
            .filter(|n| self.recorded.contains(n))
            .collect();
        if let Some(&newest) = created.last() {
            let before = self.segments.tables.iter().chain(&created).copied();
            sealed.extend(before.filter(|&n| n < newest && !self.recorded.contains(&n)));
        }
        for &n in &sealed {
            let rows =
                self.rows.get(&n).copied().unwrap_or(0) + added.get(&n).copied().unwrap_or(0);
            record_segment(&tx, n, rows)?;
        }
        tx.commit()?;
        self.segments.tables.extend(created);
        self.recorded.extend(sealed);
        for (n, k) in added {
            *self.rows.entry(n).or_default() += k;
        }
        if self.checkpointer.committed(bytes) {
            // Between commits, so it delays none; it fails only if another checkpoint
            // is running, and then the next catch-up does it.
            if let Err(e) = checkpoint::passive(&self.conn) {
                log::debug!("WAL catch-up checkpoint skipped: {e}");
            }
        }
        Ok(())
    }

    fn query(&self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        // Type and priority filter in SQL; the topic pattern is checked here, page by
        // page, narrowed by its literal prefix.
        let prefix: Vec<&str> = q
            .topic
            .as_ref()
            .map(|p| p.literal_prefix().collect())
            .unwrap_or_default();
        let like = if prefix.is_empty() {
            "%".to_owned()
        } else {
            let escaped = prefix
                .join(".")
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("{escaped}%")
        };
        let after = q.after.unwrap_or(0);
        let mut found = Vec::new();
        for n in self.segments.in_order(q.order) {
            if self.segments.last_cursor_of(n) <= after {
                // Nothing after `after` in this one.
                continue;
            }
            let sql = format!(
                "SELECT cursor, envelope FROM {}
                 WHERE cursor > ?1 AND cursor < ?2
                   AND (?3 IS NULL OR type = ?3) AND (?4 IS NULL OR priority = ?4)
                   AND topic LIKE ?5 ESCAPE '\\'
                 ORDER BY cursor {} LIMIT ?6",
                Segments::name(n),
                if q.order == Order::Asc { "ASC" } else { "DESC" }
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            // Concrete bounds, so that SQLite searches the primary key instead of
            // scanning.
            let (mut lower, mut upper) = (to_i64(after), i64::MAX);
            loop {
                let page: Vec<(i64, String)> = stmt
                    .query_map(
                        params![
                            lower,
                            upper,
                            q.event_type,
                            q.priority.map(|p| p.as_str()),
                            like,
                            PAGE as i64
                        ],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .collect::<Result<_, _>>()?;
                let Some(&(last, _)) = page.last() else { break };
                let full = page.len() == PAGE;
                for (cursor, envelope) in page {
                    let e = Self::decode(cursor as u64, &envelope)?;
                    if q.matches(&e) {
                        found.push(e);
                        if found.len() >= q.limit {
                            return Ok(found);
                        }
                    }
                }
                if !full {
                    break;
                }
                match q.order {
                    Order::Asc => lower = last,
                    Order::Desc => upper = last,
                }
            }
        }
        Ok(found)
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
        let Some(newest) = self.edge_cursor(Order::Desc)? else {
            return Ok(0);
        };
        let tables = self.segments.in_order(Order::Asc);
        let mut dropped = Vec::new();
        let mut deleted = 0;
        // Rows deleted from segments that stay, by segment.
        let mut trimmed: BTreeMap<u64, u64> = BTreeMap::new();
        let tx = self.conn.transaction()?;
        // The newest event may be deleted below (by age): record its cursor first, in
        // the same transaction, so cursors are never reused. Appends write `meta` only
        // when they seal a segment, which keeps a commit to the pages of the rows it
        // adds.
        tx.execute(RECORD_LAST_CURSOR, params![to_i64(newest)])?;
        if let Some(threshold) = retention.max_events.and_then(|max| newest.checked_sub(max)) {
            // Cursors are dense (a failed commit leaves a rare gap), so the newest
            // `max` events are those above `newest - max`; with gaps, slightly fewer
            // are kept. Whole segments at or below it go, then the rows at or below it
            // in the next one.
            for &n in &tables {
                let name = Segments::name(n);
                let last: Option<i64> =
                    tx.query_row(&format!("SELECT max(cursor) FROM {name}"), [], |r| r.get(0))?;
                match last {
                    Some(last) if last.max(0) as u64 > threshold => {
                        let rows = tx.execute(
                            &format!("DELETE FROM {name} WHERE cursor <= ?1"),
                            params![to_i64(threshold)],
                        )? as u64;
                        *trimmed.entry(n).or_default() += rows;
                        break;
                    }
                    _ => {
                        deleted += drop_segment(&tx, n)?;
                        dropped.push(n);
                    }
                }
            }
        }
        if let Some(age) = retention.max_age {
            let cutoff =
                Utc::now().timestamp_millis() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            // As the memory store does: the oldest events, in cursor order, up to the
            // first one stored at or after the cutoff. Rows are stored in cursor order
            // at the time of their commit, so this is every row older than the cutoff
            // (unless the clock stepped back), found by walking each segment's primary
            // key from its start over the rows to delete: no index on `stored_ms`,
            // which every insert would pay for.
            let remaining: Vec<u64> = tables
                .iter()
                .copied()
                .filter(|n| !dropped.contains(n))
                .collect();
            for n in remaining {
                let name = Segments::name(n);
                let first_kept: Option<i64> = tx
                    .query_row(
                        &format!(
                            "SELECT cursor FROM {name} WHERE stored_ms >= ?1 ORDER BY cursor LIMIT 1"
                        ),
                        params![cutoff],
                        |r| r.get(0),
                    )
                    .optional()?;
                match first_kept {
                    Some(first) => {
                        let rows = tx.execute(
                            &format!("DELETE FROM {name} WHERE cursor < ?1"),
                            params![first],
                        )? as u64;
                        *trimmed.entry(n).or_default() += rows;
                        break;
                    }
                    None => {
                        deleted += drop_segment(&tx, n)?;
                        dropped.push(n);
                    }
                }
            }
        }
        // A sealed segment that lost rows is recorded again, with its new first cursor.
        for (&n, &k) in trimmed.iter().filter(|(n, _)| !dropped.contains(n)) {
            if self.recorded.contains(&n) {
                let left = self.rows.get(&n).copied().unwrap_or(0).saturating_sub(k);
                record_segment(&tx, n, left)?;
            }
        }
        tx.commit()?;
        for (n, k) in trimmed {
            deleted += k;
            if let Some(rows) = self.rows.get_mut(&n) {
                *rows = rows.saturating_sub(k);
            }
        }
        for n in dropped {
            self.segments.tables.remove(&n);
            self.rows.remove(&n);
            self.recorded.remove(&n);
        }
        Ok(deleted)
    }

    fn add_dead_letter(&mut self, dl: NewDeadLetter) -> Result<DeadLetter, StoreError> {
        let dead_at = Utc::now();
        self.conn.execute(
            "INSERT INTO dead_letters (subscription_id, connection_id, reason, attempts, dead_at, envelope)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                dl.subscription_id,
                to_i64(dl.connection_id),
                dl.reason,
                dl.attempts,
                dead_at.to_rfc3339(),
                &*dl.event.json
            ],
        )?;
        Ok(dl.stored(self.conn.last_insert_rowid().max(0) as u64, dead_at))
    }

    fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, subscription_id, connection_id, reason, attempts, dead_at, envelope
             FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![to_i64(after), i64::try_from(limit).unwrap_or(i64::MAX)],
            row_to_dead,
        )?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|raw| raw.decode()))
            .collect()
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let raw = self
            .conn
            .query_row(SELECT_DEAD_LETTER, params![to_i64(id)], row_to_dead)
            .optional()?;
        raw.map(RawDeadLetter::decode).transpose()
    }

    fn take_dead_letter(&mut self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let tx = self.conn.transaction()?;
        let raw = tx
            .query_row(SELECT_DEAD_LETTER, params![to_i64(id)], row_to_dead)
            .optional()?;
        tx.execute(
            "DELETE FROM dead_letters WHERE id = ?1",
            params![to_i64(id)],
        )?;
        tx.commit()?;
        raw.map(RawDeadLetter::decode).transpose()
    }

    fn durable_open(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<DurableState, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO durable_subscriptions (principal, name, floor) VALUES (?1, ?2, ?3)
             ON CONFLICT(principal, name) DO NOTHING",
            params![principal, name, to_i64(floor)],
        )?;
        let floor: i64 = tx.query_row(
            "SELECT floor FROM durable_subscriptions WHERE principal = ?1 AND name = ?2",
            params![principal, name],
            |r| r.get(0),
        )?;
        let acked = {
            let mut stmt = tx.prepare_cached(
                "SELECT cursor FROM durable_acks WHERE principal = ?1 AND name = ?2 AND cursor > ?3",
            )?;
            let rows = stmt.query_map(params![principal, name, floor], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|c| c.max(0) as u64))
                .collect::<Result<_, _>>()?
        };
        tx.commit()?;
        Ok(DurableState {
            floor: floor.max(0) as u64,
            acked,
        })
    }

    fn durable_ack(
        &mut self,
        principal: &str,
        name: &str,
        cursors: &[u64],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO durable_acks (principal, name, cursor) VALUES (?1, ?2, ?3)",
            )?;
            for c in cursors {
                insert.execute(params![principal, name, to_i64(*c)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn durable_set_floor(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE durable_subscriptions SET floor = max(floor, ?3) WHERE principal = ?1 AND name = ?2",
            params![principal, name, to_i64(floor)],
        )?;
        tx.execute(
            "DELETE FROM durable_acks WHERE principal = ?1 AND name = ?2
             AND cursor <= (SELECT floor FROM durable_subscriptions WHERE principal = ?1 AND name = ?2)",
            params![principal, name],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn trim_dead_letters(&mut self, max: u64) -> Result<u64, StoreError> {
        // Ids only increase: the newest `max` are those above `max(id) - max`, a
        // primary-key range, not a count of the table.
        let removed = self.conn.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?1",
            params![to_i64(max)],
        )?;
        Ok(removed as u64)
    }

    fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}

/// A dead-letter row before its envelope and time are parsed.
struct RawDeadLetter {
    id: i64,
    subscription_id: String,
    connection_id: i64,
    reason: String,
    attempts: u32,
    dead_at: String,
    envelope: String,
}

fn row_to_dead(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawDeadLetter> {
    Ok(RawDeadLetter {
        id: r.get(0)?,
        subscription_id: r.get(1)?,
        connection_id: r.get(2)?,
        reason: r.get(3)?,
        attempts: r.get(4)?,
        dead_at: r.get(5)?,
        envelope: r.get(6)?,
    })
}

impl RawDeadLetter {
    fn decode(self) -> Result<DeadLetter, StoreError> {
        let event = SqliteStore::decode(0, &self.envelope)?;
        let dead_at = chrono::DateTime::parse_from_rfc3339(&self.dead_at)
            .map_err(|e| StoreError::Corrupt {
                cursor: event.event.cursor,
                message: format!("dead letter {}: {e}", self.id),
            })?
            .with_timezone(&Utc);
        Ok(DeadLetter {
            id: self.id.max(0) as u64,
            event,
            subscription_id: self.subscription_id,
            connection_id: self.connection_id.max(0) as u64,
            reason: self.reason,
            attempts: self.attempts,
            dead_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;

    fn batch(first: u64, n: u64) -> Vec<Arc<EncodedEvent>> {
        (first..first + n)
            .map(|cursor| {
                let mut e = Event::from_json(
                    serde_json::json!({"topic": "t", "payload": {"pad": "x".repeat(1000)}}),
                    "s",
                )
                .unwrap();
                e.cursor = cursor;
                EncodedEvent::new(e)
            })
            .collect()
    }

    fn fast() -> SqliteOptions {
        SqliteOptions {
            synchronous_full: false,
            ..SqliteOptions::default()
        }
    }

    fn two_per_segment() -> SqliteOptions {
        SqliteOptions {
            segment_events: 2,
            ..fast()
        }
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn plan(store: &SqliteStore, sql: &str) -> Vec<String> {
        let mut plan = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        for i in 1..=plan.parameter_count() {
            plan.raw_bind_parameter(i, 1).unwrap();
        }
        let mut rows = plan.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get(3).unwrap());
        }
        steps
    }

    fn tables(store: &SqliteStore) -> Vec<String> {
        let mut stmt = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'events*' ORDER BY name")
            .unwrap();
        let names = stmt.query_map([], |r| r.get(0)).unwrap();
        names.collect::<Result<_, _>>().unwrap()
    }

    /// Retention and `/api/stats` run on the store thread between commits: their
    /// statements search the primary key instead of reading a whole segment. (Age
    /// retention walks a segment's key from its start, over just the rows it deletes.)
    #[test]
    fn retention_and_stats_do_not_scan_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let mut store = SqliteStore::open(&path, &two_per_segment()).unwrap();
        store.append(&batch(1, 3)).unwrap();
        for sql in [
            RECORD_LAST_CURSOR,
            "SELECT max(cursor) FROM events_1",
            "SELECT min(cursor) FROM events_1",
            "DELETE FROM events_1 WHERE cursor <= ?1",
            &segment_edges_sql("events_1"),
        ] {
            let steps = plan(&store, sql);
            assert!(
                steps
                    .iter()
                    .all(|s| !s.starts_with("SCAN") || s == "SCAN CONSTANT ROW"),
                "{sql}\n{steps:?}"
            );
        }
        // The kept count follows appends, retention (of a whole segment and of rows)
        // and a reopen.
        let keep_one = Retention {
            max_events: Some(1),
            max_age: None,
        };
        assert_eq!(store.apply_retention(&keep_one).unwrap(), 2);
        assert_eq!(store.stats().unwrap().event_count, 1);
        assert_eq!(tables(&store), ["events_2"]);
        store.append(&batch(4, 2)).unwrap();
        assert_eq!(store.stats().unwrap().event_count, 3);
        drop(store);
        let store = SqliteStore::open(&path, &fast()).unwrap();
        assert_eq!(store.segments.per, 2, "a file keeps its segment size");
        let stats = store.stats().unwrap();
        assert_eq!(
            (stats.event_count, stats.first_cursor, stats.last_cursor),
            (3, Some(3), Some(5))
        );
    }

    /// The recorded count of segment `n`: rows, first and last cursor.
    fn recorded(store: &SqliteStore, n: u64) -> Option<[i64; 3]> {
        segment_record(&store.conn, n).unwrap()
    }

    /// Sealed segments record their row counts, with their cursor edges, in `meta`:
    /// a reopen counts only the newest segment, and counts again one whose edges no
    /// longer match.
    #[test]
    fn sealed_segments_keep_their_counts_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let four = SqliteOptions {
            segment_events: 4,
            ..fast()
        };
        let mut store = SqliteStore::open(&path, &four).unwrap();
        // Segments 1 (cursors 1..=4), 2 (5..=8) and 3 (9, 10): the first two sealed.
        store.append(&batch(1, 10)).unwrap();
        assert_eq!(recorded(&store, 1), Some([4, 1, 4]));
        assert_eq!(recorded(&store, 2), Some([4, 5, 8]));
        assert_eq!(
            recorded(&store, 3),
            None,
            "the newest segment is not sealed"
        );
        // Keeping 5 drops segment 1 and trims segment 2, which is recorded again.
        let keep_five = Retention {
            max_events: Some(5),
            max_age: None,
        };
        assert_eq!(store.apply_retention(&keep_five).unwrap(), 5);
        assert_eq!(recorded(&store, 1), None);
        assert_eq!(recorded(&store, 2), Some([3, 6, 8]));
        assert_eq!(store.stats().unwrap().event_count, 5);
        drop(store);

        // The reopen reads the recorded count: made wrong (edges intact) by hand, it
        // shows in the kept count, so it was read and not counted.
        let raw = Connection::open(&path).unwrap();
        raw.execute(
            "UPDATE meta SET value = 100 WHERE key = 'segment_2_rows'",
            [],
        )
        .unwrap();
        drop(raw);
        let store = SqliteStore::open(&path, &four).unwrap();
        assert_eq!(store.stats().unwrap().event_count, 102);
        drop(store);

        // A row deleted at an edge by something else: counted again, recorded again.
        let raw = Connection::open(&path).unwrap();
        raw.execute("DELETE FROM events_2 WHERE cursor = 8", [])
            .unwrap();
        drop(raw);
        let mut store = SqliteStore::open(&path, &four).unwrap();
        assert_eq!(store.stats().unwrap().event_count, 4);
        assert_eq!(recorded(&store, 2), Some([2, 6, 7]));

        // Appends that open segment 4 seal segment 3.
        store.append(&batch(11, 3)).unwrap();
        assert_eq!(recorded(&store, 3), Some([4, 9, 12]));
        assert_eq!(recorded(&store, 4), None);
        assert_eq!(store.stats().unwrap().event_count, 7);
    }

    /// A file from before segments keeps its `events` table as the oldest segment:
    /// its events are read, new ones go to segments after it, retention empties and
    /// drops it like any other, and its age index is dropped on open.
    #[test]
    fn a_file_from_before_segments_is_read_and_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&create_segment("events")).unwrap();
            conn.execute_batch("CREATE INDEX events_stored ON events(stored_ms)")
                .unwrap();
            for e in batch(1, 3) {
                let ev = &e.event;
                conn.execute(
                    "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                    params![
                        to_i64(ev.cursor),
                        ev.id,
                        ev.topic,
                        ev.event_type,
                        ev.priority.as_str(),
                        &*e.json
                    ],
                )
                .unwrap();
            }
        }
        let mut store = SqliteStore::open(&path, &two_per_segment()).unwrap();
        let indexes: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'events_stored'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        assert_eq!(store.last_cursor().unwrap(), 3);
        // Counted once and recorded: the old table gets no appends.
        assert_eq!(recorded(&store, 0), Some([3, 1, 3]));
        store.append(&batch(4, 3)).unwrap();
        assert_eq!(tables(&store), ["events", "events_2", "events_3"]);
        let cursors = |store: &SqliteStore, order| -> Vec<u64> {
            let q = EventQuery {
                limit: 100,
                order,
                ..Default::default()
            };
            let found = store.query(&q).unwrap();
            found.iter().map(|e| e.event.cursor).collect()
        };
        assert_eq!(cursors(&store, Order::Asc), [1, 2, 3, 4, 5, 6]);
        assert_eq!(cursors(&store, Order::Desc), [6, 5, 4, 3, 2, 1]);
        let ids: Vec<u64> = store.recent_ids(4).unwrap().iter().map(|i| i.1).collect();
        assert_eq!(ids, [3, 4, 5, 6]);
        // Stored at time 0: age retention takes the old table whole, then stops at
        // the first event stored since.
        let an_hour = Retention {
            max_events: None,
            max_age: Some(std::time::Duration::from_secs(3600)),
        };
        assert_eq!(store.apply_retention(&an_hour).unwrap(), 3);
        assert_eq!(tables(&store), ["events_2", "events_3"]);
        assert_eq!(recorded(&store, 0), None);
        let stats = store.stats().unwrap();
        assert_eq!(
            (stats.event_count, stats.first_cursor, stats.last_cursor),
            (3, Some(4), Some(6))
        );
    }

    /// Checkpoints happen off the commit path, and the WAL still starts over instead of
    /// growing with the log.
    #[test]
    fn wal_is_checkpointed_and_bounded_under_steady_appends() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let wal = dir.path().join("events.db-wal");
        let every = 8 << 10;
        let mut store = SqliteStore::open_with(&db, &fast(), every).unwrap();
        let (batches, per_batch) = (400, 10);
        let mut max_wal = 0;
        for b in 0..batches {
            store.append(&batch(1 + b * per_batch, per_batch)).unwrap();
            max_wal = max_wal.max(size(&wal));
        }
        let appended = batches * per_batch * 1000;
        // The copies reach the database file (the writer never checkpoints on its own
        // outside the catch-ups, so most of this is the thread's work).
        assert!(
            size(&db) > appended / 2,
            "database file {} bytes after {appended} appended",
            size(&db)
        );
        // The WAL started over: it never held more than a small part of the log. (Each
        // commit writes two or three 16 KB pages for its 10 KB, so a WAL that never
        // started over would reach about three times `appended`; how far it gets
        // before a catch-up depends on when the checkpoint thread runs, which made a
        // quarter of `appended` too tight on a loaded machine.)
        assert!(
            max_wal < appended / 2,
            "WAL reached {max_wal} bytes for {appended} appended"
        );
        drop(store);
        let store = SqliteStore::open_in(dir.path(), &fast()).unwrap();
        assert_eq!(store.last_cursor().unwrap(), batches * per_batch);
        assert_eq!(store.stats().unwrap().event_count, batches * per_batch);
    }
}
