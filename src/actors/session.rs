//! The session actor: one per WebSocket connection, and the only file that touches
//! `actix_web_actors::ws` (deprecated upstream; keep it swappable).
//!
//! Into a session: WebSocket frames (as a stream), [`WriteFrames`] from its delivery
//! worker, [`CloseSession`] from the router. Out of a session: commands to the router,
//! `Ack` / `Nack` / `Resume` to its delivery worker.
//!
//! Delivery: handed-over frames wait in the session's `pending` queue, highest
//! priority first among live events, and are written in turns of `WRITE_CHUNK_BYTES`
//! so that one busy subscriber does not hold its HTTP worker thread; published events
//! are read in turns of `READ_TURN_EVENTS` for the same reason.
//!
//! Lifecycle: [`upgrade`] takes a connection permit and starts the actor; `started`
//! registers with the router (stopping if that fails) and makes the connect-time
//! subscription; a heartbeat pings every interval and closes a connection silent for
//! two; `stopping` deactivates every subscription and deregisters.
//! Replies leave in the order the commands arrived ([`ReplyOrder`]). Publishes are
//! pipelined: frames keep being read while up to `MAX_PIPELINED_PUBLISHES` await their
//! commit (so one connection's publishes share group commits); subscribe and
//! unsubscribe use `ctx.wait`, so no frame is read before they are in effect. A bad command is answered with an `error` and never
//! closes the connection, unless the client keeps sending them past the error budget
//! (close code 1008). A frame over `max_frame_bytes` closes with code 1009.
//! Each valid event published costs a token of the connection's [`PublishBudget`]; one
//! that finds none is answered `rate_limited` and never reaches the router. A
//! `rate_limited` answer is not a bad frame: it is not charged to the error budget.
//! A publish of low events alone that overload control slows down
//! ([`crate::overload`]) stops the reading of the socket for a while
//! ([`super::read_pause`]); frames read before that wait in `deferred`, and
//! deliveries, replies and WebSocket pongs go on being written meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::delivery::{self, worker_for, DeliveryWorker, WriteFrames};
use super::read_pause::ReadPause;
use super::router::{self, Dedupe, Router};
use super::turn;
use crate::auth::Principal;
use crate::config::Config;
use crate::delivery::Backlog;
use crate::delivery::{OutFrame, SessionId, SessionSink, SubscriptionHandle};
use crate::error::{ErrorCode, HttpError, ProtocolError};
use crate::http::AppState;
use crate::metrics::{ConnectionPermit, Metrics};
use crate::overload::LowAdmission;
use crate::protocol::order::ReplyOrder;
use crate::protocol::reply::event_frame;
use crate::protocol::Priority;
use crate::protocol::{decode, Command, PublishResult, Reply, ValidatedBatch};
use crate::rate_limit::PublishBudget;
use crate::routing::pattern::Pattern;
use crate::routing::SubscriptionSpec;

/// Messages a session's mailbox holds before delivery workers see it as slow.
const MAILBOX_CAPACITY: usize = 64;
/// Publishes of one connection awaiting their commit before it stops reading frames.
const MAX_PIPELINED_PUBLISHES: usize = 64;
/// Event frame bytes a session queues before it ends its context's turn (it waits on
/// [`turn::end_turn`]), so that the connection writes them and the other connections
/// of this HTTP worker thread get their turn. The WebSocket context encodes every
/// frame queued during a turn into one fresh buffer, grown by doubling, which the HTTP
/// layer copies into its own; without a break one turn could queue all
/// [`MAX_UNWRITTEN_FRAMES`](crate::delivery::MAX_UNWRITTEN_FRAMES) frames a worker
/// hands over (~360 KB of 700-byte events) while every other connection on the thread,
/// a critical publisher's included, waited. The break comes inside a `WriteFrames` too
/// (one holds up to 256 frames, ~180 KB): the rest waits in `Session::pending`.
/// Smaller turns cost throughput: at 16 KB the thread switched connections so often
/// that ten subscribers of a flood fell behind and lost events; at 128 KB they keep up
/// (docs/benchmarks.md, scenario 4).
const WRITE_CHUNK_BYTES: usize = 128 << 10;
/// Published events a session reads and validates before it ends its context's turn
/// (it waits on [`turn::end_turn`]). The WebSocket stream hands over up to 16 frames
/// per turn, and a `publish_batch` frame may hold hundreds of events: without a break,
/// a busy publisher held its HTTP worker thread for milliseconds at a time while the
/// other connections there waited, a critical publisher's among them.
const READ_TURN_EVENTS: usize = 256;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Starts connection ids past any id a previous run of the server handed out (dead
/// letters name the connection they came from), from the wall clock in microseconds.
pub fn seed_session_ids() {
    let micros = chrono::Utc::now().timestamp_micros().max(1) as u64;
    NEXT_SESSION_ID.fetch_max(micros, Relaxed);
}

// ---- messages into a session ----

/// Close the connection with a "going away" close frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub reason: String,
}

