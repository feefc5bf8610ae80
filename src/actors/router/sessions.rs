//! Sessions and their subscriptions: registering a connection, adding a subscription
//! to the index (with its replay or durable state first), and taking them out again.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;

use super::{CloseSession, Router, SessionEntry};
use crate::actors::store::OpenDurable;
use crate::delivery::{SessionId, SubscriptionHandle};
use crate::error::{ErrorCode, ProtocolError};
use crate::routing::Replay;

/// A session opened. Answers `false` when the router is shutting down.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Connect {
    pub session_id: SessionId,
    pub peer: String,
    pub close: Recipient<CloseSession>,
}

/// A session closed: forget it and all its subscriptions.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub session_id: SessionId,
}

/// Add a subscription to the index. Events committed after this is handled match it
/// live; when the subscription asks for a replay, every stored match routed before it
/// is replayed first (no gap, no duplicate). A durable subscription resumes from its
/// stored state: every unresolved match after its floor is replayed.
#[derive(Message)]
#[rtype(result = "Result<(), ProtocolError>")]
pub struct Subscribe {
    pub handle: Arc<SubscriptionHandle>,
}

/// Remove a subscription from the index.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub session_id: SessionId,
    pub subscription_id: String,
}

impl Handler<Connect> for Router {
    type Result = bool;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> bool {
        if self.shutting_down {
            return false;
        }
        self.sessions.insert(
            msg.session_id,
            SessionEntry {
                peer: msg.peer,
                connected_at: Utc::now(),
                close: msg.close,
            },
        );
        true
    }
}

impl Handler<Disconnect> for Router {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.sessions.remove(&msg.session_id);
        self.remove_subscriptions(|s| s.session_id == msg.session_id);
    }
}

impl Handler<Subscribe> for Router {
    type Result = ResponseActFuture<Self, Result<(), ProtocolError>>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        let handle = msg.handle;
        if !self.sessions.contains_key(&handle.session_id) {
            return Box::pin(actix::fut::ready(Ok(())));
        }
        let Some(name) = handle.spec.durable.clone() else {
            if let Some(replay) = handle.spec.replay {
                self.start_replay(handle.clone(), replay, HashSet::new(), ctx);
            }
            self.index_subscription(handle);
            return Box::pin(actix::fut::ready(Ok(())));
        };
        let key = (handle.principal.clone(), name.clone());
        if !self.active_durables.insert(key.clone()) {
            let err = ProtocolError::new(
                ErrorCode::InvalidSubscription,
                format!("durable subscription `{name}` is already active on another connection"),
            );
            return Box::pin(actix::fut::ready(Err(err)));
        }
        // A new durable subscription starts at `from_cursor`, or with what comes next.
        let floor = match handle.spec.replay {
            Some(Replay::AfterCursor(c)) => c,
            _ => self.last_committed,
        };
        let open = self.store.send(OpenDurable {
            principal: key.0.clone(),
            name,
            floor,
            matcher: handle.spec.matcher.clone(),
        });
        Box::pin(open.into_actor(self).map(move |res, act, ctx| {
            let state = match res {
                Ok(Ok(state)) => state,
                Ok(Err(e)) => Err(e.to_string()).map_err(|e| act.durable_failed(&key, e))?,
                Err(e) => Err(e.to_string()).map_err(|e| act.durable_failed(&key, e))?,
            };
            if !act.sessions.contains_key(&handle.session_id) || !handle.is_active() {
                act.active_durables.remove(&key);
                return Ok(());
            }
            let resolved: HashSet<u64> = state.acked.into_iter().collect();
            act.start_replay(
                handle.clone(),
                Replay::AfterCursor(state.floor),
                resolved,
                ctx,
            );
            act.index_subscription(handle);
            Ok(())
        }))
    }
}

impl Router {
    fn durable_failed(&mut self, key: &(String, String), error: String) -> ProtocolError {
        self.active_durables.remove(key);
        log::error!(
            "durable subscription {}/{} not opened: {error}",
            key.0,
            key.1
        );
        ProtocolError::new(
            ErrorCode::Internal,
            format!("durable state unavailable: {error}"),
        )
    }

    fn index_subscription(&mut self, handle: Arc<SubscriptionHandle>) {
        self.index
            .insert(handle.spec.matcher.topic_prefixes(), handle);
    }

    /// Takes subscriptions out of the index; a durable one can be opened again.
    fn remove_subscriptions(&mut self, gone: impl Fn(&SubscriptionHandle) -> bool) {
        let active_durables = &mut self.active_durables;
        self.index.retain(|s| {
            if !gone(s) {
                return true;
            }
            if let Some(name) = &s.spec.durable {
                active_durables.remove(&(s.principal.clone(), name.clone()));
            }
            false
        });
    }
}

impl Handler<Unsubscribe> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.remove_subscriptions(|s| {
            s.session_id == msg.session_id && s.id == msg.subscription_id
        });
    }
}
