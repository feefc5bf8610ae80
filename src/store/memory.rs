//! The in-memory backend: a log in cursor order, gone on restart.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    DeadLetter, DurableState, EventQuery, EventStore, NewDeadLetter, Order, Retention, StoreError,
    StoreStats,
};
use crate::protocol::EncodedEvent;

#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Each event with the time it was stored (retention by age uses it, not the
    /// publisher's timestamp).
    events: VecDeque<(DateTime<Utc>, Arc<EncodedEvent>)>,
    last_cursor: u64,
    dead_letters: std::collections::BTreeMap<u64, DeadLetter>,
    durables: std::collections::HashMap<(String, String), DurableState>,
    last_dead_letter: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl EventStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        Ok(self.last_cursor)
    }

    fn append(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError> {
        let now = Utc::now();
        for e in events {
            debug_assert!(e.event.cursor > self.last_cursor, "cursors must increase");
            self.last_cursor = e.event.cursor;
            self.events.push_back((now, e.clone()));
        }
        Ok(())
    }

    fn query(&self, q: &EventQuery) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
        let after = q.after.unwrap_or(0);
        // Cursors are increasing: binary-search the first event after `after`.
        let start = self
            .events
            .partition_point(|(_, e)| e.event.cursor <= after);
        let range = self.events.range(start..).map(|(_, e)| e);
        let found = match q.order {
            Order::Asc => range
                .filter(|e| q.matches(e))
                .take(q.limit)
                .cloned()
                .collect(),
            Order::Desc => range
                .rev()
                .filter(|e| q.matches(e))
                .take(q.limit)
                .cloned()
                .collect(),
        };
        Ok(found)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats {
            kind: self.kind(),
            event_count: self.events.len() as u64,
            dead_letters: self.dead_letters.len() as u64,
            first_cursor: self.events.front().map(|(_, e)| e.event.cursor),
            last_cursor: self.events.back().map(|(_, e)| e.event.cursor),
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
            while self.events.front().is_some_and(|(at, _)| *at < oldest_kept) {
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
