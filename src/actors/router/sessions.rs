//! Sessions and their subscriptions: registering a connection, adding a subscription
//! to the index (with its replay or durable state first), and taking them out again.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;

use super::{CloseSession, DurableHold, Router, SessionEntry};
use crate::actors::delivery::{worker_for, SessionClosed};
use crate::actors::send_or_wait;
use crate::actors::store::{OpenDurable, ReleaseDurable, RenewDurables};
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
        // After every dispatch already sent for it (one mailbox, in order). Not bounded
        // by the mailbox: one small message per closed connection.
        worker_for(msg.session_id, &self.workers).do_send(SessionClosed {
            session: msg.session_id,
        });
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
                self.start_replay(handle.clone(), replay, HashSet::new(), None, ctx);
            }
            self.index_subscription(handle);
            return Box::pin(actix::fut::ready(Ok(())));
        };
        let key = (handle.principal.clone(), name.clone());
        if self.active_durables.contains_key(&key) {
            let err = ProtocolError::new(
                ErrorCode::InvalidSubscription,
                format!("durable subscription `{name}` is already active on another connection"),
            );
            return Box::pin(actix::fut::ready(Err(err)));
        }
        let hold = DurableHold {
            session: handle.session_id,
            claimed: false,
        };
        self.active_durables.insert(key.clone(), hold);
        // A new durable subscription starts at `from_cursor`, or with what comes next.
        let floor = match handle.spec.replay {
            Some(Replay::AfterCursor(c)) => c,
            _ => self.last_queued,
        };
        let open = self.store.send(OpenDurable {
            principal: key.0.clone(),
            name,
            floor,
            matcher: handle.spec.matcher.clone(),
            owner: self.durable_owner(handle.session_id),
            lease: self.config.cluster.lease_ttl(),
        });
        Box::pin(open.into_actor(self).map(move |res, act, ctx| {
            let opened = match res {
                Ok(Ok(Some(opened))) => opened,
                Ok(Ok(None)) => {
                    act.active_durables.remove(&key);
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidSubscription,
                        format!(
                            "durable subscription `{}` is already active on another \
                             connection (of another node)",
                            key.1
                        ),
                    ));
                }
                Ok(Err(e)) => Err(act.durable_failed(&key, e.code(), e.to_string()))?,
                Err(e) => Err(act.durable_failed(&key, ErrorCode::Internal, e.to_string()))?,
            };
            if !act.sessions.contains_key(&handle.session_id) || !handle.is_active() {
                act.release_durable(key, handle.session_id);
                return Ok(());
            }
            if let Some(hold) = act.active_durables.get_mut(&key) {
                hold.claimed = true;
            }
            let state = opened.state;
            let resolved: HashSet<u64> = state.acked.into_iter().collect();
            act.start_replay(
                handle.clone(),
                Replay::AfterCursor(state.floor),
                resolved,
                opened.lost,
                ctx,
            );
            act.index_subscription(handle);
            Ok(())
        }))
    }
}

impl Router {
    fn durable_failed(
        &mut self,
        key: &(String, String),
        code: ErrorCode,
        error: String,
    ) -> ProtocolError {
        self.active_durables.remove(key);
        log::error!(
            "durable subscription {}/{} not opened: {error}",
            key.0,
            key.1
        );
        ProtocolError::new(code, format!("durable state unavailable: {error}"))
    }

    /// Who holds a durable subscription opened on `session`, cluster-wide.
    pub(super) fn durable_owner(&self, session: SessionId) -> String {
        format!("{}/{session}", self.config.cluster.node_name)
    }

    /// Renews this node's claims on its durable subscriptions (every cluster beat);
    /// a connection whose claim another one took is closed.
    pub(super) fn renew_durables(&mut self, ctx: &mut Context<Self>) {
        if self.active_durables.is_empty() {
            return;
        }
        // Only names already opened: one still opening is claimed by its `OpenDurable`,
        // and renewing it here could find the previous holder's lease and close it.
        let held: Vec<_> = self
            .active_durables
            .iter()
            .filter(|(_, hold)| hold.claimed)
            .map(|(key, hold)| (key.clone(), hold.session))
            .collect();
        if held.is_empty() {
            return;
        }
        let claims = held
            .iter()
            .map(|((p, n), session)| (p.clone(), n.clone(), self.durable_owner(*session)))
            .collect();
        let renew = self.store.send(RenewDurables {
            claims,
            lease: self.config.cluster.lease_ttl(),
        });
        ctx.spawn(renew.into_actor(self).map(move |lost, act, _| {
            for i in lost.unwrap_or_default() {
                let Some(((principal, name), session)) = held.get(i) else {
                    continue;
                };
                log::warn!("durable subscription {principal}/{name}: claimed elsewhere, closing");
                if let Some(s) = act.sessions.get(session) {
                    let _ = s.close.try_send(CloseSession {
                        reason: format!(
                            "durable subscription `{name}` was taken over by another \
                             connection; reconnect to resume"
                        ),
                    });
                }
            }
        }));
    }

    /// Forgets a durable subscription and gives up its claim in the store.
    fn release_durable(&mut self, key: (String, String), session: SessionId) {
        if self.active_durables.remove(&key).is_none() {
            return;
        }
        let owner = self.durable_owner(session);
        let (principal, name) = key;
        let release = ReleaseDurable {
            principal,
            name,
            owner,
        };
        send_or_wait(&self.store.clone().recipient(), release);
    }

    fn index_subscription(&mut self, handle: Arc<SubscriptionHandle>) {
        self.index
            .insert(handle.spec.matcher.topic_prefixes(), handle);
    }

    /// Takes subscriptions out of the index; a durable one can be opened again.
    fn remove_subscriptions(&mut self, gone: impl Fn(&SubscriptionHandle) -> bool) {
        let mut released = Vec::new();
        self.index.retain(|s| {
            if !gone(s) {
                return true;
            }
            if let Some(name) = &s.spec.durable {
                released.push(((s.principal.clone(), name.clone()), s.session_id));
            }
            false
        });
        for (key, session) in released {
            self.release_durable(key, session);
        }
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
