//! How every outgoing WebSocket of this crate is opened (the client library, and the
//! binary's `bench`): awc, with `TCP_NODELAY` on each socket it opens.
//!
//! Without it a small frame sent while the previous one is unacknowledged waits for
//! that ACK (Nagle's algorithm): single events sent in quick succession are held back
//! until the server's reply comes, which both delays them and inflates the latency
//! `switchyard bench` reports. The server sets the same option on the sockets it
//! accepts (`server::tune_socket`).
//!
//! Owns: how outgoing connections are opened. Must not: speak the protocol.

use std::task::{Context, Poll};
use std::time::Duration;

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use actix_web::rt::net::TcpStream;
use futures_util::future::LocalBoxFuture;

/// An awc client whose sockets have `TCP_NODELAY` set; `timeout` bounds each request
/// (for a WebSocket, the handshake).
pub fn http_client(timeout: Duration) -> awc::Client {
    let connector = awc::Connector::new().connector(NoDelay {
        tcp: ConnectorService::default(),
    });
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .finish()
}

/// An open WebSocket: awc's framed connection, frames in and out.
pub type WsConnection = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// How long the WebSocket handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame accepted from the server: a whole replay page or `publish_batch` reply
/// fits; a larger one ends the connection with an overflow error (awc's default is 64 KiB).
const MAX_FRAME_BYTES: usize = 64 << 20;

/// Opens a WebSocket to `url` (`ws://` or `wss://`), with `Authorization: Bearer` when a
/// token is given.
pub async fn open_ws(
    url: &str,
    token: Option<&str>,
) -> Result<WsConnection, awc::error::WsClientError> {
    let mut request = http_client(HANDSHAKE_TIMEOUT)
        .ws(url)
        .max_frame_size(MAX_FRAME_BYTES);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let (_, conn) = request.connect().await?;
    Ok(conn)
}

/// Wraps actix-tls's resolving TCP connector; sets `TCP_NODELAY` on what it connects.
#[derive(Clone)]
struct NoDelay {
    tcp: ConnectorService,
}

impl Service<ConnectInfo<awc::http::Uri>> for NoDelay {
    type Response = Connection<awc::http::Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Service::<ConnectInfo<awc::http::Uri>>::poll_ready(&self.tcp, cx)
    }

    fn call(&self, info: ConnectInfo<awc::http::Uri>) -> Self::Future {
        let connect = self.tcp.call(info);
        Box::pin(async move {
            let connection = connect.await?;
            if let Err(e) = connection.io_ref().set_nodelay(true) {
                log::warn!("cannot set TCP_NODELAY on an outgoing connection: {e}");
            }
            Ok(connection)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option is set on a real outgoing connection.
    #[actix_rt::test]
    async fn outgoing_connections_get_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: awc::http::Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let connection = NoDelay {
            tcp: ConnectorService::default(),
        }
        .call(ConnectInfo::new(uri))
        .await
        .unwrap();
        assert!(connection.io_ref().nodelay().unwrap());
    }
}
