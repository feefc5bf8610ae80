//! The per-event hot paths, each on its own: decoding a command, validating and
//! encoding an event, writing a delivery frame, matching a topic pattern and a filter,
//! and at-least-once bookkeeping (the ack tracker's priority queue of deadlines).
//!
//! Run: `cargo bench --bench hot_paths`. Figures go in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;
use switchyard::delivery::ack::AckTracker;
use switchyard::protocol::reply::{event_frame, event_frame_prefix};
use switchyard::protocol::{decode, EncodedEvent, Event};
use switchyard::routing::filter::Filter;
use switchyard::routing::pattern::Pattern;
use switchyard::routing::subscription::AckOptions;

fn event_json() -> serde_json::Value {
    json!({"type": "task_progress", "priority": "high", "source": "planner",
           "agent_id": "agent-7", "payload": {"task_id": "t-123", "pad": "x".repeat(256)}})
}

fn bench(c: &mut Criterion) {
    let command =
        json!({"type": "publish_event", "request_id": 7, "event": event_json()}).to_string();
    c.bench_function("decode_publish_command_256B", |b| {
        b.iter(|| black_box(decode(black_box(&command), usize::MAX)))
    });

    // What the ingress and the router do with each published event: read it from the
    // frame's text, validate it, encode its envelope.
    let raw = serde_json::value::to_raw_value(&event_json()).expect("encodable");
    c.bench_function("validate_and_encode_event_256B", |b| {
        b.iter(|| {
            let e = Event::from_raw(black_box(&raw), "svc").expect("valid");
            black_box(EncodedEvent::new(e))
        })
    });

    let encoded = EncodedEvent::new(Event::from_json(event_json(), "svc").expect("valid"));
    let prefix = event_frame_prefix("01a2b3c4-sub");
    c.bench_function("delivery_frame", |b| {
        b.iter(|| black_box(event_frame(&prefix, &encoded.json, 1)))
    });

    let patterns = [
        "task.progress",
        "task.*",
        "task.>",
        "*.progress",
        "agent.*.started",
    ]
    .map(|p| Pattern::parse(p).expect("valid pattern"));
    c.bench_function("pattern_match_5_patterns", |b| {
        b.iter(|| {
            black_box(
                patterns
                    .iter()
                    .filter(|p| p.matches(black_box("task.progress")))
                    .count(),
            )
        })
    });

    let (_, filter) = Filter::from_json(json!({
        "event_types": ["task_progress", "task_done"], "topics": ["task.>"],
        "priorities": ["high", "critical"], "agent_ids": ["agent-7"], "min_priority": "normal"
    }))
    .expect("valid filter");
    c.bench_function("filter_match_5_fields", |b| {
        b.iter(|| black_box(filter.matches(black_box(&encoded.event))))
    });

    // 1,000 deliveries tracked, then all acknowledged: per-event cost = time / 1000.
    let events: Vec<Arc<EncodedEvent>> = (0..1000)
        .map(|i| {
            let mut e =
                Event::from_json(json!({"topic": "t", "id": format!("e{i}")}), "s").expect("valid");
            e.cursor = i + 1;
            EncodedEvent::new(e)
        })
        .collect();
    let opts = AckOptions {
        timeout: Duration::from_secs(30),
        max_attempts: 5,
        max_in_flight: 10_000,
    };
    c.bench_function("ack_tracker_1000_sent_then_acked", |b| {
        b.iter(|| {
            let mut t = AckTracker::new(opts);
            let now = Instant::now();
            for e in &events {
                t.sent(e.clone(), 1, now);
            }
            for e in &events {
                black_box(t.ack(&e.event.id));
            }
            black_box(t.is_idle())
        })
    });
    c.bench_function("ack_tracker_1000_timeouts_due", |b| {
        b.iter_batched(
            || {
                let mut t = AckTracker::new(opts);
                let then = Instant::now();
                for e in &events {
                    t.sent(e.clone(), 1, then);
                }
                (t, then + Duration::from_secs(31))
            },
            |(mut t, later)| black_box(t.due(later).len()),
            BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
