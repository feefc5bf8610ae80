//! Writing: frames handed over by delivery workers wait in `pending`, highest
//! priority first among live events, and are written in turns of
//! [`WRITE_CHUNK_BYTES`] so that one busy subscriber does not hold its HTTP worker
//! thread. Once the backlog is written down, the delivery worker is told to `Resume`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::turn;
use super::{Ctx, Session};
use crate::actors::delivery::{worker_for, Resume, WriteFrames};
use crate::actors::send_or_wait;
use crate::delivery::{Backlog, OutFrame};
use crate::protocol::reply::event_frame;
use crate::protocol::{Priority, Reply};

/// Event frame bytes a session queues before it ends its context's turn (it waits on
/// [`turn::end_turn`]), so that the connection writes them and the other connections
/// of this HTTP worker thread get their turn. The WebSocket context encodes all frames
/// of a turn into one buffer, so without a break one turn could queue everything a
/// worker hands over while every other connection on the thread waited. Smaller turns
/// cost throughput (docs/benchmarks.md, scenario 4).
const WRITE_CHUNK_BYTES: usize = 128 << 10;

/// What a session keeps about its writing.
#[derive(Default)]
pub(super) struct Writing {
    /// Frames delivery workers handed over and this session has not written yet
    /// (shared with them through each subscription's `SessionSink`).
    pub(super) backlog: Arc<Backlog>,
    /// Frames handed over and not queued on the connection yet: a `WriteFrames` holds
    /// more than one turn should queue.
    pub(super) pending: VecDeque<OutFrame>,
    /// Event frame bytes queued since this session last let its connection write.
    pub(super) unwritten_bytes: usize,
}

impl Handler<WriteFrames> for Session {
    type Result = ();

    fn handle(&mut self, msg: WriteFrames, ctx: &mut Ctx) {
        let idle = self.write.pending.is_empty();
        for frame in msg.frames {
            enqueue(&mut self.write.pending, frame);
        }
        if idle {
            self.write_pending(ctx);
        }
        // Otherwise a `WritePending` is due and writes these after the others.
    }
}

/// Internal: go on writing [`Writing::pending`] after a break.
#[derive(Message)]
#[rtype(result = "()")]
struct WritePending;

impl Handler<WritePending> for Session {
    type Result = ();

    fn handle(&mut self, _: WritePending, ctx: &mut Ctx) {
        self.write_pending(ctx);
    }
}

/// Ends this context's turn: nothing more is read or handled until the runtime has
/// run the other connections' tasks that were ready ([`turn::end_turn`]).
pub(super) fn end_turn(ctx: &mut Ctx) {
    ctx.wait(actix::fut::wrap_future(turn::end_turn()));
}

/// A live event's priority; `None` for every other frame.
fn live_priority(frame: &OutFrame) -> Option<Priority> {
    match frame {
        OutFrame::Event { event, .. } => Some(event.event.priority),
        _ => None,
    }
}

/// Adds a handed-over frame to a session's `pending` frames. A live event goes ahead
/// of the live events of lower priority still waiting there (docs/protocol.md section
/// 5.2: events held back for a slow socket leave highest priority first, oldest first
/// within a priority); it never passes a replayed event, a `replay_complete` or a
/// `dropped` notice. Frames of one priority keep their order, and when all are of one
/// priority this looks at the last frame only.
fn enqueue(pending: &mut VecDeque<OutFrame>, frame: OutFrame) {
    let mut at = pending.len();
    if let Some(priority) = live_priority(&frame) {
        while at > 0 && live_priority(&pending[at - 1]).is_some_and(|waiting| waiting < priority) {
            at -= 1;
        }
    }
    pending.insert(at, frame);
}

impl Session {
    /// Queues pending frames on the connection until [`WRITE_CHUNK_BYTES`] of events,
    /// then ends the turn (the context waits on [`turn::end_turn`]) so that the
    /// connection writes them and the other connections of this HTTP worker thread get
    /// theirs, and comes back for the rest with a `WritePending`. Frames leave in the
    /// order [`enqueue`] put them in.
    fn write_pending(&mut self, ctx: &mut Ctx) {
        let mut written = 0;
        // One clock read per turn: the frames of a turn leave together.
        let now = Instant::now();
        while let Some(frame) = self.write.pending.pop_front() {
            written += 1;
            self.write_frame(frame, now, ctx);
            if self.write.unwritten_bytes >= WRITE_CHUNK_BYTES {
                self.write.unwritten_bytes = 0;
                end_turn(ctx);
                if !self.write.pending.is_empty() {
                    ctx.notify(WritePending);
                }
                break;
            }
        }
        if self.write.backlog.written(written) {
            // The worker has no timer for a waiting session: this message is its only
            // wake-up, so a full worker mailbox is waited on, not a reason to drop it.
            let resume = Resume { session: self.id };
            let worker = worker_for(self.id, &self.shared.workers);
            send_or_wait(&worker.recipient(), resume);
        }
    }

