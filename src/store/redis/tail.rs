//! A node's live read of the shared log: `XREAD BLOCK` from the last cursor seen.
//!
//! The tail has a connection of its own: a blocked `XREAD` holds its connection for
//! up to `block`, and the store's commands must not wait behind it. It reads from an
//! explicit cursor, never `$`, which would race with events appended just before.
//!
//! Owns: reading the log in cursor order and reporting its head. Must not: decide
//! what a gap, a regression or a new epoch means for the node (its caller does).

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::batch::{self, entries_for};
use super::conn::Link;
use super::keys::{id, Keys};
use super::reply;
use super::scripts::Scripts;
use super::RedisOptions;
use crate::protocol::EncodedEvent;
use crate::store::StoreError;

/// Where the log stands, for the tail's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The oldest cursor still in the log (`None`: the log is empty). Greater than
    /// the tail's `after + 1`: retention trimmed past events it has not read.
    pub first: Option<u64>,
    /// The highest cursor ever assigned. Below the tail's `after`: the log regressed
    /// (a failover lost writes, or it was restored from an older copy).
    pub last: u64,
    /// The log's epoch (empty if it has none): another than the one the node joined
    /// means the log was wiped or replaced.
    pub epoch: String,
}

pub struct Tail {
    link: Link,
    keys: Keys,
    scripts: Scripts,
    /// Events and entries of the last read: each entry holds one group commit, so the
    /// next read asks for as many entries as make about `count` events.
    last_read: (usize, usize),
}

impl Tail {
    /// Connects now, so that a wrong URL or a Redis out of reach shows at start.
    pub fn connect(options: &RedisOptions) -> Result<Tail, StoreError> {
        let tail = Tail {
            link: Link::new(&options.url, options.command_timeout)?,
            keys: Keys::new(&options.prefix),
            scripts: Scripts::new(),
            last_read: (0, 0),
        };
        tail.link
            .run("PING", true, |c| redis::cmd("PING").exec(c))?;
        Ok(tail)
    }

    /// The events with a cursor above `after` of the next entries of the log, about
    /// `count` events (whole entries: one group commit may hold more), in cursor
    /// order; waits up to `block` for the first one (an empty result when none came).
    pub fn read(
        &mut self,
        after: u64,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        // The reply may take all of `block`: the socket waits that long plus the
        // usual command timeout before it counts as lost.
        let wait = block + self.link.timeout();
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let entries = entries_for(count.max(1), self.last_read.0, self.last_read.1);
        let v = self.link.run("read the log", true, |c| {
            c.set_read_timeout(Some(wait))?;
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(entries)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&self.keys.events)
                .arg(id(after))
                .query::<Value>(c)
        })?;
        let mut events = Vec::new();
        let read = reply::read_entries(v)?;
        for entry in &read {
            events.extend(batch::events(entry, after)?);
        }
        if !read.is_empty() {
            self.last_read = (events.len(), read.len());
        }
        Ok(events)
    }

    /// The log's first and last cursor and its epoch, read at one instant.
    pub fn head(&mut self) -> Result<LogHead, StoreError> {
        let timeout = self.link.timeout();
        let k = &self.keys;
        let v = self.link.run("read the log's head", true, |c| {
            c.set_read_timeout(Some(timeout))?;
            self.scripts
                .head
                .key(&k.events)
                .key(&k.seq)
                .key(&k.epoch)
                .invoke::<Value>(c)
        })?;
        let [first, last, epoch] = <[Value; 3]>::try_from(reply::array(v)?)
            .map_err(|_| reply::unexpected("head is not [first, last, epoch]"))?;
        let first = reply::count(first)?;
        Ok(LogHead {
            first: (first > 0).then_some(first),
            last: reply::count(last)?,
            epoch: reply::text(epoch)?,
        })
    }

    /// Makes sure the log numbers new events above `seen` (a cursor this node read
    /// that the log no longer has); returns the log's highest cursor.
    pub fn fence(&mut self, seen: u64) -> Result<u64, StoreError> {
        let timeout = self.link.timeout();
        let k = &self.keys;
        let v = self.link.run("fence the log's cursor", true, |c| {
            c.set_read_timeout(Some(timeout))?;
            self.scripts
                .fence
                .key(&k.events)
                .key(&k.seq)
                .arg(seen.to_string())
                .invoke::<Value>(c)
        })?;
        reply::count(v)
    }
}
