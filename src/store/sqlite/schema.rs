//! The tables of the database file and the settings of the writer's connection.
//!
//! Owns: the `CREATE` statements, the pragmas, dropping the index an older file
//! still has, and the read-only connections (the store's read pool, `switchyard cluster
//! import`). Must not: read or write rows (an older file's `events` table is read as a
//! segment; see `segments`).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::SqliteOptions;
use crate::store::checkpoint;
use crate::store::StoreError;

/// Every table but the log's segments, which are created as the log reaches them
/// ([`create_segment`]).
const SCHEMA: &str = "
-- Retention by age walks a segment's primary key (see `retention`): an index on
-- stored_ms cost each insert a second B-tree and is dropped from older files.
DROP INDEX IF EXISTS events_stored;
CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT    NOT NULL,
    connection_id   INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    dead_at         TEXT    NOT NULL,
    envelope        TEXT    NOT NULL,
    principal       TEXT    NOT NULL DEFAULT ''
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
/// table of files from before segments, and `publisher`: the principal whose id scope
/// `id` is in (NULL for `anonymous`, so a server without auth stores nothing more).
pub(super) fn create_segment(name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (
            cursor    INTEGER PRIMARY KEY,
            id        TEXT    NOT NULL,
            topic     TEXT    NOT NULL,
            type      TEXT    NOT NULL,
            priority  TEXT    NOT NULL,
            stored_ms INTEGER NOT NULL,
            envelope  TEXT    NOT NULL,
            publisher TEXT
        )"
    )
}

/// Gives segment `name` of an older file its `publisher` column, NULL in every row:
/// its events read as `anonymous`'s. Adding a column with no default rewrites no row.
pub(super) fn add_publisher_column(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'publisher'",
        [name],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {name} ADD COLUMN publisher TEXT"))?;
    }
    Ok(())
}

/// Gives the `dead_letters` table of an older file its `principal` column (`''` in
/// every row: they share one principal) and the index that eviction walks.
fn add_dead_letter_principal(conn: &Connection) -> Result<(), StoreError> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('dead_letters') WHERE name = 'principal'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(
            "ALTER TABLE dead_letters ADD COLUMN principal TEXT NOT NULL DEFAULT ''",
        )?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS dead_letters_principal ON dead_letters (principal, id)",
    )?;
    Ok(())
}

/// Opens the writer's connection to `path` and creates the tables it lacks.
pub(super) fn connect(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
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
        if options.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        },
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    add_dead_letter_principal(&conn)?;
    // Reads and appends name one statement per segment.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens an existing `path` for reading only: no table is created, no pragma is
/// changed and no statement can write (SQLite refuses them). SQLite may create the
/// `-wal` and `-shm` files beside it, never change the file itself.
pub(super) fn connect_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.is_file() {
        return Err(StoreError::DataDir {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such database file"),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}
