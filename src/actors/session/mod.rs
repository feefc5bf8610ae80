//! The session actor: one per WebSocket connection, and the only folder that touches
//! `actix_web_actors::ws` (deprecated upstream; keep it swappable).
//!
//! Into a session: WebSocket frames (a stream, `read.rs`), `WriteFrames` from its
//! delivery worker (`write.rs`), [`CloseSession`] from the router. Out of a session:
//! `Connect`, `Subscribe`, `Unsubscribe` and `Disconnect` to the router; publishes
//! through the [`Ingress`]; `Ack` / `Nack` (`commands.rs`) and `Resume` (`write.rs`)
//! to its delivery worker.
//!
//! Lifecycle: [`upgrade`] takes a connection permit and starts the actor; `started`
//! registers with the router (stopping if that fails) and makes the connect-time
//! subscription; a heartbeat pings every interval and closes a connection silent for
//! two; `stopping` deactivates every subscription and deregisters.
//!
//! Replies leave in the order the commands arrived ([`ReplyOrder`]). A bad command is
//! answered with an `error` and never closes the connection, unless the client keeps
//! sending them past the error budget (close code 1008); `rate_limited` is not charged
//! to it, as the frame was valid.

mod commands;
mod dialect;
mod read;
mod read_pause;
mod turn;
mod upgrade;
mod write;

pub use upgrade::{seed_session_ids, upgrade, ConnectQuery, Speaks};

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use serde_json::Value;

use super::delivery::DeliveryWorker;
use super::ingress::Ingress;
use super::router::{CloseSession, Connect, Disconnect, Router};
use crate::auth::Principal;
use crate::config::Config;
use crate::delivery::{SessionId, SubscriptionHandle};
use crate::error::{ErrorCode, ProtocolError};
use crate::metrics::{ConnectionPermit, Metrics};
use crate::protocol::dialect::Dialect;
use crate::protocol::order::ReplyOrder;
use crate::protocol::Reply;
use crate::rate_limit::PublishBudget;
use crate::routing::SubscriptionSpec;

/// Messages a session's mailbox holds before delivery workers see it as slow.
const MAILBOX_CAPACITY: usize = 64;

/// What every session of a server shares; the HTTP layer builds it once.
#[derive(Clone)]
pub struct Shared {
    pub router: Addr<Router>,
    /// A session talks to the worker that serves it (`delivery::worker_for`).
    pub workers: Arc<[Addr<DeliveryWorker>]>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub ingress: Ingress,
}

pub struct Session {
    id: SessionId,
    peer: String,
    /// One per server, not a copy per connection (each copy of an address allocates).
    shared: Arc<Shared>,
    /// Who authenticated the upgrade, with their grants.
    principal: Arc<Principal>,
    /// The client dialect it reads and writes frames in; `None` for the native protocol.
    dialect: Option<Dialect>,
    subscriptions: HashMap<String, Arc<SubscriptionHandle>>,
    /// Made once the router has registered the session. Boxed: a spec is about 650
    /// bytes, and most connections have none or drop it at once, so every idle
    /// connection would carry that space for nothing.
    connect_subscription: Option<Box<SubscriptionSpec>>,
    /// Replies leave in command order, though publishes are answered after their commit.
    replies: ReplyOrder,
    /// Publishes sent to the router and not yet answered.
    publishes_in_flight: usize,
    /// Tokens for publishing: one per event (`limits.publish_rate_per_sec`); the
    /// budget of the TCP connection the session was upgraded on.
    budget: Arc<PublishBudget>,
    /// Bad frames in the current window.
    errors: ErrorBudget,
    read: read::Reading,
    write: write::Writing,
    _permit: ConnectionPermit,
}

type Ctx = ws::WebsocketContext<Session>;

impl Session {
    /// Sends the reply to a command, after any reply still owed to an earlier one.
    fn send(&mut self, ctx: &mut Ctx, reply: &Reply) {
        let Some(text) = self.reply_text(reply) else {
            return; // The dialect has no such frame.
        };
        if let Some(text) = self.replies.ready(text) {
            ctx.text(text);
        }
    }

    /// A reply's frame in the session's dialect; `None` when the dialect has none.
    fn reply_text(&mut self, reply: &Reply) -> Option<String> {
        match &mut self.dialect {
            None => Some(reply.to_text()),
            Some(dialect) => dialect.reply(reply),
        }
    }

    /// Settles a reply reserved earlier; writes whatever is now in order.
    fn settle(&mut self, ctx: &mut Ctx, ticket: u64, reply: Option<Reply>) {
        let text = reply.and_then(|r| self.reply_text(&r));
        for text in self.replies.settle(ticket, text) {
            ctx.text(text);
        }
        if !self.read_blocked() && !self.read.deferred.is_empty() {
            // Frames held back while too many replies or publishes were owed.
            self.handle_deferred_soon(ctx);
        }
    }

    /// Owes `limits.max_pending_replies` replies: read no more frames until some are
    /// written. Replies queue behind a publish awaiting its commit, and a client that
    /// pipelines pings behind a stalled publish must not grow that queue without end;
    /// the bytes wait in its socket instead (TCP back-pressure), as publishes do.
    fn replies_full(&self) -> bool {
        self.replies.owed() >= self.shared.config.limits.max_pending_replies
    }

