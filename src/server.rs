//! Starting and stopping the whole router: actors, HTTP server, graceful shutdown.
//!
//! Shutdown is a visible sequence: `/ready` turns 503, the router closes every session
//! with a close frame, the HTTP server stops accepting and waits for connections
//! (bounded by `server.shutdown_timeout_ms`), every accepted event is committed, then
//! the actor threads stop.
//!
//! Connections that never finish talking are ended here, below the session: a request
//! head (a WebSocket upgrade included) must arrive within [`CLIENT_REQUEST_TIMEOUT`],
//! so half-open and slowloris connections are dropped; and data the peer does not
//! accept for two heartbeat intervals aborts the connection (`tune_socket`),
//! which is what ends a WebSocket whose client never reads.

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};

use crate::actors::delivery::{AttachRouter, DeliveryWorker};
use crate::actors::ingress::Ingress;
use crate::actors::log_tail::{ClusterView, LogTail, TailSettings};
use crate::actors::router::{self, Router, StoredState};
use crate::actors::sources::Sources;
use crate::actors::store::StoreActor;
use crate::config::{Config, StoreKind};
use crate::delivery::QueueBounds;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::overload::LowAdmission;
use crate::store::redis::nodes::NodeInfo;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::EventStore;

/// How long the head of an HTTP request may take to arrive, from the moment the
/// connection is accepted; then the connection is closed (with 408 when part of a head
/// came). actix-web's default, set here so that it is visible: `tests/hostile.rs`
/// relies on it for slowloris upgrades and silent connections.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot serve on the listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot open the event store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// The store the configuration names; for a Redis log, also the epoch this node joins.
fn open_store(config: &Config) -> Result<(Box<dyn EventStore>, Option<String>), ServerError> {
    if config.store.kind == StoreKind::Redis {
        let store = RedisStore::open(&RedisOptions::from(config))?;
        let epoch = store.epoch().to_owned();
        return Ok((Box::new(store), Some(epoch)));
    }
    Ok((crate::store::open(config)?, None))
}

/// `cluster.node_name` when none is set: the host's name and the port it listens on.
fn default_node_name(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".to_owned());
    format!("{host}:{}", listen.port())
}

