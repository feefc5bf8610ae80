//! Event storage. Until the durable store lands, the router keeps a bounded in-memory
//! log ([`memory::MemoryLog`]) that serves `/api/events`.

pub mod memory;

use serde::Deserialize;

use crate::routing::pattern::Pattern;
use crate::routing::Priority;

/// Default and maximum page sizes of `/api/events`.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// A query over stored events (the parameters of `GET /api/events`).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub topic: Option<Pattern>,
    pub event_type: Option<String>,
    pub priority: Option<Priority>,
    /// Only events with a cursor greater than this.
    pub after: Option<u64>,
    pub limit: usize,
    pub order: Order,
}
