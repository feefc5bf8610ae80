//! `--idle-connections`: connections that only answer pings, spread over the client
//! threads, and the server's resident memory before and with them.
//!
//! Owns: opening, holding and closing the idle connections. Must not: publish or
//! subscribe.

use std::cell::Cell;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use actix_web::rt::time::sleep;
use awc::ws::{Frame, Message};
use futures_util::future::{join_all, select};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::server::server_rss;
use super::threads::{all_ready, on_own_thread, Ready};
use super::wire::connect;
use super::{BenchArgs, BenchError};

/// One client thread's idle connections: opens `n`, says how many on `ready`, then only
/// answers pings until `stop`; answers how many the server closed meanwhile.
async fn idle_group(
    url: String,
    token: Option<String>,
    n: u64,
    ready: Ready,
    stop: oneshot::Receiver<()>,
) -> u64 {
    let mut conns = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match connect(&url, token.as_deref()).await {
            Ok(ws) => conns.push(ws),
            Err(e) => {
                let _ = ready.send(Err(e));
                return 0;
            }
        }
    }
    let _ = ready.send(Ok(()));
    let closed = Rc::new(Cell::new(0u64));
    let hold = join_all(conns.into_iter().map(|mut ws| {
        let closed = closed.clone();
        async move {
            while let Some(Ok(frame)) = ws.next().await {
                if let Frame::Ping(p) = frame {
                    if ws.send(Message::Pong(p)).await.is_err() {
                        break;
                    }
                }
            }
            closed.set(closed.get() + 1);
        }
    }));
    let _ = select(pin!(stop), pin!(hold)).await;
    closed.get()
}

/// What `--idle-connections` measured.
pub struct IdleReport {
    stop: Vec<oneshot::Sender<()>>,
    closed: Vec<oneshot::Receiver<u64>>,
    json: Value,
}

/// Opens `--idle-connections` over the client threads and measures the server's
/// resident memory before and with them (after a 2 s settle).
pub async fn open_idle(args: &BenchArgs, threads: u64) -> Result<IdleReport, BenchError> {
    let n = args.idle_connections;
    let before = server_rss(&args.url, args.token.as_deref()).await;
    let (mut stop, mut closed, mut readies) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..threads {
        let share = n * (t + 1) / threads - n * t / threads;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (url, token) = (args.url.clone(), args.token.clone());
        let (is_ready, done) = on_own_thread(format!("bench-idle-{t}"), move |ready| {
            idle_group(url, token, share, ready, stop_rx)
        })?;
        closed.push(done);
        stop.push(stop_tx);
        readies.push(is_ready);
    }
    all_ready(readies).await?;
    sleep(Duration::from_secs(2)).await;
    let with = server_rss(&args.url, args.token.as_deref()).await;
    let per = match (before, with) {
        (Some(b), Some(w)) if n > 0 => json!(w.saturating_sub(b) / n),
        _ => Value::Null,
    };
    Ok(IdleReport {
        stop,
        closed,
        json: json!({"connections": n, "server_rss_before": before, "server_rss_with_idle": with,
                     "rss_per_connection_bytes": per}),
    })
}

impl IdleReport {
    /// Closes the idle connections; the report, with how many the server had closed
    /// meanwhile (it should close none: they answer every ping).
    pub async fn close(self) -> Value {
        for stop in self.stop {
            let _ = stop.send(());
        }
        let mut closed = 0;
        for c in self.closed {
            closed += c.await.unwrap_or(0);
        }
        let mut report = self.json;
        report["closed_by_server"] = json!(closed);
        report
    }
}
