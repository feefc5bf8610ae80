//! The event envelope (docs/protocol.md section 2): what a publisher may send, how
//! missing fields are derived, and the full envelope every subscriber receives.
//!
//! Owns: validation and normalisation of published events. Must not: assign cursors
//! (the router does, in acceptance order) or decide routing.

use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::topic::validate_topic;
use super::Priority;
use crate::error::{ErrorCode, ProtocolError};

/// The publisher of every event while auth is off (`auth::ANONYMOUS`), and of every
/// event stored before publishers were recorded.
pub const ANONYMOUS: &str = "anonymous";

/// Longest accepted `id`, `type`, `source`, `target`, `correlation_id`, `agent_id` or `task_id`.
pub const MAX_FIELD_LEN: usize = 256;

/// The fields of a serialized envelope (docs/protocol.md section 2), in order.
pub const ENVELOPE_FIELDS: [&str; 14] = [
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
];

/// The full envelope, every defaulted field filled in. `cursor` is `0` until the router
/// accepts the event. Deserialising is for envelopes this server wrote (the store);
/// publishers' input goes through [`Event::from_raw`].
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
    pub payload: Payload,
    pub metadata: Map<String, Value>,
    pub ttl_ms: Option<u64>,
    pub cursor: u64,
    /// The server made up `id` (the publisher gave none): no other event can carry it,
    /// so no duplicate check needs it. Not part of the envelope.
    #[serde(skip)]
    pub id_generated: bool,
    /// The principal that published it: the scope of its `id` in duplicate checks, so
    /// that one principal's ids never suppress or reveal another's events. Not part of
    /// the envelope; read back from a store, it is [`ANONYMOUS`] (the stores keep it
    /// beside the envelope for the duplicate window only).
    #[serde(skip, default = "anonymous")]
    pub publisher: String,
}

fn anonymous() -> String {
    ANONYMOUS.to_owned()
}

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// An event's payload: the JSON text exactly as published, which every envelope of the
/// event repeats verbatim, and its parsed value, built on first use only (by a
/// condition, a filter or a coalescing key that looks inside it). Most routing never
/// reads the payload, so most events never pay for a parsed tree or for re-escaping
/// its strings.
#[derive(Debug, Clone)]
pub struct Payload {
    raw: Box<RawValue>,
    value: OnceLock<Value>,
}

impl Payload {
    /// The payload of an event that gives none: `{}`.
    pub fn empty() -> Payload {
        // `{}` is valid JSON: the `null` fallback is never taken.
        Payload::from_raw(RawValue::from_string("{}".to_owned()).unwrap_or_default())
    }

    fn from_raw(raw: Box<RawValue>) -> Payload {
        Payload {
            raw,
            value: OnceLock::new(),
        }
    }

    /// The JSON text as published.
    pub fn raw(&self) -> &str {
        self.raw.get()
    }

    /// The parsed value, built once on first use.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            // The text was validated as JSON when the event was read; `Null` is only
            // a guard.
            serde_json::from_str(self.raw.get()).unwrap_or(Value::Null)
        })
    }
}

/// Payloads are equal when their values are, whatever the spacing of their text.
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.value() == other.value()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

/// Reads a payload from JSON text (a publish frame or a stored envelope); it cannot be
/// read from an already parsed `serde_json::Value`.
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Payload::from_raw)
    }
}

/// One pass over a published payload's text: it checks everything a parse into a
/// `Value` would (nesting depth, numbers in range, string escapes) without building
/// anything, and picks out the top-level `agent_id` and `task_id` strings.
#[derive(Default)]
struct PayloadScan {
    agent_id: Option<String>,
    task_id: Option<String>,
}

impl PayloadScan {
    /// Scans `raw`; a payload that is not an object is only checked (it has no ids).
    fn read(raw: &str) -> Result<PayloadScan, ProtocolError> {
        let invalid = |e: String| {
            ProtocolError::new(
                ErrorCode::InvalidJson,
                format!("invalid JSON in field `payload`: {e}"),
            )
        };
        let scan = if raw.starts_with('{') {
            serde_json::from_str(raw)
        } else {
            serde_json::from_str::<Checked>(raw).map(|_| PayloadScan::default())
        };
        scan.map_err(|e| invalid(e.to_string()))
    }
}

/// Only ever given an object (see [`PayloadScan::read`]).
impl<'de> Deserialize<'de> for PayloadScan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = PayloadScan;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PayloadScan, A::Error> {
                let mut scan = PayloadScan::default();
                while let Some(key) = map.next_key::<IdKey>()? {
                    match key {
                        IdKey::Agent => scan.agent_id = map.next_value::<Checked>()?.0,
                        IdKey::Task => scan.task_id = map.next_value::<Checked>()?.0,
                        IdKey::Other => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(scan)
            }
        }
        d.deserialize_map(Object)
    }
}

/// Checks JSON text as strictly as parsing it into a `Value` would (nesting depth,
/// numbers in range, escapes), without building anything: for text so far only
/// skipped over as a `RawValue`.
pub fn check_json(text: &str) -> Result<(), ProtocolError> {
    serde_json::from_str::<Checked>(text)
        .map(|_| ())
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))
}

/// A key of the payload's top-level object, as far as [`PayloadScan`] cares.
enum IdKey {
    Agent,
    Task,
    Other,
}

