//! At-least-once bookkeeping for one subscription: what is in flight, when it times
//! out, what is scheduled for redelivery, and when an event is dead-lettered.
//!
//! A pure state machine: every time-dependent call takes `now`, so tests control time.
//! Deadlines live in a `PriorityQueue` keyed by event id: an ack removes the entry, a
//! nack with a delay changes its priority, expiry pops the earliest.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use priority_queue::PriorityQueue;

use crate::protocol::EncodedEvent;
use crate::routing::subscription::AckOptions;

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Delivered `max_attempts` times without an ack.
    MaxAttempts,
    /// `nack` with `requeue: false`.
    Rejected,
    /// `ttl_ms` passed before an ack.
    Expired,
    /// The subscriber fell so far behind that its waiting events overflowed.
    Overflow,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxAttempts => "max_attempts",
            DeadReason::Rejected => "rejected",
            DeadReason::Expired => "expired",
            DeadReason::Overflow => "overflow",
        }
    }
}

/// What the worker must do with an event the tracker let go of.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Queue it again; its next delivery carries `attempt`.
    Redeliver {
        event: Arc<EncodedEvent>,
        attempt: u32,
    },
    DeadLetter {
        event: Arc<EncodedEvent>,
        reason: DeadReason,
        attempts: u32,
    },
}

#[derive(Debug)]
struct Pending {
    event: Arc<EncodedEvent>,
    /// In flight: the attempt delivered. Scheduled: the attempt of the next delivery.
    attempt: u32,
    scheduled: bool,
}

#[derive(Debug)]
pub struct AckTracker {
    opts: AckOptions,
    pending: HashMap<String, Pending>,
    deadlines: PriorityQueue<String, Reverse<Instant>>,
    scheduled: usize,
}

impl AckTracker {
    pub fn new(opts: AckOptions) -> Self {
        AckTracker {
            opts,
            pending: HashMap::new(),
            deadlines: PriorityQueue::new(),
            scheduled: 0,
        }
    }

    /// Deliveries awaiting an ack.
    pub fn in_flight(&self) -> usize {
        self.pending.len() - self.scheduled
    }

