//! The router actor: the single owner of accepted events and of the subscription index.
//!
//! Into the router: [`Connect`], [`Disconnect`], [`Subscribe`], [`Unsubscribe`] from
//! sessions; [`Publish`] (sent only by [`publish`]: from the ingress, and for
//! dead-letter retries); [`Shutdown`] / [`Flush`]; the read-only queries [`GetStats`],
//! [`GetTopics`], [`ListSubscriptions`] (`queries.rs`);
//! [`DeadLettered`](super::delivery::DeadLettered) from workers and
//! [`FindSubscription`] for dead-letter retries (`dead_letters.rs`); in cluster mode
//! [`Tailed`] and [`LogInterrupted`] from the log tail (`commit.rs`).
//! Out of the router: `Append` or `AppendNew`, `OpenDurable`, `RenewDurables`,
//! `ReleaseDurable`, `Query`, `AddDeadLetter` and `DurableAcked` to the store,
//! [`Dispatch`] and `ReplayEvents` (`replay.rs`) to delivery workers, [`CloseSession`]
//! to sessions.
//!
//! A publish is accepted in one step (dedupe, cursor) into the commit buffer. Group
//! commit: one `Append` is in flight at a time, and everything accepted meanwhile goes
//! into the next one. Only when its transaction has committed is an event answered
//! (`published`) and queued for routing (in cluster mode, once the log tail reads it
//! back: `commit.rs`). `Drain` turns pop the queues highest priority
//! first, match each event once against the index, and send one `Dispatch` per worker.
//! Must not: write to sockets or hold per-subscriber waiting events (workers do).
//!
//! Publishing never waits for room in the router's inbox: [`publish`] `try_send`s, and
//! a full inbox answers every event `rate_limited` at once (the publisher's policy
//! lives in that one function).

mod commit;
mod dead_letters;
mod publish;
mod queries;
mod replay;
mod sessions;

pub use commit::{LogInterrupted, Tailed};
pub use dead_letters::{FindSubscription, DEAD_LETTER_TOPIC};
pub use publish::{publish, Dedupe, Publish, PublishReply, PublishResults};
pub use queries::{GetStats, GetTopics, ListSubscriptions, TopicInfo};
pub use sessions::{Connect, Disconnect, Subscribe, Unsubscribe};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::delivery::worker_index;
use super::delivery::{DeliveryWorker, Dispatch, DispatchItem};
use super::store::{Query, StoreActor};
use crate::config::Config;
use crate::delivery::{SessionId, SubscriptionHandle};
use crate::metrics::{Metrics, RateWindow};
use crate::protocol::{EncodedEvent, Event};
use crate::routing::condition::MatchInput;
use crate::routing::dedupe::DedupeWindow;
use crate::routing::index::SubscriptionIndex;
use crate::store::{NewEvent, StoredId};

/// Events routed per `Drain` turn before the router yields to its mailbox, so that a
/// critical publish is never stuck behind a long backlog for more than one turn.
const DRAIN_BATCH: usize = 256;
/// How soon to retry when a delivery worker's mailbox was full.
const WORKER_RETRY: Duration = Duration::from_millis(1);
/// Router mailbox size. A publish finding it full is refused with `rate_limited`
/// ([`publish`]); other senders wait (bounded) for room.
const MAILBOX_CAPACITY: usize = 4096;
const RATE_WINDOW: Duration = Duration::from_secs(10);

// ---- messages out of the router ----

/// Close the connection with a "going away" close frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub reason: String,
}

// ---- messages into the router ----

/// Stop accepting new sessions and close every session with a close frame. Publishes
/// on connections not yet closed (and over HTTP) are still accepted until the server
/// stops; the last of them are committed before exit (see [`Flush`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Answers `true` once nothing accepted is still waiting to be committed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Flush;

/// Internal: route a batch of queued events.
#[derive(Message)]
#[rtype(result = "()")]
struct Drain;

struct TopicStats {
    count: u64,
    last_cursor: u64,
    last_at: DateTime<Utc>,
}

/// A durable subscription name open (or opening) on a connection of this node.
struct DurableHold {
    session: SessionId,
    /// The store granted the claim (`OpenDurable` answered): renewed on each beat.
    claimed: bool,
}

struct SessionEntry {
    peer: String,
    connected_at: DateTime<Utc>,
    close: Recipient<CloseSession>,
}

