//! `[[sources]]`: event sources the server runs itself (docs/sources.md): a SQLite
//! table whose changes become events, and a directory of JSON-lines files.
//!
//! Owns: the typed settings of one source, their defaults and their validation. Must
//! not: open anything; `crate::actors::sources` does.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What a source watches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Committed INSERT / UPDATE / DELETE of one table of a SQLite database.
    Sqlite,
    /// Lines appended to the files of a directory.
    File,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::File => "file",
        }
    }
}

/// One `[[sources]]` entry. Keys that do not apply to its `kind` are refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// The source's principal: the `source` of its events and the scope of their ids.
    /// Default: `<kind>-<table>` or `file-<topic>`.
    #[serde(default)]
    pub name: String,
    /// The database file (`sqlite`) or the directory (`file`).
    pub path: PathBuf,
    /// Topic prefix. Default: the table (`sqlite`), `file` (`file`).
    #[serde(default)]
    pub topic: String,
    /// `sqlite`: the table whose changes are events.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub table: String,
    /// `sqlite`: the table's primary-key column.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// `sqlite`: a column whose old and new values updates report.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_column: String,
    /// `sqlite`: updates of one row seen within this window merge into the latest.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// `file`: which file names of the directory are read.
    #[serde(default = "default_glob")]
    pub glob: String,
    /// How often the database or directory is checked for changes.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_debounce_ms() -> u64 {
    100
}

fn default_glob() -> String {
    "*.jsonl".to_owned()
}

fn default_poll_interval_ms() -> u64 {
    100
}

/// Longest source name, in bytes (it names a file in the data directory).
pub const MAX_SOURCE_NAME_LEN: usize = 64;

impl SourceConfig {
    /// Fills in the defaults that depend on other keys (`name`, `topic`).
    pub(super) fn complete(&mut self) {
        if self.topic.is_empty() {
            self.topic = match self.kind {
                SourceKind::Sqlite => self.table.clone(),
                SourceKind::File => "file".to_owned(),
            };
        }
        if self.name.is_empty() {
            self.name = match self.kind {
                SourceKind::Sqlite => format!("sqlite-{}", self.table),
                SourceKind::File => format!("file-{}", self.topic),
            };
        }
    }

    pub(super) fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| {
            Err(ConfigError::Source {
                index,
                key,
                message,
            })
        };
        // The kind's own keys first: `name` and `topic` default from them.
        let sqlite = self.kind == SourceKind::Sqlite;
        // Keys of the other kind: a typo'd kind would otherwise pass silently.
        let foreign: &[(&'static str, bool)] = if sqlite {
            &[("glob", self.glob != default_glob())]
        } else {
            &[
                ("table", !self.table.is_empty()),
                ("key", !self.key.is_empty()),
                ("status_column", !self.status_column.is_empty()),
                ("debounce_ms", self.debounce_ms != default_debounce_ms()),
            ]
        };
        if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
            return invalid(
                key,
                format!(
                    "does not apply to a source of kind \"{}\"",
                    self.kind.as_str()
                ),
            );
        }
        if sqlite {
            for (key, value) in [("table", &self.table), ("key", &self.key)] {
                if !is_identifier(value) {
                    return invalid(
                        key,
                        format!("`{value}` is not a column or table name (letters, digits, `_`)"),
                    );
                }
            }
            if !self.status_column.is_empty() && !is_identifier(&self.status_column) {
                return invalid(
                    "status_column",
                    format!("`{}` is not a column name", self.status_column),
                );
            }
            if self.debounce_ms > 60_000 {
                return invalid("debounce_ms", "must be at most 60000".to_owned());
            }
        } else if self.glob.is_empty() || self.glob.contains(['/', '\\']) || self.glob.len() > 256 {
            return invalid(
                "glob",
                "must be a file name pattern (`*` for any run of characters), without `/`"
                    .to_owned(),
            );
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.name.is_empty()
            || self.name.len() > MAX_SOURCE_NAME_LEN
            || !self.name.chars().all(name_ok)
            || self.name.starts_with('.')
        {
            return invalid(
                "name",
                format!(
                    "`{}`: 1 to {MAX_SOURCE_NAME_LEN} letters, digits, `-`, `_` or `.`",
                    self.name
                ),
            );
        }
        if self.path.as_os_str().is_empty() {
            return invalid("path", "must be set".to_owned());
        }
        if let Err(why) = check_topic_prefix(&self.topic) {
            return invalid("topic", format!("`{}` {why}", self.topic));
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            return invalid("poll_interval_ms", "must be from 1 to 60000".to_owned());
        }
        Ok(())
    }
}

