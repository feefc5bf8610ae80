//! The Descartes dialect (`ws://host/events`, seed 000): `Subscribe` / `Unsubscribe`
//! / `Ping` client frames, and `Event` / `Subscribed` / `Error` / `Pong` server frames,
//! each `{"type": <name>, "payload": ...}`.
//!
//! Owns: the `Subscribe` filter's translation into a native subscription object, and
//! the mapping of a native event onto Descartes's `DescartesEvent`. Must not: route,
//! filter or authenticate.
//!
//! An event's category is its topic's first segment (`agent.spawned` is an Agent
//! event, `AgentEvent`), and its `event_type` the rest (`spawned`). A connection has
//! at most one subscription: a new `Subscribe` replaces it.

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{to_text, Inbound};
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::event::Payload;
use crate::protocol::{Event, Reply};

/// Descartes's event categories: (the name in a filter, the topic's first segment,
/// the event's `type`).
const CATEGORIES: [(&str, &str, &str); 5] = [
    ("Agent", "agent", "AgentEvent"),
    ("Task", "task", "TaskEvent"),
    ("Workflow", "workflow", "WorkflowEvent"),
    ("System", "system", "SystemEvent"),
    ("State", "state", "StateEvent"),
];

/// `EventFilter` as a Descartes client sends it. A missing, `null` or empty list
/// places no constraint; unknown fields are ignored, as Descartes's server did.
#[derive(Debug, Default, Deserialize)]
struct Filter {
    agent_ids: Option<Vec<String>>,
    task_ids: Option<Vec<String>>,
    workflow_ids: Option<Vec<String>>,
    event_categories: Option<Vec<String>>,
}

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidSubscription, message)
}

/// A client frame. `UpdateFilter` is `Subscribe` again; `Pong` answers the heartbeat.
pub fn decode(text: &str) -> Result<Inbound, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    let name = value.get("type").and_then(Value::as_str).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::UnknownCommand,
            "a message needs a `type`: Subscribe, Unsubscribe or Ping",
        )
    })?;
    match name {
        "Subscribe" | "UpdateFilter" => {
            let filter = match value.get("payload").and_then(|p| p.get("filter")) {
                None | Some(Value::Null) => Filter::default(),
                Some(f) => serde_json::from_value(f.clone())
                    .map_err(|e| invalid(format!("`filter`: {e}")))?,
            };
            subscription(&filter).map(Inbound::Subscribe)
        }
        "Unsubscribe" => Ok(Inbound::Unsubscribe),
        "Ping" => Ok(Inbound::Ping),
        "Pong" => Ok(Inbound::Ignore),
        other => Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            format!("unknown message `{other}`: expected Subscribe, Unsubscribe or Ping"),
        )),
    }
}

/// The native subscription object of a filter: its categories as topic patterns
/// (all five when none is given), agent and task ids as a filter, workflow ids as a
/// condition on the payload's `workflow_id`. Every given list must match.
fn subscription(filter: &Filter) -> Result<Value, ProtocolError> {
    let mut patterns = Vec::new();
    for name in filter.event_categories.iter().flatten() {
        let Some((_, segment, _)) = CATEGORIES
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        else {
            return Err(invalid(format!(
                "unknown event category `{name}`: expected Agent, Task, Workflow, System or State"
            )));
        };
        let pattern = format!("{segment}.>");
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    if patterns.is_empty() {
        patterns = CATEGORIES
            .iter()
            .map(|(_, s, _)| format!("{s}.>"))
            .collect();
    }
    let mut spec = json!({ "patterns": patterns });
    let agents = filter.agent_ids.clone().unwrap_or_default();
    let tasks = filter.task_ids.clone().unwrap_or_default();
    if !agents.is_empty() || !tasks.is_empty() {
        spec["filter"] = json!({"agent_ids": agents, "task_ids": tasks});
    }
    let workflows = filter.workflow_ids.as_deref().unwrap_or_default();
    if !workflows.is_empty() {
        // JSON string literals are CEL string literals; the native condition limits
        // bound how long this may grow.
        let list: Vec<String> = workflows
            .iter()
            .map(|w| Value::from(w.as_str()).to_string())
            .collect();
        spec["condition"] = format!(
            "has(payload.workflow_id) && payload.workflow_id in [{}]",
            list.join(", ")
        )
        .into();
    }
    Ok(spec)
}

/// The `Ping` heartbeat Descartes's server sends, at `now`.
pub fn heartbeat(now: &str) -> String {
    to_text(&json!({"type": "Ping", "payload": {"timestamp": now}}))
}

/// The `data` of a `DescartesEvent`.
#[derive(Serialize)]
struct Data<'a> {
    id: &'a str,
    agent_id: Option<&'a str>,
    task_id: Option<&'a str>,
    workflow_id: Option<&'a str>,
    event_type: &'a str,
    timestamp: String,
    data: &'a Payload,
}

