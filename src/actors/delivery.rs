//! Delivery worker actors: move routed events to sessions without letting a slow
//! subscriber stall anyone else.
//!
//! Into a worker: [`Dispatch`] from the router (events with the subscriptions they
//! matched) and [`ReplayEvents`] (stored events for one subscription, from the router's replay
//! task). Out of a worker: [`WriteFrames`] to sessions, sent with `try_send`.
//!
//! A replaying subscription gets its stored events first, in cursor order, then a
//! `replay_complete` notice, and only then its live events, which wait (bounded, like
//! any waiting events) meanwhile.
//!
//! Each subscription has a waiting queue per priority, bounded by
//! `limits.max_waiting_per_subscriber`. Frames are released highest priority first,
//! oldest first, in batches. A session whose mailbox is full is not draining its socket
//! (actix stops polling the session while the socket is blocked): its events wait, the
//! worker retries on a short tick, and on overflow the lowest-priority, oldest events
//! are dropped, counted, and announced with a `dropped` notice.
//! Must not: match events (the router does) or encode envelopes (done once, upstream).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::{SessionId, SubscriptionHandle};
use crate::metrics::Metrics;
use crate::protocol::EncodedEvent;
use crate::routing::Priority;

/// Frames per `WriteFrames` message.
const FRAMES_PER_BATCH: usize = 256;
/// Batches sent to one session per flush before giving other sessions a turn.
const BATCHES_PER_FLUSH: usize = 8;
/// How often stalled sessions are retried.
const STALL_RETRY: Duration = Duration::from_millis(5);
/// Mailbox size: the router holds a dispatch back (and stops routing) when it is full.
const MAILBOX_CAPACITY: usize = 256;

// ---- messages into a worker ----

/// Routed events: each with the subscriptions it matched (all served by this worker).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub items: Vec<DispatchItem>,
}

/// Stored events for one subscription, in cursor order. `complete_at` ends the replay:
/// the `replay_complete` notice carries it as `last_cursor`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplayEvents {
    pub sub: Arc<SubscriptionHandle>,
    pub events: Vec<Arc<EncodedEvent>>,
    pub complete_at: Option<u64>,
}

pub struct DispatchItem {
    pub event: Arc<EncodedEvent>,
    pub subs: Vec<Arc<SubscriptionHandle>>,
}

// ---- messages out of a worker ----

/// Frames for one session, in the order to write them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteFrames {
    pub frames: Vec<OutFrame>,
}

pub enum OutFrame {
    Event {
        sub: Arc<SubscriptionHandle>,
        event: Arc<EncodedEvent>,
        attempt: u32,
    },
    /// `count` events were dropped for `sub` because its subscriber was too slow.
    Dropped {
        sub: Arc<SubscriptionHandle>,
        count: u64,
    },
    /// A stored event delivered by replay.
    Replayed {
        sub: Arc<SubscriptionHandle>,
        event: Arc<EncodedEvent>,
    },
    /// The replay of `sub` is done; live events follow.
    ReplayComplete {
        sub: Arc<SubscriptionHandle>,
        last_cursor: u64,
    },
}

/// Waiting events of one subscription, per priority.
struct SubQueue {
    handle: Arc<SubscriptionHandle>,
    waiting: [VecDeque<Arc<EncodedEvent>>; 4],
    len: usize,
    /// Dropped since the last `dropped` notice was sent.
    unreported_drops: u64,
    /// Stored events still to deliver, in cursor order (never dropped; the replay task
    /// reads the next page only when this has drained).
    replay: VecDeque<Arc<EncodedEvent>>,
    /// Set when the replay task is done: the `last_cursor` of `replay_complete`.
    replay_complete: Option<u64>,
}

impl SubQueue {
    fn new(handle: Arc<SubscriptionHandle>) -> Self {
        SubQueue {
            handle,
            waiting: Default::default(),
            len: 0,
            unreported_drops: 0,
            replay: VecDeque::new(),
            replay_complete: None,
        }
    }

