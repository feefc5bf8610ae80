//! Low-priority admission under overload. While critical and high events reach their
//! subscribers later than `limits.urgent_latency_target_us` after the router accepted
//! them, the connections that publish only low events are read more slowly, so the
//! CPU their events would take goes to the urgent ones (docs/architecture.md,
//! "Overload"; docs/benchmarks.md, scenario 4).
//!
//! Owns: the admitted rate of low events (an AIMD controller fed with the
//! accept-to-write latency of urgent deliveries) and the token bucket that applies it.
//! Must not: refuse, drop or reorder an event. A throttled publisher's frames wait in
//! its socket (TCP backpressure) and are read later: low events queue, none is lost.
//!
//! The control loop, once per [`WINDOW`]:
//! - more than 1 % of the urgent deliveries in the window were late: the low rate drops
//!   to 3/4 of what it was (of what was admitted, the first time), not below
//!   `limits.low_rate_floor_per_sec`;
//! - urgent deliveries were all (but 1 %) on time: the rate grows by 5 % a window, by
//!   1 % once within 5 % of the rate of the last cut (where lateness began), and the
//!   limit is lifted past twice that rate;
//! - no urgent delivery for [`QUIET`]: the limit is lifted. With no critical or high
//!   traffic nothing is throttled, however busy the server is.
//!
//! The signal starts at the router's accept, so it misses the time a frame waits to be
//! read; that wait shrinks with the same cure (fewer low frames to read).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::protocol::{EncodedEvent, Event};
use crate::routing::{Priority, SubscriptionSpec};

/// How often the low rate is adjusted.
pub const WINDOW: Duration = Duration::from_millis(100);
/// How long without an urgent delivery before the limit is lifted.
pub const QUIET: Duration = Duration::from_secs(1);
/// The longest single pause of a publisher: the commands it sends meanwhile (pings
/// too) wait in its socket; its deliveries and replies do not.
pub const MAX_PAUSE: Duration = Duration::from_millis(100);
/// Tokens the bucket holds at most, in seconds of the current rate.
const BURST: f64 = 0.02;
const DECREASE: f64 = 0.75;
/// Growth per on-time window while well below the rate of the last cut ...
const INCREASE: f64 = 1.05;
/// ... and near or above it, where the last cut says lateness begins.
const PROBE: f64 = 1.01;

/// The controller and its bucket, one per server, shared by every session.
#[derive(Debug)]
pub struct LowAdmission {
    /// Late urgent deliveries are those over this; `None`: the controller is off.
    target: Option<Duration>,
    floor: f64,
    metrics: Arc<Metrics>,
    /// Since when `last_urgent_us` counts.
    epoch: Instant,
    /// Urgent first deliveries in the current window, and how many of them were late.
    urgent: AtomicU64,
    late: AtomicU64,
    /// The last urgent delivery, µs after `epoch`.
    last_urgent_us: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    /// Low events admitted per second; `None`: no limit.
    rate: Option<f64>,
    /// May go below zero: a publish takes all its events' tokens at once, and its
    /// connection then pauses until the debt is paid.
    tokens: f64,
    refilled: Instant,
    /// The rate the last cut was made from.
    cut_from: f64,
    /// Low events admitted in the current window, and when the first of them was:
    /// the rate they came at leaves out a quiet start (a window is ended by the next
    /// low publish, so the first one after a pause spans the pause).
    admitted: u64,
    first_admitted: Option<Instant>,
}

impl LowAdmission {
    pub fn new(limits: &LimitsConfig, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        LowAdmission {
            target: (limits.urgent_latency_target_us > 0)
                .then(|| Duration::from_micros(limits.urgent_latency_target_us)),
            floor: f64::from(limits.low_rate_floor_per_sec.max(1)),
            metrics,
            epoch: now,
            urgent: AtomicU64::new(0),
            late: AtomicU64::new(0),
            last_urgent_us: AtomicU64::new(0),
            state: Mutex::new(State {
                window_start: now,
                rate: None,
                tokens: 0.0,
                refilled: now,
                cut_from: 0.0,
                admitted: 0,
                first_admitted: None,
            }),
        }
    }

