//! The Redis backend: one log shared by every node of a cluster (docs/cluster.md).
//!
//! - `conn`: one lazily (re)connected connection and the meaning of its errors;
//! - `keys`: the key space under `cluster.prefix`;
//! - `scripts`: the Lua scripts that make each write atomic;
//! - `reply`: parsing stream entries and other replies;
//! - `batch`: the log's entry format, one entry per group commit;
//! - `events`, `letters`, `durable`: the [`EventStore`] methods, by the state they own;
//! - [`tail`]: a node's live read of the log, on a connection of its own;
//! - [`nodes`]: the node registry behind `/api/cluster`.
//!
//! The log numbers events itself ([`EventStore::numbers_events`]): one script per
//! batch checks the epoch, checks the ids publishers chose against the cluster's
//! duplicate keys, and appends the batch as one stream entry under the next cursors,
//! so two nodes never hand out one cursor.
//!
//! Owns: everything the cluster keeps in Redis under its prefix. Must not: route or
//! deliver (nodes read the log back through a [`tail::Tail`]), decide retention limits
//! or when they apply (the store actor does), or touch keys outside its prefix.
//! Blocking: every call waits on Redis for up to `cluster.command_timeout_ms`, so it
//! runs only on a thread of its own.

mod batch;
mod conn;
mod durable;
mod events;
mod keys;
mod letters;
pub mod nodes;
mod reply;
mod scripts;
pub mod tail;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::{
    Appended, DeadLetter, DurableState, EventQuery, EventReads, EventStore, NewDeadLetter,
    NewEvent, Retention, StoreError, StoreStats, StoredId,
};
use crate::config::Config;
use crate::protocol::EncodedEvent;
use conn::Link;
use keys::Keys;
use scripts::Scripts;

/// The oldest Redis with exclusive ranges in `XRANGE` (`(<id>`) and `XTRIM MINID`.
const MIN_VERSION: (u32, u32) = (6, 2);

/// How to reach the cluster's Redis, and what to keep there.
#[derive(Clone)]
pub struct RedisOptions {
    pub url: String,
    /// Every key starts with this (`cluster.prefix`).
    pub prefix: String,
    /// Refuse a Redis without `appendonly yes` (else only warn).
    pub require_aof: bool,
    /// How long an event id stays known to the duplicate check.
    pub dedupe_ttl: Duration,
    /// Connect, read and write timeout of every command.
    pub command_timeout: Duration,
    /// Approximate bound (`XADD MINID ~`, in cursors) between retention passes;
    /// `None`: no bound.
    pub max_events: Option<u64>,
    /// Go on after the log's epoch changed instead of answering `LogReplaced`.
    pub accept_new_log: bool,
}

impl RedisOptions {
    /// The defaults of `config/switchyard.toml` for a Redis at `url`.
    pub fn new(url: &str) -> RedisOptions {
        RedisOptions {
            url: url.to_owned(),
            prefix: "sy".into(),
            require_aof: true,
            dedupe_ttl: Duration::from_secs(300),
            command_timeout: Duration::from_secs(2),
            max_events: None,
            accept_new_log: false,
        }
    }
}

impl From<&Config> for RedisOptions {
    fn from(config: &Config) -> Self {
        RedisOptions {
            url: config.store.redis_url.clone(),
            prefix: config.cluster.prefix.clone(),
            require_aof: config.store.redis_require_aof,
            dedupe_ttl: Duration::from_secs(config.cluster.dedupe_ttl_secs),
            command_timeout: config.cluster.command_timeout(),
            max_events: config.store.retention().max_events,
            accept_new_log: config.cluster.accept_new_log,
        }
    }
}

/// Never prints the URL: it may hold a password.
impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("prefix", &self.prefix)
            .field("require_aof", &self.require_aof)
            .field("dedupe_ttl", &self.dedupe_ttl)
            .field("command_timeout", &self.command_timeout)
            .field("max_events", &self.max_events)
            .field("accept_new_log", &self.accept_new_log)
            .finish_non_exhaustive()
    }
}

/// The cluster's log, dead letters and durable state in Redis.
pub struct RedisStore {
    link: Link,
    keys: Keys,
    scripts: Scripts,
    options: RedisOptions,
    /// The epoch of the log this store joined; writes into another log are refused.
    epoch: String,
}

impl RedisStore {
    /// Connects, checks that the server is suitable, and joins the log (creating its
    /// epoch if the log is new).
    pub fn open(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let link = Link::new(&options.url, options.command_timeout)?;
        check_server(&link, options.require_aof)?;
        let mut store = RedisStore {
            link,
            keys: Keys::new(&options.prefix),
            scripts: Scripts::new(),
            options: options.clone(),
            epoch: String::new(),
        };
        store.epoch = join_epoch(&store.link, &store.keys)?;
        Ok(store)
    }

    /// The epoch of the log this store joined.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Makes the log number new events above `at_least` even if it holds no event that
    /// high (never lowers it): an import whose newest events retention had deleted
    /// keeps its high-water mark, so no cursor a client holds is handed out again.
    /// Answers the log's last cursor now.
    pub fn raise_cursor(&mut self, at_least: u64) -> Result<u64, StoreError> {
        events::raise_cursor(self, at_least)
    }
}

/// The log's epoch, written first if the log has none (it is new, or was wiped).
fn join_epoch(link: &Link, keys: &Keys) -> Result<String, StoreError> {
    let fresh = uuid::Uuid::now_v7().simple().to_string();
    link.run("join the log's epoch", true, |c| {
        redis::cmd("SET")
            .arg(&keys.epoch)
            .arg(&fresh)
            .arg("NX")
            .exec(c)?;
        redis::cmd("GET").arg(&keys.epoch).query::<String>(c)
    })
}

