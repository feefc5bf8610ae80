//! Reading the log back: queries, the newest ids, and the cursors at its ends.
//!
//! Owns: the read-only statements on the segment tables. Must not: write anything.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::segments::Segments;
use super::{decode, to_i64, SqliteStore};
use crate::protocol::{EncodedEvent, ANONYMOUS};
use crate::store::{EventQuery, Order, StoreError, StoredId};

/// Rows read per page when a topic pattern must be checked in Rust.
const PAGE: usize = 1000;

impl SqliteStore {
    /// The newest stored cursor, or what retention recorded before deleting it
    /// ([`EventStore::last_cursor`](crate::store::EventStore::last_cursor)).
    pub(super) fn last_cursor_ever(&self) -> Result<u64, StoreError> {
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

    /// The lowest (`Order::Asc`) or highest (`Order::Desc`) stored cursor: from the
    /// first segment, in that direction, that has one.
    pub(super) fn edge_cursor(&self, end: Order) -> Result<Option<u64>, StoreError> {
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

    /// [`EventStore::recent_ids`](crate::store::EventStore::recent_ids).
    pub(super) fn newest_ids(&self, limit: usize) -> Result<Vec<StoredId>, StoreError> {
        let mut ids = Vec::new();
        for &n in self.segments.tables.iter().rev() {
            if ids.len() >= limit {
                break;
            }
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT id, cursor, publisher FROM {} ORDER BY cursor DESC LIMIT ?1",
                Segments::name(n)
            ))?;
            let rows = stmt.query_map(params![to_i64((limit - ids.len()) as u64)], |r| {
                Ok(StoredId {
                    id: r.get(0)?,
                    cursor: r.get::<_, i64>(1)?.max(0) as u64,
                    publisher: r
                        .get::<_, Option<String>>(2)?
                        .unwrap_or_else(|| ANONYMOUS.to_owned()),
                })
            })?;
            for row in rows {
                ids.push(row?);
            }
        }
        ids.reverse();
        Ok(ids)
    }

    /// [`EventStore::query`](crate::store::EventStore::query).
    pub(super) fn run_query(&self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        query(&self.conn, &self.segments, q)
    }
}

/// A query on `conn`, over the tables `segments` names. Type and priority filter in
/// SQL; the topic pattern is checked here, page by page, narrowed by its literal
/// prefix.
pub(super) fn query(
    conn: &Connection,
    segments: &Segments,
    q: &EventQuery,
) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
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
    for n in segments.in_order(q.order) {
        if segments.last_cursor_of(n) <= after {
            // Nothing after `after` in this one.
            continue;
        }
        let sql = format!(
            "SELECT cursor, topic, envelope FROM {}
             WHERE cursor > ?1 AND cursor < ?2
               AND (?3 IS NULL OR type = ?3) AND (?4 IS NULL OR priority = ?4)
               AND topic LIKE ?5 ESCAPE '\\'
             ORDER BY cursor {} LIMIT ?6",
            Segments::name(n),
            if q.order == Order::Asc { "ASC" } else { "DESC" }
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        // Concrete bounds, so that SQLite searches the primary key instead of
        // scanning.
        let (mut lower, mut upper) = (to_i64(after), i64::MAX);
        loop {
            let page: Vec<(i64, String, String)> = stmt
                .query_map(
                    params![
                        lower,
                        upper,
                        q.event_type,
                        q.priority.map(|p| p.as_str()),
                        like,
                        PAGE as i64
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<Result<_, _>>()?;
            let Some(&(last, _, _)) = page.last() else {
                break;
            };
            let full = page.len() == PAGE;
            for (cursor, topic, envelope) in page {
                // The pattern on the topic column first: a scan over rows it rejects
                // decodes none of them.
                if !q.topic.as_ref().is_none_or(|p| p.matches(&topic)) {
                    continue;
                }
                let e = decode(cursor as u64, &envelope)?;
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
