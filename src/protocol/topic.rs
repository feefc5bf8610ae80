//! Topic names: what a published event's topic may be (docs/protocol.md section 2).
//! Patterns that match topics are routing's ([`crate::routing::pattern`]).

use crate::error::{ErrorCode, ProtocolError};

/// Longest accepted topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Checks a concrete topic given on publish: non-empty dot-separated segments, no
/// wildcards, no whitespace. Answers `invalid_event` naming the problem.
pub fn validate_topic(topic: &str) -> Result<(), ProtocolError> {
    let invalid =
        |why: &str| ProtocolError::new(ErrorCode::InvalidEvent, format!("topic `{topic}`: {why}"));
    if topic.is_empty() {
        return Err(invalid("is empty"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(invalid(&format!("is longer than {MAX_TOPIC_LEN} bytes")));
    }
    for part in topic.split('.') {
        if part.is_empty() {
            return Err(invalid("has an empty segment"));
        }
        if part.contains(['*', '>', '#']) {
            return Err(invalid(
                "wildcards are only allowed in subscription patterns",
            ));
        }
        if part.chars().any(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_validation_table() {
        let table = [
            ("task.created", true),
            ("task", true),
            ("cost.budget_warning", true),
            ("", false),
            ("task.", false),
            ("task..x", false),
            ("task.*", false),
            ("task.>", false),
            ("a b", false),
        ];
        for (topic, ok) in table {
            assert_eq!(validate_topic(topic).is_ok(), ok, "topic {topic:?}");
        }
    }
}
