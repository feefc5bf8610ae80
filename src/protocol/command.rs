//! Decoding client commands (docs/protocol.md section 3), aliases included.
//!
//! Owns: turning one text frame into a typed [`Command`] or a [`ProtocolError`] with the
//! right code, and refusing a command frame over `limits.max_command_bytes` before it
//! is parsed. Must not: validate events against limits that need configuration (the
//! ingress does) or touch any actor.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, ProtocolError};

/// A decoded command. Published events stay JSON text borrowed from the frame; the
/// ingress validates them (`Event::from_raw`).
#[derive(Debug)]
pub enum Command<'a> {
    /// `publish_event` (alias `publish`): the raw event, validated by the ingress.
    Publish {
        event: &'a RawValue,
    },
    /// `publish_batch`.
    PublishBatch {
        events: Vec<&'a RawValue>,
    },
    /// `subscribe`, or the alias `{"action": "subscribe", "topics": [...]}`.
    Subscribe {
        request: SubscribeRequest,
    },
    Unsubscribe {
        subscription_id: String,
    },
    Ack {
        subscription_id: String,
        event_ids: Vec<String>,
    },
    Nack {
        subscription_id: String,
        event_id: String,
        requeue: bool,
        delay_ms: Option<u64>,
    },
    Ping,
}

/// A subscription as the client wrote it. Routing compiles it into a subscription
/// (`routing::SubscriptionSpec::from_request`), where patterns, filters and conditions
/// are checked.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeRequest {
    /// `{"type": "subscribe", "subscription": {...}}`: the `subscription` object.
    Spec(Value),
    /// `{"action": "subscribe", "topics": [...]}` (or `kinds`), optionally narrowed to
    /// one agent or task.
    Topics {
        topics: Vec<String>,
        agent_id: Option<String>,
        task_id: Option<String>,
    },
}

/// One frame's decoding: the `request_id` is kept even when the command is bad, so the
/// error reply can echo it.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub request_id: Option<Value>,
    pub command: Result<Command<'a>, ProtocolError>,
}

/// The fields every command is told apart by, read without parsing the rest: an
/// event (or a batch of them) stays text until the ingress validates it, so a publish
/// is parsed once, not into a `Value` tree first.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    name: Option<Value>,
    action: Option<Value>,
    request_id: Option<Value>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    events: Option<&'a RawValue>,
}

/// Decodes one text frame. Never panics, whatever the input. A frame that is not a
/// publish and is longer than `max_command_bytes` is answered `payload_too_large`
/// unparsed: a `subscribe` has no reason to be a document of many megabytes, and
/// parsing one into a JSON tree costs many times its size. (A publish is bounded by
/// `limits.max_event_bytes` in the ingress.)
pub fn decode(text: &str, max_command_bytes: usize) -> Decoded<'_> {
    // Anything that is not a publish, is not a well-formed object or repeats a key takes
    // the general path below, which names the problem. (`Head` skips the fields it does
    // not name without checking them fully, so it never decides that a frame is bad.)
    if let Ok(head) = serde_json::from_str::<Head<'_>>(text) {
        let request_id = head.request_id.filter(|v| !v.is_null());
        let name = head.name.as_ref().or(head.action.as_ref());
        let command = match name.and_then(Value::as_str).unwrap_or_default() {
            "publish_event" | "publish" => match head.event {
                Some(event) => Ok(Command::Publish { event }),
                None => Err(ProtocolError::new(
                    ErrorCode::InvalidEvent,
                    "`publish_event` needs an `event` object",
                )),
            },
            "publish_batch" => batch_events(head.events),
            _ if text.len() > max_command_bytes => {
                return too_large(text.len(), max_command_bytes, request_id)
            }
            _ => return decode_general(text),
        };
        return Decoded {
            request_id,
            command,
        };
    }
    if text.len() > max_command_bytes {
        return too_large(text.len(), max_command_bytes, None);
    }
    decode_general(text)
}

/// Longest `request_id` echoed in the reply to a frame over the command limit.
const MAX_ECHOED_ID_BYTES: usize = 128;

