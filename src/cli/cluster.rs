//! `switchyard cluster import --from-sqlite DIR`: moves a single node's log into the
//! cluster's Redis, so that clients keep their cursors and durable subscriptions.
//!
//! It copies, in this order: durable subscription states (idempotent, and the one
//! step that may find something in the way), the retained events with their cursors,
//! the high-water mark, then the dead letters. It refuses, before writing anything,
//! when the Redis log holds an event or a node is registered on it.
//!
//! Owns: the order of the copy and what it prints. Must not: open the SQLite file for
//! writing (it is opened read-only), or write anywhere in Redis but through the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchyard::config::{Config, ConfigError, Overrides, StoreKind};
use switchyard::protocol::EncodedEvent;
use switchyard::store::redis::nodes::Nodes;
use switchyard::store::redis::{RedisOptions, RedisStore};
use switchyard::store::sqlite::SqliteStore;
use switchyard::store::{EventQuery, EventStore, NewDeadLetter, Order, StoreError};

/// Events read from SQLite per query, and dead letters per page.
const PAGE: usize = 1000;
/// At most this many envelope bytes per append script, so that one call stays well
/// inside `cluster.command_timeout_ms` whatever the events' size.
const APPEND_BYTES: usize = 4 << 20;
/// A progress line every this many events.
const PROGRESS_EVERY: u64 = 100_000;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Copy a stopped single node's SQLite log into the cluster's (empty) Redis log.
    #[command(long_about = IMPORT_ABOUT)]
    Import(ImportArgs),
}

const IMPORT_ABOUT: &str = "\
Copy a stopped single node's SQLite log into the cluster's Redis log, so that clients
keep their cursors and durable subscriptions when the node is replaced by a cluster.

