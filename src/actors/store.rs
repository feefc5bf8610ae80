//! The store actor: once the server runs, the only place the event log is read or
//! written (`server::run` reads the last cursor and recent ids before it starts).
//!
//! Into the store: [`Append`] or, for a log that numbers events itself, [`AppendNew`]
//! (from the router: one group commit), [`Query`] (only for a backend without a read
//! pool, see `store_reader`), [`Stats`] and [`Ping`] (HTTP API); durable state: [`OpenDurable`],
//! [`RenewDurables`], [`ReleaseDurable`] (router) and [`DurableAcked`] (router and
//! delivery workers); the dead letters:
//! [`AddDeadLetter`] (router), [`ListDeadLetters`], [`GetDeadLetter`],
//! [`TakeDeadLetter`] (HTTP API).
//! Out of the store: nothing; answers only.
//!
//! It runs alone on its own arbiter thread, so the blocking backend calls stall nothing
//! else — the guarantee a `SyncArbiter` gives — while a plain `Context` also gives it a
//! timer for age-based retention. Compacting a durable subscription scans the log
//! through the read pool, between commits. Must not: assign cursors or decide routing.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::metrics::Metrics;
use crate::protocol::EncodedEvent;
use crate::routing::Matcher;
use crate::store::{
    Appended, DeadLetter, DurableState, EventQuery, EventStore, NewDeadLetter, NewEvent, Retention,
    StoreError, StoreStats,
};

/// How often age-based retention runs. It runs between commits, never inside one.
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);
/// Dead letters deleted over the limit are logged at most this often.
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Store a batch of accepted events in one transaction.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Append {
    pub events: Vec<Arc<EncodedEvent>>,
}

/// Store a batch of accepted events that the log numbers itself (cluster mode), in one
/// transaction: one outcome per event.
#[derive(Message)]
#[rtype(result = "Result<Vec<Appended>, StoreError>")]
pub struct AppendNew {
    pub events: Vec<NewEvent>,
}

/// Read stored events.
#[derive(Message)]
#[rtype(result = "Result<Vec<Arc<EncodedEvent>>, StoreError>")]
pub struct Query {
    pub query: EventQuery,
}

/// Count, first and last cursor.
#[derive(Message)]
#[rtype(result = "Result<StoreStats, StoreError>")]
pub struct Stats;

/// Answered as soon as it is handled: the store actor runs and its mailbox moves
/// (`GET /ready`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

pub struct StoreActor {
    store: Box<dyn EventStore>,
    retention: Retention,
    /// `store.max_dead_letters`; `None`: no limit.
    max_dead_letters: Option<u64>,
    /// `dead_letters_evicted` counts the dead letters deleted to stay under that
    /// limit (`/api/stats` and `/metrics`).
    metrics: Arc<Metrics>,
    /// Dead letters stored since the limit was last enforced: it is enforced every
    /// hundredth of it (at least every one), so a storm costs one extra write per
    /// hundredth, not per dead letter, and the limit is exceeded by at most 1 %.
    dead_letters_since_trim: u64,
    /// When an eviction was last logged (a dead-letter storm logs once a minute).
    eviction_logged: Option<std::time::Instant>,
    /// Appended since retention last ran: a count limit is enforced once this reaches
    /// a tenth of it, so the log never overshoots its limit by more than 10 %.
    since_retention: u64,
    /// Every cursor up to this one is gone from the log (removed by retention, in this
    /// run or an earlier one): a durable subscription below it has lost those.
    removed_through: u64,
    /// Where compaction scans read (the read pool); this actor itself when the
    /// backend has no reader (set in `started`).
    reads: Option<Recipient<Query>>,
}

impl StoreActor {
    pub fn new(
        store: Box<dyn EventStore>,
        retention: Retention,
        max_dead_letters: Option<u64>,
        metrics: Arc<Metrics>,
        reads: Option<Recipient<Query>>,
    ) -> Self {
        StoreActor {
            store,
            retention,
            max_dead_letters,
            metrics,
            dead_letters_since_trim: 0,
            eviction_logged: None,
            since_retention: 0,
            removed_through: 0,
            reads,
        }
    }