    /// Session: `event`'s first live delivery was written to a subscription of `spec`.
    /// Only critical and high events count, and only on subscriptions that deliver
    /// them at once (`SubscriptionSpec::delivers_at_once`).
    pub fn observe(&self, event: &EncodedEvent, spec: &SubscriptionSpec) {
        if self.target.is_some()
            && event.event.priority >= Priority::High
            && spec.delivers_at_once()
        {
            self.record(event.accepted_at, Instant::now());
        }
    }

    /// An urgent first delivery, written at `now`.
    fn record(&self, accepted: Instant, now: Instant) {
        let Some(target) = self.target else { return };
        self.urgent.fetch_add(1, Relaxed);
        if now.saturating_duration_since(accepted) > target {
            self.late.fetch_add(1, Relaxed);
        }
        let at = now.saturating_duration_since(self.epoch).as_micros() as u64;
        self.last_urgent_us.fetch_max(at, Relaxed);
    }

    /// A publish of `events` (a WebSocket session's, or an HTTP `POST /api/events`):
    /// takes a token per low event, and says how long its publisher should wait before
    /// the next one when low events are being throttled, the bucket is in debt and
    /// every event of this publish is low (one with another priority never waits: it
    /// may carry an urgent event).
    /// Every wait it returns is counted in `low_publish_pauses`: the caller waits.
    pub fn admit_events(&self, events: &[Event]) -> Option<Duration> {
        let low = events
            .iter()
            .filter(|e| e.priority == Priority::Low)
            .count();
        let pause = self
            .admit(low, Instant::now())
            .filter(|_| low == events.len())?;
        self.metrics.low_publish_pauses.fetch_add(1, Relaxed);
        Some(pause)
    }