Copies the retained events with their cursors (numbering goes on after the node's last
cursor, even past events retention deleted), the durable subscriptions' states and the
dead letters (in order; Redis gives them new ids, and their time is the import's).

Redis is named by the configuration, as for `serve`: --config, SWITCHYARD_CONFIG and
SWITCHYARD_STORE__REDIS_URL, SWITCHYARD_CLUSTER__PREFIX... with store.kind = \"redis\".

Run it with the node stopped, into an empty log, before starting any cluster node: it
refuses a log that holds an event or has a node registered, and writes nothing then.
The SQLite file is opened read-only and is not changed.

Exit codes: 0 imported, 1 refused or failed (a failure midway leaves a partial copy:
delete the cluster's keys, `<prefix>:*`, before trying again), 2 bad configuration or
usage.

Example:
  SWITCHYARD_STORE__KIND=redis SWITCHYARD_STORE__REDIS_URL=redis://10.0.0.5:6379/0 \\
    switchyard cluster import --from-sqlite /var/lib/switchyard";

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The stopped node's data directory (its `server.data_dir`, holding `events.db`).
    #[arg(long, value_name = "DIR")]
    pub from_sqlite: PathBuf,
    /// The cluster's configuration file (TOML), as given to `serve`.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Why an import did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("the SQLite store in {dir}: {source}")]
    Sqlite { dir: PathBuf, source: StoreError },
    #[error("redis: {0}")]
    Redis(StoreError),
    #[error("import stopped midway ({0}); the Redis log holds a partial copy: delete the cluster's keys before trying again")]
    Midway(String),
}

impl ImportError {
    /// 2 for what the command line or configuration got wrong, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ImportError::Config(_) | ImportError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// What was copied.
#[derive(Debug, Default)]
pub struct Imported {
    pub events: u64,
    pub first: Option<u64>,
    pub last_event: Option<u64>,
    pub last_cursor: u64,
    pub dead_letters: u64,
    pub durables: u64,
}

pub fn run(args: &ImportArgs) -> Result<Imported, ImportError> {
    let config = Config::load(args.config.as_deref(), &Overrides::default())?;
    if config.store.kind != StoreKind::Redis {
        return Err(ImportError::Usage(
            "store.kind is not \"redis\": give the cluster's configuration (store.kind = \
             \"redis\", store.redis_url), e.g. SWITCHYARD_STORE__KIND=redis"
                .into(),
        ));
    }
    let dir = &args.from_sqlite;
    if !dir.join("events.db").is_file() {
        return Err(ImportError::Usage(format!(
            "--from-sqlite {}: no events.db there (give the node's server.data_dir)",
            dir.display()
        )));
    }
    let sqlite = |source| ImportError::Sqlite {
        dir: dir.clone(),
        source,
    };
    let from = SqliteStore::open_read_only(dir).map_err(sqlite)?;
    let options = RedisOptions::from(&config);
    check_nobody_there(&options)?;
    let mut to = RedisStore::open(&options).map_err(ImportError::Redis)?;
    let top = to.last_cursor().map_err(ImportError::Redis)?;
    if top > 0 {
        return Err(ImportError::Refused(format!(
            "the Redis log (prefix {:?}) is not empty (its last cursor is {top}): import \
             into an empty log, before starting nodes; nothing was written",
            options.prefix
        )));
    }
    copy(dir, &from, &mut to)
}

/// Refuses when a node is registered on the log: it would route the imported events
/// as new ones, and its clients would miss the import's cursors.
fn check_nobody_there(options: &RedisOptions) -> Result<(), ImportError> {
    let nodes = Nodes::connect(options)
        .and_then(|mut n| n.nodes())
        .map_err(ImportError::Redis)?;
    if nodes.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    Err(ImportError::Refused(format!(
        "nodes are running on this Redis log ({}): import into an empty log, before \
         starting nodes",
        names.join(", ")
    )))
}

fn copy(dir: &Path, from: &SqliteStore, to: &mut RedisStore) -> Result<Imported, ImportError> {
    let read = |source| ImportError::Sqlite {
        dir: dir.to_owned(),
        source,
    };
    let midway = |e: StoreError| ImportError::Midway(e.to_string());
    let mut done = Imported {
        last_cursor: from.last_cursor().map_err(read)?,
        ..Imported::default()
    };

    for d in from.durables().map_err(read)? {
        let there = to
            .durable_open(&d.principal, &d.name, d.state.floor)
            .map_err(midway)?;
        if there.floor != d.state.floor || !there.acked.is_subset(&d.state.acked) {
            return Err(ImportError::Midway(format!(
                "durable subscription {}/{} already exists in Redis with another state",
                d.principal, d.name
            )));
        }
        let acked: Vec<u64> = d.state.acked.iter().copied().collect();
        to.durable_ack(&d.principal, &d.name, &acked)
            .map_err(midway)?;
        done.durables += 1;
    }

    let mut after = 0;
    loop {
        let page = from
            .query(&EventQuery {
                after: Some(after),
                limit: PAGE,
                order: Order::Asc,
                ..EventQuery::default()
            })
            .map_err(read)?;
        let Some(last) = page.last() else { break };
        after = last.event.cursor;
        for chunk in by_size(&page) {
            to.append(chunk).map_err(midway)?;
        }
        let before = done.events;
        done.events += page.len() as u64;
        done.first = done.first.or(page.first().map(|e| e.event.cursor));
        done.last_event = Some(after);
        if before / PROGRESS_EVERY != done.events / PROGRESS_EVERY {
            eprintln!("{} events imported (cursor {after})", done.events);
        }
    }
    let top = to.raise_cursor(done.last_cursor).map_err(midway)?;
    if top != done.last_cursor {
        return Err(ImportError::Midway(format!(
            "the Redis log's last cursor is {top}, the node's {}",
            done.last_cursor
        )));
    }

    let mut after = 0;
    loop {
        let page = from.dead_letters(after, PAGE).map_err(read)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for dl in page {
            to.add_dead_letter(NewDeadLetter {
                event: dl.event,
                principal: dl.principal,
                subscription_id: dl.subscription_id,
                connection_id: dl.connection_id,
                reason: dl.reason,
                attempts: dl.attempts,
            })
            .map_err(midway)?;
            done.dead_letters += 1;
        }
    }
    Ok(done)
}

/// `events` in runs of at most [`APPEND_BYTES`] envelope bytes (at least one event
/// each).
fn by_size(events: &[Arc<EncodedEvent>]) -> Vec<&[Arc<EncodedEvent>]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        if i > start && bytes + e.json.len() > APPEND_BYTES {
            runs.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += e.json.len();
    }
    if start < events.len() {
        runs.push(&events[start..]);
    }
    runs
}

/// The summary printed after a successful import.
pub fn summary(done: &Imported) -> String {
    let events = match (done.first, done.last_event) {
        (Some(first), Some(last)) => format!("{} events, cursors {first}..{last}", done.events),
        _ => "0 events".to_owned(),
    };
    format!(
        "imported {events}; the log's last cursor is {} (new events get {} and up)\n\
         imported {} dead letters (in order, with new ids from Redis and the import's time)\n\
         imported {} durable subscriptions\n",
        done.last_cursor,
        done.last_cursor + 1,
        done.dead_letters,
        done.durables,
    )
}
