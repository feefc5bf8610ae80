//! Delivery state held by a delivery worker, as plain data structures: the waiting
//! events of each subscription ([`SubQueue`]), everything waiting for one session
//! ([`Outbox`]), and at-least-once bookkeeping ([`ack::AckTracker`]).
//!
//! Owns: which frame goes next, what is dropped or dead-lettered, and in what order.
//! Must not: send messages (the worker actor does) or match events (the router does).

pub mod ack;
pub mod coalesce;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use chrono::{DateTime, Utc};

use self::ack::{AckTracker, DeadReason, Outcome};
use self::coalesce::{Coalescer, Offer};
use crate::actors::delivery::{OutFrame, WriteFrames};
use crate::actors::{SessionSink, SubscriptionHandle};
use crate::metrics::Metrics;
use crate::protocol::EncodedEvent;
use crate::protocol::Priority;
use crate::routing::coalesce::CoalesceSpec;

/// Frames per `WriteFrames` message.
pub const FRAMES_PER_BATCH: usize = 256;
/// Batches sent to one session per flush before giving other sessions a turn.
pub const BATCHES_PER_FLUSH: usize = 8;
/// Frames a session may have been handed and not written yet. Past this the rest waits
/// here, where overflow drops the lowest priority first (PROTOCOL.md section 4) and
/// the session's memory stays bounded.
pub const MAX_UNWRITTEN_FRAMES: usize = 2 * FRAMES_PER_BATCH;
/// Critical events a session may be handed past [`MAX_UNWRITTEN_FRAMES`]. Without
/// them a critical event waits here until the session has written half its backlog,
/// then for its turn in the session's mailbox; with them it joins the session's queue
/// at once and leaves ahead of the lower-priority events there.
pub const URGENT_FRAMES: usize = FRAMES_PER_BATCH / 4;

/// Frames handed to one session and not written yet, shared by the session and the
/// delivery worker that serves it. The worker hands over no more past
/// [`MAX_UNWRITTEN_FRAMES`] and says it is waiting; the session, once it has written
/// down to half of that, tells the worker (`Resume`), so a fast subscriber never waits
/// for the worker's tick.
#[derive(Debug, Default)]
pub struct Backlog {
    unwritten: AtomicUsize,
    worker_waits: AtomicBool,
}

impl Backlog {
    /// Worker: may more frames be handed over now? When not, the worker is marked as
    /// waiting first and the count checked again, so a session that wrote everything
    /// in between cannot leave it waiting for nothing.
    pub fn has_room(&self) -> bool {
        if self.unwritten.load(Acquire) < MAX_UNWRITTEN_FRAMES {
            return true;
        }
        self.worker_waits.store(true, Release);
        self.unwritten.load(Acquire) < MAX_UNWRITTEN_FRAMES
    }

    /// Worker, once [`has_room`](Self::has_room) said no: how many critical events may
    /// still be handed over ([`URGENT_FRAMES`] past the limit, less those not written).
    pub fn urgent_room(&self) -> usize {
        (MAX_UNWRITTEN_FRAMES + URGENT_FRAMES).saturating_sub(self.unwritten.load(Acquire))
    }

    /// Worker: `n` frames are being handed over (counted before sending, as the
    /// session may write them before `try_send` returns).
    pub fn handed(&self, n: usize) {
        self.unwritten.fetch_add(n, AcqRel);
    }

    /// Worker: `n` frames handed over were not taken after all (the mailbox was full).
    pub fn returned(&self, n: usize) {
        self.unwritten.fetch_sub(n, AcqRel);
    }

    /// Session: `n` frames were written. True when the worker waits for room and now
    /// has it: the session should tell it.
    pub fn written(&self, n: usize) -> bool {
        let left = self.unwritten.fetch_sub(n, AcqRel).saturating_sub(n);
        left <= MAX_UNWRITTEN_FRAMES / 2 && self.worker_waits.swap(false, AcqRel)
    }

