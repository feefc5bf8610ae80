//! Redis-specific tests against a real redis-server (see `testing`): what the
//! contract suite cannot show, because only a shared log numbers events, dedupes
//! across nodes, has an epoch, and can go away and come back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::nodes::{NodeInfo, Nodes};
use super::tail::Tail;
use super::testing::TestRedis;
use super::{RedisOptions, RedisStore};
use crate::protocol::{EncodedEvent, Event};
use crate::store::{Appended, EventQuery, EventStore, NewEvent, Retention, StoreError, StoredId};

/// A new event (cursor 0) with id `id`.
fn new(id: &str) -> NewEvent {
    let e = Event::from_json(json!({"id": id, "topic": "task.a", "payload": {}}), "s").unwrap();
    NewEvent {
        event: EncodedEvent::new(e),
        check_duplicate: true,
    }
}

fn numbered(id: &str, cursor: u64) -> Arc<EncodedEvent> {
    new(id).event.numbered(cursor)
}

fn cursors(s: &dyn EventStore) -> Vec<u64> {
    let q = EventQuery {
        limit: 100,
        ..Default::default()
    };
    s.query(&q)
        .unwrap()
        .iter()
        .map(|e| e.event.cursor)
        .collect()
}

#[test]
fn two_nodes_share_one_cursor_space_and_one_duplicate_check() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = redis.options();
    let a = RedisStore::open(&options).unwrap();
    let b = RedisStore::open(&options).unwrap();
    assert_eq!(a.epoch(), b.epoch(), "both joined the one log");
    let again = |id: &str| NewEvent {
        check_duplicate: false,
        ..new(id)
    };
    use Appended::{Duplicate, Stored};
    // (node a or b, batch, outcomes): one script per batch, numbered densely from 1.
    let table: Vec<(usize, Vec<NewEvent>, Vec<Appended>)> = vec![
        (0, vec![new("a"), new("b")], vec![Stored(1), Stored(2)]),
        (1, vec![new("c"), new("a")], vec![Stored(3), Duplicate(1)]),
        (1, vec![new("d"), new("d")], vec![Stored(4), Duplicate(4)]),
        (0, vec![again("a")], vec![Stored(5)]),
        (1, vec![new("a")], vec![Duplicate(5)]),
        (0, vec![], vec![]),
    ];
    let mut nodes = [a, b];
    for (i, (node, batch, want)) in table.into_iter().enumerate() {
        assert_eq!(nodes[node].append_new(&batch).unwrap(), want, "step {i}");
    }
    let [a, b] = nodes;
    assert_eq!(cursors(&a), [1, 2, 3, 4, 5]);
    let stored = a
        .query(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&stored[2].json).unwrap();
    assert_eq!(
        (envelope["id"].as_str(), envelope["cursor"].as_u64()),
        (Some("c"), Some(3))
    );
    assert_eq!(b.last_cursor().unwrap(), 5);
    assert_eq!(
        b.recent_ids(2).unwrap(),
        [StoredId::new("s", "d", 4), StoredId::new("s", "a", 5)]
    );
}

#[test]
fn numbering_continues_after_an_import_which_is_all_or_nothing() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let mut s = redis.store();
    assert!(s.numbers_events());
    assert_eq!(s.append_new(&[new("a")]).unwrap(), [Appended::Stored(1)]);
    s.append(&[numbered("x", 10), numbered("y", 11)]).unwrap();
    assert_eq!(s.append_new(&[new("b")]).unwrap(), [Appended::Stored(12)]);
    assert_eq!(
        s.append_new(&[new("y")]).unwrap(),
        [Appended::Duplicate(11)],
        "imported ids are known to the duplicate check"
    );
    let refused = s.append(&[numbered("p", 13), numbered("q", 12)]);
    assert!(
        matches!(refused, Err(StoreError::Redis(ref m)) if m.contains("not above")),
        "{refused:?}"
    );
    assert_eq!(
        cursors(&s),
        [1, 10, 11, 12],
        "the refused batch left nothing behind"
    );
    assert_eq!(s.last_cursor().unwrap(), 12);
    // An already numbered event is not a new one.
    let numbered = NewEvent {
        event: numbered("z", 20),
        check_duplicate: true,
    };
    assert!(
        matches!(s.append_new(&[numbered]), Err(StoreError::Redis(ref m)) if m.contains("not a new event"))
    );
}

