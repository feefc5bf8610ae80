//! Delivery state held by a delivery worker, as plain data structures: the waiting
//! events of each subscription ([`SubQueue`]), everything waiting for one session
//! ([`Outbox`]) and what it has not written yet ([`Backlog`]), at-least-once
//! bookkeeping ([`ack::AckTracker`]), coalescing windows ([`coalesce::Coalescer`]),
//! and the [`SubscriptionHandle`] that sessions, the router and workers share.
//!
//! Owns: which frame goes next, what is dropped or dead-lettered, and in what order.
//! Must not: match events (the router does) or name an actor: frames reach a session
//! through a [`FrameSink`] the actor layer implements, and the worker actor drives all
//! of this.

pub mod ack;
pub mod backlog;
pub mod coalesce;
pub mod outbox;
pub mod queue;
pub mod subscription;

pub use backlog::Backlog;
pub use outbox::{Flush, Outbox};
pub use queue::{DeadNote, QueueBounds, SubQueue};
pub use subscription::{FrameSink, Handed, OutFrame, SessionId, SessionSink, SubscriptionHandle};

#[cfg(test)]
mod tests;
