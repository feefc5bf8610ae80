//! The contract every backend must pass. Each test runs against every backend, Redis
//! included (a real `redis-server`, see `redis::testing`).
//!
//! Owns: the behaviour callers may rely on whatever the backend. Must not: look inside
//! one backend (its own tests, beside it, do).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::memory::MemoryStore;
use super::redis::testing::TestRedis;
use super::sqlite::{SqliteOptions, SqliteStore};
use super::{Appended, EventQuery, EventStore, NewEvent, Order, Retention, StoredId};
use crate::protocol::Priority;
use crate::protocol::{EncodedEvent, Event, ANONYMOUS};
use crate::routing::pattern::Pattern;

pub(super) fn ev(cursor: u64, topic: &str, priority: &str) -> Arc<EncodedEvent> {
    let mut e = Event::from_json(
        json!({"topic": topic, "priority": priority, "payload": {"c": cursor}}),
        "s",
    )
    .unwrap();
    e.cursor = cursor;
    EncodedEvent::new(e)
}

pub(super) fn cursors(v: Vec<Arc<EncodedEvent>>) -> Vec<u64> {
    v.iter().map(|e| e.event.cursor).collect()
}

fn all(limit: usize) -> EventQuery {
    EventQuery {
        limit,
        ..Default::default()
    }
}

fn fast() -> SqliteOptions {
    SqliteOptions {
        synchronous_full: false,
        ..SqliteOptions::default()
    }
}

