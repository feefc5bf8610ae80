//! The waiting events of one subscription ([`SubQueue`]): per priority, bounded, with
//! its replay, ack state and coalescing windows.
//!
//! Owns: what a subscription delivers next and what it drops or dead-letters. Must
//! not: send anything (the outbox hands frames over).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::ack::{AckTracker, DeadReason, Outcome};
use super::backlog::FRAMES_PER_BATCH;
use super::coalesce::{Coalescer, Offer};
use super::subscription::{OutFrame, SubscriptionHandle};
use crate::metrics::Metrics;
use crate::protocol::{EncodedEvent, Priority};
use crate::routing::coalesce::CoalesceSpec;

/// An event a subscription lost for good: stored as a dead letter by the router.
#[derive(Debug)]
pub struct DeadNote {
    pub sub: Arc<SubscriptionHandle>,
    pub event: Arc<EncodedEvent>,
    pub reason: DeadReason,
    pub attempts: u32,
}

/// How much may wait for one subscription (`[limits]`): events and their bytes (one
/// event can be 1 MiB, so a count alone bounds nothing), and open coalescing windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    pub events: usize,
    /// Encoded size of the waiting events, summed.
    pub bytes: usize,
    pub windows: usize,
}

impl From<&crate::config::LimitsConfig> for QueueBounds {
    fn from(l: &crate::config::LimitsConfig) -> Self {
        QueueBounds {
            events: l.max_waiting_per_subscriber,
            bytes: l.max_waiting_bytes_per_subscriber,
            windows: l.max_coalesce_windows,
        }
    }
}

/// A waiting event and the attempt number its next delivery carries.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) event: Arc<EncodedEvent>,
    pub(super) attempt: u32,
}

/// The waiting events of one subscription, per priority, and its ack state.
pub struct SubQueue {
    pub handle: Arc<SubscriptionHandle>,
    pub(super) waiting: [VecDeque<Waiting>; 4],
    pub(super) len: usize,
    /// Encoded bytes of the events in `waiting`.
    pub(super) bytes: usize,
    /// Dropped since the last `dropped` notice was sent.
    pub(super) unreported_drops: u64,
    /// Stored events still to deliver, in cursor order (never dropped; the replay task
    /// reads the next page only when this has drained).
    pub(super) replay: VecDeque<Waiting>,
    /// Set when the replay task is done: the `last_cursor` of `replay_complete`.
    pub(super) replay_complete: Option<u64>,
    /// Ranges of cursors retention removed before this (durable) subscription resolved
    /// them, to announce (`gap`) in cursor order among the replayed events.
    pub(super) lost: VecDeque<(u64, u64)>,
    /// Present for `ack: true` subscriptions.
    pub ack: Option<AckTracker>,
    /// Present for subscriptions with `coalesce`.
    pub(super) coalesce: Option<(CoalesceSpec, Coalescer)>,
    /// Cursors replaced by coalescing, not yet reported (durable state records them
    /// as resolved).
    pub(super) replaced: Vec<u64>,
}

impl SubQueue {
    pub fn new(handle: Arc<SubscriptionHandle>) -> Self {
        let ack = handle.spec.ack.map(AckTracker::new);
        let coalesce = handle.spec.coalesce.clone().map(|spec| {
            let windows = Coalescer::new(spec.window());
            (spec, windows)
        });
        SubQueue {
            coalesce,
            replaced: Vec::new(),
            handle,
            waiting: Default::default(),
            len: 0,
            bytes: 0,
            unreported_drops: 0,
            replay: VecDeque::new(),
            replay_complete: None,
            lost: VecDeque::new(),
            ack,
        }
    }

