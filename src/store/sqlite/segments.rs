//! The log's segment tables: which table holds which cursors, and the row counts of
//! sealed segments recorded in `meta`.
//!
//! Segment `n` (from 1) is the table `events_<n>` and holds the cursors
//! `(n - 1) * per + 1 ..= n * per`; segment 0 is the single `events` table of a file
//! from before segments, older than all the others. Retention deletes whole segments
//! with `DROP TABLE`, which frees their pages as they are, where deleting rows rewrites
//! every page it touches and rebalances the tree.
//!
//! Owns: the layout of segments and their `meta` records. Must not: decide what to
//! append or delete (`append` and `retention` do, through these helpers).

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use super::to_i64;
use crate::store::{Order, StoreError};

/// The event log's tables.
pub(super) struct Segments {
    pub(super) per: u64,
    /// Segments that have a table, oldest first. A table may be empty (an older
    /// file's empty `events` table, or a segment whose rows all fell under a count
    /// limit when cursors had gaps): reads skip empty ones and retention drops them.
    pub(super) tables: BTreeSet<u64>,
}

impl Segments {
    pub(super) fn of(&self, cursor: u64) -> u64 {
        cursor.saturating_sub(1) / self.per + 1
    }

    pub(super) fn name(n: u64) -> String {
        if n == 0 {
            "events".to_owned()
        } else {
            format!("events_{n}")
        }
    }

    /// The segments that have a table, oldest first (`Asc`) or newest first (`Desc`).
    pub(super) fn in_order(&self, order: Order) -> Vec<u64> {
        match order {
            Order::Asc => self.tables.iter().copied().collect(),
            Order::Desc => self.tables.iter().rev().copied().collect(),
        }
    }

    /// The highest cursor segment `n` may hold.
    pub(super) fn last_cursor_of(&self, n: u64) -> u64 {
        if n == 0 {
            u64::MAX
        } else {
            n.saturating_mul(self.per)
        }
    }

    /// Reads the segment size (recording `per` in a new file) and finds the tables.
    pub(super) fn load(conn: &Connection, per: u64) -> Result<Segments, StoreError> {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('segment_events', ?1)
             ON CONFLICT(key) DO NOTHING",
            params![to_i64(per)],
        )?;
        Segments::read(conn, per)
    }

    /// Reads the segment size (`per` if the file has none recorded) and finds the
    /// tables, writing nothing: for a connection that only reads.
    pub(super) fn read(conn: &Connection, per: u64) -> Result<Segments, StoreError> {
        let per: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'segment_events'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(to_i64(per));
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

/// The row count of every segment when the file is opened, and the sealed segments
/// among them (recorded in `meta`).
///
/// A sealed segment's count is read from `meta` when its cursor edges still match what
/// was recorded with it; the newest segment, and any other that was not recorded (a
/// file from before counts were recorded) or no longer matches, is counted, and every
/// sealed one counted is recorded for the next open. These are the only counts a
/// connection makes (see `SqliteStore::rows`).
/// A connection that only reads (`record` false) counts what is not recorded and
/// records nothing.
pub(super) fn count_rows(
    conn: &mut Connection,
    segments: &Segments,
    record: bool,
) -> Result<(BTreeMap<u64, u64>, BTreeSet<u64>), StoreError> {
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
                if sealed && record {
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
    Ok((rows, recorded))
}

/// Empties and drops one segment; returns its row count. Without a `WHERE` clause
/// SQLite frees the table's pages whole instead of deleting row by row, and still
/// counts the rows.
pub(super) fn drop_segment(tx: &Transaction<'_>, n: u64) -> Result<u64, StoreError> {
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

pub(super) fn segment_edges_sql(name: &str) -> String {
    format!(
        "SELECT coalesce((SELECT min(cursor) FROM {name}), 0),
                coalesce((SELECT max(cursor) FROM {name}), 0)"
    )
}

/// Records that segment `n` holds `rows` rows, with its cursor edges, in the
/// transaction that sealed it (or changed it since). One `meta` write per segment
/// sealed: appends otherwise leave `meta` alone (see `retention`).
pub(super) fn record_segment(tx: &Transaction<'_>, n: u64, rows: u64) -> Result<(), StoreError> {
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
pub(super) fn segment_record(conn: &Connection, n: u64) -> Result<Option<[i64; 3]>, StoreError> {
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
