//! The in-memory backend: a log in cursor order, gone on restart.
//!
//! The log keeps each event's envelope (shared with the in-flight [`EncodedEvent`], not
//! copied) and the three fields queries filter on, not the decoded event, which would
//! nearly double what a retained event costs when the default retention is a million
//! events. Queries decode the envelopes they return, as the SQLite backend does.
//!
//! The log sits behind a lock shared with the read pool's [`MemoryReads`], which scan
//! it a chunk at a time, so a long query never holds an append back for long.
//!
//! Owns: the in-process log, dead letters and durable state. Must not: decide
//! retention limits or when they apply (the store actor does), or assign cursors.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};

use super::{
    decode_envelope, DeadLetter, DurableState, EventQuery, EventReads, EventStore, NewDeadLetter,
    Order, Retention, StoreError, StoreStats, StoredId,
};
use crate::protocol::Priority;
use crate::protocol::{EncodedEvent, ANONYMOUS};

/// One event of the log.
#[derive(Debug)]
struct Stored {
    /// When it was stored (retention by age uses it, not the publisher's timestamp).
    at: DateTime<Utc>,
    cursor: u64,
    priority: Priority,
    topic: Box<str>,
    event_type: Box<str>,
    json: Arc<str>,
    /// Its publisher, as an index into [`Publishers`]: it fits in the slot's padding.
    publisher: u16,
}

/// The publishers of the log's events, each name kept once: there are as many as
/// principals, and a name per event would grow every slot by a quarter.
#[derive(Debug, Default)]
struct Publishers {
    names: Vec<Box<str>>,
    index: std::collections::HashMap<Box<str>, u16>,
}

impl Publishers {
    /// Index 0 is `anonymous`; the last one stands for "too many to tell apart" (a
    /// scope no principal has), reached only past 65,534 distinct principals.
    const UNKNOWN: u16 = u16::MAX;

    fn intern(&mut self, name: &str) -> u16 {
        if name == ANONYMOUS {
            return 0;
        }
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let next = u16::try_from(self.names.len() + 1).ok();
        let Some(i) = next.filter(|&i| i < Self::UNKNOWN) else {
            return Self::UNKNOWN;
        };
        self.names.push(name.into());
        self.index.insert(name.into(), i);
        i
    }

    fn name(&self, i: u16) -> &str {
        match i {
            0 => ANONYMOUS,
            Self::UNKNOWN => "",
            i => self.names.get(usize::from(i) - 1).map_or("", |n| n),
        }
    }
}

impl Stored {
    fn matches(&self, q: &EventQuery) -> bool {
        q.matches_fields(&self.topic, &self.event_type, self.priority)
    }
}

/// The log, shared with the read pool's readers ([`MemoryReads`]).
type Log = Arc<RwLock<VecDeque<Stored>>>;

/// The log to read. A panic while it was held left it whole (every change to it is one
/// call that cannot fail half-way), so a poisoned lock is read all the same.
fn read(log: &Log) -> RwLockReadGuard<'_, VecDeque<Stored>> {
    log.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(log: &Log) -> RwLockWriteGuard<'_, VecDeque<Stored>> {
    log.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    events: Log,
    last_cursor: u64,
    dead_letters: std::collections::BTreeMap<u64, DeadLetter>,
    durables: std::collections::HashMap<(String, String), DurableState>,
    last_dead_letter: u64,
    publishers: Publishers,
}

/// The most log slots reserved up front, so that a huge `store.max_events` does not
/// reserve address space it may never use; a larger log grows past it by doubling.
const MAX_RESERVED_EVENTS: u64 = 1 << 22;

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose log has room for `max_events` (at most `MAX_RESERVED_EVENTS`)
    /// from the start, plus an eighth: the store actor enforces a count limit only
    /// every tenth of it, so the log holds up to a tenth more (and a doubling past the
    /// reservation would copy the whole log once). The slots are address space until
    /// written, so this costs no resident memory up front; what it saves is the log's
    /// doubling as it fills, which copies the whole log on the store thread while
    /// every commit (so every `published`) waits behind it.
    pub fn with_capacity(max_events: Option<u64>) -> Self {
        let reserve =
            max_events.map_or(0, |n| n.saturating_add(n / 8).min(MAX_RESERVED_EVENTS)) as usize;
        MemoryStore {
            events: Arc::new(RwLock::new(VecDeque::with_capacity(reserve))),
            ..Self::default()
        }
    }
}

