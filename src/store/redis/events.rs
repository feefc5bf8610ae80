//! The log: appending (numbered by the log, or imported with cursors), reading,
//! stats and retention.
//!
//! Owns: the `{log}` keys. Must not: decide when retention runs (the store actor
//! does).

use std::sync::Arc;
use std::time::Duration;

use redis::{RedisResult, Value};

use super::keys::id;
use super::reply::{self, Entry};
use super::{join_epoch, RedisStore};
use crate::protocol::{EncodedEvent, Event, ANONYMOUS};
use crate::store::{
    Appended, EventQuery, NewEvent, Order, Retention, StoreError, StoreStats, StoredId,
};

/// Entries read per round trip when a query filters, and at most when it does not.
const PAGE: usize = 1000;

pub(super) fn last_cursor(store: &RedisStore) -> Result<u64, StoreError> {
    let k = &store.keys;
    let top = store.link.run("read the last cursor", true, |c| {
        store
            .scripts
            .last_cursor
            .key(&k.events)
            .key(&k.seq)
            .invoke::<Value>(c)
    })?;
    reply::count(top)
}

/// Numbering goes on above `at_least` (the fence script); answers the highest cursor now.
pub(super) fn raise_cursor(store: &RedisStore, at_least: u64) -> Result<u64, StoreError> {
    let k = &store.keys;
    let top = store.link.run("raise the last cursor", true, |c| {
        store
            .scripts
            .fence
            .key(&k.events)
            .key(&k.seq)
            .arg(at_least)
            .invoke::<Value>(c)
    })?;
    reply::count(top)
}

/// The `p` field of an event's entry: empty (no field) for [`ANONYMOUS`], so that a
/// server without auth writes entries as before publishers were recorded.
fn publisher_field(event: &Event) -> &str {
    if event.publisher == ANONYMOUS {
        ""
    } else {
        &event.publisher
    }
}

