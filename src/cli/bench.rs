//! `switchyard bench`: a load generator in the spirit of `nats bench`, bounded and for
//! this machine only (a `--url` that is not loopback is refused).
//!
//! P publishers (each its own connection, an even share of the events and of `--rate`)
//! send `publish_batch` commands (`publish_event` with `--batch 1`) with at most
//! `--window` awaiting replies; S subscribers follow `bench.>` with a pattern, or with
//! `--condition` as a CEL condition, optionally acknowledging each delivery (`--ack`).
//! Every event carries its send time, so subscribers measure publish→deliver latency
//! end to end; publishers measure command→reply latency. Both go into HDR histograms.
//! Subscribers are spread over `--client-threads` threads, each with its own runtime, so
//! that reading frames is not what limits a fan-out. `--critical-rate N` adds one
//! connection publishing N critical events per second alongside the load, and latency is
//! also reported per priority (the overload scenario); `--ping-rate N` likewise sends
//! N pings per second and reports their round trip, the floor under any routed latency
//! on the same machine and load. `--idle-connections N` opens N
//! connections that only answer pings and reports the server's resident memory before
//! and with them (from its `/metrics`).
//! `--replay` publishes nothing: it reads the whole stored log back from cursor 0 and
//! reports how fast it came. `--in-process` starts a router with the memory store on 127.0.0.1:0 in this process
//! (the figures then include the client's work on the same cores). The run stops at
//! `--events` (or `--duration-secs`) and never outlives `--timeout-secs`.
//!
//! Owns: the load and the report. Must not: reach into the server; it speaks the wire
//! protocol only (`--in-process` merely starts one).

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::io::IsTerminal;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::rt::time::{sleep, sleep_until, Instant, Sleep};
use awc::ws::{Frame, Message};
use bytes::Bytes;
use futures_util::future::{join_all, select, Either};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// An open WebSocket connection.
pub type Conn = switchyard::client::socket::WsConnection;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WebSocket URL of a running router; must be `127.0.0.1`, `localhost` or `[::1]`.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    pub url: String,
    /// Bearer token, when the router has auth on.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Start a router (memory store) in this process instead of using `--url`.
    #[arg(long)]
    pub in_process: bool,
    #[arg(long, default_value_t = 1)]
    pub publishers: u64,
    #[arg(long, default_value_t = 10)]
    pub subscribers: u64,
    /// Events to publish in all (ignored with `--duration-secs`).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Publish for this long instead of a count.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Events per second over all publishers; 0: as fast as the replies allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Bytes of padding in each event's payload.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Events per `publish_batch`; 1 sends `publish_event` commands.
    #[arg(long, default_value_t = 100)]
    pub batch: u64,
    /// Commands a publisher sends before waiting for their replies.
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// Priority mix as weights, e.g. `critical=1,high=9,normal=80,low=10`.
    #[arg(long, default_value = "normal=1")]
    pub priorities: String,
    /// Conditional subscriptions: a CEL condition (`payload.seq % 2 == 0 && ...`) that
    /// matches half the events, evaluated on every one.
    #[arg(long)]
    pub conditional: bool,
    /// Subscribers use `ack: true` and acknowledge every delivery.
    #[arg(long)]
    pub ack: bool,
    /// Threads the subscribers are spread over (0: one per CPU core).
    #[arg(long, default_value_t = 0)]
    pub client_threads: usize,
    /// Also publish this many critical events per second, one `publish_event` at a time
    /// on a connection of their own, while the load runs.
    #[arg(long, default_value_t = 0)]
    pub critical_rate: u64,
    /// Also send this many `ping` commands per second, one at a time on a connection of
    /// their own, while the load runs: the `pong` round trip is the floor under any
    /// routed latency (a frame read and a frame written by the server, nothing routed).
    #[arg(long, default_value_t = 0)]
    pub ping_rate: u64,
    /// Open this many connections that only answer pings, and report the server's
    /// resident memory per connection (read from its `/metrics`).
    #[arg(long, default_value_t = 0)]
    pub idle_connections: u64,
    /// Publish nothing: subscribe to everything from cursor 0 and time the replay of
    /// the stored log until `replay_complete` (against `--url`, which must hold events).
    #[arg(long, conflicts_with = "in_process")]
    pub replay: bool,
    /// Print only one JSON report.
    #[arg(long)]
    pub json: bool,
    /// Hard limit on the whole run.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

