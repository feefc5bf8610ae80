//! The `coalesce` option of a subscription (docs/protocol.md section 4.5): which
//! envelope field groups events, and how long a window lasts.
//!
//! Owns: validating the option and reading an event's key. Must not: hold windows or
//! pending events (the delivery layer does).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::Event;

/// Default window when `window_ms` is left out.
pub const DEFAULT_WINDOW_MS: u64 = 100;
/// Longest accepted window: an hour.
pub const MAX_WINDOW_MS: u64 = 3_600_000;
/// Longest accepted key path, in bytes.
const MAX_KEY_LEN: usize = 256;

/// `{"key": "payload.task_id", "window_ms": 100}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSpec {
    /// A dot-separated path into the envelope: `topic`, `agent_id`, `payload.task_id`.
    pub key: String,
    #[serde(default = "default_window")]
    pub window_ms: u64,
}

fn default_window() -> u64 {
    DEFAULT_WINDOW_MS
}

impl CoalesceSpec {
    /// Parses and validates the `coalesce` object of a subscription. Only an object is
    /// accepted (serde alone would also take the array `["payload.k", 100]`).
    pub fn from_json(value: Value) -> Result<CoalesceSpec, ProtocolError> {
        let invalid = |msg: String| ProtocolError::new(ErrorCode::InvalidSubscription, msg);
        if !value.is_object() {
            return Err(invalid(
                "`coalesce` must be an object: {\"key\": ..., \"window_ms\": ...}".into(),
            ));
        }
        let spec: CoalesceSpec = serde_path_to_error::deserialize(value)
            .map_err(|e| invalid(format!("`coalesce` field `{}`: {}", e.path(), e.inner())))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses an empty or malformed key and a window outside 1 ms ..= 1 hour.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let invalid = |msg: String| ProtocolError::new(ErrorCode::InvalidSubscription, msg);
        if self.key.is_empty()
            || self.key.len() > MAX_KEY_LEN
            || self.key.split('.').any(str::is_empty)
        {
            return Err(invalid(format!(
                "`coalesce.key` must be a dot-separated envelope path such as `payload.task_id` \
                 (at most {MAX_KEY_LEN} bytes), not `{}`",
                self.key
            )));
        }
        if !(1..=MAX_WINDOW_MS).contains(&self.window_ms) {
            return Err(invalid(format!(
                "`coalesce.window_ms` must be from 1 to {MAX_WINDOW_MS}"
            )));
        }
        Ok(())
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// The event's key value, as JSON text (so `"7"` and `7` are different keys);
    /// `None` when the path is absent or `null`: such an event is not coalesced.
    pub fn key_of(&self, event: &Event) -> Option<String> {
        let mut path = self.key.split('.');
        let first = path.next()?;
        let text = |s: &Option<String>| s.as_ref().map(|s| Value::String(s.clone()));
        let value: Value = match first {
            "payload" => return descend(event.payload.value(), path),
            "metadata" => {
                let mut rest = path.peekable();
                let name = rest.next()?;
                return descend(event.metadata.get(name)?, rest);
            }
            "id" => Value::String(event.id.clone()),
            "type" => Value::String(event.event_type.clone()),
            "topic" => Value::String(event.topic.clone()),
            "priority" => Value::String(event.priority.as_str().to_owned()),
            "source" => Value::String(event.source.clone()),
            "target" => text(&event.target)?,
            "correlation_id" => text(&event.correlation_id)?,
            "agent_id" => text(&event.agent_id)?,
            "task_id" => text(&event.task_id)?,
            _ => return None,
        };
        if path.next().is_some() {
            return None;
        }
        Some(value.to_string())
    }
}

fn descend<'a>(mut value: &Value, path: impl Iterator<Item = &'a str>) -> Option<String> {
    for name in path {
        value = value.get(name)?;
    }
    (!value.is_null()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(key: &str) -> CoalesceSpec {
        CoalesceSpec {
            key: key.into(),
            window_ms: 100,
        }
    }

    #[test]
    fn keys_from_envelope_paths() {
        let e = Event::from_json(
            json!({"type": "task_progress", "agent_id": "a1",
                   "payload": {"task_id": "t9", "n": 7, "deep": {"k": [1, 2]}},
                   "metadata": {"run": {"id": 5}}}),
            "svc",
        )
        .unwrap();
        assert_eq!(
            spec("payload.task_id").key_of(&e).as_deref(),
            Some("\"t9\"")
        );
        assert_eq!(spec("payload.n").key_of(&e).as_deref(), Some("7"));
        assert_eq!(spec("payload.deep.k").key_of(&e).as_deref(), Some("[1,2]"));
        assert_eq!(spec("agent_id").key_of(&e).as_deref(), Some("\"a1\""));
        assert_eq!(spec("task_id").key_of(&e).as_deref(), Some("\"t9\""));
        assert_eq!(
            spec("topic").key_of(&e).as_deref(),
            Some("\"task.progress\"")
        );
        assert_eq!(spec("metadata.run.id").key_of(&e).as_deref(), Some("5"));
        assert_eq!(spec("payload.missing").key_of(&e), None);
        assert_eq!(spec("target").key_of(&e), None);
        assert_eq!(spec("topic.x").key_of(&e), None);
        assert_eq!(spec("nonsense").key_of(&e), None);
    }

    /// `"coalesce": ["x"]` is refused, not read as the key `x` (tests/hostile.rs).
    #[test]
    fn only_an_object_is_a_coalesce_spec() {
        let ok = CoalesceSpec::from_json(json!({"key": "payload.k"})).unwrap();
        assert_eq!(ok, spec("payload.k"));
        for bad in [
            json!(["x"]),
            json!(["x", 5]),
            json!("x"),
            json!(5),
            json!({"key": 5}),
            json!({"key": "x", "window_ms": -1}),
            json!({"key": "x", "colour": 1}),
            json!({"key": ""}),
        ] {
            let err = CoalesceSpec::from_json(bad.clone()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidSubscription, "{bad}");
        }
    }

    #[test]
    fn validation() {
        assert!(spec("payload.task_id").validate().is_ok());
        for bad in ["", "payload.", ".x", "a..b"] {
            assert!(spec(bad).validate().is_err(), "{bad}");
        }
        let mut s = spec("topic");
        s.window_ms = 0;
        assert!(s.validate().is_err());
        s.window_ms = MAX_WINDOW_MS + 1;
        assert!(s.validate().is_err());
    }
}
