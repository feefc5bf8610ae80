//! Everything waiting for one session ([`Outbox`]), and handing it over in batches.
//!
//! Owns: the order frames leave in across a session's subscriptions, and when to stop
//! handing over. Must not: know the session actor (frames go through its
//! [`FrameSink`](super::subscription::FrameSink)).

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
// Keys are handle addresses, not client input: the faster hash is safe.
use foldhash::{HashMap, HashMapExt};

use super::backlog::{BATCHES_PER_FLUSH, FRAMES_PER_BATCH};
use std::sync::atomic::Ordering::Relaxed;

use super::ack::AckTracker;
use super::queue::{DeadNote, QueueBounds, SubQueue, Waiting};
use super::subscription::{Handed, OutFrame, SessionSink, SubscriptionHandle};
use crate::metrics::Metrics;
use crate::protocol::Priority;

/// What a flush achieved.
pub enum Flush {
    /// Nothing left that may be sent now.
    Done,
    /// The session's mailbox is full (or this flush's share is used up): the worker
    /// retries shortly.
    Stalled,
    /// The session has [`MAX_UNWRITTEN_FRAMES`](super::backlog::MAX_UNWRITTEN_FRAMES)
    /// to write: it sends `Resume` when it has written half of them.
    Waiting,
    /// The session is gone.
    Closed,
}

/// Everything waiting for one session.
pub struct Outbox {
    sink: SessionSink,
    /// Keyed by handle address: ids can be reused after an unsubscribe.
    pub subs: HashMap<usize, SubQueue>,
}

/// The key of a subscription in an [`Outbox`].
pub fn key(h: &Arc<SubscriptionHandle>) -> usize {
    Arc::as_ptr(h) as usize
}

impl Outbox {
    pub fn new(sink: SessionSink) -> Self {
        Outbox {
            sink,
            subs: HashMap::new(),
        }
    }

    /// The queue of `sub`, created on first use.
    pub fn queue(&mut self, sub: &Arc<SubscriptionHandle>) -> &mut SubQueue {
        self.subs
            .entry(key(sub))
            .or_insert_with(|| SubQueue::new(sub.clone()))
    }

    /// Takes the next batch: drop notices, then replays (with their gaps), then live
    /// events highest priority first.
    pub(super) fn next_batch(
        &mut self,
        (now, wall): (Instant, DateTime<Utc>),
        dead: &mut Vec<DeadNote>,
    ) -> Vec<OutFrame> {
        let mut frames = Vec::new();
        self.subs.retain(|_, q| q.handle.is_active());
        for q in self.subs.values_mut() {
            if q.unreported_drops > 0 {
                frames.push(OutFrame::Dropped {
                    sub: q.handle.clone(),
                    count: std::mem::take(&mut q.unreported_drops),
                });
            }
        }
        for q in self.subs.values_mut() {
            q.take_replay(&mut frames, now);
        }
        for p in Priority::HIGHEST_FIRST {
            self.take_live(p, &mut frames, FRAMES_PER_BATCH, (now, wall), dead);
            if frames.len() >= FRAMES_PER_BATCH {
                break;
            }
        }
        frames
    }

    /// Live events of priority `p`, from every active subscription not replaying,
    /// until `frames` holds `limit`.
    fn take_live(
        &mut self,
        p: Priority,
        frames: &mut Vec<OutFrame>,
        limit: usize,
        clocks: (Instant, DateTime<Utc>),
        dead: &mut Vec<DeadNote>,
    ) {
        for q in self.subs.values_mut() {
            if q.handle.is_active() && !q.handle.is_replaying() {
                q.take_live(p, frames, limit, clocks, dead);
            }
        }
    }

    /// Takes up to `room` critical live events, for a session whose backlog is full.
    fn next_urgent(
        &mut self,
        room: usize,
        clocks: (Instant, DateTime<Utc>),
        dead: &mut Vec<DeadNote>,
    ) -> Vec<OutFrame> {
        let mut frames = Vec::new();
        self.take_live(Priority::Critical, &mut frames, room, clocks, dead);
        frames
    }