/// Connection query parameters (PROTOCOL.md section 1).
#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    pub topics: Option<String>,
    pub kinds: Option<String>,
    pub agent_id: Option<String>,
    pub task_id: Option<String>,
    pub cursor: Option<String>,
}

/// `GET /ws` (and `GET /` with an upgrade): refuses over `max_connections` with 503,
/// refuses a bad connect-time subscription with 400, else starts a [`Session`].
pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<ConnectQuery>,
) -> Result<HttpResponse, HttpError> {
    // Authenticate before anything else: 401 and no upgrade without a valid token.
    let principal = crate::http::authenticate(&req, true)?;
    let query = query.into_inner();
    let mut connect_subscription = connect_subscription(&query)?;
    if let (Some(spec), Some(grant)) = (connect_subscription.as_mut(), principal.read_grant()) {
        spec.restrict_to(&principal.name, grant)?;
    }
    let Some(permit) =
        ConnectionPermit::acquire(&state.metrics, state.config.limits.max_connections)
    else {
        return Err(HttpError::new(
            ErrorCode::TooManyConnections,
            format!(
                "connection limit reached ({} open); retry later",
                state.config.limits.max_connections
            ),
        ));
    };
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let read_pause = ReadPause::default();
    let session = Session {
        id: NEXT_SESSION_ID.fetch_add(1, Relaxed),
        peer,
        router: state.router.clone(),
        workers: state.workers.clone(),
        config: state.config.clone(),
        metrics: state.metrics.clone(),
        principal,
        subscriptions: HashMap::new(),
        last_seen: Instant::now(),
        errors: ErrorBudget::default(),
        connect_subscription,
        fragments: None,
        replies: ReplyOrder::default(),
        publishes_in_flight: 0,
        backlog: Arc::default(),
        unwritten_bytes: 0,
        read_events: 0,
        pending: VecDeque::new(),
        budget: PublishBudget::new(&state.config.limits),
        admission: state.admission.clone(),
        read_pause: read_pause.clone(),
        deferred: VecDeque::new(),
        deferred_due: false,
        read_ended: false,
        _permit: permit,
    };
    ws::WsResponseBuilder::new(session, &req, read_pause.gate(stream))
        .frame_size(state.config.limits.max_frame_bytes)
        .start()
        .map_err(|e| {
            HttpError::new(
                ErrorCode::InvalidRequest,
                format!("WebSocket handshake failed: {e}"),
            )
        })
}

fn connect_subscription(q: &ConnectQuery) -> Result<Option<SubscriptionSpec>, HttpError> {
    let cursor = match q.cursor.as_deref() {
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            HttpError::new(
                ErrorCode::InvalidRequest,
                format!("`cursor` must be an integer, got `{c}`"),
            )
        })?),
        None => None,
    };
    let Some(topics) = q.topics.as_ref().or(q.kinds.as_ref()) else {
        if cursor.is_some() {
            return Err(HttpError::new(
                ErrorCode::InvalidRequest,
                "`cursor` needs `topics`",
            ));
        }
        return Ok(None);
    };
    let topics: Vec<String> = topics
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if topics.is_empty() {
        return Err(HttpError::new(
            ErrorCode::InvalidPattern,
            "`topics` names no pattern",
        ));
    }
    for t in &topics {
        Pattern::parse(t)?;
    }
    Ok(Some(SubscriptionSpec::from_topics(
        topics,
        q.agent_id.clone(),
        q.task_id.clone(),
        cursor,
    )?))
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

/// A message being received in several frames.
struct Fragments {
    binary: bool,
    data: Vec<u8>,
}