/// The answer to a command frame of `bytes` over `max`. Its `request_id` is echoed when
/// it is a number or a short string, never a document the size of the frame.
fn too_large(bytes: usize, max: usize, request_id: Option<Value>) -> Decoded<'static> {
    let request_id = request_id.filter(|id| match id {
        Value::Number(_) => true,
        Value::String(s) => s.len() <= MAX_ECHOED_ID_BYTES,
        _ => false,
    });
    Decoded {
        request_id,
        command: Err(ProtocolError::new(
            ErrorCode::PayloadTooLarge,
            format!("command frame is {bytes} bytes, over the limit of {max} (limits.max_command_bytes)"),
        )),
    }
}

/// The command's name, from `type` (or the alias `action`).
fn command_name(field: Option<&Value>) -> Result<&str, ProtocolError> {
    match field {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            format!("command `type` must be a string, got {other}"),
        )),
        None => Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            "a command needs a `type` (or `action`) naming it",
        )),
    }
}

fn batch_events(events: Option<&RawValue>) -> Result<Command<'_>, ProtocolError> {
    let not_a_list = || {
        ProtocolError::new(
            ErrorCode::InvalidEvent,
            "`publish_batch` needs an `events` array",
        )
    };
    let events: Vec<&RawValue> = match events {
        Some(raw) if raw.get().starts_with('[') => {
            serde_json::from_str(raw.get()).map_err(|_| not_a_list())?
        }
        _ => return Err(not_a_list()),
    };
    if events.is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::InvalidEvent,
            "`events` is empty",
        ));
    }
    Ok(Command::PublishBatch { events })
}

/// Every command other than a publish, and every frame [`Head`] cannot read: parsed
/// as a whole into a JSON object.
fn decode_general(text: &str) -> Decoded<'_> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Decoded {
                request_id: None,
                command: Err(ProtocolError::new(
                    ErrorCode::InvalidJson,
                    format!("invalid JSON: {e}"),
                )),
            }
        }
    };
    let Value::Object(mut obj) = value else {
        return Decoded {
            request_id: None,
            command: Err(ProtocolError::new(
                ErrorCode::InvalidJson,
                "a command must be a JSON object",
            )),
        };
    };
    let request_id = obj.remove("request_id").filter(|v| !v.is_null());
    Decoded {
        request_id,
        command: decode_object(obj),
    }
}

fn decode_object(obj: Map<String, Value>) -> Result<Command<'static>, ProtocolError> {
    let name = command_name(obj.get("type").or_else(|| obj.get("action")))?.to_owned();
    match name.as_str() {
        // A publish that reached here repeats a key, or its `event`/`events` is not
        // JSON: refused the same way as an event that is not an object.
        "publish_event" | "publish" | "publish_batch" => Err(ProtocolError::new(
            ErrorCode::InvalidEvent,
            "a publish must carry its `event` (or `events`) once, as JSON",
        )),
        "subscribe" => decode_subscribe(obj),
        "unsubscribe" => Ok(Command::Unsubscribe {
            subscription_id: string_field(&obj, "subscription_id", ErrorCode::InvalidSubscription)?,
        }),
        "ack" => {
            let subscription_id =
                string_field(&obj, "subscription_id", ErrorCode::InvalidSubscription)?;
            let event_ids = match (obj.get("event_id"), obj.get("event_ids")) {
                (Some(Value::String(id)), None) => vec![id.clone()],
                (None, Some(Value::Array(ids))) if !ids.is_empty() => ids
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ProtocolError::new(ErrorCode::UnknownEvent, "`event_ids` must be strings")
                    })?,
                _ => {
                    return Err(ProtocolError::new(
                        ErrorCode::UnknownEvent,
                        "`ack` needs `event_id` (a string) or `event_ids` (a non-empty list)",
                    ))
                }
            };
            Ok(Command::Ack {
                subscription_id,
                event_ids,
            })
        }
        "nack" => Ok(Command::Nack {
            subscription_id: string_field(&obj, "subscription_id", ErrorCode::InvalidSubscription)?,
            event_id: string_field(&obj, "event_id", ErrorCode::UnknownEvent)?,
            requeue: match obj.get("requeue") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidSubscription,
                        "`requeue` must be a boolean",
                    ))
                }
            },
            delay_ms: match obj.get("delay_ms") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::InvalidSubscription,
                        "`delay_ms` must be a non-negative integer",
                    )
                })?),
            },
        }),
        "ping" => Ok(Command::Ping),
        other => Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            format!("unknown command `{other}`"),
        )),
    }
}

