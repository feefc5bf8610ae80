//! The HTTP surface: routes, shared state, the JSON API of docs/protocol.md section 8,
//! the WebSocket upgrade, and the embedded web dashboard.
//!
//! Owns: request parsing and response shapes, and each connection's publish budget.
//! Must not: keep events or subscriptions of its own; every answer comes from the
//! router, the store or the shared metrics.

mod api;
mod body;
pub mod dashboard;
pub mod guard;

use std::sync::Arc;

use actix::{Addr, Recipient};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::delivery::DeliveryWorker;
use crate::actors::ingress::Ingress;
use crate::actors::log_tail::ClusterView;
use crate::actors::router::Router;
use crate::actors::session::{self, Speaks};
use crate::actors::store::{Query, StoreActor};
use crate::auth::{Authenticator, Principal};
use crate::config::{Config, LimitsConfig};
use crate::error::{ErrorCode, HttpError};
use crate::metrics::Metrics;
use crate::rate_limit::PublishBudget;

/// What every handler can reach.
pub struct AppState {
    pub router: Addr<Router>,
    /// Delivery workers: each session talks to the one serving it, and a retried dead
    /// letter goes back through its subscription's (`Redeliver`).
    pub workers: Arc<[Addr<DeliveryWorker>]>,
    pub store: Addr<StoreActor>,
    /// The store's read pool (`GET /api/events`).
    pub reads: Recipient<Query>,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// The publish path shared with every session.
    pub ingress: Ingress,
    /// `GET /metrics`.
    pub registry: prometheus_client::registry::Registry,
    /// Cluster mode: the live nodes, as of the last beat (`/api/cluster`).
    pub cluster: Option<Arc<ClusterView>>,
    /// Set once shutdown begins; `/ready` answers 503 from then on.
    pub shutting_down: Arc<std::sync::atomic::AtomicBool>,
    /// What every session of this server shares.
    pub sessions: Arc<session::Shared>,
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

/// The publish budget of one TCP connection (`limits.publish_rate_per_sec`): attached
/// when the connection is accepted (`server::run`), so the requests it keeps alive for
/// share it, and a WebSocket session upgraded on it takes it over.
#[derive(Clone)]
pub struct ConnectionBudget(pub Arc<PublishBudget>);

impl ConnectionBudget {
    pub fn new(limits: &LimitsConfig) -> Self {
        ConnectionBudget(Arc::new(PublishBudget::new(limits)))
    }

    /// The budget of `req`'s connection; a fresh one for a connection accepted without
    /// (an app served by another `HttpServer`, as in unit tests).
    pub fn of(req: &HttpRequest, limits: &LimitsConfig) -> Self {
        req.conn_data::<ConnectionBudget>()
            .cloned()
            .unwrap_or_else(|| ConnectionBudget::new(limits))
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

/// `GET /ws`: authenticates first (401, no upgrade, without a valid token), then
/// hands the connection to a new session.
async fn ws(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<session::ConnectQuery>,
) -> Result<HttpResponse, HttpError> {
    upgrade(&req, stream, &state, &query, Speaks::Native)
}

/// `GET /ws/event-bus`: todoki's endpoint (docs/protocol.md section 11.1).
async fn ws_todoki(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<session::ConnectQuery>,
) -> Result<HttpResponse, HttpError> {
    upgrade(&req, stream, &state, &query, Speaks::Todoki)
}

/// `GET /events`: a WebSocket upgrade speaks Descartes's dialect (docs/protocol.md
/// section 11.2); any other request is the REST alias of `GET /api/events`.
async fn events(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    params: web::Query<api::EventsParams>,
) -> Result<HttpResponse, HttpError> {
    if wants_upgrade(&req) {
        return upgrade(&req, stream, &state, &Default::default(), Speaks::Descartes);
    }
    let caller = Caller(authenticate(&req, false)?);
    api::events(state, params, caller).await
}

/// Authenticates an upgrade (401, no upgrade, without a valid token; `?token=` is
/// accepted) and hands the connection to a new session speaking `speaks`.
fn upgrade(
    req: &HttpRequest,
    stream: web::Payload,
    state: &AppState,
    query: &session::ConnectQuery,
    speaks: Speaks,
) -> Result<HttpResponse, HttpError> {
    let principal = authenticate(req, true)?;
    let budget = ConnectionBudget::of(req, &state.config.limits).0;
    session::upgrade(
        req,
        stream,
        &state.sessions,
        principal,
        budget,
        query,
        speaks,
    )
}

/// Does `req` ask for a WebSocket upgrade?
fn wants_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Declares each route once: [`configure`] registers them and [`ROUTES`] lists them
/// (`GET /api/info`), so the two cannot drift apart.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:expr,)*) => {
        /// Every route this server answers, as `METHOD /path`, in registration order.
        pub const ROUTES: &[&str] = &[$(concat!(routes!(@upper $method), " ", $path)),*];

        /// Registers every route; anything else is 404 `not_found`.
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
            cfg.default_service(web::to(not_found));
        }
    };
    (@upper get) => { "GET" };
    (@upper post) => { "POST" };
    (@upper delete) => { "DELETE" };
}

routes! {
    get "/ws" => ws,
    get "/ws/event-bus" => ws_todoki,
    get "/" => root,
    get "/dashboard/{file}" => dashboard::asset,
    get "/health" => api::health,
    get "/ready" => api::ready,
    get "/metrics" => api::metrics,
    get "/api" => api::info,
    get "/api/info" => api::info,
    get "/api/stats" => api::stats,
    get "/api/cluster" => api::cluster,
    get "/api/topics" => api::topics,
    get "/api/events" => api::events,
    post "/api/events" => api::publish,
    get "/api/subscriptions" => api::subscriptions,
    get "/api/dead-letters" => api::dead_letters,
    get "/api/sources" => api::sources,
    post "/api/dead-letters/{id}/retry" => api::retry_dead_letter,
    delete "/api/dead-letters/{id}" => api::delete_dead_letter,
    get "/stats" => api::stats,
    get "/topics" => api::topics,
    get "/events" => events,
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
    if wants_upgrade(&req) {
        return ws(req, stream, state, query).await;
    }
    Ok(dashboard::page(&req))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, HttpError> {
    Err(HttpError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}