    fn write_frame(&mut self, frame: OutFrame, now: Instant, ctx: &mut Ctx) {
        // Only a live event's first delivery measures publish-to-deliver latency.
        let first_live = matches!(frame, OutFrame::Event { attempt: 1, .. });
        let replayed = matches!(frame, OutFrame::Replayed { .. });
        match frame {
            OutFrame::Event {
                sub,
                event,
                attempt,
            }
            | OutFrame::Replayed {
                sub,
                event,
                attempt,
            } => {
                if !sub.is_active() {
                    return;
                }
                let text = match &mut self.dialect {
                    None => event_frame(&sub.frame_prefix, &event.json, attempt),
                    Some(dialect) => dialect.event(&event.event, replayed),
                };
                self.write.unwritten_bytes += text.len();
                ctx.text(text);
                sub.delivered.fetch_add(1, Relaxed);
                self.shared.metrics.count_delivered(&event, first_live, now);
                if first_live {
                    self.shared.ingress.admission().observe(&event, &sub.spec);
                }
            }
            OutFrame::ReplayComplete { sub, last_cursor } => {
                if sub.is_active() {
                    self.notice(
                        ctx,
                        &Reply::ReplayComplete {
                            subscription_id: sub.id.clone(),
                            last_cursor,
                        },
                    );
                }
            }
            OutFrame::Gap { sub, from, to } => {
                if sub.is_active() {
                    self.notice(
                        ctx,
                        &Reply::Gap {
                            subscription_id: sub.id.clone(),
                            from_cursor: from,
                            to_cursor: to,
                            reason: "retention",
                        },
                    );
                }
            }
            OutFrame::Dropped { sub, count } => {
                if sub.is_active() {
                    self.notice(
                        ctx,
                        &Reply::Dropped {
                            subscription_id: sub.id.clone(),
                            count,
                            reason: "slow_consumer",
                        },
                    );
                }
            }
        }
    }
}

impl Session {
    /// Writes a notice about a subscription's stream (`replay_complete`, `gap`,
    /// `dropped`) in line with its events. Not through the reply queue: a reply owed
    /// to a pending publish or ack must not hold it back while later events pass it.
    fn notice(&mut self, ctx: &mut Ctx, reply: &Reply) {
        if let Some(text) = self.reply_text(reply) {
            ctx.text(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EncodedEvent, Event};
    use serde_json::json;

    /// Live events overtake lower-priority live events waiting in a session, keep
    /// their order within a priority, and never pass a replayed event or a notice.
    #[actix_rt::test]
    async fn pending_frames_leave_highest_priority_first_within_bounds() {
        let sub = crate::delivery::subscription::testing::subscription(
            json!({"type": "pattern", "patterns": [">"]}),
        );
        let event = |priority: &str, cursor: u64| {
            let mut e = Event::from_json(json!({"topic": "t", "priority": priority}), "s").unwrap();
            e.cursor = cursor;
            EncodedEvent::new(e)
        };
        let live = |priority: &str, cursor: u64| OutFrame::Event {
            sub: sub.clone(),
            event: event(priority, cursor),
            attempt: 1,
        };
        let mut pending = VecDeque::new();
        enqueue(&mut pending, live("low", 1));
        enqueue(
            &mut pending,
            OutFrame::Replayed {
                sub: sub.clone(),
                event: event("low", 2),
                attempt: 1,
            },
        );
        for (priority, cursor) in [
            ("low", 3),
            ("low", 4),
            ("high", 5),
            ("critical", 6),
            ("high", 7),
            ("low", 8),
        ] {
            enqueue(&mut pending, live(priority, cursor));
        }
        let order: Vec<u64> = pending
            .iter()
            .map(|f| match f {
                OutFrame::Event { event, .. } | OutFrame::Replayed { event, .. } => {
                    event.event.cursor
                }
                _ => 0,
            })
            .collect();
        assert_eq!(order, [1, 2, 6, 5, 7, 3, 4, 8]);
    }
}