#[test]
fn cursors_survive_trimming_and_a_lost_seq_key() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = RedisOptions {
        max_events: Some(2),
        ..redis.options()
    };
    let mut s = RedisStore::open(&options).unwrap();
    let batch: Vec<_> = (0..5).map(|i| new(&format!("e{i}"))).collect();
    s.append_new(&batch).unwrap();
    s.apply_retention(&Retention {
        max_events: Some(0),
        max_age: None,
    })
    .unwrap();
    assert_eq!(s.last_cursor().unwrap(), 5);
    // The fence: without `seq`, numbering continues above the stream's last id.
    redis::cmd("DEL")
        .arg(format!("{}:{{log}}:seq", options.prefix))
        .exec(&mut redis.conn())
        .unwrap();
    assert_eq!(s.append_new(&[new("f")]).unwrap(), [Appended::Stored(6)]);
    // ... and with a `seq` set back, too (the script trusts `seq` until the append
    // under it is refused).
    redis::cmd("SET")
        .arg(format!("{}:{{log}}:seq", options.prefix))
        .arg(2)
        .exec(&mut redis.conn())
        .unwrap();
    assert_eq!(
        s.append_new(&[new("g"), new("h")]).unwrap(),
        [Appended::Stored(7), Appended::Stored(8)]
    );
    assert_eq!(cursors(&s), [6, 7, 8]);
}

#[test]
fn a_replaced_log_is_refused_unless_accepted() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = redis.options();
    let epoch_key = format!("{}:{{log}}:epoch", options.prefix);
    let mut s = RedisStore::open(&options).unwrap();
    s.append_new(&[new("a")]).unwrap();
    let joined = s.epoch().to_owned();
    // (what happens to the log, the epoch the refusal names)
    let table = [
        ("wiped", None, "none"),
        ("replaced", Some("other"), "other"),
    ];
    for (what, epoch, found) in table {
        let mut c = redis.conn();
        match epoch {
            None => redis::cmd("FLUSHALL").exec(&mut c).unwrap(),
            Some(e) => redis::cmd("SET")
                .arg(&epoch_key)
                .arg(e)
                .exec(&mut c)
                .unwrap(),
        }
        match s.append_new(&[new("b")]) {
            Err(StoreError::LogReplaced {
                joined: j,
                found: f,
            }) => {
                assert_eq!(j, joined, "{what}");
                assert!(f.contains(found), "{what}: {f}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(
            s.append(&[numbered("n", 50)]).is_err(),
            "{what}: imports too"
        );
    }
    // With accept_new_log the store joins the new log and goes on.
    let mut accepting = RedisStore::open(&RedisOptions {
        accept_new_log: true,
        ..options.clone()
    })
    .unwrap();
    redis::cmd("SET")
        .arg(&epoch_key)
        .arg("third")
        .exec(&mut redis.conn())
        .unwrap();
    assert_eq!(
        accepting.append_new(&[new("c")]).unwrap(),
        [Appended::Stored(1)]
    );
    assert_eq!(accepting.epoch(), "third");
}

#[test]
fn a_redis_without_aof_is_refused_unless_allowed() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .exec(&mut redis.conn())
        .unwrap();
    match RedisStore::open(&redis.options()) {
        Err(StoreError::Unsuitable(m)) => {
            assert!(
                m.contains("appendonly") && m.contains("store.redis_require_aof = false"),
                "{m}"
            )
        }
        other => panic!("{:?}", other.map(|s| s.epoch().to_owned())),
    }
    let allowed = RedisOptions {
        require_aof: false,
        ..redis.options()
    };
    assert!(RedisStore::open(&allowed).is_ok());
}

#[test]
fn every_eviction_policy_but_noeviction_is_warned_about() {
    for (policy, warned) in [
        ("noeviction", false),
        ("allkeys-lru", true),
        ("volatile-ttl", true),
    ] {
        let warning = super::eviction_warning(policy);
        assert_eq!(warning.is_some(), warned, "{policy}");
        if let Some(w) = warning {
            assert!(w.contains(policy) && w.contains("noeviction"), "{w}");
        }
    }
}

