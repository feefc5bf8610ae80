//! Delivery worker actors: move routed events to sessions without letting a slow
//! subscriber stall anyone else, and own at-least-once delivery.
//!
//! Into a worker: [`Dispatch`] from the router (events with the subscriptions they
//! matched), [`ReplayEvents`] (stored events for one subscription, from the router's
//! replay task), [`AnnounceGap`] (before a durable subscription's replay), [`Ack`]
//! and [`Nack`] (from sessions), [`Redeliver`] (a dead letter retried from the HTTP
//! API), [`Resume`] (a session has written what it was handed), [`SessionClosed`] (from
//! the router), [`AttachRouter`] once at start (from the server).
//! Out of a worker: [`WriteFrames`] to sessions, sent with `try_send`; [`DeadLettered`]
//! to the router; `DurableAcked` (resolved cursors of durable subscriptions) to the
//! store.
//!
//! The state machines live in [`crate::delivery`]: per-subscription waiting queues
//! (priority-ordered, bounded by `limits.max_waiting_per_subscriber` and
//! `limits.max_waiting_bytes_per_subscriber`), replay, and ack
//! tracking. A session whose mailbox is full is not draining its socket (actix stops
//! polling the session while the socket is blocked): its events wait, the worker
//! retries shortly, and on overflow the lowest-priority, oldest events are dropped and
//! announced (`dropped`), or, with acks, dead-lettered. Ack deadlines (timeouts
//! redeliver with the next `attempt` until `max_attempts`) and the ends of coalescing
//! windows run on the same timer. It is armed only for the next such deadline, so an
//! idle worker sleeps until a message arrives.
//! Dead letters are budgeted per connection (`limits.dead_letters_per_sec`): past it
//! they are counted as shed, not sent to the router, so one subscriber that fails
//! everything on many subscriptions cannot flood the store. A server notice
//! (`switchyard.>`, not in the log) that is not acknowledged is no dead letter: the
//! dead letter it announces is stored already.
//! Must not: match events (the router does) or encode envelopes (done once, upstream).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
// Session ids and handle addresses are the server's own, not a client's: the faster
// hash is safe here, and SipHash was a visible share of handling a `Dispatch`.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::send_or_wait;
use super::store::DurableAcked;
use crate::delivery::ack::DeadReason;
use crate::delivery::{
    DeadNote, Flush, FrameSink, Handed, OutFrame, Outbox, QueueBounds, SessionId,
    SubscriptionHandle,
};
use crate::error::{ErrorCode, ProtocolError};
use crate::metrics::Metrics;
use crate::protocol::topic::is_reserved;
use crate::protocol::EncodedEvent;
use crate::rate_limit::PublishBudget;

/// Shed dead letters are logged at most this often.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A durable subscription's stored state is compacted every this many resolved cursors.
const COMPACT_EVERY: u64 = 1000;
/// How soon a session whose mailbox was full is offered its frames again.
const STALL_RETRY: Duration = Duration::from_millis(5);
/// The shortest sleep the timer is armed for: a deadline already past is run this soon,
/// so the worker never spins on one.
const MIN_SLEEP: Duration = Duration::from_millis(1);
/// Mailbox size: the router holds a dispatch back (and stops routing) when it is full.
const MAILBOX_CAPACITY: usize = 256;

/// Which of `workers` serves a session: the one rule, used by the router and sessions.
pub fn worker_index(session: SessionId, workers: usize) -> usize {
    (session % workers.max(1) as u64) as usize
}

/// The worker serving a session.
pub fn worker_for<T: Clone>(session: SessionId, workers: &[T]) -> T {
    workers[worker_index(session, workers.len())].clone()
}

// ---- messages into a worker ----

/// Routed events: each with the subscriptions it matched (all served by this worker).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub items: Vec<DispatchItem>,
}