/// Refuses a Redis that would lose acknowledged events on restart (unless told to go
/// on) or lacks the stream commands the store uses.
fn check_server(link: &Link, require_aof: bool) -> Result<(), StoreError> {
    let aof = link.run("CONFIG GET appendonly", true, |c| {
        Ok(redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query::<Value>(c))
    })?;
    match aof.map(reply::array) {
        Ok(Ok(pair)) => {
            let on = pair.into_iter().nth(1).map(reply::text);
            if !matches!(on, Some(Ok(ref v)) if v == "yes") {
                if require_aof {
                    return Err(StoreError::Unsuitable(
                        "redis runs with `appendonly no`: a restart of redis would lose \
                         acknowledged events. Set `appendonly yes` (recommended, with \
                         `appendfsync always`), or set store.redis_require_aof = false \
                         to accept that"
                            .into(),
                    ));
                }
                log::warn!(
                    "redis runs with `appendonly no`: a restart of redis loses acknowledged \
                     events (store.redis_require_aof = false)"
                );
            }
        }
        // Managed Redis often refuses CONFIG; its persistence is the provider's.
        Ok(Err(e)) => log::warn!("cannot check redis persistence (CONFIG GET appendonly): {e}"),
        Err(e) => log::warn!("cannot check redis persistence (CONFIG GET appendonly): {e}"),
    }
    let policy = link.run("CONFIG GET maxmemory-policy", true, |c| {
        Ok(redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query::<Value>(c))
    })?;
    let policy = policy
        .ok()
        .and_then(|v| reply::array(v).ok())
        .and_then(|pair| pair.into_iter().nth(1))
        .and_then(|v| reply::text(v).ok());
    if let Some(warning) = policy.as_deref().and_then(eviction_warning) {
        log::warn!("{warning}");
    }
    let info: String = link.run("INFO server", true, |c| {
        redis::cmd("INFO").arg("server").query(c)
    })?;
    version_ok(&info).map_err(StoreError::Unsuitable)
}

/// What to say about Redis's `maxmemory-policy`: anything but `noeviction` may evict
/// the log, the duplicate ids or a durable subscription's state when memory runs out.
fn eviction_warning(policy: &str) -> Option<String> {
    (policy != "noeviction").then(|| {
        format!(
            "redis runs with `maxmemory-policy {policy}`: when it reaches maxmemory it may \
             evict the event log or durable state. Set `maxmemory-policy noeviction` \
             (publishes are then refused when memory is full, nothing is lost)"
        )
    })
}

/// Whether `INFO server` text names a Redis new enough, or why not.
fn version_ok(info: &str) -> Result<(), String> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_VERSION {
        return Err(format!(
            "redis {version:?} is too old: store.kind = \"redis\" needs {}.{} or newer",
            MIN_VERSION.0, MIN_VERSION.1
        ));
    }
    Ok(())
}

/// The read pool's connections: reads only, on a link of their own.
impl EventReads for RedisStore {
    fn query(&mut self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        events::query(self, q)
    }
}

impl EventStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn reader(&self) -> Result<Option<Box<dyn EventReads>>, StoreError> {
        // A connection of its own, to the log this store joined.
        Ok(Some(Box::new(RedisStore {
            link: Link::new(&self.options.url, self.options.command_timeout)?,
            keys: self.keys.clone(),
            scripts: Scripts::new(),
            options: self.options.clone(),
            epoch: self.epoch.clone(),
        })))
    }

    fn numbers_events(&self) -> bool {
        true
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        events::last_cursor(self)
    }

    fn recent_ids(&self, limit: usize) -> Result<Vec<StoredId>, StoreError> {
        events::recent_ids(self, limit)
    }

    fn append(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError> {
        events::append(self, events)
    }

    fn append_new(&mut self, events: &[NewEvent]) -> Result<Vec<Appended>, StoreError> {
        events::append_new(self, events)
    }

    fn query(&self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        events::query(self, q)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        events::stats(self)
    }

    fn apply_retention(&mut self, retention: &Retention) -> Result<u64, StoreError> {
        events::apply_retention(self, retention)
    }

    fn add_dead_letter(&mut self, dl: NewDeadLetter) -> Result<DeadLetter, StoreError> {
        letters::add(self, dl)
    }

    fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        letters::list(self, after, limit)
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        letters::get(self, id)
    }

    fn take_dead_letter(&mut self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        letters::take(self, id)
    }

    fn trim_dead_letters(&mut self, max: u64) -> Result<u64, StoreError> {
        letters::trim(self, max)
    }

    fn dead_letter_count(&self) -> Result<u64, StoreError> {
        letters::count(self)
    }

    fn durable_open(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<DurableState, StoreError> {
        durable::open(self, principal, name, floor)
    }

    fn durable_ack(
        &mut self,
        principal: &str,
        name: &str,
        cursors: &[u64],
    ) -> Result<(), StoreError> {
        durable::ack(self, principal, name, cursors)
    }

    fn durable_set_floor(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<(), StoreError> {
        durable::set_floor(self, principal, name, floor)
    }

    fn durable_claim(
        &mut self,
        principal: &str,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        durable::claim(self, principal, name, owner, ttl)
    }

    fn durable_release(
        &mut self,
        principal: &str,
        name: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        durable::release(self, principal, name, owner)
    }
}
