//! The todoki dialect (`GET /ws/event-bus`, seed 001): a subscription made by the
//! connect query, `subscribed` / `event` / `replay_complete` / `error` frames and a
//! JSON `ping` heartbeat.
//!
//! Owns: the query's translation into a native subscription object ([`connect`]),
//! todoki's frames, and the little it remembers for them (the kinds and cursor asked
//! for, the events replayed so far). Must not: route, filter or authenticate.
//!
//! An event frame carries todoki's `Event` fields twice: at the top level, where
//! todoki's own server puts them and its `useEventStream` hook reads them, and under
//! `event`, the object of its `Event` interface.

use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::{json, Value};

use super::{to_text, Inbound};
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::event::Payload;
use crate::protocol::{Event, Reply};

/// What a todoki session remembers for its frames.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Todoki {
    /// The `kinds` asked for, as sent; `None` for every kind.
    kinds: Option<Vec<String>>,
    /// The `cursor` asked for (0: none).
    cursor: u64,
    /// Events replayed since the last `replay_complete`.
    replayed: u64,
}

/// The connect query (`kinds`, `cursor`, `agent_id`, `task_id`), translated: the
/// session's state and its native subscription object. Kinds are todoki patterns,
/// where a trailing `*` matches the rest of the kind (`task.*` is `task.>`); without
/// kinds every event is sent. A `cursor` above 0 replays the stored events after it.
pub fn connect(
    kinds: Option<&str>,
    cursor: Option<&str>,
    agent_id: Option<&str>,
    task_id: Option<&str>,
) -> Result<(Todoki, Value), ProtocolError> {
    let cursor = match cursor.map(str::trim).filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => c.parse::<u64>().map_err(|_| {
            ProtocolError::new(
                ErrorCode::InvalidRequest,
                format!("`cursor` must be a non-negative integer, got `{c}`"),
            )
        })?,
    };
    let kinds: Option<Vec<String>> = kinds
        .map(|k| {
            k.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|k| !k.is_empty());
    let patterns: Vec<String> = match &kinds {
        Some(kinds) => kinds.iter().map(|k| pattern(k)).collect(),
        None => vec![">".to_owned()],
    };
    let mut spec = json!({"type": "pattern", "patterns": patterns});
    if cursor > 0 {
        spec["from_cursor"] = cursor.into();
    }
    let id = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(|s| vec![s.to_owned()]);
    let (agents, tasks) = (id(agent_id), id(task_id));
    if agents.is_some() || tasks.is_some() {
        spec["filter"] = json!({
            "agent_ids": agents.unwrap_or_default(),
            "task_ids": tasks.unwrap_or_default(),
        });
    }
    let state = Todoki {
        kinds,
        cursor,
        replayed: 0,
    };
    Ok((state, spec))
}

/// A todoki kind pattern as a native topic pattern: `*` alone, or as the last
/// segment, matches the rest of the kind. Anything else is passed on as written, and
/// the native pattern parser judges it.
fn pattern(kind: &str) -> String {
    if kind == "*" {
        ">".to_owned()
    } else if let Some(prefix) = kind.strip_suffix(".*") {
        format!("{prefix}.>")
    } else {
        kind.to_owned()
    }
}

/// A client frame: todoki clients answer the heartbeat (`pong`) and may `ping`.
pub fn decode(text: &str) -> Result<Inbound, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    match value.get("type").and_then(Value::as_str) {
        Some("ping") => Ok(Inbound::Ping),
        Some("pong") => Ok(Inbound::Ignore),
        Some(other) => Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            format!("unknown message `{other}`: this endpoint takes `ping` and `pong`; subscribe with the connect query"),
        )),
        None => Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            "a message needs a `type` (`ping` or `pong`)",
        )),
    }
}

/// The `ping` heartbeat.
pub fn heartbeat() -> String {
    r#"{"type":"ping"}"#.to_owned()
}

/// The fields of todoki's `Event` interface.
#[derive(Serialize)]
struct Fields<'a> {
    cursor: u64,
    kind: &'a str,
    time: String,
    agent_id: &'a str,
    session_id: Option<&'a str>,
    task_id: Option<&'a str>,
    data: &'a Payload,
}

