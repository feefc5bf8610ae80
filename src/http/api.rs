//! Handlers of the JSON API (docs/protocol.md section 8), with `/health`, `/ready` and
//! `/metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::{body, Admin, AppState, Caller, ConnectionBudget};
use crate::actors::delivery::{self, worker_for};
use crate::actors::ingress::Shape;
use crate::actors::router::{self, Dedupe};
use crate::actors::store;
use crate::error::{ErrorCode, HttpError, ProtocolError};
use crate::protocol::split_events_body;
use crate::protocol::Priority;
use crate::protocol::{PublishResult, Reply};
use crate::routing::pattern::Pattern;
use crate::store::{EventQuery, Order, DEFAULT_LIMIT, MAX_LIMIT};

/// `GET /api/info` (and `/api`): what this service is and where its parts are.
pub async fn info(_caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "name": "switchyard",
        "version": env!("CARGO_PKG_VERSION"),
        "websocket": "/ws",
        "dashboard": "/",
        "routes": super::ROUTES,
    }))
}

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
pub async fn metrics(
    state: web::Data<AppState>,
    _caller: Caller,
) -> Result<HttpResponse, HttpError> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &state.registry).map_err(|e| {
        HttpError::new(ErrorCode::Internal, format!("metrics encoding failed: {e}"))
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(body))
}

/// How long `GET /ready` waits for each actor to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /ready`: 200 while the router and the store both answer, 503 naming what does
/// not (or `shutting_down`).
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let shutting_down = state.shutting_down.load(Ordering::Relaxed);
    let router = state.router.send(router::GetStats).timeout(READY_TIMEOUT);
    let store = state.store.send(store::Ping).timeout(READY_TIMEOUT);
    let (router, store) = futures_util::future::join(router, store).await;
    // Cluster mode: the shared log must answer too (its tail's last request did).
    let log =
        state.cluster.is_none() || state.metrics.cluster.log_reachable.load(Ordering::Relaxed) == 1;
    let (ready, status) = readiness(shutting_down, router.is_ok(), store.is_ok(), log);
    let body = serde_json::json!({ "status": status });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Whether the server is ready, and the `status` it says.
fn readiness(
    shutting_down: bool,
    router_answers: bool,
    store_answers: bool,
    log_reachable: bool,
) -> (bool, &'static str) {
    match (shutting_down, router_answers, store_answers, log_reachable) {
        (true, _, _, _) => (false, "shutting_down"),
        (false, false, _, _) => (false, "router_unavailable"),
        (false, true, false, _) => (false, "store_unavailable"),
        (false, true, true, false) => (false, "log_unavailable"),
        (false, true, true, true) => (true, "ready"),
    }
}

pub async fn stats(state: web::Data<AppState>, _caller: Caller) -> Result<HttpResponse, HttpError> {
    let mut stats = state
        .router
        .send(router::GetStats)
        .await
        .map_err(HttpError::router_unavailable)?;
    let store = state
        .store
        .send(store::Stats)
        .await
        .map_err(HttpError::store_unavailable)?
        .map_err(HttpError::from)?;
    stats["store"] = serde_json::to_value(store).unwrap_or_default();
    stats["node"] = state.config.cluster.node_name.clone().into();
    Ok(HttpResponse::Ok().json(stats))
}

/// `GET /api/sources`: each configured event source's state, counts and position.
pub async fn sources(state: web::Data<AppState>, _caller: Caller) -> HttpResponse {
    let sources: Vec<Value> = state
        .metrics
        .sources
        .snapshot()
        .iter()
        .map(|s| s.to_json())
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "sources": sources }))
}

/// `GET /api/cluster`: this node and the live nodes of its cluster (as of the last
/// beat); a single node lists itself alone.
pub async fn cluster(state: web::Data<AppState>, _caller: Caller) -> HttpResponse {
    let node = &state.config.cluster.node_name;
    let body = match &state.cluster {
        Some(view) => serde_json::json!({
            "node": node,
            "mode": "redis",
            "nodes": view.nodes(),
        }),
        None => serde_json::json!({
            "node": node,
            "mode": "single",
            "nodes": [],
        }),
    };
    HttpResponse::Ok().json(body)
}

pub async fn topics(
    state: web::Data<AppState>,
    Caller(caller): Caller,
) -> Result<HttpResponse, HttpError> {
    let mut topics = state
        .router
        .send(router::GetTopics)
        .await
        .map_err(HttpError::router_unavailable)?;
    // Only the topics the caller may read.
    topics.retain(|t| caller.may_read(&t.topic));
    Ok(HttpResponse::Ok().json(topics))
}

