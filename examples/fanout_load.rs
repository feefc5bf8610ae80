//! A bounded load generator against a Switchyard running on this machine (any `--url`
//! whose host is not loopback is refused): P publishers → N subscribers, or a replay.
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --release --example fanout_load -- --url ws://127.0.0.1:9090/ws \
//!     --publishers 1 --subscribers 10 --events 200000 --payload-bytes 256 --batch 100
//! cargo run --release --example fanout_load -- --replay    # read the whole log back
//! ```
//!
//! Each subscriber subscribes to `load.>`; once all are `subscribed`, each publisher (its
//! own connection and an even share of `--events`) sends `publish_batch` commands (topic
//! `load.test`, priority normal; with `--batch 1`, single `publish_event` commands) with
//! up to `--window` commands awaiting replies. The time from sending each command to
//! reading its reply goes into an HDR histogram (µs). Each subscriber counts `event`
//! frames and `dropped` notices and stops when it has accounted for every accepted event;
//! with `--subscribers 0` the run ends when every publish is answered. `--replay` instead
//! subscribes to everything from cursor 0 and counts events until `replay_complete`.
//! Everything stops at `--timeout-secs`. Prints a human-readable report, then one line of
//! JSON; exits 2 if any event was rejected or anything timed out or failed.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use actix_rt::time::{sleep_until, Instant, Sleep};
use anyhow::{bail, ensure, Context as _};
use awc::ws::Message;
use bytes::Bytes;
use clap::Parser;
use futures_util::future::join_all;
use futures_util::SinkExt as _;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use switchyard::cli::bench::{self, check_local, histogram, Conn};

#[derive(Parser)]
#[command(about = "Fan-out load test: P publishers -> N subscribers on a local Switchyard")]
struct Args {
    /// WebSocket address of the router; must be 127.0.0.1, localhost or [::1].
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    /// Publishing connections; the events are split evenly between them.
    #[arg(long, default_value_t = 1)]
    publishers: u64,
    /// Subscribing connections; 0 ends the run when every publish is answered.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Size of each event's `pad` string.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Events per `publish_batch` command; 1 sends `publish_event` commands instead.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Commands each publisher sends before waiting for their replies.
    #[arg(long, default_value_t = 8)]
    window: u64,
    /// Hard limit on the whole run.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Publish nothing: subscribe to everything from cursor 0, time the replay.
    #[arg(long)]
    replay: bool,
}

/// `bench`'s helpers, with the error type this example uses.
async fn next_text(ws: &mut Conn, timer: &mut Pin<&mut Sleep>) -> anyhow::Result<Option<Bytes>> {
    bench::next_text(ws, timer)
        .await
        .map_err(anyhow::Error::msg)
}

async fn connect(url: &str) -> anyhow::Result<Conn> {
    Ok(bench::connect(url, None).await?)
}

const EVENT: &[u8] = br#"{"type":"event""#;

struct SubResult {
    received: u64,
    dropped: u64,
    finished: Instant,
    problem: Option<String>,
}

/// Counts deliveries until `received + dropped` reaches `target` (lowered by the publishers
/// to the number of accepted events once they are done), or the deadline.
async fn subscriber(mut ws: Conn, target: Rc<Cell<u64>>, deadline: Instant) -> SubResult {
    let (mut received, mut dropped, mut problem) = (0, 0, None);
    let tick = || deadline.min(Instant::now() + Duration::from_millis(100));
    let mut timer = pin!(sleep_until(tick()));
    while received + dropped < target.get() {
        match next_text(&mut ws, &mut timer).await {
            Ok(Some(b)) if b.starts_with(EVENT) => received += 1,
            Ok(Some(b)) => {
                let msg: Value = serde_json::from_slice(&b).unwrap_or_default();
                match msg["type"].as_str() {
                    Some("dropped") => dropped += msg["count"].as_u64().unwrap_or(0),
                    _ => problem = Some(format!("unexpected message: {msg}")),
                }
            }
            Ok(None) if Instant::now() >= deadline => {
                problem = Some("timed out".into());
                break;
            }
            Ok(None) => timer.as_mut().reset(tick()),
            Err(e) => {
                problem = Some(e.to_string());
                break;
            }
        }
    }
    let (finished, _) = (Instant::now(), ws.send(Message::Close(None)).await);
    SubResult {
        received,
        dropped,
        finished,
        problem,
    }
}

struct PubResult {
    accepted: u64,
    errors: BTreeMap<String, u64>,
    last_reply: Option<Instant>,
    /// Microseconds from sending a command to reading its reply.
    latency: Histogram<u64>,
    problem: Option<String>,
}

