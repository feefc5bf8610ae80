//! Server → client messages (docs/protocol.md section 3.8), serialised in one place.
//!
//! Event deliveries are the hot path: the envelope is serialised once per event
//! ([`crate::protocol::EncodedEvent`]) and each delivery frame is assembled from a
//! per-subscription prefix, that shared JSON and a short suffix.

use serde::Serialize;
use serde_json::Value;

use crate::error::ProtocolError;

/// One entry of a `published_batch` reply (and of `POST /api/events`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum PublishResult {
    Ok {
        event_id: String,
        cursor: u64,
        duplicate: bool,
    },
    Err {
        error: Value,
    },
}

impl From<Result<PublishOk, ProtocolError>> for PublishResult {
    fn from(r: Result<PublishOk, ProtocolError>) -> Self {
        match r {
            Ok(ok) => PublishResult::Ok {
                event_id: ok.event_id,
                cursor: ok.cursor,
                duplicate: ok.duplicate,
            },
            Err(e) => PublishResult::Err { error: e.to_json() },
        }
    }
}

/// An accepted publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOk {
    pub event_id: String,
    pub cursor: u64,
    pub duplicate: bool,
}

/// Replies to commands, and the unsolicited `dropped` notice.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Published {
        event_id: String,
        cursor: u64,
        duplicate: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    PublishedBatch {
        results: Vec<PublishResult>,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    Subscribed {
        subscription_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    Unsubscribed {
        subscription_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    Pong {
        server_time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    Dropped {
        subscription_id: String,
        count: u64,
        reason: &'static str,
    },
    ReplayComplete {
        subscription_id: String,
        last_cursor: u64,
    },
    /// Cursors a durable subscription had not resolved when retention removed them.
    Gap {
        subscription_id: String,
        from_cursor: u64,
        to_cursor: u64,
        reason: &'static str,
    },
}

impl Reply {
    pub fn error(err: &ProtocolError, request_id: Option<Value>) -> Reply {
        Reply::Error {
            code: err.code.as_str(),
            message: err.message.clone(),
            request_id,
        }
    }

    /// The JSON text of this reply.
    pub fn to_text(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"type":"error","code":"internal","message":"reply encoding failed: {e}"}}"#
            )
        })
    }
}

/// The part of an `event` frame that precedes the envelope, for one subscription:
/// `{"type":"event","subscription_id":"<id>","event":`.
pub fn event_frame_prefix(subscription_id: &str) -> String {
    let id = serde_json::to_string(subscription_id).unwrap_or_else(|_| "\"\"".to_owned());
    format!(r#"{{"type":"event","subscription_id":{id},"event":"#)
}

/// Assembles one `event` frame from a subscription's prefix and an encoded envelope.
/// One allocation per frame, sized exactly: the attempt is written into the frame, not
/// formatted into a string of its own, and a `String` whose length is its capacity
/// becomes the WebSocket message's bytes without another allocation.
pub fn event_frame(prefix: &str, envelope_json: &str, attempt: u32) -> String {
    use std::fmt::Write as _;
    let digits = attempt.checked_ilog10().unwrap_or(0) as usize + 1;
    let len = prefix.len() + envelope_json.len() + ",\"attempt\":".len() + digits + 1;
    let mut s = String::with_capacity(len);
    s.push_str(prefix);
    s.push_str(envelope_json);
    s.push_str(",\"attempt\":");
    // Writing a number into a `String` cannot fail.
    let _ = write!(s, "{attempt}");
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_frame_is_valid_json_with_escaped_id() {
        let prefix = event_frame_prefix("we\"ird");
        let frame = event_frame(&prefix, r#"{"id":"e1","cursor":3}"#, 1);
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            v,
            json!({"type": "event", "subscription_id": "we\"ird", "event": {"id": "e1", "cursor": 3}, "attempt": 1})
        );
    }

    #[test]
    fn event_frame_is_sized_exactly() {
        for attempt in [1, 9, 10, 99, 100, 4_000_000_000] {
            let frame = event_frame("{\"e\":", "{}", attempt);
            assert_eq!(frame.len(), frame.capacity(), "attempt {attempt}");
            assert!(frame.ends_with(&format!(":{attempt}}}")));
        }
    }

    #[test]
    fn replies_carry_type_and_request_id() {
        let v: Value = serde_json::from_str(
            &Reply::Subscribed {
                subscription_id: "s".into(),
                request_id: Some(json!(9)),
            }
            .to_text(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "subscribed", "subscription_id": "s", "request_id": 9})
        );
        let v: Value = serde_json::from_str(
            &Reply::Unsubscribed {
                subscription_id: "s".into(),
                request_id: None,
            }
            .to_text(),
        )
        .unwrap();
        assert_eq!(v, json!({"type": "unsubscribed", "subscription_id": "s"}));
    }

    #[test]
    fn batch_results_are_untagged() {
        let ok: PublishResult = Ok(PublishOk {
            event_id: "e".into(),
            cursor: 1,
            duplicate: false,
        })
        .into();
        let err: PublishResult = Err(ProtocolError::new(
            crate::error::ErrorCode::InvalidEvent,
            "bad",
        ))
        .into();
        assert_eq!(
            serde_json::to_value(ok).unwrap(),
            json!({"event_id": "e", "cursor": 1, "duplicate": false})
        );
        assert_eq!(
            serde_json::to_value(err).unwrap(),
            json!({"error": {"code": "invalid_event", "message": "bad"}})
        );
    }
}
