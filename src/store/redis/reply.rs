//! Reading Redis replies: stream entries (`XRANGE`, `XREAD`), integers and text.
//!
//! Replies are parsed by hand from [`Value`] rather than through `FromRedisValue`
//! conversions, so that an unexpected shape is a [`StoreError::Redis`] naming what
//! was read, never a panic or a silently empty result.
//!
//! Owns: reply shapes. Must not: send commands.

use redis::Value;

use super::super::StoreError;
use super::keys::cursor_of;

/// One stream entry.
#[derive(Debug)]
pub(super) struct Entry {
    /// The `<n>` of its id `<n>-0`.
    pub id: u64,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub(super) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    pub(super) fn text(&self, name: &str) -> Result<&str, StoreError> {
        let bytes = self
            .field(name)
            .ok_or_else(|| unexpected(&format!("entry {} without field `{name}`", self.id)))?;
        std::str::from_utf8(bytes)
            .map_err(|_| unexpected(&format!("entry {} field `{name}` is not UTF-8", self.id)))
    }

    pub(super) fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError> {
        self.text(name)?
            .parse()
            .map_err(|_| unexpected(&format!("entry {} field `{name}` is not a number", self.id)))
    }
}

pub(super) fn unexpected(what: &str) -> StoreError {
    StoreError::Redis(format!("unexpected reply: {what}"))
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// Text (a bulk string, a status or an integer).
pub(super) fn text(v: Value) -> Result<String, StoreError> {
    bytes(v)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| unexpected("not text"))
}

/// An integer (or its decimal text).
pub(super) fn int(v: Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(n) => Ok(n),
        other => text(other)?
            .parse()
            .map_err(|_| unexpected("not an integer")),
    }
}

/// A count that cannot be negative.
pub(super) fn count(v: Value) -> Result<u64, StoreError> {
    u64::try_from(int(v)?).map_err(|_| unexpected("negative count"))
}

pub(super) fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(unexpected("not an array")),
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply, in reply order.
pub(super) fn entries(v: Value) -> Result<Vec<Entry>, StoreError> {
    array(v)?.into_iter().map(entry).collect()
}

fn entry(v: Value) -> Result<Entry, StoreError> {
    let mut parts = array(v)?.into_iter();
    let (Some(id), Some(body)) = (parts.next(), parts.next()) else {
        return Err(unexpected("stream entry is not [id, fields]"));
    };
    let id = bytes(id)
        .and_then(|b| cursor_of(&b))
        .ok_or_else(|| unexpected("stream id is not <n>-0"))?;
    let mut flat = array(body)?.into_iter();
    let mut fields = Vec::new();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        let (Some(k), Some(v)) = (bytes(k), bytes(v)) else {
            return Err(unexpected("stream field is not text"));
        };
        fields.push((k, v));
    }
    Ok(Entry { id, fields })
}

/// The entries of an `XREAD` reply over one stream (nil when it timed out).
pub(super) fn read_entries(v: Value) -> Result<Vec<Entry>, StoreError> {
    let Some(stream) = array(v)?.into_iter().next() else {
        return Ok(Vec::new());
    };
    let mut parts = array(stream)?.into_iter();
    match (parts.next(), parts.next()) {
        (Some(_name), Some(items)) => entries(items),
        _ => Err(unexpected("XREAD stream is not [name, entries]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries_parse_and_bad_shapes_are_errors() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![bulk("e"), bulk("{}"), bulk("t"), bulk("12")]),
        ])]);
        let got = entries(reply).unwrap();
        assert_eq!(got[0].id, 7);
        assert_eq!(got[0].field("e"), Some(&b"{}"[..]));
        assert_eq!(got[0].number::<u64>("t").unwrap(), 12);
        assert!(got[0].text("missing").is_err());

        let bad = [
            Value::Int(3),
            Value::Array(vec![Value::Array(vec![bulk("7-1"), Value::Array(vec![])])]),
            Value::Array(vec![Value::Array(vec![bulk("7-0")])]),
        ];
        for v in bad {
            assert!(entries(v.clone()).is_err(), "{v:?}");
        }
        assert!(read_entries(Value::Nil).unwrap().is_empty());
    }
}
