//! The state of each configured event source, as `GET /api/sources` and `/metrics`
//! show it. Each source actor writes its own [`SourceStatus`]; readers take snapshots.
//!
//! Owns: the numbers and the state text. Must not: decide anything about a source.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::{json, Value};

/// Whether a source is reading, or why it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    Starting,
    Running,
    /// It cannot read or publish; it retries, and says why here.
    Error(String),
}

/// One source's state, written by its actor.
#[derive(Debug)]
pub struct SourceStatus {
    pub name: String,
    pub kind: &'static str,
    pub path: String,
    pub topic: String,
    state: Mutex<SourceState>,
    /// Events it published (duplicates of events published before a crash included).
    pub published: AtomicU64,
    /// Changes or lines it could not turn into an event, skipped and logged.
    pub skipped: AtomicU64,
    /// What it has seen but not yet published: outbox rows, or bytes of files.
    pub lag: AtomicU64,
    /// Where it is: the last outbox row drained, or each file's offset.
    position: Mutex<Value>,
}

impl SourceStatus {
    pub fn state(&self) -> SourceState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_state(&self, state: SourceState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    pub fn set_position(&self, position: Value) {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = position;
    }

    /// `GET /api/sources`'s entry for this source.
    pub fn to_json(&self) -> Value {
        let (state, error) = match self.state() {
            SourceState::Starting => ("starting", Value::Null),
            SourceState::Running => ("running", Value::Null),
            SourceState::Error(message) => ("error", Value::String(message)),
        };
        let position = self
            .position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        json!({
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "topic": self.topic,
            "state": state,
            "error": error,
            "published": self.published.load(Relaxed),
            "skipped": self.skipped.load(Relaxed),
            "lag": self.lag.load(Relaxed),
            "position": position,
        })
    }
}

/// Every source of this server, in configuration order.
#[derive(Debug, Default)]
pub struct SourceBoard {
    sources: RwLock<Vec<Arc<SourceStatus>>>,
}

impl SourceBoard {
    /// Adds a source, `Starting`, and returns the status its actor writes.
    pub fn register(
        &self,
        name: &str,
        kind: &'static str,
        path: &str,
        topic: &str,
    ) -> Arc<SourceStatus> {
        let status = Arc::new(SourceStatus {
            name: name.to_owned(),
            kind,
            path: path.to_owned(),
            topic: topic.to_owned(),
            state: Mutex::new(SourceState::Starting),
            published: AtomicU64::default(),
            skipped: AtomicU64::default(),
            lag: AtomicU64::default(),
            position: Mutex::new(Value::Null),
        });
        self.sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(status.clone());
        status
    }

    pub fn snapshot(&self) -> Vec<Arc<SourceStatus>> {
        self.sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_json() {
        let board = SourceBoard::default();
        let s = board.register("tasks", "sqlite", "/x.db", "task");
        assert_eq!(board.snapshot()[0].to_json()["state"], "starting");
        s.published.fetch_add(3, Relaxed);
        s.set_state(SourceState::Error("no such table: tasks".into()));
        s.set_position(json!({"outbox_id": 7}));
        let j = board.snapshot()[0].to_json();
        assert_eq!(
            (
                j["state"].as_str(),
                j["error"].as_str(),
                j["published"].as_u64()
            ),
            (Some("error"), Some("no such table: tasks"), Some(3))
        );
        assert_eq!(j["position"]["outbox_id"], 7);
    }
}