impl Todoki {
    /// `{"type":"event", <fields>, "event": {<fields>}}`: `kind` is the topic, `time`
    /// the timestamp, `data` the payload, `session_id` the event's
    /// `metadata.session_id`; an event without an agent has `agent_id` `""` (todoki's
    /// `agent_id` is a string).
    pub fn event(&mut self, event: &Event, replayed: bool) -> String {
        if replayed {
            self.replayed += 1;
        }
        let fields = to_text(&Fields {
            cursor: event.cursor,
            kind: &event.topic,
            time: event.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true),
            agent_id: event.agent_id.as_deref().unwrap_or_default(),
            session_id: event.metadata.get("session_id").and_then(Value::as_str),
            task_id: event.task_id.as_deref(),
            data: &event.payload,
        });
        // `fields` is a JSON object: its members, then itself again under `event`.
        let members = fields
            .strip_prefix('{')
            .and_then(|f| f.strip_suffix('}'))
            .unwrap_or_default();
        let mut frame = String::with_capacity(2 * fields.len() + 32);
        frame.push_str(r#"{"type":"event","#);
        frame.push_str(members);
        frame.push_str(r#","event":"#);
        frame.push_str(&fields);
        frame.push('}');
        frame
    }

    /// todoki's frame for a native reply: `subscribed` (with the kinds and cursor
    /// asked for), `replay_complete` (with the last cursor and how many events were
    /// replayed), `pong`, and `error` for errors, a `dropped` notice and a gap.
    pub fn reply(&mut self, reply: &Reply) -> Option<String> {
        let frame = match reply {
            Reply::Subscribed { .. } => json!({
                "type": "subscribed",
                "kinds": self.kinds,
                "cursor": self.cursor,
            }),
            Reply::ReplayComplete { last_cursor, .. } => {
                let count = std::mem::take(&mut self.replayed);
                json!({"type": "replay_complete", "cursor": last_cursor, "count": count})
            }
            Reply::Pong { .. } => json!({"type": "pong"}),
            Reply::Error { code, message, .. } => {
                json!({"type": "error", "code": code, "message": message})
            }
            Reply::Dropped { count, reason, .. } => json!({
                "type": "error",
                "code": reason,
                "message": format!("{count} events were dropped: this connection reads too slowly; reconnect with `cursor` to catch up"),
            }),
            Reply::Gap {
                from_cursor,
                to_cursor,
                reason,
                ..
            } => json!({
                "type": "error",
                "code": "gap",
                "message": format!("events {from_cursor} to {to_cursor} are gone ({reason})"),
            }),
            Reply::Published { .. } | Reply::PublishedBatch { .. } | Reply::Unsubscribed { .. } => {
                return None
            }
        };
        Some(frame.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        kinds: Option<&str>,
        cursor: Option<&str>,
        agent: Option<&str>,
        task: Option<&str>,
    ) -> Value {
        connect(kinds, cursor, agent, task).unwrap().1
    }

    #[test]
    fn connect_query_table() {
        let table = [
            (
                (Some("task.*,agent.*"), None, None, None),
                json!({"type": "pattern", "patterns": ["task.>", "agent.>"]}),
            ),
            (
                (None, None, None, None),
                json!({"type": "pattern", "patterns": [">"]}),
            ),
            (
                (Some(" , "), Some("0"), None, None),
                json!({"type": "pattern", "patterns": [">"]}),
            ),
            (
                (Some("*,task.created"), Some("42"), Some("a1"), None),
                json!({"type": "pattern", "patterns": [">", "task.created"], "from_cursor": 42,
                       "filter": {"agent_ids": ["a1"], "task_ids": []}}),
            ),
            (
                (Some("task.*"), None, Some(""), Some("t1")),
                json!({"type": "pattern", "patterns": ["task.>"],
                       "filter": {"agent_ids": [], "task_ids": ["t1"]}}),
            ),
        ];
        for ((kinds, cursor, agent, task), want) in table {
            assert_eq!(
                spec(kinds, cursor, agent, task),
                want,
                "{kinds:?} {cursor:?}"
            );
        }
        for bad in ["-1", "abc", "1.5"] {
            let err = connect(None, Some(bad), None, None).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{bad}");
        }
    }

    #[test]
    fn client_frames() {
        assert_eq!(decode(r#"{"type":"ping"}"#), Ok(Inbound::Ping));
        assert_eq!(decode(r#"{"type":"pong"}"#), Ok(Inbound::Ignore));
        let table = [
            ("nope", ErrorCode::InvalidJson),
            ("{}", ErrorCode::UnknownCommand),
            (r#"{"type":"subscribe"}"#, ErrorCode::UnknownCommand),
            (r#"{"type":7}"#, ErrorCode::UnknownCommand),
        ];
        for (text, code) in table {
            assert_eq!(decode(text).unwrap_err().code, code, "{text}");
        }
    }

    #[test]
    fn event_frame_maps_every_field_twice() {
        let mut e = Event::from_json(
            json!({"topic": "task.created", "agent_id": "a1", "task_id": "t1",
                   "payload": {"n": 1}, "metadata": {"session_id": "s9"},
                   "timestamp": "2026-01-02T03:04:05Z"}),
            "p",
        )
        .unwrap();
        e.cursor = 7;
        let mut t = Todoki::default();
        let frame: Value = serde_json::from_str(&t.event(&e, true)).unwrap();
        let fields = json!({"cursor": 7, "kind": "task.created", "time": "2026-01-02T03:04:05.000000Z",
                            "agent_id": "a1", "session_id": "s9", "task_id": "t1", "data": {"n": 1}});
        let mut want = fields.clone();
        want["type"] = "event".into();
        want["event"] = fields;
        assert_eq!(frame, want);

        let bare = Event::from_json(json!({"topic": "x.y", "payload": [1]}), "p").unwrap();
        let frame: Value = serde_json::from_str(&t.event(&bare, false)).unwrap();
        assert_eq!(frame["event"]["agent_id"], "");
        assert_eq!(frame["session_id"], Value::Null);
        assert_eq!(frame["task_id"], Value::Null);
        assert_eq!(frame["data"], json!([1]));
        assert_eq!(t.replayed, 1, "only replayed events are counted");
    }

    #[test]
    fn replies_table() {
        let (mut t, _) = connect(Some("task.*"), Some("5"), None, None).unwrap();
        t.replayed = 3;
        let table = [
            (
                Reply::Subscribed {
                    subscription_id: "s".into(),
                    request_id: None,
                },
                Some(json!({"type": "subscribed", "kinds": ["task.*"], "cursor": 5})),
            ),
            (
                Reply::ReplayComplete {
                    subscription_id: "s".into(),
                    last_cursor: 9,
                },
                Some(json!({"type": "replay_complete", "cursor": 9, "count": 3})),
            ),
            (
                Reply::Pong {
                    server_time: "t".into(),
                    request_id: None,
                },
                Some(json!({"type": "pong"})),
            ),
            (
                Reply::Error {
                    code: "invalid_json",
                    message: "m".into(),
                    request_id: None,
                },
                Some(json!({"type": "error", "code": "invalid_json", "message": "m"})),
            ),
            (
                Reply::Unsubscribed {
                    subscription_id: "s".into(),
                    request_id: None,
                },
                None,
            ),
        ];
        for (reply, want) in table {
            let got = t
                .reply(&reply)
                .map(|s| serde_json::from_str::<Value>(&s).unwrap());
            assert_eq!(got, want, "{reply:?}");
        }
        let dropped = t
            .reply(&Reply::Dropped {
                subscription_id: "s".into(),
                count: 4,
                reason: "slow_consumer",
            })
            .unwrap();
        let v: Value = serde_json::from_str(&dropped).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("slow_consumer"))
        );
        let fresh = Todoki::default()
            .reply(&Reply::Subscribed {
                subscription_id: "s".into(),
                request_id: None,
            })
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&fresh).unwrap(),
            json!({"type": "subscribed", "kinds": null, "cursor": 0})
        );
    }
}
