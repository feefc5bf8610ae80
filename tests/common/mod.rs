//! Test harness shared by every integration test: a real server on `127.0.0.1:0` in
//! the test's own actix system, a WebSocket client that speaks raw JSON frames, and
//! small HTTP helpers. Every receive has a timeout, so a missing reply fails the test
//! instead of hanging it. [`process`] starts the binary (or chromedriver) as a child
//! process, for what only a real process shows.

#![allow(dead_code)]

/// The value of the unlabelled series `switchyard_` + `name` in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("switchyard_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

pub mod bystander;
pub mod cluster;
pub mod process;
pub mod redis;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use awc::ws::{self, CloseReason, Frame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard::Config;

pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    /// The data directory of the SQLite store; removed when the server is dropped.
    pub data_dir: std::sync::Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<actix_rt::task::JoinHandle<()>>,
}

impl TestServer {
    /// A server with the embedded defaults (SQLite store in a temporary directory, one
    /// HTTP worker, two delivery workers).
    pub async fn start() -> TestServer {
        TestServer::with(|_| {}).await
    }

    /// A server with the defaults changed by `tweak`.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
        TestServer::with_data_dir(data_dir, tweak).await
    }

    /// A server on an existing data directory (to test restarts).
    pub async fn with_data_dir(
        data_dir: std::sync::Arc<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let config = TestServer::config(&data_dir, tweak);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        TestServer::on_listener(listener, data_dir, config).await
    }

    /// A server on a data directory and an address that a stopped server used (to test
    /// that clients reconnect).
    pub async fn restart_on(
        addr: SocketAddr,
        data_dir: std::sync::Arc<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let config = TestServer::config(&data_dir, tweak);
        let listener = TcpListener::bind(addr).expect("bind the previous address again");
        TestServer::on_listener(listener, data_dir, config).await
    }

    fn config(data_dir: &tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Config {
        let mut config = Config::defaults();
        config.server.data_dir = data_dir.path().to_owned();
        // Commits survive a crash of the process; tests need not fsync to the platter.
        config.store.synchronous_full = false;
        config.server.http_workers = 1;
        config.server.delivery_workers = 2;
        config.server.shutdown_timeout_ms = 2000;
        tweak(&mut config);
        config
    }

    async fn on_listener(
        listener: TcpListener,
        data_dir: std::sync::Arc<tempfile::TempDir>,
        config: Config,
    ) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = actix_rt::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            switchyard::run(listener, config, shutdown)
                .await
                .expect("server runs");
        });
        TestServer {
            addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A WebSocket client on `/ws`.
    pub async fn ws(&self) -> WsClient {
        WsClient::connect(&self.ws_url("/ws")).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut res = awc::Client::new()
            .get(self.url(path))
            .send()
            .await
            .expect("GET");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// Any request, with `Authorization: Bearer <token>` when a token is given.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = awc::Client::new().request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let sent = match body {
            Some(b) => {
                request
                    .insert_header(("content-type", "application/json"))
                    .send_body(b.to_string())
                    .await
            }
            None => request.send().await,
        };
        let mut res = sent.expect("HTTP request");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// One unlabelled series of `/metrics` (`switchyard_` + `name`).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get_text("/metrics").await;
        metric(&text, name).unwrap_or_else(|| panic!("switchyard_{name} in /metrics"))
    }

    /// A GET whose body is not JSON (`/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let mut res = awc::Client::new()
            .get(self.url(path))
            .send()
            .await
            .expect("GET");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let mut res = awc::Client::new()
            .post(self.url(path))
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .expect("POST");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// Graceful shutdown; waits until the server has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Conn = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// A WebSocket client that speaks raw JSON text frames.
pub struct WsClient {
    conn: Conn,
    /// Deliveries read while waiting for a command's reply; `recv` returns them first.
    backlog: std::collections::VecDeque<Value>,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        WsClient::try_connect(url).await.expect("WebSocket connect")
    }

    /// Connects, or returns the HTTP status the upgrade was refused with.
    pub async fn try_connect(url: &str) -> Result<WsClient, u16> {
        WsClient::try_connect_as(url, None).await
    }

    /// Connects through a configured client (TLS tests).
    pub async fn connect_with(client: &awc::Client, url: &str) -> WsClient {
        let (_, conn) = client
            .ws(url)
            .max_frame_size(64 << 20)
            .connect()
            .await
            .expect("WebSocket connect");
        WsClient {
            conn,
            backlog: Default::default(),
        }
    }

    /// Connects with `Authorization: Bearer <token>` when a token is given.
    pub async fn try_connect_as(url: &str, token: Option<&str>) -> Result<WsClient, u16> {
        let mut request = awc::Client::new().ws(url).max_frame_size(64 << 20);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match request.connect().await {
            Ok((_, conn)) => Ok(WsClient {
                conn,
                backlog: Default::default(),
            }),
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status.as_u16()),
            Err(e) => panic!("WebSocket connect to {url}: {e}"),
        }
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.conn
            .send(ws::Message::Text(text.to_owned().into()))
            .await
            .expect("send text");
    }

    pub async fn send_message(&mut self, msg: ws::Message) {
        self.conn.send(msg).await.expect("send frame");
    }

    /// The next frame, answering pings; `None` when `timeout` passes first.
    async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.conn.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.conn.send(ws::Message::Pong(p)).await;
                }
                Some(Ok(Frame::Pong(_))) => {}
                Some(Ok(f)) => return Some(f),
                Some(Err(e)) => {
                    eprintln!("WebSocket error, treated as a close: {e}");
                    return Some(Frame::Close(None));
                }
                None => return Some(Frame::Close(None)),
            }
        }
    }

    /// The next JSON message, or `None` on timeout or when the connection ends.
    pub async fn try_recv(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        match self.next_frame(timeout).await {
            Some(Frame::Text(bytes)) => serde_json::from_slice(&bytes).ok(),
            _ => None,
        }
    }

    /// The next JSON message: `Ok(None)` when `timeout` passes first (or the frame is
    /// not JSON text), `Err` with the close reason when the connection ends.
    pub async fn try_recv_open(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Value>, Option<CloseReason>> {
        if let Some(v) = self.backlog.pop_front() {
            return Ok(Some(v));
        }
        match self.next_frame(timeout).await {
            Some(Frame::Text(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
            Some(Frame::Close(reason)) => Err(reason),
            Some(_) | None => Ok(None),
        }
    }

    /// The next JSON message; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        self.recv_wire().await
    }

    /// The next JSON message from the socket itself, past the backlog.
    async fn recv_wire(&mut self) -> Value {
        match self.next_frame(RECV_TIMEOUT).await {
            Some(Frame::Text(bytes)) => {
                serde_json::from_slice(&bytes).expect("server sent valid JSON")
            }
            Some(other) => panic!("expected a text frame, got {other:?}"),
            None => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    /// Sends a command and returns its reply. A delivery that arrives first (the
    /// connection may be subscribed to what it publishes) is kept for `recv`.
    pub async fn request(&mut self, v: Value) -> Value {
        self.send(&v).await;
        loop {
            let msg = self.recv_wire().await;
            if msg["type"] == "event" {
                self.backlog.push_back(msg);
                continue;
            }
            return msg;
        }
    }

    /// Subscribes and returns the subscription id.
    pub async fn subscribe(&mut self, subscription: Value) -> String {
        let reply = self
            .request(json!({"type": "subscribe", "subscription": subscription}))
            .await;
        assert_eq!(reply["type"], "subscribed", "subscribe reply: {reply}");
        reply["subscription_id"]
            .as_str()
            .expect("subscription_id")
            .to_owned()
    }

    /// Publishes one event and returns the `published` reply.
    pub async fn publish(&mut self, event: Value) -> Value {
        let reply = self
            .request(json!({"type": "publish_event", "event": event}))
            .await;
        assert_eq!(reply["type"], "published", "publish reply: {reply}");
        reply
    }

    /// The next `event` delivery.
    pub async fn recv_event(&mut self) -> Value {
        let msg = self.recv().await;
        assert_eq!(msg["type"], "event", "expected an event, got {msg}");
        msg
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(v) = self.backlog.front() {
            panic!("expected silence, got {v}");
        }
        if let Some(frame) = self.next_frame(wait).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// Reads until the server closes; returns its close reason.
    pub async fn recv_close(&mut self) -> Option<CloseReason> {
        loop {
            match self.next_frame(RECV_TIMEOUT).await {
                Some(Frame::Close(reason)) => return reason,
                Some(_) => continue,
                None => panic!("connection not closed within {RECV_TIMEOUT:?}"),
            }
        }
    }

    /// Sends a WebSocket Ping frame; true when its Pong arrives within `timeout`. JSON
    /// messages read meanwhile are kept for `recv`.
    pub async fn ws_ping(&mut self, timeout: Duration) -> bool {
        self.send_message(ws::Message::Ping(bytes::Bytes::from_static(
            b"are you there",
        )))
        .await;
        let deadline = tokio::time::Instant::now() + timeout;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.conn.next()).await {
            match frame {
                Frame::Pong(_) => return true,
                Frame::Text(bytes) => self.backlog.extend(serde_json::from_slice(&bytes).ok()),
                _ => {}
            }
        }
        false
    }

    /// Pings at the protocol level and checks the pong: the connection still works.
    pub async fn assert_alive(&mut self) {
        let reply = self.request(json!({"type": "ping"})).await;
        assert_eq!(reply["type"], "pong", "{reply}");
    }
}