impl EventStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        Ok(self.last_cursor)
    }

    fn recent_ids(&self, limit: usize) -> Result<Vec<StoredId>, StoreError> {
        /// The one field read back from an envelope.
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let mut ids = read(&self.events)
            .iter()
            .rev()
            .take(limit)
            .map(|e| {
                serde_json::from_str::<Id>(&e.json)
                    .map(|Id { id }| StoredId::new(self.publishers.name(e.publisher), id, e.cursor))
                    .map_err(|err| StoreError::Corrupt {
                        cursor: e.cursor,
                        message: err.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        ids.reverse();
        Ok(ids)
    }

    fn append(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut log = write(&self.events);
        for e in events {
            let ev = &e.event;
            debug_assert!(ev.cursor > self.last_cursor, "cursors must increase");
            self.last_cursor = ev.cursor;
            log.push_back(Stored {
                at: now,
                cursor: ev.cursor,
                priority: ev.priority,
                topic: ev.topic.as_str().into(),
                event_type: ev.event_type.as_str().into(),
                json: e.json.clone(),
                publisher: self.publishers.intern(&ev.publisher),
            });
        }
        Ok(())
    }

    fn query(&self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        MemoryReads {
            events: self.events.clone(),
        }
        .query(q)
    }

    fn reader(&self) -> Result<Option<Box<dyn EventReads>>, StoreError> {
        Ok(Some(Box::new(MemoryReads {
            events: self.events.clone(),
        })))
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let log = read(&self.events);
        Ok(StoreStats {
            kind: self.kind(),
            event_count: log.len() as u64,
            dead_letters: self.dead_letters.len() as u64,
            first_cursor: log.front().map(|e| e.cursor),
            last_cursor: log.back().map(|e| e.cursor),
            dead_letters_evicted: 0,
        })
    }

    fn apply_retention(&mut self, retention: &Retention) -> Result<u64, StoreError> {
        let mut log = write(&self.events);
        let before = log.len();
        if let Some(max) = retention.max_events {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            let excess = log.len().saturating_sub(max);
            log.drain(..excess);
        }
        if let Some(age) = retention.max_age {
            let oldest_kept =
                Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            while log.front().is_some_and(|e| e.at < oldest_kept) {
                log.pop_front();
            }
        }
        Ok((before - log.len()) as u64)
    }

    fn add_dead_letter(&mut self, dl: NewDeadLetter) -> Result<DeadLetter, StoreError> {
        self.last_dead_letter += 1;
        let stored = dl.stored(self.last_dead_letter, Utc::now());
        self.dead_letters.insert(stored.id, stored.clone());
        Ok(stored)
    }

    fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .dead_letters
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect())
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.dead_letters.get(&id).cloned())
    }

    fn take_dead_letter(&mut self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.dead_letters.remove(&id))
    }

    fn trim_dead_letters(&mut self, max: u64) -> Result<u64, StoreError> {
        let excess = (self.dead_letters.len() as u64).saturating_sub(max);
        if excess == 0 {
            return Ok(0);
        }
        let mut by_principal: std::collections::BTreeMap<&str, u64> = Default::default();
        for dl in self.dead_letters.values() {
            *by_principal.entry(&dl.principal).or_default() += 1;
        }
        let counts: Vec<(String, u64)> = by_principal
            .into_iter()
            .map(|(p, n)| (p.to_owned(), n))
            .collect();
        let mut quota: std::collections::HashMap<String, u64> =
            super::eviction::fair_eviction(&counts, excess)
                .into_iter()
                .collect();
        let before = self.dead_letters.len();
        // Oldest first: ids only increase.
        self.dead_letters
            .retain(|_, dl| match quota.get_mut(&dl.principal) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            });
        Ok((before - self.dead_letters.len()) as u64)
    }

    fn dead_letter_count(&self) -> Result<u64, StoreError> {
        Ok(self.dead_letters.len() as u64)
    }

    fn durable_open(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<DurableState, StoreError> {
        Ok(self
            .durables
            .entry((principal.to_owned(), name.to_owned()))
            .or_insert_with(|| DurableState {
                floor,
                acked: Default::default(),
            })
            .clone())
    }

    fn durable_ack(
        &mut self,
        principal: &str,
        name: &str,
        cursors: &[u64],
    ) -> Result<(), StoreError> {
        if let Some(d) = self
            .durables
            .get_mut(&(principal.to_owned(), name.to_owned()))
        {
            d.acked
                .extend(cursors.iter().copied().filter(|c| *c > d.floor));
        }
        Ok(())
    }

    fn durable_set_floor(
        &mut self,
        principal: &str,
        name: &str,
        floor: u64,
    ) -> Result<(), StoreError> {
        if let Some(d) = self
            .durables
            .get_mut(&(principal.to_owned(), name.to_owned()))
        {
            d.floor = d.floor.max(floor);
            d.acked = d.acked.split_off(&(d.floor + 1));
        }
        Ok(())
    }
}

