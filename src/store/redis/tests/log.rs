//! The log's entry format against a real redis-server: one entry per group commit,
//! what that means for retention, and logs written one event per entry before it.

use std::time::Duration;

use super::{cursors, new, numbered};
use crate::store::redis::testing::TestRedis;
use crate::store::redis::RedisStore;
use crate::store::{Appended, EventStore, Retention};

fn keep(max_events: u64) -> Retention {
    Retention {
        max_events: Some(max_events),
        max_age: None,
    }
}

#[test]
fn retention_by_count_deletes_whole_group_commits() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let mut s = redis.store();
    let five: Vec<_> = (0..5).map(|i| new(&format!("a{i}"))).collect();
    s.append_new(&five).unwrap();
    // The newest 2 are in the one entry of 5: it stays whole.
    assert_eq!(s.apply_retention(&keep(2)).unwrap(), 0);
    assert_eq!(cursors(&s), [1, 2, 3, 4, 5]);
    assert_eq!(
        s.append_new(&[new("b0"), new("b1")]).unwrap(),
        [Appended::Stored(6), Appended::Stored(7)]
    );
    assert_eq!(s.apply_retention(&keep(2)).unwrap(), 5);
    assert_eq!(cursors(&s), [6, 7]);
    let stats = s.stats().unwrap();
    assert_eq!(
        (stats.event_count, stats.first_cursor, stats.last_cursor),
        (2, Some(6), Some(7))
    );
    // By age, too, whole entries go.
    std::thread::sleep(Duration::from_millis(20));
    let old = Retention {
        max_events: None,
        max_age: Some(Duration::from_millis(10)),
    };
    assert_eq!(s.apply_retention(&old).unwrap(), 2);
    assert_eq!(s.stats().unwrap().event_count, 0);
    assert_eq!(s.last_cursor().unwrap(), 7);
}

#[test]
fn a_log_written_one_event_per_entry_is_read_and_continued() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = redis.options();
    let mut s = RedisStore::open(&options).unwrap();
    let events = format!("{}:{{log}}:events", options.prefix);
    let seq = format!("{}:{{log}}:seq", options.prefix);
    // Entries as nodes before the batch format wrote them: `e`, `t`, `p`.
    let mut c = redis.conn();
    for (cursor, publisher) in [(1, None), (2, Some("bob"))] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&events)
            .arg(format!("{cursor}-0"))
            .arg("e")
            .arg(&*numbered(&format!("old{cursor}"), cursor).json)
            .arg("t")
            .arg(1);
        if let Some(p) = publisher {
            cmd.arg("p").arg(p);
        }
        cmd.exec(&mut c).unwrap();
    }
    redis::cmd("SET").arg(&seq).arg(2).exec(&mut c).unwrap();

    assert_eq!(s.append_new(&[new("x")]).unwrap(), [Appended::Stored(3)]);
    assert_eq!(cursors(&s), [1, 2, 3]);
    let ids = s.recent_ids(10).unwrap();
    let read: Vec<_> = ids
        .iter()
        .map(|i| (i.publisher.as_str(), i.id.as_str(), i.cursor))
        .collect();
    assert_eq!(
        read,
        [("anonymous", "old1", 1), ("bob", "old2", 2), ("s", "x", 3)]
    );
    let mut tail = crate::store::redis::tail::Tail::connect(&options).unwrap();
    // The first read asks for one entry, the next for as many as make 10 events.
    let mut tailed = tail.read(0, 10, Duration::from_millis(100)).unwrap();
    tailed.extend(tail.read(1, 10, Duration::from_millis(100)).unwrap());
    assert_eq!(
        tailed.iter().map(|e| e.event.cursor).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(tail.head().unwrap().first, Some(1));
    assert_eq!(s.stats().unwrap().event_count, 3);
    assert_eq!(s.apply_retention(&keep(1)).unwrap(), 2);
    assert_eq!(cursors(&s), [3]);
}