pub struct DispatchItem {
    pub event: Arc<EncodedEvent>,
    pub subs: Vec<Arc<SubscriptionHandle>>,
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

/// Tell a durable subscription, ahead of its replay, that retention removed cursors
/// `from..=to` before it resolved them (a `gap` frame).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AnnounceGap {
    pub sub: Arc<SubscriptionHandle>,
    pub from: u64,
    pub to: u64,
}

/// Acknowledge deliveries. Answers the ids that were not in flight.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct Ack {
    pub sub: Arc<SubscriptionHandle>,
    pub event_ids: Vec<String>,
}

/// Negative acknowledgement of one delivery.
#[derive(Message)]
#[rtype(result = "Result<(), ProtocolError>")]
pub struct Nack {
    pub sub: Arc<SubscriptionHandle>,
    pub event_id: String,
    pub requeue: bool,
    pub delay: Duration,
}

/// Deliver an event to a subscription again (a retried dead letter), as attempt 1.
/// Answers whether it was queued (false once the subscription has closed).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Redeliver {
    pub sub: Arc<SubscriptionHandle>,
    pub event: Arc<EncodedEvent>,
}

/// From the router: the session is gone, its subscriptions are inactive; whatever the
/// worker holds for it is let go now, not at some later flush that may never come.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub session: SessionId,
}

/// From a session: it has written down to half of what it was handed, and this worker
/// was waiting for that (`delivery::Backlog`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume {
    pub session: SessionId,
}

/// Where dead letters go. Sent once, right after the router starts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachRouter {
    pub dead_letters: Recipient<DeadLettered>,
    /// Where resolved cursors of durable subscriptions are recorded (the store).
    pub durable_acks: Recipient<DurableAcked>,
}

// ---- messages out of a worker ----

/// A delivery worker gave up on an event for a subscription: store it as a dead letter
/// and publish a notice on `switchyard.dead_letter`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeadLettered {
    pub event: Arc<EncodedEvent>,
    /// The subscriber's principal.
    pub principal: String,
    pub subscription_id: String,
    pub connection_id: SessionId,
    pub reason: DeadReason,
    pub attempts: u32,
    /// (principal, name) of a durable subscription: its cursor is resolved once the
    /// dead letter is stored, not before.
    pub durable: Option<(String, String)>,
}

/// Frames for one session, in the order to write them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteFrames {
    pub frames: Vec<OutFrame>,
}

impl FrameSink for Recipient<WriteFrames> {
    fn offer(&self, frames: Vec<OutFrame>) -> Handed {
        match self.try_send(WriteFrames { frames }) {
            Ok(()) => Handed::Taken,
            Err(SendError::Full(msg)) => Handed::Full(msg.frames),
            Err(SendError::Closed(_)) => Handed::Closed,
        }
    }
}

pub struct DeliveryWorker {
    metrics: Arc<Metrics>,
    /// What may wait for one subscription.
    bounds: QueueBounds,
    outboxes: HashMap<SessionId, Outbox>,
    stalled: HashSet<SessionId>,
    dead_letters: Option<Recipient<DeadLettered>>,
    durable_acks: Option<Recipient<DurableAcked>>,
    /// `limits.dead_letters_per_sec` (0: no limit), and each connection's bucket of it.
    dead_rate: u32,
    dead_budgets: HashMap<SessionId, PublishBudget>,
    /// When shedding was last logged (a storm logs once a minute).
    shed_logged: Option<Instant>,
    /// The one timer armed, and when it fires: never later than the earliest deadline
    /// of any outbox or stalled session; none when there is none.
    timer: Option<(Instant, SpawnHandle)>,
    /// Sessions this worker had counted into `metrics.delivery_sessions`.
    counted: usize,
}

impl DeliveryWorker {
    pub fn new(metrics: Arc<Metrics>, bounds: QueueBounds, dead_rate: u32) -> Self {
        DeliveryWorker {
            metrics,
            bounds,
            outboxes: HashMap::new(),
            stalled: HashSet::new(),
            dead_letters: None,
            durable_acks: None,
            dead_rate,
            dead_budgets: HashMap::new(),
            shed_logged: None,
            timer: None,
            counted: 0,
        }
    }

