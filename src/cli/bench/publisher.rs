//! The publishers: each its own connection, sending `publish_batch` (or, with
//! `--batch 1`, `publish_event`) commands with at most `--window` awaiting replies, at
//! `--rate` when given. Every event carries its send time for the subscribers; the
//! publisher times each command to its reply. The critical lane is one more publisher
//! with a lane of its own.
//!
//! Owns: what is published, how fast, and what the replies say. Must not: subscribe.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix_web::rt::time::{sleep_until, Instant};
use awc::ws::Message;
use bytes::Bytes;
use futures_util::future::{select, Either, FutureExt as _};
use futures_util::SinkExt as _;
use hdrhistogram::Histogram;
use serde_json::Value;

use super::report::histogram;
use super::wire::{micros_now, next_text, Conn};
use super::BenchArgs;

/// What one publisher saw.
pub struct PubResult {
    pub accepted: u64,
    /// Accepted events a subscription matches (all but those `--conditional` skips).
    pub matching: u64,
    /// Refused events by error code.
    pub errors: BTreeMap<String, u64>,
    pub last_reply: Option<Instant>,
    /// Command→reply latency.
    pub latency: Histogram<u64>,
    pub problem: Option<String>,
}

/// What every publisher of a run shares: the options, the priority mix, the padding,
/// when to stop, and the progress counter.
pub struct Plan {
    args: BenchArgs,
    pub slots: Vec<&'static str>,
    pad: String,
    /// Publishing stops here with `--duration-secs`.
    pub stop_at: Option<Instant>,
    deadline: Instant,
    /// Events accepted so far over the publishers sharing this plan (the progress bar).
    progress: Rc<Cell<u64>>,
}

impl Plan {
    pub fn new(
        args: &BenchArgs,
        slots: Vec<&'static str>,
        stop_at: Option<Instant>,
        deadline: Instant,
        progress: Rc<Cell<u64>>,
    ) -> Plan {
        Plan {
            args: args.clone(),
            slots,
            pad: "x".repeat(args.payload_bytes),
            stop_at,
            deadline,
            progress,
        }
    }
}

/// How one publisher sends: the load's publishers share `--rate`, `--batch` and
/// `--window`; the critical lane sends single critical events at `--critical-rate` until
/// the load is done.
pub struct Lane {
    /// Events per second; 0: as fast as the replies allow.
    pub rate: f64,
    pub batch: u64,
    pub window: u64,
    /// Every event at this priority instead of the `--priorities` mix.
    pub priority: Option<&'static str>,
    /// Stops publishing once set (the critical lane, when the load is done).
    pub done: Option<Arc<AtomicBool>>,
}

/// The critical lane's sequence numbers start here, above any load's.
pub const CRITICAL_SEQ: u64 = 1 << 52;

/// One command publishing events `first..first+n`, each stamped with its send time.
fn command(plan: &Plan, lane: &Lane, first: u64, n: u64) -> String {
    let single = lane.batch == 1;
    let mut text = String::with_capacity(n as usize * (plan.pad.len() + 120));
    text.push_str(if single {
        r#"{"type":"publish_event","event":"#
    } else {
        r#"{"type":"publish_batch","events":["#
    });
    let now = micros_now();
    for i in first..first + n {
        let sep = if i == first { "" } else { "," };
        let priority = lane
            .priority
            .unwrap_or_else(|| plan.slots[(i % 100) as usize]);
        let _ = write!(
            text,
            r#"{sep}{{"topic":"bench.load","priority":"{priority}","payload":{{"seq":{i},"sent_us":{now},"pad":"{}"}}}}"#,
            plan.pad
        );
    }
    text.push_str(if single { "}" } else { "]}" });
    text
}

