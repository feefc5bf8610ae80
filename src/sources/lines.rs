//! Lines of a watched file: where they end, and the event each one is.
//!
//! A line is a JSON object. When every key is an envelope field (`type`, `priority`,
//! `payload` ...) it is an event; otherwise the whole object is the payload. Either
//! way the event's topic defaults to the file's (`progress.jsonl` → `file.progress`)
//! and its id to one derived from the line's place, so a line published twice is a
//! duplicate.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::value::RawValue;

use crate::protocol::ENVELOPE_FIELDS;

/// A piece of a buffer read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A whole line, without its `\n` (or `\r\n`).
    Line(Range<usize>),
    /// A whole line longer than the limit.
    TooLong,
}

/// What [`split`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub pieces: Vec<Piece>,
    /// Bytes taken: up to and including the last `\n`.
    pub consumed: usize,
    /// The unfinished line at the end is already over the limit: skip to its end.
    pub overlong_tail: bool,
}

/// Splits `buf` into whole lines of at most `max` bytes each, at most `max_lines`.
pub fn split(buf: &[u8], max: usize, max_lines: usize) -> Split {
    let mut pieces = Vec::new();
    let mut start = 0;
    while pieces.len() < max_lines {
        let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let mut end = start + nl;
        if end > start && buf[end - 1] == b'\r' {
            end -= 1;
        }
        pieces.push(if end - start > max {
            Piece::TooLong
        } else {
            Piece::Line(start..end)
        });
        start += nl + 1;
    }
    let overlong_tail = pieces.len() < max_lines && buf.len() - start > max;
    Split {
        pieces,
        consumed: start,
        overlong_tail,
    }
}

/// The event text for `line` of a file whose topic is `topic`, or why it is none.
/// `None` for a blank line (nothing to publish, nothing wrong).
pub fn event_of(line: &[u8], topic: &str, default_id: &str) -> Option<Result<String, String>> {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim(),
        Err(_) => return Some(Err("not UTF-8".into())),
    };
    if text.is_empty() {
        return None;
    }
    if !text.starts_with('{') {
        return Some(Err("not a JSON object".into()));
    }
    let fields: BTreeMap<String, Box<RawValue>> = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return Some(Err(format!("invalid JSON: {e}"))),
    };
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    if !fields.keys().all(|k| ENVELOPE_FIELDS.contains(&k.as_str())) {
        return Some(Ok(format!(
            "{{\"id\":{},\"topic\":{},\"payload\":{text}}}",
            quoted(default_id),
            quoted(topic)
        )));
    }
    let mut event = fields;
    for (key, value) in [("id", default_id), ("topic", topic)] {
        // A line naming only its `type` keeps the file's topic.
        if !event.contains_key(key) {
            let raw = RawValue::from_string(quoted(value)).ok()?;
            event.insert(key.to_owned(), raw);
        }
    }
    Some(serde_json::to_string(&event).map_err(|e| e.to_string()))
}

/// The topic of the file named `name`: `prefix` and the name without its last
/// extension, characters a topic cannot hold replaced by `_`.
pub fn topic_of(prefix: &str, name: &str) -> String {
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    };
    let segment: String = stem
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c == '#' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .take(100)
        .collect();
    format!("{prefix}.{segment}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn splits_whole_lines_within_bounds() {
        /// Buffer, line limit, lines at most; pieces, bytes consumed, over-long tail.
        type Case = (&'static str, usize, usize, Vec<Piece>, usize, bool);
        let table: [Case; 6] = [
            (
                "a\nbb\n",
                10,
                9,
                vec![Piece::Line(0..1), Piece::Line(2..4)],
                5,
                false,
            ),
            ("a\r\nb", 10, 9, vec![Piece::Line(0..1)], 3, false),
            ("", 10, 9, vec![], 0, false),
            (
                "abcdef\nab\n",
                3,
                9,
                vec![Piece::TooLong, Piece::Line(7..9)],
                10,
                false,
            ),
            ("ab\nabcdef", 3, 9, vec![Piece::Line(0..2)], 3, true),
            (
                "a\nb\nc\n",
                10,
                2,
                vec![Piece::Line(0..1), Piece::Line(2..3)],
                4,
                false,
            ),
        ];
        for (buf, max, lines, pieces, consumed, tail) in table {
            let s = split(buf.as_bytes(), max, lines);
            assert_eq!(
                (s.pieces, s.consumed, s.overlong_tail),
                (pieces, consumed, tail),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn lines_become_events() {
        let ok = |line: &str| -> Value {
            let text = event_of(line.as_bytes(), "file.progress", "id1")
                .unwrap()
                .unwrap();
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(
            ok(r#"{"step": 3, "type": "x"}"#),
            json!({"id": "id1", "topic": "file.progress", "payload": {"step": 3, "type": "x"}})
        );
        assert_eq!(
            ok(r#"{"type": "done", "priority": "high", "payload": {"n": 1}}"#),
            json!({"id": "id1", "topic": "file.progress", "type": "done", "priority": "high",
                   "payload": {"n": 1}})
        );
        assert_eq!(
            ok(r#"{"id": "mine", "topic": "file.other"}"#),
            json!({"id": "mine", "topic": "file.other"})
        );
        assert_eq!(event_of(b"  \r", "t", "i"), None);
        for bad in ["[1]", "{\"a\":", "7", "\u{0}"] {
            assert!(
                event_of(bad.as_bytes(), "t", "i").unwrap().is_err(),
                "{bad}"
            );
        }
        assert!(event_of(&[0xff, b'{'], "t", "i").unwrap().is_err());
    }

    #[test]
    fn file_names_become_topics() {
        for (name, topic) in [
            ("progress.jsonl", "file.progress"),
            ("a.b.jsonl", "file.a_b"),
            ("noext", "file.noext"),
            (".hidden", "file._hidden"),
            ("sp ace.jsonl", "file.sp_ace"),
        ] {
            assert_eq!(topic_of("file", name), topic, "{name}");
        }
    }
}
