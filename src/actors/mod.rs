//! The actors, one per file, each with the messages it accepts beside it.
//!
//! - [`router::Router`]: accepts events (assigns cursors, keeps the log), holds the four
//!   priority queues and the subscription index, matches each event once and hands the
//!   matches to the delivery workers.
//! - [`delivery::DeliveryWorker`]: per-subscriber waiting queues (priority-ordered,
//!   bounded, drop lowest-priority-oldest on overflow) and the flow of frames to sessions.
//! - [`session::Session`]: one per WebSocket connection; decodes commands, owns that
//!   connection's subscriptions, writes frames.
//!
//! [`turn`] and [`read_pause`] are not actors: the future a session waits on to give
//! its HTTP worker thread to the other connections there, and the gate on the bytes a
//! session reads, which overload control closes for a while.
//!
//! [`SubscriptionHandle`] is the one piece of state all three share: the session creates
//! it, the router indexes it, workers queue for it.

pub mod delivery;
pub mod read_pause;
pub mod router;
pub mod session;
pub mod store;
pub mod turn;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::Recipient;
use chrono::{DateTime, Utc};

use crate::protocol::reply::event_frame_prefix;
use crate::routing::SubscriptionSpec;

/// Identifies one WebSocket connection for the life of the process.
pub type SessionId = u64;

/// Sends without dropping: `try_send`, and when the receiver's mailbox is full, a
/// spawned `send` that waits for room. For rare control messages (dead letters, acks
/// of durable subscriptions), never for per-event fan-out.
pub fn send_or_wait<M>(to: &Recipient<M>, msg: M)
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    if let Err(actix::prelude::SendError::Full(msg)) = to.try_send(msg) {
        let to = to.clone();
        actix::spawn(async move {
            let _ = to.send(msg).await;
        });
    }
}

/// Where a session's frames go, shared by all its subscriptions: its mailbox, and the
/// count of frames handed to it and not yet written ([`crate::delivery::Backlog`]).
#[derive(Clone, Debug)]
pub struct SessionSink {
    pub frames: Recipient<delivery::WriteFrames>,
    pub backlog: Arc<crate::delivery::Backlog>,
}

/// A live subscription: what it selects, where its frames go, and its counters.
#[derive(Debug)]
pub struct SubscriptionHandle {
    pub session_id: SessionId,
    /// Who subscribed: owner of a durable subscription's state.
    pub principal: String,
    pub id: String,
    pub spec: SubscriptionSpec,
    /// `{"type":"event","subscription_id":"…","event":`, built once.
    pub frame_prefix: String,
    pub created_at: DateTime<Utc>,
    /// Where delivery workers send this subscription's frames (its session).
    pub sink: SessionSink,
    active: AtomicBool,
    /// Live events are held back while stored ones are replayed first.
    replaying: AtomicBool,
    /// Replayed events queued in the worker, not yet handed to the session.
    pub replay_backlog: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    /// Deliveries awaiting an ack (with `ack: true`).
    pub in_flight: AtomicU64,
    /// Cursors resolved (acked or dead-lettered), for durable-state compaction.
    pub resolved: AtomicU64,
    /// Events waiting in a delivery worker for this subscription (lag).
    pub waiting: AtomicU64,
    /// Events its condition failed to evaluate on (they did not match).
    pub condition_errors: AtomicU64,
    /// Events replaced by a later one with the same coalesce key.
    pub coalesced: AtomicU64,
}

impl SubscriptionHandle {
    pub fn new(
        session_id: SessionId,
        principal: String,
        id: String,
        spec: SubscriptionSpec,
        sink: SessionSink,
    ) -> SubscriptionHandle {
        SubscriptionHandle {
            session_id,
            principal,
            frame_prefix: event_frame_prefix(&id),
            id,
            created_at: Utc::now(),
            sink,
            active: AtomicBool::new(true),
            // A durable subscription always starts by replaying from its stored position.
            replaying: AtomicBool::new(spec.replay.is_some() || spec.durable.is_some()),
            replay_backlog: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            condition_errors: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            spec,
        }
    }

    /// False once unsubscribed or its connection closed: nothing more is written for it.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }

    /// True until its replay (if it asked for one) has been handed to the session.
    pub fn is_replaying(&self) -> bool {
        self.replaying.load(Ordering::Acquire)
    }

    pub fn set_replaying(&self, replaying: bool) {
        self.replaying.store(replaying, Ordering::Release);
    }

    /// The row of `/api/subscriptions` for this subscription.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "subscription_id": self.id,
            "principal": self.principal,
            "kind": self.spec.kind,
            "patterns": self.spec.patterns,
            "filter": self.spec.filter,
            "condition": self.spec.condition,
            "coalesce": self.spec.coalesce,
            "created_at": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "delivered": self.delivered.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "coalesced": self.coalesced.load(Ordering::Relaxed),
            "condition_errors": self.condition_errors.load(Ordering::Relaxed),
            "ack": self.spec.ack.is_some(),
            "durable": self.spec.durable,
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "lag": self.waiting.load(Ordering::Relaxed) + self.replay_backlog.load(Ordering::Relaxed),
            "replaying": self.is_replaying(),
        })
    }
}

/// Test stand-ins shared by the actors' and the delivery state machines' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use actix::prelude::*;

    use super::delivery::WriteFrames;
    use super::{SessionSink, SubscriptionHandle};
    use crate::routing::SubscriptionSpec;

    /// A session that takes every `WriteFrames` and drops it.
    struct NullSession;

    impl Actor for NullSession {
        type Context = Context<Self>;
    }

    impl Handler<WriteFrames> for NullSession {
        type Result = ();
        fn handle(&mut self, _: WriteFrames, _: &mut Context<Self>) {}
    }

    /// A subscription of connection 1 (`spec` as a client sends it) whose frames go
    /// nowhere. Needs a running actix system.
    pub fn subscription(spec: serde_json::Value) -> Arc<SubscriptionHandle> {
        let sink = SessionSink {
            frames: NullSession.start().recipient(),
            backlog: Arc::default(),
        };
        let spec = SubscriptionSpec::from_json(spec).expect("a valid subscription spec");
        Arc::new(SubscriptionHandle::new(
            1,
            "anonymous".into(),
            "s".into(),
            spec,
            sink,
        ))
    }
}