    /// May `session` store one more dead letter now? Its bucket holds one second's
    /// worth: the same token bucket as the publish budget, spent on dead letters.
    fn dead_letter_allowed(&mut self, session: SessionId) -> bool {
        let rate = self.dead_rate;
        if rate == 0 {
            return true;
        }
        let budget = self
            .dead_budgets
            .entry(session)
            .or_insert_with(|| PublishBudget::with_clock(rate, rate, Default::default()));
        if budget.take(1).is_ok() {
            return true;
        }
        let shed = self.metrics.dead_letters_shed.fetch_add(1, Relaxed) + 1;
        let quiet = self
            .shed_logged
            .is_some_and(|at| at.elapsed() < SHED_LOG_INTERVAL);
        if !quiet {
            self.shed_logged = Some(Instant::now());
            log::warn!(
                "connection {session} causes more than limits.dead_letters_per_sec ({rate}) \
                 dead letters: not storing the rest ({shed} so far)"
            );
        }
        false
    }

    fn outbox(&mut self, sub: &Arc<SubscriptionHandle>) -> &mut Outbox {
        self.outboxes
            .entry(sub.session_id)
            .or_insert_with(|| Outbox::new(sub.sink.clone()))
    }

    /// Brings this worker's share of `delivery_sessions` up to date: it runs after every
    /// flush, so it touches the shared counter only when the count moved.
    fn count_sessions(&mut self) {
        let now = self.outboxes.len();
        let gauge = &self.metrics.delivery_sessions;
        match now.cmp(&self.counted) {
            std::cmp::Ordering::Equal => return,
            std::cmp::Ordering::Greater => gauge.fetch_add((now - self.counted) as u64, Relaxed),
            std::cmp::Ordering::Less => gauge.fetch_sub((self.counted - now) as u64, Relaxed),
        };
        self.counted = now;
    }

    fn flush(&mut self, session: SessionId) {
        self.flush_one(session);
        self.count_sessions();
    }

    fn flush_one(&mut self, session: SessionId) {
        let mut dead = Vec::new();
        let Some(outbox) = self.outboxes.get_mut(&session) else {
            self.stalled.remove(&session);
            return;
        };
        match outbox.flush(&mut dead) {
            Flush::Done => {
                self.stalled.remove(&session);
                if outbox.subs.is_empty() {
                    self.outboxes.remove(&session);
                    self.dead_budgets.remove(&session);
                }
            }
            Flush::Stalled => {
                self.stalled.insert(session);
            }
            Flush::Waiting => {
                self.stalled.remove(&session);
            }
            Flush::Closed => {
                self.stalled.remove(&session);
                self.outboxes.remove(&session);
                self.dead_budgets.remove(&session);
            }
        }
        self.send_dead(dead);
    }

    /// Flushes now unless the session is stalled (its retry is armed already), then
    /// makes sure the timer wakes the worker for the session's next deadline.
    fn flush_soon(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        if !self.stalled.contains(&session) {
            self.flush(session);
        } else {
            self.count_sessions();
        }
        self.arm_for(session, ctx);
    }

    /// When `session` needs the worker back without a message: its retry if stalled,
    /// else its earliest ack deadline or window end.
    fn deadline_of(&self, session: SessionId, now: Instant) -> Option<Instant> {
        let retry = self.stalled.contains(&session).then(|| now + STALL_RETRY);
        let own = self.outboxes.get(&session).and_then(Outbox::next_deadline);
        retry.into_iter().chain(own).min()
    }

    fn arm_for(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        if let Some(at) = self.deadline_of(session, Instant::now()) {
            self.wake_by(at, ctx);
        }
    }