pub struct Router {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    store: Addr<StoreActor>,
    /// The store's read pool (replay pages).
    reads: Recipient<Query>,
    /// The log numbers events and is read back by the tail (cluster mode,
    /// `commit.rs`); otherwise this router numbers them.
    shared_log: bool,
    /// Accepted, not yet sent to the store.
    commit_buffer: Vec<NewEvent>,
    /// The publishes whose results wait for `commit_buffer` to commit.
    commit_waiters: Vec<(PublishReply, PublishResults)>,
    /// An `Append` is in flight.
    committing: bool,
    workers: Vec<Addr<DeliveryWorker>>,
    /// A `Dispatch` a worker had no room for; routing waits until it is taken.
    held: Vec<Option<Dispatch>>,
    sessions: HashMap<SessionId, SessionEntry>,
    /// The subscriptions, filed by literal topic prefix.
    index: SubscriptionIndex<Arc<SubscriptionHandle>>,
    /// Committed events waiting to be routed, one queue per priority, critical first.
    queues: [VecDeque<Arc<EncodedEvent>>; 4],
    /// Accepted events not yet routed: uncommitted plus queued.
    queued: usize,
    /// The encoded size of the `queued` events (`router.max_queued_bytes`).
    queued_bytes: usize,
    /// Dead-letter notices waiting to be routed (not in the log: `dead_letters.rs`).
    notices: VecDeque<dead_letters::Notice>,
    drain_scheduled: bool,
    last_cursor: u64,
    /// Durable subscriptions open on a connection of this node, by (principal, name);
    /// the store holds their claims cluster-wide.
    active_durables: HashMap<(String, String), DurableHold>,
    /// The highest cursor queued for routing: committed here, or read from the shared
    /// log. Both come in cursor order, so every cursor at or below it has been queued
    /// (or was refused by a failed commit); replay's boundary.
    last_queued: u64,
    dedupe: DedupeWindow,
    topics: HashMap<String, TopicStats>,
    expired: u64,
    published_rate: RateWindow,
    delivered_rate: RateWindow,
    shutting_down: bool,
}

/// What the store holds when the router starts (read by `server::run`).
#[derive(Debug, Default)]
pub struct StoredState {
    /// The highest cursor ever stored.
    pub last_cursor: u64,
    /// Ids (with their publishers) and cursors of the newest events, oldest first, at
    /// most `router.dedupe_window` of them.
    pub recent_ids: Vec<StoredId>,
    /// The log numbers events itself (`EventStore::numbers_events`).
    pub shared_log: bool,
}

