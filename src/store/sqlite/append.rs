//! Appending a batch of events to the log.
//!
//! Owns: the insert path, sealing the segments a batch moves past, and waking the WAL
//! checkpoints. Must not: delete rows or read events back.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use rusqlite::params;

use super::schema::create_segment;
use super::segments::{record_segment, Segments};
use super::{to_i64, SqliteStore};
use crate::protocol::{EncodedEvent, ANONYMOUS};
use crate::store::checkpoint;
use crate::store::StoreError;

impl SqliteStore {
    /// [`EventStore::append`](crate::store::EventStore::append): one transaction.
    pub(super) fn append_batch(&mut self, events: &[Arc<EncodedEvent>]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        let mut created = Vec::new();
        let mut added: BTreeMap<u64, u64> = BTreeMap::new();
        let tx = self.conn.transaction()?;
        // Cursors ascend within a batch: one run of events per segment it reaches.
        for run in events
            .chunk_by(|a, b| self.segments.of(a.event.cursor) == self.segments.of(b.event.cursor))
        {
            let n = self.segments.of(run[0].event.cursor);
            let name = Segments::name(n);
            if !self.segments.tables.contains(&n) {
                tx.execute_batch(&create_segment(&name))?;
                created.push(n);
            }
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO {name}
                 (cursor, id, topic, type, priority, stored_ms, envelope, publisher)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?;
            for e in run {
                let ev = &e.event;
                insert.execute(params![
                    to_i64(ev.cursor),
                    ev.id,
                    ev.topic,
                    ev.event_type,
                    ev.priority.as_str(),
                    now,
                    &*e.json,
                    (ev.publisher != ANONYMOUS).then_some(ev.publisher.as_str()),
                ])?;
            }
            *added.entry(n).or_default() += run.len() as u64;
        }
        // A new segment seals every one before it: record their counts with this
        // commit. (Cursors only grow, so a recorded segment gets no rows; if one did,
        // it is recorded again.) Most appends create none and look at nothing here.
        let mut sealed: Vec<u64> = added
            .keys()
            .copied()
            .filter(|n| self.recorded.contains(n))
            .collect();
        if let Some(&newest) = created.last() {
            let before = self.segments.tables.iter().chain(&created).copied();
            sealed.extend(before.filter(|&n| n < newest && !self.recorded.contains(&n)));
        }
        for &n in &sealed {
            let rows =
                self.rows.get(&n).copied().unwrap_or(0) + added.get(&n).copied().unwrap_or(0);
            record_segment(&tx, n, rows)?;
        }
        tx.commit()?;
        self.segments.tables.extend(created);
        self.recorded.extend(sealed);
        for (n, k) in added {
            *self.rows.entry(n).or_default() += k;
        }
        if self.checkpointer.as_mut().is_some_and(|c| c.committed()) {
            // Copies the last commit's frames or so; it fails only if another
            // checkpoint is running, and then the next catch-up does it.
            if let Err(e) = checkpoint::passive(&self.conn) {
                log::debug!("WAL catch-up checkpoint skipped: {e}");
            }
        }
        Ok(())
    }
}
