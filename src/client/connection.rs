//! The connection task: the one place that holds the socket. It opens it (round robin
//! over the configured URLs, with [`Backoff`](super::Backoff) between rounds), restores
//! subscriptions and resends unanswered requests after a reconnect, matches replies to
//! requests by `request_id`, moves on to the next node when one answers `unavailable`,
//! and hands deliveries to their subscriptions.
//!
//! Owns: the socket, the requests awaiting replies, the subscriptions to restore. Must
//! not: block the caller; handles reach it only through [`Op`]s.

use std::collections::HashMap;

use actix_web::rt::time::sleep;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::pending::{self, Judged, Pending};
use super::rotation;
use super::socket::{self, WsConnection};
use super::subs::{self, Sub};
use super::{ClientConfig, ClientError, ConnectionState, Delivery};

/// What a handle asks of the connection task.
pub(super) enum Op {
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

struct Task {
    config: ClientConfig,
    state: watch::Sender<ConnectionState>,
    pending: HashMap<u64, Pending>,
    subs: HashMap<String, Sub>,
    next_request: u64,
    /// The URL (index into `config.urls`) connected to, or to try next.
    index: usize,
    /// A request was answered `unavailable`: leave this node for the next.
    move_on: bool,
}

enum Ended {
    /// The connection dropped: reconnect.
    Lost,
    /// The node answered `unavailable`: try the next. Not a healthy connection, so it
    /// does not reset the count of failures (all nodes refusing still backs off).
    Unavailable,
    /// `close()` was called or every `Client` handle is gone.
    Closed,
}

/// Connects, serves, reconnects with backoff, until closed or out of attempts.
pub(super) async fn run(
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
        index: 0,
        move_on: false,
    };
    let mut failures = 0u32;
    loop {
        let before = failures;
        match task.open().await {
            Ok(conn) => {
                failures = 0;
                let _ = task.state.send(ConnectionState::Connected);
                match task.serve(conn, &mut ops).await {
                    Ended::Closed => break,
                    Ended::Lost => {
                        log::info!("switchyard client: connection to {} lost", task.url())
                    }
                    Ended::Unavailable => {
                        log::info!(
                            "switchyard client: {} answered unavailable; trying the next node",
                            task.url()
                        );
                        failures = before;
                    }
                }
            }
            Err(e) => log::info!("switchyard client: connect to {} failed: {e}", task.url()),
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
        let next = rotation::after_failure(task.index, task.config.urls.len(), failures);
        task.index = next.index;
        let Some(round) = next.wait else {
            continue;
        };
        let delay = task.config.backoff.delay(round, fastrand::f64());
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
    fn url(&self) -> &str {
        self.config
            .urls
            .get(self.index)
            .map_or("(no URL configured)", String::as_str)
    }

    async fn open(&mut self) -> Result<WsConnection, String> {
        let url = self
            .config
            .urls
            .get(self.index)
            .ok_or("no URL configured")?;
        let mut conn = socket::open_ws(url, self.config.token.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        self.move_on = false;
        // A call whose caller stopped waiting (its timeout passed) is not sent again.
        self.pending.retain(|_, p| !p.reply.is_closed());
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
            .iter_mut()
            .filter(|(id, _)| !awaiting.contains(&id.as_str()))
            .map(|(_, s)| s.resume())
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
                        earlier: None,
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
                self.subs.insert(id, Sub::new(spec, deliveries));
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

    async fn serve(
        &mut self,
        mut conn: WsConnection,
        ops: &mut mpsc::UnboundedReceiver<Op>,
    ) -> Ended {
        loop {
            tokio::select! {
                frame = conn.next() => match frame {
                    Some(Ok(ws::Frame::Text(text))) => {
                        self.receive(&text).await;
                        if self.move_on {
                            let _ = conn.send(ws::Message::Close(Some(ws::CloseCode::Normal.into()))).await;
                            self.lost();
                            return Ended::Unavailable;
                        }
                    }
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
        if let Some(delivery) = subs::delivery(&msg) {
            if let Some(sub) = self.subs.get_mut(&sub_id) {
                if sub.note(&delivery) {
                    // A full buffer holds the connection: the server sees a slow reader.
                    let _ = sub.deliveries.send(delivery).await;
                }
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
        match pending::judge(p.retry, p.earlier.as_deref(), msg) {
            Judged::Reply(result) => {
                let _ = p.reply.send(result);
            }
            Judged::Retry { earlier } => {
                self.pending.insert(id, Pending { earlier, ..p });
                self.move_on = true;
            }
        }
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

async fn send(conn: &mut WsConnection, frame: &Value) -> Result<(), awc::error::WsProtocolError> {
    conn.send(ws::Message::Text(frame.to_string().into())).await
}
