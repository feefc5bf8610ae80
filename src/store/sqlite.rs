//! The SQLite backend (default): one WAL-mode database file, `events.db`, under the data
//! directory. Appends are one transaction per batch (the store actor groups many
//! publishes into one batch), so durable ingest pays one fsync per batch. WAL
//! checkpoints run on a thread of their own (`checkpoint`), not inside commits.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

use super::checkpoint::{self, Checkpointer};
use super::{
    DeadLetter, DurableState, EventQuery, EventStore, NewDeadLetter, Order, Retention, StoreError,
    StoreStats,
};
use crate::protocol::EncodedEvent;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    cursor    INTEGER PRIMARY KEY,
    id        TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    type      TEXT    NOT NULL,
    priority  TEXT    NOT NULL,
    stored_ms INTEGER NOT NULL,
    envelope  TEXT    NOT NULL
);
-- Retention by age deletes the oldest rows in cursor order (see apply_retention); an
-- index on stored_ms cost each insert a second B-tree and is dropped from older files.
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

/// Records the newest cursor before retention may delete it, so cursors are never
/// reused. `max(cursor)` is a scalar subquery: SQLite answers it from the end of the
/// primary key. In a `FROM` clause the same aggregate scanned the whole table, on the
/// store thread, at every retention pass (issue 6).
const RECORD_LAST_CURSOR: &str = "
    INSERT INTO meta (key, value)
    SELECT 'last_cursor', newest FROM (SELECT (SELECT max(cursor) FROM events) AS newest)
    WHERE newest IS NOT NULL
    ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)";

/// Deletes all but the newest `?1` events. Cursors are dense (a failed commit leaves a
/// rare gap), so those are the ones above `max(cursor) - ?1`: a primary-key search, not
/// a scan; with gaps, slightly fewer are kept.
const DELETE_OVER_COUNT: &str =
    "DELETE FROM events WHERE cursor <= (SELECT max(cursor) FROM events) - ?1";

/// Deletes the events stored before `?1` (milliseconds), as the memory store does: the
/// oldest events, in cursor order, up to the first one stored at or after the cutoff.
/// Rows are stored in cursor order at the time of their commit, so this is every row
/// older than the cutoff (unless the clock stepped back), found by walking the primary
/// key from its start over exactly the rows to delete: no index on `stored_ms`, which
/// every insert would pay for.
const DELETE_OLDER_THAN: &str = "
    DELETE FROM events WHERE cursor < coalesce(
        (SELECT cursor FROM events WHERE stored_ms >= ?1 ORDER BY cursor LIMIT 1),
        (SELECT max(cursor) FROM events) + 1)";

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
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous_full: true,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

/// The page size of a new file when nothing else is configured (as `store.page_size`
/// in `config/switchyard.toml`): four times SQLite's own 4096, so a bulk commit makes
/// a quarter of the WAL writes (docs/benchmarks.md).
pub const DEFAULT_PAGE_SIZE: u32 = 16384;

