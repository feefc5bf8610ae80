//! Dead letters, from the router's side: store them, announce them on
//! `switchyard.dead_letter`, and the first step of a retry (find the live subscription;
//! when it is gone, the HTTP handler publishes the event again with [`super::publish`]
//! and [`super::Dedupe::Skip`]).
//!
//! Notices are routed live and never stored: a storm of dead letters then costs no
//! log writes and pushes no event out of retention, and each reader can get the form
//! its grant allows (the dead event itself only when it may read the event's topic).

use std::sync::Arc;

use actix::prelude::*;

use super::{Router, SessionId};
use crate::actors::delivery::{worker_index, DeadLettered, DispatchItem};
use crate::actors::send_or_wait;
use crate::actors::store::{AddDeadLetter, DurableAcked};
use crate::delivery::SubscriptionHandle;
use crate::error::ProtocolError;
use crate::protocol::{EncodedEvent, Event};
use crate::routing::condition::MatchInput;
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

/// Notices waiting for a routing turn; past this many a notice is let go (the dead
/// letter it announces is stored all the same).
const MAX_PENDING_NOTICES: usize = 4096;

/// A dead-letter notice, in the two forms a reader may get: with the dead event for
/// readers whose grant covers its topic, with its metadata only for the others.
pub(super) struct Notice {
    full: Arc<EncodedEvent>,
    meta: Arc<EncodedEvent>,
    about_topic: String,
}

impl Notice {
    /// The notice of a stored dead letter. Cursor 0: notices are not in the log, so
    /// they cost no write, count against no retention and are never replayed.
    fn of(dl: &DeadLetter) -> Result<Notice, ProtocolError> {
        let ev = &dl.event.event;
        let mut payload = serde_json::json!({
            "id": dl.id,
            "event_id": ev.id,
            "event_topic": ev.topic,
            "event_type": ev.event_type,
            "event_priority": ev.priority,
            "event_cursor": ev.cursor,
            "principal": dl.principal,
            "subscription": dl.subscription_id,
            "connection_id": dl.connection_id,
            "reason": dl.reason,
            "attempts": dl.attempts,
            "dead_at": dl.dead_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let envelope = |payload: &serde_json::Value| {
            let notice = serde_json::json!({
                "type": "dead_letter",
                "topic": DEAD_LETTER_TOPIC,
                "priority": "high",
                "source": "switchyard",
                "payload": payload,
            });
            Event::from_json(notice, "switchyard")
        };
        let meta = envelope(&payload)?;
        payload["event"] = serde_json::from_str(&dl.event.json).unwrap_or_default();
        let mut full = envelope(&payload)?;
        // One notice, two forms: the same id, so an ack of either resolves it.
        full.id.clone_from(&meta.id);
        Ok(Notice {
            full: EncodedEvent::new(full),
            meta: EncodedEvent::new(meta),
            about_topic: ev.topic.clone(),
        })
    }
}

impl Handler<DeadLettered> for Router {
    type Result = ();

    fn handle(&mut self, msg: DeadLettered, ctx: &mut Context<Self>) {
        let dead_letter = NewDeadLetter {
            event: msg.event,
            principal: msg.principal,
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
    /// Announces a stored dead letter to the subscribers of `switchyard.dead_letter`.
    fn announce(
        &mut self,
        res: Result<Result<DeadLetter, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        match res {
            Ok(Ok(dl)) => match Notice::of(&dl) {
                Ok(_) if self.notices.len() >= MAX_PENDING_NOTICES => {
                    log::warn!(
                        "dead letter {} not announced: too many notices waiting",
                        dl.id
                    );
                }
                Ok(notice) => {
                    self.notices.push_back(notice);
                    self.schedule_drain(ctx);
                }
                Err(e) => log::error!("dead-letter notice invalid: {e}"),
            },
            Ok(Err(e)) => log::error!("dead letter not stored: {e}"),
            Err(e) => log::error!("dead letter not stored, store unavailable: {e}"),
        }
    }

    /// Routes the waiting notices into `batches` (one per worker), each subscriber
    /// getting the form its read grant allows.
    pub(super) fn route_notices(&mut self, batches: &mut [Vec<DispatchItem>]) {
        let workers = batches.len();
        while let Some(notice) = self.notices.pop_front() {
            let full = MatchInput::new(&notice.full.event);
            let meta = MatchInput::new(&notice.meta.event);
            self.index.for_each_candidate(DEAD_LETTER_TOPIC, |sub| {
                let (event, input) = if sub.spec.matcher.may_read(&notice.about_topic) {
                    (&notice.full, &full)
                } else {
                    (&notice.meta, &meta)
                };
                if sub.spec.matcher.test(input) != Ok(true) {
                    return;
                }
                let items = &mut batches[worker_index(sub.session_id, workers)];
                match items.last_mut() {
                    Some(item) if Arc::ptr_eq(&item.event, event) => item.subs.push(sub.clone()),
                    _ => items.push(DispatchItem {
                        event: event.clone(),
                        subs: vec![sub.clone()],
                    }),
                }
            });
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
