//! An async Rust client for the Switchyard wire protocol (PROTOCOL.md), with automatic
//! reconnect, resubscription and resume.
//!
//! Owns: one WebSocket connection at a time (a background task on the current actix
//! system), the requests awaiting replies, and the subscriptions to restore after a
//! reconnect. Must not: depend on the server's internals; it speaks only the wire
//! protocol, like any other client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard::client::ClientError> {
//! use switchyard::client::{Client, ClientConfig, Delivery};
//! use serde_json::json;
//!
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:9090/ws"));
//! let mut sub = client.subscribe(json!({"type": "pattern", "patterns": ["task.>"], "ack": true})).await?;
//! client.publish(json!({"type": "task_created", "payload": {"task_id": "t1"}})).await?;
//! while let Some(Delivery::Event { event, .. }) = sub.next().await {
//!     println!("{}", event["topic"]);
//!     sub.ack(&event["id"].as_str().unwrap_or_default()).await;
//! }
//! # Ok(()) }
//! ```
//!
//! Reconnects follow [`Backoff`] (1 s doubling to 30 s, with jitter). After a reconnect
//! every subscription is sent again under the same id, resuming after the highest
//! cursor it delivered (or, before any delivery, from the time it was made), so nothing
//! the server still retains is lost; a durable subscription resumes from its own stored
//! state. Publishes not yet answered when the connection dropped are sent again with the
//! same event id (the client gives every event an id), so the server's duplicate
//! suppression makes the retry safe. Live events are delivered highest priority first,
//! so a resume after the highest cursor can skip a lower-priority event that was still
//! waiting: use `ack: true` or a durable subscription where that matters.

mod backoff;
pub mod socket;

pub use backoff::Backoff;

use std::collections::HashMap;
use std::time::Duration;

use actix_web::rt::time::{sleep, timeout};
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

/// Deliveries buffered per subscription before the connection stops reading (and the
/// server starts treating this client as slow).
const DELIVERY_BUFFER: usize = 1024;

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an `error` reply.
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the client gave up reconnecting")]
    Failed,
    #[error("the client is closed")]
    Closed,
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Waiting before reconnect attempt `attempt` (1 for the first).
    Reconnecting {
        attempt: u32,
    },
    /// `max_attempts` reconnects failed in a row; calls answer [`ClientError::Failed`].
    Failed,
    Closed,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws` or `wss://...`.
    pub url: String,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    pub backoff: Backoff,
    /// Reconnect attempts in a row before giving up; `None`: never give up.
    pub max_attempts: Option<u32>,
    /// How long a call waits for its reply (across reconnects).
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            token: None,
            backoff: Backoff::default(),
            max_attempts: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub event_id: String,
    pub cursor: u64,
    pub duplicate: bool,
}

/// What a subscription receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Event {
        event: Value,
        attempt: u64,
    },
    /// The replay it asked for (or a resume) is done; live events follow.
    ReplayComplete {
        last_cursor: u64,
    },
    /// The server dropped `count` events because this client read too slowly.
    Dropped {
        count: u64,
    },
}

enum Op {
    Request {
        frame: Value,
        /// Sent again after a reconnect when still unanswered.
        retry: bool,
        reply: oneshot::Sender<Result<Value, ClientError>>,
    },
    Subscribe {
        id: String,
        spec: Value,
        deliveries: mpsc::Sender<Delivery>,
        reply: oneshot::Sender<Result<Value, ClientError>>,
    },
    Unsubscribe {
        id: String,
        reply: oneshot::Sender<Result<Value, ClientError>>,
    },
    /// Fire and forget (ack, nack).
    Send(Value),
    Close,
}

/// A handle on the connection; cheap to clone.
#[derive(Clone)]
pub struct Client {
    ops: mpsc::UnboundedSender<Op>,
    state: watch::Receiver<ConnectionState>,
    request_timeout: Duration,
}

