//! Dead letters, from the router's side: store them, announce them on
//! `switchyard.dead_letter`, and the first step of a retry (find the live subscription;
//! when it is gone, the HTTP handler publishes the event again with [`super::publish`]
//! and [`super::Dedupe::Skip`]).

use std::sync::Arc;

use actix::prelude::*;

use super::{Dedupe, Router, SessionId};
use crate::actors::delivery::DeadLettered;
use crate::actors::send_or_wait;
use crate::actors::store::{AddDeadLetter, DurableAcked};
use crate::delivery::SubscriptionHandle;
use crate::protocol::Event;
use crate::store::{DeadLetter, NewDeadLetter, StoreError};

/// The live subscription a dead letter came from, if it is still open.
#[derive(Message)]
#[rtype(result = "Option<Arc<SubscriptionHandle>>")]
pub struct FindSubscription {
    pub connection_id: SessionId,
    pub subscription_id: String,
}

/// Topic of dead-letter notices.
pub const DEAD_LETTER_TOPIC: &str = "switchyard.dead_letter";

impl Router {
    /// Accepts an event of the router's own and commits it; nobody waits for the reply.
    fn publish_own(&mut self, event: Event, ctx: &mut Context<Self>) {
        match self.accept(event, Dedupe::Check) {
            Ok(ok) => {
                let (reply, _) = tokio::sync::oneshot::channel();
                self.commit_waiters.push((reply, vec![Ok(ok)]));
                self.commit(ctx);
            }
            Err(e) => log::warn!("dead-letter notice not published: {e}"),
        }
    }
}

impl Handler<DeadLettered> for Router {
    type Result = ();

    fn handle(&mut self, msg: DeadLettered, ctx: &mut Context<Self>) {
        let dead_letter = NewDeadLetter {
            event: msg.event,
            subscription_id: msg.subscription_id,
            connection_id: msg.connection_id,
            reason: msg.reason.as_str().to_owned(),
            attempts: msg.attempts,
        };
        let add = self.store.send(AddDeadLetter { dead_letter });
        let durable = msg.durable;
        ctx.spawn(add.into_actor(self).map(move |res, act, ctx| {
            if let (Ok(Ok(dl)), Some((principal, name))) = (&res, durable) {
                let resolved = DurableAcked {
                    principal,
                    name,
                    cursors: vec![dl.event.event.cursor],
                    compact_with: None,
                };
                send_or_wait(&act.store.clone().recipient(), resolved);
            }
            act.announce(res, ctx);
        }));
    }
}

impl Router {
    /// Publishes the notice of a stored dead letter.
    fn announce(
        &mut self,
        res: Result<Result<DeadLetter, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        match res {
            // A dead notice gets no notice of its own: a subscriber that never acks
            // notices would otherwise feed itself forever.
            Ok(Ok(dl)) if dl.event.event.topic == DEAD_LETTER_TOPIC => {}
            Ok(Ok(dl)) => {
                let notice = serde_json::json!({
                    "type": "dead_letter",
                    "topic": DEAD_LETTER_TOPIC,
                    "priority": "high",
                    "source": "switchyard",
                    "payload": dl.to_json(),
                });
                match Event::from_json(notice, "switchyard") {
                    Ok(event) => self.publish_own(event, ctx),
                    Err(e) => log::error!("dead-letter notice invalid: {e}"),
                }
            }
            Ok(Err(e)) => log::error!("dead letter not stored: {e}"),
            Err(e) => log::error!("dead letter not stored, store unavailable: {e}"),
        }
    }
}

impl Handler<FindSubscription> for Router {
    type Result = Option<Arc<SubscriptionHandle>>;

    fn handle(&mut self, msg: FindSubscription, _: &mut Context<Self>) -> Self::Result {
        self.index
            .iter()
            .find(|s| {
                s.session_id == msg.connection_id && s.id == msg.subscription_id && s.is_active()
            })
            .cloned()
    }
}
