//! One lazily (re)connected Redis connection, and what its errors mean to a caller.
//!
//! Owns: connecting with the command timeout, dropping the connection after an I/O
//! error, failing fast while Redis is down, and mapping `redis` errors onto
//! [`StoreError`]. Must not: know any key or command of the log (its users do).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionLike, ErrorKind, RedisError, RedisResult, ServerErrorKind};

use super::super::StoreError;

/// After a failed connect, calls fail at once for this long instead of each spending
/// a connect timeout: a node with Redis down answers `unavailable` quickly.
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// A connection made on first use and remade after an I/O error.
///
/// The connection sits in a `RefCell` because the store's read methods take `&self`;
/// every backend runs on one thread of its own, so it is never shared.
pub(super) struct Link {
    client: redis::Client,
    timeout: Duration,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    conn: Option<Connection>,
    /// No connect before this instant (set by a failed connect).
    paused_until: Option<Instant>,
    last_error: String,
}

impl Link {
    /// A link to `url` whose connect, reads and writes each give up after `timeout`.
    /// Does not connect yet.
    pub(super) fn new(url: &str, timeout: Duration) -> Result<Link, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            // The error text never includes the URL, so no password leaks into it.
            StoreError::Unsuitable(format!("store.redis_url cannot be used: {e}"))
        })?;
        Ok(Link {
            client,
            timeout,
            state: RefCell::new(State::default()),
        })
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` on the connection (connecting first if needed). `what` names the
    /// operation in errors. An `idempotent` call that finds its connection dropped
    /// (Redis restarted since the last call) is tried once more on a new one; other
    /// calls are not, since their first try may have been applied.
    pub(super) fn run<T>(
        &self,
        what: &str,
        idempotent: bool,
        mut f: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut state = self.state.borrow_mut();
        let mut retried = false;
        loop {
            let fresh = state.conn.is_none();
            if fresh {
                let conn = self.connect(&mut state)?;
                state.conn = Some(conn);
            }
            let Some(conn) = state.conn.as_mut() else {
                return Err(StoreError::Unavailable(format!("{what}: not connected")));
            };
            match f(conn) {
                Ok(value) => return Ok(value),
                Err(err) => {
                    let broken = breaks_connection(&err) || !conn.is_open();
                    if broken {
                        // A timed-out reply may still arrive and would be read as the
                        // answer to the next command: never reuse the connection.
                        state.conn = None;
                    }
                    if broken && idempotent && !fresh && !retried && err.is_connection_dropped() {
                        retried = true;
                        continue;
                    }
                    return Err(classify(what, &err));
                }
            }
        }
    }

    fn connect(&self, state: &mut State) -> Result<Connection, StoreError> {
        let now = Instant::now();
        if state.paused_until.is_some_and(|until| now < until) {
            return Err(StoreError::Unavailable(format!(
                "cannot connect to redis ({}); nothing was sent; retry",
                state.last_error
            )));
        }
        let connected = self
            .client
            .get_connection_with_timeout(self.timeout)
            .and_then(|conn| {
                conn.set_read_timeout(Some(self.timeout))?;
                conn.set_write_timeout(Some(self.timeout))?;
                Ok(conn)
            });
        match connected {
            Ok(conn) => {
                state.paused_until = None;
                Ok(conn)
            }
            Err(err) => {
                state.paused_until = Some(now + RETRY_PAUSE);
                state.last_error = err.to_string();
                Err(match classify("connect", &err) {
                    StoreError::Unavailable(_) => StoreError::Unavailable(format!(
                        "cannot connect to redis ({err}); nothing was sent; retry"
                    )),
                    other => other,
                })
            }
        }
    }
}

/// Whether the connection cannot be used after `err`: anything but an error reply
/// from the server may have left a reply unread on it.
fn breaks_connection(err: &RedisError) -> bool {
    !matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// The [`StoreError`] for a failed call of `what`.
pub(super) fn classify(what: &str, err: &RedisError) -> StoreError {
    let io = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal();
    if io {
        return StoreError::Unavailable(format!("{what}: {err}; outcome unknown; retry"));
    }
    match err.kind() {
        // Redis is up but cannot serve yet (loading its AOF, a failover under way).
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown,
        ) => StoreError::Unavailable(format!("{what}: {err}; retry")),
        _ => StoreError::Redis(format!("{what}: {err}")),
    }
}
