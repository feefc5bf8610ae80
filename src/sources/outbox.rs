//! The outbox in a watched SQLite database: triggers on the table write each change,
//! inside the writer's own transaction, to `switchyard_outbox`; the source reads the
//! rows in order and deletes them only once their events are published. A rolled-back
//! write leaves no row; a change made while the server is down waits in the outbox.
//!
//! The writer pays one small insert per changed row, and never waits for the server:
//! the source's reads do not block writers (WAL), and its deletes are short
//! transactions of at most one batch.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::change::{Change, Op};

/// The outbox table, shared by every source of one database (rows carry the name).
pub const OUTBOX: &str = "switchyard_outbox";

/// What a source watches.
#[derive(Debug, Clone, Copy)]
pub struct Watch<'a> {
    /// The source's name (letters, digits, `-`, `_`, `.`: config validation).
    pub source: &'a str,
    pub table: &'a str,
    pub key: &'a str,
    pub status_column: Option<&'a str>,
}

/// Why the outbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("table `{0}` does not exist")]
    NoTable(String),
    #[error("table `{table}` has no column `{column}`")]
    NoColumn { table: String, column: String },
}

/// `"name"`, quotes doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, quotes doubled.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A column's value as JSON can hold it: a BLOB as hex (`json_object` refuses blobs,
/// which would fail the writer's transaction).
fn value_of(row: &str, column: &str) -> String {
    let c = format!("{row}.{}", ident(column));
    format!("CASE WHEN typeof({c}) = 'blob' THEN hex({c}) ELSE {c} END")
}

/// `json_object(...)` of every column of `row` (`NEW` or `OLD`), in chunks that stay
/// under SQLite's limit of 127 function arguments.
fn row_json(row: &str, columns: &[String]) -> String {
    let parts: Vec<String> = columns
        .chunks(60)
        .map(|chunk| {
            let args: Vec<String> = chunk
                .iter()
                .map(|c| format!("{}, {}", literal(c), value_of(row, c)))
                .collect();
            format!("json_object({})", args.join(", "))
        })
        .collect();
    parts
        .into_iter()
        .reduce(|a, b| format!("json_patch({a}, {b})"))
        .unwrap_or_else(|| "json_object()".to_owned())
}

/// Creates the outbox and (again) the table's triggers, in one transaction, and
/// returns the source's identity in this database (made once, kept in
/// `switchyard_sources`: a new database file gets a new one).
///
/// The outbox has no index besides its rowid, and no AUTOINCREMENT: each is a page
/// more that every writer's commit writes (AUTOINCREMENT cost a third of a small
/// writer's throughput). Reads scan rowids after the last one read, and the outbox is
/// drained as it goes, so the scans stay short. Ids are still never handed out again:
/// [`drain`] keeps the highest row as a tombstone, and SQLite gives a new row the
/// highest rowid plus one.
pub fn install(conn: &Connection, w: &Watch<'_>) -> Result<String, OutboxError> {
    // WAL lets the writer commit while the source reads; it stays set in the file.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("source `{}`: journal mode is {mode}, not WAL", w.source);
    }
    let columns: Vec<String> = {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let rows = stmt.query_map([w.table], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    if columns.is_empty() {
        return Err(OutboxError::NoTable(w.table.to_owned()));
    }
    for column in std::iter::once(w.key).chain(w.status_column) {
        if !columns.iter().any(|c| c == column) {
            return Err(OutboxError::NoColumn {
                table: w.table.to_owned(),
                column: column.to_owned(),
            });
        }
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {OUTBOX} (
             id INTEGER PRIMARY KEY,
             source TEXT NOT NULL, op TEXT NOT NULL, key TEXT, row TEXT,
             old_status TEXT, at TEXT NOT NULL);
         DROP INDEX IF EXISTS {OUTBOX}_source;
         CREATE TABLE IF NOT EXISTS switchyard_sources (
             name TEXT PRIMARY KEY, identity TEXT NOT NULL);"
    ))?;
    let fresh = format!("{:016x}", fastrand::u64(..));
    tx.execute(
        "INSERT OR IGNORE INTO switchyard_sources (name, identity) VALUES (?1, ?2)",
        params![w.source, fresh],
    )?;
    let identity: String = tx.query_row(
        "SELECT identity FROM switchyard_sources WHERE name = ?1",
        [w.source],
        |r| r.get(0),
    )?;
    let now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    let old_status = match w.status_column {
        Some(c) => format!("json_quote({})", value_of("OLD", c)),
        None => "NULL".to_owned(),
    };
    let (table, source) = (ident(w.table), literal(w.source));
    for (op, when, row, status) in [
        ("insert", "INSERT", "NEW", "NULL".to_owned()),
        ("update", "UPDATE", "NEW", old_status),
        ("delete", "DELETE", "OLD", "NULL".to_owned()),
    ] {
        let name = ident(&format!("switchyard_{}_{op}", w.source));
        let key = value_of(row, w.key);
        tx.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS {name};
             CREATE TRIGGER {name} AFTER {when} ON {table} BEGIN
               INSERT INTO {OUTBOX} (source, op, key, row, old_status, at)
               VALUES ({source}, '{op}', CAST({key} AS TEXT), {}, {status}, {now});
             END;",
            row_json(row, &columns)
        ))?;
    }
    tx.commit()?;
    Ok(identity)
}

/// A change counter that moves when another connection commits (`PRAGMA
/// data_version`): a cheap check before reading.
pub fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// A counter SQLite moves at every schema change (`PRAGMA schema_version`): the
/// table altered, or dropped and created again, may need its triggers again.
pub fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
}