impl Client {
    /// Starts connecting in the background (on the current actix system) and returns
    /// at once; calls made before the connection is up wait for it.
    pub fn connect(config: ClientConfig) -> Client {
        let (ops, rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let request_timeout = config.request_timeout;
        actix_web::rt::spawn(run(config, rx, state_tx));
        Client {
            ops,
            state,
            request_timeout,
        }
    }

    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Changes of [`ConnectionState`], for observers.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Waits until connected, or until `limit` passes.
    pub async fn wait_connected(&self, limit: Duration) -> Result<(), ClientError> {
        let mut state = self.state.clone();
        let settled = timeout(
            limit,
            state.wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected | ConnectionState::Failed | ConnectionState::Closed
                )
            }),
        )
        .await
        .map(|r| r.map(|s| *s));
        match settled {
            Ok(Ok(ConnectionState::Connected)) => Ok(()),
            Ok(Ok(ConnectionState::Failed)) => Err(ClientError::Failed),
            Ok(_) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Value, ClientError>>) -> Op,
    ) -> Result<Value, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(make(reply))
            .map_err(|_| ClientError::Closed)?;
        match timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.request_timeout)),
        }
    }

    async fn request(&self, frame: Value, retry: bool) -> Result<Value, ClientError> {
        self.call(|reply| Op::Request {
            frame,
            retry,
            reply,
        })
        .await
    }

    /// Publishes one event and waits for `published` (after the server stored it). An
    /// event without an `id` gets one here, so a retry after a reconnect is recognised
    /// as a duplicate rather than stored twice.
    pub async fn publish(&self, mut event: Value) -> Result<Published, ClientError> {
        ensure_id(&mut event);
        let reply = self
            .request(json!({"type": "publish_event", "event": event}), true)
            .await?;
        published(&reply)
    }

    /// Publishes events in one batch; one result per event, in order.
    pub async fn publish_batch(
        &self,
        mut events: Vec<Value>,
    ) -> Result<Vec<Result<Published, ClientError>>, ClientError> {
        events.iter_mut().for_each(ensure_id);
        let reply = self
            .request(json!({"type": "publish_batch", "events": events}), true)
            .await?;
        let results = reply["results"]
            .as_array()
            .ok_or_else(|| ClientError::Unexpected(reply.to_string()))?;
        Ok(results
            .iter()
            .map(|r| match r.get("error") {
                Some(e) => Err(server_error(e)),
                None => published(r),
            })
            .collect())
    }

    /// Subscribes (any subscription object of PROTOCOL.md section 3). The subscription
    /// gets a client-chosen `id` when it has none, so it keeps its id across reconnects.
    pub async fn subscribe(&self, mut spec: Value) -> Result<Subscription, ClientError> {
        if !spec.is_object() {
            return Err(ClientError::Unexpected(
                "a subscription must be an object".into(),
            ));
        }
        let id = match spec["id"].as_str() {
            Some(id) => id.to_owned(),
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                spec["id"] = json!(id);
                id
            }
        };
        let (tx, rx) = mpsc::channel(DELIVERY_BUFFER);
        let spec_id = id.clone();
        self.call(|reply| Op::Subscribe {
            id: spec_id,
            spec,
            deliveries: tx,
            reply,
        })
        .await?;
        Ok(Subscription {
            id,
            deliveries: rx,
            client: self.clone(),
        })
    }

    pub async fn unsubscribe(&self, id: &str) -> Result<(), ClientError> {
        let id = id.to_owned();
        self.call(|reply| Op::Unsubscribe { id, reply })
            .await
            .map(|_| ())
    }

    /// Acknowledges a delivery (no reply on success, per the protocol).
    pub fn ack(&self, subscription_id: &str, event_id: &str) {
        let _ = self.ops.send(Op::Send(json!({
            "type": "ack", "subscription_id": subscription_id, "event_id": event_id
        })));
    }

    /// Rejects a delivery: redelivered after `delay` when `requeue`, else dead-lettered.
    pub fn nack(&self, subscription_id: &str, event_id: &str, requeue: bool, delay: Duration) {
        let _ = self.ops.send(Op::Send(json!({
            "type": "nack", "subscription_id": subscription_id, "event_id": event_id,
            "requeue": requeue, "delay_ms": delay.as_millis() as u64,
        })));
    }

    /// Round trip to the server; answers its `server_time`.
    pub async fn ping(&self) -> Result<String, ClientError> {
        let reply = self.request(json!({"type": "ping"}), true).await?;
        Ok(reply["server_time"].as_str().unwrap_or_default().to_owned())
    }

    /// Closes the connection; pending calls answer [`ClientError::Closed`].
    pub fn close(&self) {
        let _ = self.ops.send(Op::Close);
    }
}

