//! # Switchyard
//!
//! An actor-based priority event router. Agents and services publish JSON events over
//! WebSocket; subscribers receive them live, filtered by pattern or fields, highest
//! priority first. The wire contract is `docs/protocol.md`; the flow of one event is in
//! `docs/architecture.md`.
//!
//! # Layout
//!
//! Lowest layer first; a module names only modules of the layers below its own
//! (`tests/layers.rs` checks this). `error`, `tls` and `client` form the lowest layer,
//! `auth`, `rate_limit`, `overload` and `sources` one layer; they do not name each other.
//!
//! - [`error`]: typed errors and their stable wire codes.
//! - [`tls`]: optional TLS (rustls) from PEM files.
//! - [`client`]: an async Rust client of the wire protocol, with reconnect and resume.
//! - [`config`]: layered configuration with embedded defaults.
//! - [`protocol`]: wire types: envelope, commands, replies, priorities, topic names.
//! - [`routing`]: pure matching: patterns, filters, CEL, coalesce keys, specs, the index.
//! - [`metrics`]: shared counters behind `/api/stats` and `/metrics`.
//! - [`delivery`]: pure per-subscriber state: waiting queues, replay, acks, coalescing.
//! - [`store`]: the event log, dead letters, durable state: a trait, SQLite and memory.
//! - [`auth`]: bearer tokens and JWTs, principals and their topic grants.
//! - [`rate_limit`]: the per-connection publish budget (a token bucket).
//! - [`overload`]: low-priority admission while urgent deliveries run late.
//! - [`sources`]: event sources' pure parts: SQLite outbox, change and line events.
//! - [`actors`]: router, store actor, delivery workers, sessions, and the publish path.
//! - [`http`]: routes, the JSON API, the WebSocket upgrade and the embedded dashboard.
//! - [`server`]: starts the actors and the HTTP server, and runs graceful shutdown.
//!
//! The binary (`src/main.rs`) sits on top: it parses the command line and configuration
//! and calls [`run`]; its own `cli` module holds the client commands (`publish`, `tail`,
//! `bench`), which speak the wire protocol through [`client`].

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
pub mod sources;
pub mod store;
pub mod tls;

pub use config::Config;
pub use server::run;
