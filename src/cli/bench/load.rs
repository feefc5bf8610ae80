//! The load run, in order: idle connections (if any), subscribers on their client
//! threads, publishers, a quiet spell (`--quiet-secs`), the critical and ping lanes
//! beside the publishers; then it waits for the publishers, tells the subscribers how
//! many events to expect, and collects what everyone saw, with the server's CPU time.
//!
//! Owns: the order of a run, its threads and the progress bar. Must not: format the
//! report (`report.rs`) or speak frames itself (the publisher, subscriber and lane
//! files do).

use std::cell::Cell;
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix_web::rt::task::JoinHandle;
use actix_web::rt::time::{sleep, Instant};
use futures_util::future::join_all;
use serde_json::Value;

use super::idle::open_idle;
use super::ping::pinger;
use super::publisher::{publisher, Lane, Plan, PubResult, CRITICAL_SEQ};
use super::report::summary;
use super::server::{cpu_used, server_cpu};
use super::subscriber::{subscriber_group, SubResult};
use super::threads::{all_ready, connected_lane, on_own_thread};
use super::wire::connect;
use super::{BenchArgs, BenchError};

/// Everything a load run saw, for the report.
pub struct Outcome {
    /// Client threads the subscribers were spread over.
    pub threads: u64,
    /// The load's publishers, and the critical lane's last.
    pub pubs: Vec<PubResult>,
    pub subs: Vec<SubResult>,
    pub critical_published: u64,
    /// The critical lane's command→reply latency (null without one).
    pub critical_reply: Value,
    /// The ping lane's round trips (null without one).
    pub ping_latency: Value,
    pub ping_problem: Option<String>,
    /// What `--idle-connections` measured (null without them).
    pub idle: Value,
    /// The server's CPU use over `--quiet-secs` (null without them) and over the load
    /// (null with `--in-process`, where the generator shares the process).
    pub quiet_cpu: Value,
    pub load_cpu: Value,
    /// When the first event was sent.
    pub start: Instant,
    /// Seconds from the start of the run to the first send (opening connections).
    pub setup: f64,
}

/// Runs the load against `args.url`; `began` is when the run started.
pub async fn run(
    args: &BenchArgs,
    slots: Vec<&'static str>,
    began: Instant,
    deadline: Instant,
) -> Result<Outcome, BenchError> {
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
        Some(open_idle(args, threads).await?)
    } else {
        None
    };
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let mut subs = Vec::new();
    let mut readies = Vec::new();
    for t in 0..threads.min(args.subscribers) {
        let indices: Vec<u64> = (t..args.subscribers).step_by(threads as usize).collect();
        let url = args.subscribe_url().to_owned();
        let (token, target) = (token.clone(), target.clone());
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
    let cpu = || async {
        match args.in_process {
            true => None,
            false => server_cpu(&args.url, token.as_deref()).await,
        }
    };
    let quiet_cpu = match args.quiet_secs {
        0 => Value::Null,
        secs => {
            let (before, at) = (cpu().await, Instant::now());
            sleep(Duration::from_secs(secs)).await;
            cpu_used(before, cpu().await, at.elapsed().as_secs_f64())
        }
    };
    let cpu_before = cpu().await;
    let progress = Rc::new(Cell::new(0));
    let stop_at = args
        .duration_secs
        .map(|s| Instant::now() + Duration::from_secs(s));
    let plan = Rc::new(Plan::new(args, slots, stop_at, deadline, progress.clone()));
    let bar = progress_bar(args, progress);
    let start = Instant::now();
    let setup = start.duration_since(began).as_secs_f64();
    // The critical lane runs on a thread of its own: sharing the flood publishers'
    // thread, its replies waited behind theirs and the generator measured itself.
    let load_done = Arc::new(AtomicBool::new(false));
    let critical = match args.critical_rate {
        0 => None,
        rate => {
            let done = load_done.clone();
            let (lane_args, slots) = (args.clone(), plan.slots.clone());
            let url = args.critical_url();
            let lane = connected_lane("bench-critical", url, &token, move |ws| async move {
                let own = Rc::new(Cell::new(0));
                let plan = Rc::new(Plan::new(&lane_args, slots, stop_at, deadline, own));
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
            window: if args.window == 0 {
                u64::MAX
            } else {
                args.window
            },
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
    let load_cpu = cpu_used(cpu_before, cpu().await, start.elapsed().as_secs_f64());
    let idle = match idle {
        Some(idle) => idle.close().await,
        None => Value::Null,
    };
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    Ok(Outcome {
        threads,
        pubs,
        subs,
        critical_published,
        critical_reply,
        ping_latency,
        ping_problem,
        idle,
        quiet_cpu,
        load_cpu,
        start,
        setup,
    })
}

/// A progress bar of events accepted, on a terminal only (never with `--json`), and
/// the task that moves it.
fn progress_bar(
    args: &BenchArgs,
    progress: Rc<Cell<u64>>,
) -> Option<(indicatif::ProgressBar, JoinHandle<()>)> {
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
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
    let moved = bar.clone();
    let ticker = actix_web::rt::spawn(async move {
        loop {
            moved.set_position(progress.get());
            sleep(Duration::from_millis(100)).await;
        }
    });
    Some((bar, ticker))
}
