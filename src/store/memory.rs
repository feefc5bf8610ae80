//! A bounded in-memory event log, oldest evicted first.
//!
//! Owns: retained events in cursor order. Must not: assign cursors (the router does).

use std::collections::VecDeque;
use std::sync::Arc;

use super::{EventQuery, Order};
use crate::protocol::EncodedEvent;

#[derive(Debug)]
pub struct MemoryLog {
    events: VecDeque<Arc<EncodedEvent>>,
    capacity: usize,
}

impl MemoryLog {
    pub fn new(capacity: usize) -> Self {
        MemoryLog {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
        }
    }

    /// Appends an event; cursors must be strictly increasing.
    pub fn append(&mut self, event: Arc<EncodedEvent>) {
        debug_assert!(self.last_cursor().is_none_or(|c| c < event.event.cursor));
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn first_cursor(&self) -> Option<u64> {
        self.events.front().map(|e| e.event.cursor)
    }

    pub fn last_cursor(&self) -> Option<u64> {
        self.events.back().map(|e| e.event.cursor)
    }

    /// Events matching `q`, in the order it asks for, at most `q.limit`.
    pub fn query(&self, q: &EventQuery) -> Vec<Arc<EncodedEvent>> {
        let after = q.after.unwrap_or(0);
        // Cursors are increasing: binary-search the first event after `after`.
        let start = self.events.partition_point(|e| e.event.cursor <= after);
        let matches = |e: &&Arc<EncodedEvent>| {
            let ev = &e.event;
            q.topic.as_ref().is_none_or(|p| p.matches(&ev.topic))
                && q.event_type.as_ref().is_none_or(|t| *t == ev.event_type)
                && q.priority.is_none_or(|p| p == ev.priority)
        };
        let range = self.events.range(start..);
        match q.order {
            Order::Asc => range.filter(matches).take(q.limit).cloned().collect(),
            Order::Desc => range.rev().filter(matches).take(q.limit).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use crate::routing::pattern::Pattern;
    use serde_json::json;

    fn ev(cursor: u64, topic: &str, priority: &str) -> Arc<EncodedEvent> {
        let mut e = Event::from_json(json!({"topic": topic, "priority": priority}), "s").unwrap();
        e.cursor = cursor;
        EncodedEvent::new(e)
    }

    fn cursors(v: Vec<Arc<EncodedEvent>>) -> Vec<u64> {
        v.iter().map(|e| e.event.cursor).collect()
    }

    #[test]
    fn evicts_oldest_and_queries() {
        let mut log = MemoryLog::new(4);
        for (c, t, p) in [
            (1, "task.a", "low"),
            (2, "agent.b", "high"),
            (3, "task.c", "high"),
            (4, "task.d", "low"),
            (5, "logs.e", "low"),
        ] {
            log.append(ev(c, t, p));
        }
        assert_eq!(log.len(), 4);
        assert_eq!(log.first_cursor(), Some(2));
        assert_eq!(log.last_cursor(), Some(5));
        let all = EventQuery {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(cursors(log.query(&all)), [2, 3, 4, 5]);
        let q = EventQuery {
            topic: Some(Pattern::parse("task.*").unwrap()),
            ..all.clone()
        };
        assert_eq!(cursors(log.query(&q)), [3, 4]);
        let q = EventQuery {
            after: Some(3),
            ..all.clone()
        };
        assert_eq!(cursors(log.query(&q)), [4, 5]);
        let q = EventQuery {
            order: Order::Desc,
            limit: 2,
            ..all.clone()
        };
        assert_eq!(cursors(log.query(&q)), [5, 4]);
        let q = EventQuery {
            priority: Some(crate::routing::Priority::High),
            ..all.clone()
        };
        assert_eq!(cursors(log.query(&q)), [2, 3]);
        let q = EventQuery {
            event_type: Some("logs_e".into()),
            ..all
        };
        assert_eq!(cursors(log.query(&q)), [5]);
    }
}
