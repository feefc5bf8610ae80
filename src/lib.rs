//! # Switchyard
//!
//! An actor-based priority event router. Agents and services publish JSON events over
//! WebSocket; subscribers receive them live, filtered by pattern or fields, highest
//! priority first. The wire contract is `PROTOCOL.md`; the flow of one event is in
//! `docs/architecture.md`.
//!
//! # Layout
//!
//! - [`server`]: starts the actors and the HTTP server, and runs graceful shutdown.
//! - [`actors`]: the router, delivery workers, the store actor and per-connection sessions.
//! - [`delivery`]: delivery state machines: waiting queues, replay, ack tracking.
//! - [`http`]: routes, the JSON API, and the web dashboard embedded in the binary.
//! - [`auth`]: bearer tokens and JWTs, principals and their topic grants.
//! - [`client`]: an async Rust client of the wire protocol, with reconnect and resume.
//! - [`protocol`]: the event envelope, client commands and server replies.
//! - [`routing`]: pure policy: priorities, topic patterns, filters, CEL conditions,
//!   coalesce keys, subscription specs and the topic-prefix subscription index.
//! - [`store`]: the event log and dead letters: a storage trait, SQLite and memory backends.
//! - [`metrics`]: shared counters behind `/api/stats` and `/metrics`.
//! - [`rate_limit`]: the per-connection publish budget (a token bucket).
//! - [`config`]: layered configuration with embedded defaults.
//! - [`tls`]: optional TLS (rustls) from PEM files.
//! - [`error`]: typed errors and their stable wire codes.

pub mod actors;
pub mod auth;
pub mod client;
pub mod config;
pub mod delivery;
pub mod error;
pub mod http;
pub mod metrics;
pub mod overload;
pub mod protocol;
pub mod rate_limit;
pub mod routing;
pub mod server;
pub mod store;
pub mod tls;

pub use config::Config;
pub use server::run;
