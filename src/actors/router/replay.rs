//! Replay: stored matches of a subscription, read from the store page by page and
//! handed to its delivery worker, before the subscription continues live.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use super::{CloseSession, Router};
use crate::actors::delivery::{worker_for, AnnounceGap, DeliveryWorker, ReplayEvents};
use crate::actors::store::Query;
use crate::delivery::SubscriptionHandle;
use crate::routing::Replay;
use crate::store::EventQuery;

impl Router {
    /// Replays stored matches of `sub` that were routed before it joined the index.
    ///
    /// The boundary is `last_queued`: events above it are not queued yet, so they
    /// will be routed (live) after the subscription joins. Of the events at or below it,
    /// those still waiting in the priority queues will be routed live as well; all
    /// others were routed before and are replayed. A task reads the store's read pool page by
    /// page, handing each page to the subscription's worker once the previous one drained.
    /// `skip` holds cursors already resolved (a durable subscription's acks); `lost`,
    /// cursors retention removed before it resolved them, announced first (`gap`).
    pub(super) fn start_replay(
        &mut self,
        sub: Arc<SubscriptionHandle>,
        replay: Replay,
        mut skip: HashSet<u64>,
        lost: Option<(u64, u64)>,
        ctx: &mut Context<Self>,
    ) {
        let upper = self.last_queued;
        let pending = self
            .queues
            .iter()
            .flatten()
            .map(|e| e.event.cursor)
            .filter(|c| *c <= upper);
        skip.extend(pending);
        let pending = skip;
        let worker = worker_for(sub.session_id, &self.workers);
        let reads = self.reads.clone();
        let session = sub.session_id;
        ctx.spawn(
            async move {
                if let Some((from, to)) = lost {
                    let gap = AnnounceGap {
                        sub: sub.clone(),
                        from,
                        to,
                    };
                    worker.send(gap).await.map_err(|e| e.to_string())?;
                }
                let after = replay.start_after();
                replay_stored(&reads, &worker, &sub, replay, after, upper, &pending).await?;
                let done = ReplayEvents {
                    sub,
                    events: Vec::new(),
                    complete_at: Some(upper),
                };
                worker.send(done).await.map_err(|e| e.to_string())
            }
            .into_actor(self)
            .map(move |res, act, _| {
                if let Err(e) = res {
                    // Never a silent gap: the client reconnects and resumes from its cursor.
                    log::error!("replay for connection {session} failed, closing it: {e}");
                    if let Some(s) = act.sessions.get(&session) {
                        let _ = s.close.try_send(CloseSession {
                            reason: "replay failed; reconnect to resume".into(),
                        });
                    }
                }
            }),
        );
    }
}

/// Events per replay page read from the store, and the most replayed events a worker
/// holds for one subscription before the next page is read.
const REPLAY_PAGE: usize = 1000;

/// Hands the stored events of `sub` in `(after, upper]` that `replay` admits, match the
/// subscription, and are not in `pending` (those arrive live), to `worker`, in pages.
async fn replay_stored(
    reads: &Recipient<Query>,
    worker: &Addr<DeliveryWorker>,
    sub: &Arc<SubscriptionHandle>,
    replay: Replay,
    mut after: u64,
    upper: u64,
    pending: &HashSet<u64>,
) -> Result<(), String> {
    let now = Utc::now();
    while after < upper && sub.is_active() {
        let query = EventQuery {
            after: Some(after),
            limit: REPLAY_PAGE,
            ..EventQuery::default()
        };
        let page = reads
            .send(Query { query })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = last.event.cursor;
        let events: Vec<_> = page
            .into_iter()
            .filter(|e| {
                let ev = &e.event;
                ev.cursor <= upper
                    && !pending.contains(&ev.cursor)
                    && replay.admits(ev)
                    && !ev.is_expired(now)
                    && sub.spec.matcher.matches(ev)
            })
            .collect();
        if !events.is_empty() {
            let msg = ReplayEvents {
                sub: sub.clone(),
                events,
                complete_at: None,
            };
            worker.send(msg).await.map_err(|e| e.to_string())?;
        }
        // Bounded: the next page waits until this one has mostly reached the session.
        while sub.replay_backlog.load(Relaxed) as usize > REPLAY_PAGE && sub.is_active() {
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}
