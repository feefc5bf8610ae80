//! The handles a caller holds: [`Client`] (cheap to clone) and [`Subscription`]. Each
//! call becomes an [`Op`] for the connection task and waits for its answer.
//!
//! Owns: turning calls into protocol frames and replies into typed results. Must not:
//! touch the socket; only the connection task (`connection.rs`) does.

use std::time::Duration;

use actix_web::rt::time::timeout;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::connection::{self, Op};
use super::{server_error, ClientConfig, ClientError, ConnectionState, Delivery, Published};

/// Deliveries buffered per subscription before the connection stops reading (and the
/// server starts treating this client as slow).
const DELIVERY_BUFFER: usize = 1024;

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
        actix_web::rt::spawn(connection::run(config, rx, state_tx));
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

    /// Subscribes (any subscription object of docs/protocol.md section 4.1). The subscription
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