#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    payload: Tagged<'a>,
}

/// `{"type":"Event","payload":{"type":"AgentEvent","data":{...}}}`. `agent_id`,
/// `task_id` and `workflow_id` come from the envelope, else from the payload (`null`
/// when neither has one).
pub fn event(event: &Event) -> String {
    let (first, rest) = event.topic.split_once('.').unwrap_or((&event.topic, ""));
    let capitalised;
    let kind = match CATEGORIES.iter().find(|(_, s, _)| *s == first) {
        Some((_, _, kind)) => *kind,
        None => {
            // Not reached through a Descartes subscription (it names the five
            // categories only); named after the segment all the same.
            let mut chars = first.chars();
            capitalised = chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>() + "Event")
                .unwrap_or_else(|| "Event".to_owned());
            &capitalised
        }
    };
    let from_payload = |key: &str| event.payload.value().get(key).and_then(Value::as_str);
    to_text(&Frame {
        kind: "Event",
        payload: Tagged {
            kind,
            data: Data {
                id: &event.id,
                agent_id: event
                    .agent_id
                    .as_deref()
                    .or_else(|| from_payload("agent_id")),
                task_id: event.task_id.as_deref().or_else(|| from_payload("task_id")),
                workflow_id: from_payload("workflow_id"),
                event_type: rest,
                timestamp: event.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true),
                data: &event.payload,
            },
        },
    })
}

