//! Publishing into the router: the [`Publish`] message, and [`publish`], the one way
//! anything sends it (the ingress, for sessions and `POST /api/events`; dead-letter
//! retries).
//!
//! Owns: the publisher's side of the router's inbox. A publish never waits for room:
//! it is `try_send`, and a full inbox answers every event `rate_limited` at once. The
//! router's side (dedupe, cursor, commit) is `Router::accept` and `Router::commit`.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;

use actix::dev::ToEnvelope;
use actix::prelude::*;

use super::{Router, MAILBOX_CAPACITY};
use crate::error::{ErrorCode, ProtocolError};
use crate::metrics::Metrics;
use crate::protocol::{Event, PublishOk};

/// Accept validated events. One result per event, in order, sent on `reply` once the
/// commit holding them is done. Sent only through [`publish`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub events: Vec<Event>,
    pub dedupe: Dedupe,
    pub reply: PublishReply,
    /// When it entered the router's inbox (`router_inbox_wait_seconds`).
    pub sent_at: std::time::Instant,
}

/// Whether a publish is checked against the dedupe window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// A repeated id is answered `duplicate: true` and not routed again.
    Check,
    /// Route it again even if its id was seen: a retried dead letter, republished.
    Skip,
}

/// One result per published event, in the order sent.
pub type PublishResults = Vec<Result<PublishOk, ProtocolError>>;

/// Where the results of one [`Publish`] go.
pub type PublishReply = tokio::sync::oneshot::Sender<PublishResults>;

/// Publishes `events` through `router` and resolves to one result per event, in order,
/// once they are committed. The one way anything sends a [`Publish`] (the ingress,
/// dead-letter retries), so the policy lives here: the message is
/// `try_send`, and when the router's inbox is full every event is refused with
/// `rate_limited` at once (counted in `rejected_busy`) instead of waiting for room.
/// A refused event is never stored.
pub fn publish<A>(
    router: &Addr<A>,
    metrics: &Metrics,
    events: Vec<Event>,
    dedupe: Dedupe,
) -> impl Future<Output = PublishResults> + 'static
where
    A: Handler<Publish>,
    A::Context: ToEnvelope<A, Publish>,
{
    enum Sent {
        Nothing,
        Queued(tokio::sync::oneshot::Receiver<PublishResults>),
        Refused(ProtocolError),
    }
    let count = events.len();
    let sent = if events.is_empty() {
        Sent::Nothing
    } else {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let publish = Publish {
            events,
            dedupe,
            reply,
            sent_at: std::time::Instant::now(),
        };
        match router.try_send(publish) {
            Ok(()) => Sent::Queued(answer),
            Err(SendError::Full(_)) => {
                metrics.rejected_busy.fetch_add(count as u64, Relaxed);
                Sent::Refused(ProtocolError::new(
                    ErrorCode::RateLimited,
                    format!("router inbox full ({MAILBOX_CAPACITY} messages); retry shortly"),
                ))
            }
            Err(SendError::Closed(_)) => Sent::Refused(ProtocolError::new(
                ErrorCode::Internal,
                "router unavailable: it has stopped",
            )),
        }
    };
    async move {
        match sent {
            Sent::Nothing => Vec::new(),
            Sent::Refused(e) => vec![Err(e); count],
            Sent::Queued(answer) => answer.await.unwrap_or_else(|_| {
                let lost = ProtocolError::new(
                    ErrorCode::Internal,
                    "router stopped before the store answered",
                );
                vec![Err(lost); count]
            }),
        }
    }
}

