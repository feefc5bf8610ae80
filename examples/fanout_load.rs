//! A bounded fan-out load generator: one publisher, N subscribers, against a Switchyard
//! running on this machine (any `--url` whose host is not loopback is refused).
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --release --example fanout_load -- --url ws://127.0.0.1:9090/ws \
//!     --subscribers 10 --events 200000 --payload-bytes 256 --batch 100
//! ```
//!
//! Each subscriber subscribes to `load.>`; once all are `subscribed`, the publisher sends
//! `publish_batch` commands (topic `load.test`, priority normal) with up to `--window`
//! batches in flight. Each subscriber counts `event` frames and `dropped` notices and stops
//! when it has accounted for every accepted event; everything stops at `--timeout-secs`.
//! Prints a human-readable report, then one line of JSON; exits 2 if any event was
//! rejected or anything timed out or failed.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use actix_rt::time::{sleep_until, Instant, Sleep};
use anyhow::{anyhow, bail, ensure, Context as _};
use awc::ws::{Codec, Frame, Message};
use bytes::Bytes;
use clap::Parser;
use futures_util::future::{select, Either};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

type Conn = actix_codec::Framed<awc::BoxedSocket, Codec>;

#[derive(Parser)]
#[command(about = "Fan-out load test: 1 publisher -> N subscribers on a local Switchyard")]
struct Args {
    /// WebSocket address of the router; must be 127.0.0.1, localhost or [::1].
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Size of each event's `pad` string.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Events per `publish_batch` command.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Batches sent before waiting for their replies.
    #[arg(long, default_value_t = 8)]
    window: u64,
    /// Hard limit on the whole run.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

fn check_local(url: &str) -> anyhow::Result<()> {
    let uri: awc::http::Uri = url.parse().with_context(|| format!("bad --url `{url}`"))?;
    match uri.host() {
        Some("127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        host => bail!("refusing --url `{url}`: host {host:?} is not loopback"),
    }
}

async fn connect(url: &str) -> anyhow::Result<Conn> {
    let (_, conn) = awc::Client::new()
        .ws(url)
        .max_frame_size(64 << 20)
        .connect()
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {e} (is the router running?)"))?;
    Ok(conn)
}

/// The next text frame, answering pings; `Ok(None)` when `timer` fires first.
async fn next_text(ws: &mut Conn, timer: &mut Pin<&mut Sleep>) -> anyhow::Result<Option<Bytes>> {
    loop {
        let frame = match select(timer.as_mut(), ws.next()).await {
            Either::Left(_) => return Ok(None),
            Either::Right((frame, _)) => frame,
        };
        match frame {
            Some(Ok(Frame::Text(bytes))) => return Ok(Some(bytes)),
            Some(Ok(Frame::Ping(p))) => ws.send(Message::Pong(p)).await?,
            Some(Ok(Frame::Close(reason))) => bail!("server closed the connection: {reason:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("connection error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

struct SubResult {
    received: u64,
    dropped: u64,
    finished: Instant,
    problem: Option<String>,
}

/// Counts deliveries until `received + dropped` reaches `target` (lowered by the publisher
/// to the number of accepted events once it is done), or the deadline.
async fn subscriber(mut ws: Conn, target: Rc<Cell<u64>>, deadline: Instant) -> SubResult {
    let (mut received, mut dropped, mut problem) = (0, 0, None);
    let tick = || deadline.min(Instant::now() + Duration::from_millis(100));
    let mut timer = pin!(sleep_until(tick()));
    while received + dropped < target.get() {
        match next_text(&mut ws, &mut timer).await {
            Ok(Some(b)) if b.starts_with(br#"{"type":"event""#) => received += 1,
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

#[derive(Default)]
struct PubResult {
    accepted: u64,
    errors: BTreeMap<String, u64>,
    last_reply: Option<Instant>,
    problem: Option<String>,
}

/// Publishes every event with at most `window` batches awaiting replies.
async fn publisher(
    ws: &mut Conn,
    args: &Args,
    deadline: Instant,
    out: &mut PubResult,
) -> anyhow::Result<()> {
    let pad = "x".repeat(args.payload_bytes);
    let mut timer = pin!(sleep_until(deadline));
    let mut in_flight = VecDeque::new(); // sizes of batches awaiting replies, in order
    let mut next_seq = 0;
    while next_seq < args.events || !in_flight.is_empty() {
        if next_seq < args.events && (in_flight.len() as u64) < args.window {
            let n = (args.events - next_seq).min(args.batch);
            let mut text = String::with_capacity(n as usize * (pad.len() + 80) + 48);
            text.push_str(r#"{"type":"publish_batch","events":["#);
            for i in next_seq..next_seq + n {
                let sep = if i == next_seq { "" } else { "," };
                let _ = write!(
                    text,
                    r#"{sep}{{"topic":"load.test","priority":"normal","payload":{{"seq":{i},"pad":"{pad}"}}}}"#
                );
            }
            text.push_str("]}");
            ws.send(Message::Text(text.into())).await?;
            next_seq += n;
            in_flight.push_back(n);
            continue;
        }
        let Some(bytes) = next_text(ws, &mut timer).await? else {
            bail!("timed out with {} batches unanswered", in_flight.len());
        };
        let reply: Value = serde_json::from_slice(&bytes).context("reply is not JSON")?;
        let n = in_flight.pop_front().unwrap_or(0);
        out.last_reply = Some(Instant::now());
        match reply["type"].as_str() {
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

async fn run(args: Args) -> anyhow::Result<bool> {
    check_local(&args.url)?;
    ensure!(
        args.batch > 0 && args.window > 0,
        "--batch and --window must be at least 1"
    );
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.timeout_secs);
    let mut conns = Vec::new();
    for i in 0..args.subscribers {
        let mut ws = connect(&args.url).await?;
        let sub = json!({"type": "subscribe", "subscription": {"type": "pattern", "patterns": ["load.>"]}});
        ws.send(Message::Text(sub.to_string().into())).await?;
        let mut timer = pin!(sleep_until(deadline));
        let reply = next_text(&mut ws, &mut timer)
            .await?
            .ok_or_else(|| anyhow!("no reply to subscribe"))?;
        let reply: Value = serde_json::from_slice(&reply)?;
        ensure!(
            reply["type"] == "subscribed",
            "subscriber {i}: subscribe refused: {reply}"
        );
        conns.push(ws);
    }
    let mut pub_ws = connect(&args.url).await?;
    println!("{} subscribers ready after {:.2} s; publishing {} events of {} pad bytes, batch {}, window {}",
        args.subscribers, began.elapsed().as_secs_f64(), args.events, args.payload_bytes, args.batch, args.window);

    let target = Rc::new(Cell::new(args.events));
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| actix_rt::spawn(subscriber(ws, target.clone(), deadline)))
        .collect();
    let mut publ = PubResult::default();
    if let Err(e) = publisher(&mut pub_ws, &args, deadline, &mut publ).await {
        publ.problem = Some(format!("{e:#}"));
    }
    let _ = pub_ws.send(Message::Close(None)).await;
    target.set(publ.accepted);
    let mut subs = Vec::new();
    for t in tasks {
        subs.push(t.await?);
    }

    let secs = |t: Instant| t.duration_since(start).as_secs_f64().max(1e-9);
    let pub_secs = secs(publ.last_reply.unwrap_or(start));
    let sub_secs = secs(subs.iter().map(|s| s.finished).max().unwrap_or(start));
    let delivered: u64 = subs.iter().map(|s| s.received).sum();
    let dropped: u64 = subs.iter().map(|s| s.dropped).sum();
    let wall = secs(Instant::now());
    let (publish_rate, delivered_rate) =
        (publ.accepted as f64 / pub_secs, delivered as f64 / sub_secs);
    let rejected: u64 = publ.errors.values().sum();
    println!("published  {} events in {pub_secs:.3} s = {publish_rate:.0} events/s ({rejected} rejected: {:?})", publ.accepted, publ.errors);
    println!("delivered  {delivered} events to {} subscribers in {sub_secs:.3} s = {delivered_rate:.0} events/s", subs.len());
    println!("dropped    {dropped} (slow_consumer)");
    println!(
        "received per subscriber: min {} max {}",
        subs.iter().map(|s| s.received).min().unwrap_or(0),
        subs.iter().map(|s| s.received).max().unwrap_or(0)
    );
    println!(
        "wall time  {wall:.3} s from first send ({:.3} s with setup)",
        began.elapsed().as_secs_f64()
    );
    let problems = subs
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("subscriber {i}"), &s.problem));
    let problems: Vec<_> = problems
        .chain([("publisher".into(), &publ.problem)])
        .collect();
    for (who, problem) in problems.iter().filter_map(|(w, p)| Some((w, p.as_ref()?))) {
        println!("{who}: {problem}");
    }
    let ok = rejected == 0 && problems.iter().all(|(_, p)| p.is_none());
    let report = json!({"published": publ.accepted, "publish_rate": publish_rate.round(), "delivered": delivered,
        "delivered_rate": delivered_rate.round(), "dropped": dropped, "rejected": rejected, "seconds": (wall * 1000.0).round() / 1000.0});
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
