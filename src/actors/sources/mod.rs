//! The event sources of `[[sources]]` (docs/sources.md), one actor each, on an arbiter
//! of its own (their file and SQLite calls block only them):
//!
//! - [`sqlite::SqliteSource`]: a table's committed changes, through an outbox.
//! - [`file::FileSource`]: lines appended to the files of a directory.
//!
//! Both publish through [`publish::SourcePublisher`], the ingress every client uses,
//! as a principal named after the source: grants, duplicate suppression and stats see
//! them as they see any publisher. A source named like a configured token publishes
//! with that token's grants; any other may publish to every topic a client may. Their state is in `metrics::sources`
//! (`GET /api/sources`, `/metrics`).

pub mod file;
pub mod publish;
pub mod sqlite;

use std::sync::Arc;

use actix::prelude::*;

use super::ingress::Ingress;
use crate::auth::{Authenticator, Principal};
use crate::config::{Config, SourceKind};
use crate::metrics::Metrics;
use publish::SourcePublisher;

/// The running sources; dropping it does not stop them, [`Sources::stop`] does.
#[derive(Default)]
pub struct Sources {
    arbiters: Vec<Arbiter>,
}

impl Sources {
    /// Starts every configured source.
    pub fn start(
        config: &Config,
        auth: &Authenticator,
        ingress: &Ingress,
        metrics: &Arc<Metrics>,
    ) -> Sources {
        let mut arbiters = Vec::new();
        for source in &config.sources {
            let status = metrics.sources.register(
                &source.name,
                source.kind.as_str(),
                &source.path.display().to_string(),
                &source.topic,
            );
            let principal = auth
                .principal_named(&source.name)
                .unwrap_or_else(|| Principal::source(&source.name));
            let publisher = SourcePublisher::new(ingress.clone(), principal, &config.limits);
            let arbiter = Arbiter::new();
            let source = source.clone();
            match source.kind {
                SourceKind::Sqlite => {
                    sqlite::SqliteSource::start_in_arbiter(&arbiter.handle(), move |_| {
                        sqlite::SqliteSource::new(source, status, publisher)
                    });
                }
                SourceKind::File => {
                    let data_dir = config.server.data_dir.clone();
                    let (max_line, max_lines) = (
                        config.limits.max_event_bytes,
                        config.limits.max_batch_events,
                    );
                    file::FileSource::start_in_arbiter(&arbiter.handle(), move |_| {
                        file::FileSource::new(
                            source, status, publisher, &data_dir, max_line, max_lines,
                        )
                    });
                }
            }
            arbiters.push(arbiter);
        }
        Sources { arbiters }
    }

    /// Stops every source and waits for their threads (blocking): nothing more is
    /// published. What was published and not yet recorded as such is published again
    /// at the next start, as duplicates.
    pub fn stop(self) {
        for arbiter in self.arbiters {
            arbiter.stop();
            let _ = arbiter.join();
        }
    }
}