impl Handler<Publish> for Router {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        let waited = msg.sent_at.elapsed().as_secs_f64();
        let results = msg
            .events
            .into_iter()
            .map(|e| {
                self.metrics.inbox_wait.observe(e.priority, waited);
                self.accept(e, msg.dedupe)
            })
            .collect();
        self.commit_waiters.push((msg.reply, results));
        self.commit(ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Stands in for the router: answers every event with a cursor, and records the
    /// event types that reached it.
    struct Inbox {
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Actor for Inbox {
        type Context = Context<Self>;
    }

    impl Handler<Publish> for Inbox {
        type Result = ();

        fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
            let mut seen = self.seen.lock().unwrap();
            let results = msg
                .events
                .into_iter()
                .map(|e| {
                    seen.push(e.event_type.clone());
                    Ok(PublishOk {
                        event_id: e.id,
                        cursor: seen.len() as u64,
                        duplicate: false,
                    })
                })
                .collect();
            let _ = msg.reply.send(results);
        }
    }

    fn events(types: &[&str]) -> Vec<Event> {
        types
            .iter()
            .map(|t| Event::from_json(serde_json::json!({ "type": t }), "test").unwrap())
            .collect()
    }

    fn codes(results: &PublishResults) -> Vec<Result<u64, ErrorCode>> {
        results
            .iter()
            .map(|r| r.as_ref().map(|ok| ok.cursor).map_err(|e| e.code))
            .collect()
    }

    /// An inbox of capacity 1 that is not running yet: its first message fills it.
    fn stalled_inbox() -> (Context<Inbox>, Addr<Inbox>) {
        let mut ctx = Context::new();
        ctx.set_mailbox_capacity(1);
        let addr = ctx.address();
        (ctx, addr)
    }

    #[actix_rt::test]
    async fn a_full_inbox_refuses_every_event_at_once_and_nothing_reaches_it() {
        let metrics = Metrics::default();
        let (ctx, addr) = stalled_inbox();
        let queued = publish(&addr, &metrics, events(&["a_x"]), Dedupe::Check);
        // The inbox is full: answered at once, without the receiver ever running.
        let refused = publish(&addr, &metrics, events(&["b_x", "c_x"]), Dedupe::Check).await;
        assert_eq!(
            codes(&refused),
            [Err(ErrorCode::RateLimited), Err(ErrorCode::RateLimited)]
        );
        let message = &refused[0].as_ref().unwrap_err().message;
        assert!(message.contains("router inbox full"), "{message}");
        assert!(message.contains("retry"), "{message}");
        assert_eq!(metrics.rejected_busy.load(Relaxed), 2);

        // Once the receiver runs, the queued publish is answered, and only it arrived.
        let seen = Arc::new(Mutex::new(Vec::new()));
        ctx.run(Inbox { seen: seen.clone() });
        assert_eq!(codes(&queued.await), [Ok(1)]);
        assert_eq!(*seen.lock().unwrap(), ["a_x"]);
        // With room again, publishing works.
        let again = publish(&addr, &metrics, events(&["d_x"]), Dedupe::Check).await;
        assert_eq!(codes(&again), [Ok(2)]);
        assert_eq!(metrics.rejected_busy.load(Relaxed), 2);
    }

    #[actix_rt::test]
    async fn a_stopped_router_answers_internal_and_nothing_is_lost_silently() {
        let metrics = Metrics::default();
        let (ctx, addr) = stalled_inbox();
        let queued = publish(&addr, &metrics, events(&["a_x"]), Dedupe::Check);
        drop(ctx);
        let results = queued.await;
        assert_eq!(codes(&results), [Err(ErrorCode::Internal)]);
        let closed = publish(&addr, &metrics, events(&["b_x"]), Dedupe::Check).await;
        assert_eq!(codes(&closed), [Err(ErrorCode::Internal)]);
        assert_eq!(metrics.rejected_busy.load(Relaxed), 0);
    }

    #[actix_rt::test]
    async fn nothing_to_publish_does_not_touch_the_router() {
        let metrics = Metrics::default();
        let (_ctx, addr) = stalled_inbox();
        let _fill = publish(&addr, &metrics, events(&["a_x"]), Dedupe::Check);
        let results = publish(&addr, &metrics, Vec::new(), Dedupe::Check).await;
        assert!(results.is_empty());
        assert_eq!(metrics.rejected_busy.load(Relaxed), 0);
    }
}