    /// Takes `low` tokens at `now`; when low events are being throttled and the bucket
    /// is in debt, how long until it is paid.
    fn admit(&self, low: usize, now: Instant) -> Option<Duration> {
        self.target?;
        if low == 0 {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(state.window_start) >= WINDOW {
            self.adjust(&mut state, now);
        }
        state.admitted += low as u64;
        state.first_admitted.get_or_insert(now);
        let rate = state.rate?;
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.refilled = now;
        state.tokens = (state.tokens + elapsed * rate).min((rate * BURST).max(1.0));
        state.tokens -= low as f64;
        if state.tokens >= 0.0 {
            return None;
        }
        let debt = (-state.tokens / rate).min(MAX_PAUSE.as_secs_f64());
        Some(Duration::try_from_secs_f64(debt).unwrap_or(MAX_PAUSE))
    }

    /// Ends the window: the control loop of the module docs.
    fn adjust(&self, state: &mut State, now: Instant) {
        let secs = now
            .saturating_duration_since(state.window_start)
            .as_secs_f64();
        state.window_start = now;
        let urgent = self.urgent.swap(0, Relaxed);
        let late = self.late.swap(0, Relaxed);
        let admitted = std::mem::take(&mut state.admitted) as f64;
        let admitting = state.first_admitted.take().map_or(secs, |first| {
            now.saturating_duration_since(first).as_secs_f64()
        });
        let since_urgent = now.saturating_duration_since(
            self.epoch + Duration::from_micros(self.last_urgent_us.load(Relaxed)),
        );
        state.rate = if since_urgent >= QUIET {
            None
        } else if late * 100 > urgent && (state.rate.is_some() || admitted > 0.0) {
            let current = state
                .rate
                .unwrap_or(admitted / admitting.max(WINDOW.as_secs_f64() / 10.0));
            state.cut_from = current;
            let rate = (current * DECREASE).max(self.floor);
            if state.rate.is_none() {
                // The bucket starts full.
                state.tokens = rate * BURST;
                state.refilled = now;
            }
            Some(rate)
        } else if urgent > 0 {
            // Twice the rate lateness began at: the limit no longer says anything
            // (the flood is gone, or the machine got faster); lift it.
            let (near, far) = (state.cut_from * 0.95, state.cut_from * 2.0);
            state
                .rate
                .map(|r| if r < near { r * INCREASE } else { r * PROBE })
                .filter(|r| *r <= far)
        } else {
            state.rate
        };
        let gauge = state.rate.map_or(0, |r| r as u64);
        self.metrics.low_admission_rate.store(gauge, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn admission(target_us: u64, floor: u32) -> LowAdmission {
        let mut limits = crate::Config::defaults().limits;
        limits.urgent_latency_target_us = target_us;
        limits.low_rate_floor_per_sec = floor;
        LowAdmission::new(&limits, Arc::new(Metrics::default()))
    }

    fn rate(a: &LowAdmission) -> Option<f64> {
        a.state.lock().unwrap().rate
    }

    /// An urgent first delivery written at `at`, `latency` after the router accepted
    /// the event.
    fn deliver(a: &LowAdmission, at: Instant, latency: Duration) {
        a.record(at - latency, at);
    }

    /// Through `observe`: a first live delivery of a `priority` event accepted `latency`
    /// ago, to a subscription `subscription` (PROTOCOL.md JSON).
    fn written(a: &LowAdmission, priority: &str, latency: Duration, subscription: Value) {
        let event = Event::from_json(json!({"type": "t", "priority": priority}), "svc")
            .expect("valid event");
        let mut event = EncodedEvent::new(event);
        Arc::get_mut(&mut event).expect("fresh").accepted_at = Instant::now() - latency;
        let spec = SubscriptionSpec::from_json(subscription).expect("valid subscription");
        a.observe(&event, &spec);
    }

    fn all() -> Value {
        json!({"type": "all"})
    }

    /// 1,000 low events in the first window, a late urgent delivery, and the window's
    /// end: a cut from 10,000/s to 7,500/s. Returns when the window ended.
    fn cut_from_10k(a: &LowAdmission) -> Instant {
        let t0 = a.epoch;
        a.admit(1000, t0);
        deliver(a, t0 + ON_TIME, LATE);
        a.admit(1, t0 + WINDOW);
        t0 + WINDOW
    }

    /// One more window after `t` with an on-time urgent delivery; returns its end.
    fn on_time_window(a: &LowAdmission, t: Instant) -> Instant {
        let end = t + WINDOW;
        deliver(a, end - ON_TIME, ON_TIME);
        a.admit(1, end);
        end
    }

    const LATE: Duration = Duration::from_millis(10);
    const ON_TIME: Duration = Duration::from_micros(100);

    #[test]
    fn nothing_is_throttled_without_urgent_traffic() {
        let a = admission(2000, 1000);
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(a.admit(10_000, t0 + WINDOW * i), None);
        }
        assert_eq!(rate(&a), None);
    }

    #[test]
    fn off_when_the_target_is_zero() {
        let a = admission(0, 1000);
        written(&a, "critical", LATE, all());
        let t0 = Instant::now();
        assert_eq!(a.admit(100, t0), None);
        assert_eq!(a.admit(100_000, t0 + WINDOW * 2), None);
        assert_eq!(rate(&a), None);
    }

    #[test]
    fn late_urgent_deliveries_cut_the_low_rate_to_three_quarters_of_what_was_admitted() {
        let a = admission(2000, 1000);
        let t0 = a.epoch;
        // 10,000 low events in the first window (100,000/s), then late critical ones.
        a.admit(10_000, t0);
        for _ in 0..10 {
            deliver(&a, t0 + ON_TIME, LATE);
        }
        assert_eq!(a.admit(1, t0 + WINDOW), None, "the bucket starts full");
        let r = rate(&a).expect("limited");
        assert!((74_000.0..=76_000.0).contains(&r), "{r}");
        assert_eq!(a.metrics.low_admission_rate.load(Relaxed), r as u64);
    }

    #[test]
    fn the_first_cut_is_from_the_rate_low_events_came_at() {
        let a = admission(2000, 1000);
        let t0 = a.epoch;
        // Late urgent deliveries before any low event: no rate to cut from yet.
        deliver(&a, t0 + ON_TIME, LATE);
        a.admit(1000, t0 + Duration::from_millis(900));
        assert_eq!(rate(&a), None);
        // 2,000 low events in the 100 ms since: 20,000/s.
        a.admit(1000, t0 + Duration::from_millis(950));
        deliver(&a, t0 + Duration::from_millis(960), LATE);
        a.admit(1, t0 + Duration::from_millis(1000));
        assert_eq!(rate(&a), Some(15_000.0));
    }

    #[test]
    fn a_publisher_in_debt_is_told_how_long_to_wait() {
        let a = admission(2000, 1000);
        let t = cut_from_10k(&a);
        // At 7,500/s a full bucket holds 150 (20 ms), 1 of them taken by the cut's
        // publish; 750 events leave a debt of 601, 80.13 ms at that rate.
        let wait = a.admit(750, t).expect("in debt");
        assert_eq!(wait.as_micros(), 80_133);
        // 100 ms later the debt is paid.
        assert_eq!(a.admit(1, t + MAX_PAUSE), None);
    }

    #[test]
    fn on_time_deliveries_raise_the_rate_and_quiet_lifts_it() {
        let a = admission(2000, 1000);
        let mut t = cut_from_10k(&a);
        let mut r = rate(&a).expect("limited");
        assert_eq!(r, 7500.0);
        // Then 5 % a window up to near the rate it was cut from, 1 % from there.
        for _ in 0..10 {
            t = on_time_window(&a, t);
            let step = if r < 9500.0 { INCREASE } else { PROBE };
            let next = rate(&a).expect("limited");
            assert!((next - r * step).abs() < 1e-6, "{r} -> {next}");
            r = next;
        }
        assert!(r > 10_000.0, "{r}");
        // A window with no urgent delivery keeps the rate ...
        a.admit(1, t + WINDOW);
        assert_eq!(rate(&a), Some(r));
        // ... and a quiet second lifts it.
        a.admit(1, t + QUIET);
        assert_eq!(rate(&a), None);
        assert_eq!(a.metrics.low_admission_rate.load(Relaxed), 0);
    }

    #[test]
    fn a_rate_grown_past_twice_the_last_cut_is_lifted() {
        let a = admission(2000, 1000);
        let mut t = cut_from_10k(&a);
        let mut windows = 0;
        while rate(&a).is_some() {
            t = on_time_window(&a, t);
            windows += 1;
            assert!(windows < 1000, "never lifted");
        }
        // From 7,500/s: 5 % a window to 9,500/s, then 1 % a window to 20,000/s.
        assert!((70..=80).contains(&windows), "{windows}");
    }

    #[test]
    fn one_late_delivery_in_a_hundred_is_tolerated_and_the_floor_holds() {
        let a = admission(2000, 5000);
        let t0 = a.epoch;
        a.admit(100, t0);
        deliver(&a, t0 + ON_TIME, LATE);
        for _ in 0..99 {
            deliver(&a, t0 + ON_TIME, ON_TIME);
        }
        a.admit(1, t0 + WINDOW);
        assert_eq!(rate(&a), None, "1 % late is within the target");
        for i in 2..40 {
            deliver(&a, t0 + WINDOW * (i - 1) + ON_TIME, LATE);
            a.admit(1, t0 + WINDOW * i);
        }
        assert_eq!(rate(&a), Some(5000.0));
    }

    #[test]
    fn normal_and_low_deliveries_are_not_a_signal() {
        let a = admission(2000, 1000);
        let t0 = a.epoch;
        a.admit(1000, t0);
        written(&a, "normal", LATE, all());
        written(&a, "low", LATE, all());
        a.admit(1, t0 + WINDOW);
        assert_eq!(rate(&a), None);
    }

    #[test]
    fn deliveries_that_wait_by_design_are_not_a_signal() {
        let a = admission(2000, 1000);
        let t0 = a.epoch;
        a.admit(1000, t0);
        written(&a, "critical", LATE, json!({"type": "all", "ack": true}));
        written(
            &a,
            "critical",
            LATE,
            json!({"type": "all", "from_cursor": 0}),
        );
        a.admit(1, t0 + WINDOW);
        assert_eq!(rate(&a), None);
        // The same lateness on a plain subscription is.
        written(&a, "critical", LATE, all());
        a.admit(1, t0 + WINDOW * 2);
        assert!(rate(&a).is_some());
    }
}
