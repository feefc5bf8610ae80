//! [`SqliteSource`]: one table's committed changes, read from the outbox its triggers
//! fill (`crate::sources::outbox`), published as events, drained once published.
//!
//! Runs on an arbiter of its own: its SQLite calls block only it. Every poll it asks
//! whether another connection committed (`PRAGMA data_version`) before reading; rows
//! wait in memory until their debounce window has passed, are published in outbox
//! order, and are deleted only after the router answered. A crash in between leaves
//! them in the outbox; published again, their ids (derived from the row) make them
//! duplicates, which the router suppresses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rusqlite::{Connection, OpenFlags};

use super::publish::{Outcome, SourcePublisher};
use crate::config::SourceConfig;
use crate::metrics::sources::{SourceState, SourceStatus};
use crate::sources::change::{Change, Op, Shape};
use crate::sources::debounce::{self, Pending};
use crate::sources::outbox::{self, Watch};

/// Changes held in memory at once (the rest wait in the outbox).
const MAX_PENDING: usize = 1000;
/// How long to wait after an error before opening the database again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a drain may wait for a writer's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct SqliteSource {
    config: SourceConfig,
    status: Arc<SourceStatus>,
    publisher: SourcePublisher,
    db: Option<Db>,
    /// Changes read, not yet drained, with when they were first seen.
    pending: Vec<(Change, Instant)>,
    /// A publish is under way: the next poll waits for it.
    busy: bool,
    retry_at: Option<Instant>,
    epoch: Instant,
}

/// The open database.
struct Db {
    conn: Connection,
    identity: String,
    /// `PRAGMA data_version` at the last read; `None`: read regardless.
    version: Option<i64>,
    /// The highest outbox id read into `pending`.
    read_to: i64,
    /// The last read filled `pending` up: more rows may wait.
    more: bool,
    /// `PRAGMA schema_version` once the triggers were installed.
    schema: i64,
}

impl SqliteSource {
    pub fn new(
        config: SourceConfig,
        status: Arc<SourceStatus>,
        publisher: SourcePublisher,
    ) -> Self {
        SqliteSource {
            config,
            status,
            publisher,
            db: None,
            pending: Vec::new(),
            busy: false,
            retry_at: None,
            epoch: Instant::now(),
        }
    }