pub struct Session {
    id: SessionId,
    peer: String,
    router: Addr<Router>,
    workers: Arc<[Addr<DeliveryWorker>]>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Who authenticated the upgrade, with their grants.
    principal: Arc<Principal>,
    subscriptions: HashMap<String, Arc<SubscriptionHandle>>,
    last_seen: Instant,
    errors: ErrorBudget,
    connect_subscription: Option<SubscriptionSpec>,
    fragments: Option<Fragments>,
    /// Replies leave in command order, though publishes are answered after their commit.
    replies: ReplyOrder,
    /// Publishes sent to the router and not yet answered.
    publishes_in_flight: usize,
    /// Frames delivery workers handed over and this session has not written yet
    /// (shared with them through each subscription's [`SessionSink`]).
    backlog: Arc<Backlog>,
    /// Tokens for publishing: one per event (`limits.publish_rate_per_sec`).
    budget: PublishBudget,
    /// Slows this connection down while it publishes only low events and urgent ones
    /// are late (`limits.urgent_latency_target_us`).
    admission: Arc<LowAdmission>,
    /// Stops reading this connection's socket while `admission` says so.
    read_pause: ReadPause,
    /// Frames the decoder handed over while reading was paused, to handle when it ends.
    /// Only what it had already read: the pause, then `read_pause.hold()` until this
    /// is empty, stop the reading of new bytes.
    deferred: VecDeque<WsItem>,
    /// A `HandleDeferred` is scheduled.
    deferred_due: bool,
    /// The client's stream ended; stop once `deferred` is handled.
    read_ended: bool,
    /// Event frame bytes queued since this session last let its connection write.
    unwritten_bytes: usize,
    /// Published events read since this session last ended its turn
    /// ([`READ_TURN_EVENTS`]).
    read_events: usize,
    /// Frames handed over and not queued on the connection yet: a `WriteFrames` holds
    /// up to 256 (~180 KB), more than one turn should queue (see [`WRITE_CHUNK_BYTES`]).
    pending: VecDeque<OutFrame>,
    _permit: ConnectionPermit,
}

type Ctx = ws::WebsocketContext<Session>;

impl Session {
    /// Sends the reply to a command, after any reply still owed to an earlier one.
    fn send(&mut self, ctx: &mut Ctx, reply: &Reply) {
        if let Some(text) = self.replies.ready(reply.to_text()) {
            ctx.text(text);
        }
    }

