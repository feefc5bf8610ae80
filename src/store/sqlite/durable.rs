//! The state of durable subscriptions: `durable_subscriptions` (one floor each) and
//! `durable_acks` (the cursors acknowledged above it).
//!
//! Owns: every statement on those two tables. Must not: touch the log's segments or
//! decide which cursors are resolved (the router does).

use rusqlite::{params, Connection};

use super::{to_i64, StoredDurable};
use crate::store::{DurableState, StoreError};

pub(super) fn open(
    conn: &mut Connection,
    principal: &str,
    name: &str,
    floor: u64,
) -> Result<DurableState, StoreError> {
    let tx = conn.transaction()?;
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

pub(super) fn ack(
    conn: &mut Connection,
    principal: &str,
    name: &str,
    cursors: &[u64],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
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

pub(super) fn set_floor(
    conn: &mut Connection,
    principal: &str,
    name: &str,
    floor: u64,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
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

/// Every durable subscription with its floor and the acknowledged cursors above it,
/// by principal and name.
pub(super) fn list(conn: &Connection) -> Result<Vec<StoredDurable>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT s.principal, s.name, s.floor, a.cursor
         FROM durable_subscriptions s
         LEFT JOIN durable_acks a
           ON a.principal = s.principal AND a.name = s.name AND a.cursor > s.floor
         ORDER BY s.principal, s.name, a.cursor",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    let mut found: Vec<StoredDurable> = Vec::new();
    for row in rows {
        let (principal, name, floor, acked) = row?;
        let same = found
            .last()
            .is_some_and(|d| d.principal == principal && d.name == name);
        if !same {
            found.push(StoredDurable {
                principal,
                name,
                state: DurableState {
                    floor: floor.max(0) as u64,
                    acked: Default::default(),
                },
            });
        }
        if let (Some(d), Some(c)) = (found.last_mut(), acked) {
            d.state.acked.insert(c.max(0) as u64);
        }
    }
    Ok(found)
}
