//! The store actor: the only place the event log is read or written.
//!
//! Into the store: [`Append`] (from the router: one group commit), [`Query`] and
//! [`Stats`] (from the HTTP API). Out of the store: nothing; answers only.
//!
//! It runs alone on its own arbiter thread, so the blocking backend calls stall nothing
//! else — the guarantee a `SyncArbiter` gives — while a plain `Context` also gives it a
//! timer for age-based retention. Must not: assign cursors or decide routing.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::protocol::EncodedEvent;
use crate::store::{EventQuery, EventStore, Retention, StoreError, StoreStats};

/// How often retention runs even without new appends (age limits need it).
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// Store a batch of accepted events in one transaction.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Append {
    pub events: Vec<Arc<EncodedEvent>>,
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

pub struct StoreActor {
    store: Box<dyn EventStore>,
    retention: Retention,
    /// Appended since retention last ran: a count limit is enforced once this reaches
    /// a tenth of it, so the log never overshoots its limit by more than 10 %.
    since_retention: u64,
}

impl StoreActor {
    pub fn new(store: Box<dyn EventStore>, retention: Retention) -> Self {
        StoreActor {
            store,
            retention,
            since_retention: 0,
        }
    }

    fn enforce_retention(&mut self) {
        self.since_retention = 0;
        match self.store.apply_retention(&self.retention) {
            Ok(0) => {}
            Ok(n) => log::debug!("retention removed {n} events"),
            Err(e) => log::error!("retention failed: {e}"),
        }
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.retention != Retention::default() {
            ctx.run_interval(RETENTION_INTERVAL, |act, _| act.enforce_retention());
        }
    }
}

impl Handler<Append> for StoreActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: Append, _: &mut Context<Self>) -> Self::Result {
        self.store.append(&msg.events)?;
        self.since_retention += msg.events.len() as u64;
        if let Some(max) = self.retention.max_events {
            if self.since_retention >= (max / 10).max(1) {
                self.enforce_retention();
            }
        }
        Ok(())
    }
}

impl Handler<Query> for StoreActor {
    type Result = Result<Vec<Arc<EncodedEvent>>, StoreError>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        self.store.query(&msg.query)
    }
}

impl Handler<Stats> for StoreActor {
    type Result = Result<StoreStats, StoreError>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        self.store.stats()
    }
}
