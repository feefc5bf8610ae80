//! Subscription specs (docs/protocol.md sections 3.3 and 4.1): parsing, validation and
//! the compiled [`Matcher`] the router tests events against.
//!
//! Owns: what a subscription *selects*. Must not: hold delivery state (workers do) or
//! know which connection owns it (the session does).

use std::time::Duration;

mod limits;

pub use limits::SubscriptionLimits;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::coalesce::CoalesceSpec;
use super::condition::{Condition, EvalError, MatchInput};
use super::filter::{Filter, FilterSpec};
use super::pattern::Pattern;
use crate::config;
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::{Event, SubscribeRequest};

/// How a subscription with `ack: true` is delivered: redelivery timeout, attempts
/// before a dead letter, and deliveries awaiting an ack at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOptions {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_in_flight: usize,
}

impl Default for AckOptions {
    fn default() -> Self {
        AckOptions {
            timeout: Duration::from_millis(config::DEFAULT_ACK_TIMEOUT_MS),
            max_attempts: config::DEFAULT_MAX_ATTEMPTS,
            max_in_flight: config::DEFAULT_MAX_IN_FLIGHT as usize,
        }
    }
}

/// Longest accepted client-chosen subscription id.
pub const MAX_SUBSCRIPTION_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionKind {
    All,
    Filtered,
    Pattern,
    Conditional,
}

impl SubscriptionKind {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Some(Self::All),
            "filtered" => Some(Self::Filtered),
            "pattern" => Some(Self::Pattern),
            "conditional" => Some(Self::Conditional),
            _ => None,
        }
    }
}

/// The subscription object as a client may send it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    filter: Option<Value>,
    patterns: Option<Vec<String>>,
    pattern: Option<String>,
    condition: Option<String>,
    from_cursor: Option<u64>,
    since: Option<String>,
    ack: Option<bool>,
    ack_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    max_in_flight: Option<u32>,
    durable: Option<String>,
    /// Parsed by [`CoalesceSpec::from_json`], which accepts only an object.
    coalesce: Option<Value>,
}

/// A validated subscription: what it selects, in a form that can be shown back to
/// operators (`/api/subscriptions`) and a compiled matcher.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    /// Client-chosen id, when given.
    pub id: Option<String>,
    pub kind: SubscriptionKind,
    pub patterns: Vec<String>,
    pub filter: Option<FilterSpec>,
    /// The CEL condition as the client wrote it.
    pub condition: Option<String>,
    pub matcher: Matcher,
    /// Stored events to deliver before live ones.
    pub replay: Option<Replay>,
    /// At-least-once settings, for `ack: true` (implied by `durable`).
    pub ack: Option<AckOptions>,
    /// The name a durable subscription's state is kept under (with the principal).
    pub durable: Option<String>,
    /// Deliver only the latest event per key value within each window.
    pub coalesce: Option<CoalesceSpec>,
}

impl SubscriptionSpec {
    /// Live events at or below this cursor are not delivered: the client has seen
    /// them. It matters when the client resumes on a node whose log tail is behind
    /// the node it saw cursor N on: the events up to N reach this node after the
    /// subscription joined, live. A durable subscription resumes from its own state.
    pub fn live_after(&self) -> u64 {
        match (&self.durable, self.replay) {
            (None, Some(Replay::AfterCursor(c))) => c,
            _ => 0,
        }
    }
}

/// Where a replay starts (`from_cursor` or `since`, docs/protocol.md section 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Events with a cursor greater than this; `0` replays everything retained.
    AfterCursor(u64),
    /// Events whose `timestamp` is at or after this time.
    Since(chrono::DateTime<chrono::Utc>),
}

impl Replay {
    /// Does a stored event belong to this replay (cursor range aside)?
    pub fn admits(&self, event: &Event) -> bool {
        match self {
            Replay::AfterCursor(c) => event.cursor > *c,
            Replay::Since(t) => event.timestamp >= *t,
        }
    }

