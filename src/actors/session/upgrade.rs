//! Starting a session: connection ids, the connect query (`?topics=…`), the dialect
//! it speaks, and the WebSocket handshake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde::Deserialize;

use super::read::Reading;
use super::write::Writing;
use super::{ErrorBudget, Session, Shared};
use crate::auth::Principal;
use crate::error::{ErrorCode, HttpError};
use crate::metrics::ConnectionPermit;
use crate::protocol::dialect::{todoki, Dialect};
use crate::protocol::order::ReplyOrder;
use crate::rate_limit::PublishBudget;
use crate::routing::pattern::Pattern;
use crate::routing::SubscriptionSpec;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Starts connection ids past any id a previous run of the server handed out (dead
/// letters name the connection they came from), from the wall clock in microseconds.
pub fn seed_session_ids() {
    let micros = chrono::Utc::now().timestamp_micros().max(1) as u64;
    NEXT_SESSION_ID.fetch_max(micros, Relaxed);
}

/// Connection query parameters (docs/protocol.md section 1.2).
#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    pub topics: Option<String>,
    pub kinds: Option<String>,
    pub agent_id: Option<String>,
    pub task_id: Option<String>,
    pub cursor: Option<String>,
}

/// The protocol a session speaks, chosen by the endpoint it was upgraded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// The native protocol (`/ws`, `/`).
    Native,
    /// todoki's (`/ws/event-bus`): its subscription comes from the connect query.
    Todoki,
    /// Descartes's (`/events`): it subscribes with a `Subscribe` frame.
    Descartes,
}

/// Starts a [`Session`] on an upgrade request whose caller the HTTP layer has
/// authenticated, charging its publishes to `budget` (its connection's): refuses a bad connect-time subscription (400) or one outside the
/// caller's read grant (403), and refuses past `max_connections` (503).
pub fn upgrade(
    req: &HttpRequest,
    stream: web::Payload,
    shared: &Arc<Shared>,
    principal: Arc<Principal>,
    budget: Arc<PublishBudget>,
    query: &ConnectQuery,
    speaks: Speaks,
) -> Result<HttpResponse, HttpError> {
    let (dialect, mut connect_subscription) = match speaks {
        Speaks::Native => (None, connect_subscription(query)?),
        Speaks::Todoki => {
            let (state, object) = todoki::connect(
                query.kinds.as_deref(),
                query.cursor.as_deref(),
                query.agent_id.as_deref(),
                query.task_id.as_deref(),
            )?;
            let spec = SubscriptionSpec::from_json(object)?;
            (Some(Dialect::Todoki(state)), Some(spec))
        }
        Speaks::Descartes => (Some(Dialect::Descartes), None),
    };
    if let (Some(spec), Some(grant)) = (connect_subscription.as_mut(), principal.read_grant()) {
        spec.restrict_to(&principal.name, grant)?;
    }
    let limits = &shared.config.limits;
    let Some(permit) = ConnectionPermit::acquire(&shared.metrics, limits.max_connections) else {
        return Err(HttpError::new(
            ErrorCode::TooManyConnections,
            format!(
                "connection limit reached ({} open); retry later",
                limits.max_connections
            ),
        ));
    };
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let read = Reading::default();
    let gated = read.pause.gate(stream);
    let session = Session {
        id: NEXT_SESSION_ID.fetch_add(1, Relaxed),
        peer,
        shared: shared.clone(),
        principal,
        dialect,
        subscriptions: HashMap::new(),
        connect_subscription: connect_subscription.map(Box::new),
        replies: ReplyOrder::default(),
        publishes_in_flight: 0,
        budget,
        errors: ErrorBudget::default(),
        read,
        write: Writing::default(),
        _permit: permit,
    };
    ws::WsResponseBuilder::new(session, req, gated)
        .frame_size(limits.max_frame_bytes)
        .start()
        .map_err(|e| {
            HttpError::new(
                ErrorCode::InvalidRequest,
                format!("WebSocket handshake failed: {e}"),
            )
        })
}

fn connect_subscription(q: &ConnectQuery) -> Result<Option<SubscriptionSpec>, HttpError> {
    let cursor = match q.cursor.as_deref() {
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            HttpError::new(
                ErrorCode::InvalidRequest,
                format!("`cursor` must be an integer, got `{c}`"),
            )
        })?),
        None => None,
    };
    let Some(topics) = q.topics.as_ref().or(q.kinds.as_ref()) else {
        if cursor.is_some() {
            return Err(HttpError::new(
                ErrorCode::InvalidRequest,
                "`cursor` needs `topics`",
            ));
        }
        return Ok(None);
    };
    let topics: Vec<String> = topics
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if topics.is_empty() {
        return Err(HttpError::new(
            ErrorCode::InvalidPattern,
            "`topics` names no pattern",
        ));
    }
    for t in &topics {
        Pattern::parse(t)?;
    }
    Ok(Some(SubscriptionSpec::from_topics(
        topics,
        q.agent_id.clone(),
        q.task_id.clone(),
        cursor,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_query_builds_a_pattern_subscription() {
        let q = ConnectQuery {
            topics: Some("task.*, agent.>".into()),
            agent_id: Some("a1".into()),
            ..Default::default()
        };
        let spec = connect_subscription(&q).unwrap().unwrap();
        assert_eq!(spec.patterns, ["task.*", "agent.>"]);
        let bad = ConnectQuery {
            kinds: Some("task..x".into()),
            ..Default::default()
        };
        assert!(connect_subscription(&bad).is_err());
        assert!(connect_subscription(&ConnectQuery::default())
            .unwrap()
            .is_none());
    }
}
