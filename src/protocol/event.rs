//! The event envelope (PROTOCOL.md section 2): what a publisher may send, how missing
//! fields are derived, and the full envelope every subscriber receives.
//!
//! Owns: validation and normalisation of published events. Must not: assign cursors
//! (the router does, in acceptance order) or decide routing.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, ProtocolError};
use crate::routing::pattern::validate_topic;
use crate::routing::Priority;

/// Longest accepted `id`, `type`, `source`, `target`, `correlation_id`, `agent_id` or `task_id`.
pub const MAX_FIELD_LEN: usize = 256;

/// The full envelope, every defaulted field filled in. `cursor` is `0` until the router
/// accepts the event. Deserialising is for envelopes this server wrote (the store);
/// publishers' input goes through [`Event::from_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub topic: String,
    pub priority: Priority,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    pub source: String,
    pub target: Option<String>,
    pub correlation_id: Option<String>,
    pub agent_id: Option<String>,
    pub task_id: Option<String>,
    pub payload: Value,
    pub metadata: Map<String, Value>,
    pub ttl_ms: Option<u64>,
    pub cursor: u64,
}

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// What a publisher may send. Unknown fields are refused rather than silently dropped.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    topic: Option<String>,
    priority: Option<Priority>,
    timestamp: Option<DateTime<Utc>>,
    source: Option<String>,
    target: Option<String>,
    correlation_id: Option<String>,
    agent_id: Option<String>,
    task_id: Option<String>,
    payload: Option<Value>,
    metadata: Option<Map<String, Value>>,
    ttl_ms: Option<u64>,
    /// Set by the server; accepted and ignored on publish so that a stored event can be
    /// published again as it is.
    #[allow(dead_code)]
    cursor: Option<Value>,
}

/// Derives a topic from an event type: lower-case, first `_` becomes `.`.
/// `task_created` → `task.created`, `cost_budget_warning` → `cost.budget_warning`.
pub fn topic_from_type(event_type: &str) -> String {
    event_type.to_lowercase().replacen('_', ".", 1)
}

/// Derives an event type from a topic: every `.` becomes `_`.
pub fn type_from_topic(topic: &str) -> String {
    topic.replace('.', "_")
}

impl Event {
    /// Validates and normalises one published event. `default_source` is used when the
    /// event names no `source` (the authenticated principal, or `anonymous`).
    pub fn from_json(value: Value, default_source: &str) -> Result<Event, ProtocolError> {
        let invalid = |msg: String| ProtocolError::new(ErrorCode::InvalidEvent, msg);
        if !value.is_object() {
            return Err(invalid("an event must be a JSON object".into()));
        }
        let input: EventInput = serde_path_to_error::deserialize(value)
            .map_err(|e| invalid(format!("field `{}`: {}", e.path(), e.inner())))?;

        for (name, field) in [
            ("id", &input.id),
            ("type", &input.event_type),
            ("source", &input.source),
            ("target", &input.target),
            ("correlation_id", &input.correlation_id),
            ("agent_id", &input.agent_id),
            ("task_id", &input.task_id),
        ] {
            if let Some(v) = field {
                if v.is_empty() {
                    return Err(invalid(format!("field `{name}` must not be empty")));
                }
                if v.len() > MAX_FIELD_LEN {
                    return Err(invalid(format!(
                        "field `{name}` is longer than {MAX_FIELD_LEN} bytes"
                    )));
                }
            }
        }

        let (event_type, topic) = match (input.event_type, input.topic) {
            (Some(t), Some(topic)) => (t, topic),
            (Some(t), None) => {
                let topic = topic_from_type(&t);
                (t, topic)
            }
            (None, Some(topic)) => (type_from_topic(&topic), topic),
            (None, None) => return Err(invalid("an event needs `type` or `topic`".into())),
        };
        validate_topic(&topic)
            .map_err(|e| invalid(format!("{} (derived from or given as `topic`)", e.message)))?;

        let payload = input.payload.unwrap_or_else(|| Value::Object(Map::new()));
        let from_payload = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_owned);
        let agent_id = input.agent_id.or_else(|| from_payload("agent_id"));
        let task_id = input.task_id.or_else(|| from_payload("task_id"));

