//! Routing policy as pure functions: priorities, topic patterns, filters and
//! subscription specs. Nothing here does I/O or knows about actors.

pub mod coalesce;
pub mod condition;
pub mod dedupe;
pub mod filter;
pub mod index;
pub mod pattern;
pub mod subscription;

pub use subscription::{Matcher, Replay, SubscriptionKind, SubscriptionSpec};
