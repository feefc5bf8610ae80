//! Configuration: embedded defaults (`config/switchyard.toml`), an optional file, then
//! `SWITCHYARD_<SECTION>__<KEY>` environment variables, then command-line flags.
//!
//! Owns: the typed [`Config`], its validation, and the values derived from it alone
//! ([`Retention`], [`segment_events_for`]). Must not: start anything, or import another
//! module of the crate: it is the bottom layer, and the others read it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cluster;
mod limits;
mod sources;
mod web;

pub use limits::{DEFAULT_ACK_TIMEOUT_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_IN_FLIGHT};

pub use cluster::ClusterConfig;
pub use sources::{SourceConfig, SourceKind, MAX_SOURCE_NAME_LEN};
pub use web::{parse_origin, split_host};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

const REDACTED: &str = "<redacted>";

/// The checked-in defaults, compiled into the binary.
pub const DEFAULTS: &str = include_str!("../../config/switchyard.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub router: RouterConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    /// `[[sources]]`: events the server reads itself (docs/sources.md).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub http_workers: usize,
    pub delivery_workers: usize,
    pub heartbeat_interval_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// Listen on a non-loopback address without authentication.
    pub insecure: bool,
    /// PEM certificate chain and private key: serve `https://` and `wss://`. Empty: plain.
    #[serde(default)]
    pub tls_cert: PathBuf,
    #[serde(default)]
    pub tls_key: PathBuf,
    /// Linux: let the kernel back this process's memory with transparent huge pages.
    /// Off by default: the first touch of a huge page zeroes 2 MiB inside whichever
    /// request touched it (docs/architecture.md, "Memory and huge pages"). Applied by
    /// `switchyard serve` only.
    #[serde(default)]
    pub transparent_huge_pages: bool,
    // Web edge (crate::http::guard, docs/security.md "Browsers").
    /// Origins besides the server's own whose pages may open a WebSocket or send a
    /// request carrying an `Origin` header, as `scheme://host[:port]`.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// With auth off, `Host` names served besides the loopback ones (any port); `*`
    /// serves every name. Ignored with auth on, where any `Host` is served.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// How long a request body may take to arrive once its handler reads it (408).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
}

fn default_body_timeout_ms() -> u64 {
    10_000
}

impl ServerConfig {
    /// The certificate and key paths when TLS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        (!self.tls_cert.as_os_str().is_empty())
            .then_some((self.tls_cert.as_path(), self.tls_key.as_path()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_event_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_batch_events: usize,
    pub max_subscriptions_per_connection: usize,
    pub max_waiting_per_subscriber: usize,
    pub max_connections: usize,
    pub max_errors_per_window: u32,
    pub error_window_ms: u64,
    /// Events one WebSocket connection may publish per second, on average; 0 = no limit.
    pub publish_rate_per_sec: u32,
    /// Events one connection may publish at once before the rate applies (bucket size).
    pub publish_burst: u32,
    /// Critical and high events written to their subscribers later than this after the
    /// router accepted them slow down the connections that publish only low events
    /// (`crate::overload`); 0 = never.
    #[serde(default)]
    pub urgent_latency_target_us: u64,
    /// Low events per second the server keeps admitting however late urgent ones are.
    #[serde(default)]
    pub low_rate_floor_per_sec: u32,
    // Sizes a client controls (docs/limits.md); checked by `limits::validate_bounds`.
    /// A frame that is not a publish (`subscribe`, `ack`, ...) longer than this is refused.
    pub max_command_bytes: usize,
    /// Topic patterns of one subscription (`patterns`, or its filter's `topics`).
    pub max_patterns_per_subscription: usize,
    /// Values in one list of a subscription's `filter`.
    pub max_filter_values: usize,
    /// Open coalescing windows of one subscription; over it the oldest ends early.
    pub max_coalesce_windows: usize,
    /// Largest `max_in_flight`, `ack_timeout_ms` and `max_attempts` a subscription may ask.
    pub max_in_flight: u32,
    pub max_ack_timeout_ms: u64,
    pub max_attempts: u32,
    /// Largest `delay_ms` of a `nack`.
    pub max_nack_delay_ms: u64,
    /// A message sent in fragments must be complete within this, or the connection closes.
    pub fragment_timeout_ms: u64,
    /// Bytes of events waiting for one subscription (with `max_waiting_per_subscriber`).
    pub max_waiting_bytes_per_subscriber: usize,
    /// Replies one connection owes before the server stops reading its socket.
    pub max_pending_replies: usize,
    /// Dead letters one connection's subscriptions may cause per second (a bucket of
    /// one second's worth); past it they are counted, not stored. 0 = no limit.
    #[serde(default)]
    pub dead_letters_per_sec: u32,
    /// A condition with a loop is evaluated on an event only if no list or map it reads
    /// has more elements than this; otherwise it does not match (counted as a
    /// condition error), so that no loop holds up the router.
    pub max_condition_loop_items: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub max_queued_events: usize,
    /// Encoded bytes of those events: one event may be 1 MiB, so a count alone does
    /// not bound memory.
    pub max_queued_bytes: usize,
    pub dedupe_window: usize,
    pub max_tracked_topics: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Memory,
    /// A Redis log shared by every node of a cluster (docs/cluster.md).
    Redis,
}

/// `[auth]`: bearer tokens and JWTs (docs/protocol.md section 1.3). Auth is on as soon as a
/// token or a JWT secret is configured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// A TOML file of more `[[tokens]]`, read at start; empty for none.
    #[serde(default)]
    pub tokens_file: PathBuf,
    /// HS256 secret for JWTs; empty: JWTs are not accepted.
    #[serde(default)]
    pub jwt_secret: String,
    /// The `aud` a JWT must name; empty: a JWT naming any audience is refused.
    #[serde(default)]
    pub jwt_audience: String,
    /// The `iss` a JWT must carry; empty: not checked.
    #[serde(default)]
    pub jwt_issuer: String,
}

/// One static token and what it grants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The principal: default `source` of its events, owner of its durable subscriptions.
    pub name: String,
    pub token: String,
    /// Topic patterns it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic patterns it may subscribe to and read.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Dead-letter and subscription management.
    #[serde(default)]
    pub admin: bool,
    /// `source` names it may publish under besides its own name (`*` matches any run
    /// of characters); an event naming another source is refused.
    #[serde(default)]
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub max_events: u64,
    pub max_age_secs: u64,
    pub synchronous_full: bool,
    /// Page size, in bytes, of a database file the server creates.
    pub page_size: u32,
    /// Cursors per segment table of a database file the server creates; 0 chooses
    /// from `max_events` ([`segment_events_for`]).
    pub segment_events: u64,
    /// Dead letters kept, newest first (0 = no limit).
    pub max_dead_letters: u64,
    /// `store.kind = "redis"`: the server, e.g. `redis://127.0.0.1:6379/0`.
    #[serde(default)]
    pub redis_url: String,
    /// Refuse to start on a Redis without `appendonly yes` (false: only warn).
    #[serde(default = "yes")]
    pub redis_require_aof: bool,
}

