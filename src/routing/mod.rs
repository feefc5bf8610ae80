//! Routing policy: topic patterns, filters, CEL conditions, coalesce keys, subscription
//! specs, the topic-prefix subscription index and the duplicate-id window. Nothing here
//! does I/O or knows about actors.

pub mod coalesce;
pub mod condition;
pub mod dedupe;
pub mod filter;
pub mod index;
pub mod pattern;
pub mod subscription;

pub use subscription::{Matcher, Replay, SubscriptionKind, SubscriptionSpec};