#[test]
fn server_versions_before_6_2_are_refused() {
    let table = [
        ("redis_version:7.0.15\r\n", true),
        (
            "# Server\r\nredis_version:6.2.0\r\nredis_mode:standalone",
            true,
        ),
        ("redis_version:6.0.9", false),
        ("redis_version:10.0.0", true),
        ("no version here", false),
    ];
    for (info, ok) in table {
        assert_eq!(super::version_ok(info).is_ok(), ok, "{info}");
    }
}

#[test]
fn redis_down_is_unavailable_fast_and_calls_recover_after_restart() {
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let mut s = RedisStore::open(&redis.options()).unwrap();
    s.append_new(&[new("a")]).unwrap();
    redis.kill();
    for _ in 0..3 {
        match s.append_new(&[new("b")]) {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("retry"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.last_cursor(), Err(StoreError::Unavailable(_))));
    }
    redis.restart();
    // Reconnects after the fail-fast pause; the log came back from the AOF.
    let deadline = Instant::now() + Duration::from_secs(5);
    let appended = loop {
        match s.append_new(&[new("c")]) {
            Ok(a) => break a,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(appended, [Appended::Stored(2)]);
    assert_eq!(s.append_new(&[new("a")]).unwrap(), [Appended::Duplicate(1)]);
}

#[test]
fn a_timed_out_call_is_unavailable_and_a_retry_settles_it() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = RedisOptions {
        command_timeout: Duration::from_millis(200),
        ..redis.options()
    };
    let mut s = RedisStore::open(&options).unwrap();
    s.append_new(&[new("a"), new("b")]).unwrap();
    // Redis holds every command for 600 ms: the call times out, its reply comes later.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("ALL")
        .exec(&mut redis.conn())
        .unwrap();
    match s.append_new(&[new("c")]) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("outcome unknown"), "{m}"),
        other => panic!("{other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let last = loop {
        match s.last_cursor() {
            Ok(n) => break n,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    // Whether Redis ran the timed-out append is unknown (here it drops a paused
    // command when its connection closes); a retry settles it either way.
    assert!((2..=3).contains(&last), "{last}");
    let retried = s.append_new(&[new("c")]).unwrap();
    assert!(
        matches!(retried[..], [Appended::Stored(3) | Appended::Duplicate(3)]),
        "{retried:?}"
    );
    assert_eq!(s.recent_ids(1).unwrap(), [StoredId::new("s", "c", 3)]);
}

#[test]
fn the_tail_reads_what_was_appended_and_reports_the_head() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = redis.options();
    let mut s = RedisStore::open(&options).unwrap();
    let mut tail = Tail::connect(&options).unwrap();
    let head = tail.head().unwrap();
    assert_eq!(
        (head.first, head.last, head.epoch.as_str()),
        (None, 0, s.epoch())
    );

    let started = Instant::now();
    assert!(tail
        .read(0, 10, Duration::from_millis(150))
        .unwrap()
        .is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "it blocked"
    );

    let batch: Vec<_> = (0..3).map(|i| new(&format!("e{i}"))).collect();
    s.append_new(&batch).unwrap();
    // One group commit is one entry, read whole even past the count asked for.
    let read = tail.read(0, 2, Duration::from_millis(100)).unwrap();
    assert_eq!(
        read.iter().map(|e| e.event.cursor).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(read[0].event.id, "e0");
    // Reading after a cursor inside an entry skips what is at or below it.
    let rest = tail.read(2, 10, Duration::from_millis(100)).unwrap();
    assert_eq!(rest.iter().map(|e| e.event.cursor).collect::<Vec<_>>(), [3]);

    // A reader blocked before the append wakes up with it.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        s.append_new(&[new("late")]).unwrap();
        s
    });
    let woke = tail.read(3, 10, Duration::from_secs(5)).unwrap();
    assert_eq!(woke.iter().map(|e| e.event.cursor).collect::<Vec<_>>(), [4]);
    let mut s = writer.join().unwrap();

    s.apply_retention(&Retention {
        max_events: Some(1),
        max_age: None,
    })
    .unwrap();
    let head = tail.head().unwrap();
    assert_eq!((head.first, head.last), (Some(4), 4), "trimmed past 1..3");
}

