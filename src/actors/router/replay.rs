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
        if sub.spec.durable.is_some() {
            let next = page
                .first()
                .map_or(upper + 1, |e| e.event.cursor)
                .min(upper + 1);
            if let Some((from, to)) = removed_before(reads, after, next, pending).await? {
                let gap = AnnounceGap {
                    sub: sub.clone(),
                    from,
                    to,
                };
                worker.send(gap).await.map_err(|e| e.to_string())?;
            }
        }
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

/// The cursors in `(after, next)` that retention removed while a durable subscription's
/// replay was on its way to them, less those it had resolved (`resolved`), or `None`.
///
/// Cursors are not dense (a failed commit leaves a hole), so a hole counts as lost only
/// below the oldest event the log still keeps. The durable position is not moved here:
/// deliveries before the hole may still be unacknowledged; the next resume moves it.
async fn removed_before(
    reads: &Recipient<Query>,
    after: u64,
    next: u64,
    resolved: &HashSet<u64>,
) -> Result<Option<(u64, u64)>, String> {
    if next <= after + 1 {
        return Ok(None);
    }
    let query = EventQuery {
        after: Some(0),
        limit: 1,
        ..EventQuery::default()
    };
    let oldest = reads
        .send(Query { query })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .first()
        .map_or(u64::MAX, |e| e.event.cursor);
    Ok(lost_range(after, next.min(oldest), resolved))
}

/// `(after, below)` without the resolved cursors at either end, or `None` if empty.
fn lost_range(after: u64, below: u64, resolved: &HashSet<u64>) -> Option<(u64, u64)> {
    let mut from = after + 1;
    let mut to = below.checked_sub(1)?;
    while from <= to && resolved.contains(&from) {
        from += 1;
    }
    while to >= from && resolved.contains(&to) {
        to -= 1;
    }
    (from <= to).then_some((from, to))
}

#[cfg(test)]
mod tests {
    use super::lost_range;
    use std::collections::HashSet;

    #[test]
    fn lost_ranges() {
        let none = HashSet::new();
        let ends: HashSet<u64> = [11, 12, 20].into_iter().collect();
        let all: HashSet<u64> = (11..=20).collect();
        type Case<'a> = (u64, u64, &'a HashSet<u64>, Option<(u64, u64)>);
        let cases: &[Case] = &[
            (10, 11, &none, None),
            (10, 12, &none, Some((11, 11))),
            (10, 21, &none, Some((11, 20))),
            (10, 21, &ends, Some((13, 19))),
            (10, 21, &all, None),
            (0, 0, &none, None),
        ];
        for (after, below, resolved, want) in cases {
            assert_eq!(
                lost_range(*after, *below, resolved),
                *want,
                "{after}..{below}"
            );
        }
    }
}