    /// Arms the timer for `at` unless it fires by then already. A timer left armed for
    /// a deadline that went away (an ack) just finds nothing to do.
    fn wake_by(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if self.timer.as_ref().is_some_and(|(fires, _)| *fires <= at) {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let now = Instant::now();
        let sleep = at.saturating_duration_since(now).max(MIN_SLEEP);
        let handle = ctx.run_later(sleep, |act, ctx| {
            act.timer = None;
            act.tick(ctx);
        });
        self.timer = Some((now + sleep, handle));
    }

    /// Records resolved cursors of a durable subscription; asks for compaction every
    /// [`COMPACT_EVERY`] of them.
    fn resolve_durable(&mut self, sub: &Arc<SubscriptionHandle>, cursors: Vec<u64>) {
        let (Some(name), Some(store)) = (&sub.spec.durable, &self.durable_acks) else {
            return;
        };
        // Cursor 0: a server notice, never in the log, so nothing to resolve.
        let cursors: Vec<u64> = cursors.into_iter().filter(|c| *c != 0).collect();
        if cursors.is_empty() {
            return;
        }
        let resolved = sub.resolved.fetch_add(cursors.len() as u64, Relaxed) + cursors.len() as u64;
        let compact = resolved / COMPACT_EVERY != (resolved - cursors.len() as u64) / COMPACT_EVERY;
        let msg = DurableAcked {
            principal: sub.principal.clone(),
            name: name.clone(),
            cursors,
            compact_with: compact.then(|| sub.spec.matcher.clone()),
        };
        send_or_wait(store, msg);
    }

    fn send_dead(&mut self, dead: Vec<DeadNote>) {
        for note in dead {
            if is_reserved(&note.event.event.topic) {
                log::trace!("unacknowledged notice {} let go", note.event.event.id);
                continue;
            }
            // Over budget: neither stored nor resolved, so a durable subscription gets
            // the event again on resume; others can read it in the log.
            if !self.dead_letter_allowed(note.sub.session_id) {
                continue;
            }
            self.metrics.count_dead_lettered(&note.event);
            let msg = DeadLettered {
                event: note.event,
                principal: note.sub.principal.clone(),
                subscription_id: note.sub.id.clone(),
                connection_id: note.sub.session_id,
                durable: note
                    .sub
                    .spec
                    .durable
                    .clone()
                    .map(|name| (note.sub.principal.clone(), name)),
                reason: note.reason,
                attempts: note.attempts,
            };
            match &self.dead_letters {
                Some(router) => send_or_wait(router, msg),
                None => log::error!(
                    "dead letter for subscription {} lost: no router attached",
                    msg.subscription_id
                ),
            }
        }
    }

    /// Resolves, for durable state, the events coalescing replaced in `sessions`.
    fn resolve_replaced(&mut self, sessions: impl IntoIterator<Item = SessionId>) {
        let mut replaced = Vec::new();
        for session in sessions {
            if let Some(outbox) = self.outboxes.get_mut(&session) {
                replaced.extend(outbox.take_replaced());
            }
        }
        for (sub, cursors) in replaced {
            self.resolve_durable(&sub, cursors);
        }
    }

    /// The timer fired: runs what is due in every outbox, retries stalled sessions,
    /// forgets idle outboxes, and arms the timer for the earliest deadline left.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut dead = Vec::new();
        let mut changed = Vec::new();
        for (session, outbox) in self.outboxes.iter_mut() {
            let deadlines = outbox.run_deadlines(now, &mut dead);
            let windows = outbox.end_windows(now, self.bounds, &self.metrics, &mut dead);
            if deadlines || windows {
                changed.push(*session);
            }
        }
        self.send_dead(dead);
        let stalled: Vec<SessionId> = self.stalled.iter().copied().collect();
        for session in stalled.into_iter().chain(changed) {
            self.flush(session);
        }
        self.outboxes
            .retain(|_, o| !(o.subs.is_empty() && o.is_idle()));
        let outboxes = &self.outboxes;
        self.dead_budgets.retain(|s, _| outboxes.contains_key(s));
        self.count_sessions();
        let now = Instant::now();
        let next = self
            .outboxes
            .keys()
            .chain(self.stalled.iter())
            .filter_map(|s| self.deadline_of(*s, now))
            .min();
        if let Some(at) = next {
            self.wake_by(at, ctx);
        }
    }
}

