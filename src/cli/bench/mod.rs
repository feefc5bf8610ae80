//! `switchyard bench`: a load generator in the spirit of `nats bench`, bounded and for
//! this machine only (a `--url` that is not loopback is refused).
//!
//! P publishers (each its own connection, an even share of the events and of `--rate`)
//! send `publish_batch` commands (`publish_event` with `--batch 1`) with at most
//! `--window` awaiting replies; S subscribers follow `bench.>` with a pattern, or with
//! `--conditional` a CEL condition, optionally acknowledging each delivery (`--ack`).
//! Every event carries its send time, so subscribers measure publish→deliver latency
//! end to end; publishers measure command→reply latency. Both go into HDR histograms.
//! Subscribers are spread over `--client-threads` threads, each with its own runtime, so
//! that reading frames is not what limits a fan-out. `--critical-rate N` adds one
//! connection publishing N critical events per second alongside the load, and latency is
//! also reported per priority (the overload scenario); `--ping-rate N` likewise sends
//! N pings per second and reports their round trip, the floor under any routed latency
//! on the same machine and load. `--idle-connections N` opens N connections that only
//! answer pings and reports the server's resident memory before and with them (from its
//! `/metrics`); `--quiet-secs N` holds every connection open and silent for N seconds
//! before publishing and reports the server's CPU use meanwhile (every run reports the
//! server's CPU over the load too, from `/metrics`). `--replay` publishes nothing: it reads the whole stored log back from
//! cursor 0 and reports how fast it came. `--in-process` starts a router with the
//! memory store on 127.0.0.1:0 in this process (the figures then include the client's
//! work on the same cores). The run stops at `--events` (or `--duration-secs`) and never
//! outlives `--timeout-secs`.
//!
//! The files: `args` (the options), `load` (the order of a run), `publisher`,
//! `subscriber`, `ping` and `idle` (what each kind of connection does), `replay`,
//! `threads` (client threads), `wire` (frames), `server` (the in-process router and the
//! server's memory), `report` (the numbers).
//!
//! Owns: the load and the report. Must not: reach into the server; it speaks the wire
//! protocol only (`--in-process` merely starts one through the library's `run`).

mod args;
mod idle;
mod load;
mod ping;
mod publisher;
mod replay;
mod report;
mod server;
mod subscriber;
mod threads;
mod wire;

use std::time::Duration;

use actix_web::rt::time::{sleep, Instant};

pub use args::BenchArgs;

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

/// Runs the benchmark; answers whether it ran clean (nothing refused, timed out or lost).
pub async fn run(mut args: BenchArgs) -> Result<bool, BenchError> {
    let slots = args.check()?;
    let server = if args.in_process {
        let (url, stop) = server::start_in_process()?;
        args.url = url;
        // Let the listener start accepting.
        sleep(Duration::from_millis(100)).await;
        Some(stop)
    } else {
        args::check_local(&args.url)?;
        args::check_local(args.subscribe_url())?;
        args::check_local(args.critical_url())?;
        None
    };
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.timeout_secs);
    if args.replay {
        return replay::run(&args, deadline).await;
    }
    let outcome = load::run(&args, slots, began, deadline).await?;
    if let Some(stop) = server {
        let _ = stop.send(());
    }
    Ok(report::load(&args, outcome))
}