    /// The cursor to start reading after.
    pub fn start_after(&self) -> u64 {
        match self {
            Replay::AfterCursor(c) => *c,
            Replay::Since(_) => 0,
        }
    }
}

/// Compiled selection: every part given must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    filter: Option<Filter>,
    condition: Option<Condition>,
    /// The subscriber's read grant (`None`: unrestricted), checked before anything else.
    grant: Option<Vec<Pattern>>,
}

impl Matcher {
    /// Does `event` match? A condition that fails to evaluate does not match.
    pub fn matches(&self, event: &Event) -> bool {
        self.test(&MatchInput::new(event)) == Ok(true)
    }

    /// May the subscriber read events of `topic` (its read grant covers it)?
    pub fn may_read(&self, topic: &str) -> bool {
        self.grant
            .as_ref()
            .is_none_or(|grant| grant.iter().any(|g| g.matches(topic)))
    }

    /// Tests the cheap parts first (patterns, filter), the condition last, on an input
    /// shared by every subscription an event is tested against. `Err` when the
    /// condition could not be evaluated on this event (it does not match).
    pub fn test(&self, input: &MatchInput<'_>) -> Result<bool, EvalError> {
        let event = input.event;
        if let Some(grant) = &self.grant {
            if !grant.iter().any(|g| g.matches(&event.topic)) {
                return Ok(false);
            }
        }
        if !(self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(&event.topic)))
            || !self.filter.as_ref().is_none_or(|f| f.matches(event))
        {
            return Ok(false);
        }
        match &self.condition {
            Some(c) => c.evaluate(input),
            None => Ok(true),
        }
    }

    /// The literal topic prefixes one of which every matching topic starts with
    /// (`task.*` → `task`), for the subscription index; `None` when any topic may
    /// match. Taken from `patterns` when given, else from the filter's `topics`,
    /// else from the condition (`topic.startsWith("cost.") && ...`).
    pub fn topic_prefixes(&self) -> Option<Vec<Vec<String>>> {
        let patterns = if self.patterns.is_empty() {
            self.filter.as_ref().map(Filter::topics).unwrap_or_default()
        } else {
            self.patterns.as_slice()
        };
        let own = if patterns.is_empty() {
            self.condition.as_ref().and_then(Condition::topic_prefixes)
        } else {
            literal_prefixes(patterns)
        };
        // Failing its own, the grant narrows where the subscription can be reached.
        own.or_else(|| self.grant.as_deref().and_then(literal_prefixes))
    }

    /// Every topic pattern the subscription gives (its `patterns`, else its filter's
    /// `topics`); empty when it names none.
    fn own_patterns(&self) -> &[Pattern] {
        if self.patterns.is_empty() {
            self.filter.as_ref().map(Filter::topics).unwrap_or_default()
        } else {
            &self.patterns
        }
    }
}

/// The literal prefix of each pattern; `None` if one has none (starts with a wildcard).
fn literal_prefixes(patterns: &[Pattern]) -> Option<Vec<Vec<String>>> {
    if patterns.is_empty() {
        return None;
    }
    patterns
        .iter()
        .map(|p| {
            let prefix: Vec<String> = p.literal_prefix().map(str::to_owned).collect();
            (!prefix.is_empty()).then_some(prefix)
        })
        .collect()
}

impl SubscriptionSpec {
    /// Live events go out as soon as they are routed: no ack window, no coalescing
    /// window and no replay to wait for (durable subscriptions replay on resume). Only
    /// such deliveries say how busy the server is (overload control).
    pub fn delivers_at_once(&self) -> bool {
        self.ack.is_none()
            && self.coalesce.is_none()
            && self.replay.is_none()
            && self.durable.is_none()
    }