    /// The cursor below the oldest one kept, or the last ever stored when the log is
    /// empty: everything up to it is gone.
    fn gone_through(&self) -> Result<u64, StoreError> {
        match self.store.stats()?.first_cursor {
            Some(first) => Ok(first.saturating_sub(1)),
            None => self.store.last_cursor(),
        }
    }

    fn note_removed(&mut self) {
        match self.gone_through() {
            Ok(through) => self.removed_through = self.removed_through.max(through),
            Err(e) => log::error!("cannot read the oldest cursor kept: {e}"),
        }
    }

    /// Count limits are enforced after appends (every tenth of the limit), age limits on
    /// the timer. A backend deletes a bounded number of rows per pass, so a pass that
    /// removed something is followed by another, behind the commits already waiting:
    /// a large deletion never holds the commit path for long.
    fn enforce_retention(&mut self, retention: Retention, ctx: &mut Context<Self>) {
        match self.store.apply_retention(&retention) {
            Ok(0) => {}
            Ok(n) => {
                log::debug!("retention removed {n} events");
                self.note_removed();
                ctx.notify(RetentionPass(retention));
            }
            Err(e) => log::error!("retention failed: {e}"),
        }
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.note_removed();
        if self.reads.is_none() {
            self.reads = Some(ctx.address().recipient());
        }
        // Only an age limit needs a timer: a count limit is enforced after appends.
        if self.retention.max_age.is_some() {
            ctx.run_interval(RETENTION_INTERVAL, |act, ctx| {
                let age_only = Retention {
                    max_events: None,
                    ..act.retention
                };
                act.enforce_retention(age_only, ctx);
            });
        }
    }
}

impl Handler<Append> for StoreActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        self.store.append(&msg.events)?;
        self.appended(msg.events.len(), ctx);
        Ok(())
    }
}

impl Handler<AppendNew> for StoreActor {
    type Result = Result<Vec<Appended>, StoreError>;

    fn handle(&mut self, msg: AppendNew, ctx: &mut Context<Self>) -> Self::Result {
        let outcomes = self.store.append_new(&msg.events)?;
        self.appended(msg.events.len(), ctx);
        Ok(outcomes)
    }
}

impl StoreActor {
    /// Counts appended events; the count limit is enforced every tenth of it, after
    /// this commit is answered, not inside it.
    fn appended(&mut self, count: usize, ctx: &mut Context<Self>) {
        self.since_retention += count as u64;
        if let Some(max) = self.retention.max_events {
            if self.since_retention >= (max / 10).max(1) {
                self.since_retention = 0;
                let count_only = Retention {
                    max_age: None,
                    ..self.retention
                };
                ctx.notify(RetentionPass(count_only));
            }
        }
    }
}

/// Internal: one bounded retention pass.
#[derive(Message)]
#[rtype(result = "()")]
struct RetentionPass(Retention);

impl Handler<RetentionPass> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: RetentionPass, ctx: &mut Context<Self>) {
        self.enforce_retention(msg.0, ctx);
    }
}

impl Handler<Query> for StoreActor {
    type Result = Result<Vec<Arc<EncodedEvent>>, StoreError>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        self.store.query(&msg.query)
    }
}

impl Handler<Ping> for StoreActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<Stats> for StoreActor {
    type Result = Result<StoreStats, StoreError>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.store.stats()?;
        stats.dead_letters_evicted = self.metrics.dead_letters_evicted.load(Relaxed);
        Ok(stats)
    }
}

/// Store a dead letter.
#[derive(Message)]
#[rtype(result = "Result<DeadLetter, StoreError>")]
pub struct AddDeadLetter {
    pub dead_letter: NewDeadLetter,
}

/// Dead letters after an id.
#[derive(Message)]
#[rtype(result = "Result<Vec<DeadLetter>, StoreError>")]
pub struct ListDeadLetters {
    pub after: u64,
    pub limit: usize,
}

