//! Shared by the fuzz targets: the events a fuzzed subscription or filter is matched
//! against, the instants an event's expiry is checked at, and a small stack to run on.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use switchyard::protocol::Event;

/// A few events with every optional field somewhere, parsed once.
pub static SAMPLES: LazyLock<Vec<Event>> = LazyLock::new(|| {
    [
        r#"{"type": "task_created", "payload": {"task_id": "t1", "n": 3, "tags": ["a", "b"]}}"#,
        r#"{"topic": "cost.budget_warning", "priority": "critical", "target": "w",
            "agent_id": "a1", "correlation_id": "c", "source": "s", "ttl_ms": 5}"#,
        r#"{"type": "x", "payload": [1, 2.5, null, {"k": {"v": true}}], "metadata": {"m": 1}}"#,
        r#"{"topic": "a.b.c.d.e", "priority": "low", "payload": {"total_cost": 1e308}}"#,
    ]
    .iter()
    .filter_map(|s| serde_json::from_str(s).ok())
    .filter_map(|v| Event::from_json(v, "fuzz").ok())
    .collect()
});

/// Instants at the edges of what `chrono` represents, and now.
pub fn instants() -> [DateTime<Utc>; 3] {
    [
        DateTime::<Utc>::MIN_UTC,
        Utc::now(),
        DateTime::<Utc>::MAX_UTC,
    ]
}

/// Stack for running a fuzz input. The server parses client input on HTTP worker
/// threads and evaluates conditions on the router's thread (2 MiB each, with debug
/// builds using far more per frame than this optimised fuzz build): an input that
/// needs more than this much stack in release is one that overflows a server thread.
pub const SMALL_STACK: usize = 256 << 10;

/// Runs `f` on a thread with [`SMALL_STACK`]; a panic in it is re-raised here, so
/// libFuzzer sees it as a crash (a stack overflow aborts the process either way).
pub fn on_small_stack<F: FnOnce() + Send + 'static>(f: F) {
    let thread = std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn a fuzz thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