    /// Narrows the subscription to what `grant` (a read grant) allows: it then never
    /// matches, replays or evaluates a condition on an event outside the grant. A
    /// subscription whose own topic patterns all lie outside the grant (`agent.>`
    /// with a `task.>` grant) could never receive anything: `forbidden`.
    pub fn restrict_to(&mut self, principal: &str, grant: &[Pattern]) -> Result<(), ProtocolError> {
        let own = self.matcher.own_patterns();
        let reachable = !grant.is_empty()
            && (own.is_empty() || own.iter().any(|p| grant.iter().any(|g| g.intersects(p))));
        if !reachable {
            let granted: Vec<&str> = grant.iter().map(Pattern::as_str).collect();
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "`{principal}` may only subscribe to {}; this subscription lies outside it",
                    if granted.is_empty() {
                        "no topic".to_owned()
                    } else {
                        format!("[{}]", granted.join(", "))
                    }
                ),
            ));
        }
        self.matcher.grant = Some(grant.to_vec());
        Ok(())
    }
}

fn invalid(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidSubscription, msg)
}

impl SubscriptionSpec {
    /// Parses the `subscription` object of a `subscribe` command.
    ///
    /// When `type` is absent it is inferred: `condition` → conditional, `patterns` →
    /// pattern, `filter` → filtered, otherwise all.
    pub fn from_json(value: Value) -> Result<SubscriptionSpec, ProtocolError> {
        if !value.is_object() {
            return Err(invalid("`subscription` must be a JSON object"));
        }
        let raw: RawSubscription = serde_path_to_error::deserialize(value)
            .map_err(|e| invalid(format!("field `{}`: {}", e.path(), e.inner())))?;

        if let Some(id) = &raw.id {
            if id.is_empty() || id.len() > MAX_SUBSCRIPTION_ID_LEN {
                return Err(invalid(format!(
                    "`id` must be 1 to {MAX_SUBSCRIPTION_ID_LEN} bytes long"
                )));
            }
        }
        let mut patterns = raw.patterns.unwrap_or_default();
        if let Some(p) = raw.pattern {
            patterns.push(p);
        }
        let kind = match &raw.kind {
            Some(k) => SubscriptionKind::parse(k).ok_or_else(|| {
                invalid(format!(
                    "unknown subscription type `{k}`, expected all, filtered, pattern or conditional"
                ))
            })?,
            None if raw.condition.is_some() => SubscriptionKind::Conditional,
            None if !patterns.is_empty() => SubscriptionKind::Pattern,
            None if raw.filter.is_some() => SubscriptionKind::Filtered,
            None => SubscriptionKind::All,
        };
        match kind {
            SubscriptionKind::Filtered if raw.filter.as_ref().is_none_or(Value::is_null) => {
                return Err(invalid("a `filtered` subscription requires `filter`"))
            }
            SubscriptionKind::Pattern if patterns.is_empty() => {
                return Err(invalid("a `pattern` subscription requires `patterns`"))
            }
            SubscriptionKind::Conditional if raw.condition.is_none() => {
                return Err(invalid("a `conditional` subscription requires `condition`"))
            }
            _ => {}
        }
        let condition = raw
            .condition
            .as_deref()
            .map(Condition::compile)
            .transpose()?;
        let replay = match (raw.from_cursor, raw.since) {
            (Some(_), Some(_)) => return Err(invalid("give `from_cursor` or `since`, not both")),
            (Some(c), None) => Some(Replay::AfterCursor(c)),
            (None, Some(t)) => Some(Replay::Since(
                chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| invalid(format!("`since` must be an RFC 3339 time: {e}")))?
                    .with_timezone(&chrono::Utc),
            )),
            (None, None) => None,
        };
        if let Some(name) = &raw.durable {
            if name.is_empty() || name.len() > MAX_SUBSCRIPTION_ID_LEN {
                return Err(invalid(format!(
                    "`durable` must be 1 to {MAX_SUBSCRIPTION_ID_LEN} bytes long"
                )));
            }
            if raw.ack == Some(false) {
                return Err(invalid(
                    "a `durable` subscription is acknowledged: drop `ack: false`",
                ));
            }
            if matches!(replay, Some(Replay::Since(_))) {
                return Err(invalid(
                    "a `durable` subscription starts at a cursor: use `from_cursor`, not `since`",
                ));
            }
        }
        let ack = if raw.ack == Some(true) || raw.durable.is_some() {
            let defaults = AckOptions::default();
            let positive = |name: &str, v: Option<u64>, default: u64| match v {
                Some(0) => Err(invalid(format!("`{name}` must be greater than 0"))),
                Some(v) => Ok(v),
                None => Ok(default),
            };
            let timeout = positive(
                "ack_timeout_ms",
                raw.ack_timeout_ms,
                defaults.timeout.as_millis() as u64,
            )?;
            let attempts = positive(
                "max_attempts",
                raw.max_attempts.map(u64::from),
                defaults.max_attempts.into(),
            )?;
            let in_flight = positive(
                "max_in_flight",
                raw.max_in_flight.map(u64::from),
                defaults.max_in_flight as u64,
            )?;
            Some(AckOptions {
                timeout: Duration::from_millis(timeout),
                max_attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                max_in_flight: usize::try_from(in_flight).unwrap_or(usize::MAX),
            })
        } else if raw.ack_timeout_ms.is_some()
            || raw.max_attempts.is_some()
            || raw.max_in_flight.is_some()
        {
            return Err(invalid(
                "`ack_timeout_ms`, `max_attempts` and `max_in_flight` need `ack: true`",
            ));
        } else {
            None
        };
        let coalesce = match raw.coalesce {
            None | Some(Value::Null) => None,
            Some(v) => Some(CoalesceSpec::from_json(v)?),
        };

