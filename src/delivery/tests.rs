//! The delivery state machines together: a subscription's queue, a session's outbox
//! and its backlog.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;

use super::ack::DeadReason;
use super::backlog::{FRAMES_PER_BATCH, MAX_UNWRITTEN_FRAMES, URGENT_FRAMES};
use super::*;
use crate::metrics::Metrics;
use crate::protocol::{EncodedEvent, Event, Priority};

fn ev(priority: &str, n: u64) -> Arc<EncodedEvent> {
    let mut e = Event::from_json(json!({"topic": "t", "priority": priority}), "s").unwrap();
    e.cursor = n;
    EncodedEvent::new(e)
}

use crate::delivery::subscription::testing::subscription as handle;

/// Bounds on the event count alone.
fn count(events: usize) -> QueueBounds {
    QueueBounds {
        events,
        bytes: usize::MAX,
        windows: 100,
    }
}

fn drain(q: &mut SubQueue) -> Vec<u64> {
    let mut frames = Vec::new();
    let mut dead = Vec::new();
    for p in Priority::HIGHEST_FIRST {
        q.take_live(
            p,
            &mut frames,
            FRAMES_PER_BATCH,
            (Instant::now(), Utc::now()),
            &mut dead,
        );
    }
    frames
        .iter()
        .filter_map(|f| match f {
            OutFrame::Event { event, .. } => Some(event.event.cursor),
            _ => None,
        })
        .collect()
}

#[actix_rt::test]
async fn overflow_drops_lowest_priority_oldest_first() {
    let metrics = Metrics::default();
    let mut dead = Vec::new();
    let mut q = SubQueue::new(handle(json!({"type": "all"})));
    for (i, p) in ["low", "normal", "low", "critical", "high"]
        .into_iter()
        .enumerate()
    {
        q.push(ev(p, i as u64 + 1), count(3), &metrics, &mut dead);
    }
    // 5 pushed into 3 slots: both lows went first (oldest first).
    assert_eq!(q.unreported_drops, 2);
    assert_eq!(metrics.dropped.get(Priority::Low), 2);
    assert!(dead.is_empty());
    assert_eq!(drain(&mut q), [4, 5, 2]);
    // A new low event, when everything waiting outranks it, drops itself.
    q.push(ev("high", 6), count(1), &metrics, &mut dead);
    q.push(ev("low", 7), count(1), &metrics, &mut dead);
    assert_eq!(drain(&mut q), [6]);
}

#[actix_rt::test]
async fn waiting_bytes_are_bounded_lowest_priority_oldest_first() {
    let metrics = Metrics::default();
    let mut dead = Vec::new();
    let mut q = SubQueue::new(handle(json!({"type": "all"})));
    let events = ["low", "critical", "low", "high"];
    let size = |p: &str| ev(p, 1).json.len();
    // Room for the last three.
    let room = events[1..].iter().map(|p| size(p)).sum();
    let bounds = QueueBounds {
        bytes: room,
        ..count(1000)
    };
    for (i, p) in events.into_iter().enumerate() {
        q.push(ev(p, i as u64 + 1), bounds, &metrics, &mut dead);
    }
    // Four events in room for three: the oldest low one went.
    assert_eq!(q.unreported_drops, 1);
    assert_eq!(q.bytes, room);
    assert_eq!(drain(&mut q), [2, 4, 3]);
    assert_eq!(q.bytes, 0);
}

/// An outbox that queued `lows` low events (cursors from 1) and handed its session
/// as many as the cap allows, none of them written yet.
fn outbox_at_the_cap(lows: u64, metrics: &Metrics) -> (Arc<SubscriptionHandle>, Outbox) {
    let mut dead = Vec::new();
    let sub = handle(json!({"type": "all"}));
    let mut outbox = Outbox::new(sub.sink.clone());
    for i in 1..=lows {
        outbox
            .queue(&sub)
            .push(ev("low", i), count(10_000), metrics, &mut dead);
    }
    assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
    assert_eq!(sub.sink.backlog.unwritten(), MAX_UNWRITTEN_FRAMES);
    (sub, outbox)
}