        Ok(Event {
            id: input.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            event_type,
            topic,
            priority: input.priority.unwrap_or_default(),
            timestamp: input.timestamp.unwrap_or_else(Utc::now),
            source: input.source.unwrap_or_else(|| default_source.to_owned()),
            target: input.target,
            correlation_id: input.correlation_id,
            agent_id,
            task_id,
            payload,
            metadata: input.metadata.unwrap_or_default(),
            ttl_ms: input.ttl_ms,
            cursor: 0,
        })
    }

    /// Is the event past `timestamp + ttl_ms` at `now`?
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        match self.ttl_ms {
            Some(ttl) => {
                let ttl = chrono::Duration::milliseconds(i64::try_from(ttl).unwrap_or(i64::MAX));
                self.timestamp
                    .checked_add_signed(ttl)
                    .is_some_and(|deadline| now > deadline)
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topic_and_type_derivation_table() {
        let table = [
            ("task_created", "task.created"),
            ("custom_event", "custom.event"),
            ("cost_budget_warning", "cost.budget_warning"),
            ("Agent_Started", "agent.started"),
            ("heartbeat", "heartbeat"),
        ];
        for (t, topic) in table {
            assert_eq!(topic_from_type(t), topic, "type {t}");
        }
        assert_eq!(type_from_topic("task.created"), "task_created");
        assert_eq!(
            type_from_topic("cost.budget.warning"),
            "cost_budget_warning"
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let e = Event::from_json(json!({"type": "task_created"}), "anonymous").unwrap();
        assert_eq!(e.topic, "task.created");
        assert_eq!(e.priority, Priority::Normal);
        assert_eq!(e.source, "anonymous");
        assert_eq!(e.payload, json!({}));
        assert!(e.metadata.is_empty());
        assert!(uuid::Uuid::parse_str(&e.id).is_ok());
    }

    #[test]
    fn type_derived_from_topic_and_ids_from_payload() {
        let e = Event::from_json(
            json!({"topic": "agent.failed", "priority": "HIGH", "payload": {"agent_id": "a1", "task_id": 7}}),
            "svc",
        )
        .unwrap();
        assert_eq!(e.event_type, "agent_failed");
        assert_eq!(e.priority, Priority::High);
        assert_eq!(e.agent_id.as_deref(), Some("a1"));
        assert_eq!(e.task_id, None, "only string payload fields are copied");
    }

    #[test]
    fn explicit_fields_win_over_payload() {
        let e = Event::from_json(
            json!({"type": "x_y", "agent_id": "outer", "payload": {"agent_id": "inner"}}),
            "s",
        )
        .unwrap();
        assert_eq!(e.agent_id.as_deref(), Some("outer"));
    }

    #[test]
    fn invalid_events_table() {
        let table = [
            json!({}),
            json!([]),
            json!("task_created"),
            json!({"type": 5}),
            json!({"type": "a", "priority": "urgent"}),
            json!({"type": "a", "timestamp": "yesterday"}),
            json!({"type": "a", "metadata": []}),
            json!({"type": "a", "ttl_ms": -1}),
            json!({"topic": "task.*"}),
            json!({"topic": "task..x"}),
            json!({"type": ""}),
            json!({"type": "a", "bogus": 1}),
        ];
        for input in table {
            let err = Event::from_json(input.clone(), "s").unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEvent, "input {input}");
        }
    }

    #[test]
    fn error_names_the_field() {
        let err = Event::from_json(json!({"type": "a", "priority": "urgent"}), "s").unwrap_err();
        assert!(err.message.contains("priority"), "{}", err.message);
    }

    #[test]
    fn ttl_expiry() {
        let mut e = Event::from_json(json!({"type": "a", "ttl_ms": 1000}), "s").unwrap();
        let t = e.timestamp;
        assert!(!e.is_expired(t + chrono::Duration::milliseconds(1000)));
        assert!(e.is_expired(t + chrono::Duration::milliseconds(1001)));
        e.ttl_ms = None;
        assert!(!e.is_expired(t + chrono::Duration::days(1000)));
    }

    #[test]
    fn serialized_envelope_has_every_field() {
        let e = Event::from_json(json!({"type": "task_created"}), "s").unwrap();
        let v = serde_json::to_value(&e).unwrap();
        for key in [
            "id",
            "type",
            "topic",
            "priority",
            "timestamp",
            "source",
            "target",
            "correlation_id",
            "agent_id",
            "task_id",
            "payload",
            "metadata",
            "ttl_ms",
            "cursor",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
    }
}