fn yes() -> bool {
    true
}

impl StoreConfig {
    /// Cursors per segment for a new SQLite file: the setting, or the choice made
    /// from the count limit.
    pub fn segment_events(&self) -> u64 {
        if self.segment_events == 0 {
            segment_events_for(self.retention().max_events)
        } else {
            self.segment_events
        }
    }

    /// The retention policy these settings describe.
    pub fn retention(&self) -> Retention {
        Retention {
            max_events: (self.max_events > 0).then_some(self.max_events),
            max_age: (self.max_age_secs > 0).then(|| Duration::from_secs(self.max_age_secs)),
        }
    }

    /// The dead-letter limit, `None` for none.
    pub fn max_dead_letters(&self) -> Option<u64> {
        (self.max_dead_letters > 0).then_some(self.max_dead_letters)
    }
}

/// How much of the event log to keep; either limit may be off. A backend may keep
/// slightly fewer than `max_events` (SQLite counts by cursor range), never more once
/// retention has run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_events: Option<u64>,
    pub max_age: Option<Duration>,
}

/// Cursors per segment table of a new SQLite file when the count limit is small or off.
pub const DEFAULT_SEGMENT_EVENTS: u64 = 16384;

/// The smallest `store.segment_events`: below it the tables multiply, and SQLite
/// reloads its schema at each one created or dropped.
pub const MIN_SEGMENT_EVENTS: u64 = 1024;

/// The largest `store.segment_events`, and the most [`segment_events_for`] chooses:
/// retention deletes up to one segment row by row in a pass.
pub const MAX_SEGMENT_EVENTS: u64 = 262_144;

/// Cursors per segment for a log limited to `max_events`: [`DEFAULT_SEGMENT_EVENTS`],
/// or a 256th of the limit when that is larger, up to [`MAX_SEGMENT_EVENTS`]. SQLite
/// reloads its schema at every table created or dropped, and that costs more the more
/// tables there are, so a large limit gets fewer, larger segments.
pub fn segment_events_for(max_events: Option<u64>) -> u64 {
    max_events.map_or(DEFAULT_SEGMENT_EVENTS, |max| {
        (max / 256).clamp(DEFAULT_SEGMENT_EVENTS, MAX_SEGMENT_EVENTS)
    })
}

/// A configuration that cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    FileNotFound(PathBuf),
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("config key `sources[{index}].{key}`: {message}")]
    Source {
        index: usize,
        key: &'static str,
        message: String,
    },
}

/// Settings given on the command line; they win over every other source.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// `--insecure`: allow a non-loopback address without authentication.
    pub insecure: bool,
}