    /// Moves replayed events, then the completion notice, into `frames`.
    fn take_replay(&mut self, frames: &mut Vec<OutFrame>) {
        while frames.len() < FRAMES_PER_BATCH {
            let Some(event) = self.replay.pop_front() else {
                break;
            };
            self.handle.replay_backlog.fetch_sub(1, Relaxed);
            frames.push(OutFrame::Replayed {
                sub: self.handle.clone(),
                event,
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

    /// Queues an event; on overflow drops the lowest-priority, oldest one (which may be
    /// the new event itself, when everything waiting outranks it).
    fn push(&mut self, event: Arc<EncodedEvent>, max: usize, metrics: &Metrics) {
        self.waiting[event.event.priority.index()].push_back(event);
        self.len += 1;
        if self.len > max {
            if let Some(dropped) = self.waiting.iter_mut().rev().find_map(VecDeque::pop_front) {
                self.len -= 1;
                self.unreported_drops += 1;
                self.handle.dropped.fetch_add(1, Relaxed);
                metrics.dropped.add(dropped.event.priority, 1);
            }
        }
    }

    fn pop(&mut self, priority: Priority) -> Option<Arc<EncodedEvent>> {
        let e = self.waiting[priority.index()].pop_front()?;
        self.len -= 1;
        Some(e)
    }

    fn unpop(&mut self, event: Arc<EncodedEvent>) {
        self.waiting[event.event.priority.index()].push_front(event);
        self.len += 1;
    }
}

/// Everything waiting for one session.
struct Outbox {
    frames: Recipient<WriteFrames>,
    /// Keyed by handle address: ids can be reused after an unsubscribe.
    subs: HashMap<usize, SubQueue>,
}

fn key(h: &Arc<SubscriptionHandle>) -> usize {
    Arc::as_ptr(h) as usize
}

enum Flush {
    /// Nothing left waiting.
    Done,
    /// The session's mailbox is full (or this flush's share is used up).
    Stalled,
    /// The session is gone.
    Closed,
}

impl Outbox {
    /// Takes the next batch: drop notices first, then events highest priority first.
    fn next_batch(&mut self) -> Vec<OutFrame> {
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
            q.take_replay(&mut frames);
        }
        'fill: for p in Priority::HIGHEST_FIRST {
            for q in self.subs.values_mut().filter(|q| !q.handle.is_replaying()) {
                while frames.len() < FRAMES_PER_BATCH {
                    match q.pop(p) {
                        Some(event) => frames.push(OutFrame::Event {
                            sub: q.handle.clone(),
                            event,
                            attempt: 1,
                        }),
                        None => break,
                    }
                }
                if frames.len() >= FRAMES_PER_BATCH {
                    break 'fill;
                }
            }
        }
        frames
    }

    /// Puts back a batch the session had no room for, keeping its order.
    fn restore(&mut self, frames: Vec<OutFrame>) {
        for frame in frames.into_iter().rev() {
            match frame {
                OutFrame::Event { sub, event, .. } => {
                    if let Some(q) = self.subs.get_mut(&key(&sub)) {
                        q.unpop(event);
                    }
                }
                OutFrame::Dropped { sub, count } => {
                    if let Some(q) = self.subs.get_mut(&key(&sub)) {
                        q.unreported_drops += count;
                    }
                }
                OutFrame::Replayed { sub, event } => {
                    if let Some(q) = self.subs.get_mut(&key(&sub)) {
                        q.replay.push_front(event);
                        sub.replay_backlog.fetch_add(1, Relaxed);
                    }
                }
                OutFrame::ReplayComplete { sub, last_cursor } => {
                    if let Some(q) = self.subs.get_mut(&key(&sub)) {
                        q.replay_complete = Some(last_cursor);
                        sub.set_replaying(true);
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> Flush {
        let mut result = Flush::Stalled;
        for _ in 0..BATCHES_PER_FLUSH {
            let frames = self.next_batch();
            if frames.is_empty() {
                result = Flush::Done;
                break;
            }
            match self.frames.try_send(WriteFrames { frames }) {
                Ok(()) => {}
                Err(SendError::Full(msg)) => {
                    self.restore(msg.frames);
                    break;
                }
                Err(SendError::Closed(_)) => return Flush::Closed,
            }
        }
        for q in self.subs.values() {
            q.handle.waiting.store(q.len as u64, Relaxed);
        }
        result
    }
}

/// The waiting queue of `sub`, created on first use.
fn queue<'a>(
    outboxes: &'a mut HashMap<SessionId, Outbox>,
    sub: &Arc<SubscriptionHandle>,
) -> &'a mut SubQueue {
    outboxes
        .entry(sub.session_id)
        .or_insert_with(|| Outbox {
            frames: sub.frames.clone(),
            subs: HashMap::new(),
        })
        .subs
        .entry(key(sub))
        .or_insert_with(|| SubQueue::new(sub.clone()))
}

pub struct DeliveryWorker {
    metrics: Arc<Metrics>,
    max_waiting: usize,
    outboxes: HashMap<SessionId, Outbox>,
    stalled: HashSet<SessionId>,
}

impl DeliveryWorker {
    pub fn new(metrics: Arc<Metrics>, max_waiting: usize) -> Self {
        DeliveryWorker {
            metrics,
            max_waiting,
            outboxes: HashMap::new(),
            stalled: HashSet::new(),
        }
    }

    fn flush(&mut self, session: SessionId) {
        let Some(outbox) = self.outboxes.get_mut(&session) else {
            self.stalled.remove(&session);
            return;
        };
        match outbox.flush() {
            Flush::Done => {
                self.stalled.remove(&session);
                if outbox.subs.is_empty() {
                    self.outboxes.remove(&session);
                }
            }
            Flush::Stalled => {
                self.stalled.insert(session);
            }
            Flush::Closed => {
                self.stalled.remove(&session);
                self.outboxes.remove(&session);
            }
        }
    }
}

impl Actor for DeliveryWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(STALL_RETRY, |act, _| {
            let stalled: Vec<SessionId> = act.stalled.iter().copied().collect();
            for session in stalled {
                act.flush(session);
            }
        });
    }
}

impl Handler<Dispatch> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, _: &mut Context<Self>) {
        let mut touched = HashSet::new();
        for item in msg.items {
            for sub in item.subs {
                if !sub.is_active() {
                    continue;
                }
                queue(&mut self.outboxes, &sub).push(
                    item.event.clone(),
                    self.max_waiting,
                    &self.metrics,
                );
                touched.insert(sub.session_id);
            }
        }
        for session in touched {
            // A stalled session is retried on the tick; flushing it here would only
            // find its mailbox full again.
            if !self.stalled.contains(&session) {
                self.flush(session);
            }
        }
    }
}

impl Handler<ReplayEvents> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: ReplayEvents, _: &mut Context<Self>) {
        if !msg.sub.is_active() {
            return;
        }
        msg.sub
            .replay_backlog
            .fetch_add(msg.events.len() as u64, Relaxed);
        let q = queue(&mut self.outboxes, &msg.sub);
        q.replay.extend(msg.events);
        if msg.complete_at.is_some() {
            q.replay_complete = msg.complete_at;
        }
        let session = msg.sub.session_id;
        if !self.stalled.contains(&session) {
            self.flush(session);
        }
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