/// Runs `check` against a fresh instance of every backend.
fn each_backend(check: impl Fn(&mut dyn EventStore)) {
    check(&mut MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    check(&mut SqliteStore::open_in(dir.path(), &fast()).unwrap());
    // Two cursors per segment: every check crosses segment tables.
    let path = dir.path().join("segmented.db");
    let options = SqliteOptions {
        segment_events: 2,
        ..fast()
    };
    check(&mut SqliteStore::open(&path, &options).unwrap());
    // One server per call, so that checks run in parallel on servers of their own.
    if let Some(redis) = TestRedis::start() {
        check(&mut redis.store());
    }
}

/// The ids of every stored dead letter, oldest first.
fn dead_letter_ids(s: &dyn EventStore) -> Vec<u64> {
    let all = s.dead_letters(0, 1000).unwrap();
    all.iter().map(|d| d.id).collect()
}

fn seed(store: &mut dyn EventStore) {
    store
        .append(&[
            ev(1, "task.a", "low"),
            ev(2, "agent.b", "high"),
            ev(3, "task.c", "high"),
        ])
        .unwrap();
    store
        .append(&[ev(4, "task.d.e", "low"), ev(5, "logs.e", "low")])
        .unwrap();
}

#[test]
fn new_store_is_empty() {
    each_backend(|s| {
        assert_eq!(s.last_cursor().unwrap(), 0);
        let stats = s.stats().unwrap();
        assert_eq!(
            (stats.event_count, stats.first_cursor, stats.last_cursor),
            (0, None, None)
        );
        assert!(s.query(&all(10)).unwrap().is_empty());
    });
}

#[test]
fn append_then_query_round_trips_envelopes() {
    each_backend(|s| {
        seed(s);
        assert_eq!(s.last_cursor().unwrap(), 5);
        let got = s.query(&all(100)).unwrap();
        assert_eq!(cursors(got.clone()), [1, 2, 3, 4, 5]);
        let original = ev(3, "task.c", "high");
        assert_eq!(got[2].event.topic, original.event.topic);
        assert_eq!(got[2].event.payload, json!({"c": 3}));
        let reparsed: serde_json::Value = serde_json::from_str(&got[2].json).unwrap();
        assert_eq!(reparsed["cursor"], 3);
    });
}

#[test]
fn query_filters_order_and_limit() {
    each_backend(|s| {
        seed(s);
        let table: Vec<(EventQuery, Vec<u64>)> = vec![
            (
                EventQuery {
                    topic: Some(Pattern::parse("task.*").unwrap()),
                    ..all(100)
                },
                vec![1, 3],
            ),
            (
                EventQuery {
                    topic: Some(Pattern::parse("task.>").unwrap()),
                    ..all(100)
                },
                vec![1, 3, 4],
            ),
            (
                EventQuery {
                    topic: Some(Pattern::parse(">").unwrap()),
                    ..all(100)
                },
                vec![1, 2, 3, 4, 5],
            ),
            (
                EventQuery {
                    topic: Some(Pattern::parse("*.e").unwrap()),
                    ..all(100)
                },
                vec![5],
            ),
            (
                EventQuery {
                    event_type: Some("agent_b".into()),
                    ..all(100)
                },
                vec![2],
            ),
            (
                EventQuery {
                    priority: Some(Priority::High),
                    ..all(100)
                },
                vec![2, 3],
            ),
            (
                EventQuery {
                    after: Some(3),
                    ..all(100)
                },
                vec![4, 5],
            ),
            (all(2), vec![1, 2]),
            (
                EventQuery {
                    order: Order::Desc,
                    ..all(2)
                },
                vec![5, 4],
            ),
            (
                EventQuery {
                    order: Order::Desc,
                    after: Some(3),
                    ..all(100)
                },
                vec![5, 4],
            ),
        ];
        for (q, want) in table {
            assert_eq!(cursors(s.query(&q).unwrap()), want, "{} {q:?}", s.kind());
        }
    });
}

#[test]
fn topic_query_pages_past_non_matching_rows() {
    each_backend(|s| {
        let events: Vec<_> = (1..=2500)
            .map(|c| {
                ev(
                    c,
                    if c % 1000 == 0 {
                        "rare.hit"
                    } else {
                        "common.miss"
                    },
                    "normal",
                )
            })
            .collect();
        s.append(&events).unwrap();
        let q = EventQuery {
            topic: Some(Pattern::parse("rare.*").unwrap()),
            ..all(10)
        };
        assert_eq!(cursors(s.query(&q).unwrap()), [1000, 2000]);
        let q = EventQuery {
            topic: Some(Pattern::parse("*.hit").unwrap()),
            order: Order::Desc,
            ..all(10)
        };
        assert_eq!(cursors(s.query(&q).unwrap()), [2000, 1000]);
    });
}

#[test]
fn retention_by_count_keeps_the_newest_and_cursor_survives() {
    each_backend(|s| {
        seed(s);
        let deleted = s
            .apply_retention(&Retention {
                max_events: Some(2),
                max_age: None,
            })
            .unwrap();
        assert_eq!(deleted, 3);
        assert_eq!(cursors(s.query(&all(100)).unwrap()), [4, 5]);
        let stats = s.stats().unwrap();
        assert_eq!(
            (stats.event_count, stats.first_cursor, stats.last_cursor),
            (2, Some(4), Some(5))
        );
        s.apply_retention(&Retention {
            max_events: Some(0),
            max_age: None,
        })
        .unwrap();
        assert_eq!(s.stats().unwrap().event_count, 0);
        assert_eq!(s.last_cursor().unwrap(), 5, "cursors are never reused");
    });
}

#[test]
fn retention_by_age_uses_storage_time() {
    each_backend(|s| {
        seed(s);
        let keep = Retention {
            max_events: None,
            max_age: Some(Duration::from_secs(3600)),
        };
        assert_eq!(s.apply_retention(&keep).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(20));
        let drop_all = Retention {
            max_events: None,
            max_age: Some(Duration::from_millis(10)),
        };
        assert_eq!(s.apply_retention(&drop_all).unwrap(), 5);
    });
}

#[test]
fn retention_by_age_deletes_only_the_older_events() {
    each_backend(|s| {
        seed(s);
        std::thread::sleep(Duration::from_millis(1000));
        s.append(&[ev(6, "task.f", "low"), ev(7, "task.g", "low")])
            .unwrap();
        let half = Retention {
            max_events: None,
            max_age: Some(Duration::from_millis(500)),
        };
        assert_eq!(s.apply_retention(&half).unwrap(), 5);
        assert_eq!(cursors(s.query(&all(10)).unwrap()), [6, 7]);
        assert_eq!(s.apply_retention(&half).unwrap(), 0);
        assert_eq!(s.last_cursor().unwrap(), 7);
    });
}

#[test]
fn dead_letters_are_stored_listed_and_taken() {
    each_backend(|s| {
        assert_eq!(s.dead_letter_count().unwrap(), 0);
        let mut ids = Vec::new();
        for (i, reason) in ["max_attempts", "rejected", "expired"]
            .into_iter()
            .enumerate()
        {
            let dl = s
                .add_dead_letter(super::NewDeadLetter {
                    event: ev(i as u64 + 1, "task.a", "high"),
                    principal: "alice".into(),
                    subscription_id: "sub-1".into(),
                    connection_id: 7,
                    reason: reason.into(),
                    attempts: i as u32 + 1,
                })
                .unwrap();
            ids.push(dl.id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let listed = s.dead_letters(0, 10).unwrap();
        assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
        assert_eq!(listed[1].reason, "rejected");
        assert_eq!(listed[1].attempts, 2);
        assert_eq!(listed[1].event.event.cursor, 2);
        assert_eq!(listed[0].to_json()["subscription"], "sub-1");
        assert_eq!(s.dead_letters(ids[0], 1).unwrap()[0].id, ids[1]);
        assert_eq!(s.dead_letter(ids[1]).unwrap().unwrap().reason, "rejected");
        assert!(s.dead_letter(9999).unwrap().is_none());
        let taken = s.take_dead_letter(ids[1]).unwrap().unwrap();
        assert_eq!(taken.reason, "rejected");
        assert!(s.take_dead_letter(ids[1]).unwrap().is_none());
        assert_eq!(s.dead_letter_count().unwrap(), 2);
        assert_eq!(s.stats().unwrap().dead_letters, 2);
    });
}

#[test]
fn recent_ids_are_the_newest_oldest_first() {
    each_backend(|s| {
        assert!(s.recent_ids(10).unwrap().is_empty());
        seed(s);
        let all = s.query(&all(100)).unwrap();
        let want: Vec<StoredId> = all
            .iter()
            .map(|e| StoredId::new("s", e.event.id.clone(), e.event.cursor))
            .collect();
        assert_eq!(s.recent_ids(100).unwrap(), want);
        assert_eq!(s.recent_ids(2).unwrap(), want[want.len() - 2..]);
        assert!(s.recent_ids(0).unwrap().is_empty());
    });
}

/// Ids are kept in their publisher's scope: the same id from two principals is two
/// events, each read back with its publisher (the duplicate window's seed), and a log
/// that checks ids itself answers `duplicate` only within one publisher's ids.
#[test]
fn ids_are_scoped_by_publisher() {
    let by = |cursor: u64, publisher: &str, id: &str| {
        let mut e = Event::from_json(json!({"id": id, "topic": "t"}), publisher).unwrap();
        e.cursor = cursor;
        EncodedEvent::new(e)
    };
    each_backend(|s| {
        s.append(&[
            by(1, "alice", "x"),
            by(2, "bob", "x"),
            by(3, ANONYMOUS, "x"),
        ])
        .unwrap();
        let want = [
            StoredId::new("alice", "x", 1),
            StoredId::new("bob", "x", 2),
            StoredId::new(ANONYMOUS, "x", 3),
        ];
        assert_eq!(s.recent_ids(10).unwrap(), want, "{}", s.kind());
        if !s.numbers_events() {
            return;
        }
        let new = |publisher: &str, id: &str| NewEvent {
            event: by(0, publisher, id),
            check_duplicate: true,
        };
        let out = s
            .append_new(&[new("carol", "x"), new("alice", "y"), new("bob", "x")])
            .unwrap();
        assert_eq!(
            out,
            [
                Appended::Stored(4),
                Appended::Stored(5),
                Appended::Duplicate(2)
            ]
        );
        let out = s.append_new(&[new("alice", "x"), new("bob", "y")]).unwrap();
        assert_eq!(out, [Appended::Duplicate(1), Appended::Stored(6)]);
    });
}

#[test]
fn dead_letters_are_trimmed_oldest_first() {
    each_backend(|s| {
        let ids: Vec<u64> = (1..=5)
            .map(|i| {
                s.add_dead_letter(super::NewDeadLetter {
                    event: ev(i, "task.a", "low"),
                    principal: "alice".into(),
                    subscription_id: "sub-1".into(),
                    connection_id: 1,
                    reason: "rejected".into(),
                    attempts: 1,
                })
                .unwrap()
                .id
            })
            .collect();
        assert_eq!(s.trim_dead_letters(10).unwrap(), 0);
        assert_eq!(s.trim_dead_letters(3).unwrap(), 2);
        let kept = dead_letter_ids(s);
        assert_eq!(kept, ids[2..]);
        assert_eq!(s.trim_dead_letters(3).unwrap(), 0);
        assert_eq!(s.trim_dead_letters(0).unwrap(), 3);
        assert_eq!(s.dead_letter_count().unwrap(), 0);
    });
}

/// Over the limit, the principal holding the most gives up its oldest first: a
/// dead-letter storm of one subscriber does not evict another's.
#[test]
fn dead_letters_are_evicted_from_the_largest_holder_first() {
    each_backend(|s| {
        let mut add = |principal: &str, n: u64| {
            s.add_dead_letter(super::NewDeadLetter {
                event: ev(n, "task.a", "low"),
                principal: principal.into(),
                subscription_id: "sub-1".into(),
                connection_id: 1,
                reason: "max_attempts".into(),
                attempts: 1,
            })
            .unwrap()
            .id
        };
        let real: Vec<u64> = (1..=2).map(|n| add("worker", n)).collect();
        let storm: Vec<u64> = (3..=12).map(|n| add("storm", n)).collect();
        let late = add("worker", 13);
        assert_eq!(s.trim_dead_letters(8).unwrap(), 5);
        let kept: Vec<(u64, String)> = s
            .dead_letters(0, 100)
            .unwrap()
            .into_iter()
            .map(|d| (d.id, d.principal))
            .collect();
        let mut want: Vec<(u64, String)> = real.iter().map(|id| (*id, "worker".into())).collect();
        want.extend(storm[5..].iter().map(|id| (*id, "storm".into())));
        want.push((late, "worker".into()));
        assert_eq!(kept, want, "the storm's five oldest went");
        // Down to a common level: 3 each, the storm's oldest first.
        assert_eq!(s.trim_dead_letters(6).unwrap(), 2);
        let kept = dead_letter_ids(s);
        assert_eq!(kept, [real[0], real[1], storm[7], storm[8], storm[9], late]);
        assert_eq!(s.dead_letter_count().unwrap(), 6);
        // Taking one out keeps the per-principal counts right.
        assert!(s.take_dead_letter(real[0]).unwrap().is_some());
        assert_eq!(s.trim_dead_letters(4).unwrap(), 1);
        let kept = dead_letter_ids(s);
        assert_eq!(kept, [real[1], storm[8], storm[9], late]);
    });
}

#[test]
fn durable_state_is_created_once_acked_and_compacted() {
    each_backend(|s| {
        let d = s.durable_open("alice", "billing", 10).unwrap();
        assert_eq!((d.floor, d.acked.len()), (10, 0));
        // Opening again keeps the original floor.
        assert_eq!(s.durable_open("alice", "billing", 99).unwrap().floor, 10);
        s.durable_ack("alice", "billing", &[12, 11, 15, 12])
            .unwrap();
        let d = s.durable_open("alice", "billing", 0).unwrap();
        assert_eq!(d.acked.iter().copied().collect::<Vec<_>>(), [11, 12, 15]);
        s.durable_set_floor("alice", "billing", 12).unwrap();
        let d = s.durable_open("alice", "billing", 0).unwrap();
        assert_eq!(
            (d.floor, d.acked.iter().copied().collect::<Vec<_>>()),
            (12, vec![15])
        );
        s.durable_set_floor("alice", "billing", 5).unwrap();
        assert_eq!(
            s.durable_open("alice", "billing", 0).unwrap().floor,
            12,
            "never down"
        );
        // Names are per principal.
        assert_eq!(s.durable_open("bob", "billing", 3).unwrap().floor, 3);
    });
}

#[test]
fn sqlite_keeps_events_and_cursor_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SqliteStore::open_in(dir.path(), &SqliteOptions::default()).unwrap();
        seed(&mut s);
        s.apply_retention(&Retention {
            max_events: Some(0),
            max_age: None,
        })
        .unwrap();
        s.append(&[ev(9, "after.gap", "critical")]).unwrap();
    }
    let mut s = SqliteStore::open_in(dir.path(), &SqliteOptions::default()).unwrap();
    assert_eq!(s.last_cursor().unwrap(), 9);
    assert_eq!(cursors(s.query(&all(10)).unwrap()), [9]);
    // Emptied by retention, the file still remembers the newest cursor.
    s.apply_retention(&Retention {
        max_events: Some(0),
        max_age: None,
    })
    .unwrap();
    drop(s);
    let s = SqliteStore::open_in(dir.path(), &SqliteOptions::default()).unwrap();
    assert_eq!(s.stats().unwrap().event_count, 0);
    assert_eq!(s.last_cursor().unwrap(), 9, "cursors are never reused");
}

#[test]
fn sqlite_rejects_a_duplicate_cursor_without_partial_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open_in(dir.path(), &fast()).unwrap();
    seed(&mut s);
    assert!(s
        .append(&[ev(6, "x.y", "low"), ev(5, "dup.cursor", "low")])
        .is_err());
    assert_eq!(s.last_cursor().unwrap(), 5);
    assert_eq!(
        s.stats().unwrap().event_count,
        5,
        "the failed batch left nothing behind"
    );
}

