//! The in-memory backend: a log in cursor order, gone on restart.
//!
//! The log keeps each event's envelope (shared with the in-flight [`EncodedEvent`], not
//! copied) and the three fields queries filter on, not the decoded event, which would
//! nearly double what a retained event costs when the default retention is a million
//! events. Queries decode the envelopes they return, as the SQLite backend does.
//!
//! Owns: the in-process log, dead letters and durable state. Must not: decide
//! retention limits or when they apply (the store actor does), or assign cursors.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    decode_envelope, DeadLetter, DurableState, EventQuery, EventStore, NewDeadLetter, Order,
    Retention, StoreError, StoreStats, StoredId,
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

    fn decode(&self) -> Result<Arc<EncodedEvent>, StoreError> {
        decode_envelope(self.cursor, self.json.clone())
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    events: VecDeque<Stored>,
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
            events: VecDeque::with_capacity(reserve),
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
        let mut ids = self
            .events
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
        for e in events {
            let ev = &e.event;
            debug_assert!(ev.cursor > self.last_cursor, "cursors must increase");
            self.last_cursor = ev.cursor;
            self.events.push_back(Stored {
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
        let after = q.after.unwrap_or(0);
        // Cursors are increasing: binary-search the first event after `after`.
        let start = self.events.partition_point(|e| e.cursor <= after);
        let range = self.events.range(start..);
        match q.order {
            Order::Asc => range
                .filter(|e| e.matches(q))
                .take(q.limit)
                .map(Stored::decode)
                .collect(),
            Order::Desc => range
                .rev()
                .filter(|e| e.matches(q))
                .take(q.limit)
                .map(Stored::decode)
                .collect(),
        }
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats {
            kind: self.kind(),
            event_count: self.events.len() as u64,
            dead_letters: self.dead_letters.len() as u64,
            first_cursor: self.events.front().map(|e| e.cursor),
            last_cursor: self.events.back().map(|e| e.cursor),
            dead_letters_evicted: 0,
        })
    }

    fn apply_retention(&mut self, retention: &Retention) -> Result<u64, StoreError> {
        let before = self.events.len();
        if let Some(max) = retention.max_events {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            let excess = self.events.len().saturating_sub(max);
            self.events.drain(..excess);
        }
        if let Some(age) = retention.max_age {
            let oldest_kept =
                Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            while self.events.front().is_some_and(|e| e.at < oldest_kept) {
                self.events.pop_front();
            }
        }
        Ok((before - self.events.len()) as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_has_room_for_the_retained_events_from_the_start() {
        assert!(MemoryStore::with_capacity(Some(8000)).events.capacity() >= 9000);
        assert_eq!(
            std::mem::size_of::<Stored>(),
            72,
            "the slot size docs/architecture.md quotes"
        );
        assert_eq!(MemoryStore::with_capacity(None).events.capacity(), 0);
        let huge = MemoryStore::with_capacity(Some(u64::MAX));
        assert!(huge.events.capacity() < 2 * MAX_RESERVED_EVENTS as usize);
    }
}
