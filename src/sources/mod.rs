//! Event sources the server runs itself (`[[sources]]`, docs/sources.md): the parts
//! that need no actor. A SQLite table's committed changes reach an outbox table
//! through triggers ([`outbox`]), and become events ([`change`]), rapid updates of one
//! row merged ([`debounce`]); lines appended to files ([`lines`]) become events, read
//! from offsets kept across restarts ([`offsets`]).
//!
//! Owns: the outbox's SQL, and every decision about what an event is, which changes
//! merge and where a file is read from, as pure functions with table tests. Must not:
//! publish, keep time or schedule anything; `crate::actors::sources` does, through the
//! same ingress as every client.

pub mod change;
pub mod debounce;
pub mod lines;
pub mod offsets;
pub mod outbox;
