//! Durable subscriptions: the floor and resolved cursors of each name, and the lease
//! that lets one connection of the whole cluster hold a name at a time.
//!
//! Owns: the `durable:{…}` keys. Must not: decide when a floor moves (the store
//! actor's compaction does) or how long a lease lasts (`cluster.lease_ttl_ms`).

use std::time::Duration;

use redis::Value;

use super::reply;
use super::RedisStore;
use crate::store::{DurableState, StoreError};

pub(super) fn open(
    store: &RedisStore,
    principal: &str,
    name: &str,
    floor: u64,
) -> Result<DurableState, StoreError> {
    let keys = store.keys.durable(principal, name);
    let v = store.link.run("open a durable subscription", true, |c| {
        store
            .scripts
            .durable_open
            .key(&keys.state)
            .key(&keys.acked)
            .arg(floor)
            .invoke::<Value>(c)
    })?;
    let [floor, acked] = <[Value; 2]>::try_from(reply::array(v)?)
        .map_err(|_| reply::unexpected("durable state is not [floor, acked]"))?;
    Ok(DurableState {
        floor: reply::count(floor)?,
        acked: reply::array(acked)?
            .into_iter()
            .map(reply::count)
            .collect::<Result<_, _>>()?,
    })
}

pub(super) fn ack(
    store: &RedisStore,
    principal: &str,
    name: &str,
    cursors: &[u64],
) -> Result<(), StoreError> {
    if cursors.is_empty() {
        return Ok(());
    }
    let keys = store.keys.durable(principal, name);
    // Recording an ack twice is harmless: a retry after a dropped connection is fine.
    store.link.run("record acks", true, |c| {
        store
            .scripts
            .durable_ack
            .key(&keys.state)
            .key(&keys.acked)
            .arg(cursors)
            .invoke::<()>(c)
    })
}

pub(super) fn set_floor(
    store: &RedisStore,
    principal: &str,
    name: &str,
    floor: u64,
) -> Result<(), StoreError> {
    let keys = store.keys.durable(principal, name);
    store.link.run("move a durable floor", true, |c| {
        store
            .scripts
            .durable_set_floor
            .key(&keys.state)
            .key(&keys.acked)
            .arg(floor)
            .invoke::<()>(c)
    })
}

pub(super) fn claim(
    store: &RedisStore,
    principal: &str,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let keys = store.keys.durable(principal, name);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    // Claiming again is a renewal by the same owner: safe to retry.
    let v = store.link.run("claim a durable subscription", true, |c| {
        store
            .scripts
            .claim
            .key(&keys.lease)
            .arg(owner)
            .arg(ttl_ms)
            .invoke::<Value>(c)
    })?;
    Ok(reply::int(v)? == 1)
}

pub(super) fn release(
    store: &RedisStore,
    principal: &str,
    name: &str,
    owner: &str,
) -> Result<(), StoreError> {
    let keys = store.keys.durable(principal, name);
    store.link.run("release a durable subscription", true, |c| {
        store
            .scripts
            .release
            .key(&keys.lease)
            .arg(owner)
            .invoke::<()>(c)
    })
}