impl Actor for DeliveryWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<AttachRouter> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: AttachRouter, _: &mut Context<Self>) {
        self.dead_letters = Some(msg.dead_letters);
        self.durable_acks = Some(msg.durable_acks);
    }
}

impl Handler<SessionClosed> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: SessionClosed, _: &mut Context<Self>) {
        // Its subscriptions are inactive: the flush drops what waits and forgets the
        // outbox.
        self.flush(msg.session);
    }
}

impl Handler<Resume> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) {
        self.flush(msg.session);
        self.arm_for(msg.session, ctx);
    }
}

impl Handler<Dispatch> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        let mut touched = HashSet::new();
        let mut dead = Vec::new();
        for item in msg.items {
            for sub in item.subs {
                if !sub.is_active() {
                    continue;
                }
                self.outboxes
                    .entry(sub.session_id)
                    .or_insert_with(|| Outbox::new(sub.sink.clone()))
                    .queue(&sub)
                    .push(item.event.clone(), self.bounds, &self.metrics, &mut dead);
                touched.insert(sub.session_id);
            }
        }
        self.send_dead(dead);
        self.resolve_replaced(touched.iter().copied());
        for session in touched {
            self.flush_soon(session, ctx);
        }
    }
}

impl Handler<ReplayEvents> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: ReplayEvents, ctx: &mut Context<Self>) {
        if !msg.sub.is_active() {
            return;
        }
        self.outbox(&msg.sub)
            .queue(&msg.sub)
            .add_replay(msg.events, msg.complete_at);
        self.flush_soon(msg.sub.session_id, ctx);
    }
}

impl Handler<AnnounceGap> for DeliveryWorker {
    type Result = ();

    fn handle(&mut self, msg: AnnounceGap, ctx: &mut Context<Self>) {
        if !msg.sub.is_active() {
            return;
        }
        self.outbox(&msg.sub)
            .queue(&msg.sub)
            .add_gap(msg.from, msg.to);
        self.flush_soon(msg.sub.session_id, ctx);
    }
}

impl Handler<Ack> for DeliveryWorker {
    type Result = MessageResult<Ack>;

    fn handle(&mut self, msg: Ack, ctx: &mut Context<Self>) -> Self::Result {
        let q = self.outbox(&msg.sub).queue(&msg.sub);
        let mut unknown = Vec::new();
        let mut acked = Vec::new();
        match q.ack.as_mut() {
            Some(tracker) => {
                for id in msg.event_ids {
                    match tracker.ack(&id) {
                        Some(cursor) => acked.push(cursor),
                        None => unknown.push(id),
                    }
                }
            }
            None => unknown = msg.event_ids,
        }
        self.resolve_durable(&msg.sub, acked);
        self.flush_soon(msg.sub.session_id, ctx);
        MessageResult(unknown)
    }
}

impl Handler<Nack> for DeliveryWorker {
    type Result = Result<(), ProtocolError>;

    fn handle(&mut self, msg: Nack, ctx: &mut Context<Self>) -> Self::Result {
        let q = self.outbox(&msg.sub).queue(&msg.sub);
        let outcome = q
            .ack
            .as_mut()
            .and_then(|t| t.nack(&msg.event_id, msg.requeue, msg.delay, Instant::now()))
            .ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::UnknownEvent,
                    format!(
                        "event `{}` is not in flight on this subscription",
                        msg.event_id
                    ),
                )
            })?;
        let mut dead = Vec::new();
        q.apply(outcome.into_iter().collect(), &mut dead);
        self.send_dead(dead);
        self.flush_soon(msg.sub.session_id, ctx);
        Ok(())
    }
}

impl Handler<Redeliver> for DeliveryWorker {
    type Result = bool;

    fn handle(&mut self, msg: Redeliver, ctx: &mut Context<Self>) -> bool {
        if !msg.sub.is_active() {
            return false;
        }
        self.outbox(&msg.sub).queue(&msg.sub).requeue(msg.event, 1);
        self.flush_soon(msg.sub.session_id, ctx);
        true
    }
}
