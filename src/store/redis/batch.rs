//! The log's entry format: one stream entry per group commit.
//!
//! An entry's stream id is `<last cursor>-0`, and it holds `n` events numbered densely
//! up to that cursor. Its fields:
//! - `t`: when it was stored (unix ms, Redis's clock);
//! - `n`: how many events it holds;
//! - `l`: each envelope's length in bytes, comma-separated;
//! - `b`: the envelopes one after the other, each cut just after `"cursor":` (the log
//!   numbers events as it stores them, so the reader adds `<cursor>}`);
//! - `ps` (only when some event has a publisher other than `anonymous`): a JSON array of
//!   each event's publisher, `""` for `anonymous`.
//!
//! Why the last cursor in the id: `XRANGE (<N>-0 +` and `XREAD … <N>-0` then return
//! exactly the entries holding a cursor above N (the first of them may also hold some
//! at or below N, which the reader skips), so replay and the tail find their place with
//! one command; and the stream's last generated id is still the highest cursor.
//!
//! Entries written before this format (one event each: `e` the whole envelope, `t`, and
//! `p` its publisher when not anonymous) are read as entries of one event, so a log
//! written by an older node needs no conversion.
//!
//! Owns: turning envelopes into entry fields and back, and how many entries to ask
//! for. Must not: talk to Redis.

use std::sync::Arc;

use super::super::{decode_envelope, StoreError};
use super::reply::Entry;
use crate::protocol::{EncodedEvent, ANONYMOUS};

/// Events read per round trip when a query filters, and at most when it does not.
pub(super) const PAGE: usize = 1000;

/// How many entries to ask for to get about `want` events, from the events per entry
/// seen so far (`seen` events in `entries`): one entry first, when nothing is known
/// yet, so that a log of large group commits never sends thousands of events for a
/// page of a hundred.
pub(super) fn entries_for(want: usize, seen: usize, entries: usize) -> usize {
    if entries == 0 {
        return 1;
    }
    let per_entry = (seen / entries).max(1);
    want.div_ceil(per_entry).clamp(1, PAGE)
}

/// Runs of dense cursors: each becomes one entry.
pub(super) fn dense_runs(events: &[Arc<EncodedEvent>]) -> Vec<&[Arc<EncodedEvent>]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=events.len() {
        let breaks = i == events.len()
            || events[i].event.cursor != events[i - 1].event.cursor.wrapping_add(1);
        if breaks {
            runs.push(&events[start..i]);
            start = i;
        }
    }
    runs
}

/// The fields of one entry before the log numbers it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fields {
    pub count: usize,
    pub lengths: String,
    pub blob: String,
    /// `""` when every event is `anonymous`'s (the field is then left out).
    pub publishers: String,
}

/// Packs envelope heads (each ending in `"cursor":`) and their publishers.
pub(super) fn pack<'a>(events: impl IntoIterator<Item = (&'a str, &'a str)>) -> Fields {
    let mut f = Fields::default();
    let mut publishers = Vec::new();
    let mut named = false;
    for (head, publisher) in events {
        if f.count > 0 {
            f.lengths.push(',');
        }
        f.lengths.push_str(&head.len().to_string());
        f.blob.push_str(head);
        f.count += 1;
        named |= publisher != ANONYMOUS;
        publishers.push(if publisher == ANONYMOUS {
            ""
        } else {
            publisher
        });
    }
    if named {
        // A list of strings always encodes.
        f.publishers = serde_json::to_string(&publishers).unwrap_or_default();
    }
    f
}

/// An envelope as the log holds it, whole again.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Stored {
    pub cursor: u64,
    pub json: String,
    /// Its publisher ([`ANONYMOUS`] when the entry names none).
    pub publisher: String,
}

/// The first cursor an entry holds.
pub(super) fn first_cursor(entry: &Entry) -> Result<u64, StoreError> {
    let n = count(entry)?;
    (entry.id + 1)
        .checked_sub(n)
        .filter(|first| *first > 0)
        .ok_or_else(|| corrupt(entry, "holds more events than its cursor"))
}