    /// Settles a reply reserved earlier; writes whatever is now in order.
    fn settle(&mut self, ctx: &mut Ctx, ticket: u64, reply: Option<Reply>) {
        for text in self.replies.settle(ticket, reply.map(|r| r.to_text())) {
            ctx.text(text);
        }
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
        self.metrics.protocol_errors.fetch_add(1, Relaxed);
        let reply = Reply::error(err, request_id);
        let limits = &self.config.limits;
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

    fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        let decoded = decode(text);
        let request_id = decoded.request_id;
        let command = match decoded.command {
            Ok(c) => c,
            Err(e) => return self.fail(ctx, &e, request_id),
        };
        let max = self.config.limits.max_event_bytes;
        if text.len() > max
            && matches!(
                command,
                Command::Publish { .. } | Command::PublishBatch { .. }
            )
        {
            let what = if matches!(command, Command::Publish { .. }) {
                "event"
            } else {
                "batch"
            };
            let err = ProtocolError::new(
                ErrorCode::PayloadTooLarge,
                format!("{what} is {} bytes, over the limit of {max}", text.len()),
            );
            return self.fail(ctx, &err, request_id);
        }
        match command {
            Command::Ping => self.send(
                ctx,
                &Reply::Pong {
                    server_time: chrono::Utc::now()
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    request_id,
                },
            ),
            Command::Publish { event } => self.publish(&[event], false, request_id, ctx),
            Command::PublishBatch { events } => self.publish(&events, true, request_id, ctx),
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
                    let ack =
                        worker_for(self.id, &self.workers).send(delivery::Ack { sub, event_ids });
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
            } => match self.acked_subscription(&subscription_id) {
                Ok(sub) => {
                    let nack = worker_for(self.id, &self.workers).send(delivery::Nack {
                        sub,
                        event_id,
                        requeue,
                        delay: Duration::from_millis(delay_ms.unwrap_or(0)),
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

    fn publish(
        &mut self,
        raw: &[&RawValue],
        batch: bool,
        request_id: Option<Value>,
        ctx: &mut Ctx,
    ) {
        let max_batch = self.config.limits.max_batch_events;
        if raw.len() > max_batch {
            let err = ProtocolError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "batch of {} events is over the limit of {max_batch}",
                    raw.len()
                ),
            );
            return self.fail(ctx, &err, request_id);
        }
        let mut validated = ValidatedBatch::new(raw, &self.principal.name);
        let principal = self.principal.clone();
        validated.refuse_where(|e| principal.check_publish(&e.topic));
        if !batch {
            if let Some(e) = validated.first_error() {
                let e = e.clone();
                return self.fail(ctx, &e, request_id);
            }
        }
        if let Err(over) = self.budget.take(validated.valid.len()) {
            if !batch {
                self.metrics.rejected_over_rate.fetch_add(1, Relaxed);
                return self.fail(ctx, &over.error, request_id);
            }
            let refused = validated.refuse_after(over.granted, &over.error);
            self.metrics
                .rejected_over_rate
                .fetch_add(refused as u64, Relaxed);
        }
        let events = validated.take_valid();
        let pause = self.admission.admit_events(&events);
        let fut = router::publish(&self.router, &self.metrics, events, Dedupe::Check);
        // Frames keep being read while the commit is pending (several publishes of one
        // connection share a group commit); the reply keeps its place in line.
        let ticket = self.replies.reserve();
        self.publishes_in_flight += 1;
        let answer = fut.into_actor(self).map(move |accepted, act, ctx| {
            act.publishes_in_flight -= 1;
            let merged = validated.merge(accepted);
            let reply = if batch {
                let results = merged.into_iter().map(PublishResult::from).collect();
                Reply::PublishedBatch {
                    results,
                    request_id,
                }
            } else {
                match merged.into_iter().next() {
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
                }
            };
            act.settle(ctx, ticket, Some(reply));
        });
        if self.publishes_in_flight > MAX_PIPELINED_PUBLISHES {
            // Enough in flight: stop reading frames until this one is answered.
            ctx.wait(answer);
        } else {
            ctx.spawn(answer);
        }
        self.read_events += raw.len();
        if let Some(pause) = pause {
            // Urgent events are late and this publish was all low: read nothing more
            // for a while; the next frames wait in the socket, and this connection's
            // deliveries and replies go on being written.
            self.read_pause.pause_for(pause);
        }
        if self.read_events >= READ_TURN_EVENTS {
            // Let the other connections of this thread have a turn first.
            self.read_events = 0;
            end_turn(ctx);
        }
    }

    fn subscribe(&mut self, mut spec: SubscriptionSpec, request_id: Option<Value>, ctx: &mut Ctx) {
        if let Some(grant) = self.principal.read_grant() {
            if let Err(e) = spec.restrict_to(&self.principal.name, grant) {
                return self.fail(ctx, &e, request_id);
            }
        }
        let max = self.config.limits.max_subscriptions_per_connection;
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
                backlog: self.backlog.clone(),
            },
        ));
        self.subscriptions.insert(id.clone(), handle.clone());
        let fut = self.router.send(router::Subscribe { handle });
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

    fn unsubscribe(&mut self, subscription_id: String, request_id: Option<Value>, ctx: &mut Ctx) {
        let Some(handle) = self.subscriptions.remove(&subscription_id) else {
            return self.fail(ctx, &unknown_subscription(&subscription_id), request_id);
        };
        // Deactivating first guarantees no frame of it is written after the reply.
        handle.deactivate();
        let fut = self.router.send(router::Unsubscribe {
            session_id: self.id,
            subscription_id: subscription_id.clone(),
        });
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

    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut Ctx) {
        let max = self.config.limits.max_frame_bytes;
        let (data, last) = match item {
            actix_http::ws::Item::FirstText(b) => {
                self.fragments = Some(Fragments {
                    binary: false,
                    data: Vec::new(),
                });
                (b, false)
            }
            actix_http::ws::Item::FirstBinary(b) => {
                self.fragments = Some(Fragments {
                    binary: true,
                    data: Vec::new(),
                });
                (b, false)
            }
            actix_http::ws::Item::Continue(b) => (b, false),
            actix_http::ws::Item::Last(b) => (b, true),
        };
        let Some(fragments) = self.fragments.as_mut() else {
            return self.close_with(
                ctx,
                CloseCode::Protocol,
                "continuation frame without a first frame",
            );
        };
        if fragments.data.len() + data.len() > max {
            return self.close_with(ctx, CloseCode::Size, "message too big");
        }
        fragments.data.extend_from_slice(&data);
        if !last {
            return;
        }
        let Some(Fragments { binary, data }) = self.fragments.take() else {
            return;
        };
        if binary {
            let err = ProtocolError::new(
                ErrorCode::UnsupportedFrame,
                "binary frames are not supported; send JSON text",
            );
            return self.fail(ctx, &err, None);
        }
        match String::from_utf8(data) {
            Ok(text) => self.on_text(&text, ctx),
            Err(_) => self.close_with(ctx, CloseCode::Invalid, "text message is not valid UTF-8"),
        }
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

impl Actor for Session {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        log::debug!(
            "session {} connected from {} as {}",
            self.id,
            self.peer,
            self.principal.name
        );
        if let Some(expires) = self.principal.expires_at {
            // A JWT ends the connection it opened when it expires.
            let left = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
            ctx.run_later(left, |act, ctx| {
                log::info!("session {} ({}): token expired, closing", act.id, act.peer);
                act.close_with(ctx, CloseCode::Policy, "token expired");
            });
        }
        let interval = self.config.heartbeat_interval();
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_seen.elapsed() > interval * 2 {
                log::info!(
                    "session {} ({}): heartbeat timeout, closing",
                    act.id,
                    act.peer
                );
                act.close_with(ctx, CloseCode::Away, "heartbeat timeout");
            } else {
                ctx.ping(b"");
            }
        });
        let connect = router::Connect {
            session_id: self.id,
            peer: self.peer.clone(),
            close: ctx.address().recipient(),
        };
        ctx.wait(
            self.router
                .send(connect)
                .into_actor(self)
                .map(|res, act, ctx| {
                    if res != Ok(true) {
                        act.close_with(ctx, CloseCode::Again, "server is shutting down");
                        return;
                    }
                    if let Some(spec) = act.connect_subscription.take() {
                        act.subscribe(spec, None, ctx);
                    }
                }),
        );
    }

