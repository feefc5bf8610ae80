//! The log tail (cluster mode): one thread per node that reads the shared log in cursor
//! order and hands each batch to the router as [`Tailed`]. Every event this node routes
//! comes this way, its own publishes included (`router/commit.rs` says why).
//!
//! Out of it: [`Tailed`] and [`LogInterrupted`] to the router. Into it: nothing; it
//! stops when its stop flag is set or the router is gone. On each cluster beat it also
//! registers this node and refreshes the [`ClusterView`] that `/api/cluster` shows;
//! every overload window it trades urgent-delivery counts with the other nodes
//! ([`RemoteUrgency`]), so that a low flood published here slows down when urgent
//! events are late on another node.
//!
//! A thread of its own, not an actor on a shared arbiter: a read blocks in Redis for up
//! to `BLOCK` waiting for new events, and the connection it blocks on is its own.
//! Must not: route, number or store events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::router::{LogInterrupted, Router, Tailed};
use crate::metrics::Metrics;
use crate::overload::{LowAdmission, WINDOW};
use crate::store::redis::nodes::{NodeInfo, Nodes};
use crate::store::redis::tail::Tail;
use crate::store::redis::RedisOptions;
use crate::store::StoreError;

/// How long one read waits in Redis for new events.
const BLOCK: Duration = Duration::from_millis(500);
/// Waits between attempts while Redis cannot be reached, doubling up to the second.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MOST: Duration = Duration::from_secs(1);
/// How often the tail asks again while the router's queue is full.
const FULL_POLL: Duration = Duration::from_millis(2);

/// Where the tail stands against the log after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The read starts right after the last cursor read, or only skips cursors
    /// the log never held (an imported log keeps its old gaps).
    InOrder,
    /// Events after the last cursor read were trimmed before this node read them.
    Lagged,
}

/// Did the tail miss events? `after` is the last cursor it read, `read_first` the first
/// cursor of the new read, `log_first` the oldest cursor the log still holds.
pub fn continuity(after: u64, read_first: u64, log_first: Option<u64>) -> Continuity {
    let skipped = read_first > after + 1;
    let trimmed_past = log_first.is_some_and(|first| first > after + 1);
    if skipped && trimmed_past {
        Continuity::Lagged
    } else {
        Continuity::InOrder
    }
}

/// The live nodes of the cluster as of the last beat (`/api/cluster`).
#[derive(Debug, Default)]
pub struct ClusterView {
    nodes: RwLock<Vec<NodeInfo>>,
}

impl ClusterView {
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.read().map(|n| n.clone()).unwrap_or_default()
    }

    fn set(&self, nodes: Vec<NodeInfo>) {
        if let Ok(mut known) = self.nodes.write() {
            *known = nodes;
        }
    }
}

/// Other nodes' urgent deliveries (and late ones), from the running totals each node
/// shares: what is new since the last look.
#[derive(Debug, Default)]
pub struct RemoteUrgency {
    seen: HashMap<String, (u64, u64)>,
}

impl RemoteUrgency {
    /// The urgent deliveries and late ones of every node but `me` since the last call.
    /// A node seen for the first time, or whose totals went down (it restarted),
    /// counts from its current totals on.
    pub fn fold(&mut self, me: &str, totals: Vec<(String, u64, u64)>) -> (u64, u64) {
        let mut new = (0, 0);
        for (node, urgent, late) in totals {
            if node == me {
                continue;
            }
            if let Some((u, l)) = self.seen.insert(node, (urgent, late)) {
                if urgent >= u && late >= l {
                    new = (new.0 + urgent - u, new.1 + late - l);
                }
            }
        }
        new
    }
}

/// What the tail needs besides the router.
pub struct TailSettings {
    pub options: RedisOptions,
    /// Events per read (`cluster.tail_batch`).
    pub batch: usize,
    /// `cluster.heartbeat_ms`.
    pub beat: Duration,
    /// This node, as registered on every beat.
    pub node: NodeInfo,
    /// The log's epoch when this node joined it (`RedisStore::epoch`).
    pub epoch: String,
    /// `router.max_queued_events`: the tail stops reading while the router holds this many.
    pub max_queued: usize,
    /// This node's overload control, fed with the other nodes' urgent deliveries.
    pub admission: Arc<LowAdmission>,
}