pub(super) fn recent_ids(store: &RedisStore, limit: usize) -> Result<Vec<StoredId>, StoreError> {
    /// The one field read back from an envelope.
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let mut ids = Vec::new();
    let mut before: Option<u64> = None;
    while ids.len() < limit {
        let page = (limit - ids.len()).min(PAGE);
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({}", id(b)));
        let entries = reply::entries(store.link.run("XREVRANGE", true, |c| {
            redis::cmd("XREVRANGE")
                .arg(&store.keys.events)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(page)
                .query::<Value>(c)
        })?)?;
        let full = entries.len() == page;
        for e in entries {
            let Id { id } =
                serde_json::from_str(e.text("e")?).map_err(|err| StoreError::Corrupt {
                    cursor: e.id,
                    message: err.to_string(),
                })?;
            before = Some(e.id);
            let publisher = match e.field("p") {
                Some(_) => e.text("p")?,
                None => ANONYMOUS,
            };
            ids.push(StoredId::new(publisher, id, e.id));
        }
        if !full {
            break;
        }
    }
    ids.reverse();
    Ok(ids)
}

/// `EPOCH <found>` from a script becomes `Err(found)`: the log is not the one joined.
fn epoch_checked(result: RedisResult<Value>) -> RedisResult<Result<Value, String>> {
    match result {
        Err(e) if e.code() == Some("EPOCH") => {
            Ok(Err(e.detail().unwrap_or_default().trim().to_owned()))
        }
        other => other.map(Ok),
    }
}

/// Runs a write script, `invoke`, that checks the epoch. With
/// `cluster.accept_new_log`, a changed epoch is joined (and logged) and the write
/// tried once more; otherwise it is [`StoreError::LogReplaced`].
fn epoch_guarded(
    store: &mut RedisStore,
    what: &str,
    invoke: impl Fn(&RedisStore, &mut redis::Connection) -> RedisResult<Value>,
) -> Result<Value, StoreError> {
    let mut rejoined = false;
    loop {
        let this = &*store;
        match this
            .link
            .run(what, false, |c| epoch_checked(invoke(this, c)))?
        {
            Ok(v) => return Ok(v),
            Err(_) if store.options.accept_new_log && !rejoined => {
                let joined = join_epoch(&store.link, &store.keys)?;
                log::warn!(
                    "event log replaced: epoch {} -> {joined}; going on with the new log \
                     (cluster.accept_new_log = true)",
                    store.epoch
                );
                store.epoch = joined;
                rejoined = true;
            }
            Err(found) => {
                return Err(StoreError::LogReplaced {
                    joined: store.epoch.clone(),
                    found: if found.is_empty() {
                        "none (the log was wiped)".into()
                    } else {
                        found
                    },
                })
            }
        }
    }
}

fn maxlen(store: &RedisStore) -> String {
    store
        .options
        .max_events
        .map_or("0".into(), |n| n.to_string())
}

fn ttl_secs(store: &RedisStore) -> u64 {
    store.options.dedupe_ttl.as_secs().max(1)
}

pub(super) fn append_new(
    store: &mut RedisStore,
    events: &[NewEvent],
) -> Result<Vec<Appended>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let heads = events
        .iter()
        .map(|e| {
            e.event.json_before_cursor().ok_or_else(|| {
                StoreError::Redis(format!(
                    "event {} is not a new event (cursor {})",
                    e.event.event.id, e.event.event.cursor
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (maxlen, ttl) = (maxlen(store), ttl_secs(store));
    let out = epoch_guarded(store, "append", |store, c| {
        let k = &store.keys;
        let mut call = store.scripts.append_new.prepare_invoke();
        call.key(&k.events).key(&k.seq).key(&k.epoch);
        for e in events {
            call.key(k.event_id(&e.event.event.publisher, &e.event.event.id));
        }
        call.arg(&store.epoch).arg(&maxlen).arg(ttl);
        for (e, head) in events.iter().zip(&heads) {
            // 1: check and remember the id; 0: store again and remember (a republished
            // dead letter); 2: neither (an id the server made up cannot come again).
            let dedupe = match (e.id_is_unique(), e.check_duplicate) {
                (true, _) => "2",
                (false, true) => "1",
                (false, false) => "0",
            };
            call.arg(dedupe)
                .arg(*head)
                .arg(publisher_field(&e.event.event));
        }
        call.invoke(c)
    })?;
    let outcomes = reply::array(out)?
        .into_iter()
        .map(|v| {
            let n = reply::int(v)?;
            Ok(if n < 0 {
                Appended::Duplicate(n.unsigned_abs())
            } else {
                Appended::Stored(n as u64)
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if outcomes.len() != events.len() {
        return Err(reply::unexpected("append answered for a different count"));
    }
    Ok(outcomes)
}

pub(super) fn append(
    store: &mut RedisStore,
    events: &[Arc<EncodedEvent>],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let (maxlen, ttl) = (maxlen(store), ttl_secs(store));
    epoch_guarded(store, "append", |store, c| {
        let k = &store.keys;
        let mut call = store.scripts.append.prepare_invoke();
        call.key(&k.events).key(&k.seq).key(&k.epoch);
        for e in events {
            call.key(k.event_id(&e.event.publisher, &e.event.id));
        }
        call.arg(&store.epoch).arg(&maxlen).arg(ttl);
        for e in events {
            call.arg(e.event.cursor)
                .arg(&*e.json)
                .arg(publisher_field(&e.event));
        }
        call.invoke(c)
    })?;
    Ok(())
}

pub(super) fn query(
    store: &RedisStore,
    q: &EventQuery,
) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
    let mut found = Vec::new();
    if q.limit == 0 {
        return Ok(found);
    }
    let after = format!("({}", id(q.after.unwrap_or(0)));
    let filtered = q.topic.is_some() || q.event_type.is_some() || q.priority.is_some();
    let page = if filtered { PAGE } else { q.limit.min(PAGE) };
    // The last entry read: the next page starts past it.
    let mut last: Option<String> = None;
    loop {
        let v = store.link.run("read events", true, |c| {
            let mut cmd;
            match q.order {
                Order::Asc => {
                    cmd = redis::cmd("XRANGE");
                    cmd.arg(&store.keys.events)
                        .arg(last.as_deref().unwrap_or(&after))
                        .arg("+");
                }
                Order::Desc => {
                    cmd = redis::cmd("XREVRANGE");
                    cmd.arg(&store.keys.events)
                        .arg(last.as_deref().unwrap_or("+"))
                        .arg(&after);
                }
            }
            cmd.arg("COUNT").arg(page).query::<Value>(c)
        })?;
        let entries = reply::entries(v)?;
        let full = entries.len() == page;
        for entry in entries {
            last = Some(format!("({}", id(entry.id)));
            let event = entry.event()?;
            if q.matches(&event) {
                found.push(event);
                if found.len() >= q.limit {
                    return Ok(found);
                }
            }
        }
        if !full {
            return Ok(found);
        }
    }
}

pub(super) fn stats(store: &RedisStore) -> Result<StoreStats, StoreError> {
    let k = &store.keys;
    let replies: Vec<Value> = store.link.run("stats", true, |c| {
        redis::pipe()
            .cmd("XLEN")
            .arg(&k.events)
            .cmd("XRANGE")
            .arg(&k.events)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(&k.events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("XLEN")
            .arg(&k.letters)
            .query(c)
    })?;
    let [len, first, last, letters] = <[Value; 4]>::try_from(replies)
        .map_err(|_| reply::unexpected("stats pipeline answered for a different count"))?;
    let edge = |v| reply::entries(v).map(|e| e.first().map(|e| e.id));
    Ok(StoreStats {
        kind: "redis",
        event_count: reply::count(len)?,
        dead_letters: reply::count(letters)?,
        first_cursor: edge(first)?,
        last_cursor: edge(last)?,
        dead_letters_evicted: 0,
    })
}

pub(super) fn apply_retention(
    store: &mut RedisStore,
    retention: &Retention,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    if let Some(max) = retention.max_events {
        deleted += trim(store, &["MAXLEN", "=", &max.to_string()])?;
    }
    if let Some(age) = retention.max_age {
        if let Some(first_young) = first_young(store, age)? {
            deleted += trim(store, &["MINID", "=", &id(first_young)])?;
        }
    }
    Ok(deleted)
}

fn trim(store: &RedisStore, how: &[&str]) -> Result<u64, StoreError> {
    let v = store.link.run("XTRIM", false, |c| {
        redis::cmd("XTRIM")
            .arg(&store.keys.events)
            .arg(how)
            .query::<Value>(c)
    })?;
    reply::count(v)
}

/// The first cursor retention by `age` keeps (one past the newest entry when it
/// keeps none), or `None` when it deletes nothing. Entries carry their storage time
/// from Redis's clock, in cursor order, so a binary search over cursors finds it in
/// a few dozen single-entry reads instead of reading the log's head.
fn first_young(store: &RedisStore, age: Duration) -> Result<Option<u64>, StoreError> {
    let now = reply::array(
        store
            .link
            .run("TIME", true, |c| redis::cmd("TIME").query::<Value>(c))?,
    )?;
    let now_ms = match <[Value; 2]>::try_from(now) {
        Ok([secs, micros]) => reply::count(secs)? * 1000 + reply::count(micros)? / 1000,
        Err(_) => return Err(reply::unexpected("TIME is not [secs, micros]")),
    };
    let cutoff = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    let young = |e: &Entry| e.stored_at() >= cutoff;
    let Some(first) = probe(store, "-")? else {
        return Ok(None);
    };
    if young(&first) {
        return Ok(None);
    }
    let Some(last) = probe_last(store)? else {
        return Ok(None);
    };
    if !young(&last) {
        return Ok(Some(last.id + 1));
    }
    // The entry at or after `old` is old; the one at or after `new` is young.
    let (mut old, mut new) = (first.id, last.id);
    let mut answer = last.id;
    while new - old > 1 {
        let mid = old + (new - old) / 2;
        match probe(store, &id(mid))? {
            Some(e) if young(&e) => {
                answer = e.id;
                new = mid;
            }
            Some(_) => old = mid,
            None => return Err(reply::unexpected("the log shrank during retention")),
        }
    }
    Ok(Some(answer))
}

/// The first entry at or after stream id `from`.
fn probe(store: &RedisStore, from: &str) -> Result<Option<Entry>, StoreError> {
    let v = store.link.run("XRANGE", true, |c| {
        redis::cmd("XRANGE")
            .arg(&store.keys.events)
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query::<Value>(c)
    })?;
    Ok(reply::entries(v)?.into_iter().next())
}

fn probe_last(store: &RedisStore) -> Result<Option<Entry>, StoreError> {
    let v = store.link.run("XREVRANGE", true, |c| {
        redis::cmd("XREVRANGE")
            .arg(&store.keys.events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query::<Value>(c)
    })?;
    Ok(reply::entries(v)?.into_iter().next())
}