/// Read one dead letter.
#[derive(Message)]
#[rtype(result = "Result<Option<DeadLetter>, StoreError>")]
pub struct GetDeadLetter {
    pub id: u64,
}

impl Handler<GetDeadLetter> for StoreActor {
    type Result = Result<Option<DeadLetter>, StoreError>;

    fn handle(&mut self, msg: GetDeadLetter, _: &mut Context<Self>) -> Self::Result {
        self.store.dead_letter(msg.id)
    }
}

/// Remove and return a dead letter (after a successful retry, or to delete it).
#[derive(Message)]
#[rtype(result = "Result<Option<DeadLetter>, StoreError>")]
pub struct TakeDeadLetter {
    pub id: u64,
}

impl Handler<AddDeadLetter> for StoreActor {
    type Result = Result<DeadLetter, StoreError>;

    fn handle(&mut self, msg: AddDeadLetter, _: &mut Context<Self>) -> Self::Result {
        let added = self.store.add_dead_letter(msg.dead_letter)?;
        self.dead_letters_since_trim += 1;
        if let Some(max) = self
            .max_dead_letters
            .filter(|max| self.dead_letters_since_trim >= (max / 100).max(1))
        {
            self.dead_letters_since_trim = 0;
            match self.store.trim_dead_letters(max) {
                Ok(0) => {}
                Ok(n) => {
                    let evicted = self.metrics.dead_letters_evicted.fetch_add(n, Relaxed) + n;
                    let quiet = self
                        .eviction_logged
                        .is_some_and(|at| at.elapsed() < EVICTION_LOG_INTERVAL);
                    if !quiet {
                        self.eviction_logged = Some(std::time::Instant::now());
                        log::warn!(
                            "more than store.max_dead_letters ({max}) dead letters: deleting the \
                             oldest of the principals holding the most ({evicted} so far)"
                        );
                    }
                }
                // The dead letter itself is stored; the limit is enforced next time.
                Err(e) => log::error!("cannot trim dead letters: {e}"),
            }
        }
        Ok(added)
    }
}

impl Handler<ListDeadLetters> for StoreActor {
    type Result = Result<Vec<DeadLetter>, StoreError>;

    fn handle(&mut self, msg: ListDeadLetters, _: &mut Context<Self>) -> Self::Result {
        self.store.dead_letters(msg.after, msg.limit)
    }
}

impl Handler<TakeDeadLetter> for StoreActor {
    type Result = Result<Option<DeadLetter>, StoreError>;

    fn handle(&mut self, msg: TakeDeadLetter, _: &mut Context<Self>) -> Self::Result {
        self.store.take_dead_letter(msg.id)
    }
}

/// Claim a durable subscription for `owner` (one connection in the whole cluster holds
/// it, for `lease` at a time), then open (creating at `floor` if new) its state,
/// compacted first: its floor moves up over every stored event that `matcher` rejects
/// or that is already resolved. `None`: another connection holds it.
#[derive(Message)]
#[rtype(result = "Result<Option<OpenedDurable>, StoreError>")]
pub struct OpenDurable {
    pub principal: String,
    pub name: String,
    pub floor: u64,
    pub matcher: Matcher,
    pub owner: String,
    pub lease: Duration,
}

/// A durable subscription's state as opened, and the cursors retention removed before
/// it resolved them (`lost`, inclusive; its floor has moved past them).
#[derive(Debug)]
pub struct OpenedDurable {
    pub state: DurableState,
    pub lost: Option<(u64, u64)>,
}

/// Renew the claims of the durable subscriptions open on this node; answers the
/// indexes of those now held by another connection (or that failed to renew).
#[derive(Message)]
#[rtype(result = "Vec<usize>")]
pub struct RenewDurables {
    /// (principal, name, owner)
    pub claims: Vec<(String, String, String)>,
    pub lease: Duration,
}

/// Give up a durable subscription's claim (it was closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseDurable {
    pub principal: String,
    pub name: String,
    pub owner: String,
}

