//! The log: appending (numbered by the log, or imported with cursors), reading,
//! stats and retention.
//!
//! Owns: the `{log}` keys. Must not: decide when retention runs (the store actor
//! does).

use std::sync::Arc;
use std::time::Duration;

use redis::{RedisResult, Value};

use super::batch::{self, dense_runs, entries_for, head_of, PAGE};
use super::keys::id;
use super::reply;
use super::{join_epoch, RedisStore};
use crate::protocol::{EncodedEvent, Event, ANONYMOUS};
use crate::store::{
    Appended, EventQuery, NewEvent, Order, Retention, StoreError, StoreStats, StoredId,
};

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
    let (mut seen, mut entries_seen) = (0, 0);
    while ids.len() < limit {
        let page = entries_for(limit - ids.len(), seen, entries_seen);
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
            before = Some(e.id);
            entries_seen += 1;
            for stored in batch::envelopes(&e, 0)?.into_iter().rev() {
                seen += 1;
                let Id { id } =
                    serde_json::from_str(&stored.json).map_err(|err| StoreError::Corrupt {
                        cursor: stored.cursor,
                        message: err.to_string(),
                    })?;
                if ids.len() < limit {
                    ids.push(StoredId::new(stored.publisher, id, stored.cursor));
                }
            }
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

/// What becomes of one event of [`append_new`]'s batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Goes to the log (if the log does not hold its id already).
    Send,
    /// A repeat of the batch's event at this index: answered as that one's duplicate.
    SameAs(usize),
    Done(Appended),
}

/// The id keys a batch sends, per event: `None` for an id the server made up (no
/// other publish can repeat it), else the key and whether to check it (`false`:
/// store again and remember, a republished dead letter). Also finds repeats within
/// the batch, which the log cannot see since it checks before it writes: an event
/// checked against an id an earlier event of the batch keeps is that one's duplicate.
fn fates(keys: &[Option<(String, bool)>]) -> Vec<Fate> {
    let mut kept: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    keys.iter()
        .enumerate()
        .map(|(i, key)| match key {
            None => Fate::Send,
            Some((key, check)) => match kept.get(key.as_str()) {
                Some(&earlier) if *check => Fate::SameAs(earlier),
                _ => {
                    kept.insert(key, i);
                    Fate::Send
                }
            },
        })
        .collect()
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
    let keys: Vec<Option<(String, bool)>> = events
        .iter()
        .map(|e| {
            let ev = &e.event.event;
            (!e.id_is_unique()).then(|| {
                (
                    store.keys.event_id(&ev.publisher, &ev.id),
                    e.check_duplicate,
                )
            })
        })
        .collect();
    let mut fate = fates(&keys);
    let (maxlen, ttl) = (maxlen(store), ttl_secs(store));
    // Each round either stores every event left or takes out at least one duplicate.
    loop {
        let sending: Vec<usize> = (0..events.len())
            .filter(|&i| fate[i] == Fate::Send)
            .collect();
        if sending.is_empty() {
            break;
        }
        let fields = batch::pack(
            sending
                .iter()
                .map(|&i| (heads[i], publisher_field(&events[i].event.event))),
        );
        let out = epoch_guarded(store, "append", |store, c| {
            let k = &store.keys;
            let mut call = store.scripts.append_new.prepare_invoke();
            call.key(&k.events).key(&k.seq).key(&k.epoch);
            for &i in &sending {
                if let Some((key, _)) = &keys[i] {
                    call.key(key);
                }
            }
            call.arg(&store.epoch)
                .arg(&maxlen)
                .arg(ttl)
                .arg(fields.count)
                .arg(&fields.lengths)
                .arg(&fields.blob)
                .arg(&fields.publishers);
            for (at, &i) in sending.iter().enumerate() {
                if let Some((_, check)) = &keys[i] {
                    call.arg(at).arg(if *check { "1" } else { "0" });
                }
            }
            call.invoke(c)
        })?;
        match out {
            Value::Array(pairs) => {
                if pairs.is_empty() || pairs.len() % 2 != 0 {
                    return Err(reply::unexpected("append answered an odd list"));
                }
                let mut pairs = pairs.into_iter();
                while let (Some(at), Some(cursor)) = (pairs.next(), pairs.next()) {
                    let at = usize::try_from(reply::count(at)?)
                        .ok()
                        .and_then(|at| sending.get(at))
                        .ok_or_else(|| reply::unexpected("append named no event of the batch"))?;
                    fate[*at] = Fate::Done(Appended::Duplicate(reply::count(cursor)?));
                }
            }
            first => {
                let first = reply::count(first)?;
                for (k, &i) in sending.iter().enumerate() {
                    fate[i] = Fate::Done(Appended::Stored(first + k as u64));
                }
            }
        }
    }
    let settled = |f: Fate| match f {
        Fate::Done(a) => Some(a),
        _ => None,
    };
    (0..events.len())
        .map(|i| {
            let outcome = match fate[i] {
                Fate::SameAs(j) => settled(fate[j]).map(|a| match a {
                    Appended::Stored(c) | Appended::Duplicate(c) => Appended::Duplicate(c),
                }),
                f => settled(f),
            };
            outcome.ok_or_else(|| reply::unexpected("append left an event unanswered"))
        })
        .collect()
}

