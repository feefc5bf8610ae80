//! One committed row change (an outbox row) and the event it becomes.
//!
//! `task` topic, key `id`: an INSERT is `task.created`, an UPDATE `task.updated`, a
//! DELETE `task.deleted`; the payload holds `task_id` (the key as text), `task` (the
//! row as an object, null on delete) and, with a status column, `previous_status` and
//! `new_status` on updates. The event's id is `<identity>:<outbox row id>`, so the
//! same change published twice (a crash between publish and drain) is a duplicate.

use serde_json::{json, Map, Value};

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    /// As the triggers write it.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }

    /// The last segment of the event's topic.
    pub fn verb(self) -> &'static str {
        match self {
            Op::Insert => "created",
            Op::Update => "updated",
            Op::Delete => "deleted",
        }
    }
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The outbox row's id: increasing, never reused (AUTOINCREMENT).
    pub id: i64,
    pub op: Op,
    /// The key, as text.
    pub key: String,
    /// The row after the change (before it, for a delete), as a JSON object.
    pub row: Map<String, Value>,
    /// The status column's value before an update.
    pub old_status: Value,
    /// When the writer committed it (RFC 3339, from the trigger).
    pub at: String,
}

/// What every event of one source shares.
#[derive(Debug, Clone)]
pub struct Shape<'a> {
    /// The source's stable identity, the prefix of every event id.
    pub identity: &'a str,
    pub topic: &'a str,
    pub status_column: Option<&'a str>,
}

impl Shape<'_> {
    /// The name of the payload's fields: the topic's last segment (`task`).
    fn noun(&self) -> &str {
        self.topic.rsplit('.').next().unwrap_or(self.topic)
    }

    /// The event for `change`; `previous_status` is the status before the first of the
    /// updates merged into it (its own `old_status` when none were).
    pub fn event(&self, change: &Change, previous_status: &Value) -> Value {
        let noun = self.noun();
        let mut payload = Map::new();
        payload.insert(format!("{noun}_id"), Value::String(change.key.clone()));
        let row = match change.op {
            Op::Delete => Value::Null,
            _ => Value::Object(change.row.clone()),
        };
        payload.insert(noun.to_owned(), row);
        payload.insert("change_type".into(), change.op.verb().into());
        if let (Op::Update, Some(column)) = (change.op, self.status_column) {
            payload.insert("previous_status".into(), previous_status.clone());
            let new = change.row.get(column).cloned().unwrap_or(Value::Null);
            payload.insert("new_status".into(), new);
        }
        let mut event = json!({
            "id": format!("{}:{}", self.identity, change.id),
            "topic": format!("{}.{}", self.topic, change.op.verb()),
            "timestamp": change.at,
            "payload": payload,
        });
        for field in ["agent_id", "task_id"] {
            if let Some(id) = change.row.get(field).and_then(id_text) {
                event[field] = Value::String(id);
            }
        }
        event
    }
}

/// A column value usable as an envelope id: text, or a number written as text.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op, row: Value, old_status: Value) -> Change {
        Change {
            id: 42,
            op,
            key: "t1".into(),
            row: row.as_object().cloned().unwrap_or_default(),
            old_status,
            at: "2026-01-02T03:04:05.678Z".into(),
        }
    }

    #[test]
    fn each_change_becomes_its_event() {
        let shape = Shape {
            identity: "abc",
            topic: "task",
            status_column: Some("status"),
        };
        let row = json!({"id": "t1", "status": "running", "agent_id": "a7"});
        let table = [
            (
                change(Op::Insert, row.clone(), Value::Null),
                json!({"task_id": "t1", "task": row, "change_type": "created"}),
                "task.created",
            ),
            (
                change(Op::Update, row.clone(), json!("pending")),
                json!({"task_id": "t1", "task": row, "change_type": "updated",
                       "previous_status": "pending", "new_status": "running"}),
                "task.updated",
            ),
            (
                change(Op::Delete, row.clone(), Value::Null),
                json!({"task_id": "t1", "task": null, "change_type": "deleted"}),
                "task.deleted",
            ),
        ];
        for (c, payload, topic) in table {
            let e = shape.event(&c, &c.old_status);
            assert_eq!(e["payload"], payload, "{topic}");
            assert_eq!(e["topic"], topic);
            assert_eq!(e["id"], "abc:42");
            assert_eq!(e["agent_id"], "a7");
            assert_eq!(e["timestamp"], "2026-01-02T03:04:05.678Z");
        }
    }

    #[test]
    fn the_noun_is_the_last_topic_segment_and_ids_may_be_numbers() {
        let shape = Shape {
            identity: "x",
            topic: "app.job",
            status_column: None,
        };
        let c = change(
            Op::Update,
            json!({"task_id": 9, "agent_id": ""}),
            json!("a"),
        );
        let e = shape.event(&c, &json!("a"));
        assert_eq!(e["payload"]["job_id"], "t1");
        assert!(e["payload"].get("previous_status").is_none());
        assert_eq!(e["task_id"], "9");
        assert!(e.get("agent_id").is_none());
    }
}
