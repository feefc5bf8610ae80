//! Topic patterns: parsing and matching (docs/protocol.md section 4.2).
//!
//! Segments are separated by `.`; `*` matches exactly one segment; `>` (alias `#`) as
//! the last segment matches one or more segments; any other segment matches itself.
//! Empty segments, wildcards inside a segment and `>` before the end are rejected.

use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::topic::MAX_TOPIC_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `>` or `#` at the end: one or more segments.
    Tail,
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Compiles `pattern`, or answers `invalid_pattern` saying what is wrong.
    pub fn parse(pattern: &str) -> Result<Pattern, ProtocolError> {
        let invalid = |why: &str| {
            ProtocolError::new(
                ErrorCode::InvalidPattern,
                format!("pattern `{pattern}`: {why}"),
            )
        };
        if pattern.is_empty() {
            return Err(invalid("is empty"));
        }
        if pattern.len() > MAX_TOPIC_LEN {
            return Err(invalid(&format!("is longer than {MAX_TOPIC_LEN} bytes")));
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            let segment = match part {
                "" => return Err(invalid("has an empty segment")),
                "*" => Segment::One,
                ">" | "#" if i == last => Segment::Tail,
                ">" | "#" => return Err(invalid("`>` (or `#`) may only be the last segment")),
                p if p.contains(['*', '>', '#']) => {
                    return Err(invalid("a wildcard must be a whole segment"))
                }
                p if p.chars().any(char::is_whitespace) => {
                    return Err(invalid("contains whitespace"))
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Pattern {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal segments before the first wildcard (`task.*` → `["task"]`).
    /// An index can use them to skip patterns that cannot match a topic.
    pub fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map_while(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            _ => None,
        })
    }

    /// Does this pattern match `topic`?
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Tail => return parts.next().is_some_and(|p| !p.is_empty()),
                Segment::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl Pattern {
    /// Is there a topic both patterns match? (`task.>` and `*.created` do; `task.*`
    /// and `agent.>` do not.) Used to refuse a subscription no grant can ever serve.
    pub fn intersects(&self, other: &Pattern) -> bool {
        fn go(a: &[Segment], b: &[Segment]) -> bool {
            match (a.split_first(), b.split_first()) {
                (None, None) => true,
                // `>` needs one segment or more; the other side must offer one.
                (Some((Segment::Tail, _)), Some(_)) | (Some(_), Some((Segment::Tail, _))) => true,
                (None, Some(_)) | (Some(_), None) => false,
                (Some((x, xs)), Some((y, ys))) => {
                    let same = match (x, y) {
                        (Segment::Literal(l), Segment::Literal(r)) => l == r,
                        _ => true,
                    };
                    same && go(xs, ys)
                }
            }
        }
        go(&self.segments, &other.segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let table = [
            ("task.*", "task.created", true),
            ("task.*", "task.created.retry", false),
            ("task.*", "task", false),
            ("task.>", "task.created", true),
            ("task.>", "task.created.retry", true),
            ("task.>", "task", false),
            ("task.#", "task.created.retry", true),
            (">", "task", true),
            (">", "a.b.c", true),
            ("#", "logs.error", true),
            ("*", "task", true),
            ("*", "task.created", false),
            ("*.created", "task.created", true),
            ("*.created", "agent.created", true),
            ("*.created", "agent.failed", false),
            ("task.created", "task.created", true),
            ("task.created", "task.created2", false),
            ("task.created", "task", false),
            ("task", "task.created", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.*.>", "a.b.c.d", true),
            ("a.*.>", "a.b", false),
        ];
        for (pattern, topic, want) in table {
            let p = Pattern::parse(pattern).unwrap();
            assert_eq!(p.matches(topic), want, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn intersection_table() {
        let table = [
            ("task.>", ">", true),
            ("task.>", "task.created", true),
            ("task.>", "task", false),
            ("task.*", "agent.>", false),
            ("task.*", "*.created", true),
            ("task.*", "task.a.b", false),
            ("a.*.c", "a.b.*", true),
            ("a.*.c", "a.b.d", false),
            ("*", "a.b", false),
            ("*", ">", true),
            ("a.>", "*.b.>", true),
            ("x", "x", true),
            ("x", "y", false),
        ];
        for (a, b, want) in table {
            let (pa, pb) = (Pattern::parse(a).unwrap(), Pattern::parse(b).unwrap());
            assert_eq!(pa.intersects(&pb), want, "{a} ∩ {b}");
            assert_eq!(pb.intersects(&pa), want, "{b} ∩ {a}");
        }
    }

    #[test]
    fn invalid_patterns_table() {
        for bad in [
            "",
            ".",
            "task.",
            ".task",
            "task..created",
            "task.>.x",
            "#.x",
            "ta*sk",
            "a.b>",
            "a b",
            "x".repeat(300).as_str(),
        ] {
            let err = Pattern::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidPattern, "pattern {bad:?}");
        }
    }

    #[test]
    fn literal_prefix_stops_at_first_wildcard() {
        let p = Pattern::parse("task.created.*.x").unwrap();
        assert_eq!(p.literal_prefix().collect::<Vec<_>>(), ["task", "created"]);
        let p = Pattern::parse(">").unwrap();
        assert_eq!(p.literal_prefix().count(), 0);
    }
}
