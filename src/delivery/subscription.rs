//! A live subscription as the delivery layer sees it: what it selects, where its
//! frames go, and its counters. The session creates a [`SubscriptionHandle`], the
//! router indexes it, delivery workers queue for it.
//!
//! Owns: the handle and the frames handed to a session ([`OutFrame`]), and the
//! [`FrameSink`] a session receives them through. Must not: know the session actor;
//! the actor layer implements [`FrameSink`] for the session's address.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::backlog::Backlog;
use crate::protocol::reply::event_frame_prefix;
use crate::protocol::EncodedEvent;
use crate::routing::SubscriptionSpec;

/// A frame handed to a session, in the order to write it.
#[derive(Debug)]
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
        attempt: u32,
    },
    /// The replay of `sub` is done; live events follow.
    ReplayComplete {
        sub: Arc<SubscriptionHandle>,
        last_cursor: u64,
    },
    /// Retention removed cursors `from..=to` before `sub` (durable) resolved them.
    Gap {
        sub: Arc<SubscriptionHandle>,
        from: u64,
        to: u64,
    },
}

/// What became of frames offered to a session.
pub enum Handed {
    Taken,
    /// Its mailbox is full: the frames come back, to be offered again later.
    Full(Vec<OutFrame>),
    /// The session is gone.
    Closed,
}

/// Where a session receives its frames: implemented by the session actor's address,
/// so this layer never names the actor.
pub trait FrameSink: Send + Sync + fmt::Debug {
    /// Offers `frames` without waiting.
    fn offer(&self, frames: Vec<OutFrame>) -> Handed;
}

/// Identifies one WebSocket connection for the life of the process.
pub type SessionId = u64;

/// Where a session's frames go, shared by all its subscriptions: its mailbox, and the
/// count of frames handed to it and not yet written ([`Backlog`]).
#[derive(Clone, Debug)]
pub struct SessionSink {
    pub frames: Arc<dyn FrameSink>,
    pub backlog: Arc<Backlog>,
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

/// Stand-ins for the delivery state machines' and the actors' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{FrameSink, Handed, OutFrame, SessionSink, SubscriptionHandle};
    use crate::routing::SubscriptionSpec;

    /// A session that takes every frame and drops it.
    #[derive(Debug)]
    struct NullSession;

    impl FrameSink for NullSession {
        fn offer(&self, _: Vec<OutFrame>) -> Handed {
            Handed::Taken
        }
    }

    /// A subscription of connection 1 (`spec` as a client sends it) whose frames go
    /// nowhere.
    pub fn subscription(spec: serde_json::Value) -> Arc<SubscriptionHandle> {
        let sink = SessionSink {
            frames: Arc::new(NullSession),
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