/// Descartes's frame for a native reply: `Subscribed`, `Pong`, and `Error` for errors
/// and a `dropped` notice. Nothing for the rest (Descartes's server confirmed no
/// `Unsubscribe`).
pub fn reply(reply: &Reply) -> Option<String> {
    let frame = match reply {
        Reply::Subscribed {
            subscription_id, ..
        } => json!({"type": "Subscribed", "payload": {"subscription_id": subscription_id}}),
        Reply::Pong { server_time, .. } => {
            json!({"type": "Pong", "payload": {"timestamp": server_time}})
        }
        Reply::Error { code, message, .. } => {
            json!({"type": "Error", "payload": {"code": code, "message": message}})
        }
        Reply::Dropped { count, reason, .. } => json!({"type": "Error", "payload": {
            "code": reason,
            "message": format!("{count} events were dropped: this connection reads too slowly"),
        }}),
        Reply::Published { .. }
        | Reply::PublishedBatch { .. }
        | Reply::Unsubscribed { .. }
        | Reply::ReplayComplete { .. }
        | Reply::Gap { .. } => return None,
    };
    Some(frame.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe(text: &str) -> Value {
        match decode(text) {
            Ok(Inbound::Subscribe(spec)) => spec,
            other => panic!("{text}: {other:?}"),
        }
    }

    const ALL: [&str; 5] = ["agent.>", "task.>", "workflow.>", "system.>", "state.>"];

    #[test]
    fn subscribe_filters_table() {
        let table = [
            // The seed document's literal frame.
            (
                r#"{"type":"Subscribe","payload":{"filter":{"agent_ids":["agent-1"],"event_categories":["Agent","Task"]}}}"#,
                json!({"patterns": ["agent.>", "task.>"], "filter": {"agent_ids": ["agent-1"], "task_ids": []}}),
            ),
            (
                r#"{"type":"Subscribe","payload":{"filter":{"agent_ids":[],"task_ids":[],"workflow_ids":[],"event_categories":[]}}}"#,
                json!({"patterns": ALL}),
            ),
            (
                r#"{"type":"Subscribe","payload":{"filter":null}}"#,
                json!({"patterns": ALL}),
            ),
            (r#"{"type":"Subscribe"}"#, json!({"patterns": ALL})),
            (
                r#"{"type":"UpdateFilter","payload":{"filter":{"task_ids":["t"],"event_categories":["task","Task"],"extra":1}}}"#,
                json!({"patterns": ["task.>"], "filter": {"agent_ids": [], "task_ids": ["t"]}}),
            ),
            (
                r#"{"type":"Subscribe","payload":{"filter":{"workflow_ids":["w1","w\"2"]}}}"#,
                json!({"patterns": ALL,
                       "condition": r#"has(payload.workflow_id) && payload.workflow_id in ["w1", "w\"2"]"#}),
            ),
        ];
        for (text, want) in table {
            assert_eq!(subscribe(text), want, "{text}");
        }
    }

    #[test]
    fn other_client_frames_and_errors() {
        assert_eq!(
            decode(r#"{"type":"Unsubscribe"}"#),
            Ok(Inbound::Unsubscribe)
        );
        assert_eq!(decode(r#"{"type":"Ping"}"#), Ok(Inbound::Ping));
        assert_eq!(
            decode(r#"{"type":"Pong","payload":{"timestamp":"2026-01-01T00:00:00Z"}}"#),
            Ok(Inbound::Ignore)
        );
        let table = [
            ("{", ErrorCode::InvalidJson),
            ("[]", ErrorCode::UnknownCommand),
            (r#"{"type":"Explode"}"#, ErrorCode::UnknownCommand),
            (
                r#"{"type":"Subscribe","payload":{"filter":{"event_categories":["Nope"]}}}"#,
                ErrorCode::InvalidSubscription,
            ),
            (
                r#"{"type":"Subscribe","payload":{"filter":{"agent_ids":"a"}}}"#,
                ErrorCode::InvalidSubscription,
            ),
            (
                r#"{"type":"Subscribe","payload":{"filter":[1]}}"#,
                ErrorCode::InvalidSubscription,
            ),
        ];
        for (text, code) in table {
            assert_eq!(decode(text).unwrap_err().code, code, "{text}");
        }
    }

    #[test]
    fn event_frames_table() {
        let table = [
            (
                json!({"id": "e1", "topic": "agent.spawned", "agent_id": "agent-1", "payload": {"config": "basic"},
                       "timestamp": "2025-11-24T12:00:00Z"}),
                json!({"type": "Event", "payload": {"type": "AgentEvent", "data": {
                    "id": "e1", "agent_id": "agent-1", "task_id": null, "workflow_id": null,
                    "event_type": "spawned", "timestamp": "2025-11-24T12:00:00.000000Z",
                    "data": {"config": "basic"}}}}),
            ),
            (
                json!({"id": "e2", "topic": "workflow.step_completed", "payload": {"workflow_id": "w1", "task_id": "t1"},
                       "timestamp": "2025-11-24T12:00:00Z"}),
                json!({"type": "Event", "payload": {"type": "WorkflowEvent", "data": {
                    "id": "e2", "agent_id": null, "task_id": "t1", "workflow_id": "w1",
                    "event_type": "step_completed", "timestamp": "2025-11-24T12:00:00.000000Z",
                    "data": {"workflow_id": "w1", "task_id": "t1"}}}}),
            ),
            (
                json!({"id": "e3", "topic": "file", "payload": 5, "timestamp": "2025-11-24T12:00:00Z"}),
                json!({"type": "Event", "payload": {"type": "FileEvent", "data": {
                    "id": "e3", "agent_id": null, "task_id": null, "workflow_id": null,
                    "event_type": "", "timestamp": "2025-11-24T12:00:00.000000Z", "data": 5}}}),
            ),
        ];
        for (envelope, want) in table {
            let e = Event::from_json(envelope.clone(), "p").unwrap();
            let got: Value = serde_json::from_str(&event(&e)).unwrap();
            assert_eq!(got, want, "{envelope}");
        }
    }

    #[test]
    fn replies_table() {
        let table = [
            (
                Reply::Subscribed {
                    subscription_id: "s".into(),
                    request_id: None,
                },
                Some(json!({"type": "Subscribed", "payload": {"subscription_id": "s"}})),
            ),
            (
                Reply::Pong {
                    server_time: "t".into(),
                    request_id: None,
                },
                Some(json!({"type": "Pong", "payload": {"timestamp": "t"}})),
            ),
            (
                Reply::Error {
                    code: "invalid_subscription",
                    message: "m".into(),
                    request_id: None,
                },
                Some(
                    json!({"type": "Error", "payload": {"code": "invalid_subscription", "message": "m"}}),
                ),
            ),
            (
                Reply::Unsubscribed {
                    subscription_id: "s".into(),
                    request_id: None,
                },
                None,
            ),
            (
                Reply::ReplayComplete {
                    subscription_id: "s".into(),
                    last_cursor: 1,
                },
                None,
            ),
        ];
        for (r, want) in table {
            let got = reply(&r).map(|s| serde_json::from_str::<Value>(&s).unwrap());
            assert_eq!(got, want, "{r:?}");
        }
        let ping: Value = serde_json::from_str(&heartbeat("now")).unwrap();
        assert_eq!(
            ping,
            json!({"type": "Ping", "payload": {"timestamp": "now"}})
        );
    }
}