/// Why a run could not be made (a refused event is counted, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Connection(String),
    #[error("cannot start the in-process router: {0}")]
    Server(String),
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Microseconds, 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

fn summary(h: &Histogram<u64>) -> Value {
    let q = |p: f64| h.value_at_quantile(p);
    json!({"samples": h.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": h.max()})
}

/// `critical=1,high=9` → the priority of each of 100 slots, in proportion.
fn priority_slots(mix: &str) -> Result<Vec<&'static str>, BenchError> {
    let mut weights = Vec::new();
    for part in mix.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, w) = part.split_once('=').unwrap_or((part, "1"));
        let name = match name.trim().to_ascii_lowercase().as_str() {
            "critical" => "critical",
            "high" => "high",
            "normal" => "normal",
            "low" => "low",
            other => {
                return Err(BenchError::Usage(format!(
                    "unknown priority `{other}` in --priorities"
                )))
            }
        };
        let w: u64 = w
            .trim()
            .parse()
            .map_err(|_| BenchError::Usage(format!("bad weight in --priorities `{part}`")))?;
        weights.push((name, w));
    }
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return Err(BenchError::Usage(
            "--priorities needs a positive weight".into(),
        ));
    }
    // Smooth weighted round robin over 100 slots: each priority spread evenly, in
    // proportion to its weight.
    let mut slots = Vec::with_capacity(100);
    let mut acc = vec![0i128; weights.len()];
    for _ in 0..100 {
        for (a, (_, w)) in acc.iter_mut().zip(&weights) {
            *a += i128::from(*w);
        }
        let i = (0..acc.len())
            .max_by_key(|&i| (acc[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        acc[i] -= i128::from(total);
        slots.push(weights[i].0);
    }
    Ok(slots)
}

/// Refuses a URL whose host is not loopback: load only ever targets this machine.
pub fn check_local(url: &str) -> Result<(), BenchError> {
    let uri: awc::http::Uri = url
        .parse()
        .map_err(|e| BenchError::Usage(format!("bad --url `{url}`: {e}")))?;
    match uri.host() {
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1") => Ok(()),
        host => Err(BenchError::Usage(format!(
            "refusing --url `{url}`: host {host:?} is not loopback (bench only loads this machine)"
        ))),
    }
}

/// Opens a WebSocket, with `Authorization: Bearer` when a token is given.
pub async fn connect(url: &str, token: Option<&str>) -> Result<Conn, BenchError> {
    switchyard::client::socket::open_ws(url, token)
        .await
        .map_err(|e| BenchError::Connection(format!("cannot connect to {url}: {e}")))
}

/// The next text frame, answering pings; `None` when `timer` fires first.
pub async fn next_text(
    ws: &mut Conn,
    timer: &mut Pin<&mut Sleep>,
) -> Result<Option<Bytes>, String> {
    loop {
        let frame = match select(timer.as_mut(), ws.next()).await {
            Either::Left(_) => return Ok(None),
            Either::Right((frame, _)) => frame,
        };
        match frame {
            Some(Ok(Frame::Text(bytes))) => return Ok(Some(bytes)),
            Some(Ok(Frame::Ping(p))) => {
                ws.send(Message::Pong(p)).await.map_err(|e| e.to_string())?
            }
            Some(Ok(Frame::Close(reason))) => {
                return Err(format!("server closed the connection: {reason:?}"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connection error: {e}")),
            None => return Err("connection ended".into()),
        }
    }
}

/// Finds the few fields the generator needs in an event frame without parsing it (the
/// generator must keep up with the router): `memchr`'s substring search, needles built
/// once per subscriber.
struct Scanner {
    sent_us: Finder<'static>,
    priority: Finder<'static>,
    id: Finder<'static>,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            sent_us: Finder::new(br#""sent_us":"#),
            priority: Finder::new(br#""priority":""#),
            id: Finder::new(br#""id":""#),
        }
    }

    /// The send time stamped in the payload.
    fn sent_us(&self, text: &[u8]) -> Option<u64> {
        let at = self.sent_us.find(text)? + self.sent_us.needle().len();
        let mut digits = text[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .peekable();
        digits.peek()?;
        // None on overflow, not a number that wrapped.
        digits.try_fold(0u64, |n, b| {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
    }

    /// The event's priority, as an index into [`PRIORITIES`].
    fn priority(&self, text: &[u8]) -> Option<usize> {
        let at = self.priority.find(text)? + self.priority.needle().len();
        PRIORITIES
            .iter()
            .position(|p| text[at..].starts_with(p.as_bytes()))
    }

    /// The first `"id":"…"`: the event's id in an event frame.
    fn id<'a>(&self, text: &'a [u8]) -> Option<&'a str> {
        let at = self.id.find(text)? + self.id.needle().len();
        let end = memchr::memchr(b'"', &text[at..])?;
        std::str::from_utf8(&text[at..at + end]).ok()
    }
}

const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];

const EVENT: &[u8] = br#"{"type":"event""#;

#[derive(Default)]
struct SubResult {
    received: u64,
    dropped: u64,
    bytes: u64,
    /// Publish→deliver latency by priority ([`PRIORITIES`] order).
    latency: Vec<Histogram<u64>>,
    finished: Option<Instant>,
    problem: Option<String>,
}

/// How a client thread says its connections are open (or why they are not).
type Ready = oneshot::Sender<Result<(), BenchError>>;
type IsReady = oneshot::Receiver<Result<(), BenchError>>;

/// Runs `make` on a thread of its own with its own single-threaded runtime (WebSocket
/// connections are not `Send`: each lives and dies on the thread that opened it).
/// `make` reports on [`Ready`] once its connections are open; answers that report's
/// receiver (for [`all_ready`]) and the receiver of its result.
fn on_own_thread<T, F, Fut>(
    name: String,
    make: F,
) -> Result<(IsReady, oneshot::Receiver<T>), BenchError>
where
    F: FnOnce(Ready) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (ready, is_ready) = oneshot::channel();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let out = actix_web::rt::System::new().block_on(make(ready));
            let _ = tx.send(out);
        })
        .map_err(|e| BenchError::Connection(format!("cannot start a client thread: {e}")))?;
    Ok((is_ready, rx))
}

/// A lane with a connection and a thread of its own (the critical and ping lanes):
/// connects, then runs `run` on the connection. Returns once it is connected; the
/// receiver gets `None` if it could not.
async fn connected_lane<T, F, Fut>(
    name: &str,
    url: &str,
    token: &Option<String>,
    run: F,
) -> Result<oneshot::Receiver<Option<T>>, BenchError>
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (url, token) = (url.to_owned(), token.clone());
    let (ready, result) = on_own_thread(name.into(), move |ready| async move {
        match connect(&url, token.as_deref()).await {
            Ok(ws) => {
                let _ = ready.send(Ok(()));
                Some(run(ws).await)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                None
            }
        }
    })?;
    all_ready(vec![ready]).await?;
    Ok(result)
}

/// Waits until every client thread has opened its connections; the first failure.
async fn all_ready(readies: Vec<IsReady>) -> Result<(), BenchError> {
    for r in readies {
        r.await.map_err(|_| {
            BenchError::Connection("a client thread stopped before it was ready".into())
        })??;
    }
    Ok(())
}

/// The ping lane: one `ping` at a time, `rate` per second, until `done` is set or the
/// run's deadline; the round trip of each (to its `pong`) goes into the histogram.
async fn pinger(
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

/// Opens a subscriber's connection and subscribes `bench-{index}` to the load's topic.
async fn open_subscriber(
    url: &str,
    token: Option<&str>,
    index: u64,
    conditional: bool,
    ack: bool,
    deadline: Instant,
) -> Result<(Conn, String), BenchError> {
    let mut ws = connect(url, token).await?;
    let id = format!("bench-{index}");
    let mut spec = json!({"id": id, "type": "pattern", "patterns": ["bench.>"]});
    if conditional {
        spec["type"] = json!("conditional");
        spec["condition"] = json!(
            r#"payload.seq % 2 == 0 && priority in ["critical", "high", "normal", "low"] && size(payload.pad) >= 0"#
        );
    }
    if ack {
        spec["ack"] = json!(true);
        spec["max_in_flight"] = json!(1000);
    }
    let frame = json!({"type": "subscribe", "subscription": spec});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| BenchError::Connection(e.to_string()))?;
    let mut timer = pin!(sleep_until(deadline));
    let reply = next_text(&mut ws, &mut timer)
        .await
        .map_err(BenchError::Connection)?;
    let reply = String::from_utf8_lossy(&reply.unwrap_or_default()).into_owned();
    if !reply.starts_with(r#"{"type":"subscribed""#) {
        return Err(BenchError::Connection(format!(
            "subscribe refused: {reply}"
        )));
    }
    Ok((ws, id))
}

/// One client thread's subscribers: opens them all, says so on `ready`, then reads
/// until each has seen `target` events (or the deadline).
async fn subscriber_group(
    url: String,
    token: Option<String>,
    indices: Vec<u64>,
    options: (bool, bool),
    ready: Ready,
    target: Arc<AtomicU64>,
    deadline: Instant,
) -> Vec<SubResult> {
    let (conditional, ack) = options;
    let mut conns = Vec::with_capacity(indices.len());
    for i in indices {
        match open_subscriber(&url, token.as_deref(), i, conditional, ack, deadline).await {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                let _ = ready.send(Err(e));
                return Vec::new();
            }
        }
    }
    let _ = ready.send(Ok(()));
    join_all(
        conns
            .into_iter()
            .map(|(ws, id)| subscriber(ws, id, ack, target.clone(), deadline)),
    )
    .await
}