/// The text of one command publishing the events numbered `seqs` (just one if `single`).
fn command(seqs: Range<u64>, single: bool, pad: &str) -> String {
    let mut text = String::with_capacity((seqs.end - seqs.start) as usize * (pad.len() + 80));
    let (open, close) = match single {
        true => (r#"{"type":"publish_event","event":"#, "}"),
        false => (r#"{"type":"publish_batch","events":["#, "]}"),
    };
    text.push_str(open);
    for i in seqs.clone() {
        let sep = if i == seqs.start { "" } else { "," };
        let _ = write!(
            text,
            r#"{sep}{{"topic":"load.test","priority":"normal","payload":{{"seq":{i},"pad":"{pad}"}}}}"#
        );
    }
    text.push_str(close);
    text
}

/// One publisher on its own connection: publishes the events numbered `seqs`.
async fn publisher(mut ws: Conn, seqs: Range<u64>, args: Rc<Args>, deadline: Instant) -> PubResult {
    let mut out = PubResult {
        accepted: 0,
        errors: BTreeMap::new(),
        last_reply: None,
        latency: histogram(),
        problem: None,
    };
    if let Err(e) = publish(&mut ws, seqs, &args, deadline, &mut out).await {
        out.problem = Some(format!("{e:#}"));
    }
    let _ = ws.send(Message::Close(None)).await;
    out
}

/// Publishes with at most `window` commands awaiting replies.
async fn publish(
    ws: &mut Conn,
    seqs: Range<u64>,
    args: &Args,
    deadline: Instant,
    out: &mut PubResult,
) -> anyhow::Result<()> {
    let pad = "x".repeat(args.payload_bytes);
    let mut timer = pin!(sleep_until(deadline));
    let mut in_flight = VecDeque::new(); // (events, sent at) of commands awaiting replies
    let mut next = seqs.start;
    while next < seqs.end || !in_flight.is_empty() {
        if next < seqs.end && (in_flight.len() as u64) < args.window {
            let n = (seqs.end - next).min(args.batch);
            let text = command(next..next + n, args.batch == 1, &pad);
            in_flight.push_back((n, Instant::now()));
            ws.send(Message::Text(text.into())).await?;
            next += n;
            continue;
        }
        let Some(bytes) = next_text(ws, &mut timer).await? else {
            bail!("timed out with {} commands unanswered", in_flight.len());
        };
        let now = Instant::now();
        let (n, sent) = in_flight.pop_front().unwrap_or((0, now));
        let micros = u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
        out.latency.saturating_record(micros.max(1));
        out.last_reply = Some(now);
        let reply: Value = serde_json::from_slice(&bytes).context("reply is not JSON")?;
        match reply["type"].as_str() {
            Some("published") => out.accepted += 1,
            Some("published_batch") => {
                for r in reply["results"].as_array().into_iter().flatten() {
                    match r["error"]["code"].as_str() {
                        Some(code) => *out.errors.entry(code.to_owned()).or_default() += 1,
                        None => out.accepted += 1,
                    }
                }
            }
            Some("error") => {
                let code = reply["code"].as_str().unwrap_or("?").to_owned();
                *out.errors.entry(code).or_default() += n;
            }
            _ => bail!("unexpected reply: {reply}"),
        }
    }
    Ok(())
}

/// `--replay`: subscribes to everything from cursor 0 and counts until `replay_complete`.
async fn replay(args: &Args, deadline: Instant) -> anyhow::Result<bool> {
    let mut ws = connect(&args.url).await?;
    let sub = json!({"type": "subscribe", "subscription": {"type": "all", "from_cursor": 0}});
    let start = Instant::now();
    ws.send(Message::Text(sub.to_string().into())).await?;
    let mut timer = pin!(sleep_until(deadline));
    let (mut replayed, mut dropped, mut last_cursor, mut problem) = (0u64, 0, None, None);
    while last_cursor.is_none() && problem.is_none() {
        match next_text(&mut ws, &mut timer).await {
            Ok(Some(b)) if b.starts_with(EVENT) => replayed += 1,
            Ok(Some(b)) => {
                let msg: Value = serde_json::from_slice(&b).unwrap_or_default();
                match msg["type"].as_str() {
                    Some("subscribed") => {}
                    Some("dropped") => dropped += msg["count"].as_u64().unwrap_or(0),
                    Some("replay_complete") => last_cursor = msg["last_cursor"].as_u64(),
                    _ => problem = Some(format!("unexpected message: {msg}")),
                }
            }
            Ok(None) => problem = Some("timed out".to_owned()),
            Err(e) => problem = Some(format!("{e:#}")),
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let _ = ws.send(Message::Close(None)).await;
    let rate = replayed as f64 / secs;
    println!("replayed   {replayed} events in {secs:.3} s = {rate:.0} events/s (last_cursor {last_cursor:?}, {dropped} dropped; problem: {problem:?})");
    let report = json!({"mode": "replay", "replayed": replayed, "replay_rate": rate.round(), "dropped": dropped,
        "last_cursor": last_cursor, "seconds": (secs * 1000.0).round() / 1000.0});
    println!("{report}");
    Ok(problem.is_none() && dropped == 0)
}

/// Prints the problems of the subscribers or publishers; answers how many there were.
fn print_problems<'a>(who: &str, problems: impl Iterator<Item = &'a Option<String>>) -> usize {
    let problems = problems
        .enumerate()
        .filter_map(|(i, p)| Some((i, p.as_ref()?)));
    problems.fold(0, |n, (i, p)| {
        println!("{who} {i}: {p}");
        n + 1
    })
}

async fn run(args: Args) -> anyhow::Result<bool> {
    check_local(&args.url)?;
    ensure!(
        args.batch > 0 && args.window > 0 && args.publishers > 0,
        "--batch, --window and --publishers must be at least 1"
    );
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.timeout_secs);
    if args.replay {
        return replay(&args, deadline).await;
    }
    let target = Rc::new(Cell::new(args.events));
    let mut tasks = Vec::new();
    for i in 0..args.subscribers {
        let mut ws = connect(&args.url).await?;
        let sub = json!({"type": "subscribe", "subscription": {"type": "pattern", "patterns": ["load.>"]}});
        ws.send(Message::Text(sub.to_string().into())).await?;
        let mut timer = pin!(sleep_until(deadline));
        let reply = next_text(&mut ws, &mut timer).await?.unwrap_or_default();
        let reply = String::from_utf8_lossy(&reply);
        ensure!(
            reply.starts_with(r#"{"type":"subscribed""#),
            "subscriber {i}: subscribe refused: {reply:?}"
        );
        tasks.push(actix_rt::spawn(subscriber(ws, target.clone(), deadline)));
    }
    let mut pub_conns = Vec::new();
    for _ in 0..args.publishers {
        pub_conns.push(connect(&args.url).await?);
    }
    println!("{} subscribers ready after {:.2} s; {} publishers sending {} events of {} pad bytes, batch {}, window {}",
        args.subscribers, began.elapsed().as_secs_f64(), args.publishers, args.events, args.payload_bytes, args.batch, args.window);

    let (args, start) = (Rc::new(args), Instant::now());
    let pub_tasks = (0..).zip(pub_conns).map(|(k, ws)| {
        let seqs = args.events * k / args.publishers..args.events * (k + 1) / args.publishers;
        actix_rt::spawn(publisher(ws, seqs, args.clone(), deadline))
    });
    let pubs: Vec<_> = join_all(pub_tasks.collect::<Vec<_>>()).await;
    let pubs: Vec<_> = pubs.into_iter().collect::<Result<_, _>>()?;
    let accepted: u64 = pubs.iter().map(|p| p.accepted).sum();
    target.set(accepted);
    let subs: Vec<_> = join_all(tasks).await;
    let subs: Vec<_> = subs.into_iter().collect::<Result<_, _>>()?;

    let mut errors = BTreeMap::<String, u64>::new();
    let mut latency = histogram();
    for p in &pubs {
        latency.add(&p.latency)?;
        for (code, n) in &p.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    let secs = |t: Instant| t.duration_since(start).as_secs_f64().max(1e-9);
    let last_reply = pubs.iter().filter_map(|p| p.last_reply).max();
    let pub_secs = secs(last_reply.unwrap_or(start));
    let sub_secs = secs(subs.iter().map(|s| s.finished).max().unwrap_or(start));
    let delivered: u64 = subs.iter().map(|s| s.received).sum();
    let dropped: u64 = subs.iter().map(|s| s.dropped).sum();
    let wall = secs(Instant::now());
    let (publish_rate, delivered_rate) = (accepted as f64 / pub_secs, delivered as f64 / sub_secs);
    let rejected: u64 = errors.values().sum();
    println!("published  {accepted} events in {pub_secs:.3} s = {publish_rate:.0} events/s ({rejected} rejected: {errors:?})");
    let per = if args.batch == 1 { "event" } else { "batch" };
    let q = |p: f64| latency.value_at_quantile(p);
    let (p50, p90, p99, p999, max) = (q(0.5), q(0.9), q(0.99), q(0.999), latency.max());
    println!("publish→published latency per {per} ({} samples, µs): p50 {p50} p90 {p90} p99 {p99} p99.9 {p999} max {max}", latency.len());
    if !subs.is_empty() {
        let each = subs.iter().map(|s| s.received);
        let (min, max) = (each.clone().min().unwrap_or(0), each.max().unwrap_or(0));
        println!("delivered  {delivered} events to {} subscribers in {sub_secs:.3} s = {delivered_rate:.0} events/s", subs.len());
        println!("dropped    {dropped} (slow_consumer); per subscriber: min {min} max {max}");
    }
    let setup = began.elapsed().as_secs_f64();
    println!("wall time  {wall:.3} s from first send ({setup:.3} s with setup)");
    let problems = print_problems("subscriber", subs.iter().map(|s| &s.problem))
        + print_problems("publisher", pubs.iter().map(|p| &p.problem));
    let ok = rejected == 0 && problems == 0;
    let report = json!({"publishers": args.publishers, "subscribers": args.subscribers, "batch": args.batch,
        "window": args.window, "published": accepted, "publish_rate": publish_rate.round(), "delivered": delivered,
        "delivered_rate": delivered_rate.round(), "dropped": dropped, "rejected": rejected, "errors": errors,
        "latency_us": {"per": per, "samples": latency.len(), "p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max},
        "seconds": (wall * 1000.0).round() / 1000.0});
    println!("{report}");
    Ok(ok)
}

#[actix_rt::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