    /// Reads no more frames: too many replies owed, or too many publishes awaiting
    /// their commit (the bytes wait in the socket; commits go on grouping what is in
    /// flight, and each answer lets the next frame in).
    fn read_blocked(&self) -> bool {
        self.replies_full() || self.publishes_in_flight >= commands::MAX_PIPELINED_PUBLISHES
    }

    fn fail(&mut self, ctx: &mut Ctx, err: &ProtocolError, request_id: Option<Value>) {
        let reply = self.error_reply(ctx, err, request_id);
        self.send(ctx, &reply);
    }

    /// The `error` reply for `err`, counted against the error budget; over the budget
    /// the connection is closed with code 1008. `rate_limited` is not charged: the
    /// frame was valid, and the client was told to retry.
    fn error_reply(
        &mut self,
        ctx: &mut Ctx,
        err: &ProtocolError,
        request_id: Option<Value>,
    ) -> Reply {
        self.shared.metrics.protocol_errors.fetch_add(1, Relaxed);
        let reply = Reply::error(err, request_id);
        let limits = &self.shared.config.limits;
        if err.code != ErrorCode::RateLimited
            && self.errors.record(
                Instant::now(),
                Duration::from_millis(limits.error_window_ms),
                limits.max_errors_per_window,
            )
        {
            log::info!(
                "session {} ({}): too many bad frames, closing",
                self.id,
                self.peer
            );
            // Once this reply has been written.
            ctx.run_later(Duration::ZERO, |act, ctx| {
                act.close_with(ctx, CloseCode::Policy, "too many invalid frames");
            });
        }
        reply
    }

    fn close_with(&self, ctx: &mut Ctx, code: CloseCode, why: &str) {
        ctx.close(Some(CloseReason {
            code,
            description: Some(why.into()),
        }));
        ctx.stop();
    }
}

impl Actor for Session {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        log::debug!(
            "session {} connected from {} as {} ({})",
            self.id,
            self.peer,
            self.principal.name,
            self.dialect.as_ref().map_or("native", Dialect::name)
        );
        if let Some(expires) = self.principal.expires_at {
            // A JWT ends the connection it opened when it expires.
            let left = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
            ctx.run_later(left, |act, ctx| {
                log::info!("session {} ({}): token expired, closing", act.id, act.peer);
                act.close_with(ctx, CloseCode::Policy, "token expired");
            });
        }
        let interval = self.shared.config.heartbeat_interval();
        ctx.run_interval(interval, move |act, ctx| {
            if act.read.last_seen.elapsed() > interval * 2 {
                log::info!(
                    "session {} ({}): heartbeat timeout, closing",
                    act.id,
                    act.peer
                );
                act.close_with(ctx, CloseCode::Away, "heartbeat timeout");
            } else {
                ctx.ping(b"");
                if let Some(dialect) = &act.dialect {
                    // The JSON heartbeat the dialect's clients expect as well.
                    let now =
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                    ctx.text(dialect.heartbeat(&now));
                }
            }
        });
        let connect = Connect {
            session_id: self.id,
            peer: self.peer.clone(),
            close: ctx.address().recipient(),
        };
        ctx.wait(
            self.shared
                .router
                .send(connect)
                .into_actor(self)
                .map(|res, act, ctx| {
                    if res != Ok(true) {
                        act.close_with(ctx, CloseCode::Again, "server is shutting down");
                        return;
                    }
                    if let Some(spec) = act.connect_subscription.take() {
                        act.subscribe(*spec, None, ctx);
                    }
                }),
        );
    }

    fn stopping(&mut self, _: &mut Ctx) -> Running {
        for handle in self.subscriptions.values() {
            handle.deactivate();
        }
        let disconnect = Disconnect {
            session_id: self.id,
        };
        if let Err(SendError::Full(msg)) = self.shared.router.try_send(disconnect) {
            // Bounded wait for room rather than losing the deregistration.
            let router = self.shared.router.clone();
            actix::spawn(async move {
                let _ = router.send(msg).await;
            });
        }
        log::debug!("session {} ({}) closed", self.id, self.peer);
        Running::Stop
    }
}

impl Handler<CloseSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Ctx) {
        self.close_with(ctx, CloseCode::Away, &msg.reason);
    }
}

/// Counts bad frames in a fixed window.
#[derive(Debug)]
struct ErrorBudget {
    window_start: Instant,
    count: u32,
}

impl Default for ErrorBudget {
    fn default() -> Self {
        ErrorBudget {
            window_start: Instant::now(),
            count: 0,
        }
    }
}

impl ErrorBudget {
    /// Records one error at `now`; true when the budget is exceeded.
    fn record(&mut self, now: Instant, window: Duration, max: u32) -> bool {
        if now.duration_since(self.window_start) > window {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_budget_resets_per_window() {
        let t = Instant::now();
        let w = Duration::from_secs(10);
        let mut b = ErrorBudget {
            window_start: t,
            count: 0,
        };
        assert!(!b.record(t, w, 2));
        assert!(!b.record(t, w, 2));
        assert!(b.record(t, w, 2));
        assert!(!b.record(t + Duration::from_secs(11), w, 2));
    }
}