#[test]
fn a_durable_name_is_held_by_one_owner_until_released_or_expired() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (mut a, mut b) = redis.two_nodes();
    let ttl = Duration::from_millis(200);
    assert!(a
        .durable_claim("alice", "billing", "node-a:1", ttl)
        .unwrap());
    assert!(!b
        .durable_claim("alice", "billing", "node-b:1", ttl)
        .unwrap());
    assert!(
        b.durable_claim("alice", "other", "node-b:1", ttl).unwrap(),
        "names are separate"
    );
    assert!(
        a.durable_claim("alice", "billing", "node-a:1", ttl)
            .unwrap(),
        "a renewal"
    );
    b.durable_release("alice", "billing", "node-b:1").unwrap();
    assert!(
        !b.durable_claim("alice", "billing", "node-b:1", ttl)
            .unwrap(),
        "not b's to release"
    );
    a.durable_release("alice", "billing", "node-a:1").unwrap();
    assert!(b
        .durable_claim("alice", "billing", "node-b:1", ttl)
        .unwrap());
    // b never renews: its claim expires and a may take the name.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !a
        .durable_claim("alice", "billing", "node-a:2", ttl)
        .unwrap()
    {
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn dead_letters_are_shared_by_the_nodes() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (mut a, mut b) = redis.two_nodes();
    let dl = |reason: &str| crate::store::NewDeadLetter {
        event: numbered("x", 7),
        principal: "alice".into(),
        subscription_id: "sub-1".into(),
        connection_id: 42,
        reason: reason.into(),
        attempts: 3,
    };
    let first = a.add_dead_letter(dl("rejected")).unwrap();
    let second = b.add_dead_letter(dl("expired")).unwrap();
    assert_eq!((first.id, second.id), (1, 2), "one id space");
    let read = b.dead_letter(1).unwrap().unwrap();
    assert_eq!(
        (
            read.reason.as_str(),
            read.attempts,
            read.connection_id,
            read.event.event.cursor
        ),
        ("rejected", 3, 42, 7)
    );
    assert_eq!(read.dead_at, first.dead_at);
    assert_eq!(b.take_dead_letter(1).unwrap().unwrap().reason, "rejected");
    assert!(a.take_dead_letter(1).unwrap().is_none(), "taken once");
    assert_eq!(a.dead_letters(0, 10).unwrap().len(), 1);
    assert_eq!(
        a.add_dead_letter(dl("again")).unwrap().id,
        3,
        "ids are never reused"
    );
}

#[test]
fn nodes_register_and_drop_out_when_they_stop_beating() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = redis.options();
    let mut nodes = Nodes::connect(&options).unwrap();
    let info = |name: &str| NodeInfo {
        name: name.into(),
        address: "127.0.0.1:8080".into(),
        version: "0.1.0".into(),
        started_at: chrono::Utc::now(),
        last_beat: chrono::DateTime::UNIX_EPOCH,
    };
    nodes.beat(&info("b"), Duration::from_secs(30)).unwrap();
    nodes.beat(&info("a"), Duration::from_millis(100)).unwrap();
    let listed = nodes.nodes().unwrap();
    assert_eq!(
        listed.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(
        listed[0].last_beat > chrono::DateTime::UNIX_EPOCH,
        "the beat sets it"
    );
    std::thread::sleep(Duration::from_millis(200));
    let listed = nodes.nodes().unwrap();
    assert_eq!(
        listed.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}:nodes", options.prefix))
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(members, ["b"], "the expired name left the set");
}

#[test]
fn ids_the_server_made_up_are_stored_but_not_kept_for_duplicate_checks() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let options = redis.options();
    let mut s = RedisStore::open(&options).unwrap();
    let generated = Event::from_json(json!({"topic": "task.a"}), "s").unwrap();
    assert!(generated.id_generated);
    let generated_id = generated.id.clone();
    let batch = [
        NewEvent {
            event: EncodedEvent::new(generated),
            check_duplicate: true,
        },
        new("given"),
    ];
    assert_eq!(
        s.append_new(&batch).unwrap(),
        [Appended::Stored(1), Appended::Stored(2)]
    );
    let mut c = redis.conn();
    let mut exists = |id: &str| -> bool {
        redis::cmd("EXISTS")
            .arg(format!("{}:{{log}}:pid:s:{id}", options.prefix))
            .query(&mut c)
            .unwrap()
    };
    assert!(!exists(&generated_id), "a made-up id is not kept");
    assert!(exists("given"), "a publisher's id is");
    // Stored and read back like any other.
    assert_eq!(cursors(&s), [1, 2]);
}

mod log;
