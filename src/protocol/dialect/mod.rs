//! Client dialects: the wire shapes of two event buses Switchyard replaces, so that
//! their own clients work unchanged (docs/protocol.md section 11): todoki at
//! `GET /ws/event-bus` ([`todoki`]) and Descartes at `ws://host/events`
//! ([`descartes`]).
//!
//! Owns: pure translation, one module per dialect: a dialect client frame into what
//! the session should do ([`Inbound`], with subscriptions as native subscription
//! objects), and native replies and events into the dialect's frames. Must not:
//! authenticate, limit, route or deliver. A dialect session is a native session that
//! carries a [`Dialect`] to read and write frames with, so grants, limits, rate
//! limits, priorities and replay are exactly the native ones.

pub mod descartes;
pub mod todoki;

use serde_json::Value;

use super::{Event, Reply};
use crate::error::{ErrorCode, ProtocolError};

/// The dialect a session speaks (a native session has none).
#[derive(Debug, Clone, PartialEq)]
pub enum Dialect {
    Todoki(todoki::Todoki),
    Descartes,
}

/// What a dialect client frame asks of its session.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Subscribe with this native subscription object (docs/protocol.md section 4.1),
    /// replacing the connection's subscription if it has one.
    Subscribe(Value),
    /// End the connection's subscription, if it has one. No reply.
    Unsubscribe,
    /// Answer with the dialect's pong.
    Ping,
    /// Nothing to do: the client's answer to a heartbeat.
    Ignore,
}

impl Dialect {
    /// Its name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Dialect::Todoki(_) => "todoki",
            Dialect::Descartes => "descartes",
        }
    }

    /// Decodes one client text frame. A frame over `max_command_bytes` is refused
    /// unparsed, as a native command is (dialect clients never publish).
    pub fn decode(&self, text: &str, max_command_bytes: usize) -> Result<Inbound, ProtocolError> {
        if text.len() > max_command_bytes {
            return Err(ProtocolError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "frame is {} bytes, over the limit of {max_command_bytes} (limits.max_command_bytes)",
                    text.len()
                ),
            ));
        }
        match self {
            Dialect::Todoki(_) => todoki::decode(text),
            Dialect::Descartes => descartes::decode(text),
        }
    }

    /// The dialect's frame for a native reply or notice; `None` when the dialect has
    /// no such frame (it is then not sent).
    pub fn reply(&mut self, reply: &Reply) -> Option<String> {
        match self {
            Dialect::Todoki(t) => t.reply(reply),
            Dialect::Descartes => descartes::reply(reply),
        }
    }

    /// The dialect's frame for one delivered event; `replayed` when it comes from a
    /// replay rather than live.
    pub fn event(&mut self, event: &Event, replayed: bool) -> String {
        match self {
            Dialect::Todoki(t) => t.event(event, replayed),
            Dialect::Descartes => descartes::event(event),
        }
    }

    /// The JSON heartbeat the dialect's own server sends every interval, at `now`
    /// (RFC 3339), besides the WebSocket ping every session sends.
    pub fn heartbeat(&self, now: &str) -> String {
        match self {
            Dialect::Todoki(_) => todoki::heartbeat(),
            Dialect::Descartes => descartes::heartbeat(now),
        }
    }
}

/// Serialises a frame built of plain values; these cannot fail to encode.
fn to_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!(r#"{{"type":"error","message":"encoding failed: {e}"}}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_over_the_command_limit_are_refused_unparsed() {
        let pad = "x".repeat(100);
        let frame = format!(r#"{{"type":"Ping","pad":"{pad}"}}"#);
        for dialect in [
            Dialect::Descartes,
            Dialect::Todoki(todoki::Todoki::default()),
        ] {
            let err = dialect.decode(&frame, 64).unwrap_err();
            assert_eq!(err.code, ErrorCode::PayloadTooLarge, "{}", dialect.name());
        }
        assert_eq!(Dialect::Descartes.decode(&frame, 1024), Ok(Inbound::Ping));
    }
}
