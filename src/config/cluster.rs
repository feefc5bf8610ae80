//! `[cluster]` and the Redis settings of `[store]`: what a node of a cluster sharing one
//! Redis log needs to know (docs/cluster.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in `/api/cluster`, `/api/stats` and the dashboard; empty: the
    /// host name and the listen port.
    #[serde(default)]
    pub node_name: String,
    /// Keys in Redis start with this (several clusters can share one Redis).
    pub prefix: String,
    /// How long an event id stays known to the cluster's duplicate check.
    pub dedupe_ttl_secs: u64,
    /// A durable subscription's name is held by one connection of the cluster; when
    /// its node dies, another may take the name this long after its last renewal.
    pub lease_ttl_ms: u64,
    /// How often a node tells the cluster it is alive; it drops out of
    /// `/api/cluster` after three missed beats.
    pub heartbeat_ms: u64,
    /// Every Redis command gives up after this long: a publish is then answered
    /// `unavailable` instead of waiting.
    pub command_timeout_ms: u64,
    /// About how many events a node's tail reads per round trip (it reads whole
    /// group commits, so one may hold more).
    pub tail_batch: usize,
    /// Go on with a log whose epoch changed (it was wiped or replaced) instead of
    /// refusing publishes: cursors start again from what the new log holds.
    #[serde(default)]
    pub accept_new_log: bool,
}

impl ClusterConfig {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return invalid(
                "cluster.prefix",
                "must be non-empty, without spaces or braces",
            );
        }
        if self.dedupe_ttl_secs == 0 {
            return invalid("cluster.dedupe_ttl_secs", "must be greater than 0");
        }
        if self.heartbeat_ms == 0 {
            return invalid("cluster.heartbeat_ms", "must be greater than 0");
        }
        if self.lease_ttl_ms < 3 * self.heartbeat_ms {
            return invalid(
                "cluster.lease_ttl_ms",
                "must be at least three cluster.heartbeat_ms (leases are renewed on the beat)",
            );
        }
        if self.command_timeout_ms == 0 {
            return invalid("cluster.command_timeout_ms", "must be greater than 0");
        }
        if !(1..=10_000).contains(&self.tail_batch) {
            return invalid("cluster.tail_batch", "must be from 1 to 10000");
        }
        Ok(())
    }
}

/// A `redis://` or `rediss://` URL with a host, or why not.
pub(super) fn validate_redis_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err(
            "must be set when store.kind = \"redis\" (e.g. redis://127.0.0.1:6379/0)".into(),
        );
    }
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| {
            format!(
                "`{}` must start with redis:// or rediss://",
                redact_url(url)
            )
        })?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with(['/', ':']) {
        return Err(format!("`{}` names no host", redact_url(url)));
    }
    Ok(())
}

/// The URL with its password (if any) replaced, for logs and `print-config`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((user_pass, host)) if user_pass.contains(':') => {
            let user = user_pass.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:{}@{host}", super::REDACTED)
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_and_passwords_never_shown() {
        let table = [
            ("redis://127.0.0.1:6379/0", Ok(())),
            ("rediss://user:pw@redis.example:6380", Ok(())),
            ("", Err("must be set")),
            ("http://127.0.0.1", Err("must start with redis://")),
            ("redis://:secret@/0", Err("names no host")),
        ];
        for (url, want) in table {
            let got = validate_redis_url(url);
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(part)) => {
                    assert!(e.contains(part), "{url}: {e}");
                    assert!(!e.contains("secret"), "{e}");
                }
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(
            redact_url("redis://app:hunter2@10.0.0.5:6379/1"),
            "redis://app:<redacted>@10.0.0.5:6379/1"
        );
        assert_eq!(redact_url("redis://10.0.0.5"), "redis://10.0.0.5");
    }
}