fn count(entry: &Entry) -> Result<u64, StoreError> {
    if entry.field("b").is_none() {
        return Ok(1);
    }
    let n: u64 = entry.number("n")?;
    if n == 0 {
        return Err(corrupt(entry, "holds no event"));
    }
    Ok(n)
}

fn corrupt(entry: &Entry, message: &str) -> StoreError {
    StoreError::Corrupt {
        cursor: entry.id,
        message: format!("log entry {message}"),
    }
}

/// Every envelope of an entry with a cursor above `after`, in cursor order.
pub(super) fn envelopes(entry: &Entry, after: u64) -> Result<Vec<Stored>, StoreError> {
    if entry.id <= after {
        return Ok(Vec::new());
    }
    if entry.field("b").is_none() {
        let publisher = match entry.field("p") {
            Some(_) => entry.text("p")?.to_owned(),
            None => ANONYMOUS.to_owned(),
        };
        return Ok(vec![Stored {
            cursor: entry.id,
            json: entry.text("e")?.to_owned(),
            publisher,
        }]);
    }
    let first = first_cursor(entry)?;
    let n = usize::try_from(count(entry)?).map_err(|_| corrupt(entry, "is too large"))?;
    let blob = entry.text("b")?;
    let lengths = entry
        .text("l")?
        .split(',')
        .map(|l| l.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt(entry, "has a length that is not a number"))?;
    if lengths.len() != n || lengths.iter().sum::<usize>() != blob.len() {
        return Err(corrupt(entry, "lengths do not match its envelopes"));
    }
    let publishers: Vec<String> = match entry.field("ps") {
        Some(_) => serde_json::from_str(entry.text("ps")?)
            .map_err(|_| corrupt(entry, "publishers are not a list of names"))?,
        None => vec![String::new(); n],
    };
    if publishers.len() != n {
        return Err(corrupt(entry, "names a publisher count unlike its events"));
    }
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    for (i, (len, publisher)) in lengths.into_iter().zip(publishers).enumerate() {
        let head = blob
            .get(at..at + len)
            .ok_or_else(|| corrupt(entry, "splits an envelope inside a character"))?;
        at += len;
        let cursor = first + i as u64;
        if cursor <= after {
            continue;
        }
        let mut json = String::with_capacity(head.len() + 21);
        json.push_str(head);
        json.push_str(&cursor.to_string());
        json.push('}');
        out.push(Stored {
            cursor,
            json,
            publisher: if publisher.is_empty() {
                ANONYMOUS.to_owned()
            } else {
                publisher
            },
        });
    }
    Ok(out)
}

/// The events of an entry with a cursor above `after`, in cursor order.
pub(super) fn events(entry: &Entry, after: u64) -> Result<Vec<Arc<EncodedEvent>>, StoreError> {
    envelopes(entry, after)?
        .into_iter()
        .map(|s| decode_envelope(s.cursor, Arc::from(s.json)))
        .collect()
}

