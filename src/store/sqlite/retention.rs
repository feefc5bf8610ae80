//! Deleting what the retention limits no longer keep: whole segments first, then rows
//! of the one segment a limit falls in.
//!
//! Owns: the retention pass and the `last_cursor` record that keeps cursors from being
//! reused. Must not: choose the limits or when a pass runs (the store actor does).

use std::collections::BTreeMap;

use chrono::Utc;
use rusqlite::{params, OptionalExtension};

use super::segments::{drop_segment, record_segment, Segments};
use super::{to_i64, SqliteStore};
use crate::store::{Order, Retention, StoreError};

/// Records the newest cursor before retention may delete it, so cursors are never
/// reused.
pub(super) const RECORD_LAST_CURSOR: &str = "
    INSERT INTO meta (key, value) VALUES ('last_cursor', ?1)
    ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)";

/// Rows one pass deletes from the segment a limit falls in; the store actor runs
/// passes until one removes nothing, committing events in between. Whole segments are
/// dropped at once (cheap, whatever their size).
const MAX_ROWS_PER_PASS: i64 = 8192;

impl SqliteStore {
    /// [`EventStore::apply_retention`](crate::store::EventStore::apply_retention).
    pub(super) fn retain(&mut self, retention: &Retention) -> Result<u64, StoreError> {
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
                            &format!(
                                "DELETE FROM {name} WHERE cursor <= ?1 \
                                 AND cursor < (SELECT min(cursor) FROM {name}) + ?2"
                            ),
                            params![to_i64(threshold), MAX_ROWS_PER_PASS],
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
                            &format!(
                                "DELETE FROM {name} WHERE cursor < ?1 \
                                 AND cursor < (SELECT min(cursor) FROM {name}) + ?2"
                            ),
                            params![first, MAX_ROWS_PER_PASS],
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
}