    /// Queues a live event, unless a coalescing window holds it back (replacing the
    /// event it held, which is counted and, with acks, reported as resolved).
    pub fn push(
        &mut self,
        event: Arc<EncodedEvent>,
        max: QueueBounds,
        metrics: &Metrics,
        dead: &mut Vec<DeadNote>,
    ) {
        let offer = match &mut self.coalesce {
            Some((spec, windows)) => match spec.key_of(&event.event) {
                Some(key) => windows.offer(key, event, Instant::now(), max.windows),
                None => Offer::Deliver {
                    event,
                    ended_early: None,
                },
            },
            None => Offer::Deliver {
                event,
                ended_early: None,
            },
        };
        match offer {
            Offer::Deliver { event, ended_early } => {
                if let Some(early) = ended_early {
                    self.enqueue(early, max, metrics, dead);
                }
                self.enqueue(event, max, metrics, dead)
            }
            Offer::Held { replaced: None } => {}
            Offer::Held {
                replaced: Some(old),
            } => {
                self.handle.coalesced.fetch_add(1, Relaxed);
                metrics.coalesced.fetch_add(1, Relaxed);
                if self.ack.is_some() {
                    self.replaced.push(old.event.cursor);
                }
            }
        }
    }

    /// Queues the events whose coalescing windows ended by `now`. True if any.
    pub fn end_windows(
        &mut self,
        now: Instant,
        max: QueueBounds,
        metrics: &Metrics,
        dead: &mut Vec<DeadNote>,
    ) -> bool {
        let Some((_, windows)) = &mut self.coalesce else {
            return false;
        };
        let due = windows.due(now);
        let any = !due.is_empty();
        for event in due {
            self.enqueue(event, max, metrics, dead);
        }
        any
    }

    /// The earliest time this queue needs the worker back: an ack deadline or the end
    /// of a coalescing window.
    pub fn next_deadline(&self) -> Option<Instant> {
        let ack = self.ack.as_ref().and_then(AckTracker::next_deadline);
        let window = self.coalesce.as_ref().and_then(|(_, c)| c.next_end());
        ack.into_iter().chain(window).min()
    }

