//! Event priority: the four levels, their order, and their parsing.

use serde::{Deserialize, Deserializer, Serialize};

/// Priority of an event. Ordered so that `Critical > High > Normal > Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    /// All levels, highest first: the order in which queues are drained.
    pub const HIGHEST_FIRST: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// Index into per-priority arrays, `0` for critical through `3` for low.
    pub fn index(self) -> usize {
        match self {
            Priority::Critical => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Parses a priority name, case-insensitively.
    pub fn parse(s: &str) -> Option<Priority> {
        Self::HIGHEST_FIRST
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Priority::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown priority `{s}`, expected one of critical, high, normal, low"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let table = [
            ("critical", Some(Priority::Critical)),
            ("CRITICAL", Some(Priority::Critical)),
            ("High", Some(Priority::High)),
            ("normal", Some(Priority::Normal)),
            (" low ", Some(Priority::Low)),
            ("urgent", None),
            ("", None),
        ];
        for (input, want) in table {
            assert_eq!(Priority::parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn order_and_index_agree() {
        assert!(Priority::Critical > Priority::High);
        assert!(Priority::High > Priority::Normal);
        assert!(Priority::Normal > Priority::Low);
        for (i, p) in Priority::HIGHEST_FIRST.into_iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }

    #[test]
    fn serde_round_trip_is_lowercase_and_lenient() {
        assert_eq!(serde_json::to_string(&Priority::High).unwrap(), "\"high\"");
        let p: Priority = serde_json::from_str("\"LoW\"").unwrap();
        assert_eq!(p, Priority::Low);
        assert!(serde_json::from_str::<Priority>("\"urgent\"").is_err());
    }
}