/// Runs Switchyard on `listener` until `shutdown` resolves, then shuts down gracefully.
/// Must be called inside an actix system (`actix_web::rt::System`).
pub async fn run(
    listener: TcpListener,
    mut config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let listen = listener.local_addr()?;
    config.prepare_sources()?;
    if config.cluster.node_name.is_empty() {
        config.cluster.node_name = default_node_name(listen);
    }
    let config = Arc::new(config);
    let auth = Arc::new(crate::auth::Authenticator::from_config(&config.auth)?);
    crate::auth::check_exposure(listener.local_addr()?, config.server.insecure, &auth)?;
    if auth.enabled() {
        log::info!("authentication on: {auth:?}");
    } else {
        log::info!("authentication off (loopback only): every caller is `anonymous`");
    }
    let tls = match config.server.tls() {
        Some((cert, key)) => Some(crate::tls::server_config(cert, key)?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    crate::actors::session::seed_session_ids();
    let (store, joined_epoch) = open_store(&config)?;
    let stored = StoredState {
        last_cursor: store.last_cursor()?,
        recent_ids: store.recent_ids(config.router.dedupe_window)?,
        shared_log: store.numbers_events(),
    };
    log::info!(
        "event store: {} (last cursor {}; {} ids of its newest events in the duplicate window)",
        store.kind(),
        stored.last_cursor,
        stored.recent_ids.len()
    );
    let tail_after = stored.last_cursor;

    let mut arbiters = Vec::new();
    let store_arbiter = Arbiter::new();
    let pool = crate::actors::store_reader::start(crate::actors::store_reader::open(&*store)?);
    let store = {
        let retention = config.store.retention();
        let max_dead_letters = config.store.max_dead_letters();
        let (metrics, pool) = (metrics.clone(), pool.clone());
        StoreActor::start_in_arbiter(&store_arbiter.handle(), move |_| {
            StoreActor::new(store, retention, max_dead_letters, metrics, pool)
        })
    };
    let reads = pool.unwrap_or_else(|| store.clone().recipient());
    let workers: Vec<Addr<DeliveryWorker>> = (0..config.delivery_workers())
        .map(|_| {
            let arbiter = Arbiter::new();
            let (m, bounds) = (metrics.clone(), QueueBounds::from(&config.limits));
            let dead_rate = config.limits.dead_letters_per_sec;
            let addr = DeliveryWorker::start_in_arbiter(&arbiter.handle(), move |_| {
                DeliveryWorker::new(m, bounds, dead_rate)
            });
            arbiters.push(arbiter);
            addr
        })
        .collect();
    let router_arbiter = Arbiter::new();
    let router = {
        let (c, m, s, r, w) = (
            config.clone(),
            metrics.clone(),
            store.clone(),
            reads.clone(),
            workers.clone(),
        );
        Router::start_in_arbiter(&router_arbiter.handle(), move |_| {
            Router::new(c, m, s, r, stored, w)
        })
    };
    arbiters.push(router_arbiter);
    let cluster = Arc::new(ClusterView::default());
    let admission = Arc::new(LowAdmission::new(&config.limits, metrics.clone()));
    let tail = match joined_epoch {
        Some(epoch) => {
            log::info!(
                "cluster mode: node `{}` on the log of epoch {epoch}",
                config.cluster.node_name
            );
            metrics.cluster.enabled.store(true, Ordering::Relaxed);
            let settings = TailSettings {
                options: RedisOptions::from(&*config),
                batch: config.cluster.tail_batch,
                beat: config.cluster.heartbeat(),
                node: NodeInfo {
                    name: config.cluster.node_name.clone(),
                    address: listen.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    started_at: chrono::Utc::now(),
                    last_beat: chrono::Utc::now(),
                },
                epoch,
                max_queued: config.router.max_queued_events,
                admission: admission.clone(),
            };
            let tail = LogTail::start(
                settings,
                tail_after,
                router.clone(),
                metrics.clone(),
                cluster.clone(),
            )?;
            Some(tail)
        }
        None => None,
    };
    for worker in &workers {
        let attach = AttachRouter {
            dead_letters: router.clone().recipient(),
            durable_acks: store.clone().recipient(),
        };
        if worker.try_send(attach).is_err() {
            log::error!("a delivery worker could not be attached to the router");
        }
    }

    let shutting_down = Arc::new(AtomicBool::new(false));
    let ingress = Ingress::new(router.clone(), metrics.clone(), admission, &config.limits);
    // Sources publish through the same ingress as every client.
    let sources = Sources::start(&config, &auth, &ingress, &metrics);
    let workers: Arc<[Addr<DeliveryWorker>]> = workers.into();
    let sessions = Arc::new(crate::actors::session::Shared {
        router: router.clone(),
        workers: workers.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        ingress: ingress.clone(),
    });
    let state = web::Data::new(AppState {
        router: router.clone(),
        workers,
        store,
        reads,
        config: config.clone(),
        auth,
        registry: crate::metrics::registry(metrics.clone()),
        ingress,
        metrics,
        cluster: tail.is_some().then_some(cluster),
        shutting_down: shutting_down.clone(),
        sessions,
    });
    // No handler buffers a body before authenticating (`http::body`); this bounds any
    // extractor that would, at the largest publish.
    let max_payload = config.limits.max_event_bytes;
    let web_policy = web::Data::new(http::guard::WebPolicy::new(
        &config.server,
        state.auth.enabled(),
        tls.is_some(),
    ));
    let unread_limit = config.heartbeat_interval() * 2;
    let limits = config.limits.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(max_payload))
            .app_data(web_policy.clone())
            // Inside the logger, so that refused requests are logged too.
            .wrap(actix_web::middleware::from_fn(http::guard::middleware))
            .wrap(
                // Path only: a query string may hold `?token=`, which is never logged.
                actix_web::middleware::Logger::new("%a \"%{method}xi %U\" %s %b %Dms")
                    .custom_request_replace("method", |req| req.method().to_string())
                    .log_target("switchyard::http"),
            )
            .configure(http::configure)
    })
    .workers(config.http_workers())
    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
    .on_connect(move |conn, data| {
        tune_socket(conn, unread_limit);
        data.insert(http::ConnectionBudget::new(&limits));
    })
    .disable_signals()
    .shutdown_timeout(config.server.shutdown_timeout_ms.div_ceil(1000).max(1));
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    let server_task = actix_web::rt::spawn(server);

    shutdown.await;
    log::info!("shutting down: closing sessions");
    shutting_down.store(true, Ordering::Relaxed);
    // Sources first: what they published is then committed with the rest.
    let _ = actix_web::rt::task::spawn_blocking(move || sources.stop()).await;
    let timeout = Duration::from_millis(config.server.shutdown_timeout_ms);
    let _ = actix_web::rt::time::timeout(timeout, router.send(router::Shutdown)).await;
    // Give sessions a moment to flush their close frames before connections go.
    actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    handle.stop(true).await;
    let _ = server_task.await;
    // Every accepted event is committed before the store goes away.
    let flushed = actix_web::rt::time::timeout(timeout, async {
        while !matches!(router.send(router::Flush).await, Ok(true) | Err(_)) {
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if flushed.is_err() {
        log::error!("shutdown: the store did not finish its last commit within {timeout:?}");
    }
    if let Some(tail) = tail {
        let _ = actix_web::rt::task::spawn_blocking(move || tail.stop()).await;
    }
    for arbiter in arbiters {
        arbiter.stop();
    }
    store_arbiter.stop();
    let _ = actix_web::rt::task::spawn_blocking(move || store_arbiter.join()).await;
    log::info!("shutdown complete");
    Ok(())
}

/// Tunes an accepted connection (plain or TLS):
///
/// - TCP_NODELAY: deliveries are small frames written as they come. With Nagle's
///   algorithm a frame waits for the ACK of the previous one, and a subscriber that
///   sends nothing back delays its ACKs (up to 40 ms on Linux), so at a steady rate
///   nearly every delivery waited for one.
/// - TCP_USER_TIMEOUT (Linux): when data we sent stays unacknowledged for `limit` (the
///   peer stopped reading and its receive window stayed at zero, or it vanished), the
///   kernel aborts the connection and actix drops it. A session cannot do this itself:
///   actix stops polling a WebSocket session while its socket is full, so its heartbeat
///   never fires and the connection would stay open, holding its queues, for as long as
///   the client likes. `limit` is two heartbeat intervals, the silence a session
///   tolerates from a client.
fn tune_socket(conn: &dyn std::any::Any, limit: Duration) {
    use actix_web::rt::net::TcpStream;
    let tcp = conn.downcast_ref::<TcpStream>().or_else(|| {
        conn.downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
            .map(|tls| tls.get_ref().0)
    });
    let Some(tcp) = tcp else {
        log::warn!("cannot tune an accepted connection: unknown stream type");
        return;
    };
    if let Err(e) = tcp.set_nodelay(true) {
        log::warn!("cannot set TCP_NODELAY on a connection: {e}");
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(limit)) {
        log::warn!("cannot set TCP_USER_TIMEOUT on a connection: {e}");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = limit;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn accepted_connections_get_nodelay_and_a_user_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let accepted = actix_web::rt::net::TcpStream::from_std(accepted).unwrap();
        assert!(!accepted.nodelay().unwrap());
        tune_socket(&accepted, Duration::from_secs(7));
        assert!(accepted.nodelay().unwrap());
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket2::SockRef::from(&accepted)
                .tcp_user_timeout()
                .unwrap(),
            Some(Duration::from_secs(7))
        );
    }
}