pub struct SqliteStore {
    conn: Connection,
    checkpointer: Checkpointer,
    /// Rows in `events`: counted once on open, then kept by appends and retention.
    /// `count(*)` reads every page of the table (270 ms on the store thread for a
    /// million events), and `/api/stats` asks for it each time the dashboard polls.
    event_count: u64,
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
        Self::open_checkpointing(path, options, checkpoint::CHECKPOINT_BYTES)
    }

    fn open_checkpointing(
        path: &Path,
        options: &SqliteOptions,
        checkpoint_bytes: usize,
    ) -> Result<SqliteStore, StoreError> {
        let synchronous_full = options.synchronous_full;
        let conn = Connection::open(path)?;
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
        // Reading the table back proves the file is a usable database; the count is
        // the only one this connection makes (see `event_count`).
        let event_count: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        let checkpointer = Checkpointer::start(path, synchronous_full, checkpoint_bytes)?;
        Ok(SqliteStore {
            conn,
            checkpointer,
            event_count: event_count.max(0) as u64,
        })
    }

    fn decode(cursor: u64, envelope: &str) -> Result<Arc<EncodedEvent>, StoreError> {
        super::decode_envelope(cursor, envelope.into())
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EventStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        // The newest stored event, or what retention recorded before deleting it.
        let v: i64 = self.conn.query_row(
            "SELECT max(
                 coalesce((SELECT value FROM meta WHERE key = 'last_cursor'), 0),
                 coalesce((SELECT max(cursor) FROM events), 0))",
            [],
            |r| r.get(0),
        )?;
        Ok(v.max(0) as u64)
    }

    fn recent_ids(&self, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, cursor FROM events ORDER BY cursor DESC LIMIT ?1")?;
        let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        let mut ids = rows.collect::<Result<Vec<_>, _>>()?;
        ids.reverse();
        Ok(ids)
    }

    fn append(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        let mut bytes = 0;
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (cursor, id, topic, type, priority, stored_ms, envelope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in events {
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
        }
        tx.commit()?;
        self.event_count += events.len() as u64;
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
        let sql = format!(
            "SELECT cursor, envelope FROM events
             WHERE cursor > ?1 AND cursor < ?2
               AND (?3 IS NULL OR type = ?3) AND (?4 IS NULL OR priority = ?4)
               AND topic LIKE ?5 ESCAPE '\\'
             ORDER BY cursor {} LIMIT ?6",
            if q.order == Order::Asc { "ASC" } else { "DESC" }
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut found = Vec::new();
        // Concrete bounds, so that SQLite searches the primary key instead of scanning.
        let (mut lower, mut upper) = (q.after.map_or(0, to_i64), i64::MAX);
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
        Ok(found)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        // Two primary-key searches; the count is kept, not counted.
        let (first, last): (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT (SELECT min(cursor) FROM events), (SELECT max(cursor) FROM events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(StoreStats {
            kind: self.kind(),
            event_count: self.event_count,
            dead_letters: self.dead_letter_count()?,
            first_cursor: first.map(|c| c as u64),
            last_cursor: last.map(|c| c as u64),
            dead_letters_evicted: 0,
        })
    }

    fn apply_retention(&mut self, retention: &Retention) -> Result<u64, StoreError> {
        let mut deleted = 0;
        let tx = self.conn.transaction()?;
        // The newest event may be deleted below (by age): record its cursor first, in
        // the same transaction, so cursors are never reused. Appends do not write
        // `meta`, which keeps a commit to the pages of the rows it adds.
        tx.execute(RECORD_LAST_CURSOR, [])?;
        if let Some(max) = retention.max_events {
            deleted += tx.execute(DELETE_OVER_COUNT, params![to_i64(max)])? as u64;
        }
        if let Some(age) = retention.max_age {
            let cutoff =
                Utc::now().timestamp_millis() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            deleted += tx.execute(DELETE_OLDER_THAN, params![cutoff])? as u64;
        }
        tx.commit()?;
        self.event_count = self.event_count.saturating_sub(deleted);
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

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Retention and `/api/stats` run on the store thread between commits: their
    /// statements search the primary key instead of reading the whole table. (Age
    /// retention walks the key from its start, over just the rows it deletes.)
    #[test]
    fn retention_and_stats_do_not_scan_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("events.db"), &fast()).unwrap();
        store.append(&batch(1, 3)).unwrap();
        for sql in [
            RECORD_LAST_CURSOR,
            DELETE_OVER_COUNT,
            "SELECT (SELECT min(cursor) FROM events), (SELECT max(cursor) FROM events)",
        ] {
            let mut plan = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            for i in 1..=plan.parameter_count() {
                plan.raw_bind_parameter(i, 1).unwrap();
            }
            let mut rows = plan.raw_query();
            let mut steps: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get(3).unwrap());
            }
            assert!(
                steps.iter().all(|s| !s.starts_with("SCAN events")),
                "{sql}\n{steps:?}"
            );
        }
        // The kept count follows appends, retention and a reopen.
        let keep_one = Retention {
            max_events: Some(1),
            max_age: None,
        };
        assert_eq!(store.apply_retention(&keep_one).unwrap(), 2);
        assert_eq!(store.stats().unwrap().event_count, 1);
        store.append(&batch(4, 2)).unwrap();
        assert_eq!(store.stats().unwrap().event_count, 3);
        drop(store);
        let store = SqliteStore::open(&dir.path().join("events.db"), &fast()).unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(
            (stats.event_count, stats.first_cursor, stats.last_cursor),
            (3, Some(3), Some(5))
        );
    }

    /// A file from before the age index was dropped loses it on open, keeps its
    /// events, and retention by age still works on it.
    #[test]
    fn the_old_age_index_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let mut store = SqliteStore::open(&path, &fast()).unwrap();
            store.append(&batch(1, 3)).unwrap();
            store
                .conn
                .execute_batch("CREATE INDEX events_stored ON events(stored_ms)")
                .unwrap();
        }
        let mut store = SqliteStore::open(&path, &fast()).unwrap();
        let indexes: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'events_stored'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        assert_eq!(store.stats().unwrap().event_count, 3);
        let none_kept = Retention {
            max_events: None,
            max_age: Some(std::time::Duration::ZERO),
        };
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(store.apply_retention(&none_kept).unwrap(), 3);
        assert_eq!(store.last_cursor().unwrap(), 3);
    }

    /// Checkpoints happen off the commit path, and the WAL still starts over instead of
    /// growing with the log.
    #[test]
    fn wal_is_checkpointed_and_bounded_under_steady_appends() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let wal = dir.path().join("events.db-wal");
        let every = 8 << 10;
        let mut store = SqliteStore::open_checkpointing(&db, &fast(), every).unwrap();
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
        // The WAL started over: it never held more than a small part of the log.
        assert!(
            max_wal < appended / 4,
            "WAL reached {max_wal} bytes for {appended} appended"
        );
        drop(store);
        let store = SqliteStore::open_in(dir.path(), &fast()).unwrap();
        assert_eq!(store.last_cursor().unwrap(), batches * per_batch);
        assert_eq!(store.stats().unwrap().event_count, batches * per_batch);
    }
}
