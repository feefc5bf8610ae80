//! The HTTP surface: routes, shared state, the JSON API of PROTOCOL.md section 6, and
//! the embedded web dashboard.
//!
//! Owns: request parsing and response shapes. Must not: keep state of its own; every
//! answer comes from the router (or the shared metrics).

mod api;
pub mod dashboard;

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::delivery::DeliveryWorker;
use crate::actors::router::Router;
use crate::actors::session;
use crate::actors::store::StoreActor;
use crate::auth::{Authenticator, Principal};
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
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// Throttles low-only publishers while urgent events are late.
    pub admission: Arc<crate::overload::LowAdmission>,
    /// `GET /metrics`.
    pub registry: prometheus_client::registry::Registry,
    /// Set once shutdown begins; `/ready` answers 503 from then on.
    pub shutting_down: Arc<std::sync::atomic::AtomicBool>,
}

/// The authenticated caller of a request (`Authorization: Bearer`); extracting it
/// answers 401 `unauthorized` when auth is on and the credential is missing or bad.
pub struct Caller(pub Arc<Principal>);

impl actix_web::FromRequest for Caller {
    type Error = HttpError;
    type Future = std::future::Ready<Result<Caller, HttpError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(authenticate(req, false).map(Caller))
    }
}

/// A caller with the `admin` grant: 403 `forbidden` for anyone else.
pub struct Admin(pub Arc<Principal>);

impl actix_web::FromRequest for Admin {
    type Error = HttpError;
    type Future = std::future::Ready<Result<Admin, HttpError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(authenticate(req, false).and_then(|p| {
            p.check_admin()?;
            Ok(Admin(p))
        }))
    }
}

/// The principal of `req`; `allow_query` also accepts `?token=` (WebSocket upgrades).
pub fn authenticate(req: &HttpRequest, allow_query: bool) -> Result<Arc<Principal>, HttpError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| HttpError::new(ErrorCode::Internal, "application state missing"))?;
    let credential = crate::auth::bearer(req, allow_query);
    let principal = state.auth.authenticate(credential.as_deref())?;
    if !state.auth.enabled() {
        return Ok(principal);
    }
    log::debug!("{} {} as {}", req.method(), req.path(), principal.name);
    Ok(principal)
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(session::upgrade))
        .route("/", web::get().to(root))
        .route("/dashboard/{file}", web::get().to(dashboard::asset))
        .route("/health", web::get().to(api::health))
        .route("/ready", web::get().to(api::ready))
        .route("/metrics", web::get().to(api::metrics))
        .service(
            web::scope("/api")
                .route("", web::get().to(api::info))
                .route("/info", web::get().to(api::info))
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
/// `ws://host:port`), otherwise the web dashboard. The JSON description of the service
/// is at `GET /api/info`.
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
    Ok(dashboard::page(&req))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, HttpError> {
    Err(HttpError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}