/// Cursors a durable subscription has resolved (acknowledged or dead-lettered).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DurableAcked {
    pub principal: String,
    pub name: String,
    pub cursors: Vec<u64>,
    /// Also compact the state (the worker asks every so many acks).
    pub compact_with: Option<Matcher>,
}

/// Events read per page while compacting a durable subscription.
const COMPACT_PAGE: usize = 1000;

/// Where a durable subscription's floor can move: up over every stored event above
/// `state.floor` that `matcher` rejects, that `state` has resolved, or that expired,
/// to the last one before the first still owed. Reads through `reads`, page by page,
/// so that a scan of the whole log (a new subscription from cursor 0 whose filter
/// matches little) holds up no commit.
async fn compacted_floor(
    reads: Recipient<Query>,
    state: DurableState,
    matcher: Matcher,
) -> Result<u64, StoreError> {
    let mut floor = state.floor;
    let now = chrono::Utc::now();
    loop {
        let query = EventQuery {
            after: Some(floor),
            limit: COMPACT_PAGE,
            ..EventQuery::default()
        };
        let page = reads
            .send(Query { query })
            .await
            .map_err(|e| StoreError::Unavailable(format!("store reader: {e}")))??;
        if page.is_empty() {
            return Ok(floor);
        }
        for e in page {
            // Expired events can never be delivered: they hold nothing back.
            let owed = matcher.matches(&e.event)
                && !state.acked.contains(&e.event.cursor)
                && !e.event.is_expired(now);
            if owed {
                return Ok(floor);
            }
            floor = e.event.cursor;
        }
    }
}

impl StoreActor {
    fn reads(&self, ctx: &Context<Self>) -> Recipient<Query> {
        self.reads
            .clone()
            .unwrap_or_else(|| ctx.address().recipient())
    }

    /// Compacts durable subscription `name` of `principal` (opened already): scans on
    /// the read pool while this actor goes on committing, then moves the floor.
    fn compact(
        &mut self,
        principal: String,
        name: String,
        matcher: Matcher,
        ctx: &Context<Self>,
    ) -> ResponseActFuture<Self, Result<DurableState, StoreError>> {
        let state = match self.store.durable_open(&principal, &name, 0) {
            Ok(state) => state,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let start = state.floor;
        let scan = compacted_floor(self.reads(ctx), state, matcher);
        Box::pin(scan.into_actor(self).map(move |floor, act, _| {
            let floor = floor?;
            if floor > start {
                act.store.durable_set_floor(&principal, &name, floor)?;
            }
            act.store.durable_open(&principal, &name, 0)
        }))
    }
}

impl StoreActor {
    /// Moves an opened state's floor past what retention removed, answering that
    /// range: those cursors can never be delivered, and compaction must not skip over
    /// them in silence.
    fn skip_removed(
        &mut self,
        principal: &str,
        name: &str,
        state: &DurableState,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        // Resolved cursors right above the floor were not lost.
        let mut from = state.floor + 1;
        while state.acked.contains(&from) {
            from += 1;
        }
        if from > self.removed_through {
            return Ok(None);
        }
        log::warn!(
            "durable subscription {principal}/{name}: retention removed cursors {from} to {} \
             before it resolved them",
            self.removed_through
        );
        self.store
            .durable_set_floor(principal, name, self.removed_through)?;
        Ok(Some((from, self.removed_through)))
    }
}

impl Handler<OpenDurable> for StoreActor {
    type Result = ResponseActFuture<Self, Result<Option<OpenedDurable>, StoreError>>;

