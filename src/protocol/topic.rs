//! Topic names: what a published event's topic may be (docs/protocol.md section 2).
//! Patterns that match topics are routing's ([`crate::routing::pattern`]).

use crate::error::{ErrorCode, ProtocolError};

/// Longest accepted topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Topics under this prefix (`switchyard.>`) are the server's own: its notices must be
/// trustworthy, so no client may publish there.
pub const RESERVED_PREFIX: &str = "switchyard.";

/// Is `topic` one of the server's own ([`RESERVED_PREFIX`])?
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with(RESERVED_PREFIX)
}

/// `forbidden` for a topic reserved to the server ([`RESERVED_PREFIX`]).
pub fn check_not_reserved(topic: &str) -> Result<(), ProtocolError> {
    if !is_reserved(topic) {
        return Ok(());
    }
    Err(ProtocolError::new(
        ErrorCode::Forbidden,
        format!("topic `{topic}`: `switchyard.>` topics are reserved to the server"),
    ))
}

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

    #[test]
    fn reserved_topics_table() {
        let table = [
            ("switchyard.dead_letter", false),
            ("switchyard.anything.else", false),
            ("switchyard", true),
            ("switchyards.x", true),
            ("task.switchyard.x", true),
        ];
        for (topic, ok) in table {
            assert_eq!(check_not_reserved(topic).is_ok(), ok, "topic {topic:?}");
        }
    }
}
