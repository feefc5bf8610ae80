//! What the example programs share: connecting with a helpful error, and describing a
//! close frame.

use anyhow::anyhow;
use awc::ws::{CloseReason, Codec};
use awc::BoxedSocket;

/// An open WebSocket connection.
pub type Connection = actix_codec::Framed<BoxedSocket, Codec>;

/// Connects to the router, saying how to start it when nothing listens.
pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    let (_response, ws) = awc::Client::new()
        .ws(url)
        .max_frame_size(16 << 20)
        .connect()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot connect to {url}: {e}\n(is the router running? start it with `cargo run --release -- serve`)"
            )
        })?;
    Ok(ws)
}

/// ` (code 1001: server shutting down)`: a close frame's reason, for an error message.
pub fn close_reason(reason: Option<CloseReason>) -> String {
    reason.map_or_else(String::new, |r| {
        let why = r.description.unwrap_or_default();
        format!(" (code {}: {why})", u16::from(r.code))
    })
}
