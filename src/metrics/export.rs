//! `GET /metrics`: the Prometheus (OpenMetrics) registry over the shared counters.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::Metrics;
use crate::protocol::Priority;

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
        "cluster_tail_read_seconds",
        "Cluster mode: round trip of the log tail's reads from Redis that returned events",
        metrics.cluster.tail_read_seconds.clone(),
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

/// CPU time the process has used so far, every thread, user and system.
#[cfg(target_os = "linux")]
fn cpu_seconds() -> Option<f64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Some(t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

#[cfg(not(target_os = "linux"))]
fn cpu_seconds() -> Option<f64> {
    None
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
                "dead_letters_shed",
                "Dead letters not stored: their connection was over limits.dead_letters_per_sec",
                m.dead_letters_shed.load(Relaxed),
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
            counter(&mut encoder, name, help, value)?;
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
                "delivery_sessions",
                "Connections the delivery workers hold state for",
                m.delivery_sessions.load(Relaxed),
            ),
            (
                "low_admission_rate",
                "Low events per second admitted while urgent events are late; 0: no limit",
                m.low_admission_rate.load(Relaxed),
            ),
        ] {
            gauge(&mut encoder, name, help, value)?;
        }
        let cluster = &m.cluster;
        if cluster.enabled.load(Relaxed) {
            gauge(
                &mut encoder,
                "cluster_log_reachable",
                "1 while the log tail's last request to Redis succeeded",
                cluster.log_reachable.load(Relaxed),
            )?;
            gauge(
                &mut encoder,
                "cluster_tail_lag_events",
                "Events in the shared log this node has not read yet",
                cluster.tail_lag.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "cluster_tail_lagged",
                "Times this node fell behind the log's retention and closed its subscriptions",
                cluster.tail_lagged.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "cluster_cursor_regressions",
                "Times the log's highest cursor was below one this node had read",
                cluster.cursor_regressions.load(Relaxed),
            )?;
        }
        encode_sources(&mut encoder, m)?;
        if let Some(bytes) = resident_memory_bytes() {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory of the server process (Linux only)",
                bytes,
            )?;
        }
        if let Some(secs) = cpu_seconds() {
            let descriptor = encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time the server process has used, user and system (Linux only)",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(secs).encode(descriptor)?;
        }
        Ok(())
    }
}

/// Per source (`[[sources]]`): `source_up`, `source_lag`, `source_events_published`,
/// `source_skipped`, each labelled with the source's name.
fn encode_sources(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    m: &Metrics,
) -> Result<(), std::fmt::Error> {
    use super::sources::{SourceState, SourceStatus};
    use prometheus_client::metrics::MetricType;

    let sources = m.sources.snapshot();
    if sources.is_empty() {
        return Ok(());
    }
    type Value = fn(&SourceStatus) -> u64;
    let families: [(&str, &str, MetricType, Value); 4] = [
        (
            "source_up",
            "1 while the event source reads and publishes",
            MetricType::Gauge,
            |s| u64::from(s.state() == SourceState::Running),
        ),
        (
            "source_lag",
            "What an event source has seen but not published: outbox rows (sqlite) or \
             bytes (file)",
            MetricType::Gauge,
            |s| s.lag.load(Relaxed),
        ),
        (
            "source_events_published",
            "Events an event source published",
            MetricType::Counter,
            |s| s.published.load(Relaxed),
        ),
        (
            "source_skipped",
            "Changes or lines an event source skipped as unusable (logged)",
            MetricType::Counter,
            |s| s.skipped.load(Relaxed),
        ),
    ];
    for (name, help, kind, value) in families {
        use prometheus_client::encoding::EncodeMetric;
        let is_counter = matches!(kind, MetricType::Counter);
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for s in &sources {
            let labels = [("source", s.name.as_str())];
            let at = family.encode_family(&labels)?;
            if is_counter {
                prometheus_client::metrics::counter::ConstCounter::new(value(s)).encode(at)?;
            } else {
                prometheus_client::metrics::gauge::ConstGauge::new(value(s) as i64).encode(at)?;
            }
        }
    }
    Ok(())
}

/// One counter without labels.
fn counter(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    let descriptor = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    prometheus_client::metrics::counter::ConstCounter::new(value).encode(descriptor)
}

/// One gauge without labels.
fn gauge(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    let descriptor = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    prometheus_client::metrics::gauge::ConstGauge::new(value as i64).encode(descriptor)
}
