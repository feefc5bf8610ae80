//! The actors, one per file or folder, each with its messages beside it: those it
//! accepts, and those it sends out ([`router::CloseSession`],
//! [`delivery::WriteFrames`], [`delivery::DeadLettered`]).
//!
//! - [`router::Router`]: accepts events (assigns cursors, keeps the log), holds the four
//!   priority queues and the subscription index, matches each event once and hands the
//!   matches to the delivery workers.
//! - [`delivery::DeliveryWorker`]: per-subscriber waiting queues (priority-ordered,
//!   bounded, drop lowest-priority-oldest on overflow) and the flow of frames to sessions.
//! - [`session::Session`]: one per WebSocket connection; decodes commands, owns that
//!   connection's subscriptions, writes frames.
//! - [`store::StoreActor`]: the event log's owner, on a thread of its own.
//! - [`store_reader::StoreReader`]: the log's read pool, so reads never wait on commits.
//! - [`sources`]: the event sources of `[[sources]]`, which publish like clients.
//!
//! [`ingress`] is not an actor: the one publish path every way in shares.
//!
//! The state the router, workers and sessions share, a subscription's handle, is the
//! delivery layer's ([`crate::delivery::SubscriptionHandle`]).

pub mod delivery;
pub mod ingress;
pub mod log_tail;
pub mod router;
pub mod session;
pub mod sources;
pub mod store;
pub mod store_reader;

use actix::Recipient;

/// Sends without dropping: `try_send`, and when the receiver's mailbox is full, a
/// spawned `send` that waits for room. For rare control messages (dead letters, acks
/// of durable subscriptions), never for per-event fan-out.
pub fn send_or_wait<M>(to: &Recipient<M>, msg: M)
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    if let Err(actix::prelude::SendError::Full(msg)) = to.try_send(msg) {
        let to = to.clone();
        actix::spawn(async move {
            let _ = to.send(msg).await;
        });
    }
}