/// Events a query looks at per hold of the log's lock: a query over the whole log
/// (an unanchored topic matching nothing) holds an append back for one chunk at most.
const SCAN_CHUNK: usize = 1024;

/// Reads the log beside the store actor (the read pool), a chunk at a time.
pub struct MemoryReads {
    events: Log,
}

impl EventReads for MemoryReads {
    fn query(&mut self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        let floor = q.after.unwrap_or(0);
        let mut found: Vec<(u64, Arc<str>)> = Vec::new();
        // Asc: the next chunk starts after `edge`; Desc: it ends below it.
        let mut edge = match q.order {
            Order::Asc => floor,
            Order::Desc => u64::MAX,
        };
        while found.len() < q.limit {
            let log = read(&self.events);
            // Cursors are increasing: binary-search the chunk's bounds.
            let (from, to) = match q.order {
                Order::Asc => (log.partition_point(|e| e.cursor <= edge), log.len()),
                Order::Desc => (
                    log.partition_point(|e| e.cursor <= floor),
                    log.partition_point(|e| e.cursor < edge),
                ),
            };
            let range = log.range(from..to.max(from));
            let chunk: Box<dyn Iterator<Item = &Stored>> = match q.order {
                Order::Asc => Box::new(range.take(SCAN_CHUNK)),
                Order::Desc => Box::new(range.rev().take(SCAN_CHUNK)),
            };
            let mut scanned = 0;
            for e in chunk {
                scanned += 1;
                edge = e.cursor;
                if e.matches(q) {
                    found.push((e.cursor, e.json.clone()));
                    if found.len() == q.limit {
                        break;
                    }
                }
            }
            if scanned < SCAN_CHUNK {
                break;
            }
        }
        // Decoded outside the lock.
        found
            .into_iter()
            .map(|(cursor, json)| decode_envelope(cursor, json))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::pattern::Pattern;
    use crate::store::contract::{cursors, ev};

    #[test]
    fn sparse_matches_are_found_across_chunks() {
        {
            let s = &mut MemoryStore::new();
            let events: Vec<_> = (1..=4_000u64)
                .map(|c| ev(c, if c % 1_201 == 0 { "rare.x" } else { "common.y" }, "low"))
                .collect();
            s.append(&events).unwrap();
            let rare = |after: Option<u64>, order: Order, limit: usize| EventQuery {
                topic: Some(Pattern::parse("rare.>").unwrap()),
                after,
                limit,
                order,
                ..Default::default()
            };
            let mut readers: Vec<Box<dyn EventReads>> = s.reader().unwrap().into_iter().collect();
            for (q, want) in [
                (rare(None, Order::Asc, 10), vec![1_201, 2_402, 3_603]),
                (rare(Some(1_201), Order::Asc, 1), vec![2_402]),
                (rare(None, Order::Desc, 2), vec![3_603, 2_402]),
                (rare(Some(2_402), Order::Desc, 10), vec![3_603]),
            ] {
                assert_eq!(cursors(s.query(&q).unwrap()), want, "{q:?}");
                for r in &mut readers {
                    assert_eq!(cursors(r.query(&q).unwrap()), want, "reader: {q:?}");
                }
            }
        }
    }

    #[test]
    fn the_log_has_room_for_the_retained_events_from_the_start() {
        assert!(read(&MemoryStore::with_capacity(Some(8000)).events).capacity() >= 9000);
        assert_eq!(
            std::mem::size_of::<Stored>(),
            72,
            "the slot size docs/architecture.md quotes"
        );
        assert_eq!(read(&MemoryStore::with_capacity(None).events).capacity(), 0);
        let huge = MemoryStore::with_capacity(Some(u64::MAX));
        assert!(read(&huge.events).capacity() < 2 * MAX_RESERVED_EVENTS as usize);
    }
}
