//! Accepting and committing: the router's side of a publish, and of the shared log.
//!
//! A publish is accepted in one step into the commit buffer. One commit is in flight at
//! a time, and everything accepted meanwhile goes into the next (group commit). Only
//! once its commit is done is an event answered. Two numberings:
//! - a single node's log: the router numbers events as it accepts them (duplicate
//!   check against its window, then the next cursor) and queues a batch for routing
//!   once its commit is done;
//! - a shared log (cluster mode, `EventStore::numbers_events`): the log numbers them
//!   and is the cluster's duplicate check. The router routes nothing it commits: every
//!   event, its own too, comes back from the log's tail as [`Tailed`], in cursor
//!   order, so that every node routes one order and replay has one boundary.
//!
//! Owns: the commit buffer and its waiters, `last_queued`. Must not: route (the
//! `Drain` turns do) or talk to Redis (the store actor and the log tail do).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::{CloseSession, Dedupe, PublishReply, PublishResults, Router};
use crate::actors::store::{Append, AppendNew};
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::{EncodedEvent, Event, PublishOk};
use crate::routing::dedupe::DedupeWindow;
use crate::store::{Appended, NewEvent, StoreError};

/// Events read from the shared log, in cursor order (from the log tail). Answers how
/// many events wait in the router, so that the tail stops reading while it is full.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Tailed {
    pub events: Vec<Arc<EncodedEvent>>,
}

/// The shared log cannot be followed without a gap (this node fell behind its
/// retention, or the log was replaced): close every session with `reason`, so that
/// clients reconnect and resume by cursor instead of missing events in silence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LogInterrupted {
    pub reason: String,
    /// The cursor the tail goes on after; later events are routed as usual.
    pub resume_after: u64,
    /// The log was replaced: the ids this node knew are forgotten.
    pub log_replaced: bool,
}

type Waiters = Vec<(PublishReply, PublishResults)>;