        let compiled_patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let (filter_spec, filter) = match raw.filter {
            Some(Value::Null) | None => (None, None),
            Some(v) => {
                let (spec, filter) = Filter::from_json(v)?;
                (Some(spec), Some(filter))
            }
        };
        Ok(SubscriptionSpec {
            id: raw.id,
            kind,
            patterns,
            filter: filter_spec,
            condition: raw.condition,
            matcher: Matcher {
                patterns: compiled_patterns,
                filter,
                condition,
                grant: None,
            },
            replay,
            ack,
            durable: raw.durable,
            coalesce,
        })
    }

    /// Compiles a subscription as a client's `subscribe` command wrote it.
    pub fn from_request(request: SubscribeRequest) -> Result<SubscriptionSpec, ProtocolError> {
        match request {
            SubscribeRequest::Spec(value) => Self::from_json(value),
            SubscribeRequest::Topics {
                topics,
                agent_id,
                task_id,
            } => Self::from_topics(topics, agent_id, task_id, None),
        }
    }

    /// A pattern subscription on `topics`, optionally narrowed by agent and task ids:
    /// what the connect-time query (`?topics=…&agent_id=…`) and the `{"action":
    /// "subscribe", "topics": [...]}` alias create.
    pub fn from_topics(
        topics: Vec<String>,
        agent_id: Option<String>,
        task_id: Option<String>,
        from_cursor: Option<u64>,
    ) -> Result<SubscriptionSpec, ProtocolError> {
        let mut value = serde_json::json!({ "type": "pattern", "patterns": topics });
        if let Some(c) = from_cursor {
            value["from_cursor"] = c.into();
        }
        if agent_id.is_some() || task_id.is_some() {
            let filter = FilterSpec {
                agent_ids: agent_id.into_iter().collect(),
                task_ids: task_id.into_iter().collect(),
                ..FilterSpec::default()
            };
            value["filter"] = serde_json::to_value(filter).unwrap_or(Value::Null);
        }
        Self::from_json(value)
    }
}

#[cfg(test)]
mod tests;
