//! Tests of the SQLite backend's own workings: segments, their recorded counts,
//! query plans, older files and WAL checkpoints. What every backend must do is in
//! `store::contract`.

use rusqlite::params;

use super::retention::RECORD_LAST_CURSOR;
use super::segments::{segment_edges_sql, segment_record};
use super::*;
use crate::protocol::{Event, ANONYMOUS};

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
        // The table as such files have it: no `publisher` column.
        conn.execute_batch(
            "CREATE TABLE events (cursor INTEGER PRIMARY KEY, id TEXT NOT NULL,
             topic TEXT NOT NULL, type TEXT NOT NULL, priority TEXT NOT NULL,
             stored_ms INTEGER NOT NULL, envelope TEXT NOT NULL)",
        )
        .unwrap();
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
    let ids: Vec<u64> = store
        .recent_ids(4)
        .unwrap()
        .iter()
        .map(|i| i.cursor)
        .collect();
    assert_eq!(ids, [3, 4, 5, 6]);
    // Its events had no recorded publisher: they read as `anonymous`'s.
    let old = &store.recent_ids(4).unwrap()[0];
    assert_eq!((old.cursor, old.publisher.as_str()), (3, ANONYMOUS));
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
/// growing with the log, however late the checkpoint thread is scheduled.
#[test]
fn wal_is_checkpointed_and_bounded_under_steady_appends() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let wal = dir.path().join("events.db-wal");
    let sizes = WalSizes {
        every: 64 << 10,
        restart: 256 << 10,
        overdue: 1 << 20,
    };
    let mut store = SqliteStore::open_with(&db, &fast(), sizes).unwrap();
    let (batches, per_batch) = (400, 10);
    let mut max_wal = 0;
    for b in 0..batches {
        store.append(&batch(1 + b * per_batch, per_batch)).unwrap();
        max_wal = max_wal.max(size(&wal));
    }
    let appended = batches * per_batch * 1000;
    assert!(
        size(&db) > appended / 2,
        "database file {} bytes after {appended} appended",
        size(&db)
    );
    // The WAL started over: at the latest, the commit that made it overdue catches up
    // (a commit of 10 events rewrites a few pages, far less than the margin here).
    assert!(
        max_wal < sizes.overdue as u64 + (256 << 10),
        "WAL reached {max_wal} bytes for {appended} appended"
    );
    drop(store);
    let store = SqliteStore::open_in(dir.path(), &fast()).unwrap();
    assert_eq!(store.last_cursor().unwrap(), batches * per_batch);
    assert_eq!(store.stats().unwrap().event_count, batches * per_batch);
}

#[test]
fn a_read_only_store_reads_everything_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = SqliteStore::open_in(dir.path(), &two_per_segment()).unwrap();
        store.append(&batch(1, 5)).unwrap();
        store.durable_open("alice", "billing", 1).unwrap();
        store.durable_ack("alice", "billing", &[3, 4]).unwrap();
        store.durable_open("bob", "audit", 0).unwrap();
    }
    let file = dir.path().join("events.db");
    let before = std::fs::read(&file).unwrap();
    let mut store = SqliteStore::open_read_only(dir.path()).unwrap();
    assert_eq!(store.last_cursor().unwrap(), 5);
    assert_eq!(store.stats().unwrap().event_count, 5);
    let all = store
        .query(&EventQuery {
            after: Some(2),
            limit: 10,
            ..EventQuery::default()
        })
        .unwrap();
    let cursors: Vec<u64> = all.iter().map(|e| e.event.cursor).collect();
    assert_eq!(cursors, [3, 4, 5]);
    let durables = store.durables().unwrap();
    let listed: Vec<(&str, &str, u64, Vec<u64>)> = durables
        .iter()
        .map(|d| {
            let acked = d.state.acked.iter().copied().collect();
            (d.principal.as_str(), d.name.as_str(), d.state.floor, acked)
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("alice", "billing", 1, vec![3, 4]),
            ("bob", "audit", 0, vec![])
        ]
    );
    assert!(store.append(&batch(6, 1)).is_err(), "writes are refused");
    drop(store);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file is unchanged"
    );
    assert!(SqliteStore::open_read_only(&dir.path().join("nowhere")).is_err());
}

/// One retention pass deletes a bounded number of rows from a segment, so that a
/// large trim never holds the writer (and every publish behind it) for long; passes
/// repeat until one removes nothing, and whole segments go at once.
#[test]
fn a_retention_pass_deletes_a_bounded_number_of_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let big = SqliteOptions {
        segment_events: 30_000,
        ..fast()
    };
    let mut store = SqliteStore::open(&path, &big).unwrap();
    store.append(&batch(1, 20_000)).unwrap();
    let keep_100 = Retention {
        max_events: Some(100),
        max_age: None,
    };
    let mut passes = Vec::new();
    loop {
        let n = store.apply_retention(&keep_100).unwrap();
        if n == 0 {
            break;
        }
        passes.push(n);
    }
    assert_eq!(passes, [8192, 8192, 3516], "19,900 rows in bounded passes");
    assert_eq!(store.stats().unwrap().event_count, 100);
    assert_eq!(store.stats().unwrap().first_cursor, Some(19_901));
}