impl Router {
    /// Cursors continue after the store's high-water mark, and the duplicate window
    /// starts with the ids of its newest events.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: Addr<StoreActor>,
        reads: Recipient<Query>,
        stored: StoredState,
        workers: Vec<Addr<DeliveryWorker>>,
    ) -> Self {
        let StoredState {
            last_cursor,
            recent_ids,
            shared_log,
        } = stored;
        let mut dedupe = DedupeWindow::new(config.router.dedupe_window);
        for stored in &recent_ids {
            dedupe.insert(&stored.publisher, &stored.id, stored.cursor);
        }
        Router {
            store,
            reads,
            shared_log,
            commit_buffer: Vec::new(),
            commit_waiters: Vec::new(),
            committing: false,
            held: workers.iter().map(|_| None).collect(),
            workers,
            sessions: HashMap::new(),
            index: SubscriptionIndex::default(),
            queues: Default::default(),
            queued: 0,
            queued_bytes: 0,
            notices: VecDeque::new(),
            drain_scheduled: false,
            last_cursor,
            last_queued: last_cursor,
            active_durables: HashMap::new(),
            dedupe,
            topics: HashMap::new(),
            expired: 0,
            published_rate: RateWindow::new(RATE_WINDOW),
            delivered_rate: RateWindow::new(RATE_WINDOW),
            shutting_down: false,
            config,
            metrics,
        }
    }

    /// Asks for a `Drain` turn when committed events wait in the queues. Not for
    /// `queued` alone: that also counts the events of a commit still in flight, which
    /// cannot be routed yet, and draining for them would spin the router for as long as
    /// the store takes to commit.
    fn schedule_drain(&mut self, ctx: &mut Context<Self>) {
        let routable = self.queues.iter().any(|q| !q.is_empty()) || !self.notices.is_empty();
        if !self.drain_scheduled && routable {
            self.drain_scheduled = true;
            ctx.notify(Drain);
        }
    }

    fn track_topic(&mut self, event: &Event) {
        if let Some(t) = self.topics.get_mut(&event.topic) {
            t.count += 1;
            t.last_cursor = event.cursor;
            t.last_at = event.timestamp;
        } else if self.topics.len() < self.config.router.max_tracked_topics {
            self.topics.insert(
                event.topic.clone(),
                TopicStats {
                    count: 1,
                    last_cursor: event.cursor,
                    last_at: event.timestamp,
                },
            );
        }
    }

    /// Publishes queue depths, subscriptions and acks in flight for `/metrics`.
    fn refresh_gauges(&self) {
        let gauges = &self.metrics.router;
        for (depth, queue) in gauges.queue_depth.iter().zip(&self.queues) {
            depth.store(queue.len() as u64, Relaxed);
        }
        gauges.subscriptions.store(self.index.len() as u64, Relaxed);
        let in_flight = self.index.iter().map(|s| s.in_flight.load(Relaxed)).sum();
        gauges.in_flight.store(in_flight, Relaxed);
    }

    fn pop_highest(&mut self) -> Option<Arc<EncodedEvent>> {
        let event = self.queues.iter_mut().find_map(VecDeque::pop_front)?;
        self.queued -= 1;
        self.queued_bytes -= event.json.len();
        Some(event)
    }

    /// Offers held dispatches to their workers again. True when none is left held.
    fn release_held(&mut self) -> bool {
        let mut clear = true;
        for (worker, slot) in self.workers.iter().zip(self.held.iter_mut()) {
            if let Some(dispatch) = slot.take() {
                if let Err(SendError::Full(d) | SendError::Closed(d)) = worker.try_send(dispatch) {
                    *slot = Some(d);
                    clear = false;
                }
            }
        }
        clear
    }

    fn route(&mut self, ctx: &mut Context<Self>) {
        if !self.release_held() {
            ctx.run_later(WORKER_RETRY, |act, ctx| act.route(ctx));
            return;
        }
        let workers = self.workers.len();
        let mut batches: Vec<Vec<DispatchItem>> = (0..workers).map(|_| Vec::new()).collect();
        self.route_notices(&mut batches);
        let now = Utc::now();
        for _ in 0..DRAIN_BATCH {
            let Some(event) = self.pop_highest() else {
                break;
            };
            if event.event.is_expired(now) {
                self.expired += 1;
                continue;
            }
            // Match once against the candidates its topic reaches, sharing one
            // condition input; group the matches by the worker serving each subscriber.
            let input = MatchInput::new(&event.event)
                .with_max_loop_items(self.config.limits.max_condition_loop_items);
            self.index.for_each_candidate(&event.event.topic, |sub| {
                if event.event.cursor <= sub.spec.live_after() {
                    return;
                }
                match sub.spec.matcher.test(&input) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        // The first failure of a subscription is worth a warning (a
                        // condition over lists too long for it, say); the rest are noise.
                        if sub.condition_errors.fetch_add(1, Relaxed) == 0 {
                            log::warn!("subscription {}: condition not evaluated: {e}", sub.id);
                        } else {
                            log::trace!("subscription {}: condition not evaluated: {e}", sub.id);
                        }
                        self.metrics.condition_errors.fetch_add(1, Relaxed);
                        return;
                    }
                }
                let items = &mut batches[worker_index(sub.session_id, workers)];
                match items.last_mut() {
                    Some(item) if Arc::ptr_eq(&item.event, &event) => item.subs.push(sub.clone()),
                    _ => items.push(DispatchItem {
                        event: event.clone(),
                        subs: vec![sub.clone()],
                    }),
                }
            });
        }
        for ((worker, slot), items) in self.workers.iter().zip(self.held.iter_mut()).zip(batches) {
            if items.is_empty() {
                continue;
            }
            if let Err(SendError::Full(d) | SendError::Closed(d)) =
                worker.try_send(Dispatch { items })
            {
                *slot = Some(d);
            }
        }
        if self.held.iter().any(Option::is_some) {
            ctx.run_later(WORKER_RETRY, |act, ctx| act.route(ctx));
        } else {
            self.schedule_drain(ctx);
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            let now = Instant::now();
            act.published_rate
                .sample(now, act.metrics.published.total());
            act.delivered_rate
                .sample(now, act.metrics.delivered.total());
            act.refresh_gauges();
        });
        if self.shared_log {
            ctx.run_interval(self.config.cluster.heartbeat(), |act, ctx| {
                act.renew_durables(ctx);
            });
        }
        log::debug!(
            "router started with {} delivery workers",
            self.workers.len()
        );
    }
}

impl Handler<Flush> for Router {
    type Result = bool;

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> bool {
        !self.committing && self.commit_waiters.is_empty()
    }
}

impl Handler<Drain> for Router {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.drain_scheduled = false;
        self.route(ctx);
    }
}

impl Handler<Shutdown> for Router {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        self.shutting_down = true;
        for session in self.sessions.values() {
            // A session whose mailbox is full is not reading its socket; the HTTP
            // server's shutdown timeout drops it.
            let _ = session.close.try_send(CloseSession {
                reason: "server shutting down".into(),
            });
        }
    }
}