pub async fn subscriptions(
    state: web::Data<AppState>,
    _admin: Admin,
) -> Result<HttpResponse, HttpError> {
    let subs = state
        .router
        .send(router::ListSubscriptions)
        .await
        .map_err(HttpError::router_unavailable)?;
    Ok(HttpResponse::Ok().json(subs))
}

/// Query parameters of `GET /api/events`, kept as strings so that a bad value gets
/// our own error body rather than a bare 400.
#[derive(Debug, Deserialize)]
pub struct EventsParams {
    topic: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    priority: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    order: Option<String>,
}

/// `limit`: default 100, capped at 1000, at least 1.
fn parse_limit(raw: Option<&str>) -> Result<usize, HttpError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n.min(MAX_LIMIT)),
            _ => Err(HttpError::new(
                ErrorCode::InvalidRequest,
                format!("`limit` must be an integer from 1 to {MAX_LIMIT}, got `{s}`"),
            )),
        },
    }
}

fn parse_query(p: EventsParams) -> Result<EventQuery, HttpError> {
    let bad = |msg: String| HttpError::new(ErrorCode::InvalidRequest, msg);
    let topic = p.topic.as_deref().map(Pattern::parse).transpose()?;
    let priority = match p.priority.as_deref() {
        Some(s) => Some(Priority::parse(s).ok_or_else(|| bad(format!("unknown priority `{s}`")))?),
        None => None,
    };
    let after = match p.after.as_deref() {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| bad(format!("`after` must be a cursor (integer), got `{s}`")))?,
        ),
        None => None,
    };
    let limit = parse_limit(p.limit.as_deref())?;
    let order = match p.order.as_deref() {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(s) => return Err(bad(format!("`order` must be `asc` or `desc`, got `{s}`"))),
    };
    Ok(EventQuery {
        topic,
        event_type: p.event_type,
        priority,
        after,
        limit,
        order,
    })
}