    /// Handed over and not written yet.
    pub fn unwritten(&self) -> usize {
        self.unwritten.load(Acquire)
    }
}

/// An event a subscription lost for good: stored as a dead letter by the router.
#[derive(Debug)]
pub struct DeadNote {
    pub sub: Arc<SubscriptionHandle>,
    pub event: Arc<EncodedEvent>,
    pub reason: DeadReason,
    pub attempts: u32,
}

/// A waiting event and the attempt number its next delivery carries.
#[derive(Debug)]
struct Waiting {
    event: Arc<EncodedEvent>,
    attempt: u32,
}

/// The waiting events of one subscription, per priority, and its ack state.
pub struct SubQueue {
    pub handle: Arc<SubscriptionHandle>,
    waiting: [VecDeque<Waiting>; 4],
    len: usize,
    /// Dropped since the last `dropped` notice was sent.
    unreported_drops: u64,
    /// Stored events still to deliver, in cursor order (never dropped; the replay task
    /// reads the next page only when this has drained).
    replay: VecDeque<Waiting>,
    /// Set when the replay task is done: the `last_cursor` of `replay_complete`.
    replay_complete: Option<u64>,
    /// Present for `ack: true` subscriptions.
    pub ack: Option<AckTracker>,
    /// Present for subscriptions with `coalesce`.
    coalesce: Option<(CoalesceSpec, Coalescer)>,
    /// Cursors replaced by coalescing, not yet reported (durable state records them
    /// as resolved).
    replaced: Vec<u64>,
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
            unreported_drops: 0,
            replay: VecDeque::new(),
            replay_complete: None,
            ack,
        }
    }

    /// Queues a live event, unless a coalescing window holds it back (replacing the
    /// event it held, which is counted and, with acks, reported as resolved).
    pub fn push(
        &mut self,
        event: Arc<EncodedEvent>,
        max: usize,
        metrics: &Metrics,
        dead: &mut Vec<DeadNote>,
    ) {
        let offer = match &mut self.coalesce {
            Some((spec, windows)) => match spec.key_of(&event.event) {
                Some(key) => windows.offer(key, event, Instant::now()),
                None => Offer::Deliver(event),
            },
            None => Offer::Deliver(event),
        };
        match offer {
            Offer::Deliver(event) => self.enqueue(event, max, metrics, dead),
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
        max: usize,
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

    /// Cursors replaced by coalescing since the last call.
    pub fn take_replaced(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.replaced)
    }

    /// Queues an event for delivery. On overflow the lowest-priority, oldest waiting
    /// event goes (possibly the new one): dropped and announced without acks,
    /// dead-lettered with.
    fn enqueue(
        &mut self,
        event: Arc<EncodedEvent>,
        max: usize,
        metrics: &Metrics,
        dead: &mut Vec<DeadNote>,
    ) {
        self.waiting[event.event.priority.index()].push_back(Waiting { event, attempt: 1 });
        self.len += 1;
        if self.len <= max {
            return;
        }
        let Some(lost) = self.waiting.iter_mut().rev().find_map(VecDeque::pop_front) else {
            return;
        };
        self.len -= 1;
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
    fn take_replay(&mut self, frames: &mut Vec<OutFrame>, now: Instant) {
        while frames.len() < FRAMES_PER_BATCH && self.ack.as_ref().is_none_or(AckTracker::has_room)
        {
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
        if self.replay.is_empty() && frames.len() < FRAMES_PER_BATCH {
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
    fn take_live(
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

    fn publish_gauges(&self) {
        let held = self.coalesce.as_ref().map_or(0, |(_, c)| c.held());
        self.handle.waiting.store((self.len + held) as u64, Relaxed);
        if let Some(ack) = &self.ack {
            self.handle.in_flight.store(ack.in_flight() as u64, Relaxed);
        }
    }
}

/// What a flush achieved.
pub enum Flush {
    /// Nothing left that may be sent now.
    Done,
    /// The session's mailbox is full (or this flush's share is used up): retried on
    /// the worker's tick.
    Stalled,
    /// The session has [`MAX_UNWRITTEN_FRAMES`] to write: it sends `Resume` when it has
    /// written half of them.
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

    /// Takes the next batch: drop notices, then replays, then live events highest
    /// priority first.
    fn next_batch(
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
    fn restore(&mut self, frames: Vec<OutFrame>) {
        for frame in frames.into_iter().rev() {
            let q = match &frame {
                OutFrame::Event { sub, .. }
                | OutFrame::Dropped { sub, .. }
                | OutFrame::Replayed { sub, .. }
                | OutFrame::ReplayComplete { sub, .. } => self.subs.get_mut(&key(sub)),
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
            match self.sink.frames.try_send(WriteFrames { frames }) {
                Ok(()) => {}
                Err(SendError::Full(msg)) => {
                    self.sink.backlog.returned(n);
                    self.restore(msg.frames);
                    result = Flush::Stalled;
                    break;
                }
                Err(SendError::Closed(_)) => return Flush::Closed,
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
        max: usize,
        metrics: &Metrics,
        dead: &mut Vec<DeadNote>,
    ) -> bool {
        let mut changed = false;
        for q in self.subs.values_mut() {
            changed |= q.end_windows(now, max, metrics, dead);
        }
        changed
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use serde_json::json;

    fn ev(priority: &str, n: u64) -> Arc<EncodedEvent> {
        let mut e = Event::from_json(json!({"topic": "t", "priority": priority}), "s").unwrap();
        e.cursor = n;
        EncodedEvent::new(e)
    }

    use crate::actors::testing::subscription as handle;

    fn drain(q: &mut SubQueue) -> Vec<u64> {
        let mut frames = Vec::new();
        let mut dead = Vec::new();
        for p in Priority::HIGHEST_FIRST {
            q.take_live(
                p,
                &mut frames,
                FRAMES_PER_BATCH,
                (Instant::now(), Utc::now()),
                &mut dead,
            );
        }
        frames
            .iter()
            .filter_map(|f| match f {
                OutFrame::Event { event, .. } => Some(event.event.cursor),
                _ => None,
            })
            .collect()
    }

    #[actix_rt::test]
    async fn overflow_drops_lowest_priority_oldest_first() {
        let metrics = Metrics::default();
        let mut dead = Vec::new();
        let mut q = SubQueue::new(handle(json!({"type": "all"})));
        for (i, p) in ["low", "normal", "low", "critical", "high"]
            .into_iter()
            .enumerate()
        {
            q.push(ev(p, i as u64 + 1), 3, &metrics, &mut dead);
        }
        // 5 pushed into 3 slots: both lows went first (oldest first).
        assert_eq!(q.unreported_drops, 2);
        assert_eq!(metrics.dropped.get(Priority::Low), 2);
        assert!(dead.is_empty());
        assert_eq!(drain(&mut q), [4, 5, 2]);
        // A new low event, when everything waiting outranks it, drops itself.
        q.push(ev("high", 6), 1, &metrics, &mut dead);
        q.push(ev("low", 7), 1, &metrics, &mut dead);
        assert_eq!(drain(&mut q), [6]);
    }

    /// An outbox that queued `lows` low events (cursors from 1) and handed its session
    /// as many as the cap allows, none of them written yet.
    fn outbox_at_the_cap(lows: u64, metrics: &Metrics) -> (Arc<SubscriptionHandle>, Outbox) {
        let mut dead = Vec::new();
        let sub = handle(json!({"type": "all"}));
        let mut outbox = Outbox::new(sub.sink.clone());
        for i in 1..=lows {
            outbox
                .queue(&sub)
                .push(ev("low", i), 10_000, metrics, &mut dead);
        }
        assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
        assert_eq!(sub.sink.backlog.unwritten(), MAX_UNWRITTEN_FRAMES);
        (sub, outbox)
    }

    /// A session that has not written what it was handed gets no more; the backlog
    /// stays here, where a critical event still goes first.
    #[actix_rt::test]
    async fn unwritten_frames_are_capped_and_the_backlog_keeps_its_priority() {
        let (metrics, mut dead) = (Metrics::default(), Vec::new());
        let (sub, mut outbox) = outbox_at_the_cap(2000, &metrics);
        let backlog = sub.sink.backlog.clone();
        // Nothing more while the session has not written them.
        assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
        assert_eq!(backlog.unwritten(), MAX_UNWRITTEN_FRAMES);
        // A critical event overtakes the low ones still waiting here.
        outbox
            .queue(&sub)
            .push(ev("critical", 9999), 10_000, &metrics, &mut dead);
        let batch = outbox.next_batch((Instant::now(), Utc::now()), &mut dead);
        let cursors: Vec<u64> = batch
            .iter()
            .filter_map(|f| match f {
                OutFrame::Event { event, .. } => Some(event.event.cursor),
                _ => None,
            })
            .collect();
        assert_eq!(cursors[..2], [9999, MAX_UNWRITTEN_FRAMES as u64 + 1]);
        outbox.restore(batch);
        // The session writes: the worker hears of it only once it is down to half.
        assert!(!backlog.written(FRAMES_PER_BATCH - 1));
        assert!(backlog.written(1), "half written: resume");
        assert!(!backlog.written(1), "told once per wait");
        // Handed over again in whole batches, up to less than one batch past the cap.
        assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
        let unwritten = backlog.unwritten();
        assert!(
            (MAX_UNWRITTEN_FRAMES..MAX_UNWRITTEN_FRAMES + FRAMES_PER_BATCH).contains(&unwritten),
            "{unwritten}"
        );
    }

    /// Past the cap, critical events are still handed over, up to [`URGENT_FRAMES`]
    /// more; nothing of lower priority is.
    #[actix_rt::test]
    async fn critical_events_pass_a_full_backlog_up_to_the_urgent_allowance() {
        let (metrics, mut dead) = (Metrics::default(), Vec::new());
        let (sub, mut outbox) = outbox_at_the_cap(1000, &metrics);
        let backlog = sub.sink.backlog.clone();
        let urgent = URGENT_FRAMES as u64;
        for i in 0..urgent + 10 {
            let q = outbox.queue(&sub);
            q.push(ev("critical", 5000 + i), 10_000, &metrics, &mut dead);
            q.push(ev("high", 6000 + i), 10_000, &metrics, &mut dead);
        }
        assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
        assert_eq!(backlog.unwritten(), MAX_UNWRITTEN_FRAMES + URGENT_FRAMES);
        // Still waiting here: the critical events past the allowance, then the rest.
        let left = drain(outbox.queue(&sub));
        let critical_left: Vec<u64> = (5000 + urgent..5000 + urgent + 10).collect();
        assert_eq!(left[..10], critical_left[..]);
        assert_eq!(left[10], 6000);
        // Once the allowance is used, not even a critical event is handed over.
        outbox
            .queue(&sub)
            .push(ev("critical", 9999), 10_000, &metrics, &mut dead);
        assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
        assert_eq!(backlog.unwritten(), MAX_UNWRITTEN_FRAMES + URGENT_FRAMES);
    }

    #[actix_rt::test]
    async fn with_acks_overflow_dead_letters_and_in_flight_is_bounded() {
        let metrics = Metrics::default();
        let mut dead = Vec::new();
        let mut q = SubQueue::new(handle(
            json!({"type": "all", "ack": true, "max_in_flight": 2}),
        ));
        for i in 1..=4 {
            q.push(ev("normal", i), 3, &metrics, &mut dead);
        }
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].event.event.cursor, dead[0].reason),
            (1, DeadReason::Overflow)
        );
        assert_eq!(metrics.dropped.total(), 0, "nothing is dropped with acks");
        assert_eq!(drain(&mut q), [2, 3], "max_in_flight");
    }
}
