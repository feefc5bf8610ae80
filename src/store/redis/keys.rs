//! The key space of one cluster in Redis (docs/cluster.md), all under one prefix.
//!
//! `{log}` and `{dl}` are Redis Cluster hash tags: every key one script touches
//! shares its tag, so the scripts also run on a Redis Cluster. Each durable
//! subscription has a tag of its own, which spreads them across shards.
//!
//! Owns: key names and cursor <-> stream id text. Must not: talk to Redis.

#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
    /// STREAM: one entry per group commit, id `<its last cursor>-0` (`batch.rs`).
    pub events: String,
    /// STRING: the highest cursor ever assigned.
    pub seq: String,
    /// STRING: the log's random identity, written once when it is created.
    pub epoch: String,
    /// STREAM: ids `<dead letter id>-0`.
    pub letters: String,
    /// STRING: the highest dead letter id ever assigned.
    pub letters_seq: String,
    /// HASH: dead letters held per principal (eviction takes from the largest).
    pub letters_owners: String,
    /// SET: names of nodes that sent a heartbeat.
    pub nodes: String,
    /// HASH: per node, `<urgent deliveries>,<late ones>` since it started (overload).
    pub urgency: String,
}

/// The keys of one durable subscription.
pub(super) struct DurableKeys {
    /// HASH: `floor`.
    pub state: String,
    /// ZSET: resolved cursors above the floor (score = cursor).
    pub acked: String,
    /// STRING: the owner holding the name, with a TTL.
    pub lease: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            events: format!("{prefix}:{{log}}:events"),
            seq: format!("{prefix}:{{log}}:seq"),
            epoch: format!("{prefix}:{{log}}:epoch"),
            letters: format!("{prefix}:{{dl}}:letters"),
            letters_seq: format!("{prefix}:{{dl}}:seq"),
            letters_owners: format!("{prefix}:{{dl}}:owners"),
            nodes: format!("{prefix}:nodes"),
            urgency: format!("{prefix}:urgency"),
        }
    }

    /// STRING: the cursor `publisher`'s event `id` was stored under, expiring after
    /// the dedupe TTL. `anonymous` (auth off) keeps the key of before publishers were
    /// recorded, `id:<id>`, so that a cluster without auth upgrades node by node with
    /// one duplicate check; any other publisher's ids live under `pid:` with the
    /// publisher escaped (no `:` in it), so no two (publisher, id) pairs share a key.
    pub(super) fn event_id(&self, publisher: &str, id: &str) -> String {
        if publisher == crate::protocol::ANONYMOUS {
            format!("{}:{{log}}:id:{id}", self.prefix)
        } else {
            format!("{}:{{log}}:pid:{}:{id}", self.prefix, escape(publisher))
        }
    }

    pub(super) fn durable(&self, principal: &str, name: &str) -> DurableKeys {
        // Escaped, so that principal `a:b` with name `c` and principal `a` with name
        // `b:c` are two subscriptions, and a brace cannot end the hash tag early.
        let state = format!(
            "{}:durable:{{{}:{}}}",
            self.prefix,
            escape(principal),
            escape(name)
        );
        DurableKeys {
            acked: format!("{state}:acked"),
            lease: format!("{state}:lease"),
            state,
        }
    }

    /// STRING with a TTL: one node's registration (JSON).
    pub(super) fn node(&self, name: &str) -> String {
        format!("{}:node:{name}", self.prefix)
    }
}

fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// The stream id of cursor (or dead letter id) `n`.
pub(super) fn id(n: u64) -> String {
    format!("{n}-0")
}

/// The cursor of a stream id `<n>-0`.
pub(super) fn cursor_of(id: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(id).ok()?;
    let (n, seq) = text.split_once('-')?;
    (seq == "0").then_some(())?;
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_their_hash_tag_and_durable_names_cannot_collide() {
        let k = Keys::new("sy");
        assert_eq!(k.events, "sy:{log}:events");
        assert_eq!(k.event_id("anonymous", "abc"), "sy:{log}:id:abc");
        assert_eq!(k.event_id("bob", "abc"), "sy:{log}:pid:bob:abc");
        assert_ne!(k.event_id("a:b", "c"), k.event_id("a", "b:c"));
        assert_ne!(k.event_id("a", "x"), k.event_id("anonymous", "pid:a:x"));
        assert_eq!(k.letters, "sy:{dl}:letters");
        let d = k.durable("alice", "billing");
        assert_eq!(d.state, "sy:durable:{alice:billing}");
        assert_eq!(d.acked, "sy:durable:{alice:billing}:acked");
        assert_eq!(d.lease, "sy:durable:{alice:billing}:lease");
        assert_ne!(k.durable("a:b", "c").state, k.durable("a", "b:c").state);
        assert_eq!(k.durable("a}", "x").state, "sy:durable:{a%7D:x}");
    }

    #[test]
    fn stream_ids_are_cursors() {
        let table: [(&[u8], Option<u64>); 5] = [
            (b"42-0", Some(42)),
            (b"0-0", Some(0)),
            (b"42-1", None),
            (b"42", None),
            (b"x-0", None),
        ];
        for (text, want) in table {
            assert_eq!(cursor_of(text), want, "{text:?}");
        }
        assert_eq!(id(7), "7-0");
    }
}