    fn handle(&mut self, msg: OpenDurable, ctx: &mut Context<Self>) -> Self::Result {
        let OpenDurable {
            principal,
            name,
            floor,
            matcher,
            owner,
            lease,
        } = msg;
        match self.store.durable_claim(&principal, &name, &owner, lease) {
            Ok(true) => {}
            Ok(false) => return Box::pin(fut::ready(Ok(None))),
            Err(e) => return Box::pin(fut::ready(Err(e))),
        }
        let lost = match self
            .store
            .durable_open(&principal, &name, floor)
            .and_then(|state| self.skip_removed(&principal, &name, &state))
        {
            Ok(lost) => lost,
            Err(e) => {
                // Not opened: nobody holds it.
                let _ = self.store.durable_release(&principal, &name, &owner);
                return Box::pin(fut::ready(Err(e)));
            }
        };
        let compacted = self.compact(principal.clone(), name.clone(), matcher, ctx);
        Box::pin(compacted.map(move |opened, act, _| {
            if opened.is_err() {
                let _ = act.store.durable_release(&principal, &name, &owner);
            }
            opened.map(|state| Some(OpenedDurable { state, lost }))
        }))
    }
}

impl Handler<RenewDurables> for StoreActor {
    type Result = Vec<usize>;

    fn handle(&mut self, msg: RenewDurables, _: &mut Context<Self>) -> Vec<usize> {
        let mut lost = Vec::new();
        for (i, (principal, name, owner)) in msg.claims.iter().enumerate() {
            match self.store.durable_claim(principal, name, owner, msg.lease) {
                Ok(true) => {}
                Ok(false) => lost.push(i),
                // Unreachable for now: the claim stands until its lease runs out, and
                // the next beat tries again.
                Err(e) => log::warn!("durable subscription {principal}/{name}: not renewed: {e}"),
            }
        }
        lost
    }
}

impl Handler<ReleaseDurable> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: ReleaseDurable, _: &mut Context<Self>) {
        if let Err(e) = self
            .store
            .durable_release(&msg.principal, &msg.name, &msg.owner)
        {
            // Its lease runs out by itself.
            log::warn!(
                "durable subscription {}/{}: claim not released: {e}",
                msg.principal,
                msg.name
            );
        }
    }
}

impl Handler<DurableAcked> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: DurableAcked, ctx: &mut Context<Self>) {
        let DurableAcked {
            principal,
            name,
            cursors,
            compact_with,
        } = msg;
        let failed = |principal: &str, name: &str, e: StoreError| {
            // The cursors stay unresolved: they are redelivered on the next resubscribe
            // (at least once), never lost.
            log::error!("durable subscription {principal}/{name}: acks not stored: {e}");
        };
        if let Err(e) = self.store.durable_ack(&principal, &name, &cursors) {
            return failed(&principal, &name, e);
        }
        if let Some(matcher) = compact_with {
            let compact = self.compact(principal.clone(), name.clone(), matcher, ctx);
            ctx.spawn(compact.map(move |res, _, _| {
                if let Err(e) = res {
                    failed(&principal, &name, e);
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use crate::store::memory::MemoryStore;

    /// The dead-letter limit is enforced every hundredth of it: never more than 1 % over,
    /// and every deletion counted.
    #[actix_rt::test]
    async fn dead_letters_are_trimmed_every_hundredth_of_the_limit() {
        let store = StoreActor::new(
            Box::new(MemoryStore::new()),
            Retention::default(),
            Some(200),
            Arc::new(Metrics::default()),
            None,
        )
        .start();
        let event = EncodedEvent::new(
            Event::from_json(serde_json::json!({"topic": "job.run"}), "s").unwrap(),
        );
        let mut most = 0;
        for _ in 0..203 {
            let dead_letter = NewDeadLetter {
                event: event.clone(),
                principal: "anonymous".into(),
                subscription_id: "s".into(),
                connection_id: 1,
                reason: "rejected".into(),
                attempts: 1,
            };
            store
                .send(AddDeadLetter { dead_letter })
                .await
                .unwrap()
                .unwrap();
            most = most.max(store.send(Stats).await.unwrap().unwrap().dead_letters);
        }
        let stats = store.send(Stats).await.unwrap().unwrap();
        // Trimmed after every second one: 201 was seen, 202 went down to 200 at once,
        // then one more came.
        assert_eq!((stats.dead_letters, stats.dead_letters_evicted), (201, 2));
        assert_eq!(most, 201, "less than 1 % over the limit");
    }
}