    /// Cursors replaced by coalescing since the last call.
    pub fn take_replaced(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.replaced)
    }

    /// Queues an event for delivery. Over either bound the lowest-priority, oldest
    /// waiting events go (possibly the new one): dropped and announced without acks,
    /// dead-lettered with.
    fn enqueue(
        &mut self,
        event: Arc<EncodedEvent>,
        max: QueueBounds,
        metrics: &Metrics,
        dead: &mut Vec<DeadNote>,
    ) {
        self.bytes += event.json.len();
        self.waiting[event.event.priority.index()].push_back(Waiting { event, attempt: 1 });
        self.len += 1;
        while self.len > max.events || self.bytes > max.bytes {
            let Some(lost) = self.waiting.iter_mut().rev().find_map(VecDeque::pop_front) else {
                return;
            };
            self.len -= 1;
            self.bytes -= lost.event.json.len();
            self.lose(lost, metrics, dead);
        }
    }

    fn lose(&mut self, lost: Waiting, metrics: &Metrics, dead: &mut Vec<DeadNote>) {
        if self.ack.is_some() {
            dead.push(DeadNote {
                sub: self.handle.clone(),
                event: lost.event,
                reason: DeadReason::Overflow,
                attempts: lost.attempt - 1,
            });
        } else {
            self.unreported_drops += 1;
            self.handle.dropped.fetch_add(1, Relaxed);
            metrics.count_dropped(&lost.event);
        }
    }

    /// Queues a redelivery ahead of the waiting events of its priority.
    pub fn requeue(&mut self, event: Arc<EncodedEvent>, attempt: u32) {
        self.bytes += event.json.len();
        self.waiting[event.event.priority.index()].push_front(Waiting { event, attempt });
        self.len += 1;
    }

    /// Applies what the ack tracker let go of.
    pub fn apply(&mut self, outcomes: Vec<Outcome>, dead: &mut Vec<DeadNote>) {
        for outcome in outcomes {
            match outcome {
                // While replaying, a redelivery goes first, ahead of the rest of the replay.
                Outcome::Redeliver { event, attempt } if self.handle.is_replaying() => {
                    self.handle.replay_backlog.fetch_add(1, Relaxed);
                    self.replay.push_front(Waiting { event, attempt });
                }
                Outcome::Redeliver { event, attempt } => self.requeue(event, attempt),
                Outcome::DeadLetter {
                    event,
                    reason,
                    attempts,
                } => dead.push(DeadNote {
                    sub: self.handle.clone(),
                    event,
                    reason,
                    attempts,
                }),
            }
        }
    }

    /// Announces cursors retention removed unresolved, after the replayed events below them.
    pub fn add_gap(&mut self, from: u64, to: u64) {
        self.lost.push_back((from, to));
    }

    /// Appends stored events to replay.
    pub fn add_replay(&mut self, events: Vec<Arc<EncodedEvent>>, complete_at: Option<u64>) {
        self.handle
            .replay_backlog
            .fetch_add(events.len() as u64, Relaxed);
        self.replay.extend(
            events
                .into_iter()
                .map(|event| Waiting { event, attempt: 1 }),
        );
        if complete_at.is_some() {
            self.replay_complete = complete_at;
        }
    }

    /// Moves replayed events, then the completion notice, into `frames`.
    /// With acks, replayed events are deliveries like any other: bounded by
    /// `max_in_flight` and tracked until acknowledged.
    pub(super) fn take_replay(&mut self, frames: &mut Vec<OutFrame>, now: Instant) {
        while frames.len() < FRAMES_PER_BATCH {
            // A gap goes out where it lies: after the replayed events below it.
            if let Some(&(from, to)) = self.lost.front() {
                if self
                    .replay
                    .front()
                    .is_none_or(|w| w.event.event.cursor >= from)
                {
                    self.lost.pop_front();
                    frames.push(OutFrame::Gap {
                        sub: self.handle.clone(),
                        from,
                        to,
                    });
                    continue;
                }
            }
            if !self.ack.as_ref().is_none_or(AckTracker::has_room) {
                break;
            }
            let Some(w) = self.replay.pop_front() else {
                break;
            };
            self.handle.replay_backlog.fetch_sub(1, Relaxed);
            if let Some(ack) = self.ack.as_mut() {
                ack.sent(w.event.clone(), w.attempt, now);
            }
            frames.push(OutFrame::Replayed {
                sub: self.handle.clone(),
                event: w.event,
                attempt: w.attempt,
            });
        }
        if self.replay.is_empty() && self.lost.is_empty() && frames.len() < FRAMES_PER_BATCH {
            if let Some(last_cursor) = self.replay_complete.take() {
                self.handle.set_replaying(false);
                frames.push(OutFrame::ReplayComplete {
                    sub: self.handle.clone(),
                    last_cursor,
                });
            }
        }
    }

    /// Moves live events of `priority` into `frames`, as far as the batch and (with
    /// acks) `max_in_flight` allow. Expired events are skipped, or dead-lettered with acks.
    pub(super) fn take_live(
        &mut self,
        priority: Priority,
        frames: &mut Vec<OutFrame>,
        limit: usize,
        (now, wall): (Instant, DateTime<Utc>),
        dead: &mut Vec<DeadNote>,
    ) {
        while frames.len() < limit && self.ack.as_ref().is_none_or(AckTracker::has_room) {
            let Some(w) = self.waiting[priority.index()].pop_front() else {
                break;
            };
            self.len -= 1;
            self.bytes -= w.event.json.len();
            if w.event.event.is_expired(wall) {
                if self.ack.is_some() {
                    dead.push(DeadNote {
                        sub: self.handle.clone(),
                        event: w.event,
                        reason: DeadReason::Expired,
                        attempts: w.attempt - 1,
                    });
                }
                continue;
            }
            if let Some(ack) = self.ack.as_mut() {
                ack.sent(w.event.clone(), w.attempt, now);
            }
            frames.push(OutFrame::Event {
                sub: self.handle.clone(),
                event: w.event,
                attempt: w.attempt,
            });
        }
    }

    pub(super) fn publish_gauges(&self) {
        let held = self.coalesce.as_ref().map_or(0, |(_, c)| c.held());
        self.handle.waiting.store((self.len + held) as u64, Relaxed);
        if let Some(ack) = &self.ack {
            self.handle.in_flight.store(ack.in_flight() as u64, Relaxed);
        }
    }
}