impl Router {
    /// Accepts an event; [`Dedupe::Skip`] routes it again even if its id was seen (a
    /// republished dead letter).
    pub(super) fn accept(
        &mut self,
        mut event: Event,
        dedupe: Dedupe,
    ) -> Result<PublishOk, ProtocolError> {
        let check = dedupe == Dedupe::Check;
        let known = check
            .then(|| self.dedupe.get(&event.publisher, &event.id))
            .flatten();
        if let Some(cursor) = known {
            self.metrics.duplicates.fetch_add(1, Relaxed);
            return Ok(PublishOk {
                event_id: event.id,
                cursor,
                duplicate: true,
            });
        }
        let router = &self.config.router;
        if self.queued >= router.max_queued_events || self.queued_bytes >= router.max_queued_bytes {
            self.metrics.rejected_busy.fetch_add(1, Relaxed);
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "router queue is full ({} events, {} bytes waiting to be routed); retry shortly",
                    self.queued, self.queued_bytes
                ),
            ));
        }
        // A shared log numbers the event when it stores it (a republished dead letter
        // gets a new cursor); its id enters the window then, with the log's cursor.
        if self.shared_log {
            event.cursor = 0;
        } else {
            self.last_cursor += 1;
            event.cursor = self.last_cursor;
            self.dedupe
                .insert(&event.publisher, &event.id, event.cursor);
        }
        let ok = PublishOk {
            event_id: event.id.clone(),
            cursor: event.cursor,
            duplicate: false,
        };
        let event = EncodedEvent::new(event);
        self.queued_bytes += event.json.len();
        self.commit_buffer.push(NewEvent {
            event,
            check_duplicate: check,
        });
        self.queued += 1;
        Ok(ok)
    }

    /// Sends the commit buffer to the store unless a commit is already in flight (then
    /// it goes when that one is done: group commit).
    pub(super) fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.commit_waiters.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.commit_buffer);
        let waiters = std::mem::take(&mut self.commit_waiters);
        if batch.is_empty() {
            // Only duplicates or refusals: nothing to store.
            for (reply, results) in waiters {
                let _ = reply.send(results);
            }
            return;
        }
        self.committing = true;
        let started = Instant::now();
        let size = batch.len() as f64;
        let finish = move |act: &mut Router| {
            act.committing = false;
            let commits = &act.metrics.commits;
            commits.seconds.observe(started.elapsed().as_secs_f64());
            commits.batch_size.observe(size);
        };
        if self.shared_log {
            let append = self.store.send(AppendNew {
                events: batch.clone(),
            });
            ctx.spawn(append.into_actor(self).map(move |res, act, ctx| {
                finish(act);
                match res.map_err(stopped).and_then(|r| r.map_err(refused)) {
                    Ok(outcomes) => act.numbered_by_log(batch, outcomes, waiters),
                    Err(e) => act.commit_failed(e, batch, waiters),
                }
                act.commit(ctx);
            }));
        } else {
            let events: Vec<_> = batch.iter().map(|p| p.event.clone()).collect();
            let append = self.store.send(Append {
                events: events.clone(),
            });
            ctx.spawn(append.into_actor(self).map(move |res, act, ctx| {
                finish(act);
                match res.map_err(stopped).and_then(|r| r.map_err(refused)) {
                    Ok(()) => act.committed(events, waiters, ctx),
                    Err(e) => act.commit_failed(e, batch, waiters),
                }
                act.commit(ctx);
            }));
        }
    }

    /// A single node's commit is done: answer it and queue its events for routing.
    fn committed(
        &mut self,
        events: Vec<Arc<EncodedEvent>>,
        waiters: Waiters,
        ctx: &mut Context<Self>,
    ) {
        for event in events {
            self.enqueue(event);
        }
        for (reply, results) in waiters {
            let _ = reply.send(results);
        }
        self.schedule_drain(ctx);
    }

    /// A shared log stored (or recognised) a batch: each event accepted into it gets
    /// the log's cursor, or is answered `duplicate` of what the log holds. Nothing is
    /// routed here: the tail brings the events back.
    fn numbered_by_log(&mut self, batch: Vec<NewEvent>, outcomes: Vec<Appended>, waiters: Waiters) {
        if outcomes.len() != batch.len() {
            let error = ProtocolError::new(
                ErrorCode::Internal,
                format!(
                    "the event log answered {} outcomes for {} events; not acknowledged",
                    outcomes.len(),
                    batch.len()
                ),
            );
            return self.commit_failed(error, batch, waiters);
        }
        self.forget_queued(&batch);
        let mut outcomes = outcomes.into_iter().zip(&batch);
        for (reply, mut results) in waiters {
            // In acceptance order, every result not yet a duplicate is one of the batch.
            for ok in results.iter_mut().flatten().filter(|ok| !ok.duplicate) {
                let Some((outcome, new)) = outcomes.next() else {
                    break;
                };
                let (cursor, duplicate) = match outcome {
                    Appended::Stored(c) => (c, false),
                    Appended::Duplicate(c) => (c, true),
                };
                if duplicate {
                    self.metrics.duplicates.fetch_add(1, Relaxed);
                }
                self.dedupe
                    .insert(&new.event.event.publisher, &ok.event_id, cursor);
                ok.cursor = cursor;
                ok.duplicate = duplicate;
            }
            let _ = reply.send(results);
        }
    }

    /// Nothing of a failed batch is routed or acknowledged; its ids are forgotten so a
    /// retry is not taken for a duplicate. A single node's cursors are never reused.
    fn commit_failed(&mut self, error: ProtocolError, batch: Vec<NewEvent>, waiters: Waiters) {
        log::error!("store write of {} events failed: {error}", batch.len());
        self.forget_queued(&batch);
        if !self.shared_log {
            for e in &batch {
                self.dedupe
                    .remove(&e.event.event.publisher, &e.event.event.id);
            }
        }
        let error = ProtocolError::new(error.code, format!("event not stored: {}", error.message));
        for (reply, results) in waiters {
            let results = results
                .into_iter()
                .map(|r| match r {
                    Ok(ok) if !ok.duplicate => Err(error.clone()),
                    other => other,
                })
                .collect();
            let _ = reply.send(results);
        }
    }

    /// A batch leaves the accepted-but-unrouted count without being routed here.
    fn forget_queued(&mut self, batch: &[NewEvent]) {
        self.queued -= batch.len();
        self.queued_bytes -= batch.iter().map(|e| e.event.json.len()).sum::<usize>();
    }

    /// Queues an event for routing; every cursor at or below `last_queued` has been
    /// queued (or refused), which is what replay's boundary relies on.
    fn enqueue(&mut self, event: Arc<EncodedEvent>) {
        self.last_queued = event.event.cursor;
        self.track_topic(&event.event);
        self.metrics.count_published(&event);
        self.queues[event.event.priority.index()].push_back(event);
    }
}

fn stopped(e: MailboxError) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, format!("store unavailable: {e}"))
}

fn refused(e: StoreError) -> ProtocolError {
    ProtocolError::new(e.code(), e.to_string())
}

impl Handler<Tailed> for Router {
    type Result = usize;

    fn handle(&mut self, msg: Tailed, ctx: &mut Context<Self>) -> usize {
        for event in msg.events {
            // The tail reads each cursor once; a repeat (a tail restarted after a
            // Redis failover) is never routed twice.
            if event.event.cursor <= self.last_queued {
                continue;
            }
            // Not added to the duplicate window: the log is the cluster's check, and
            // this node's own publishes entered it when the log answered them.
            self.queued += 1;
            self.queued_bytes += event.json.len();
            self.enqueue(event);
        }
        self.schedule_drain(ctx);
        self.queued
    }
}

impl Handler<LogInterrupted> for Router {
    type Result = ();

    fn handle(&mut self, msg: LogInterrupted, _: &mut Context<Self>) {
        log::error!(
            "shared log: {}; closing {} sessions",
            msg.reason,
            self.sessions.len()
        );
        // Lagged: forward past the trimmed events. Replaced: to the new log's end.
        self.last_queued = msg.resume_after;
        if msg.log_replaced {
            self.dedupe = DedupeWindow::new(self.config.router.dedupe_window);
        }
        for session in self.sessions.values() {
            let _ = session.close.try_send(CloseSession {
                reason: msg.reason.clone(),
            });
        }
    }
}
