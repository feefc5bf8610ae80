//! The numbers: latency histograms, and the report of a load run, as one JSON object
//! (`--json`) or readable lines.
//!
//! Owns: what the report says and how it is printed. Must not: measure anything itself;
//! it only sums what the publishers, subscribers and lanes recorded.

use std::collections::BTreeMap;

use actix_web::rt::time::Instant;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::load::Outcome;
use super::wire::PRIORITIES;
use super::BenchArgs;

/// A latency histogram in microseconds: from one to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// The quantiles a report gives of a histogram.
pub fn summary(h: &Histogram<u64>) -> Value {
    let q = |p: f64| h.value_at_quantile(p);
    json!({"samples": h.len(), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": h.max()})
}

/// Megabytes per second, to one decimal.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    ((bytes as f64 / secs / 1e6) * 10.0).round() / 10.0
}

/// Seconds, to the millisecond.
pub fn millis(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// Prints `report` as one JSON line with `--json`, else as `human` has it.
pub fn emit(args: &BenchArgs, report: &Value, human: fn(&Value)) {
    if args.json {
        println!("{report}");
    } else {
        human(report);
    }
}

/// Sums up a load run and prints it; answers whether it ran clean (nothing refused,
/// timed out or lost).
pub fn load(args: &BenchArgs, outcome: Outcome) -> bool {
    let (pubs, subs, start) = (&outcome.pubs, &outcome.subs, outcome.start);
    let secs =
        |t: Option<Instant>| t.map_or(1e-9, |t| t.duration_since(start).as_secs_f64().max(1e-9));
    let accepted: u64 = pubs.iter().map(|p| p.accepted).sum();
    let mut errors = BTreeMap::<String, u64>::new();
    let (mut pub_latency, mut e2e) = (histogram(), histogram());
    let mut by_priority: Vec<Histogram<u64>> = PRIORITIES.iter().map(|_| histogram()).collect();
    for p in pubs {
        let _ = pub_latency.add(&p.latency);
        for (code, n) in &p.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    for s in subs {
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
        .chain(outcome.ping_problem)
        .collect();
    let report = json!({
        "publishers": args.publishers, "subscribers": args.subscribers, "batch": args.batch,
        "window": args.window, "rate_target": args.rate, "payload_bytes": args.payload_bytes,
        "priorities": args.priorities, "conditional": args.conditional, "ack": args.ack,
        "in_process": args.in_process, "client_threads": outcome.threads,
        "critical_rate": args.critical_rate, "critical_published": outcome.critical_published,
        "critical_publish_latency_us": outcome.critical_reply,
        "ping_rate": args.ping_rate, "ping_latency_us": outcome.ping_latency,
        "published": accepted, "publish_rate": (accepted as f64 / pub_secs).round(),
        "delivered": delivered, "delivered_rate": (delivered as f64 / sub_secs).round(),
        "delivered_mb_per_s": mb_per_s(bytes, sub_secs),
        "delivered_per_subscriber": {"min": per_subscriber.clone().min(), "max": per_subscriber.max()},
        "dropped": dropped, "rejected": rejected, "errors": errors,
        "publish_latency_us": summary(&pub_latency),
        "end_to_end_latency_us": summary(&e2e),
        "end_to_end_latency_us_by_priority": e2e_by_priority,
        "idle": outcome.idle,
        "quiet_seconds": args.quiet_secs,
        "quiet_server_cpu": outcome.quiet_cpu,
        "server_cpu": outcome.load_cpu,
        "seconds": millis(start.elapsed().as_secs_f64()),
        "setup_seconds": millis(outcome.setup),
        "problems": problems,
    });
    emit(args, &report, print_load);
    rejected == 0 && problems.is_empty()
}

fn print_load(r: &Value) {
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
    let quiet = &r["quiet_server_cpu"];
    if !quiet.is_null() {
        println!(
            "quiet      {} s with every connection open and silent: server CPU {} s, {} cores",
            r["quiet_seconds"], quiet["seconds"], quiet["cores"]
        );
    }
    let cpu = &r["server_cpu"];
    if !cpu.is_null() {
        println!(
            "server CPU {} s over the load, {} cores",
            cpu["seconds"], cpu["cores"]
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