impl Config {
    /// Loads the effective configuration: defaults, then `file`, then the environment,
    /// then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::FileNotFound(path.to_owned()));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("SWITCHYARD_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("server.listen", listen));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("server.data_dir", dir));
        }
        if overrides.insecure {
            figment = figment.merge(Serialized::default("server.insecure", true));
        }
        let config: Config = figment.extract().map_err(|e| {
            // figment can report several errors; the first names the key, one line.
            let first = e
                .into_iter()
                .next()
                .map(|e| e.to_string())
                .unwrap_or_default();
            ConfigError::Parse(first.replace('\n', " "))
        })?;
        let mut config = config;
        config.prepare_sources()?;
        config.validate()?;
        Ok(config)
    }

    /// Fills in each source's defaults that follow from its other keys (`name`,
    /// `topic`) and validates them; [`load`](Self::load) does, and so does the server
    /// for a configuration built in code. Idempotent.
    pub fn prepare_sources(&mut self) -> Result<(), ConfigError> {
        sources::validate_all(&mut self.sources)
    }

    /// The embedded defaults alone (tests start from these).
    pub fn defaults() -> Config {
        // The embedded file is checked by a unit test, so this cannot fail at run time.
        Figment::from(Toml::string(DEFAULTS))
            .extract()
            .expect("embedded config/switchyard.toml is valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        let l = &self.limits;
        if l.max_event_bytes == 0 {
            return invalid("limits.max_event_bytes", "must be greater than 0");
        }
        if l.max_frame_bytes < l.max_event_bytes {
            return invalid(
                "limits.max_frame_bytes",
                "must be at least limits.max_event_bytes",
            );
        }
        if l.max_batch_events == 0 {
            return invalid("limits.max_batch_events", "must be greater than 0");
        }
        if l.max_waiting_per_subscriber == 0 {
            return invalid(
                "limits.max_waiting_per_subscriber",
                "must be greater than 0",
            );
        }
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "must be greater than 0");
        }
        if l.error_window_ms == 0 {
            return invalid("limits.error_window_ms", "must be greater than 0");
        }
        if l.publish_rate_per_sec > 0 && l.publish_burst == 0 {
            return invalid(
                "limits.publish_burst",
                "must be greater than 0 when limits.publish_rate_per_sec is set",
            );
        }
        if self.server.heartbeat_interval_ms == 0 {
            return invalid("server.heartbeat_interval_ms", "must be greater than 0");
        }
        if self.server.body_timeout_ms == 0 {
            return invalid("server.body_timeout_ms", "must be greater than 0");
        }
        for origin in &self.server.allowed_origins {
            if parse_origin(origin).is_none() {
                return invalid(
                    "server.allowed_origins",
                    &format!("`{origin}` is not an origin: write scheme://host[:port], no path"),
                );
            }
        }
        for host in &self.server.allowed_hosts {
            if host != "*" && !matches!(split_host(host), Some((_, None))) {
                return invalid(
                    "server.allowed_hosts",
                    &format!("`{host}` is not a host name: write it without scheme or port"),
                );
            }
        }
        if self.server.tls_cert.as_os_str().is_empty() != self.server.tls_key.as_os_str().is_empty()
        {
            return invalid(
                "server.tls_cert",
                "server.tls_cert and server.tls_key must be given together",
            );
        }
        if !(512..=65536).contains(&self.store.page_size) || !self.store.page_size.is_power_of_two()
        {
            return invalid(
                "store.page_size",
                "must be a power of two from 512 to 65536",
            );
        }
        let segments = MIN_SEGMENT_EVENTS..=MAX_SEGMENT_EVENTS;
        if self.store.segment_events != 0 && !segments.contains(&self.store.segment_events) {
            return invalid(
                "store.segment_events",
                &format!(
                    "must be 0 (chosen from store.max_events) or from {} to {}",
                    segments.start(),
                    segments.end()
                ),
            );
        }
        limits::validate_bounds(l)?;
        if self.router.max_queued_events == 0 {
            return invalid("router.max_queued_events", "must be greater than 0");
        }
        if self.router.max_queued_bytes < self.limits.max_event_bytes {
            return invalid(
                "router.max_queued_bytes",
                "must be at least limits.max_event_bytes",
            );
        }
        if self.store.kind == StoreKind::Redis {
            cluster::validate_redis_url(&self.store.redis_url).map_err(|message| {
                ConfigError::Invalid {
                    key: "store.redis_url",
                    message,
                }
            })?;
        }
        self.cluster.validate()
    }

    /// The configuration as TOML, for `switchyard print-config`. Secrets are redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for t in &mut shown.auth.tokens {
            t.token = REDACTED.to_owned();
        }
        if !shown.auth.jwt_secret.is_empty() {
            shown.auth.jwt_secret = REDACTED.to_owned();
        }
        shown.store.redis_url = cluster::redact_url(&shown.store.redis_url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.server.heartbeat_interval_ms)
    }

    /// Worker threads for HTTP/WebSocket connections.
    pub fn http_workers(&self) -> usize {
        or_cores(self.server.http_workers)
    }

    /// Delivery worker actors.
    pub fn delivery_workers(&self) -> usize {
        or_cores(self.server.delivery_workers)
    }
}

fn or_cores(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

#[cfg(test)]
mod tests;
