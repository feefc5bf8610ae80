//! Counters shared by the whole server: lock-free atomics, written on the hot path and
//! read by `/api/stats` and, through [`registry`], by `/metrics`; and the latency
//! histograms behind `/metrics`.
//!
//! Owns: the numbers, and the open-connection count that [`ConnectionPermit`] holds to
//! `max_connections`. Must not: decide anything else; everyone else only adds to them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::protocol::EncodedEvent;
use crate::protocol::Priority;

mod export;
mod rate;
pub mod sources;

pub use export::registry;
pub use rate::RateWindow;

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
    /// Dead letters not stored: their connection was over `limits.dead_letters_per_sec`.
    pub dead_letters_shed: AtomicU64,
    /// Connections the delivery workers hold state for (`/metrics`): live ones that
    /// were ever delivered to; a closed one is let go when it closes.
    pub delivery_sessions: AtomicU64,
    pub router: RouterGauges,
    pub commits: CommitHistograms,
    /// The shared log (cluster mode); untouched on a single node.
    pub cluster: ClusterMetrics,
    /// Per topic family (first topic segment) counters.
    pub families: TopicFamilies,
    /// Publish-to-deliver latency of first deliveries, by priority.
    pub latency: PriorityLatency,
    /// Time publishes waited in the router's inbox, by priority.
    pub inbox_wait: PriorityLatency,
    /// The configured event sources (`[[sources]]`).
    pub sources: sources::SourceBoard,
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

    /// A frame written to a subscriber at `now`; `first` (attempt 1 of a live event)
    /// also records its publish-to-deliver latency. The caller reads the clock once for
    /// all the frames it writes in one go: a clock read per frame was a visible share of
    /// a fan-out's writing.
    pub fn count_delivered(&self, event: &EncodedEvent, first: bool, now: std::time::Instant) {
        let p = event.event.priority;
        self.delivered.add(p, 1);
        self.family_of(event).delivered.add(p, 1);
        if first {
            let latency = now.saturating_duration_since(event.accepted_at);
            self.latency.observe(p, latency.as_secs_f64());
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
            dead_letters_shed: AtomicU64::default(),
            delivery_sessions: AtomicU64::default(),
            router: RouterGauges::default(),
            commits: CommitHistograms::default(),
            cluster: ClusterMetrics::default(),
            families: TopicFamilies::default(),
            latency: PriorityLatency::default(),
            inbox_wait: PriorityLatency::default(),
            sources: sources::SourceBoard::default(),
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

/// Gauges the router refreshes every second, for `/metrics`.
#[derive(Debug, Default)]
pub struct RouterGauges {
    /// Committed events waiting to be routed, per priority.
    pub queue_depth: [AtomicU64; 4],
    pub subscriptions: AtomicU64,
    /// Deliveries awaiting an ack, over all subscriptions.
    pub in_flight: AtomicU64,
}

/// The shared log as this node sees it (cluster mode).
#[derive(Debug)]
pub struct ClusterMetrics {
    /// This node is in cluster mode: `/metrics` shows the series below.
    pub enabled: std::sync::atomic::AtomicBool,
    /// 1 while the log tail's last request to Redis succeeded.
    pub log_reachable: AtomicU64,
    /// Events in the log this node's tail has not read yet (at its last look).
    pub tail_lag: AtomicU64,
    /// Times this node fell behind the log's retention and closed its subscriptions.
    pub tail_lagged: AtomicU64,
    /// Times the log's highest cursor was found below one this node had read (a Redis
    /// failover lost its newest events).
    pub cursor_regressions: AtomicU64,
    /// Round trip of the tail's reads that returned events, in seconds.
    pub tail_read_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            enabled: std::sync::atomic::AtomicBool::new(false),
            log_reachable: AtomicU64::new(0),
            tail_lag: AtomicU64::new(0),
            tail_lagged: AtomicU64::new(0),
            cursor_regressions: AtomicU64::new(0),
            tail_read_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        }
    }
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
