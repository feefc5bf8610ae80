//! Subscription filters (docs/protocol.md section 4.3): parsing and matching.
//!
//! A list matches when the event's field is in it; all given lists must match; an empty
//! or missing list places no constraint. `min_priority` keeps events at or above it.

use serde::Deserialize;

use super::pattern::Pattern;
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::Event;
use crate::protocol::Priority;

/// The filter as the client sends it.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priorities: Vec<Priority>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_priority: Option<Priority>,
}

/// A compiled filter, ready to test events against.
#[derive(Debug, Clone)]
pub struct Filter {
    event_types: Vec<String>,
    topics: Vec<Pattern>,
    sources: Vec<String>,
    targets: Vec<String>,
    priorities: Vec<Priority>,
    agent_ids: Vec<String>,
    task_ids: Vec<String>,
    min_priority: Option<Priority>,
}

impl Filter {
    /// Compiles a filter; a bad topic pattern answers `invalid_pattern`.
    pub fn compile(spec: &FilterSpec) -> Result<Filter, ProtocolError> {
        let topics = spec
            .topics
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter {
            event_types: spec.event_types.clone(),
            topics,
            sources: spec.sources.clone(),
            targets: spec.targets.clone(),
            priorities: spec.priorities.clone(),
            agent_ids: spec.agent_ids.clone(),
            task_ids: spec.task_ids.clone(),
            min_priority: spec.min_priority,
        })
    }

    /// Parses and compiles a filter from its JSON form.
    pub fn from_json(value: serde_json::Value) -> Result<(FilterSpec, Filter), ProtocolError> {
        if !value.is_object() {
            return Err(ProtocolError::new(
                ErrorCode::InvalidSubscription,
                "`filter` must be a JSON object",
            ));
        }
        let spec: FilterSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            ProtocolError::new(
                ErrorCode::InvalidSubscription,
                format!("filter field `{}`: {}", e.path(), e.inner()),
            )
        })?;
        let filter = Filter::compile(&spec)?;
        Ok((spec, filter))
    }

    /// The topic patterns of the filter (any one must match).
    pub fn topics(&self) -> &[Pattern] {
        &self.topics
    }

    pub fn matches(&self, event: &Event) -> bool {
        fn list(values: &[String], field: Option<&str>) -> bool {
            values.is_empty() || field.is_some_and(|f| values.iter().any(|v| v == f))
        }
        list(&self.event_types, Some(&event.event_type))
            && (self.topics.is_empty() || self.topics.iter().any(|p| p.matches(&event.topic)))
            && list(&self.sources, Some(&event.source))
            && list(&self.targets, event.target.as_deref())
            && (self.priorities.is_empty() || self.priorities.contains(&event.priority))
            && list(&self.agent_ids, event.agent_id.as_deref())
            && list(&self.task_ids, event.task_id.as_deref())
            && self.min_priority.is_none_or(|min| event.priority >= min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: serde_json::Value) -> Event {
        Event::from_json(v, "svc").unwrap()
    }

    fn filter(v: serde_json::Value) -> Filter {
        Filter::from_json(v).unwrap().1
    }

    #[test]
    fn matching_table() {
        let e = event(json!({
            "type": "task_created", "priority": "high", "source": "planner", "target": "worker-1",
            "agent_id": "a1", "task_id": "t1"
        }));
        let table = [
            (json!({}), true),
            (json!({"event_types": []}), true),
            (json!({"event_types": ["task_created"]}), true),
            (json!({"event_types": ["task_failed"]}), false),
            (json!({"topics": ["task.*"]}), true),
            (json!({"topics": ["agent.>", "task.created"]}), true),
            (json!({"topics": ["agent.>"]}), false),
            (json!({"sources": ["planner"]}), true),
            (json!({"sources": ["other"]}), false),
            (json!({"targets": ["worker-1"]}), true),
            (json!({"targets": ["worker-2"]}), false),
            (json!({"priorities": ["high", "critical"]}), true),
            (json!({"priorities": ["LOW"]}), false),
            (json!({"agent_ids": ["a1"]}), true),
            (json!({"agent_ids": ["a2"]}), false),
            (json!({"task_ids": ["t1"]}), true),
            (json!({"task_ids": ["t2"]}), false),
            (json!({"min_priority": "normal"}), true),
            (json!({"min_priority": "high"}), true),
            (json!({"min_priority": "critical"}), false),
            (
                json!({"event_types": ["task_created"], "sources": ["other"]}),
                false,
            ),
        ];
        for (spec, want) in table {
            assert_eq!(filter(spec.clone()).matches(&e), want, "filter {spec}");
        }
    }

    #[test]
    fn absent_field_fails_a_non_empty_list() {
        let e = event(json!({"type": "task_created"}));
        assert!(!filter(json!({"targets": ["x"]})).matches(&e));
        assert!(!filter(json!({"agent_ids": ["x"]})).matches(&e));
        assert!(filter(json!({"targets": []})).matches(&e));
    }

    #[test]
    fn bad_filters_table() {
        let table = [
            (json!({"topics": ["task..x"]}), ErrorCode::InvalidPattern),
            (
                json!({"priorities": ["urgent"]}),
                ErrorCode::InvalidSubscription,
            ),
            (json!({"min_priority": 3}), ErrorCode::InvalidSubscription),
            (
                json!({"event_types": "task_created"}),
                ErrorCode::InvalidSubscription,
            ),
            (json!({"colour": ["red"]}), ErrorCode::InvalidSubscription),
            (json!([]), ErrorCode::InvalidSubscription),
        ];
        for (spec, code) in table {
            assert_eq!(
                Filter::from_json(spec.clone()).unwrap_err().code,
                code,
                "filter {spec}"
            );
        }
    }
}
