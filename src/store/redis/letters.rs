//! Dead letters: a stream with explicit ids `<id>-0` from a counter, so ids are
//! strictly increasing across the cluster and never reused after a take or a trim.
//!
//! Owns: the `{dl}` keys. Must not: decide how many dead letters to keep.

use chrono::{DateTime, Utc};
use redis::Value;

use super::keys::id;
use super::reply::{self, Entry};
use super::RedisStore;
use crate::store::eviction::fair_eviction;
use crate::store::{DeadLetter, NewDeadLetter, StoreError};

pub(super) fn add(store: &RedisStore, dl: NewDeadLetter) -> Result<DeadLetter, StoreError> {
    let k = &store.keys;
    let v = store.link.run("add a dead letter", false, |c| {
        store
            .scripts
            .add_dead_letter
            .key(&k.letters)
            .key(&k.letters_seq)
            .key(&k.letters_owners)
            .arg(&*dl.event.json)
            .arg(&dl.subscription_id)
            .arg(dl.connection_id)
            .arg(&dl.reason)
            .arg(dl.attempts)
            .arg(&dl.principal)
            .invoke::<Value>(c)
    })?;
    let [dl_id, at] = <[Value; 2]>::try_from(reply::array(v)?)
        .map_err(|_| reply::unexpected("dead letter script answered no [id, at]"))?;
    let dead_at = time_of(reply::count(at)?)?;
    Ok(dl.stored(reply::count(dl_id)?, dead_at))
}

pub(super) fn list(
    store: &RedisStore,
    after: u64,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let v = store.link.run("list dead letters", true, |c| {
        redis::cmd("XRANGE")
            .arg(&store.keys.letters)
            .arg(format!("({}", id(after)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query::<Value>(c)
    })?;
    reply::entries(v)?.iter().map(letter).collect()
}

pub(super) fn get(store: &RedisStore, dl_id: u64) -> Result<Option<DeadLetter>, StoreError> {
    let v = store.link.run("read a dead letter", true, |c| {
        redis::cmd("XRANGE")
            .arg(&store.keys.letters)
            .arg(id(dl_id))
            .arg(id(dl_id))
            .query::<Value>(c)
    })?;
    reply::entries(v)?.first().map(letter).transpose()
}

pub(super) fn take(store: &RedisStore, dl_id: u64) -> Result<Option<DeadLetter>, StoreError> {
    let v = store.link.run("take a dead letter", false, |c| {
        store
            .scripts
            .take_dead_letter
            .key(&store.keys.letters)
            .key(&store.keys.letters_owners)
            .arg(id(dl_id))
            .invoke::<Value>(c)
    })?;
    reply::entries(v)?.first().map(letter).transpose()
}

/// Most entries one eviction call looks at: it runs inside Redis, which serves no one
/// else meanwhile.
const EVICT_SCAN_LIMIT: u64 = 20_000;

pub(super) fn trim(store: &RedisStore, max: u64) -> Result<u64, StoreError> {
    let total = count(store)?;
    let excess = total.saturating_sub(max);
    if excess == 0 {
        return Ok(0);
    }
    let k = &store.keys;
    let v = store
        .link
        .run("count dead letters per principal", true, |c| {
            redis::cmd("HGETALL")
                .arg(&k.letters_owners)
                .query::<Value>(c)
        })?;
    let mut counts = Vec::new();
    let mut fields = reply::array(v)?.into_iter();
    while let (Some(p), Some(n)) = (fields.next(), fields.next()) {
        counts.push((reply::text(p)?, reply::count(n)?));
    }
    // Entries from before the owners hash: counted as one principal, `''`.
    let owned: u64 = counts.iter().map(|(_, n)| n).sum();
    if total > owned && !counts.iter().any(|(p, _)| p.is_empty()) {
        counts.push((String::new(), total - owned));
    }
    let plan = fair_eviction(&counts, excess);
    let v = store.link.run("evict dead letters", false, |c| {
        let mut call = store.scripts.evict_dead_letters.key(&k.letters);
        call.key(&k.letters_owners);
        for (principal, n) in &plan {
            call.arg(principal).arg(*n);
        }
        call.arg(EVICT_SCAN_LIMIT).invoke::<Value>(c)
    })?;
    reply::count(v)
}

pub(super) fn count(store: &RedisStore) -> Result<u64, StoreError> {
    let v = store.link.run("count dead letters", true, |c| {
        redis::cmd("XLEN")
            .arg(&store.keys.letters)
            .query::<Value>(c)
    })?;
    reply::count(v)
}

fn letter(e: &Entry) -> Result<DeadLetter, StoreError> {
    let json: std::sync::Arc<str> = e.text("event")?.into();
    let event = serde_json::from_str(&json).map_err(|err| StoreError::Corrupt {
        cursor: 0,
        message: format!("dead letter {}: {err}", e.id),
    })?;
    Ok(DeadLetter {
        id: e.id,
        event: crate::protocol::EncodedEvent::with_json(event, json),
        principal: e
            .field("principal")
            .map_or_else(String::new, |p| String::from_utf8_lossy(p).into_owned()),
        subscription_id: e.text("sub")?.to_owned(),
        connection_id: e.number("conn")?,
        reason: e.text("reason")?.to_owned(),
        attempts: e.number("attempts")?,
        dead_at: time_of(e.number("dead_at")?)?,
    })
}

fn time_of(ms: u64) -> Result<DateTime<Utc>, StoreError> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| reply::unexpected("dead_at is not a time"))
}