#[test]
fn sqlite_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.db"),
        b"this is not sqlite, just garbage bytes ....",
    )
    .unwrap();
    assert!(SqliteStore::open_in(dir.path(), &fast()).is_err());
}

/// A backend's reader (the read pool's connection) sees what the store committed, as
/// the store's own queries do: before and after more appends, across segments, and
/// after retention dropped what it had read before.
#[test]
fn a_reader_sees_what_the_store_commits() {
    each_backend(|s| {
        let Some(mut reader) = s.reader().unwrap() else {
            return;
        };
        let task = EventQuery {
            topic: Some(Pattern::parse("task.>").unwrap()),
            limit: 100,
            ..Default::default()
        };
        assert!(reader.query(&all(100)).unwrap().is_empty());
        seed(s);
        for q in [all(100), task.clone()] {
            assert_eq!(
                cursors(reader.query(&q).unwrap()),
                cursors(s.query(&q).unwrap())
            );
        }
        assert_eq!(cursors(reader.query(&task).unwrap()), [1, 3, 4]);
        s.append(&[ev(6, "task.f", "normal")]).unwrap();
        // Three: a shared log deletes whole appends (seed's second is 4 and 5).
        s.apply_retention(&Retention {
            max_events: Some(3),
            max_age: None,
        })
        .unwrap();
        assert_eq!(cursors(reader.query(&all(100)).unwrap()), [4, 5, 6]);
        assert_eq!(cursors(reader.query(&task).unwrap()), [4, 6]);
    });
}
