//! Commands: what a session does with each decoded frame. Publishes go through the
//! shared [`Ingress`](crate::actors::ingress::Ingress); subscribe and unsubscribe use
//! `ctx.wait`, so no frame is read before they are in effect; acks and nacks go to the
//! session's delivery worker.

use actix::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;

use super::write::end_turn;
use super::{Ctx, Session};
use crate::actors::delivery::{self, worker_for, WriteFrames};
use crate::actors::ingress::Shape;
use crate::actors::router;
use crate::delivery::{SessionSink, SubscriptionHandle};
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::{decode, Command, PublishResult, Reply};
use crate::routing::subscription::SubscriptionLimits;
use crate::routing::SubscriptionSpec;

/// Publishes of one connection awaiting their commit before it stops reading frames.
pub(super) const MAX_PIPELINED_PUBLISHES: usize = 64;
/// Published events a session reads and validates before it ends its context's turn
/// (it waits on [`super::turn::end_turn`]): a `publish_batch` frame may hold hundreds
/// of events, and the other connections of its HTTP worker thread, a critical
/// publisher's among them, should not wait for all of them.
const READ_TURN_EVENTS: usize = 256;

impl Session {
    pub(super) fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        if self.dialect.is_some() {
            return self.on_dialect_text(text, ctx);
        }
        let decoded = decode(text, self.shared.config.limits.max_command_bytes);
        let request_id = decoded.request_id;
        let command = match decoded.command {
            Ok(c) => c,
            Err(e) => return self.fail(ctx, &e, request_id),
        };
        match command {
            Command::Ping => self.send(
                ctx,
                &Reply::Pong {
                    server_time: chrono::Utc::now()
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    request_id,
                },
            ),
            Command::Publish { event } => {
                self.publish(&[event], text.len(), Shape::One, request_id, ctx)
            }
            Command::PublishBatch { events } => {
                self.publish(&events, text.len(), Shape::Batch, request_id, ctx)
            }
            Command::Subscribe { request } => match SubscriptionSpec::from_request(request) {
                Ok(spec) => self.subscribe(spec, request_id, ctx),
                Err(e) => self.fail(ctx, &e, request_id),
            },
            Command::Unsubscribe { subscription_id } => {
                self.unsubscribe(subscription_id, request_id, ctx)
            }
            Command::Ack {
                subscription_id,
                event_ids,
            } => match self.acked_subscription(&subscription_id) {
                Ok(sub) => {
                    let ticket = self.replies.reserve();
                    let ack = worker_for(self.id, &self.shared.workers)
                        .send(delivery::Ack { sub, event_ids });
                    ctx.spawn(ack.into_actor(self).map(move |res, act, ctx| {
                        let err = match res {
                            Ok(unknown) if unknown.is_empty() => {
                                return act.settle(ctx, ticket, None)
                            }
                            Ok(unknown) => ProtocolError::new(
                                ErrorCode::UnknownEvent,
                                format!(
                                    "not in flight on `{subscription_id}`: {}",
                                    unknown.join(", ")
                                ),
                            ),
                            Err(e) => worker_unavailable(e),
                        };
                        let reply = act.error_reply(ctx, &err, request_id);
                        act.settle(ctx, ticket, Some(reply));
                    }));
                }
                Err(e) => self.fail(ctx, &e, request_id),
            },
            Command::Nack {
                subscription_id,
                event_id,
                requeue,
                delay_ms,
            } => match self.acked_subscription(&subscription_id).and_then(|sub| {
                let delay = self
                    .subscription_limits()
                    .nack_delay(delay_ms.unwrap_or(0))?;
                Ok((sub, delay))
            }) {
                Ok((sub, delay)) => {
                    let nack = worker_for(self.id, &self.shared.workers).send(delivery::Nack {
                        sub,
                        event_id,
                        requeue,
                        delay,
                    });
                    let ticket = self.replies.reserve();
                    ctx.spawn(nack.into_actor(self).map(move |res, act, ctx| {
                        let err = match res {
                            Ok(Ok(())) => return act.settle(ctx, ticket, None),
                            Ok(Err(e)) => e,
                            Err(e) => worker_unavailable(e),
                        };
                        let reply = act.error_reply(ctx, &err, request_id);
                        act.settle(ctx, ticket, Some(reply));
                    }));
                }
                Err(e) => self.fail(ctx, &e, request_id),
            },
        }
    }

    /// What one subscription (and a `nack`) may ask for.
    fn subscription_limits(&self) -> SubscriptionLimits {
        SubscriptionLimits::from(&self.shared.config.limits)
    }

    /// The subscription an `ack`/`nack` names, if it exists and uses acknowledgements.
    fn acked_subscription(&self, id: &str) -> Result<Arc<SubscriptionHandle>, ProtocolError> {
        match self.subscriptions.get(id) {
            Some(h) if h.spec.ack.is_some() => Ok(h.clone()),
            Some(_) => Err(ProtocolError::new(
                ErrorCode::InvalidSubscription,
                format!("subscription `{id}` does not use acknowledgements"),
            )),
            None => Err(unknown_subscription(id)),
        }
    }

    /// A publish goes through the ingress like every other; its reply keeps its
    /// place in line while frames go on being read (several publishes of one
    /// connection share a group commit), up to [`MAX_PIPELINED_PUBLISHES`].
    fn publish(
        &mut self,
        raw: &[&RawValue],
        bytes: usize,
        shape: Shape,
        request_id: Option<Value>,
        ctx: &mut Ctx,
    ) {
        let ingress = &self.shared.ingress;
        let admitted = match ingress.admit(raw, bytes, shape, &self.principal, &self.budget) {
            Ok(admitted) => admitted,
            Err(e) => return self.fail(ctx, &e, request_id),
        };
        let pause = admitted.pause();
        let fut = ingress.publish(admitted);
        let ticket = self.replies.reserve();
        self.publishes_in_flight += 1;
        let answer = fut.into_actor(self).map(move |merged, act, ctx| {
            act.publishes_in_flight -= 1;
            let reply = match shape {
                Shape::Batch => Reply::PublishedBatch {
                    results: merged.into_iter().map(PublishResult::from).collect(),
                    request_id,
                },
                Shape::One => match merged.into_iter().next() {
                    Some(Ok(ok)) => Reply::Published {
                        event_id: ok.event_id,
                        cursor: ok.cursor,
                        duplicate: ok.duplicate,
                        request_id,
                    },
                    Some(Err(e)) => act.error_reply(ctx, &e, request_id),
                    None => {
                        let e =
                            ProtocolError::new(ErrorCode::Internal, "router returned no result");
                        act.error_reply(ctx, &e, request_id)
                    }
                },
            };
            act.settle(ctx, ticket, Some(reply));
        });
        // Past MAX_PIPELINED_PUBLISHES the session reads no more frames until some are
        // answered (`read_blocked`). Not `ctx.wait` on this one: that stopped the whole
        // actor, so each later publish waited for its own commit and a deep pipeline
        // committed one event at a time.
        ctx.spawn(answer);
        self.read.events += raw.len();
        if let Some(pause) = pause {
            // Urgent events are late and this publish was all low: read nothing more
            // for a while; the next frames wait in the socket, and this connection's
            // deliveries and replies go on being written.
            self.read.pause.pause_for(pause);
        }
        if self.read.events >= READ_TURN_EVENTS {
            // Let the other connections of this thread have a turn first.
            self.read.events = 0;
            end_turn(ctx);
        }
    }

    pub(super) fn subscribe(
        &mut self,
        mut spec: SubscriptionSpec,
        request_id: Option<Value>,
        ctx: &mut Ctx,
    ) {
        if let Err(e) = self.subscription_limits().check(&spec) {
            return self.fail(ctx, &e, request_id);
        }
        if let Some(grant) = self.principal.read_grant() {
            if let Err(e) = spec.restrict_to(&self.principal.name, grant) {
                return self.fail(ctx, &e, request_id);
            }
        }
        let max = self.shared.config.limits.max_subscriptions_per_connection;
        if self.subscriptions.len() >= max {
            let err = ProtocolError::new(
                ErrorCode::TooManySubscriptions,
                format!("this connection already has {max} subscriptions, the limit"),
            );
            return self.fail(ctx, &err, request_id);
        }
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        if self.subscriptions.contains_key(&id) {
            let err = ProtocolError::new(
                ErrorCode::InvalidSubscription,
                format!("subscription id `{id}` is already in use on this connection"),
            );
            return self.fail(ctx, &err, request_id);
        }
        let handle = Arc::new(SubscriptionHandle::new(
            self.id,
            self.principal.name.clone(),
            id.clone(),
            spec,
            SessionSink {
                frames: Arc::new(ctx.address().recipient::<WriteFrames>()),
                backlog: self.write.backlog.clone(),
            },
        ));
        self.subscriptions.insert(id.clone(), handle.clone());
        let fut = self.shared.router.send(router::Subscribe { handle });
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            let refused = match res {
                Ok(Ok(())) => {
                    let reply = Reply::Subscribed {
                        subscription_id: id,
                        request_id,
                    };
                    return act.send(ctx, &reply);
                }
                Ok(Err(e)) => e,
                Err(e) => {
                    ProtocolError::new(ErrorCode::Internal, format!("router unavailable: {e}"))
                }
            };
            if let Some(h) = act.subscriptions.remove(&id) {
                h.deactivate();
            }
            act.fail(ctx, &refused, request_id);
        }));
    }

    pub(super) fn unsubscribe(
        &mut self,
        subscription_id: String,
        request_id: Option<Value>,
        ctx: &mut Ctx,
    ) {
        let Some(handle) = self.subscriptions.remove(&subscription_id) else {
            return self.fail(ctx, &unknown_subscription(&subscription_id), request_id);
        };
        // Acks this connection sent before are still on their way to the delivery
        // worker; an empty one behind them is a barrier, so they are taken (and a
        // durable subscription's recorded) before the subscription ends.
        let barrier = (handle.spec.ack.is_some()).then(|| {
            worker_for(self.id, &self.shared.workers).send(delivery::Ack {
                sub: handle.clone(),
                event_ids: Vec::new(),
            })
        });
        let router = self.shared.router.clone();
        let session_id = self.id;
        let id = subscription_id.clone();
        let fut = async move {
            if let Some(barrier) = barrier {
                let _ = barrier.await;
            }
            // Deactivating before the reply guarantees no frame of it is written after.
            handle.deactivate();
            let _ = router
                .send(router::Unsubscribe {
                    session_id,
                    subscription_id: id,
                })
                .await;
        };
        ctx.wait(fut.into_actor(self).map(move |_, act, ctx| {
            act.send(
                ctx,
                &Reply::Unsubscribed {
                    subscription_id,
                    request_id,
                },
            );
        }));
    }
}

fn worker_unavailable(e: MailboxError) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        format!("delivery worker unavailable: {e}"),
    )
}

fn unknown_subscription(id: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnknownSubscription,
        format!("no subscription `{id}` on this connection"),
    )
}
