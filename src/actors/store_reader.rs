//! The store's read pool: queries of the event log on connections of their own.
//!
//! Into the pool: [`Query`] (HTTP API, replay pages, the scans that compact a durable
//! subscription). Out of it: nothing; answers only.
//!
//! A query with no literal topic prefix, a type nothing has, or a replay from cursor 0
//! walks the whole log. On the store actor's thread that held up every commit, and so
//! every publish, for as long as it ran. Here it runs on a `SyncArbiter` thread with a
//! read-only connection (SQLite's WAL lets readers run beside the writer), and the
//! store actor only commits. Backends that have no reader (the memory store) are read
//! through the store actor, as before.
//! Must not: write anything.

use std::sync::{Arc, Mutex};

use actix::prelude::*;

use super::store::Query;
use crate::protocol::EncodedEvent;
use crate::store::{EventReads, EventStore, StoreError};

/// Connections in the pool: two, so that one long scan leaves a reader free for the
/// replay pages and API pages of everyone else.
pub const READERS: usize = 2;

/// One connection of the pool, on a thread of its own.
pub struct StoreReader {
    /// `None` only if the pool asked for more readers than it opened (never, but a
    /// query answers an error rather than panicking).
    reads: Option<Box<dyn EventReads>>,
}

impl Actor for StoreReader {
    type Context = SyncContext<Self>;
}

impl Handler<Query> for StoreReader {
    type Result = Result<Vec<Arc<EncodedEvent>>, StoreError>;

    fn handle(&mut self, msg: Query, _: &mut SyncContext<Self>) -> Self::Result {
        match self.reads.as_mut() {
            Some(reads) => reads.query(&msg.query),
            None => Err(StoreError::Unavailable("no reader connection".into())),
        }
    }
}

/// Readers opened for `store`, before it moves to the store actor; empty when it has
/// none.
pub fn open(store: &dyn EventStore) -> Result<Vec<Box<dyn EventReads>>, StoreError> {
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        match store.reader()? {
            Some(reader) => readers.push(reader),
            None => break,
        }
    }
    Ok(readers)
}

/// Starts the pool on `readers` (from [`open`]); `None` when there are none: then
/// queries go to the store actor.
pub fn start(readers: Vec<Box<dyn EventReads>>) -> Option<Recipient<Query>> {
    if readers.is_empty() {
        return None;
    }
    let count = readers.len();
    let readers = Mutex::new(readers);
    let pool = SyncArbiter::start(count, move || StoreReader {
        reads: readers.lock().ok().and_then(|mut r| r.pop()),
    });
    Some(pool.recipient())
}