    fn stopping(&mut self, _: &mut Ctx) -> Running {
        for handle in self.subscriptions.values() {
            handle.deactivate();
        }
        let disconnect = router::Disconnect {
            session_id: self.id,
        };
        if let Err(SendError::Full(msg)) = self.router.try_send(disconnect) {
            // Bounded wait for room rather than losing the deregistration.
            let router = self.router.clone();
            actix::spawn(async move {
                let _ = router.send(msg).await;
            });
        }
        log::debug!("session {} ({}) closed", self.id, self.peer);
        Running::Stop
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: WsItem, ctx: &mut Ctx) {
        self.last_seen = Instant::now();
        if let Ok(ws::Message::Ping(p)) = &msg {
            // A control frame: answered at once, even while reading is paused.
            return ctx.pong(p);
        }
        if self.deferred.is_empty() && self.read_pause.remaining().is_none() {
            return self.on_message(msg, ctx);
        }
        // Read before the pause began (the decoder had it buffered): handled, in
        // order, once it is over.
        self.deferred.push_back(msg);
        self.read_pause.hold();
        self.handle_deferred_soon(ctx);
    }

    fn finished(&mut self, ctx: &mut Ctx) {
        // The client is gone; what it sent before still counts.
        if self.deferred.is_empty() {
            ctx.stop();
        } else {
            self.read_ended = true;
        }
    }
}

/// Internal: handle the next of [`Session::deferred`].
#[derive(Message)]
#[rtype(result = "()")]
struct HandleDeferred;

impl Handler<HandleDeferred> for Session {
    type Result = ();

    fn handle(&mut self, _: HandleDeferred, ctx: &mut Ctx) {
        self.deferred_due = false;
        if self.read_pause.remaining().is_none() {
            if let Some(msg) = self.deferred.pop_front() {
                self.on_message(msg, ctx);
            }
        }
        if !self.deferred.is_empty() {
            self.handle_deferred_soon(ctx);
        } else if self.read_ended {
            ctx.stop();
        } else {
            self.read_pause.release();
        }
    }
}