/// Counts deliveries until `received + dropped` reaches `target` (set by the publishers
/// once they know how many events were accepted and match), or the deadline.
async fn subscriber(
    mut ws: Conn,
    id: String,
    ack: bool,
    target: Arc<AtomicU64>,
    deadline: Instant,
) -> SubResult {
    let mut out = SubResult::default();
    let mut latency: Vec<Histogram<u64>> = PRIORITIES.iter().map(|_| histogram()).collect();
    let scan = Scanner::new();
    let tick = || deadline.min(Instant::now() + Duration::from_millis(100));
    let mut timer = pin!(sleep_until(tick()));
    while out.received + out.dropped < target.load(Relaxed) {
        match next_text(&mut ws, &mut timer).await {
            Ok(Some(b)) if b.starts_with(EVENT) => {
                out.received += 1;
                out.bytes += b.len() as u64;
                if let (Some(sent), Some(p)) = (scan.sent_us(&b), scan.priority(&b)) {
                    latency[p].saturating_record(micros_now().saturating_sub(sent).max(1));
                }
                if ack {
                    if let Some(event_id) = scan.id(&b) {
                        let frame =
                            json!({"type": "ack", "subscription_id": id, "event_id": event_id});
                        if let Err(e) = ws.send(Message::Text(frame.to_string().into())).await {
                            out.problem = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            Ok(Some(b)) => {
                let msg: Value = serde_json::from_slice(&b).unwrap_or_default();
                match msg["type"].as_str() {
                    Some("dropped") => out.dropped += msg["count"].as_u64().unwrap_or(0),
                    _ => out.problem = Some(format!("unexpected message: {msg}")),
                }
            }
            Ok(None) if Instant::now() >= deadline => {
                out.problem = Some("timed out".into());
                break;
            }
            Ok(None) => timer.as_mut().reset(tick()),
            Err(e) => {
                out.problem = Some(e);
                break;
            }
        }
    }
    out.finished = Some(Instant::now());
    out.latency = latency;
    let _ = ws.send(Message::Close(None)).await;
    out
}

struct PubResult {
    accepted: u64,
    /// Accepted events a subscription matches (all but those `--condition` skips).
    matching: u64,
    errors: BTreeMap<String, u64>,
    last_reply: Option<Instant>,
    latency: Histogram<u64>,
    problem: Option<String>,
}

struct Plan {
    args: BenchArgs,
    slots: Vec<&'static str>,
    pad: String,
    /// Publishing stops here with `--duration-secs`.
    stop_at: Option<Instant>,
    deadline: Instant,
    /// Events accepted so far over all publishers (the progress bar).
    progress: Rc<Cell<u64>>,
}

/// How one publisher sends: the load's publishers share `--rate`, `--batch` and
/// `--window`; the critical lane sends single critical events at `--critical-rate` until
/// the load is done.
struct Lane {
    /// Events per second; 0: as fast as the replies allow.
    rate: f64,
    batch: u64,
    window: u64,
    /// Every event at this priority instead of the `--priorities` mix.
    priority: Option<&'static str>,
    /// Stops publishing once set (the critical lane, when the load is done).
    done: Option<Arc<AtomicBool>>,
}

/// The critical lane's sequence numbers start here, above any load's.
const CRITICAL_SEQ: u64 = 1 << 52;

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

async fn publisher(
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
    loop {
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
        if !plan.args.conditional || seq % 2 == 0 {
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

/// The server's resident memory from its `/metrics` (`None` when it does not say).
async fn server_rss(url: &str, token: Option<&str>) -> Option<u64> {
    let uri: awc::http::Uri = url.parse().ok()?;
    let scheme = if uri.scheme_str() == Some("wss") {
        "https"
    } else {
        "http"
    };
    let metrics = format!("{scheme}://{}/metrics", uri.authority()?);
    let mut req = awc::Client::new().get(metrics);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let body = req.send().await.ok()?.body().await.ok()?;
    std::str::from_utf8(&body)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_process_resident_memory_bytes "))?
        .trim()
        .parse()
        .ok()
}

/// What `--idle-connections` measured.
struct IdleReport {
    stop: Vec<oneshot::Sender<()>>,
    closed: Vec<oneshot::Receiver<u64>>,
    json: Value,
}

/// Opens `--idle-connections` over the client threads and measures the server's
/// resident memory before and with them (after a 2 s settle).
async fn open_idle(args: &BenchArgs, threads: u64) -> Result<IdleReport, BenchError> {
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

/// Starts a router with the memory store on 127.0.0.1:0; answers its WebSocket URL and
/// the sender that stops it.
fn start_in_process() -> Result<(String, tokio::sync::oneshot::Sender<()>), BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Server(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::Server(e.to_string()))?;
    let mut config = switchyard::config::Config::defaults();
    config.store.kind = switchyard::config::StoreKind::Memory;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    actix_web::rt::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = switchyard::server::run(listener, config, shutdown).await {
            eprintln!("in-process router stopped: {e}");
        }
    });
    Ok((format!("ws://{addr}/ws"), stop))
}

/// Runs the benchmark; answers whether it ran clean (nothing refused, timed out or lost).
pub async fn run(mut args: BenchArgs) -> Result<bool, BenchError> {
    if args.batch == 0 || args.window == 0 || args.publishers == 0 {
        return Err(BenchError::Usage(
            "--batch, --window and --publishers must be at least 1".into(),
        ));
    }
    let slots = priority_slots(&args.priorities)?;
    let server = if args.in_process {
        let (url, stop) = start_in_process()?;
        args.url = url;
        // Let the listener start accepting.
        sleep(Duration::from_millis(100)).await;
        Some(stop)
    } else {
        check_local(&args.url)?;
        None
    };
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.timeout_secs);
    if args.replay {
        return replay(&args, deadline).await;
    }
    let token = args.token.clone();
    let events = if args.duration_secs.is_some() {
        CRITICAL_SEQ
    } else {
        args.events.min(CRITICAL_SEQ)
    };
    let threads = match args.client_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
        n => n as u64,
    };
    let idle = if args.idle_connections > 0 {
        Some(open_idle(&args, threads).await?)
    } else {
        None
    };
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let mut subs = Vec::new();
    let mut readies = Vec::new();
    for t in 0..threads.min(args.subscribers) {
        let indices: Vec<u64> = (t..args.subscribers).step_by(threads as usize).collect();
        let (url, token, target) = (args.url.clone(), token.clone(), target.clone());
        let options = (args.conditional, args.ack);
        let (is_ready, done) = on_own_thread(format!("bench-sub-{t}"), move |ready| {
            subscriber_group(url, token, indices, options, ready, target, deadline)
        })?;
        subs.push(done);
        readies.push(is_ready);
    }
    all_ready(readies).await?;
    let mut conns = Vec::new();
    for _ in 0..args.publishers {
        conns.push(connect(&args.url, token.as_deref()).await?);
    }
    let progress = Rc::new(Cell::new(0));
    let plan = Rc::new(Plan {
        pad: "x".repeat(args.payload_bytes),
        slots,
        stop_at: args
            .duration_secs
            .map(|s| Instant::now() + Duration::from_secs(s)),
        deadline,
        progress: progress.clone(),
        args: args.clone(),
    });
    let bar = if !args.json && std::io::stderr().is_terminal() {
        let bar = match args.duration_secs {
            Some(_) => indicatif::ProgressBar::new_spinner(),
            None => indicatif::ProgressBar::new(args.events),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} events published {per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        actix_web::rt::spawn(async move {
            loop {
                bar.set_position(progress.get());
                sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let start = Instant::now();
    let setup = start.duration_since(began).as_secs_f64();
    // The critical lane runs on a thread of its own: sharing the flood publishers'
    // thread, its replies waited behind theirs and the generator measured itself.
    let load_done = Arc::new(AtomicBool::new(false));
    let critical = match args.critical_rate {
        0 => None,
        rate => {
            let done = load_done.clone();
            let (lane_args, slots, stop_at) = (args.clone(), plan.slots.clone(), plan.stop_at);
            let lane = connected_lane("bench-critical", &args.url, &token, move |ws| async move {
                let plan = Rc::new(Plan {
                    pad: "x".repeat(lane_args.payload_bytes),
                    slots,
                    stop_at,
                    deadline,
                    progress: Rc::new(Cell::new(0)),
                    args: lane_args,
                });
                let lane = Lane {
                    rate: rate as f64,
                    batch: 1,
                    window: 8,
                    priority: Some("critical"),
                    done: Some(done),
                };
                publisher(ws, CRITICAL_SEQ..CRITICAL_SEQ * 2, plan, lane).await
            });
            Some(lane.await?)
        }
    };
    let ping = match args.ping_rate {
        0 => None,
        rate => {
            let done = load_done.clone();
            let lane = connected_lane("bench-ping", &args.url, &token, move |ws| {
                pinger(ws, rate, done, deadline)
            });
            Some(lane.await?)
        }
    };
    let pubs = (0..args.publishers).zip(conns).map(|(k, ws)| {
        let seqs = events * k / args.publishers..events * (k + 1) / args.publishers;
        let lane = Lane {
            rate: args.rate as f64 / args.publishers as f64,
            batch: args.batch,
            window: args.window,
            priority: None,
            done: None,
        };
        actix_web::rt::spawn(publisher(ws, seqs, plan.clone(), lane))
    });
    let mut pubs: Vec<PubResult> = join_all(pubs.collect::<Vec<_>>())
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    load_done.store(true, Relaxed);
    let (critical_published, critical_reply) = match critical {
        Some(lane) => match lane.await {
            Ok(Some(result)) => {
                let out = (result.accepted, summary(&result.latency));
                pubs.push(result);
                out
            }
            _ => (0, Value::Null),
        },
        None => (0, Value::Null),
    };
    let (ping_latency, ping_problem) = match ping {
        Some(lane) => match lane.await {
            Ok(Some((latency, problem))) => (summary(&latency), problem),
            _ => (Value::Null, Some("the ping lane stopped".to_owned())),
        },
        None => (Value::Null, None),
    };
    let matching: u64 = pubs.iter().map(|p| p.matching).sum();
    target.store(matching, Relaxed);
    let subs: Vec<SubResult> = join_all(subs)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .flatten()
        .collect();
    let idle = match idle {
        Some(idle) => {
            for stop in idle.stop {
                let _ = stop.send(());
            }
            let mut closed = 0;
            for c in idle.closed {
                closed += c.await.unwrap_or(0);
            }
            let mut report = idle.json;
            report["closed_by_server"] = json!(closed);
            report
        }
        None => Value::Null,
    };
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(stop) = server {
        let _ = stop.send(());
    }

    let secs =
        |t: Option<Instant>| t.map_or(1e-9, |t| t.duration_since(start).as_secs_f64().max(1e-9));
    let accepted: u64 = pubs.iter().map(|p| p.accepted).sum();
    let mut errors = BTreeMap::<String, u64>::new();
    let (mut pub_latency, mut e2e) = (histogram(), histogram());
    let mut by_priority: Vec<Histogram<u64>> = PRIORITIES.iter().map(|_| histogram()).collect();
    for p in &pubs {
        let _ = pub_latency.add(&p.latency);
        for (code, n) in &p.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    for s in &subs {
        for (all, h) in by_priority.iter_mut().zip(&s.latency) {
            let _ = all.add(h);
            let _ = e2e.add(h);
        }
    }
    let e2e_by_priority: serde_json::Map<String, Value> = PRIORITIES
        .iter()
        .zip(&by_priority)
        .filter(|(_, h)| !h.is_empty())
        .map(|(p, h)| ((*p).to_owned(), summary(h)))
        .collect();
    let pub_secs = secs(pubs.iter().filter_map(|p| p.last_reply).max());
    let sub_secs = secs(subs.iter().filter_map(|s| s.finished).max());
    let delivered: u64 = subs.iter().map(|s| s.received).sum();
    let dropped: u64 = subs.iter().map(|s| s.dropped).sum();
    let bytes: u64 = subs.iter().map(|s| s.bytes).sum();
    let per_subscriber = subs.iter().map(|s| s.received);
    let rejected: u64 = errors.values().sum();
    let problems: Vec<String> = pubs
        .iter()
        .filter_map(|p| p.problem.clone())
        .chain(subs.iter().filter_map(|s| s.problem.clone()))
        .chain(ping_problem)
        .collect();
    let report = json!({
        "publishers": args.publishers, "subscribers": args.subscribers, "batch": args.batch,
        "window": args.window, "rate_target": args.rate, "payload_bytes": args.payload_bytes,
        "priorities": args.priorities, "conditional": args.conditional, "ack": args.ack,
        "in_process": args.in_process, "client_threads": threads,
        "critical_rate": args.critical_rate, "critical_published": critical_published,
        "critical_publish_latency_us": critical_reply,
        "ping_rate": args.ping_rate, "ping_latency_us": ping_latency,
        "published": accepted, "publish_rate": (accepted as f64 / pub_secs).round(),
        "delivered": delivered, "delivered_rate": (delivered as f64 / sub_secs).round(),
        "delivered_mb_per_s": ((bytes as f64 / sub_secs / 1e6) * 10.0).round() / 10.0,
        "delivered_per_subscriber": {"min": per_subscriber.clone().min(), "max": per_subscriber.max()},
        "dropped": dropped, "rejected": rejected, "errors": errors,
        "publish_latency_us": summary(&pub_latency),
        "end_to_end_latency_us": summary(&e2e),
        "end_to_end_latency_us_by_priority": e2e_by_priority,
        "idle": idle,
        "seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "setup_seconds": (setup * 1000.0).round() / 1000.0,
        "problems": problems,
    });
    if args.json {
        println!("{report}");
    } else {
        print_report(&report);
    }
    Ok(rejected == 0 && problems.is_empty())
}

/// `--replay`: subscribes to everything from cursor 0 and counts events until
/// `replay_complete`: how fast a subscriber catches up on the whole stored log.
async fn replay(args: &BenchArgs, deadline: Instant) -> Result<bool, BenchError> {
    let mut ws = connect(&args.url, args.token.as_deref()).await?;
    let subscribe = json!({"type": "subscribe", "subscription": {"type": "all", "from_cursor": 0}});
    let start = Instant::now();
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .map_err(|e| BenchError::Connection(e.to_string()))?;
    let mut timer = pin!(sleep_until(deadline));
    let (mut replayed, mut dropped, mut bytes) = (0u64, 0u64, 0u64);
    let (mut complete, mut last_cursor, mut problem) = (false, None, None);
    while !complete && problem.is_none() {
        match next_text(&mut ws, &mut timer).await {
            Ok(Some(b)) if b.starts_with(EVENT) => {
                replayed += 1;
                bytes += b.len() as u64;
            }
            Ok(Some(b)) => {
                let msg: Value = serde_json::from_slice(&b).unwrap_or_default();
                match msg["type"].as_str() {
                    Some("subscribed") => {}
                    Some("dropped") => dropped += msg["count"].as_u64().unwrap_or(0),
                    Some("replay_complete") => {
                        complete = true;
                        last_cursor = msg["last_cursor"].as_u64();
                    }
                    _ => problem = Some(format!("unexpected message: {msg}")),
                }
            }
            Ok(None) => problem = Some("timed out".to_owned()),
            Err(e) => problem = Some(e),
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let _ = ws.send(Message::Close(None)).await;
    let report = json!({
        "mode": "replay", "replayed": replayed, "replay_rate": (replayed as f64 / secs).round(),
        "replayed_mb_per_s": ((bytes as f64 / secs / 1e6) * 10.0).round() / 10.0,
        "last_cursor": last_cursor, "dropped": dropped,
        "seconds": (secs * 1000.0).round() / 1000.0, "problems": problem.as_slice(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "replayed   {} events at {} events/s, {} MB/s; last cursor {}, {} dropped",
            report["replayed"],
            report["replay_rate"],
            report["replayed_mb_per_s"],
            report["last_cursor"],
            report["dropped"]
        );
        println!("wall time  {} s", report["seconds"]);
        if let Some(p) = &problem {
            println!("problem: {p}");
        }
    }
    Ok(problem.is_none() && dropped == 0)
}

fn print_report(r: &Value) {
    let l = |k: &str| {
        let h = &r[k];
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
            h["p50"], h["p90"], h["p99"], h["p99_9"], h["max"], h["samples"]
        )
    };
    println!(
        "published  {} events at {} events/s ({} rejected {})",
        r["published"], r["publish_rate"], r["rejected"], r["errors"]
    );
    println!(
        "delivered  {} events at {} events/s, {} MB/s; {} dropped",
        r["delivered"], r["delivered_rate"], r["delivered_mb_per_s"], r["dropped"]
    );
    let spread = &r["delivered_per_subscriber"];
    if !spread["min"].is_null() {
        println!(
            "           per subscriber: min {} max {}",
            spread["min"], spread["max"]
        );
    }
    println!(
        "publish → reply latency (µs, per command): {}",
        l("publish_latency_us")
    );
    println!(
        "publish → deliver latency (µs, per event): {}",
        l("end_to_end_latency_us")
    );
    let by_priority = r["end_to_end_latency_us_by_priority"]
        .as_object()
        .filter(|m| m.len() > 1);
    for (p, h) in by_priority.into_iter().flatten() {
        println!(
            "  {p:<8} p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
            h["p50"], h["p90"], h["p99"], h["p99_9"], h["max"], h["samples"]
        );
    }
    if !r["ping_latency_us"].is_null() {
        println!("ping → pong latency (µs): {}", l("ping_latency_us"));
    }
    let idle = &r["idle"];
    if !idle.is_null() {
        println!(
            "idle       {} connections: server resident memory {} → {} bytes, {} bytes per connection; {} closed by the server",
            idle["connections"], idle["server_rss_before"], idle["server_rss_with_idle"],
            idle["rss_per_connection_bytes"], idle["closed_by_server"]
        );
    }
    println!(
        "wall time  {} s ({} s of setup before)",
        r["seconds"], r["setup_seconds"]
    );
    for p in r["problems"].as_array().into_iter().flatten() {
        println!("problem: {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_mix_is_spread_in_proportion() {
        let slots = priority_slots("critical=1,high=9,normal=80,low=10").unwrap();
        let count = |p| slots.iter().filter(|s| **s == p).count();
        assert_eq!(
            (
                count("critical"),
                count("high"),
                count("normal"),
                count("low")
            ),
            (1, 9, 80, 10)
        );
        assert_eq!(priority_slots("normal").unwrap(), vec!["normal"; 100]);
        assert!(priority_slots("urgent=1").is_err());
        assert!(priority_slots("low=0").is_err());
        // Spread, not blocks: the first ten slots already mix.
        let mixed = priority_slots("high=1,low=1").unwrap();
        assert_ne!(mixed[0], mixed[1]);
    }

    #[test]
    fn scanning_frames() {
        let scan = Scanner::new();
        let frame = br#"{"type":"event","subscription_id":"s","event":{"id":"e-1","priority":"high","payload":{"seq":4,"sent_us":1234}}}"#;
        assert_eq!(scan.sent_us(frame), Some(1234));
        assert_eq!(scan.priority(frame), Some(1));
        assert_eq!(scan.id(frame), Some("e-1"));
        let bare = br#"{"type":"event","event":{"payload":{"sent_us":"x"}}}"#;
        assert_eq!(scan.sent_us(bare), None);
        assert_eq!(scan.priority(bare), None);
        assert_eq!(scan.id(bare), None);
        assert_eq!(scan.sent_us(br#""sent_us":99999999999999999999999"#), None);
        assert!(check_local("ws://127.0.0.1:1/ws").is_ok());
        assert!(check_local("ws://example.com/ws").is_err());
    }
}