/// A live subscription: its deliveries, in the order the server sent them.
pub struct Subscription {
    pub id: String,
    deliveries: mpsc::Receiver<Delivery>,
    client: Client,
}

impl Subscription {
    /// The next delivery; `None` once the client is closed or has failed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// The next event, skipping notices, with its attempt number.
    pub async fn next_event(&mut self) -> Option<(Value, u64)> {
        loop {
            match self.next().await? {
                Delivery::Event { event, attempt } => return Some((event, attempt)),
                _ => continue,
            }
        }
    }

    pub async fn ack(&self, event_id: &str) {
        self.client.ack(&self.id, event_id);
    }

    pub fn nack(&self, event_id: &str, requeue: bool, delay: Duration) {
        self.client.nack(&self.id, event_id, requeue, delay);
    }
}

fn ensure_id(event: &mut Value) {
    if event.is_object() && event.get("id").is_none_or(Value::is_null) {
        event["id"] = json!(uuid::Uuid::now_v7().to_string());
    }
}

fn server_error(e: &Value) -> ClientError {
    ClientError::Server {
        code: e["code"].as_str().unwrap_or("unknown").to_owned(),
        message: e["message"].as_str().unwrap_or_default().to_owned(),
    }
}

fn published(reply: &Value) -> Result<Published, ClientError> {
    match (reply["event_id"].as_str(), reply["cursor"].as_u64()) {
        (Some(id), Some(cursor)) => Ok(Published {
            event_id: id.to_owned(),
            cursor,
            duplicate: reply["duplicate"].as_bool().unwrap_or(false),
        }),
        _ => Err(ClientError::Unexpected(reply.to_string())),
    }
}

// ---- the connection task ----

struct Pending {
    frame: Value,
    retry: bool,
    reply: oneshot::Sender<Result<Value, ClientError>>,
}

struct Sub {
    spec: Value,
    deliveries: mpsc::Sender<Delivery>,
    /// Highest cursor delivered: a resume starts after it.
    last_cursor: Option<u64>,
    /// When it was made: a resume before any delivery starts there.
    since: String,
}

impl Sub {
    /// The subscribe command that restores it after a reconnect.
    fn resume_frame(&self) -> Value {
        let mut spec = self.spec.clone();
        if spec.get("durable").is_none() {
            if let Some(obj) = spec.as_object_mut() {
                obj.remove("from_cursor");
                obj.remove("since");
            }
            match self.last_cursor {
                Some(c) => spec["from_cursor"] = json!(c),
                None => spec["since"] = json!(self.since),
            }
        }
        json!({"type": "subscribe", "subscription": spec})
    }
}

struct Task {
    config: ClientConfig,
    state: watch::Sender<ConnectionState>,
    pending: HashMap<u64, Pending>,
    subs: HashMap<String, Sub>,
    next_request: u64,
}

type Conn = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

enum Ended {
    /// The connection dropped: reconnect.
    Lost,
    /// `close()` was called or every `Client` handle is gone.
    Closed,
}

