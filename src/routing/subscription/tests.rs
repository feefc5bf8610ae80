//! Decoding and compiling subscriptions: table tests.

use super::*;
use serde_json::json;

/// A `subscribe` frame as a session handles it: decoded, then compiled here.
#[test]
fn subscribe_frames_compile_or_name_the_problem() {
    let table = [
        (
            r#"{"type": "subscribe", "subscription": {"type": "pattern", "patterns": ["a..b"]}}"#,
            Some(ErrorCode::InvalidPattern),
        ),
        (
            r#"{"action": "subscribe", "topics": ["task.*"], "agent_id": "a1"}"#,
            None,
        ),
    ];
    for (text, code) in table {
        let Ok(crate::protocol::Command::Subscribe { request }) =
            crate::protocol::decode(text, usize::MAX).command
        else {
            panic!("not a subscribe: {text}")
        };
        let got = SubscriptionSpec::from_request(request)
            .err()
            .map(|e| e.code);
        assert_eq!(got, code, "{text}");
    }
}

fn event(v: Value) -> Event {
    Event::from_json(v, "svc").unwrap()
}

#[test]
fn kinds_and_matching_table() {
    let created = event(json!({"type": "task_created", "priority": "low"}));
    let table = [
        (json!({"type": "all"}), true),
        (json!({"type": "ALL"}), true),
        (json!({"type": "pattern", "patterns": ["task.*"]}), true),
        (json!({"type": "pattern", "pattern": "agent.>"}), false),
        (
            json!({"type": "filtered", "filter": {"priorities": ["low"]}}),
            true,
        ),
        (
            json!({"type": "filtered", "filter": {"min_priority": "high"}}),
            false,
        ),
        (
            json!({"type": "pattern", "patterns": ["task.*"], "filter": {"sources": ["x"]}}),
            false,
        ),
        (json!({"patterns": ["task.>"]}), true),
        (json!({}), true),
        (json!({"type": "all", "ack": false}), true),
    ];
    for (spec, want) in table {
        let s = SubscriptionSpec::from_json(spec.clone()).unwrap();
        assert_eq!(s.matcher.matches(&created), want, "spec {spec}");
    }
}

#[test]
fn invalid_specs_table() {
    let table = [
        (json!([]), ErrorCode::InvalidSubscription),
        (
            json!({"type": "everything"}),
            ErrorCode::InvalidSubscription,
        ),
        (json!({"type": "filtered"}), ErrorCode::InvalidSubscription),
        (json!({"type": "pattern"}), ErrorCode::InvalidSubscription),
        (
            json!({"type": "pattern", "patterns": []}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "conditional"}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "pattern", "patterns": ["a..b"]}),
            ErrorCode::InvalidPattern,
        ),
        (
            json!({"type": "pattern", "patterns": [">.a"]}),
            ErrorCode::InvalidPattern,
        ),
        (
            json!({"type": "all", "id": ""}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "colour": "red"}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "patterns": "task.*"}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "from_cursor": 1, "since": "2026-01-01T00:00:00Z"}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "since": "yesterday"}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "from_cursor": -1}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "max_attempts": 3}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "ack": true, "max_in_flight": 0}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "ack": true, "ack_timeout_ms": 0}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "ack": "yes"}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "durable": ""}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "durable": "d", "ack": false}),
            ErrorCode::InvalidSubscription,
        ),
        (
            json!({"type": "all", "durable": "d", "since": "2026-01-01T00:00:00Z"}),
            ErrorCode::InvalidSubscription,
        ),
    ];
    for (spec, code) in table {
        let err = SubscriptionSpec::from_json(spec.clone()).unwrap_err();
        assert_eq!(err.code, code, "spec {spec}: {}", err.message);
    }
}

#[test]
fn from_topics_narrows_by_ids() {
    let s = SubscriptionSpec::from_topics(vec!["task.>".into()], Some("a1".into()), None, None)
        .unwrap();
    assert_eq!(s.kind, SubscriptionKind::Pattern);
    assert!(s
        .matcher
        .matches(&event(json!({"type": "task_created", "agent_id": "a1"}))));
    assert!(!s
        .matcher
        .matches(&event(json!({"type": "task_created", "agent_id": "a2"}))));
    assert!(!s
        .matcher
        .matches(&event(json!({"type": "agent_started", "agent_id": "a1"}))));
}