    fn watch(&self) -> Watch<'_> {
        Watch {
            source: &self.config.name,
            table: &self.config.table,
            key: &self.config.key,
            status_column: (!self.config.status_column.is_empty())
                .then_some(self.config.status_column.as_str()),
        }
    }

    fn open(&self) -> Result<Db, String> {
        let path = &self.config.path;
        // Never created here: a missing file is a configuration mistake to report.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
        let identity = outbox::install(&conn, &self.watch()).map_err(|e| e.to_string())?;
        let schema = outbox::schema_version(&conn).map_err(|e| e.to_string())?;
        log::info!(
            "source `{}`: watching table `{}` of {} (outbox identity {identity})",
            self.config.name,
            self.config.table,
            path.display()
        );
        Ok(Db {
            conn,
            identity,
            version: None,
            read_to: 0,
            more: false,
            schema,
        })
    }

    fn fail(&mut self, message: String) {
        if self.status.state() != SourceState::Error(message.clone()) {
            log::error!("source `{}`: {message}", self.config.name);
        }
        self.status.set_state(SourceState::Error(message));
        self.db = None;
        self.pending.clear();
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    /// Reads new outbox rows when another connection committed since the last read.
    fn read(&mut self) -> Result<(), String> {
        let name = self.config.name.clone();
        let Some(db) = &mut self.db else {
            return Ok(());
        };
        let version = outbox::data_version(&db.conn).map_err(|e| e.to_string())?;
        if db.version == Some(version) && !db.more {
            return Ok(());
        }
        // The table was altered, or dropped and created again (which drops triggers):
        // install them again, with its columns as they are now.
        let schema = outbox::schema_version(&db.conn).map_err(|e| e.to_string())?;
        if schema != db.schema {
            let watch = Watch {
                source: &name,
                table: &self.config.table,
                key: &self.config.key,
                status_column: (!self.config.status_column.is_empty())
                    .then_some(self.config.status_column.as_str()),
            };
            outbox::install(&db.conn, &watch).map_err(|e| e.to_string())?;
            db.schema = outbox::schema_version(&db.conn).map_err(|e| e.to_string())?;
            log::info!("source `{name}`: the schema changed; triggers installed again");
        }
        let room = MAX_PENDING.saturating_sub(self.pending.len());
        let rows = outbox::read(&db.conn, &name, db.read_to, room).map_err(|e| e.to_string())?;
        db.version = Some(version);
        db.more = rows.len() == room;
        let now = Instant::now();
        let mut unreadable = Vec::new();
        for row in rows {
            match row {
                Ok(change) => {
                    db.read_to = change.id;
                    self.pending.push((change, now));
                }
                Err(bad) => {
                    db.read_to = bad.id;
                    log::warn!(
                        "source `{name}`: outbox row {} skipped: {}",
                        bad.id,
                        bad.why
                    );
                    self.status
                        .skipped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    unreadable.push(bad.id);
                }
            }
        }
        if !unreadable.is_empty() {
            outbox::drain(&db.conn, &name, &unreadable).map_err(|e| e.to_string())?;
        }
        let waiting = outbox::pending(&db.conn, &name).map_err(|e| e.to_string())?;
        self.status
            .lag
            .store(waiting, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.retry_at = None;
        if self.db.is_none() {
            match self.open() {
                Ok(db) => self.db = Some(db),
                Err(e) => return self.fail(e),
            }
        }
        if let Err(e) = self.read() {
            return self.fail(e);
        }
        self.status.set_state(SourceState::Running);
        let Some(db) = &self.db else { return };
        let ms = |t: Instant| t.duration_since(self.epoch).as_millis() as u64;
        let view: Vec<Pending<'_>> = self
            .pending
            .iter()
            .map(|(c, seen)| Pending {
                id: c.id,
                is_update: c.op == Op::Update,
                key: &c.key,
                seen_ms: ms(*seen),
            })
            .collect();
        let plan = debounce::plan(&view, ms(Instant::now()), self.config.debounce_ms);
        if plan.is_empty() {
            return;
        }
        let shape = Shape {
            identity: &db.identity,
            topic: &self.config.topic,
            status_column: self.watch().status_column,
        };
        let events: Vec<String> = plan
            .iter()
            .map(|g| {
                let (latest, first) = (&self.pending[g.latest].0, &self.pending[g.first].0);
                shape.event(latest, &first.old_status).to_string()
            })
            .collect();
        let covers: Vec<Vec<i64>> = plan.into_iter().map(|g| g.covers).collect();
        self.busy = true;
        let publisher = self.publisher.clone();
        ctx.spawn(
            async move { publisher.publish(events).await }
                .into_actor(self)
                .map(move |outcomes, act, _| {
                    act.busy = false;
                    act.published(&covers, &outcomes);
                }),
        );
    }

    /// Drains what was published or refused, up to the first event to retry (those
    /// after it are published again later, in order, as duplicates where they went).
    fn published(&mut self, covers: &[Vec<i64>], outcomes: &[Outcome]) {
        use std::sync::atomic::Ordering::Relaxed;
        let name = self.config.name.clone();
        let mut drained = Vec::new();
        for (ids, outcome) in covers.iter().zip(outcomes) {
            match outcome {
                Outcome::Published => {
                    self.status.published.fetch_add(1, Relaxed);
                }
                Outcome::Refused(why) => {
                    log::warn!("source `{name}`: change {ids:?} skipped: {why}");
                    self.status.skipped.fetch_add(1, Relaxed);
                }
                Outcome::Retry(why) => {
                    log::debug!("source `{name}`: publishing again later: {why}");
                    self.retry_at = Some(Instant::now() + Duration::from_millis(50));
                    break;
                }
            }
            drained.extend_from_slice(ids);
        }
        let Some(db) = &self.db else { return };
        if let Err(e) = outbox::drain(&db.conn, &name, &drained) {
            // Left in the outbox: read again after reopening, published as duplicates.
            return self.fail(format!("cannot drain the outbox: {e}"));
        }
        let gone: std::collections::HashSet<i64> = drained.iter().copied().collect();
        self.pending.retain(|(c, _)| !gone.contains(&c.id));
        if let Some(last) = drained.iter().max() {
            self.status
                .set_position(serde_json::json!({ "outbox_id": last }));
        }
        match outbox::pending(&db.conn, &name) {
            Ok(n) => self.status.lag.store(n, Relaxed),
            Err(e) => log::warn!("source `{name}`: cannot count the outbox: {e}"),
        }
    }
}

impl Actor for SqliteSource {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.poll(ctx);
        let every = Duration::from_millis(self.config.poll_interval_ms);
        ctx.run_interval(every, |act, ctx| act.poll(ctx));
    }
}
