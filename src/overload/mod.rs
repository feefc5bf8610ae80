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
//! Cuts are judged too (`Level`): once enough urgent deliveries were measured at half
//! the rate cutting started from or lower, they must have been late half as often as
//! there. If not, the lateness is not the low events' doing (a machine busy with other
//! work, stalls, a target below what it achieves unloaded): the rate goes back to where
//! cutting started and no late window cuts for [`HOLD`]. Without this, such lateness
//! would pin the low rate to the floor while helping no urgent event.
//!
//! The signal starts at the router's accept, so it misses the time a frame waits to be
//! read; that wait shrinks with the same cure (fewer low frames to read). In cluster
//! mode the other nodes' urgent deliveries count too ([`LowAdmission::add_remote`]).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::protocol::Priority;
use crate::protocol::{EncodedEvent, Event};
use crate::routing::SubscriptionSpec;

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
/// Windows the lateness of a rate level is measured over before the first cut from it.
const RECENT: usize = 10;
/// Urgent deliveries measured at half a level or lower before cutting is judged (a
/// verdict on fewer would be noise).
const EVIDENCE: u64 = 500;
/// How long cuts stay off once they were found not to help.
pub const HOLD: Duration = Duration::from_secs(1);

/// The controller and its bucket, one per server: the ingress admits every publish
/// through it, and sessions report their urgent deliveries to it.
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
    /// Urgent deliveries and late ones made by this node since it started (cluster
    /// mode shares them: [`LowAdmission::add_remote`]).
    urgent_total: AtomicU64,
    late_total: AtomicU64,
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
    /// Urgent deliveries and late ones in each of the last [`RECENT`] windows.
    recent: std::collections::VecDeque<(u64, u64)>,
    /// The rate cutting started from and how late urgent deliveries were there.
    level: Option<Level>,
    /// Until when late windows do not cut (cutting was found not to help).
    hold_until: Option<Instant>,
}

/// A rate the low events were cut from, to judge whether cutting helps: the windows
/// at half of it or lower must be late half as often, or the lateness is not the low
/// events' doing. Queueing makes lateness grow much faster than load, so a cause
/// halves it easily.
#[derive(Debug, Clone, Copy)]
struct Level {
    rate: f64,
    /// Share of urgent deliveries that were late at this rate.
    late: f64,
    /// Urgent deliveries, and late ones, in windows at half of `rate` or lower.
    below: (u64, u64),
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
            urgent_total: AtomicU64::new(0),
            late_total: AtomicU64::new(0),
            state: Mutex::new(State {
                window_start: now,
                rate: None,
                tokens: 0.0,
                refilled: now,
                cut_from: 0.0,
                admitted: 0,
                first_admitted: None,
                recent: std::collections::VecDeque::with_capacity(RECENT + 1),
                level: None,
                hold_until: None,
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
        let late = u64::from(now.saturating_duration_since(accepted) > target);
        self.urgent_total.fetch_add(1, Relaxed);
        self.late_total.fetch_add(late, Relaxed);
        self.count(1, late, now);
    }

    fn count(&self, urgent: u64, late: u64, now: Instant) {
        self.urgent.fetch_add(urgent, Relaxed);
        self.late.fetch_add(late, Relaxed);
        let at = now.saturating_duration_since(self.epoch).as_micros() as u64;
        self.last_urgent_us.fetch_max(at, Relaxed);
    }

    /// Urgent deliveries and late ones this node made since it started.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.urgent_total.load(Relaxed),
            self.late_total.load(Relaxed),
        )
    }

    /// Urgent deliveries other nodes of the cluster made since the last call: they
    /// count as this node's own, so that a low flood published here slows down when
    /// urgent events are late on another node (they wait behind it in the shared log).
    pub fn add_remote(&self, urgent: u64, late: u64) {
        if self.target.is_some() && urgent > 0 {
            self.count(urgent, late, Instant::now());
        }
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
        state.recent.push_back((urgent, late));
        if state.recent.len() > RECENT {
            state.recent.pop_front();
        }
        if let (Some(level), Some(rate)) = (state.level.as_mut(), state.rate) {
            if rate <= level.rate / 2.0 {
                level.below.0 += urgent;
                level.below.1 += late;
            }
        }
        let holding = state.hold_until.is_some_and(|until| now < until);
        state.rate = if since_urgent >= QUIET {
            state.level = None;
            None
        } else if late * 100 > urgent && (state.rate.is_some() || admitted > 0.0) {
            let current = state
                .rate
                .unwrap_or(admitted / admitting.max(WINDOW.as_secs_f64() / 10.0));
            if holding {
                Some(current)
            } else {
                self.cut(state, current, now)
            }
        } else if urgent > 0 {
            // Twice the rate lateness began at: the limit no longer says anything
            // (the flood is gone, or the machine got faster); lift it.
            let (near, far) = (state.cut_from * 0.95, state.cut_from * 2.0);
            let rate = state
                .rate
                .map(|r| if r < near { r * INCREASE } else { r * PROBE })
                .filter(|r| *r <= far);
            if state
                .level
                .is_some_and(|l| rate.is_none_or(|r| r >= l.rate))
            {
                // Back where cutting started (or lifted): the next cut starts a new level.
                state.level = None;
            }
            rate
        } else {
            state.rate
        };
        let gauge = state.rate.map_or(0, |r| r as u64);
        self.metrics.low_admission_rate.store(gauge, Relaxed);
    }

    /// A late window at `current`: the new rate. Once [`EVIDENCE`] urgent deliveries
    /// were measured at half the level cutting started at or lower, it judges whether
    /// cutting helped (see [`Level`]): if it did, the current rate is the next level;
    /// if not, the rate goes back to the level (measured as late as the rates below
    /// it) and cuts stay off for [`HOLD`]. Going back only half way would ratchet:
    /// the next verdict would find half of that no better, and so on to the floor.
    fn cut(&self, state: &mut State, current: f64, now: Instant) -> Option<f64> {
        let (urgent, late) = state
            .recent
            .iter()
            .fold((0, 0), |(u, l), (wu, wl)| (u + wu, l + wl));
        let recent_late = late as f64 / urgent.max(1) as f64;
        let level = *state.level.get_or_insert(Level {
            rate: current,
            late: recent_late,
            below: (0, 0),
        });
        if level.below.0 >= EVIDENCE {
            let below_late = level.below.1 as f64 / level.below.0 as f64;
            log::debug!(
                "low admission: {:.1} % of urgent deliveries late at {:.0}/s, {:.1} % at \
                 {:.0}/s or less",
                level.late * 100.0,
                level.rate,
                below_late * 100.0,
                level.rate / 2.0
            );
            if below_late > 0.0 && below_late * 2.0 >= level.late {
                // Half the low events or fewer did not halve the lateness. (None late
                // down there: cutting did its work, whatever this window says.)
                state.level = None;
                state.hold_until = Some(now + HOLD);
                state.cut_from = level.rate;
                self.metrics.low_admission_cuts_undone.fetch_add(1, Relaxed);
                return Some(level.rate);
            }
            state.level = Some(Level {
                rate: current,
                late: below_late,
                below: (0, 0),
            });
        }
        state.cut_from = current;
        let rate = (current * DECREASE).max(self.floor);
        if state.rate.is_none() {
            // The bucket starts full.
            state.tokens = rate * BURST;
            state.refilled = now;
        }
        Some(rate)
    }
}

#[cfg(test)]
mod tests;