/// One outbox row that could not be read as a change: skipped, and drained.
#[derive(Debug)]
pub struct Unreadable {
    pub id: i64,
    pub why: String,
}

/// Up to `limit` rows of `source` after outbox id `after`, in order.
pub fn read(
    conn: &Connection,
    source: &str,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Result<Change, Unreadable>>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, op, key, row, old_status, at FROM {OUTBOX}
         WHERE source = ?1 AND id > ?2 AND op <> '{DRAINED}' ORDER BY id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![source, after, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, op, key, row, old_status, at) = row?;
        out.push(parse(id, &op, key, row, old_status, at));
    }
    Ok(out)
}

fn parse(
    id: i64,
    op: &str,
    key: Option<String>,
    row: Option<String>,
    old_status: Option<String>,
    at: String,
) -> Result<Change, Unreadable> {
    let bad = |why: String| Unreadable { id, why };
    let op = Op::parse(op).ok_or_else(|| bad(format!("unknown op `{op}`")))?;
    let row: Map<String, Value> = match row {
        Some(text) => serde_json::from_str(&text).map_err(|e| bad(format!("row: {e}")))?,
        None => Map::new(),
    };
    let old_status = match old_status {
        Some(text) => serde_json::from_str(&text).map_err(|e| bad(format!("status: {e}")))?,
        None => Value::Null,
    };
    Ok(Change {
        id,
        op,
        key: key.unwrap_or_default(),
        row,
        old_status,
        at,
    })
}

/// The `op` of a drained row kept as a tombstone.
const DRAINED: &str = "drained";

/// Deletes the rows `ids` of `source`, in one short transaction. The highest becomes
/// a tombstone instead (and the one before it goes): were the outbox's highest row
/// deleted, SQLite would give its id to the next change, whose event would then be
/// taken for a duplicate of the earlier one.
pub fn drain(conn: &Connection, source: &str, ids: &[i64]) -> rusqlite::Result<()> {
    let Some(&last) = ids.iter().max() else {
        return Ok(());
    };
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "DELETE FROM {OUTBOX} WHERE source = ?1 AND id = ?2"
        ))?;
        for id in ids.iter().filter(|&&id| id != last) {
            stmt.execute(params![source, id])?;
        }
    }
    tx.execute(
        &format!(
            "UPDATE {OUTBOX} SET op = '{DRAINED}', row = NULL, old_status = NULL
             WHERE source = ?1 AND id = ?2"
        ),
        params![source, last],
    )?;
    tx.execute(
        &format!("DELETE FROM {OUTBOX} WHERE source = ?1 AND op = '{DRAINED}' AND id < ?2"),
        params![source, last],
    )?;
    tx.commit()
}

/// Rows of `source` waiting in the outbox.
pub fn pending(conn: &Connection, source: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        &format!("SELECT count(*) FROM {OUTBOX} WHERE source = ?1 AND op <> '{DRAINED}'"),
        [source],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

/// The identity of `source` if it was installed in this database before.
pub fn identity(conn: &Connection, source: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT identity FROM switchyard_sources WHERE name = ?1",
        [source],
        |r| r.get(0),
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_changes_reach_the_outbox_and_rolled_back_ones_do_not() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT, agent_id TEXT, data BLOB)",
        )
        .unwrap();
        let w = Watch {
            source: "s",
            table: "tasks",
            key: "id",
            status_column: Some("status"),
        };
        let identity = install(&conn, &w).unwrap();
        assert_eq!(install(&conn, &w).unwrap(), identity, "kept on reinstall");
        conn.execute_batch(
            "INSERT INTO tasks VALUES ('t1', 'pending', 'a1', x'00ff');
             UPDATE tasks SET status = 'running' WHERE id = 't1';
             BEGIN; INSERT INTO tasks VALUES ('t2', 'x', NULL, NULL); ROLLBACK;
             DELETE FROM tasks WHERE id = 't1';",
        )
        .unwrap();
        let rows: Vec<Change> = read(&conn, "s", 0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let ops: Vec<Op> = rows.iter().map(|c| c.op).collect();
        assert_eq!(ops, [Op::Insert, Op::Update, Op::Delete]);
        assert_eq!(rows[0].row["data"], "00FF");
        assert_eq!(rows[1].old_status, "pending");
        assert_eq!(rows[1].row["status"], "running");
        assert_eq!(rows[2].row["agent_id"], "a1");
        assert_eq!(pending(&conn, "s").unwrap(), 3);
        drain(&conn, "s", &[rows[0].id, rows[1].id]).unwrap();
        assert_eq!(read(&conn, "s", 0, 10).unwrap().len(), 1);
        // Drained to empty, the next change still gets a new id.
        drain(&conn, "s", &[rows[2].id]).unwrap();
        assert_eq!(pending(&conn, "s").unwrap(), 0);
        conn.execute_batch("INSERT INTO tasks VALUES ('t3', 'x', NULL, NULL)")
            .unwrap();
        let next = read(&conn, "s", 0, 10).unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].as_ref().unwrap().id > rows[2].id);
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM switchyard_outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 2, "one tombstone and the new row");
        assert!(matches!(
            install(&conn, &Watch { table: "nope", ..w }),
            Err(OutboxError::NoTable(_))
        ));
        assert!(matches!(
            install(&conn, &Watch { key: "nope", ..w }),
            Err(OutboxError::NoColumn { .. })
        ));
    }
}
