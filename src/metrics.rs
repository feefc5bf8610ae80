//! Counters shared by every actor: lock-free atomics, written on the hot path and read
//! by `/api/stats`.
//!
//! Owns: the numbers. Must not: decide anything; actors only add to them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::protocol::EncodedEvent;
use crate::protocol::Priority;

/// Topic families tracked by name on `/metrics`; later ones are counted as `other`.
pub const MAX_TOPIC_FAMILIES: usize = 100;

/// One counter per priority.
#[derive(Debug, Default)]
pub struct PerPriority([AtomicU64; 4]);

impl PerPriority {
    pub fn add(&self, p: Priority, n: u64) {
        self.0[p.index()].fetch_add(n, Relaxed);
    }

    pub fn get(&self, p: Priority) -> u64 {
        self.0[p.index()].load(Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// `{"total": n, "critical": n, "high": n, "normal": n, "low": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("total".into(), self.total().into());
        for p in Priority::HIGHEST_FIRST {
            m.insert(p.as_str().into(), self.get(p).into());
        }
        serde_json::Value::Object(m)
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    pub published: PerPriority,
    pub delivered: PerPriority,
    pub dropped: PerPriority,
    pub dead_lettered: PerPriority,
    pub duplicates: AtomicU64,
    /// Events refused with `rate_limited` because the router was busy: its queue
    /// (`router.max_queued_events`) or its inbox was full.
    pub rejected_busy: AtomicU64,
    /// Events refused with `rate_limited`: over their connection's publish rate.
    pub rejected_over_rate: AtomicU64,
    /// Bad frames answered with an `error`.
    pub protocol_errors: AtomicU64,
    /// Low events per second admitted while urgent ones are late (`crate::overload`);
    /// 0: no limit.
    pub low_admission_rate: AtomicU64,
    /// Times a publish of low events alone waited to stay under that rate (its
    /// connection stopped reading, or its HTTP request waited).
    pub low_publish_pauses: AtomicU64,
    /// Times cutting that rate was found not to reduce the lateness of urgent events,
    /// and given back.
    pub low_admission_cuts_undone: AtomicU64,
    /// Open WebSocket connections (see [`ConnectionPermit`]).
    pub connections: AtomicUsize,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Conditions that could not be evaluated on an event (no match).
    pub condition_errors: AtomicU64,
    /// Events a coalescing subscription replaced by a later one with the same key.
    pub coalesced: AtomicU64,
    /// Dead letters deleted to stay under `store.max_dead_letters` (the store actor's).
    pub dead_letters_evicted: AtomicU64,
    pub router: RouterGauges,
    pub commits: CommitHistograms,
    /// Per topic family (first topic segment) counters.
    pub families: TopicFamilies,
    /// Publish-to-deliver latency of first deliveries, by priority.
    pub latency: PriorityLatency,
    /// Time publishes waited in the router's inbox, by priority.
    pub inbox_wait: PriorityLatency,
}

impl Metrics {
    /// The counters of `event`'s topic family, its slot looked up once per event.
    pub fn family_of(&self, event: &EncodedEvent) -> &FamilyCounters {
        let slot = *event
            .family
            .get_or_init(|| self.families.slot_of(&event.event.topic));
        &self.families.slots[usize::from(slot)]
    }

    pub fn count_published(&self, event: &EncodedEvent) {
        let p = event.event.priority;
        self.published.add(p, 1);
        self.family_of(event).published.add(p, 1);
    }

    /// A frame written to a subscriber; `first` (attempt 1 of a live event) also
    /// records its publish-to-deliver latency.
    pub fn count_delivered(&self, event: &EncodedEvent, first: bool) {
        let p = event.event.priority;
        self.delivered.add(p, 1);
        self.family_of(event).delivered.add(p, 1);
        if first {
            self.latency
                .observe(p, event.accepted_at.elapsed().as_secs_f64());
        }
    }

    pub fn count_dropped(&self, event: &EncodedEvent) {
        let p = event.event.priority;
        self.dropped.add(p, 1);
        self.family_of(event).dropped.add(p, 1);
    }

    pub fn count_dead_lettered(&self, event: &EncodedEvent) {
        let p = event.event.priority;
        self.dead_lettered.add(p, 1);
        self.family_of(event).dead_lettered.add(p, 1);
    }
}

/// The counters of one topic family: `task` for `task.created` and `task.failed`.
#[derive(Debug, Default)]
pub struct FamilyCounters {
    pub published: PerPriority,
    pub delivered: PerPriority,
    pub dropped: PerPriority,
    pub dead_lettered: PerPriority,
}

/// The families seen so far, at most [`MAX_TOPIC_FAMILIES`] by name (label
/// cardinality stays bounded whatever topics clients invent); the rest share `other`.
/// Families are numbered by slot; an event keeps its family's slot
/// ([`EncodedEvent::family`]), so counting a delivery takes no lock.
#[derive(Debug)]
pub struct TopicFamilies {
    known: RwLock<BTreeMap<String, u16>>,
    /// One per possible family, then `other` at [`OTHER_FAMILY`].
    slots: Box<[Arc<FamilyCounters>]>,
}

/// The slot of `other`, the family of every topic past the first
/// [`MAX_TOPIC_FAMILIES`].
const OTHER_FAMILY: u16 = MAX_TOPIC_FAMILIES as u16;
const _: () = assert!(MAX_TOPIC_FAMILIES < u16::MAX as usize);

impl Default for TopicFamilies {
    fn default() -> Self {
        TopicFamilies {
            known: RwLock::default(),
            slots: (0..=MAX_TOPIC_FAMILIES).map(|_| Arc::default()).collect(),
        }
    }
}

impl TopicFamilies {
    pub fn get(&self, topic: &str) -> Arc<FamilyCounters> {
        self.slots[usize::from(self.slot_of(topic))].clone()
    }

    /// The slot of `topic`'s family, given one if it is new and there is room.
    pub fn slot_of(&self, topic: &str) -> u16 {
        let family = topic.split('.').next().unwrap_or(topic);
        if let Some(slot) = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(family)
        {
            return *slot;
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = known.get(family) {
            return *slot;
        }
        let next = known.len() as u16;
        if next >= OTHER_FAMILY {
            return OTHER_FAMILY;
        }
        known.insert(family.to_owned(), next);
        next
    }

    /// Every family with its counters, `other` last.
    pub fn snapshot(&self) -> Vec<(String, Arc<FamilyCounters>)> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known
            .iter()
            .map(|(name, slot)| (name.clone(), self.slots[usize::from(*slot)].clone()))
            .chain(std::iter::once((
                "other".to_owned(),
                self.slots[usize::from(OTHER_FAMILY)].clone(),
            )))
            .collect()
    }
}

type PriorityLabel = Vec<(&'static str, &'static str)>;

/// Latency histograms, one per priority (`publish_to_deliver_seconds`,
/// `router_inbox_wait_seconds`), held directly so that observing does not look the
/// label up.
#[derive(Debug)]
pub struct PriorityLatency {
    pub family: Family<PriorityLabel, Histogram>,
    by_priority: [Histogram; 4],
}

impl PriorityLatency {
    pub fn observe(&self, priority: Priority, seconds: f64) {
        self.by_priority[priority.index()].observe(seconds);
    }
}

impl Default for PriorityLatency {
    fn default() -> Self {
        let family = Family::<PriorityLabel, Histogram>::new_with_constructor(|| {
            // 50 µs to ~1.6 s.
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        });
        let by_priority = Priority::HIGHEST_FIRST.map(|p| {
            family
                .get_or_create(&vec![("priority", p.as_str())])
                .clone()
        });
        PriorityLatency {
            family,
            by_priority,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            published: PerPriority::default(),
            delivered: PerPriority::default(),
            dropped: PerPriority::default(),
            dead_lettered: PerPriority::default(),
            duplicates: AtomicU64::default(),
            rejected_busy: AtomicU64::default(),
            rejected_over_rate: AtomicU64::default(),
            protocol_errors: AtomicU64::default(),
            low_admission_rate: AtomicU64::default(),
            low_publish_pauses: AtomicU64::default(),
            low_admission_cuts_undone: AtomicU64::default(),
            connections: AtomicUsize::default(),
            connections_total: AtomicU64::default(),
            connections_refused: AtomicU64::default(),
            condition_errors: AtomicU64::default(),
            coalesced: AtomicU64::default(),
            dead_letters_evicted: AtomicU64::default(),
            router: RouterGauges::default(),
            commits: CommitHistograms::default(),
            families: TopicFamilies::default(),
            latency: PriorityLatency::default(),
            inbox_wait: PriorityLatency::default(),
        }
    }
}

/// One open connection, counted while it lives. Taken at upgrade; refused when the
/// limit is reached; released on drop, whatever way the session ends.
#[derive(Debug)]
pub struct ConnectionPermit {
    metrics: std::sync::Arc<Metrics>,
}

impl ConnectionPermit {
    pub fn acquire(metrics: &std::sync::Arc<Metrics>, max: usize) -> Option<ConnectionPermit> {
        let before = metrics.connections.fetch_add(1, Relaxed);
        if before >= max {
            metrics.connections.fetch_sub(1, Relaxed);
            metrics.connections_refused.fetch_add(1, Relaxed);
            return None;
        }
        metrics.connections_total.fetch_add(1, Relaxed);
        Some(ConnectionPermit {
            metrics: metrics.clone(),
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn topic_families_are_bounded() {
        let f = TopicFamilies::default();
        let task = f.get("task.created");
        assert!(Arc::ptr_eq(&task, &f.get("task.failed.retry")));
        for i in 1..MAX_TOPIC_FAMILIES {
            f.get(&format!("fam{i}.x"));
        }
        let late = f.get("late.comer");
        assert!(
            Arc::ptr_eq(&late, &f.get("another.late")),
            "both are `other`"
        );
        let names: Vec<String> = f.snapshot().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), MAX_TOPIC_FAMILIES + 1);
        assert_eq!(names.last().map(String::as_str), Some("other"));
        assert!(!names.iter().any(|n| n == "late"));
    }

    #[test]
    fn permits_are_bounded_and_released() {
        let m = Arc::new(Metrics::default());
        let a = ConnectionPermit::acquire(&m, 2).unwrap();
        let _b = ConnectionPermit::acquire(&m, 2).unwrap();
        assert!(ConnectionPermit::acquire(&m, 2).is_none());
        drop(a);
        assert!(ConnectionPermit::acquire(&m, 2).is_some());
        assert_eq!(m.connections_refused.load(Relaxed), 1);
    }
}

/// Per-second rates over a sliding window, from periodic samples of a counter.
#[derive(Debug)]
pub struct RateWindow {
    samples: std::collections::VecDeque<(Instant, u64)>,
    window: std::time::Duration,
}

impl RateWindow {
    pub fn new(window: std::time::Duration) -> Self {
        RateWindow {
            samples: std::collections::VecDeque::new(),
            window,
        }
    }

    /// Records the counter's value at `now`.
    pub fn sample(&mut self, now: Instant, value: u64) {
        self.samples.push_back((now, value));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Events per second between the oldest and newest sample in the window.
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, v0)), Some((t1, v1))) if t1 > t0 => {
                v1.saturating_sub(*v0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_over_window() {
        let t = Instant::now();
        let mut r = RateWindow::new(Duration::from_secs(10));
        assert_eq!(r.per_second(), 0.0);
        r.sample(t, 0);
        r.sample(t + Duration::from_secs(1), 100);
        r.sample(t + Duration::from_secs(2), 300);
        assert_eq!(r.per_second(), 150.0);
        // Samples older than the window fall out.
        r.sample(t + Duration::from_secs(13), 300);
        assert_eq!(r.per_second(), 0.0);
    }
}

/// Gauges the router refreshes every second, for `/metrics`.
#[derive(Debug, Default)]
pub struct RouterGauges {
    /// Committed events waiting to be routed, per priority.
    pub queue_depth: [AtomicU64; 4],
    pub subscriptions: AtomicU64,
    /// Deliveries awaiting an ack, over all subscriptions.
    pub in_flight: AtomicU64,
}

/// Histograms of the store's group commits.
#[derive(Debug, Clone)]
pub struct CommitHistograms {
    /// Events per commit.
    pub batch_size: prometheus_client::metrics::histogram::Histogram,
    /// Time from sending a batch to the store to its commit, in seconds.
    pub seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for CommitHistograms {
    fn default() -> Self {
        CommitHistograms {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

/// The Prometheus registry behind `GET /metrics`: the shared counters are read at
/// scrape time (they stay plain atomics on the hot path), the histograms are registered.
pub fn registry(metrics: Arc<Metrics>) -> prometheus_client::registry::Registry {
    let mut registry = prometheus_client::registry::Registry::with_prefix("switchyard");
    registry.register(
        "store_commit_batch_size",
        "Events stored per group commit",
        metrics.commits.batch_size.clone(),
    );
    registry.register(
        "store_commit_seconds",
        "Time from handing a batch to the store to its commit",
        metrics.commits.seconds.clone(),
    );
    registry.register(
        "publish_to_deliver_seconds",
        "Time from a publish being accepted to its first delivery being written to the \
         subscriber's connection (live events, attempt 1)",
        metrics.latency.family.clone(),
    );
    registry.register(
        "router_inbox_wait_seconds",
        "Time a publish waited in the router's inbox before the router took it, per \
         event: with `publish_to_deliver_seconds`, where an event's time goes",
        metrics.inbox_wait.family.clone(),
    );
    registry.register_collector(Box::new(Exporter { metrics }));
    registry
}

/// The process's resident set size (`VmRSS` in `/proc/self/status`); `None` where
/// there is no such file (not Linux).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Reads [`Metrics`] into the registry on each scrape.
#[derive(Debug)]
struct Exporter {
    metrics: Arc<Metrics>,
}

impl prometheus_client::collector::Collector for Exporter {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        let m = &self.metrics;
        for (name, help, counts) in [
            (
                "events_published",
                "Events accepted and stored",
                &m.published,
            ),
            (
                "events_delivered",
                "Event frames written to subscribers",
                &m.delivered,
            ),
            (
                "events_dropped",
                "Events dropped for slow subscribers",
                &m.dropped,
            ),
            (
                "events_dead_lettered",
                "Events dead-lettered",
                &m.dead_lettered,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in Priority::HIGHEST_FIRST {
                let labels = [("priority", p.as_str())];
                ConstCounter::new(counts.get(p)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in [
            (
                "events_duplicate",
                "Publishes of an id already seen",
                m.duplicates.load(Relaxed),
            ),
            (
                "publishes_rejected_busy",
                "Events refused with rate_limited: router queue or inbox full",
                m.rejected_busy.load(Relaxed),
            ),
            (
                "condition_errors",
                "Subscription conditions that failed to evaluate on an event (no match)",
                m.condition_errors.load(Relaxed),
            ),
            (
                "events_coalesced",
                "Events replaced by a later one with the same coalesce key",
                m.coalesced.load(Relaxed),
            ),
            (
                "dead_letters_evicted",
                "Oldest dead letters deleted to stay under store.max_dead_letters",
                m.dead_letters_evicted.load(Relaxed),
            ),
            (
                "publishes_rejected_over_rate",
                "Events refused with rate_limited: over the connection's publish rate",
                m.rejected_over_rate.load(Relaxed),
            ),
            (
                "protocol_errors",
                "Commands answered with an error",
                m.protocol_errors.load(Relaxed),
            ),
            (
                "low_publish_pauses",
                "Times a connection publishing only low events stopped reading because \
                 urgent events were late (limits.urgent_latency_target_us)",
                m.low_publish_pauses.load(Relaxed),
            ),
            (
                "low_admission_cuts_undone",
                "Times cutting the low-priority rate did not make urgent events less \
                 late, and the rate was given back",
                m.low_admission_cuts_undone.load(Relaxed),
            ),
            (
                "connections_opened",
                "WebSocket connections accepted",
                m.connections_total.load(Relaxed),
            ),
            (
                "connections_refused",
                "WebSocket upgrades refused at max_connections",
                m.connections_refused.load(Relaxed),
            ),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        {
            let mut by_family = encoder.encode_descriptor(
                "topic_family_events",
                "Events by topic family (first topic segment; `other` past the first 100 \
             families), what happened to them, and priority",
                None,
                MetricType::Counter,
            )?;
            for (family, counters) in m.families.snapshot() {
                for (event, counts) in [
                    ("published", &counters.published),
                    ("delivered", &counters.delivered),
                    ("dropped", &counters.dropped),
                    ("dead_lettered", &counters.dead_lettered),
                ] {
                    for p in Priority::HIGHEST_FIRST {
                        let n = counts.get(p);
                        if n == 0 {
                            continue;
                        }
                        let labels = [
                            ("family", family.as_str()),
                            ("event", event),
                            ("priority", p.as_str()),
                        ];
                        ConstCounter::new(n).encode(by_family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let mut depth = encoder.encode_descriptor(
            "queue_depth",
            "Committed events waiting to be routed",
            None,
            MetricType::Gauge,
        )?;
        for p in Priority::HIGHEST_FIRST {
            let labels = [("priority", p.as_str())];
            let value = m.router.queue_depth[p.index()].load(Relaxed) as i64;
            ConstGauge::new(value).encode(depth.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "connections",
                "Open WebSocket connections",
                m.connections.load(Relaxed) as u64,
            ),
            (
                "subscriptions",
                "Live subscriptions",
                m.router.subscriptions.load(Relaxed),
            ),
            (
                "acks_in_flight",
                "Deliveries awaiting an ack",
                m.router.in_flight.load(Relaxed),
            ),
            (
                "low_admission_rate",
                "Low events per second admitted while urgent events are late; 0: no limit",
                m.low_admission_rate.load(Relaxed),
            ),
        ] {
            ConstGauge::new(value as i64).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(bytes) = resident_memory_bytes() {
            ConstGauge::new(bytes as i64).encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the server process (Linux only)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}