    /// May another delivery go out? A redelivery scheduled by a delayed `nack` is still
    /// unacknowledged, so it counts against `max_in_flight` too.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.opts.max_in_flight
    }

    /// Is anything waiting for a deadline?
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// The earliest deadline: a delivery timing out or a scheduled redelivery due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|(_, Reverse(at))| *at)
    }

    /// Records a delivery of `event` as attempt `attempt`.
    pub fn sent(&mut self, event: Arc<EncodedEvent>, attempt: u32, now: Instant) {
        let id = event.event.id.clone();
        self.deadlines
            .push(id.clone(), Reverse(now + self.opts.timeout));
        if let Some(old) = self.pending.insert(
            id,
            Pending {
                event,
                attempt,
                scheduled: false,
            },
        ) {
            if old.scheduled {
                self.scheduled -= 1;
            }
        }
    }

    /// Undoes [`sent`](Self::sent) for a delivery that never left (session mailbox full).
    pub fn unsend(&mut self, id: &str) {
        if self.pending.get(id).is_some_and(|p| !p.scheduled) {
            self.pending.remove(id);
            self.deadlines.remove(id);
        }
    }

    /// Acknowledges an in-flight delivery; answers its cursor, or `None` when `id` is
    /// not in flight.
    pub fn ack(&mut self, id: &str) -> Option<u64> {
        match self.pending.get(id) {
            Some(p) if !p.scheduled => {
                let cursor = p.event.event.cursor;
                self.pending.remove(id);
                self.deadlines.remove(id);
                Some(cursor)
            }
            _ => None,
        }
    }

    /// Negative acknowledgement. `None` when `id` is not in flight; otherwise what to do
    /// now: `Some(outcome)`, or nothing yet when the redelivery is scheduled after `delay`.
    pub fn nack(
        &mut self,
        id: &str,
        requeue: bool,
        delay: Duration,
        now: Instant,
    ) -> Option<Option<Outcome>> {
        let attempt = match self.pending.get(id) {
            Some(p) if !p.scheduled => p.attempt,
            _ => return None,
        };
        if !requeue || attempt >= self.opts.max_attempts || delay.is_zero() {
            let p = self.pending.remove(id)?;
            self.deadlines.remove(id);
            return Some(Some(self.next_attempt(
                p.event,
                attempt,
                if requeue {
                    None
                } else {
                    Some(DeadReason::Rejected)
                },
            )));
        }
        if let Some(p) = self.pending.get_mut(id) {
            p.scheduled = true;
            p.attempt = attempt + 1;
        }
        self.scheduled += 1;
        self.deadlines.change_priority(id, Reverse(now + delay));
        Some(None)
    }

    fn next_attempt(
        &self,
        event: Arc<EncodedEvent>,
        attempt: u32,
        forced: Option<DeadReason>,
    ) -> Outcome {
        match forced {
            Some(reason) => Outcome::DeadLetter {
                event,
                reason,
                attempts: attempt,
            },
            None if attempt >= self.opts.max_attempts => Outcome::DeadLetter {
                event,
                reason: DeadReason::MaxAttempts,
                attempts: attempt,
            },
            None => Outcome::Redeliver {
                event,
                attempt: attempt + 1,
            },
        }
    }

    /// Everything whose deadline has passed at `now`: timed-out deliveries (redelivered
    /// or dead-lettered) and scheduled redeliveries that are due.
    pub fn due(&mut self, now: Instant) -> Vec<Outcome> {
        let mut out = Vec::new();
        while self
            .deadlines
            .peek()
            .is_some_and(|(_, Reverse(at))| *at <= now)
        {
            let Some((id, _)) = self.deadlines.pop() else {
                break;
            };
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            if p.scheduled {
                self.scheduled -= 1;
                out.push(Outcome::Redeliver {
                    event: p.event,
                    attempt: p.attempt,
                });
            } else {
                out.push(self.next_attempt(p.event, p.attempt, None));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use serde_json::json;

    fn ev(id: &str) -> Arc<EncodedEvent> {
        EncodedEvent::new(Event::from_json(json!({"id": id, "type": "a_b"}), "s").unwrap())
    }

    fn opts(max_attempts: u32, max_in_flight: usize) -> AckOptions {
        AckOptions {
            timeout: Duration::from_secs(10),
            max_attempts,
            max_in_flight,
        }
    }

    fn describe(o: &Outcome) -> (String, &'static str, u32) {
        match o {
            Outcome::Redeliver { event, attempt } => {
                (event.event.id.clone(), "redeliver", *attempt)
            }
            Outcome::DeadLetter {
                event,
                reason,
                attempts,
            } => (event.event.id.clone(), reason.as_str(), *attempts),
        }
    }

    #[test]
    fn ack_frees_room_and_unknown_ids_are_refused() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(opts(5, 2));
        t.sent(ev("a"), 1, t0);
        t.sent(ev("b"), 1, t0);
        assert!(!t.has_room());
        assert!(t.ack("a").is_some());
        assert!(t.ack("a").is_none(), "twice");
        assert!(t.ack("zzz").is_none());
        assert!(t.has_room());
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn timeouts_redeliver_with_increasing_attempt_then_dead_letter() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(opts(3, 10));
        let step = Duration::from_secs(10);
        assert_eq!(t.next_deadline(), None, "nothing in flight: no deadline");
        t.sent(ev("a"), 1, t0);
        t.sent(ev("b"), 1, t0 + Duration::from_secs(1));
        assert_eq!(t.next_deadline(), Some(t0 + step), "the earliest");
        assert!(t.ack("b").is_some());
        assert!(
            t.due(t0 + step - Duration::from_millis(1)).is_empty(),
            "not before the timeout"
        );
        let table = [
            (1, "redeliver", 2),
            (2, "redeliver", 3),
            (3, "max_attempts", 3),
        ];
        let mut now = t0;
        for (attempt, what, n) in table {
            now += step;
            let out = t.due(now);
            assert_eq!(out.len(), 1);
            assert_eq!(
                describe(&out[0]),
                ("a".into(), what, n),
                "after attempt {attempt}"
            );
            if let Outcome::Redeliver { event, attempt } = &out[0] {
                t.sent(event.clone(), *attempt, now);
            }
        }
        assert!(t.is_idle());
    }

    #[test]
    fn nack_table() {
        let t0 = Instant::now();
        let d = Duration::from_millis(500);
        // (requeue, delay, attempt delivered, max_attempts) → immediate outcome
        type Row = (bool, Duration, u32, u32, Option<(&'static str, u32)>);
        let table: Vec<Row> = vec![
            (true, Duration::ZERO, 1, 5, Some(("redeliver", 2))),
            (true, Duration::ZERO, 5, 5, Some(("max_attempts", 5))),
            (false, Duration::ZERO, 1, 5, Some(("rejected", 1))),
            (false, d, 2, 5, Some(("rejected", 2))),
            (true, d, 1, 5, None),
            (true, d, 5, 5, Some(("max_attempts", 5))),
        ];
        for (requeue, delay, attempt, max, want) in table {
            let mut t = AckTracker::new(opts(max, 10));
            t.sent(ev("a"), attempt, t0);
            let got = t.nack("a", requeue, delay, t0).expect("in flight");
            let got = got.as_ref().map(describe).map(|(_, w, n)| (w, n));
            assert_eq!(
                got, want,
                "requeue {requeue} delay {delay:?} attempt {attempt}/{max}"
            );
        }
        let mut t = AckTracker::new(opts(5, 10));
        assert!(t.nack("nope", true, d, t0).is_none());
    }

    #[test]
    fn delayed_nack_is_redelivered_when_due_and_still_counts_as_unacknowledged() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(opts(5, 1));
        t.sent(ev("a"), 1, t0);
        assert!(!t.has_room());
        assert!(t
            .nack("a", true, Duration::from_secs(1), t0)
            .unwrap()
            .is_none());
        assert_eq!(t.in_flight(), 0, "not in flight while scheduled");
        assert!(
            !t.has_room(),
            "but unacknowledged: max_in_flight still holds"
        );
        assert!(t.ack("a").is_none(), "a scheduled retry cannot be acked");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(t.due(t0 + Duration::from_millis(999)).is_empty());
        let out = t.due(t0 + Duration::from_secs(1));
        assert_eq!(describe(&out[0]), ("a".into(), "redeliver", 2));
        assert!(t.is_idle());
    }

    #[test]
    fn unsend_forgets_a_delivery_that_never_left() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(opts(5, 1));
        t.sent(ev("a"), 1, t0);
        t.unsend("a");
        assert!(t.has_room());
        assert!(t.due(t0 + Duration::from_secs(60)).is_empty());
    }
}
