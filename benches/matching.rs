//! Matching one event against 10,000 mixed subscriptions, the router's per-event work.
//!
//! The mix: topic patterns over 50 topic families with per-agent narrowing, filters,
//! CEL conditions narrowed by a pattern, and a share of conditions with no topic
//! constraint at all (they sit at the root of the index and see every event). Each
//! case is measured through the topic-prefix index (what the router does) and as a
//! linear scan over every subscription (the baseline), on the same data.
//!
//! Run: `cargo bench --bench matching`. Figures go in docs/benchmarks.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use switchyard::protocol::Event;
use switchyard::routing::condition::MatchInput;
use switchyard::routing::index::SubscriptionIndex;
use switchyard::routing::SubscriptionSpec;

const SUBSCRIPTIONS: usize = 10_000;
const FAMILIES: usize = 50;

fn spec(i: usize) -> SubscriptionSpec {
    let family = format!("fam{}", i % FAMILIES);
    let agent = format!("agent-{}", i % 400);
    let v = match i % 20 {
        // 40%: patterns, some narrowed by agent.
        0..=3 => json!({"type": "pattern", "patterns": [format!("{family}.*")]}),
        4..=5 => json!({"type": "pattern", "patterns": [format!("{family}.{agent}.>")]}),
        6..=7 => json!({"type": "pattern", "patterns": [format!("{family}.>")],
                        "filter": {"agent_ids": [agent]}}),
        // 25%: filters, half of them with a topic constraint.
        8..=9 => json!({"type": "filtered", "filter": {"topics": [format!("{family}.>")],
                        "min_priority": "high"}}),
        10..=11 => json!({"type": "filtered", "filter": {"event_types": [format!("{family}_done")],
                          "sources": ["planner", "executor"]}}),
        12 => json!({"type": "filtered", "filter": {"priorities": ["critical"],
                     "agent_ids": [agent]}}),
        // 25%: conditions narrowed by a pattern.
        13..=15 => json!({"type": "conditional", "patterns": [format!("{family}.>")],
                          "condition": format!("payload.cost > {}.0 && \"gpu\" in payload.tags", i % 10)}),
        16..=17 => json!({"type": "conditional", "patterns": [format!("{family}.*")],
                          "condition": format!("agent_id == \"{agent}\" || priority == \"critical\"")}),
        // 5%: conditions narrowed by `topic.startsWith` in the expression itself.
        18 => json!({"type": "conditional",
                     "condition": format!("topic.startsWith(\"{family}.\") && payload.cost > {}.5", i % 7)}),
        // 5%: conditions that can match any topic.
        _ => json!({"type": "conditional",
                    "condition": format!("payload.region.startsWith(\"eu-\") && payload.cost > {}.5", i % 7)}),
    };
    SubscriptionSpec::from_json(v).expect("valid spec")
}

fn event() -> Event {
    Event::from_json(
        json!({"topic": "fam7.progress", "source": "planner", "agent_id": "agent-7",
               "priority": "high",
               "payload": {"cost": 6.5, "tags": ["gpu", "batch"], "region": "eu-west",
                           "task_id": "t-123", "step": 4}}),
        "svc",
    )
    .expect("valid event")
}

fn bench(c: &mut Criterion) {
    let specs: Vec<SubscriptionSpec> = (0..SUBSCRIPTIONS).map(spec).collect();
    let mut index = SubscriptionIndex::default();
    for s in &specs {
        index.insert(s.matcher.topic_prefixes(), s);
    }
    let event = event();
    let unmatched = Event::from_json(json!({"topic": "other.thing", "payload": {}}), "svc")
        .expect("valid event");

    // The index must find exactly what a full scan finds.
    for e in [&event, &unmatched] {
        let input = MatchInput::new(e);
        let mut indexed = 0;
        index.for_each_candidate(&e.topic, |s| {
            indexed += usize::from(s.matcher.test(&input) == Ok(true))
        });
        let linear = specs
            .iter()
            .filter(|s| s.matcher.test(&input) == Ok(true))
            .count();
        assert_eq!(indexed, linear, "index and scan disagree on {}", e.topic);
        println!(
            "{}: {indexed} of {SUBSCRIPTIONS} subscriptions match",
            e.topic
        );
    }

    let mut group = c.benchmark_group("match_1_event_10k_subscriptions");
    for (name, event) in [("fam7.progress", &event), ("other.thing", &unmatched)] {
        group.bench_with_input(BenchmarkId::new("indexed", name), event, |b, event| {
            b.iter(|| {
                let input = MatchInput::new(black_box(event));
                let mut matched = 0usize;
                index.for_each_candidate(&event.topic, |s| {
                    if s.matcher.test(&input) == Ok(true) {
                        matched += 1;
                    }
                });
                black_box(matched)
            })
        });
        group.bench_with_input(BenchmarkId::new("linear", name), event, |b, event| {
            b.iter(|| {
                let input = MatchInput::new(black_box(event));
                let matched = specs
                    .iter()
                    .filter(|s| s.matcher.test(&input) == Ok(true))
                    .count();
                black_box(matched)
            })
        });
    }
    group.finish();

    // What one condition costs, with the input built once for it.
    let condition = SubscriptionSpec::from_json(
        json!({"condition": "payload.cost > 5.0 && \"gpu\" in payload.tags"}),
    )
    .expect("valid spec");
    c.bench_function("cel_input_and_one_condition", |b| {
        b.iter(|| {
            let input = MatchInput::new(black_box(&event));
            black_box(condition.matcher.test(&input))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches, evals);

fn eval_only(c: &mut Criterion) {
    let event = event();
    let input = MatchInput::new(&event);
    for cond in [
        "true",
        "priority == \"high\"",
        "payload.cost > 5.0",
        "payload.nokey == 1",
        "payload.region.startsWith(\"eu-\") && payload.cost > 3.5",
    ] {
        let s = SubscriptionSpec::from_json(json!({ "condition": cond })).unwrap();
        let _ = s.matcher.test(&input);
        c.bench_function(&format!("eval/{cond}"), |b| {
            b.iter(|| black_box(s.matcher.test(&input)))
        });
    }
}
criterion_group!(evals, eval_only);