    struct Sink;
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<WriteFrames> for Sink {
        type Result = ();
        fn handle(&mut self, _: WriteFrames, _: &mut Context<Self>) {}
    }

    #[actix_rt::test]
    async fn overflow_drops_lowest_priority_oldest_first() {
        let sink = Sink.start().recipient();
        let spec = crate::routing::SubscriptionSpec::from_json(json!({"type": "all"})).unwrap();
        let handle = Arc::new(SubscriptionHandle::new(1, "s".into(), spec, sink));
        let metrics = Metrics::default();
        let mut q = SubQueue::new(handle);
        for (i, p) in ["low", "normal", "low", "critical", "high"]
            .into_iter()
            .enumerate()
        {
            q.push(ev(p, i as u64 + 1), 3, &metrics);
        }
        // 5 pushed into 3 slots: both lows went first (oldest first).
        assert_eq!(q.len, 3);
        assert_eq!(q.unreported_drops, 2);
        assert_eq!(metrics.dropped.get(Priority::Low), 2);
        let popped: Vec<u64> = Priority::HIGHEST_FIRST
            .into_iter()
            .filter_map(|p| q.pop(p).map(|e| e.event.cursor))
            .collect();
        assert_eq!(popped, [4, 5, 2]);
        // A new low event, when everything waiting outranks it, drops itself.
        let mut q2 = SubQueue::new(q.handle.clone());
        q2.push(ev("high", 1), 1, &metrics);
        q2.push(ev("low", 2), 1, &metrics);
        assert_eq!(q2.pop(Priority::High).map(|e| e.event.cursor), Some(1));
        assert_eq!(q2.len, 0);
    }
}