type WsItem = Result<ws::Message, ws::ProtocolError>;

impl Session {
    /// Schedules a [`HandleDeferred`]: at the end of the pause, or next if there is none.
    /// One at a time, so each deferred frame is handled after the waits the previous
    /// one began (a turn's end, a full pipeline, a new pause).
    fn handle_deferred_soon(&mut self, ctx: &mut Ctx) {
        if std::mem::replace(&mut self.deferred_due, true) {
            return;
        }
        match self.read_pause.remaining() {
            Some(left) => {
                ctx.run_later(left, |_, ctx| ctx.notify(HandleDeferred));
            }
            None => ctx.notify(HandleDeferred),
        }
    }

    fn on_message(&mut self, msg: WsItem, ctx: &mut Ctx) {
        let msg = match msg {
            Ok(m) => m,
            Err(ws::ProtocolError::Overflow) => {
                return self.close_with(ctx, CloseCode::Size, "message too big");
            }
            Err(e) => {
                log::debug!("session {}: protocol error: {e}", self.id);
                return self.close_with(ctx, CloseCode::Protocol, "WebSocket protocol error");
            }
        };
        match msg {
            ws::Message::Text(text) => {
                if self.fragments.is_some() {
                    return self.close_with(
                        ctx,
                        CloseCode::Protocol,
                        "new message inside a fragmented one",
                    );
                }
                self.on_text(&text, ctx)
            }
            ws::Message::Binary(_) => {
                let err = ProtocolError::new(
                    ErrorCode::UnsupportedFrame,
                    "binary frames are not supported; send JSON text",
                );
                self.fail(ctx, &err, None);
            }
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(p) => ctx.pong(&p),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }
}

impl Handler<WriteFrames> for Session {
    type Result = ();

    fn handle(&mut self, msg: WriteFrames, ctx: &mut Ctx) {
        let idle = self.pending.is_empty();
        for frame in msg.frames {
            enqueue(&mut self.pending, frame);
        }
        if idle {
            self.write_pending(ctx);
        }
        // Otherwise a `WritePending` is due and writes these after the others.
    }
}

/// Internal: go on writing [`Session::pending`] after a break.
#[derive(Message)]
#[rtype(result = "()")]
struct WritePending;

impl Handler<WritePending> for Session {
    type Result = ();

    fn handle(&mut self, _: WritePending, ctx: &mut Ctx) {
        self.write_pending(ctx);
    }
}

/// Ends this context's turn: nothing more is read or handled until the runtime has
/// run the other connections' tasks that were ready ([`turn::end_turn`]).
fn end_turn(ctx: &mut Ctx) {
    ctx.wait(actix::fut::wrap_future(turn::end_turn()));
}

/// A live event's priority; `None` for every other frame.
fn live_priority(frame: &OutFrame) -> Option<Priority> {
    match frame {
        OutFrame::Event { event, .. } => Some(event.event.priority),
        _ => None,
    }
}

/// Adds a handed-over frame to a session's `pending` frames. A live event goes ahead
/// of the live events of lower priority still waiting there (PROTOCOL.md section 4:
/// events held back for a slow socket leave highest priority first, oldest first
/// within a priority); it never passes a replayed event, a `replay_complete` or a
/// `dropped` notice. Frames of one priority keep their order, and when all are of one
/// priority this looks at the last frame only.
fn enqueue(pending: &mut VecDeque<OutFrame>, frame: OutFrame) {
    let mut at = pending.len();
    if let Some(priority) = live_priority(&frame) {
        while at > 0 && live_priority(&pending[at - 1]).is_some_and(|waiting| waiting < priority) {
            at -= 1;
        }
    }
    pending.insert(at, frame);
}

impl Session {
    /// Queues pending frames on the connection until [`WRITE_CHUNK_BYTES`] of events,
    /// then ends the turn (the context waits on [`turn::end_turn`]) so that the
    /// connection writes them and the other connections of this HTTP worker thread get
    /// theirs, and comes back for the rest with a `WritePending`. Frames leave in the
    /// order [`enqueue`] put them in.
    fn write_pending(&mut self, ctx: &mut Ctx) {
        let mut written = 0;
        while let Some(frame) = self.pending.pop_front() {
            written += 1;
            self.write_frame(frame, ctx);
            if self.unwritten_bytes >= WRITE_CHUNK_BYTES {
                self.unwritten_bytes = 0;
                end_turn(ctx);
                if !self.pending.is_empty() {
                    ctx.notify(WritePending);
                }
                break;
            }
        }
        if self.backlog.written(written) {
            // If the worker's mailbox is full, its tick resumes this session anyway.
            let resume = delivery::Resume { session: self.id };
            let _ = worker_for(self.id, &self.workers).try_send(resume);
        }
    }