pub(super) fn append(
    store: &mut RedisStore,
    events: &[Arc<EncodedEvent>],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let heads: Vec<_> = events.iter().map(|e| head_of(e)).collect();
    let runs = dense_runs(events);
    let mut packed = Vec::with_capacity(runs.len());
    let mut at = 0;
    for run in &runs {
        let fields = batch::pack(
            run.iter()
                .zip(&heads[at..])
                .map(|(e, h)| (h.as_ref(), publisher_field(&e.event))),
        );
        at += run.len();
        let last = run.last().map_or(0, |e| e.event.cursor);
        packed.push((last, fields));
    }
    let (maxlen, ttl) = (maxlen(store), ttl_secs(store));
    epoch_guarded(store, "append", |store, c| {
        let k = &store.keys;
        let mut call = store.scripts.append.prepare_invoke();
        call.key(&k.events).key(&k.seq).key(&k.epoch);
        for e in events {
            call.key(k.event_id(&e.event.publisher, &e.event.id));
        }
        call.arg(&store.epoch)
            .arg(&maxlen)
            .arg(ttl)
            .arg(packed.len());
        for (last, f) in &packed {
            call.arg(*last)
                .arg(f.count)
                .arg(&f.lengths)
                .arg(&f.blob)
                .arg(&f.publishers);
        }
        for e in events {
            call.arg(e.event.cursor);
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
    let after = q.after.unwrap_or(0);
    let from = format!("({}", id(after));
    let filtered = q.topic.is_some() || q.event_type.is_some() || q.priority.is_some();
    // The last entry read: the next page starts past it.
    let mut last: Option<String> = None;
    let (mut seen, mut entries_seen) = (0, 0);
    loop {
        let want = if filtered {
            PAGE
        } else {
            q.limit - found.len()
        };
        let page = entries_for(want, seen, entries_seen);
        let v = store.link.run("read events", true, |c| {
            let mut cmd;
            match q.order {
                Order::Asc => {
                    cmd = redis::cmd("XRANGE");
                    cmd.arg(&store.keys.events)
                        .arg(last.as_deref().unwrap_or(&from))
                        .arg("+");
                }
                Order::Desc => {
                    cmd = redis::cmd("XREVRANGE");
                    cmd.arg(&store.keys.events)
                        .arg(last.as_deref().unwrap_or("+"))
                        .arg(&from);
                }
            }
            cmd.arg("COUNT").arg(page).query::<Value>(c)
        })?;
        let entries = reply::entries(v)?;
        let full = entries.len() == page;
        for entry in entries {
            last = Some(format!("({}", id(entry.id)));
            let mut events = batch::events(&entry, after)?;
            entries_seen += 1;
            seen += events.len();
            if q.order == Order::Desc {
                events.reverse();
            }
            for event in events {
                if q.matches(&event) {
                    found.push(event);
                    if found.len() >= q.limit {
                        return Ok(found);
                    }
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
    let v = store.link.run("stats", true, |c| {
        store
            .scripts
            .stats
            .key(&k.events)
            .key(&k.letters)
            .invoke::<Value>(c)
    })?;
    let [first, last, letters] = <[Value; 3]>::try_from(reply::array(v)?)
        .map_err(|_| reply::unexpected("stats is not [first, last, dead letters]"))?;
    let (first, last) = (reply::count(first)?, reply::count(last)?);
    let held = first > 0 && last >= first;
    Ok(StoreStats {
        kind: "redis",
        // Cursors are dense within and across entries, but for the gaps of a log
        // imported from a single node, which count here until retention drops them.
        event_count: if held { last - first + 1 } else { 0 },
        dead_letters: reply::count(letters)?,
        first_cursor: held.then_some(first),
        last_cursor: held.then_some(last),
        dead_letters_evicted: 0,
    })
}

pub(super) fn apply_retention(
    store: &mut RedisStore,
    retention: &Retention,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    if let Some(max) = retention.max_events {
        deleted += trim(store, "count", max)?;
    }
    if let Some(age) = retention.max_age {
        if let Some(first_young) = first_young(store, age)? {
            deleted += trim(store, "below", first_young)?;
        }
    }
    Ok(deleted)
}

/// Deletes whole entries (the trim script); answers how many events went.
fn trim(store: &RedisStore, how: &str, n: u64) -> Result<u64, StoreError> {
    let v = store.link.run("trim the log", false, |c| {
        store
            .scripts
            .trim
            .key(&store.keys.events)
            .arg(how)
            .arg(n)
            .invoke::<Value>(c)
    })?;
    reply::count(v)
}

/// An entry's id and storage time, without its envelopes.
struct Probe {
    id: u64,
    stored_at: u64,
}

/// The id of the first entry retention by `age` keeps (one past the newest when it
/// keeps none), or `None` when it deletes nothing. Entries carry their storage time
/// from Redis's clock, in cursor order, so a binary search over cursors finds it in
/// a few dozen single-entry probes instead of reading the log's head.
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
    let young = |e: &Probe| e.stored_at >= cutoff;
    let Some(first) = probe(store, "-")? else {
        return Ok(None);
    };
    if young(&first) {
        return Ok(None);
    }
    let Some(last) = probe(store, "+")? else {
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

/// The first entry at or after stream id `from` (`-`: the oldest, `+`: the newest).
fn probe(store: &RedisStore, from: &str) -> Result<Option<Probe>, StoreError> {
    let v = store.link.run("probe the log", true, |c| {
        store
            .scripts
            .probe
            .key(&store.keys.events)
            .arg(from)
            .invoke::<Value>(c)
    })?;
    let mut found = reply::array(v)?.into_iter();
    match (found.next(), found.next()) {
        (Some(entry), Some(at)) => {
            let text = reply::text(entry)?;
            let id = super::keys::cursor_of(text.as_bytes())
                .ok_or_else(|| reply::unexpected("stream id is not <n>-0"))?;
            Ok(Some(Probe {
                id,
                stored_at: reply::count(at).unwrap_or(0),
            }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_a_batch_are_answered_as_the_first() {
        let k = |key: &str, check: bool| Some((key.to_owned(), check));
        // (keys, fates)
        let table = [
            (vec![None, None], vec![Fate::Send, Fate::Send]),
            (
                vec![k("a", true), k("a", true)],
                vec![Fate::Send, Fate::SameAs(0)],
            ),
            // Stored again on purpose, then a checked repeat of it.
            (
                vec![k("a", false), k("a", false), k("a", true)],
                vec![Fate::Send, Fate::Send, Fate::SameAs(1)],
            ),
            (
                vec![k("a", true), k("b", true)],
                vec![Fate::Send, Fate::Send],
            ),
        ];
        for (keys, want) in table {
            assert_eq!(fates(&keys), want, "{keys:?}");
        }
    }
}