/// The running tail; [`LogTail::stop`] ends it.
pub struct LogTail {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogTail {
    /// Starts reading after cursor `after` (the log's last cursor when the router
    /// started: the router has queued nothing above it).
    pub fn start(
        settings: TailSettings,
        after: u64,
        router: Addr<Router>,
        metrics: Arc<Metrics>,
        view: Arc<ClusterView>,
    ) -> Result<LogTail, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let nodes = Nodes::connect(&settings.options)?;
        let mut follower = Follower {
            settings,
            tail: None,
            nodes,
            remote: RemoteUrgency::default(),
            shared: Instant::now(),
            view,
            after,
            router,
            metrics,
            stop: stop.clone(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|source| StoreError::Thread { source })?,
        };
        let thread = std::thread::Builder::new()
            .name("log-tail".into())
            .spawn(move || follower.run())
            .map_err(|source| StoreError::Thread { source })?;
        Ok(LogTail {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the tail and waits for its thread (at most one read, `BLOCK`).
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Follower {
    settings: TailSettings,
    tail: Option<Tail>,
    nodes: Nodes,
    remote: RemoteUrgency,
    /// When urgency counts were last traded.
    shared: Instant,
    view: Arc<ClusterView>,
    /// The last cursor handed to the router.
    after: u64,
    router: Addr<Router>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    /// Waits for the router's answers; this thread runs no actix system.
    runtime: tokio::runtime::Runtime,
}

impl Follower {
    fn run(&mut self) {
        let mut retry = RETRY_FIRST;
        let mut looked = Instant::now();
        let mut epoch = self.settings.epoch.clone();
        while !self.stop.load(Relaxed) {
            match self.step(&mut looked, &mut epoch) {
                Ok(true) => retry = RETRY_FIRST,
                Ok(false) => return,
                Err(e) => {
                    if self.metrics.cluster.log_reachable.swap(0, Relaxed) == 1 {
                        log::error!("shared log unreachable, retrying: {e}");
                    }
                    self.tail = None;
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(RETRY_MOST);
                }
            }
        }
    }

    /// One read, and a look at the log's head every beat. `Ok(false)`: the router is
    /// gone.
    fn step(&mut self, looked: &mut Instant, epoch: &mut String) -> Result<bool, StoreError> {
        let tail = match &mut self.tail {
            Some(tail) => tail,
            None => self.tail.insert(Tail::connect(&self.settings.options)?),
        };
        let started = Instant::now();
        let block = BLOCK.min(self.settings.beat);
        let events = tail.read(self.after, self.settings.batch, block)?;
        if self.metrics.cluster.log_reachable.swap(1, Relaxed) == 0 {
            log::info!(
                "shared log reachable; following it after cursor {}",
                self.after
            );
        }
        if let Some(first) = events.first().map(|e| e.event.cursor) {
            self.metrics
                .cluster
                .tail_read_seconds
                .observe(started.elapsed().as_secs_f64());
            if first > self.after + 1 {
                let log_first = tail.head()?.first;
                if continuity(self.after, first, log_first) == Continuity::Lagged {
                    self.metrics.cluster.tail_lagged.fetch_add(1, Relaxed);
                    let reason = format!(
                        "node lagged: events {}..{} left the log before this node read \
                         them; reconnect to resume",
                        self.after + 1,
                        first - 1
                    );
                    if !self.interrupt(reason, first - 1, false) {
                        return Ok(false);
                    }
                }
            }
            self.after = events.last().map_or(self.after, |e| e.event.cursor);
            if !self.hand_over(events) {
                return Ok(false);
            }
        }
        self.share_urgency();
        if looked.elapsed() >= self.settings.beat {
            *looked = Instant::now();
            self.beat();
            return self.look_at_head(epoch);
        }
        Ok(true)
    }

    /// Once per overload window: tells the cluster this node's urgent deliveries and
    /// hands the other nodes' new ones to this node's overload control.
    fn share_urgency(&mut self) {
        if self.shared.elapsed() < WINDOW {
            return;
        }
        self.shared = Instant::now();
        let admission = &self.settings.admission;
        let (urgent, late) = admission.totals();
        match self
            .nodes
            .share_urgency(&self.settings.node.name, urgent, late)
        {
            Ok(totals) => {
                let (urgent, late) = self.remote.fold(&self.settings.node.name, totals);
                admission.add_remote(urgent, late);
            }
            Err(e) => log::debug!("urgency not shared: {e}"),
        }
    }

    /// Registers this node for three beats, and reads who else is there.
    fn beat(&mut self) {
        let ttl = self.settings.beat * 3;
        match self
            .nodes
            .beat(&self.settings.node, ttl)
            .and_then(|()| self.nodes.nodes())
        {
            Ok(nodes) => self.view.set(nodes),
            Err(e) => log::debug!("node heartbeat failed: {e}"),
        }
    }

    /// Checks the log's epoch, then its highest cursor, against what this node has
    /// read (a wiped log is a new log, not a regression: nothing is fenced in it).
    fn look_at_head(&mut self, joined: &mut String) -> Result<bool, StoreError> {
        let Some(tail) = &mut self.tail else {
            return Ok(true);
        };
        let head = tail.head()?;
        let (last, epoch) = (head.last, head.epoch);
        self.metrics
            .cluster
            .tail_lag
            .store(last.saturating_sub(self.after), Relaxed);
        if *joined != epoch {
            let reason = format!(
                "event log replaced (epoch {joined} became {}); reconnect to resume",
                if epoch.is_empty() { "none" } else { &epoch }
            );
            *joined = epoch;
            // Cursors of the old log mean nothing in the new one: sessions go, and
            // clients resume from what the new log holds. Without
            // `cluster.accept_new_log` the store also refuses publishes (`LogReplaced`).
            if self.settings.options.accept_new_log {
                log::warn!("{reason}; going on with the new log (cluster.accept_new_log)");
            }
            self.after = last;
            return Ok(self.interrupt(reason, last, true));
        }
        if last < self.after {
            self.metrics
                .cluster
                .cursor_regressions
                .fetch_add(1, Relaxed);
            log::error!(
                "shared log regressed: its highest cursor is {last}, this node read up to \
                 {}; events {}..{} are lost (a Redis failover?). Fencing cursors above {}",
                self.after,
                last + 1,
                self.after,
                self.after
            );
            tail.fence(self.after)?;
        }
        Ok(true)
    }

    /// Hands a batch to the router, then waits while its queue is full. `false`: the
    /// router is gone.
    fn hand_over(&mut self, events: Vec<Arc<crate::protocol::EncodedEvent>>) -> bool {
        let mut msg = Tailed { events };
        loop {
            match self.runtime.block_on(self.router.send(msg)) {
                Ok(queued) if queued < self.settings.max_queued || self.stop.load(Relaxed) => {
                    return true
                }
                Ok(_) => {
                    // Full: urgent events are likely late here; keep telling the others.
                    self.share_urgency();
                    std::thread::sleep(FULL_POLL);
                    msg = Tailed { events: Vec::new() };
                }
                Err(_) => return false,
            }
        }
    }

    fn interrupt(&mut self, reason: String, resume_after: u64, log_replaced: bool) -> bool {
        let msg = LogInterrupted {
            reason,
            resume_after,
            log_replaced,
        };
        self.runtime.block_on(self.router.send(msg)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_nodes_urgency_counts_only_what_is_new() {
        let mut remote = RemoteUrgency::default();
        let t = |n: &str, u: u64, l: u64| (n.to_owned(), u, l);
        let table = [
            // (totals read, new urgent and late of the others)
            (vec![t("a", 5, 1), t("b", 10, 2)], (0, 0)), // first look: a baseline
            (vec![t("a", 50, 9), t("b", 14, 5)], (4, 3)), // a is me: never counted
            (vec![t("b", 14, 5), t("c", 3, 3)], (0, 0)), // c is new: a baseline
            (vec![t("b", 20, 5), t("c", 4, 4)], (7, 1)),
            (vec![t("b", 2, 0), t("c", 4, 4)], (0, 0)), // b restarted: a new baseline
            (vec![t("b", 3, 1), t("c", 4, 4)], (1, 1)),
        ];
        for (i, (totals, want)) in table.into_iter().enumerate() {
            assert_eq!(remote.fold("a", totals), want, "step {i}");
        }
    }

    #[test]
    fn a_skip_is_a_lag_only_when_the_log_trimmed_past_the_tail() {
        let table = [
            // (after, read_first, log_first, expected)
            (10, 11, Some(1), Continuity::InOrder),
            (10, 11, Some(11), Continuity::InOrder),
            // An imported log with a hole the tail never saw: not a lag.
            (10, 15, Some(3), Continuity::InOrder),
            (10, 15, Some(11), Continuity::InOrder),
            // Trimmed past the tail.
            (10, 15, Some(12), Continuity::Lagged),
            (10, 15, Some(15), Continuity::Lagged),
            (0, 1, None, Continuity::InOrder),
        ];
        for (after, first, log_first, want) in table {
            assert_eq!(
                continuity(after, first, log_first),
                want,
                "after {after}, read {first}, log starts at {log_first:?}"
            );
        }
    }
}