    fn write_frame(&mut self, frame: OutFrame, ctx: &mut Ctx) {
        // Only a live event's first delivery measures publish-to-deliver latency.
        let first_live = matches!(frame, OutFrame::Event { attempt: 1, .. });
        match frame {
            OutFrame::Event {
                sub,
                event,
                attempt,
            }
            | OutFrame::Replayed {
                sub,
                event,
                attempt,
            } => {
                if !sub.is_active() {
                    return;
                }
                let text = event_frame(&sub.frame_prefix, &event.json, attempt);
                self.unwritten_bytes += text.len();
                ctx.text(text);
                sub.delivered.fetch_add(1, Relaxed);
                self.metrics.count_delivered(&event, first_live);
                if first_live {
                    self.admission.observe(&event, &sub.spec);
                }
            }
            OutFrame::ReplayComplete { sub, last_cursor } => {
                if sub.is_active() {
                    self.send(
                        ctx,
                        &Reply::ReplayComplete {
                            subscription_id: sub.id.clone(),
                            last_cursor,
                        },
                    );
                }
            }
            OutFrame::Dropped { sub, count } => {
                if sub.is_active() {
                    self.send(
                        ctx,
                        &Reply::Dropped {
                            subscription_id: sub.id.clone(),
                            count,
                            reason: "slow_consumer",
                        },
                    );
                }
            }
        }
    }
}

impl Handler<CloseSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Ctx) {
        self.close_with(ctx, CloseCode::Away, &msg.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EncodedEvent, Event};
    use serde_json::json;

    /// Live events overtake lower-priority live events waiting in a session, keep
    /// their order within a priority, and never pass a replayed event or a notice.
    #[actix_rt::test]
    async fn pending_frames_leave_highest_priority_first_within_bounds() {
        let sub = crate::delivery::subscription::testing::subscription(
            json!({"type": "pattern", "patterns": [">"]}),
        );
        let event = |priority: &str, cursor: u64| {
            let mut e = Event::from_json(json!({"topic": "t", "priority": priority}), "s").unwrap();
            e.cursor = cursor;
            EncodedEvent::new(e)
        };
        let live = |priority: &str, cursor: u64| OutFrame::Event {
            sub: sub.clone(),
            event: event(priority, cursor),
            attempt: 1,
        };
        let mut pending = VecDeque::new();
        enqueue(&mut pending, live("low", 1));
        enqueue(
            &mut pending,
            OutFrame::Replayed {
                sub: sub.clone(),
                event: event("low", 2),
                attempt: 1,
            },
        );
        for (priority, cursor) in [
            ("low", 3),
            ("low", 4),
            ("high", 5),
            ("critical", 6),
            ("high", 7),
            ("low", 8),
        ] {
            enqueue(&mut pending, live(priority, cursor));
        }
        let order: Vec<u64> = pending
            .iter()
            .map(|f| match f {
                OutFrame::Event { event, .. } | OutFrame::Replayed { event, .. } => {
                    event.event.cursor
                }
                _ => 0,
            })
            .collect();
        assert_eq!(order, [1, 2, 6, 5, 7, 3, 4, 8]);
    }

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

    #[test]
    fn connect_query_builds_a_pattern_subscription() {
        let q = ConnectQuery {
            topics: Some("task.*, agent.>".into()),
            agent_id: Some("a1".into()),
            ..Default::default()
        };
        let spec = connect_subscription(&q).unwrap().unwrap();
        assert_eq!(spec.patterns, ["task.*", "agent.>"]);
        let bad = ConnectQuery {
            kinds: Some("task..x".into()),
            ..Default::default()
        };
        assert!(connect_subscription(&bad).is_err());
        assert!(connect_subscription(&ConnectQuery::default())
            .unwrap()
            .is_none());
    }
}
