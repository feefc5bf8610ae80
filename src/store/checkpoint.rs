//! WAL checkpoints off the commit path, for the SQLite backend.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that
//! commit copies megabytes from the WAL into the database file and waits for two
//! fsyncs, and every publish waiting on it waits too. Here the writer's automatic
//! checkpoint is off and a thread of its own, with its own connection, checkpoints in
//! `PASSIVE` mode (it never blocks the writer) each time the writer has appended
//! [`CHECKPOINT_BYTES`].
//!
//! A passive checkpoint that runs while the writer keeps appending never quite catches
//! up, and the WAL only starts over from its beginning once every frame in it has been
//! copied. So every [`CATCH_UP_EVERY`] wakes the writer itself finishes the job between
//! two commits, when the checkpointer is idle: it copies only what was appended since
//! the last background pass, and the next commit starts the WAL over. If the thread is
//! still busy by twice that, the writer waits for it: the WAL stays bounded.
//!
//! Owns: the checkpoint thread and its connection, and when the writer catches up.
//! Must not: write rows.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;

/// Appended bytes between two background checkpoints (SQLite's own default is 1,000
/// pages, about 4 MB).
pub const CHECKPOINT_BYTES: usize = 4 << 20;

/// Background checkpoints between two catch-ups on the writer's connection: the WAL
/// grows to about this many times [`CHECKPOINT_BYTES`] before it starts over.
pub const CATCH_UP_EVERY: u32 = 8;

/// The longest the writer waits for a busy checkpoint thread before a catch-up that is
/// overdue.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// The WAL file is truncated back to this size when it starts over after a burst the
/// checkpointer could not keep up with.
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Runs one passive checkpoint on `conn`: (frames in the WAL, frames copied so far).
pub fn passive(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// The writer's side: counts appended bytes, wakes the thread, decides catch-ups.
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    busy: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Appended since the thread was last woken.
    pending: usize,
    /// Wakes since the writer last caught up.
    wakes: u32,
    every: usize,
}

impl Checkpointer {
    /// Opens a second connection to `path` and starts the thread, which checkpoints
    /// each time the writer has appended `every` bytes.
    pub fn start(
        path: &Path,
        synchronous_full: bool,
        every: usize,
    ) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)?;
        // The checkpoint's fsyncs follow the connection that runs it.
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        let (wake, woken) = sync_channel::<()>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let thread_busy = busy.clone();
        let thread = std::thread::Builder::new()
            .name("switchyard-wal".into())
            .spawn(move || {
                // Ends when the writer drops its sender.
                while woken.recv().is_ok() {
                    thread_busy.store(true, Ordering::Release);
                    match passive(&conn) {
                        Ok((frames, copied)) => {
                            log::debug!("WAL checkpoint: {copied} of {frames} frames copied")
                        }
                        Err(e) => log::warn!("WAL checkpoint failed (retried later): {e}"),
                    }
                    thread_busy.store(false, Ordering::Release);
                }
            })
            .map_err(|source| StoreError::Thread { source })?;
        Ok(Checkpointer {
            wake: Some(wake),
            busy,
            thread: Some(thread),
            pending: 0,
            wakes: 0,
            every,
        })
    }

    /// After a commit of `bytes`: wakes the thread when enough was appended, and says
    /// whether the writer should now catch up itself (see the module docs).
    pub fn committed(&mut self, bytes: usize) -> bool {
        self.pending += bytes;
        if self.pending >= self.every {
            self.pending = 0;
            self.wakes += 1;
            if let Some(wake) = &self.wake {
                match wake.try_send(()) {
                    // Full: a pass is already due, and it will copy this too.
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    Err(TrySendError::Disconnected(())) => {
                        log::error!(
                            "the WAL checkpoint thread is gone; the WAL grows until restart"
                        )
                    }
                }
            }
        }
        if self.wakes < CATCH_UP_EVERY {
            return false;
        }
        if self.wakes >= 2 * CATCH_UP_EVERY {
            // The thread was busy at every chance since: wait for it (a rare, bounded
            // stall) rather than let the WAL grow without end.
            let deadline = Instant::now() + MAX_CATCH_UP_WAIT;
            while self.busy.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if self.busy.load(Ordering::Acquire) {
            return false;
        }
        self.wakes = 0;
        true
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the WAL checkpoint thread panicked");
            }
        }
    }
}