async fn run(
    config: ClientConfig,
    mut ops: mpsc::UnboundedReceiver<Op>,
    state: watch::Sender<ConnectionState>,
) {
    let mut task = Task {
        config,
        state,
        pending: HashMap::new(),
        subs: HashMap::new(),
        next_request: 1,
    };
    let mut failures = 0u32;
    loop {
        match task.open().await {
            Ok(conn) => {
                failures = 0;
                let _ = task.state.send(ConnectionState::Connected);
                match task.serve(conn, &mut ops).await {
                    Ended::Closed => break,
                    Ended::Lost => log::info!("switchyard client: connection lost"),
                }
            }
            Err(e) => log::info!(
                "switchyard client: connect to {} failed: {e}",
                task.config.url
            ),
        }
        failures += 1;
        if task.config.max_attempts.is_some_and(|max| failures > max) {
            let _ = task.state.send(ConnectionState::Failed);
            task.fail_all(ClientError::Failed);
            // Answer calls made from now on, until every handle is gone.
            while let Some(op) = ops.recv().await {
                reject(op, ClientError::Failed);
            }
            return;
        }
        let _ = task
            .state
            .send(ConnectionState::Reconnecting { attempt: failures });
        let delay = task.config.backoff.delay(failures, fastrand::f64());
        // Keep taking calls while waiting; they are sent once connected.
        let wait = sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                op = ops.recv() => match op {
                    None | Some(Op::Close) => {
                        task.close();
                        return;
                    }
                    // Sent (or restored) once connected; an ack meanwhile is moot:
                    // the server redelivers what was not acknowledged.
                    Some(op) => {
                        task.queue(op);
                    }
                },
            }
        }
    }
    task.close();
}

