//! Requests awaiting their reply, and what a reply does to one: answer it, or, when the
//! node answered `unavailable` (cluster mode: it cannot reach the shared log, nothing was
//! stored), keep it to send again on the next node.
//!
//! Owns: the rule that an `unavailable` is retried rather than surfaced, and how a
//! resent batch's answers are put together. Must not: touch the socket.

use serde_json::Value;
use tokio::sync::oneshot;

use super::{server_error, ClientError};

/// The protocol's error code for "the shared log is out of reach; retry".
const UNAVAILABLE: &str = "unavailable";

pub(super) struct Pending {
    pub frame: Value,
    /// Sent again after a reconnect, or on the next node after `unavailable`.
    pub retry: bool,
    pub reply: oneshot::Sender<Result<Value, ClientError>>,
    /// A batch resent after some of its events were answered `unavailable`: the answers
    /// so far, so that an event stored the first time keeps that answer
    /// (`duplicate: false`) rather than the resend's `duplicate: true`.
    pub earlier: Option<Vec<Value>>,
}

/// What a reply does to the request it answers.
#[derive(Debug, PartialEq)]
pub(super) enum Judged {
    /// Hand this to the caller.
    Reply(Result<Value, ClientError>),
    /// Keep the request and send it again on the next node; `earlier` as in [`Pending`].
    Retry { earlier: Option<Vec<Value>> },
}

/// Judges `msg`, the reply to a request that may (`retry`) or may not be sent again.
pub(super) fn judge(retry: bool, earlier: Option<&[Value]>, mut msg: Value) -> Judged {
    if msg["type"] == "error" {
        return if retry && is_unavailable(&msg) {
            Judged::Retry {
                earlier: earlier.map(<[Value]>::to_vec),
            }
        } else {
            Judged::Reply(Err(server_error(&msg)))
        };
    }
    if msg["type"] != "published_batch" {
        return Judged::Reply(Ok(msg));
    }
    let Some(results) = msg["results"].as_array() else {
        return Judged::Reply(Ok(msg));
    };
    let merged = merge(earlier, results);
    if retry && merged.iter().any(|r| is_unavailable(&r["error"])) {
        return Judged::Retry {
            earlier: Some(merged),
        };
    }
    msg["results"] = Value::Array(merged);
    Judged::Reply(Ok(msg))
}

/// A batch's answers: the earlier one per event, unless that was `unavailable`.
fn merge(earlier: Option<&[Value]>, now: &[Value]) -> Vec<Value> {
    now.iter()
        .enumerate()
        .map(|(i, answer)| match earlier.and_then(|e| e.get(i)) {
            Some(first) if !is_unavailable(&first["error"]) => first.clone(),
            _ => answer.clone(),
        })
        .collect()
}

/// An `error` frame, or a batch item's `error`, with code `unavailable`.
fn is_unavailable(error: &Value) -> bool {
    error["code"] == UNAVAILABLE
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(cursor: u64, duplicate: bool) -> Value {
        json!({"event_id": format!("e{cursor}"), "cursor": cursor, "duplicate": duplicate})
    }

    fn item_error(code: &str) -> Value {
        json!({"error": {"code": code, "message": "m"}})
    }

    fn batch(results: Vec<Value>) -> Value {
        json!({"type": "published_batch", "results": results, "request_id": 1})
    }

    #[test]
    fn unavailable_is_retried_only_where_allowed() {
        let unavailable =
            json!({"type": "error", "code": "unavailable", "message": "m", "request_id": 1});
        let refused =
            json!({"type": "error", "code": "invalid_event", "message": "m", "request_id": 1});
        let server = |code: &str| ClientError::Server {
            code: code.into(),
            message: "m".into(),
        };
        let table = [
            (true, unavailable.clone(), Judged::Retry { earlier: None }),
            (
                false,
                unavailable,
                Judged::Reply(Err(server("unavailable"))),
            ),
            (true, refused, Judged::Reply(Err(server("invalid_event")))),
            (
                true,
                json!({"type": "pong", "server_time": "t"}),
                Judged::Reply(Ok(json!({"type": "pong", "server_time": "t"}))),
            ),
        ];
        for (retry, msg, want) in table {
            assert_eq!(judge(retry, None, msg.clone()), want, "{retry} {msg}");
        }
    }

    #[test]
    fn a_batch_is_resent_until_no_event_is_unavailable_and_keeps_first_answers() {
        // First answer: event 0 stored, 1 unavailable, 2 refused for itself.
        let first = vec![
            stored(7, false),
            item_error("unavailable"),
            item_error("invalid_event"),
        ];
        let Judged::Retry { earlier } = judge(true, None, batch(first.clone())) else {
            panic!("an unavailable event is retried");
        };
        assert_eq!(earlier.as_deref(), Some(first.as_slice()));
        // The resend: 0 is now a duplicate, 1 stored, 2 refused again.
        let second = vec![
            stored(7, true),
            stored(8, false),
            item_error("invalid_event"),
        ];
        let Judged::Reply(Ok(reply)) = judge(true, earlier.as_deref(), batch(second)) else {
            panic!("answered");
        };
        assert_eq!(
            reply["results"],
            json!([
                stored(7, false),
                stored(8, false),
                item_error("invalid_event")
            ])
        );
        assert_eq!(reply["request_id"], 1);
        // Without retry an unavailable event is the caller's to see.
        let Judged::Reply(Ok(reply)) = judge(false, None, batch(first.clone())) else {
            panic!("answered");
        };
        assert_eq!(reply["results"], json!(first));
    }
}