/// An envelope cut after `"cursor":`, for an event numbered or not (an imported one
/// keeps its cursor, which the log stores in the entry's id instead). An envelope that
/// does not end in its cursor is encoded again.
pub(super) fn head_of(e: &EncodedEvent) -> std::borrow::Cow<'_, str> {
    let suffix = format!("{}}}", e.event.cursor);
    match e.json.strip_suffix(suffix.as_str()) {
        Some(head) if head.ends_with("\"cursor\":") => head.into(),
        _ => {
            let mut event = e.event.clone();
            event.cursor = 0;
            let again = EncodedEvent::new(event);
            again
                .json_before_cursor()
                .unwrap_or_default()
                .to_owned()
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Entry {
        let flat = fields
            .iter()
            .flat_map(|(k, v)| {
                [
                    Value::BulkString(k.as_bytes().to_vec()),
                    Value::BulkString(v.as_bytes().to_vec()),
                ]
            })
            .collect();
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(flat),
        ])]);
        super::super::reply::entries(reply).unwrap().pop().unwrap()
    }

    const A: &str = r#"{"id":"a","cursor":"#;
    const B: &str = r#"{"id":"b\n","cursor":"#;

    #[test]
    fn entries_per_read_follow_the_events_per_entry_seen() {
        // (want, events seen, entries seen, entries to ask for)
        let table = [
            (100, 0, 0, 1),
            (1000, 1, 1, 1000),
            (1000, 3000, 2, 1),
            (100, 200, 100, 50),
            (5000, 10, 10, PAGE),
        ];
        for (want, seen, entries, ask) in table {
            assert_eq!(
                entries_for(want, seen, entries),
                ask,
                "{want} {seen} {entries}"
            );
        }
    }

    #[test]
    fn an_entry_unpacks_into_its_numbered_envelopes() {
        let f = pack([(A, "anonymous"), (B, "bob")]);
        assert_eq!(f.count, 2);
        assert_eq!(f.lengths, format!("{},{}", A.len(), B.len()));
        assert_eq!(f.publishers, r#"["","bob"]"#);
        assert_eq!(pack([(A, "anonymous")]).publishers, "");
        let e = entry(
            "8-0",
            &[
                ("t", "5"),
                ("n", "2"),
                ("l", &f.lengths),
                ("b", &f.blob),
                ("ps", &f.publishers),
            ],
        );
        assert_eq!(first_cursor(&e).unwrap(), 7);
        let got = envelopes(&e, 0).unwrap();
        let want = [
            (7, format!("{A}7}}"), "anonymous"),
            (8, format!("{B}8}}"), "bob"),
        ];
        assert_eq!(got.len(), 2);
        for (s, (cursor, json, publisher)) in got.iter().zip(want) {
            assert_eq!(
                (s.cursor, s.json.as_str(), s.publisher.as_str()),
                (cursor, json.as_str(), publisher)
            );
        }
        // Reading after a cursor inside the entry skips what is at or below it.
        let rest = envelopes(&e, 7).unwrap();
        assert_eq!(rest.iter().map(|s| s.cursor).collect::<Vec<_>>(), [8]);
        assert!(envelopes(&e, 8).unwrap().is_empty());
    }

    #[test]
    fn an_entry_of_the_old_format_is_one_event() {
        let e = entry("4-0", &[("e", r#"{"cursor":4}"#), ("t", "1"), ("p", "bob")]);
        assert_eq!(first_cursor(&e).unwrap(), 4);
        let got = envelopes(&e, 3).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].cursor, got[0].publisher.as_str()), (4, "bob"));
        let anonymous = entry("5-0", &[("e", "{}")]);
        assert_eq!(envelopes(&anonymous, 0).unwrap()[0].publisher, "anonymous");
    }

    #[test]
    fn a_damaged_entry_is_an_error_not_a_panic() {
        let blob = format!("{A}{B}");
        let ok_lengths = format!("{},{}", A.len(), B.len());
        let bad: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("2-0", vec![("n", "0"), ("l", ""), ("b", "")]),
            ("1-0", vec![("n", "2"), ("l", &ok_lengths), ("b", &blob)]),
            ("9-0", vec![("n", "2"), ("l", "3,x"), ("b", &blob)]),
            ("9-0", vec![("n", "2"), ("l", "3,4"), ("b", &blob)]),
            ("9-0", vec![("n", "3"), ("l", &ok_lengths), ("b", &blob)]),
            (
                "9-0",
                vec![
                    ("n", "2"),
                    ("l", &ok_lengths),
                    ("b", &blob),
                    ("ps", "[\"x\"]"),
                ],
            ),
            (
                "9-0",
                vec![("n", "2"), ("l", &ok_lengths), ("b", &blob), ("ps", "{")],
            ),
            ("9-0", vec![("l", &ok_lengths), ("b", &blob)]),
        ];
        for (id, fields) in bad {
            assert!(
                envelopes(&entry(id, &fields), 0).is_err(),
                "{id} {fields:?}"
            );
        }
        // A length that cuts a character in two.
        let e = entry("2-0", &[("n", "2"), ("l", "1,1"), ("b", "é")]);
        assert!(envelopes(&e, 0).is_err());
    }
}
