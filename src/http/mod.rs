//! The HTTP surface: routes, shared state, and the JSON API of PROTOCOL.md section 6.
//!
//! Owns: request parsing and response shapes. Must not: keep state of its own; every
//! answer comes from the router (or the shared metrics).

mod api;

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::delivery::DeliveryWorker;
use crate::actors::router::Router;
use crate::actors::session;
use crate::actors::store::StoreActor;
use crate::config::Config;
use crate::error::{ErrorCode, HttpError};
use crate::metrics::Metrics;

/// What every handler can reach.
pub struct AppState {
    pub router: Addr<Router>,
    /// Delivery workers, for acks: a session talks to the worker serving it.
    pub workers: Arc<[Addr<DeliveryWorker>]>,
    pub store: Addr<StoreActor>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// `GET /metrics`.
    pub registry: prometheus_client::registry::Registry,
    /// Set once shutdown begins; `/ready` answers 503 from then on.
    pub shutting_down: Arc<std::sync::atomic::AtomicBool>,
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(session::upgrade))
        .route("/", web::get().to(root))
        .route("/health", web::get().to(api::health))
        .route("/ready", web::get().to(api::ready))
        .route("/metrics", web::get().to(api::metrics))
        .service(
            web::scope("/api")
                .route("/stats", web::get().to(api::stats))
                .route("/topics", web::get().to(api::topics))
                .route("/events", web::get().to(api::events))
                .route("/events", web::post().to(api::publish))
                .route("/subscriptions", web::get().to(api::subscriptions))
                .route("/dead-letters", web::get().to(api::dead_letters))
                .route(
                    "/dead-letters/{id}/retry",
                    web::post().to(api::retry_dead_letter),
                )
                .route(
                    "/dead-letters/{id}",
                    web::delete().to(api::delete_dead_letter),
                ),
        )
        .route("/stats", web::get().to(api::stats))
        .route("/topics", web::get().to(api::topics))
        .route("/events", web::get().to(api::events))
        .default_service(web::to(not_found));
}

/// `GET /`: a WebSocket upgrade when asked for one (existing clients connect to a bare
/// `ws://host:port`), otherwise a short description of the service.
async fn root(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<session::ConnectQuery>,
) -> Result<HttpResponse, HttpError> {
    let wants_upgrade = req
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_upgrade {
        return session::upgrade(req, stream, state, query).await;
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "name": "switchyard",
        "version": env!("CARGO_PKG_VERSION"),
        "websocket": "/ws",
        "api": ["/api/stats", "/api/topics", "/api/events", "/api/subscriptions", "/health", "/ready"],
    })))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, HttpError> {
    Err(HttpError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}
