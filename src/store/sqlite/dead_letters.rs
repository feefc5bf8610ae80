//! The `dead_letters` table.
//!
//! Owns: every statement on `dead_letters`. Must not: touch the log's segments or
//! decide how many dead letters to keep (the store actor passes the limit).

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

use super::{decode, to_i64};
use crate::store::eviction::fair_eviction;
use crate::store::{DeadLetter, NewDeadLetter, StoreError};

/// The columns of a row; a file from before `principal` opened read-only (by `cluster
/// import`) reads `''` for it, as the writer's migration would have filled in.
fn columns(conn: &Connection) -> Result<&'static str, StoreError> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('dead_letters') WHERE name = 'principal'",
        [],
        |r| r.get(0),
    )?;
    Ok(if has {
        "id, subscription_id, connection_id, reason, attempts, dead_at, envelope, principal"
    } else {
        "id, subscription_id, connection_id, reason, attempts, dead_at, envelope, ''"
    })
}

fn select_one(conn: &Connection) -> Result<String, StoreError> {
    Ok(format!(
        "SELECT {} FROM dead_letters WHERE id = ?1",
        columns(conn)?
    ))
}

pub(super) fn add(conn: &Connection, dl: NewDeadLetter) -> Result<DeadLetter, StoreError> {
    let dead_at = Utc::now();
    conn.execute(
        "INSERT INTO dead_letters
            (subscription_id, connection_id, reason, attempts, dead_at, envelope, principal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            dl.subscription_id,
            to_i64(dl.connection_id),
            dl.reason,
            dl.attempts,
            dead_at.to_rfc3339(),
            &*dl.event.json,
            dl.principal
        ],
    )?;
    Ok(dl.stored(conn.last_insert_rowid().max(0) as u64, dead_at))
}

pub(super) fn list(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
        columns(conn)?
    ))?;
    let rows = stmt.query_map(
        params![to_i64(after), i64::try_from(limit).unwrap_or(i64::MAX)],
        row_to_dead,
    )?;
    rows.map(|r| r.map_err(StoreError::from).and_then(|raw| raw.decode()))
        .collect()
}

pub(super) fn get(conn: &Connection, id: u64) -> Result<Option<DeadLetter>, StoreError> {
    let raw = conn
        .query_row(&select_one(conn)?, params![to_i64(id)], row_to_dead)
        .optional()?;
    raw.map(RawDeadLetter::decode).transpose()
}

pub(super) fn take(conn: &mut Connection, id: u64) -> Result<Option<DeadLetter>, StoreError> {
    let tx = conn.transaction()?;
    let raw = tx
        .query_row(&select_one(&tx)?, params![to_i64(id)], row_to_dead)
        .optional()?;
    tx.execute(
        "DELETE FROM dead_letters WHERE id = ?1",
        params![to_i64(id)],
    )?;
    tx.commit()?;
    raw.map(RawDeadLetter::decode).transpose()
}

pub(super) fn trim(conn: &Connection, max: u64) -> Result<u64, StoreError> {
    let excess = count(conn)?.saturating_sub(max);
    if excess == 0 {
        return Ok(0);
    }
    let mut stmt =
        conn.prepare_cached("SELECT principal, count(*) FROM dead_letters GROUP BY principal")?;
    let counts = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut removed = 0;
    for (principal, n) in fair_eviction(&counts, excess) {
        removed += conn.execute(
            "DELETE FROM dead_letters WHERE id IN
               (SELECT id FROM dead_letters WHERE principal = ?1 ORDER BY id LIMIT ?2)",
            params![principal, to_i64(n)],
        )? as u64;
    }
    Ok(removed)
}

pub(super) fn count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
    Ok(n.max(0) as u64)
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
    principal: String,
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
        principal: r.get(7)?,
    })
}

impl RawDeadLetter {
    fn decode(self) -> Result<DeadLetter, StoreError> {
        let event = decode(0, &self.envelope)?;
        let dead_at = chrono::DateTime::parse_from_rfc3339(&self.dead_at)
            .map_err(|e| StoreError::Corrupt {
                cursor: event.event.cursor,
                message: format!("dead letter {}: {e}", self.id),
            })?
            .with_timezone(&Utc);
        Ok(DeadLetter {
            id: self.id.max(0) as u64,
            event,
            principal: self.principal,
            subscription_id: self.subscription_id,
            connection_id: self.connection_id.max(0) as u64,
            reason: self.reason,
            attempts: self.attempts,
            dead_at,
        })
    }
}
