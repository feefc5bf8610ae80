//! What to run: the options of `switchyard bench` and their checks (the priority mix,
//! loopback only).
//!
//! Owns: parsing and validating the options. Must not: open connections or measure.

use super::BenchError;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WebSocket URL of a running router; must be `127.0.0.1`, `localhost` or `[::1]`.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    pub url: String,
    /// Subscribers connect here instead of `--url` (another node of a cluster: the
    /// latency then includes the trip through the shared log).
    #[arg(long, conflicts_with = "in_process")]
    pub subscribe_url: Option<String>,
    /// The `--critical-rate` lane publishes here instead of `--url`.
    #[arg(long, conflicts_with = "in_process")]
    pub critical_url: Option<String>,
    /// Bearer token, when the router has auth on.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Start a router (memory store) in this process instead of using `--url`.
    #[arg(long)]
    pub in_process: bool,
    /// Publishing connections; the events (and `--rate`) are split evenly between them.
    #[arg(long, default_value_t = 1)]
    pub publishers: u64,
    /// Subscribing connections, each following every event; 0: the run ends when every
    /// publish is answered.
    #[arg(long, default_value_t = 10)]
    pub subscribers: u64,
    /// Events to publish in all (ignored with `--duration-secs`).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Publish for this long instead of a count.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Events per second over all publishers; 0: as fast as the replies allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Bytes of padding in each event's payload.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Events per `publish_batch`; 1 sends `publish_event` commands.
    #[arg(long, default_value_t = 100)]
    pub batch: u64,
    /// Commands a publisher sends before waiting for their replies; 0: no limit (it
    /// sends on schedule whatever the replies do, as a client without a window would).
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// Priority mix as weights, e.g. `critical=1,high=9,normal=80,low=10`.
    #[arg(long, default_value = "normal=1")]
    pub priorities: String,
    /// Conditional subscriptions: a CEL condition (`payload.seq % 2 == 0 && ...`) that
    /// matches half the events, evaluated on every one.
    #[arg(long)]
    pub conditional: bool,
    /// Subscribers use `ack: true` and acknowledge every delivery.
    #[arg(long)]
    pub ack: bool,
    /// Threads the subscribers are spread over (0: one per CPU core).
    #[arg(long, default_value_t = 0)]
    pub client_threads: usize,
    /// Also publish this many critical events per second, one `publish_event` at a time
    /// on a connection of their own, while the load runs.
    #[arg(long, default_value_t = 0)]
    pub critical_rate: u64,
    /// Also send this many `ping` commands per second, one at a time on a connection of
    /// their own, while the load runs: the `pong` round trip is the floor under any
    /// routed latency (a frame read and a frame written by the server, nothing routed).
    #[arg(long, default_value_t = 0)]
    pub ping_rate: u64,
    /// Open this many connections that only answer pings, and report the server's
    /// resident memory per connection (read from its `/metrics`).
    #[arg(long, default_value_t = 0)]
    pub idle_connections: u64,
    /// Before publishing, hold every connection open and quiet for this many seconds
    /// and report the server's CPU use over that time (what idle connections cost).
    #[arg(long, default_value_t = 0)]
    pub quiet_secs: u64,
    /// Publish nothing: subscribe to everything from cursor 0 and time the replay of
    /// the stored log until `replay_complete` (against `--url`, which must hold events).
    #[arg(long, conflicts_with = "in_process")]
    pub replay: bool,
    /// Print only one JSON report.
    #[arg(long)]
    pub json: bool,
    /// Hard limit on the whole run.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

impl BenchArgs {
    /// Where subscribers connect.
    pub fn subscribe_url(&self) -> &str {
        self.subscribe_url.as_deref().unwrap_or(&self.url)
    }

    /// Where the critical lane publishes.
    pub fn critical_url(&self) -> &str {
        self.critical_url.as_deref().unwrap_or(&self.url)
    }

    /// Checks what clap cannot; answers the priority of each of 100 slots (see
    /// [`priority_slots`]).
    pub fn check(&self) -> Result<Vec<&'static str>, BenchError> {
        if self.batch == 0 || self.publishers == 0 {
            return Err(BenchError::Usage(
                "--batch and --publishers must be at least 1".into(),
            ));
        }
        priority_slots(&self.priorities)
    }
}

/// `critical=1,high=9` → the priority of each of 100 slots, in proportion.
fn priority_slots(mix: &str) -> Result<Vec<&'static str>, BenchError> {
    let mut weights = Vec::new();
    for part in mix.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, w) = part.split_once('=').unwrap_or((part, "1"));
        let name = match name.trim().to_ascii_lowercase().as_str() {
            "critical" => "critical",
            "high" => "high",
            "normal" => "normal",
            "low" => "low",
            other => {
                return Err(BenchError::Usage(format!(
                    "unknown priority `{other}` in --priorities"
                )))
            }
        };
        let w: u64 = w
            .trim()
            .parse()
            .map_err(|_| BenchError::Usage(format!("bad weight in --priorities `{part}`")))?;
        weights.push((name, w));
    }
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return Err(BenchError::Usage(
            "--priorities needs a positive weight".into(),
        ));
    }
    // Smooth weighted round robin over 100 slots: each priority spread evenly, in
    // proportion to its weight.
    let mut slots = Vec::with_capacity(100);
    let mut acc = vec![0i128; weights.len()];
    for _ in 0..100 {
        for (a, (_, w)) in acc.iter_mut().zip(&weights) {
            *a += i128::from(*w);
        }
        let i = (0..acc.len())
            .max_by_key(|&i| (acc[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        acc[i] -= i128::from(total);
        slots.push(weights[i].0);
    }
    Ok(slots)
}

/// Refuses a URL whose host is not loopback: load only ever targets this machine.
pub fn check_local(url: &str) -> Result<(), BenchError> {
    let uri: awc::http::Uri = url
        .parse()
        .map_err(|e| BenchError::Usage(format!("bad --url `{url}`: {e}")))?;
    match uri.host() {
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1") => Ok(()),
        host => Err(BenchError::Usage(format!(
            "refusing --url `{url}`: host {host:?} is not loopback (bench only loads this machine)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_mix_is_spread_in_proportion() {
        let slots = priority_slots("critical=1,high=9,normal=80,low=10").unwrap();
        let count = |p| slots.iter().filter(|s| **s == p).count();
        assert_eq!(
            (
                count("critical"),
                count("high"),
                count("normal"),
                count("low")
            ),
            (1, 9, 80, 10)
        );
        assert_eq!(priority_slots("normal").unwrap(), vec!["normal"; 100]);
        assert!(priority_slots("urgent=1").is_err());
        assert!(priority_slots("low=0").is_err());
        // Spread, not blocks: the first ten slots already mix.
        let mixed = priority_slots("high=1,low=1").unwrap();
        assert_ne!(mixed[0], mixed[1]);
    }

    #[test]
    fn only_loopback_urls() {
        assert!(check_local("ws://127.0.0.1:1/ws").is_ok());
        assert!(check_local("ws://example.com/ws").is_err());
    }
}