/// A session that has not written what it was handed gets no more; the backlog
/// stays here, where a critical event still goes first.
#[actix_rt::test]
async fn unwritten_frames_are_capped_and_the_backlog_keeps_its_priority() {
    let (metrics, mut dead) = (Metrics::default(), Vec::new());
    let (sub, mut outbox) = outbox_at_the_cap(2000, &metrics);
    let backlog = sub.sink.backlog.clone();
    // Nothing more while the session has not written them.
    assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
    assert_eq!(backlog.unwritten(), MAX_UNWRITTEN_FRAMES);
    // A critical event overtakes the low ones still waiting here.
    outbox
        .queue(&sub)
        .push(ev("critical", 9999), count(10_000), &metrics, &mut dead);
    let batch = outbox.next_batch((Instant::now(), Utc::now()), &mut dead);
    let cursors: Vec<u64> = batch
        .iter()
        .filter_map(|f| match f {
            OutFrame::Event { event, .. } => Some(event.event.cursor),
            _ => None,
        })
        .collect();
    assert_eq!(cursors[..2], [9999, MAX_UNWRITTEN_FRAMES as u64 + 1]);
    outbox.restore(batch);
    // The session writes: the worker hears of it only once it is down to half.
    assert!(!backlog.written(FRAMES_PER_BATCH - 1));
    assert!(backlog.written(1), "half written: resume");
    assert!(!backlog.written(1), "told once per wait");
    // Handed over again in whole batches, up to less than one batch past the cap.
    assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
    let unwritten = backlog.unwritten();
    assert!(
        (MAX_UNWRITTEN_FRAMES..MAX_UNWRITTEN_FRAMES + FRAMES_PER_BATCH).contains(&unwritten),
        "{unwritten}"
    );
}

/// Past the cap, critical events are still handed over, up to [`URGENT_FRAMES`]
/// more; nothing of lower priority is.
#[actix_rt::test]
async fn critical_events_pass_a_full_backlog_up_to_the_urgent_allowance() {
    let (metrics, mut dead) = (Metrics::default(), Vec::new());
    let (sub, mut outbox) = outbox_at_the_cap(1000, &metrics);
    let backlog = sub.sink.backlog.clone();
    let urgent = URGENT_FRAMES as u64;
    for i in 0..urgent + 10 {
        let q = outbox.queue(&sub);
        q.push(ev("critical", 5000 + i), count(10_000), &metrics, &mut dead);
        q.push(ev("high", 6000 + i), count(10_000), &metrics, &mut dead);
    }
    assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
    assert_eq!(backlog.unwritten(), MAX_UNWRITTEN_FRAMES + URGENT_FRAMES);
    // Still waiting here: the critical events past the allowance, then the rest.
    let left = drain(outbox.queue(&sub));
    let critical_left: Vec<u64> = (5000 + urgent..5000 + urgent + 10).collect();
    assert_eq!(left[..10], critical_left[..]);
    assert_eq!(left[10], 6000);
    // Once the allowance is used, not even a critical event is handed over.
    outbox
        .queue(&sub)
        .push(ev("critical", 9999), count(10_000), &metrics, &mut dead);
    assert!(matches!(outbox.flush(&mut dead), Flush::Waiting));
    assert_eq!(backlog.unwritten(), MAX_UNWRITTEN_FRAMES + URGENT_FRAMES);
}

#[actix_rt::test]
async fn with_acks_overflow_dead_letters_and_in_flight_is_bounded() {
    let metrics = Metrics::default();
    let mut dead = Vec::new();
    let mut q = SubQueue::new(handle(
        json!({"type": "all", "ack": true, "max_in_flight": 2}),
    ));
    for i in 1..=4 {
        q.push(ev("normal", i), count(3), &metrics, &mut dead);
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].event.event.cursor, dead[0].reason),
        (1, DeadReason::Overflow)
    );
    assert_eq!(metrics.dropped.total(), 0, "nothing is dropped with acks");
    assert_eq!(drain(&mut q), [2, 3], "max_in_flight");
}