fn reject(op: Op, error: ClientError) {
    match op {
        Op::Request { reply, .. } | Op::Subscribe { reply, .. } | Op::Unsubscribe { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::Send(_) | Op::Close => {}
    }
}

impl Task {
    async fn open(&mut self) -> Result<Conn, String> {
        let client = socket::http_client(Duration::from_secs(10));
        let mut request = client.ws(&self.config.url).max_frame_size(64 << 20);
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token);
        }
        let (_, mut conn) = request.connect().await.map_err(|e| e.to_string())?;
        // Restore subscriptions, then resend what was never answered (a subscribe
        // still waiting for its reply is resent as it was, not restored twice).
        let awaiting: Vec<&str> = self
            .pending
            .values()
            .filter(|p| p.frame["type"] == "subscribe")
            .filter_map(|p| p.frame["subscription"]["id"].as_str())
            .collect();
        let frames: Vec<Value> = self
            .subs
            .iter()
            .filter(|(id, _)| !awaiting.contains(&id.as_str()))
            .map(|(_, s)| s.resume_frame())
            .collect();
        for frame in frames {
            send(&mut conn, &frame).await.map_err(|e| e.to_string())?;
        }
        let mut ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(p) = self.pending.get(&id) {
                send(&mut conn, &p.frame).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(conn)
    }

    /// Takes a call: a request gets its `request_id` and waits for its reply.
    fn queue(&mut self, op: Op) -> Option<Value> {
        match op {
            Op::Request {
                mut frame,
                retry,
                reply,
            } => {
                let id = self.next_request;
                self.next_request += 1;
                frame["request_id"] = json!(id);
                self.pending.insert(
                    id,
                    Pending {
                        frame: frame.clone(),
                        retry,
                        reply,
                    },
                );
                Some(frame)
            }
            Op::Subscribe {
                id,
                spec,
                deliveries,
                reply,
            } => {
                let frame = json!({"type": "subscribe", "subscription": spec.clone()});
                self.subs.insert(
                    id,
                    Sub {
                        spec,
                        deliveries,
                        last_cursor: None,
                        since: chrono::Utc::now()
                            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    },
                );
                self.queue(Op::Request {
                    frame,
                    retry: true,
                    reply,
                })
            }
            Op::Unsubscribe { id, reply } => {
                self.subs.remove(&id);
                let frame = json!({"type": "unsubscribe", "subscription_id": id});
                self.queue(Op::Request {
                    frame,
                    retry: false,
                    reply,
                })
            }
            Op::Send(frame) => Some(frame),
            Op::Close => None,
        }
    }

    async fn serve(&mut self, mut conn: Conn, ops: &mut mpsc::UnboundedReceiver<Op>) -> Ended {
        loop {
            tokio::select! {
                frame = conn.next() => match frame {
                    Some(Ok(ws::Frame::Text(text))) => self.receive(&text).await,
                    Some(Ok(ws::Frame::Ping(p))) => {
                        if conn.send(ws::Message::Pong(p)).await.is_err() {
                            return self.lost();
                        }
                    }
                    Some(Ok(ws::Frame::Close(reason))) => {
                        log::info!("switchyard client: server closed the connection: {reason:?}");
                        return self.lost();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return self.lost(),
                },
                op = ops.recv() => match op {
                    None | Some(Op::Close) => {
                        let _ = conn.send(ws::Message::Close(Some(ws::CloseCode::Normal.into()))).await;
                        return Ended::Closed;
                    }
                    Some(op) => {
                        if let Some(frame) = self.queue(op) {
                            if send(&mut conn, &frame).await.is_err() {
                                return self.lost();
                            }
                        }
                    }
                },
            }
        }
    }

    /// The connection dropped: calls that cannot be retried fail now.
    fn lost(&mut self) -> Ended {
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.retry)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(ClientError::Unexpected(
                    "the connection dropped before the reply".into(),
                )));
            }
        }
        Ended::Lost
    }

    async fn receive(&mut self, text: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Value>(text) else {
            log::warn!("switchyard client: a frame that is not JSON");
            return;
        };
        let sub_id = msg["subscription_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let delivery = match msg["type"].as_str() {
            Some("event") => {
                let cursor = msg["event"]["cursor"].as_u64();
                Some(Delivery::Event {
                    attempt: msg["attempt"].as_u64().unwrap_or(1),
                    event: msg["event"].clone(),
                })
                .inspect(|_| {
                    if let (Some(sub), Some(c)) = (self.subs.get_mut(&sub_id), cursor) {
                        sub.last_cursor = Some(sub.last_cursor.map_or(c, |l| l.max(c)));
                    }
                })
            }
            Some("replay_complete") => Some(Delivery::ReplayComplete {
                last_cursor: msg["last_cursor"].as_u64().unwrap_or(0),
            }),
            Some("dropped") => Some(Delivery::Dropped {
                count: msg["count"].as_u64().unwrap_or(0),
            }),
            _ => None,
        };
        if let Some(delivery) = delivery {
            if let Some(sub) = self.subs.get(&sub_id) {
                // A full buffer holds the connection: the server sees a slow reader.
                let _ = sub.deliveries.send(delivery).await;
            }
            return;
        }
        let Some(id) = msg["request_id"].as_u64() else {
            if msg["type"] == "error" {
                log::warn!("switchyard client: server error: {msg}");
            }
            return;
        };
        let Some(p) = self.pending.remove(&id) else {
            // The answer to a resubscription after a reconnect.
            if msg["type"] == "error" {
                log::warn!("switchyard client: resubscribe refused: {msg}");
            }
            return;
        };
        let result = if msg["type"] == "error" {
            Err(server_error(&msg))
        } else {
            Ok(msg)
        };
        let _ = p.reply.send(result);
    }

    fn fail_all(&mut self, error: ClientError) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(error.clone()));
        }
        self.subs.clear();
    }

    fn close(&mut self) {
        let _ = self.state.send(ConnectionState::Closed);
        self.fail_all(ClientError::Closed);
    }
}

async fn send(conn: &mut Conn, frame: &Value) -> Result<(), awc::error::WsProtocolError> {
    conn.send(ws::Message::Text(frame.to_string().into())).await
}
