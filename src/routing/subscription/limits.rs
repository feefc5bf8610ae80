//! What one subscription may ask for (`[limits]`, docs/limits.md): how many topic
//! patterns and filter values it tests each event against, and the range of its
//! acknowledgement options.
//!
//! Owns: the pure check of a compiled [`SubscriptionSpec`] against those bounds, and of
//! a `nack`'s delay. Must not: know where the bounds come from beyond the config type.
//! Values over a bound are refused, never clamped: a client that asked for a week-long
//! ack timeout should learn it did not get one.

use std::time::Duration;

use super::{invalid, SubscriptionSpec};
use crate::config::LimitsConfig;
use crate::error::ProtocolError;

/// The bounds a subscription is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Topic patterns: `patterns` and the filter's `topics` together.
    pub max_patterns: usize,
    /// Values in any one list of the filter.
    pub max_filter_values: usize,
    pub max_in_flight: usize,
    pub max_ack_timeout: Duration,
    pub max_attempts: u32,
    pub max_nack_delay: Duration,
}

impl From<&LimitsConfig> for SubscriptionLimits {
    fn from(l: &LimitsConfig) -> Self {
        SubscriptionLimits {
            max_patterns: l.max_patterns_per_subscription,
            max_filter_values: l.max_filter_values,
            max_in_flight: usize::try_from(l.max_in_flight).unwrap_or(usize::MAX),
            max_ack_timeout: Duration::from_millis(l.max_ack_timeout_ms),
            max_attempts: l.max_attempts,
            max_nack_delay: Duration::from_millis(l.max_nack_delay_ms),
        }
    }
}

impl SubscriptionLimits {
    /// `invalid_subscription`, naming the option and its limit, when `spec` asks for
    /// more than these bounds allow.
    pub fn check(&self, spec: &SubscriptionSpec) -> Result<(), ProtocolError> {
        let filter = spec.filter.as_ref();
        let patterns = spec.patterns.len() + filter.map_or(0, |f| f.topics.len());
        if patterns > self.max_patterns {
            return Err(invalid(format!(
                "{patterns} topic patterns, over the limit of {} per subscription \
                 (limits.max_patterns_per_subscription)",
                self.max_patterns
            )));
        }
        if let Some(f) = filter {
            let lists = [
                ("event_types", f.event_types.len()),
                ("sources", f.sources.len()),
                ("targets", f.targets.len()),
                ("priorities", f.priorities.len()),
                ("agent_ids", f.agent_ids.len()),
                ("task_ids", f.task_ids.len()),
            ];
            if let Some((name, n)) = lists.iter().find(|(_, n)| *n > self.max_filter_values) {
                return Err(invalid(format!(
                    "`filter.{name}` has {n} values, over the limit of {} \
                     (limits.max_filter_values)",
                    self.max_filter_values
                )));
            }
        }
        let Some(ack) = spec.ack else { return Ok(()) };
        let over = |name: &str, key: &str, max: String| {
            Err(invalid(format!(
                "`{name}` must be at most {max} (limits.{key})"
            )))
        };
        if ack.max_in_flight > self.max_in_flight {
            return over(
                "max_in_flight",
                "max_in_flight",
                self.max_in_flight.to_string(),
            );
        }
        if ack.timeout > self.max_ack_timeout {
            return over(
                "ack_timeout_ms",
                "max_ack_timeout_ms",
                self.max_ack_timeout.as_millis().to_string(),
            );
        }
        if ack.max_attempts > self.max_attempts {
            return over(
                "max_attempts",
                "max_attempts",
                self.max_attempts.to_string(),
            );
        }
        Ok(())
    }

    /// The delay of a `nack`, refused (`invalid_subscription`) over the bound.
    pub fn nack_delay(&self, delay_ms: u64) -> Result<Duration, ProtocolError> {
        let delay = Duration::from_millis(delay_ms);
        if delay > self.max_nack_delay {
            return Err(invalid(format!(
                "`delay_ms` must be at most {} (limits.max_nack_delay_ms)",
                self.max_nack_delay.as_millis()
            )));
        }
        Ok(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::{json, Value};

    const LIMITS: SubscriptionLimits = SubscriptionLimits {
        max_patterns: 2,
        max_filter_values: 3,
        max_in_flight: 200,
        max_ack_timeout: Duration::from_secs(60),
        max_attempts: 8,
        max_nack_delay: Duration::from_secs(5),
    };

    fn check(spec: Value) -> Result<(), String> {
        let spec = SubscriptionSpec::from_json(spec).expect("a valid subscription");
        LIMITS.check(&spec).map_err(|e| {
            assert_eq!(e.code, ErrorCode::InvalidSubscription);
            e.message
        })
    }

    #[test]
    fn each_bound_refuses_one_step_over_it() {
        let ack = |key: &str, v: u64| json!({"type": "all", "ack": true, key: v});
        let table = [
            (json!({"patterns": ["a", "b"]}), None),
            (json!({"patterns": ["a", "b", "c"]}), Some("max_patterns")),
            (
                json!({"patterns": ["a"], "filter": {"topics": ["b", "c"]}}),
                Some("max_patterns"),
            ),
            (json!({"filter": {"event_types": ["a", "b", "c"]}}), None),
            (
                json!({"filter": {"agent_ids": ["a", "b", "c", "d"]}}),
                Some("filter.agent_ids"),
            ),
            (ack("max_in_flight", 200), None),
            (ack("max_in_flight", 201), Some("limits.max_in_flight")),
            (ack("ack_timeout_ms", 60_000), None),
            (ack("ack_timeout_ms", 60_001), Some("max_ack_timeout_ms")),
            (ack("ack_timeout_ms", u64::MAX), Some("max_ack_timeout_ms")),
            (ack("max_attempts", 8), None),
            (ack("max_attempts", 9), Some("limits.max_attempts")),
        ];
        for (spec, refused) in table {
            match (check(spec.clone()), refused) {
                (Ok(()), None) => {}
                (Err(message), Some(names)) => assert!(message.contains(names), "{message}"),
                (got, want) => panic!("{spec}: got {got:?}, expected a refusal naming {want:?}"),
            }
        }
    }

    #[test]
    fn nack_delay_is_bounded() {
        assert_eq!(LIMITS.nack_delay(5000).ok(), Some(Duration::from_secs(5)));
        assert!(LIMITS.nack_delay(5001).is_err());
        assert!(LIMITS.nack_delay(u64::MAX).is_err());
    }
}