impl<'de> Deserialize<'de> for IdKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = IdKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<IdKey, E> {
                Ok(match key {
                    "agent_id" => IdKey::Agent,
                    "task_id" => IdKey::Task,
                    _ => IdKey::Other,
                })
            }
        }
        d.deserialize_str(Key)
    }
}

/// Any JSON value, checked and dropped; a string is kept (the value of an id key).
struct Checked(Option<String>);

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(Checked(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked(None))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Checked, E> {
                Ok(Checked(Some(s.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
                Ok(Checked(None))
            }
        }
        d.deserialize_any(Any)
    }
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
    payload: Option<Payload>,
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
    /// Validates and normalises one published event, read straight from the JSON text
    /// of the command that carried it. `publisher` is the principal publishing it (or
    /// `anonymous`): the event's [`Event::publisher`], and its `source` when it names
    /// none. Whether it may name another source is the caller's check.
    pub fn from_raw(raw: &RawValue, publisher: &str) -> Result<Event, ProtocolError> {
        let invalid = |msg: String| ProtocolError::new(ErrorCode::InvalidEvent, msg);
        if !raw.get().starts_with('{') {
            return Err(match check_json(raw.get()) {
                Ok(()) => invalid("an event must be a JSON object".into()),
                Err(e) => e,
            });
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let input: EventInput = serde_path_to_error::deserialize(&mut de)
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

        let payload = input.payload.unwrap_or_else(Payload::empty);
        // The payload was only skipped over so far: it is checked here as strictly as
        // the rest of the frame (a subscriber must be able to parse what it receives).
        let ids = PayloadScan::read(payload.raw())?;
        let agent_id = input.agent_id.or(ids.agent_id);
        let task_id = input.task_id.or(ids.task_id);

        let id_generated = input.id.is_none();
        Ok(Event {
            id: input.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            id_generated,
            event_type,
            topic,
            priority: input.priority.unwrap_or_default(),
            timestamp: input.timestamp.unwrap_or_else(Utc::now),
            source: input.source.unwrap_or_else(|| publisher.to_owned()),
            target: input.target,
            correlation_id: input.correlation_id,
            agent_id,
            task_id,
            payload,
            metadata: input.metadata.unwrap_or_default(),
            ttl_ms: input.ttl_ms,
            cursor: 0,
            publisher: publisher.to_owned(),
        })
    }

    /// [`Event::from_raw`] for an event built as a `serde_json::Value` (the server's
    /// own notices, and tests).
    pub fn from_json(value: Value, publisher: &str) -> Result<Event, ProtocolError> {
        let raw = serde_json::value::to_raw_value(&value).map_err(|e| {
            ProtocolError::new(ErrorCode::InvalidEvent, format!("unencodable event: {e}"))
        })?;
        Event::from_raw(&raw, publisher)
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
    fn payload_is_kept_as_sent_and_parsed_on_demand() {
        let raw = RawValue::from_string(
            r#"{"type": "a", "payload": {"b": [1, 2], "agent_id": "ag", "task_id": 9}}"#.into(),
        )
        .unwrap();
        let e = Event::from_raw(&raw, "s").unwrap();
        assert_eq!(
            e.payload.raw(),
            r#"{"b": [1, 2], "agent_id": "ag", "task_id": 9}"#
        );
        assert!(e.payload.value.get().is_none(), "not parsed until asked");
        assert_eq!(e.payload.value()["b"], json!([1, 2]));
        assert_eq!(e.agent_id.as_deref(), Some("ag"));
        assert_eq!(e.task_id, None);
        // The envelope repeats the payload's text.
        let envelope = serde_json::to_string(&e).unwrap();
        assert!(
            envelope.contains(r#""payload":{"b": [1, 2], "agent_id""#),
            "{envelope}"
        );
        // Read back from a stored envelope, it is the same event.
        let back: Event = serde_json::from_str(&envelope).unwrap();
        assert_eq!((back.id, back.payload), (e.id, e.payload));
        // A payload that is not an object carries no ids; an escaped key still counts.
        let e = Event::from_json(json!({"type": "a", "payload": [1]}), "s").unwrap();
        assert_eq!((e.agent_id, e.payload.raw()), (None, "[1]"));
        let raw =
            RawValue::from_string(r#"{"type": "a", "payload": {"agent\u005fid": "x"}}"#.into())
                .unwrap();
        let e = Event::from_raw(&raw, "s").unwrap();
        assert_eq!(e.agent_id.as_deref(), Some("x"));
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
    fn payloads_are_checked_as_strictly_as_parsed_json() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for payload in [
            deep.as_str(),
            "1e999999",
            r#"{"a": "\ud800"}"#,
            r#"[1, {"b": -1e400}]"#,
        ] {
            let text = format!(r#"{{"type": "a", "payload": {payload}}}"#);
            let raw = RawValue::from_string(text).unwrap();
            let err = Event::from_raw(&raw, "s").unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::InvalidJson,
                "payload {payload}: {}",
                err.message
            );
            assert!(err.message.contains("payload"), "{}", err.message);
        }
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let raw = RawValue::from_string(format!(r#"{{"type": "a", "payload": {ok}}}"#)).unwrap();
        assert_eq!(Event::from_raw(&raw, "s").unwrap().payload.raw(), ok);
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
        for key in ENVELOPE_FIELDS {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let fields = v.as_object().map_or(0, |o| o.len());
        assert_eq!(fields, ENVELOPE_FIELDS.len(), "{v}");
        assert!(DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
    }
}