/// One publisher on its own connection: publishes the events numbered `seqs`.
pub async fn publisher(
    mut ws: Conn,
    mut seqs: std::ops::Range<u64>,
    plan: Rc<Plan>,
    lane: Lane,
) -> PubResult {
    let mut out = PubResult {
        accepted: 0,
        matching: 0,
        errors: BTreeMap::new(),
        last_reply: None,
        latency: histogram(),
        problem: None,
    };
    let per_pub_rate = lane.rate;
    let start = Instant::now();
    let mut timer = pin!(sleep_until(plan.deadline));
    let mut in_flight: VecDeque<(u64, u64, Instant)> = VecDeque::new(); // (first, n, sent)
    let mut sent_events = 0u64;
    'run: loop {
        let more = seqs.start < seqs.end
            && plan.stop_at.is_none_or(|t| Instant::now() < t)
            && !lane.done.as_ref().is_some_and(|d| d.load(Relaxed));
        if more && (in_flight.len() as u64) < lane.window {
            let n = (seqs.end - seqs.start).min(lane.batch);
            if per_pub_rate > 0.0 {
                let due = start + Duration::from_secs_f64(sent_events as f64 / per_pub_rate);
                if due > Instant::now() && in_flight.is_empty() {
                    sleep_until(due).await;
                } else if due > Instant::now() {
                    // Read replies while waiting for the next slot.
                    match select(pin!(sleep_until(due)), pin!(next_text(&mut ws, &mut timer))).await
                    {
                        Either::Left(_) => {}
                        Either::Right((reply, _)) => {
                            if !handle_reply(reply, &mut in_flight, &mut out, &plan) {
                                break;
                            }
                            continue;
                        }
                    }
                }
            }
            // Replies already here are read first: a publisher that sends whenever its
            // schedule says so (no window, or one it never fills) must still read, or a
            // server that waits on its replies stops reading too.
            while let Some(reply) = next_text(&mut ws, &mut timer).now_or_never() {
                if !handle_reply(reply, &mut in_flight, &mut out, &plan) {
                    break 'run;
                }
            }
            let text = command(&plan, &lane, seqs.start, n);
            in_flight.push_back((seqs.start, n, Instant::now()));
            if let Err(e) = ws.send(Message::Text(text.into())).await {
                out.problem = Some(e.to_string());
                break;
            }
            seqs.start += n;
            sent_events += n;
            continue;
        }
        if in_flight.is_empty() {
            break;
        }
        let reply = next_text(&mut ws, &mut timer).await;
        if !handle_reply(reply, &mut in_flight, &mut out, &plan) {
            break;
        }
    }
    let _ = ws.send(Message::Close(None)).await;
    out
}

/// Accounts for one reply; false when the publisher must stop.
fn handle_reply(
    reply: Result<Option<Bytes>, String>,
    in_flight: &mut VecDeque<(u64, u64, Instant)>,
    out: &mut PubResult,
    plan: &Plan,
) -> bool {
    let bytes = match reply {
        Ok(Some(b)) => b,
        Ok(None) => {
            out.problem = Some(format!(
                "timed out with {} commands unanswered",
                in_flight.len()
            ));
            return false;
        }
        Err(e) => {
            out.problem = Some(e);
            return false;
        }
    };
    let now = Instant::now();
    let Some((first, n, sent)) = in_flight.pop_front() else {
        out.problem = Some("a reply nobody asked for".into());
        return false;
    };
    out.latency
        .saturating_record((now.duration_since(sent).as_micros() as u64).max(1));
    out.last_reply = Some(now);
    let reply: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut accept = |seq: u64| {
        out.accepted += 1;
        if !plan.args.conditional || seq.is_multiple_of(2) {
            out.matching += 1;
        }
    };
    match reply["type"].as_str() {
        Some("published") => accept(first),
        Some("published_batch") => {
            for (i, r) in reply["results"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                match r["error"]["code"].as_str() {
                    Some(code) => *out.errors.entry(code.to_owned()).or_default() += 1,
                    None => accept(first + i as u64),
                }
            }
        }
        Some("error") => {
            let code = reply["code"].as_str().unwrap_or("?").to_owned();
            *out.errors.entry(code).or_default() += n;
        }
        _ => {
            out.problem = Some(format!("unexpected reply: {reply}"));
            return false;
        }
    }
    plan.progress.set(plan.progress.get() + n);
    true
}