/// A SQL identifier the triggers can name without surprises.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

/// The topic rules of `protocol::topic` (this layer cannot name it), for a prefix
/// that gets one more segment, and outside `switchyard.>`.
fn check_topic_prefix(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("is empty");
    }
    if topic.len() > 128 {
        return Err("is longer than 128 bytes");
    }
    if topic == "switchyard" || topic.starts_with("switchyard.") {
        return Err("is reserved to the server");
    }
    for part in topic.split('.') {
        if part.is_empty() {
            return Err("has an empty segment");
        }
        if part.contains(['*', '>', '#']) || part.chars().any(char::is_whitespace) {
            return Err("may not hold wildcards or whitespace");
        }
    }
    Ok(())
}

/// Completes and validates every source; names must be unique.
pub(super) fn validate_all(sources: &mut [SourceConfig]) -> Result<(), ConfigError> {
    for s in sources.iter_mut() {
        s.complete();
    }
    for (i, s) in sources.iter().enumerate() {
        s.validate(i)?;
        if sources[..i].iter().any(|other| other.name == s.name) {
            return Err(ConfigError::Source {
                index: i,
                key: "name",
                message: format!("`{}` names another source too", s.name),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite() -> SourceConfig {
        toml::from_str("kind = \"sqlite\"\npath = \"x.db\"\ntable = \"tasks\"\nkey = \"id\"\n")
            .unwrap()
    }

    fn file() -> SourceConfig {
        toml::from_str("kind = \"file\"\npath = \"events\"\n").unwrap()
    }

    #[test]
    fn defaults_follow_the_other_keys() {
        let mut s = [sqlite(), file()];
        validate_all(&mut s).unwrap();
        assert_eq!(
            (s[0].name.as_str(), s[0].topic.as_str()),
            ("sqlite-tasks", "tasks")
        );
        assert_eq!(
            (s[1].name.as_str(), s[1].topic.as_str()),
            ("file-file", "file")
        );
        assert_eq!(s[1].glob, "*.jsonl");
        assert_eq!(s[0].debounce_ms, 100);
    }

    #[test]
    fn each_bad_key_is_named() {
        type Tweak = fn(&mut SourceConfig);
        let table: [(Tweak, bool, &str); 11] = [
            (|s| s.table = "ta bles".into(), true, "sources[0].table"),
            (|s| s.key = String::new(), true, "sources[0].key"),
            (
                |s| s.status_column = "st;x".into(),
                true,
                "sources[0].status_column",
            ),
            (|s| s.topic = "task.*".into(), true, "sources[0].topic"),
            (
                |s| s.topic = "switchyard.x".into(),
                true,
                "sources[0].topic",
            ),
            (|s| s.name = "a/b".into(), true, "sources[0].name"),
            (|s| s.path = PathBuf::new(), true, "sources[0].path"),
            (
                |s| s.debounce_ms = 1_000_000,
                true,
                "sources[0].debounce_ms",
            ),
            (|s| s.glob = "a/*.jsonl".into(), false, "sources[0].glob"),
            (|s| s.table = "tasks".into(), false, "sources[0].table"),
            (
                |s| s.poll_interval_ms = 0,
                false,
                "sources[0].poll_interval_ms",
            ),
        ];
        for (tweak, is_sqlite, key) in table {
            let mut s = [if is_sqlite { sqlite() } else { file() }];
            tweak(&mut s[0]);
            let err = validate_all(&mut s).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let mut twins = [file(), file()];
        let err = validate_all(&mut twins).unwrap_err().to_string();
        assert!(err.contains("sources[1].name"), "{err}");
    }
}