/// `GET /api/events`: a JSON array of envelopes, each already encoded once.
pub async fn events(
    state: web::Data<AppState>,
    params: web::Query<EventsParams>,
    Caller(caller): Caller,
) -> Result<HttpResponse, HttpError> {
    let query = parse_query(params.into_inner())?;
    if let (Some(grant), Some(topic)) = (caller.read_grant(), &query.topic) {
        if !grant.iter().any(|g| g.intersects(topic)) {
            return Err(HttpError::new(
                ErrorCode::Forbidden,
                format!("`{}` may not read topic `{}`", caller.name, topic.as_str()),
            ));
        }
    }
    let mut events = state
        .reads
        .send(store::Query { query })
        .await
        .map_err(HttpError::store_unavailable)?
        .map_err(HttpError::from)?;
    // Events outside the caller's grant are left out of the page.
    if caller.read_grant().is_some() {
        events.retain(|e| caller.may_read(&e.event.topic));
    }
    let mut body =
        String::with_capacity(2 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
    body.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.json);
    }
    body.push(']');
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// `POST /api/events`: one event or an array; `201` with a `published_batch` body.
/// Events take the same path as a WebSocket publish ([`crate::actors::ingress`]),
/// charged to this HTTP connection's publish budget. The body is read only once the
/// caller is known ([`body::read`]), and never past `limits.max_event_bytes`, the
/// most a publish may be.
pub async fn publish(
    req: HttpRequest,
    state: web::Data<AppState>,
    Caller(caller): Caller,
    payload: web::Payload,
) -> Result<HttpResponse, HttpError> {
    let limits = &state.config.limits;
    let timeout = Duration::from_millis(state.config.server.body_timeout_ms);
    let body = body::read(&req, payload, limits.max_event_bytes, timeout).await?;
    let single = !body.trim_ascii_start().starts_with(b"[");
    let shape = if single { Shape::One } else { Shape::Batch };
    // Refused before anything is parsed.
    state
        .ingress
        .check_size(body.len(), shape)
        .map_err(HttpError)?;
    let raw = split_events_body(&body).map_err(HttpError)?.events;
    let budget = ConnectionBudget::of(&req, &state.config.limits);
    let admitted = state
        .ingress
        .admit(&raw, body.len(), shape, &caller, &budget.0)
        .map_err(HttpError)?;
    if let Some(pause) = admitted.pause() {
        // Urgent events are late and these are all low: they wait before the router
        // takes them (`crate::overload`), and so does the client for its answer.
        actix_web::rt::time::sleep(pause).await;
    }
    let merged = state.ingress.publish(admitted).await;
    if single {
        // The only event was valid; the router may still refuse it (queue or inbox
        // full: 429 `rate_limited`).
        if let Some(Err(e)) = merged.first() {
            return Err(HttpError(e.clone()));
        }
    }
    let results: Vec<PublishResult> = merged.into_iter().map(PublishResult::from).collect();
    Ok(HttpResponse::Created().body(
        Reply::PublishedBatch {
            results,
            request_id: None,
        }
        .to_text(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct DeadLetterParams {
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /api/dead-letters?after=&limit=`.
pub async fn dead_letters(
    _admin: Admin,
    state: web::Data<AppState>,
    params: web::Query<DeadLetterParams>,
) -> Result<HttpResponse, HttpError> {
    let bad = |msg: String| HttpError::new(ErrorCode::InvalidRequest, msg);
    let after = match params.after.as_deref() {
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| bad(format!("`after` must be an id (integer), got `{s}`")))?,
        None => 0,
    };
    let limit = parse_limit(params.limit.as_deref())?;
    let list = state
        .store
        .send(store::ListDeadLetters { after, limit })
        .await
        .map_err(HttpError::store_unavailable)?
        .map_err(HttpError::from)?;
    let rows: Vec<Value> = list.iter().map(|d| d.to_json()).collect();
    Ok(HttpResponse::Ok().json(rows))
}

fn dead_letter_id(raw: &str) -> Result<u64, HttpError> {
    raw.parse().map_err(|_| {
        HttpError::new(
            ErrorCode::InvalidRequest,
            format!("dead-letter id must be an integer, got `{raw}`"),
        )
    })
}

fn no_dead_letter(id: u64) -> HttpError {
    HttpError::new(ErrorCode::NotFound, format!("no dead letter {id}"))
}

/// `POST /api/dead-letters/{id}/retry`: back to its subscription when that is still
/// open, otherwise published again. The dead letter is removed only once that worked.
pub async fn retry_dead_letter(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let id = dead_letter_id(&id)?;
    let dl = state
        .store
        .send(store::GetDeadLetter { id })
        .await
        .map_err(HttpError::store_unavailable)?
        .map_err(HttpError::from)?
        .ok_or_else(|| no_dead_letter(id))?;
    let find = router::FindSubscription {
        connection_id: dl.connection_id,
        subscription_id: dl.subscription_id.clone(),
    };
    let live = state
        .router
        .send(find)
        .await
        .map_err(HttpError::router_unavailable)?;
    let mut body = None;
    if let Some(sub) = live {
        let worker = worker_for(sub.session_id, &state.workers);
        let queued = worker
            .send(delivery::Redeliver {
                sub,
                event: dl.event.clone(),
            })
            .await;
        if queued == Ok(true) {
            body = Some(
                serde_json::json!({"id": id, "retried": "redelivered", "subscription": dl.subscription_id}),
            );
        }
    }
    let body = match body {
        Some(b) => b,
        None => {
            let event = vec![dl.event.event.clone()];
            let results = router::publish(&state.router, &state.metrics, event, Dedupe::Skip).await;
            let ok = results.into_iter().next().unwrap_or_else(|| {
                Err(ProtocolError::new(
                    ErrorCode::Internal,
                    "router returned no result",
                ))
            })?;
            serde_json::json!({"id": id, "retried": "republished", "cursor": ok.cursor})
        }
    };
    state
        .store
        .send(store::TakeDeadLetter { id })
        .await
        .map_err(HttpError::store_unavailable)?
        .map_err(HttpError::from)?;
    Ok(HttpResponse::Ok().json(body))
}

/// `DELETE /api/dead-letters/{id}`.
pub async fn delete_dead_letter(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let id = dead_letter_id(&id)?;
    let taken = state
        .store
        .send(store::TakeDeadLetter { id })
        .await
        .map_err(HttpError::store_unavailable)?
        .map_err(HttpError::from)?;
    match taken {
        Some(_) => Ok(HttpResponse::NoContent().finish()),
        None => Err(no_dead_letter(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_does_not_answer() {
        let table = [
            ((false, true, true, true), (true, "ready")),
            ((true, true, true, true), (false, "shutting_down")),
            ((false, false, true, true), (false, "router_unavailable")),
            ((false, false, false, false), (false, "router_unavailable")),
            ((false, true, false, true), (false, "store_unavailable")),
            ((false, true, true, false), (false, "log_unavailable")),
            ((true, true, true, false), (false, "shutting_down")),
        ];
        for ((shutting_down, router, store, log), want) in table {
            assert_eq!(readiness(shutting_down, router, store, log), want);
        }
    }
}
