//! Reading: the frames of one connection, in order, with fragments reassembled and
//! frames read while overload control pauses the reading kept until it ends.
//!
//! A publish of low events alone that overload control slows down
//! ([`crate::overload`]) stops the reading of the socket for a while ([`read_pause`]);
//! frames the decoder had read before that wait in `deferred`, and deliveries, replies
//! and WebSocket pongs go on being written meanwhile.
//!
//! [`read_pause`]: super::read_pause

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws::{self, CloseCode};

use super::read_pause::ReadPause;
use super::{Ctx, Session};
use crate::error::{ErrorCode, ProtocolError};

/// What a session keeps about its reading.
pub(super) struct Reading {
    /// When the client last sent anything (the heartbeat closes a silent connection).
    pub(super) last_seen: Instant,
    /// A message being received in several frames.
    pub(super) fragments: Option<Fragments>,
    /// Fragmented messages begun so far: tells the timer of one message from the next.
    fragmented: u64,
    /// Stops reading this connection's socket while overload control says so.
    pub(super) pause: ReadPause,
    /// Frames the decoder handed over while reading was paused, to handle when it ends.
    /// Only what it had already read: the pause, then `pause.hold()` until this is
    /// empty, stop the reading of new bytes.
    pub(super) deferred: VecDeque<WsItem>,
    /// A `HandleDeferred` is scheduled.
    pub(super) deferred_due: bool,
    /// The client's stream ended; stop once `deferred` is handled.
    pub(super) ended: bool,
    /// Published events read since this session last ended its turn
    /// ([`super::commands`]).
    pub(super) events: usize,
}

impl Default for Reading {
    fn default() -> Self {
        Reading {
            last_seen: Instant::now(),
            fragments: None,
            fragmented: 0,
            pause: ReadPause::default(),
            deferred: VecDeque::new(),
            deferred_due: false,
            ended: false,
            events: 0,
        }
    }
}

/// A message being received in several frames.
pub(super) struct Fragments {
    binary: bool,
    data: Vec<u8>,
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: WsItem, ctx: &mut Ctx) {
        self.read.last_seen = Instant::now();
        if let Ok(ws::Message::Ping(p)) = &msg {
            // A control frame: answered at once, even while reading is paused.
            return ctx.pong(p);
        }
        if self.read.deferred.is_empty()
            && self.read.pause.remaining().is_none()
            && !self.read_blocked()
        {
            return self.on_message(msg, ctx);
        }
        // Read before the pause began, or while replies or publishes are owed past their bound (the
        // decoder had it buffered): handled, in order, once that is over.
        self.read.deferred.push_back(msg);
        self.read.pause.hold();
        self.handle_deferred_soon(ctx);
    }

    fn finished(&mut self, ctx: &mut Ctx) {
        // The client is gone; what it sent before still counts.
        if self.read.deferred.is_empty() {
            ctx.stop();
        } else {
            self.read.ended = true;
        }
    }
}

/// Internal: handle the next of [`Reading::deferred`].
#[derive(Message)]
#[rtype(result = "()")]
struct HandleDeferred;

impl Handler<HandleDeferred> for Session {
    type Result = ();

    fn handle(&mut self, _: HandleDeferred, ctx: &mut Ctx) {
        self.read.deferred_due = false;
        if self.read.pause.remaining().is_none() && !self.read_blocked() {
            if let Some(msg) = self.read.deferred.pop_front() {
                self.on_message(msg, ctx);
            }
        }
        if !self.read.deferred.is_empty() {
            if !self.read_blocked() {
                self.handle_deferred_soon(ctx);
            }
            // Otherwise `settle` calls again once enough replies are written.
        } else if self.read.ended {
            ctx.stop();
        } else {
            self.read.pause.release();
        }
    }
}

pub(super) type WsItem = Result<ws::Message, ws::ProtocolError>;

impl Session {
    /// Schedules a [`HandleDeferred`]: at the end of the pause, or next if there is none.
    /// One at a time, so each deferred frame is handled after the waits the previous
    /// one began (a turn's end, a full pipeline, a new pause).
    pub(super) fn handle_deferred_soon(&mut self, ctx: &mut Ctx) {
        if std::mem::replace(&mut self.read.deferred_due, true) {
            return;
        }
        match self.read.pause.remaining() {
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
                if self.read.fragments.is_some() {
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

    /// Starts a fragmented message, which must end within `limits.fragment_timeout_ms`:
    /// the heartbeat alone would keep a connection that sends a first fragment, then
    /// only pongs (or one byte a minute), open for ever, holding what it sent.
    fn begin_fragments(&mut self, binary: bool, ctx: &mut Ctx) {
        self.read.fragments = Some(Fragments {
            binary,
            data: Vec::new(),
        });
        self.read.fragmented += 1;
        let timeout = Duration::from_millis(self.shared.config.limits.fragment_timeout_ms);
        self.arm_fragment_timer(self.read.fragmented, timeout, ctx);
    }

    fn arm_fragment_timer(&mut self, message: u64, after: Duration, ctx: &mut Ctx) {
        ctx.run_later(after, move |act, ctx| {
            if act.read.fragmented != message || act.read.fragments.is_none() {
                return; // That message ended.
            }
            if !act.read.deferred.is_empty() {
                // Its end may be among the frames held by an overload pause: not the
                // client's delay. Look again once they are handled.
                return act.arm_fragment_timer(message, Duration::from_millis(100), ctx);
            }
            log::info!(
                "session {} ({}): fragmented message not finished in time, closing",
                act.id,
                act.peer
            );
            act.close_with(
                ctx,
                CloseCode::Policy,
                "fragmented message not finished in time",
            );
        });
    }

    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut Ctx) {
        let max = self.shared.config.limits.max_frame_bytes;
        let (data, last) = match item {
            actix_http::ws::Item::FirstText(b) => {
                self.begin_fragments(false, ctx);
                (b, false)
            }
            actix_http::ws::Item::FirstBinary(b) => {
                self.begin_fragments(true, ctx);
                (b, false)
            }
            actix_http::ws::Item::Continue(b) => (b, false),
            actix_http::ws::Item::Last(b) => (b, true),
        };
        let Some(fragments) = self.read.fragments.as_mut() else {
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
        let Some(Fragments { binary, data }) = self.read.fragments.take() else {
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
