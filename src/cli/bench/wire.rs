//! The generator's side of the wire: opening a connection, reading the next text frame
//! (answering pings on the way), and finding the few fields it needs in an event frame
//! without parsing it.
//!
//! Owns: frames in and out. Must not: decide what to send, or keep results.

use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::rt::time::Sleep;
use awc::ws::{Frame, Message};
use bytes::Bytes;
use futures_util::future::{select, Either};
use futures_util::{SinkExt as _, StreamExt as _};
use memchr::memmem::Finder;
use switchyard::client::socket;

use super::BenchError;

/// An open WebSocket connection.
pub type Conn = socket::WsConnection;

/// The priorities in the order latency is kept and reported.
pub const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];

/// How every event frame starts (the server writes `type` first).
pub const EVENT: &[u8] = br#"{"type":"event""#;

/// Microseconds since the Unix epoch: the send time stamped in each event, read back on
/// arrival by another thread (so not a monotonic `Instant`).
pub fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Opens a WebSocket, with `Authorization: Bearer` when a token is given.
pub async fn connect(url: &str, token: Option<&str>) -> Result<Conn, BenchError> {
    socket::open_ws(url, token)
        .await
        .map_err(|e| BenchError::Connection(format!("cannot connect to {url}: {e}")))
}

/// The next text frame, answering pings; `None` when `timer` fires first.
pub async fn next_text(
    ws: &mut Conn,
    timer: &mut Pin<&mut Sleep>,
) -> Result<Option<Bytes>, String> {
    loop {
        let frame = match select(timer.as_mut(), ws.next()).await {
            Either::Left(_) => return Ok(None),
            Either::Right((frame, _)) => frame,
        };
        match frame {
            Some(Ok(Frame::Text(bytes))) => return Ok(Some(bytes)),
            Some(Ok(Frame::Ping(p))) => {
                ws.send(Message::Pong(p)).await.map_err(|e| e.to_string())?
            }
            Some(Ok(Frame::Close(reason))) => {
                return Err(format!("server closed the connection: {reason:?}"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connection error: {e}")),
            None => return Err("connection ended".into()),
        }
    }
}

/// Finds the few fields the generator needs in an event frame without parsing it (the
/// generator must keep up with the router): `memchr`'s substring search, needles built
/// once per subscriber.
pub struct Scanner {
    sent_us: Finder<'static>,
    priority: Finder<'static>,
    id: Finder<'static>,
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            sent_us: Finder::new(br#""sent_us":"#),
            priority: Finder::new(br#""priority":""#),
            id: Finder::new(br#""id":""#),
        }
    }

    /// The send time stamped in the payload.
    pub fn sent_us(&self, text: &[u8]) -> Option<u64> {
        let at = self.sent_us.find(text)? + self.sent_us.needle().len();
        let mut digits = text[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .peekable();
        digits.peek()?;
        // None on overflow, not a number that wrapped.
        digits.try_fold(0u64, |n, b| {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
    }

    /// The event's priority, as an index into [`PRIORITIES`].
    pub fn priority(&self, text: &[u8]) -> Option<usize> {
        let at = self.priority.find(text)? + self.priority.needle().len();
        PRIORITIES
            .iter()
            .position(|p| text[at..].starts_with(p.as_bytes()))
    }

    /// The first `"id":"…"`: the event's id in an event frame.
    pub fn id<'a>(&self, text: &'a [u8]) -> Option<&'a str> {
        let at = self.id.find(text)? + self.id.needle().len();
        let end = memchr::memchr(b'"', &text[at..])?;
        std::str::from_utf8(&text[at..at + end]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanning_frames() {
        let scan = Scanner::new();
        let frame = br#"{"type":"event","subscription_id":"s","event":{"id":"e-1","priority":"high","payload":{"seq":4,"sent_us":1234}}}"#;
        assert_eq!(scan.sent_us(frame), Some(1234));
        assert_eq!(scan.priority(frame), Some(1));
        assert_eq!(scan.id(frame), Some("e-1"));
        let bare = br#"{"type":"event","event":{"payload":{"sent_us":"x"}}}"#;
        assert_eq!(scan.sent_us(bare), None);
        assert_eq!(scan.priority(bare), None);
        assert_eq!(scan.id(bare), None);
        assert_eq!(scan.sent_us(br#""sent_us":99999999999999999999999"#), None);
    }
}