fn decode_subscribe(mut obj: Map<String, Value>) -> Result<Command<'static>, ProtocolError> {
    if let Some(sub) = obj.remove("subscription") {
        return Ok(Command::Subscribe {
            request: SubscribeRequest::Spec(sub),
        });
    }
    // Alias: {"action": "subscribe", "topics": [...]} (or "kinds"), optionally narrowed.
    let topics = match obj.get("topics").or_else(|| obj.get("kinds")) {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::InvalidSubscription,
                    "`topics` must be a list of strings",
                )
            })?,
        Some(Value::String(s)) => s.split(',').map(|t| t.trim().to_owned()).collect(),
        _ => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidSubscription,
                "`subscribe` needs a `subscription` object (or a `topics` list)",
            ))
        }
    };
    if topics.is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::InvalidSubscription,
            "`topics` is empty",
        ));
    }
    let opt = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidSubscription,
            format!("`{key}` must be a string"),
        )),
    };
    Ok(Command::Subscribe {
        request: SubscribeRequest::Topics {
            topics,
            agent_id: opt("agent_id")?,
            task_id: opt("task_id")?,
        },
    })
}

fn string_field(
    obj: &Map<String, Value>,
    key: &str,
    code: ErrorCode,
) -> Result<String, ProtocolError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ProtocolError::new(
            code,
            format!("`{key}` must be a non-empty string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 64 << 10;

    fn code_of(text: &str) -> ErrorCode {
        decode(text, LIMIT).command.unwrap_err().code
    }

    #[test]
    fn commands_and_aliases_decode() {
        let table = [
            r#"{"type": "publish_event", "event": {"type": "a"}}"#,
            r#"{"type": "publish", "event": {"type": "a"}}"#,
            r#"{"action": "publish", "event": {"type": "a"}}"#,
            r#"{"type": "publish_batch", "events": [{"type": "a"}]}"#,
            r#"{"type": "subscribe", "subscription": {"type": "all"}}"#,
            r#"{"action": "subscribe", "topics": ["task.*"]}"#,
            r#"{"type": "unsubscribe", "subscription_id": "s"}"#,
            r#"{"type": "ack", "subscription_id": "s", "event_id": "e"}"#,
            r#"{"type": "ack", "subscription_id": "s", "event_ids": ["e", "f"]}"#,
            r#"{"type": "nack", "subscription_id": "s", "event_id": "e", "requeue": false}"#,
            r#"{"type": "ping"}"#,
        ];
        for text in table {
            assert!(decode(text, LIMIT).command.is_ok(), "{text}");
        }
    }

    #[test]
    fn request_id_is_kept_even_on_error() {
        let d = decode(r#"{"type": "nope", "request_id": 7}"#, LIMIT);
        assert_eq!(d.request_id, Some(json!(7)));
        assert_eq!(d.command.unwrap_err().code, ErrorCode::UnknownCommand);
        let d = decode(r#"{"type": "ping", "request_id": "abc"}"#, LIMIT);
        assert_eq!(d.request_id, Some(json!("abc")));
    }

    #[test]
    fn error_codes_table() {
        let table = [
            ("not json", ErrorCode::InvalidJson),
            ("[1, 2]", ErrorCode::InvalidJson),
            ("{}", ErrorCode::UnknownCommand),
            (r#"{"type": 3}"#, ErrorCode::UnknownCommand),
            (r#"{"type": "explode"}"#, ErrorCode::UnknownCommand),
            (r#"{"type": "publish_event"}"#, ErrorCode::InvalidEvent),
            (
                r#"{"type": "publish_batch", "events": []}"#,
                ErrorCode::InvalidEvent,
            ),
            (
                r#"{"type": "publish_batch", "events": {}}"#,
                ErrorCode::InvalidEvent,
            ),
            (
                r#"{"type": "publish_batch", "events": "[{}]"}"#,
                ErrorCode::InvalidEvent,
            ),
            // A repeated key makes the frame ambiguous: refused, never half-read.
            (
                r#"{"type": "publish", "event": {"type": "a"}, "event": {"type": "b"}}"#,
                ErrorCode::InvalidEvent,
            ),
            (
                r#"{"type": "ping", "type": "publish", "event": {"type": "a"}}"#,
                ErrorCode::InvalidEvent,
            ),
            (r#"{"type": "subscribe"}"#, ErrorCode::InvalidSubscription),
            (
                r#"{"action": "subscribe", "topics": [1]}"#,
                ErrorCode::InvalidSubscription,
            ),
            // A wrongly typed narrowing id is refused: ignoring it would silently widen
            // the subscription to every agent (tests/hostile.rs).
            (
                r#"{"action": "subscribe", "topics": ["a"], "agent_id": 7}"#,
                ErrorCode::InvalidSubscription,
            ),
            (
                r#"{"action": "subscribe", "topics": ["a"], "task_id": ["t"]}"#,
                ErrorCode::InvalidSubscription,
            ),
            (r#"{"type": "unsubscribe"}"#, ErrorCode::InvalidSubscription),
            (
                r#"{"type": "ack", "subscription_id": "s"}"#,
                ErrorCode::UnknownEvent,
            ),
            (
                r#"{"type": "nack", "subscription_id": "s", "event_id": "e", "delay_ms": -5}"#,
                ErrorCode::InvalidSubscription,
            ),
        ];
        for (text, code) in table {
            assert_eq!(code_of(text), code, "{text}");
        }
    }

    #[test]
    fn commands_over_the_limit_are_refused_unparsed_publishes_are_not() {
        let pad = "x".repeat(200);
        let table = [
            (
                json!({"type": "subscribe", "request_id": 3, "subscription": {"id": pad}}),
                Some(json!(3)),
            ),
            (
                json!({"type": "ping", "request_id": "r", "pad": pad}),
                Some(json!("r")),
            ),
            (json!({"type": "ping", "request_id": [pad], "pad": 1}), None),
            (json!({"no_type": pad}), None),
        ];
        for (frame, echoed) in table {
            let text = frame.to_string();
            let d = decode(&text, 100);
            assert_eq!(
                d.command.unwrap_err().code,
                ErrorCode::PayloadTooLarge,
                "{frame}"
            );
            assert_eq!(d.request_id, echoed, "{frame}");
        }
        let deep = format!("[{}", "[".repeat(300));
        let d = decode(&deep, 100);
        assert_eq!(d.command.unwrap_err().code, ErrorCode::PayloadTooLarge);
        let publish = json!({"type": "publish_event", "event": {"type": "a", "payload": pad}});
        assert!(
            decode(&publish.to_string(), 100).command.is_ok(),
            "bounded by the ingress"
        );
        let ping = json!({"type": "ping", "pad": "x".repeat(80)}).to_string();
        assert!(
            decode(&ping, ping.len()).command.is_ok(),
            "at the limit is fine"
        );
    }

    #[test]
    fn published_events_stay_the_text_sent() {
        let text = r#"{"type": "publish_batch", "request_id": 1, "events": [ {"type": "a"}, 5 ]}"#;
        let d = decode(text, LIMIT);
        let Ok(Command::PublishBatch { events }) = d.command else {
            panic!("not a batch: {:?}", d.command)
        };
        let texts: Vec<&str> = events.iter().map(|e| e.get()).collect();
        assert_eq!(texts, [r#"{"type": "a"}"#, "5"]);
        assert_eq!(d.request_id, Some(json!(1)));
        // A request id of `null` is no request id.
        let d = decode(
            r#"{"type": "publish", "request_id": null, "event": {}}"#,
            LIMIT,
        );
        assert!(matches!(d.command, Ok(Command::Publish { .. })));
        assert_eq!(d.request_id, None);
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "",
            "null",
            "\"x\"",
            "{\"type\": null}",
            "{\"action\": {}}",
            &"[".repeat(10_000),
        ] {
            let _ = decode(text, LIMIT);
        }
    }
}
