//! The node registry behind `/api/cluster`: each node writes its registration with a
//! TTL on every heartbeat, and drops out when it stops.
//!
//! `Nodes` has a connection of its own rather than being methods of the store: the
//! store's thread may be busy for a while (a large batch, a retention pass), and a
//! heartbeat queued behind it would make a healthy node look dead.
//!
//! It also carries each node's urgent-delivery counts to the others ([`Nodes::share_urgency`]),
//! so that overload control sees late urgent events wherever they are delivered.
//!
//! Owns: the `nodes` set, the `node:<name>` keys and the `urgency` hash. Must not:
//! decide how often a node beats (`cluster.heartbeat_ms`) or what the counts mean.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Value;
use serde::{Deserialize, Serialize};

use super::conn::Link;
use super::keys::Keys;
use super::reply;
use super::RedisOptions;
use crate::store::StoreError;

/// One node of the cluster, as `/api/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// Where clients reach it (its listen address).
    pub address: String,
    /// The Switchyard version it runs.
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// When it last wrote its registration.
    pub last_beat: DateTime<Utc>,
}

pub struct Nodes {
    link: Link,
    keys: Keys,
}

impl Nodes {
    /// A registry client; connects on first use.
    pub fn connect(options: &RedisOptions) -> Result<Nodes, StoreError> {
        Ok(Nodes {
            link: Link::new(&options.url, options.command_timeout)?,
            keys: Keys::new(&options.prefix),
        })
    }

    /// Registers `info` (with `last_beat` set to now) for `ttl`.
    pub fn beat(&mut self, info: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let info = NodeInfo {
            last_beat: Utc::now(),
            ..info.clone()
        };
        let json = serde_json::to_string(&info)
            .map_err(|e| StoreError::Redis(format!("cannot encode node info: {e}")))?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let key = self.keys.node(&info.name);
        self.link.run("node heartbeat", true, |c| {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("SADD")
                .arg(&self.keys.nodes)
                .arg(&info.name)
                .ignore()
                .exec(c)
        })
    }

    /// The nodes whose registration has not expired, by name. Names whose
    /// registration expired are removed from the set.
    pub fn nodes(&mut self) -> Result<Vec<NodeInfo>, StoreError> {
        let names: Vec<String> = reply::array(self.link.run("list nodes", true, |c| {
            redis::cmd("SMEMBERS")
                .arg(&self.keys.nodes)
                .query::<Value>(c)
        })?)?
        .into_iter()
        .map(reply::text)
        .collect::<Result<_, _>>()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.keys.node(n)).collect();
        let infos = reply::array(self.link.run("read nodes", true, |c| {
            redis::cmd("MGET").arg(&keys).query::<Value>(c)
        })?)?;
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for (name, info) in names.into_iter().zip(infos) {
            match info {
                Value::Nil => gone.push(name),
                v => match serde_json::from_str::<NodeInfo>(&reply::text(v)?) {
                    Ok(info) => found.push(info),
                    Err(e) => log::warn!("node {name}: unreadable registration: {e}"),
                },
            }
        }
        if !gone.is_empty() {
            // A beat between MGET and SREM re-adds its name on the next beat.
            self.link.run("forget expired nodes", true, |c| {
                redis::cmd("SREM").arg(&self.keys.nodes).arg(&gone).exec(c)
            })?;
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Writes this node's urgent deliveries and late ones since it started, and reads
    /// every node's, in one round trip: `(name, urgent, late)`.
    pub fn share_urgency(
        &mut self,
        name: &str,
        urgent: u64,
        late: u64,
    ) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let key = &self.keys.urgency;
        let all: Value = self.link.run("share urgency", true, |c| {
            let (all,): (Value,) = redis::pipe()
                .cmd("HSET")
                .arg(key)
                .arg(name)
                .arg(format!("{urgent},{late}"))
                .ignore()
                .cmd("HGETALL")
                .arg(key)
                .query(c)?;
            Ok(all)
        })?;
        let mut counts = Vec::new();
        // HGETALL: field, value, field, value ...
        let mut fields = reply::array(all)?.into_iter();
        while let (Some(node), Some(value)) = (fields.next(), fields.next()) {
            let (node, value) = (reply::text(node)?, reply::text(value)?);
            let parsed = value
                .split_once(',')
                .and_then(|(u, l)| Some((u.parse().ok()?, l.parse().ok()?)));
            match parsed {
                Some((u, l)) => counts.push((node, u, l)),
                None => log::debug!("node {node}: unreadable urgency `{value}`"),
            }
        }
        Ok(counts)
    }
}