    /// Puts back a batch the session had no room for, keeping its order.
    pub(super) fn restore(&mut self, frames: Vec<OutFrame>) {
        for frame in frames.into_iter().rev() {
            let q = match &frame {
                OutFrame::Event { sub, .. }
                | OutFrame::Dropped { sub, .. }
                | OutFrame::Replayed { sub, .. }
                | OutFrame::ReplayComplete { sub, .. }
                | OutFrame::Gap { sub, .. } => self.subs.get_mut(&key(sub)),
            };
            let Some(q) = q else { continue };
            match frame {
                OutFrame::Event { event, attempt, .. } => {
                    if let Some(ack) = q.ack.as_mut() {
                        ack.unsend(&event.event.id);
                    }
                    q.requeue(event, attempt);
                }
                OutFrame::Dropped { count, .. } => q.unreported_drops += count,
                OutFrame::Replayed { event, attempt, .. } => {
                    if let Some(ack) = q.ack.as_mut() {
                        ack.unsend(&event.event.id);
                    }
                    q.replay.push_front(Waiting { event, attempt });
                    q.handle.replay_backlog.fetch_add(1, Relaxed);
                }
                OutFrame::Gap { from, to, .. } => q.lost.push_front((from, to)),
                OutFrame::ReplayComplete { last_cursor, .. } => {
                    q.replay_complete = Some(last_cursor);
                    q.handle.set_replaying(true);
                }
            }
        }
    }

    /// Sends what may be sent now, in batches, until done or the session is full.
    pub fn flush(&mut self, dead: &mut Vec<DeadNote>) -> Flush {
        // Read the clocks once per flush, not per event.
        let now = (Instant::now(), Utc::now());
        let mut result = Flush::Stalled;
        for _ in 0..BATCHES_PER_FLUSH {
            let frames = if self.sink.backlog.has_room() {
                self.next_batch(now, dead)
            } else {
                // The session says when it has written enough (`Resume`); critical
                // events need not wait for that.
                result = Flush::Waiting;
                let room = self.sink.backlog.urgent_room();
                let urgent = self.next_urgent(room, now, dead);
                if urgent.is_empty() {
                    break;
                }
                urgent
            };
            if frames.is_empty() {
                result = Flush::Done;
                break;
            }
            let n = frames.len();
            self.sink.backlog.handed(n);
            match self.sink.frames.offer(frames) {
                Handed::Taken => {}
                Handed::Full(frames) => {
                    self.sink.backlog.returned(n);
                    self.restore(frames);
                    result = Flush::Stalled;
                    break;
                }
                Handed::Closed => return Flush::Closed,
            }
        }
        for q in self.subs.values() {
            q.publish_gauges();
        }
        result
    }

    /// Runs the ack deadlines of every subscription; true when something changed.
    pub fn run_deadlines(&mut self, now: Instant, dead: &mut Vec<DeadNote>) -> bool {
        let mut changed = false;
        for q in self.subs.values_mut() {
            let Some(ack) = q.ack.as_mut() else { continue };
            if ack.is_idle() {
                continue;
            }
            let outcomes = ack.due(now);
            if !outcomes.is_empty() {
                changed = true;
                q.apply(outcomes, dead);
            }
        }
        changed
    }

    /// Ends the coalescing windows due at `now`; true when events were queued.
    pub fn end_windows(
        &mut self,
        now: Instant,
        max: QueueBounds,
        metrics: &Metrics,
        dead: &mut Vec<DeadNote>,
    ) -> bool {
        let mut changed = false;
        for q in self.subs.values_mut() {
            changed |= q.end_windows(now, max, metrics, dead);
        }
        changed
    }

    /// The earliest time any of its subscriptions needs the worker back (ack deadlines,
    /// coalescing windows); `None`: nothing happens here without new work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.subs.values().filter_map(SubQueue::next_deadline).min()
    }

    /// Cursors that coalescing replaced, per subscription, since the last call.
    pub fn take_replaced(&mut self) -> Vec<(Arc<SubscriptionHandle>, Vec<u64>)> {
        self.subs
            .values_mut()
            .filter(|q| !q.replaced.is_empty())
            .map(|q| (q.handle.clone(), q.take_replaced()))
            .collect()
    }

    /// True when nothing is waiting, replaying, in flight or held by a window.
    pub fn is_idle(&self) -> bool {
        self.subs.values().all(|q| {
            q.len == 0
                && q.replay.is_empty()
                && q.replay_complete.is_none()
                && q.ack.as_ref().is_none_or(AckTracker::is_idle)
                && q.coalesce.as_ref().is_none_or(|(_, c)| c.is_idle())
        })
    }
}
