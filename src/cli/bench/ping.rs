//! `--ping-rate`: the ping lane. A `ping` is read and answered by the server without
//! routing anything, so its round trip is the floor under any routed latency measured
//! on the same machine and load.
//!
//! Owns: sending pings one at a time and timing their `pong`s. Must not: publish.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix_web::rt::time::{sleep_until, Instant};
use awc::ws::Message;
use futures_util::SinkExt as _;
use hdrhistogram::Histogram;
use memchr::memmem::Finder;

use super::report::histogram;
use super::wire::{next_text, Conn};

/// The ping lane: one `ping` at a time, `rate` per second, until `done` is set or the
/// run's deadline; the round trip of each (to its `pong`) goes into the histogram.
pub async fn pinger(
    mut ws: Conn,
    rate: u64,
    done: Arc<AtomicBool>,
    deadline: Instant,
) -> (Histogram<u64>, Option<String>) {
    let mut latency = histogram();
    let mut timer = pin!(sleep_until(deadline));
    let start = Instant::now();
    let mut problem = None;
    let pong = Finder::new(r#""pong""#);
    for k in 0u64.. {
        if done.load(Relaxed) || Instant::now() >= deadline {
            break;
        }
        sleep_until(start + Duration::from_secs_f64(k as f64 / rate as f64)).await;
        let sent = Instant::now();
        if let Err(e) = ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await {
            problem = Some(e.to_string());
            break;
        }
        let answered = loop {
            match next_text(&mut ws, &mut timer).await {
                Ok(Some(text)) if pong.find(&text).is_some() => break true,
                Ok(Some(_)) => {}
                Ok(None) => break false,
                Err(e) => {
                    problem = Some(e);
                    break false;
                }
            }
        };
        if !answered {
            break;
        }
        latency.saturating_record((sent.elapsed().as_micros() as u64).max(1));
    }
    let _ = ws.send(Message::Close(None)).await;
    (latency, problem)
}
