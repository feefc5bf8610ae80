//! Read-only views of the router for the HTTP API: stats, topics, subscriptions.

use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::json;

use super::{Router, RATE_WINDOW};
use crate::protocol::Priority;

/// The `/api/stats` document.
#[derive(Message)]
#[rtype(result = "serde_json::Value")]
pub struct GetStats;

/// The `/api/topics` list.
#[derive(Message)]
#[rtype(result = "Vec<TopicInfo>")]
pub struct GetTopics;

/// The `/api/subscriptions` document.
#[derive(Message)]
#[rtype(result = "serde_json::Value")]
pub struct ListSubscriptions;

/// One row of `/api/topics`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    pub topic: String,
    pub count: u64,
    pub last_cursor: u64,
    pub last_at: String,
}

impl Router {
    fn queue_depths(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for p in Priority::HIGHEST_FIRST {
            m.insert(p.as_str().into(), self.queues[p.index()].len().into());
        }
        m.insert("total".into(), self.queued.into());
        serde_json::Value::Object(m)
    }
}

impl Handler<GetStats> for Router {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let m = &self.metrics;
        MessageResult(json!({
            "uptime_seconds": m.started.elapsed().as_secs_f64(),
            "events": {
                "published": m.published.to_json(),
                "delivered": m.delivered.to_json(),
                "dropped": m.dropped.to_json(),
                "dead_lettered": m.dead_lettered.to_json(),
                "duplicates": m.duplicates.load(Relaxed),
                "expired": self.expired,
                "coalesced": m.coalesced.load(Relaxed),
                "condition_errors": m.condition_errors.load(Relaxed),
                "rejected_busy": m.rejected_busy.load(Relaxed),
                "rejected_over_rate": m.rejected_over_rate.load(Relaxed),
                "dead_letters_shed": m.dead_letters_shed.load(Relaxed),
            },
            "rates_per_second": {
                "published": self.published_rate.per_second(),
                "delivered": self.delivered_rate.per_second(),
                "window_seconds": RATE_WINDOW.as_secs(),
            },
            "queues": self.queue_depths(),
            "connections": {
                "open": m.connections.load(Relaxed),
                "total": m.connections_total.load(Relaxed),
                "refused": m.connections_refused.load(Relaxed),
            },
            "subscriptions": self.index.len(),
            "protocol_errors": m.protocol_errors.load(Relaxed),
        }))
    }
}

impl Handler<GetTopics> for Router {
    type Result = MessageResult<GetTopics>;

    fn handle(&mut self, _: GetTopics, _: &mut Context<Self>) -> Self::Result {
        let mut topics: Vec<TopicInfo> = self
            .topics
            .iter()
            .map(|(topic, t)| TopicInfo {
                topic: topic.clone(),
                count: t.count,
                last_cursor: t.last_cursor,
                last_at: t.last_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            })
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        MessageResult(topics)
    }
}

impl Handler<ListSubscriptions> for Router {
    type Result = MessageResult<ListSubscriptions>;

    fn handle(&mut self, _: ListSubscriptions, _: &mut Context<Self>) -> Self::Result {
        let mut connections: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, s)| {
                let subs: Vec<_> = self
                    .index
                    .iter()
                    .filter(|h| h.session_id == *id)
                    .map(|h| h.to_json())
                    .collect();
                (
                    *id,
                    json!({
                        "connection_id": id,
                        "peer": s.peer,
                        "connected_at": s.connected_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                        "subscriptions": subs,
                    }),
                )
            })
            .collect();
        connections.sort_by_key(|(id, _)| *id);
        MessageResult(json!({
            "connections": connections.into_iter().map(|(_, c)| c).collect::<Vec<_>>(),
            "subscription_count": self.index.len(),
        }))
    }
}
