//! WAL checkpoints off the commit path, for the SQLite backend.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that
//! commit copies megabytes from the WAL into the database file and waits for two
//! fsyncs, and every publish waiting on it waits too. Here the writer's automatic
//! checkpoint is off and a thread of its own, with its own connection, checkpoints in
//! `PASSIVE` mode (it never blocks the writer) each time the WAL has grown by
//! [`CHECKPOINT_BYTES`]. A woken thread repeats its pass until what the writer appended
//! meanwhile is small (at most [`MAX_PASSES`] passes).
//!
//! A passive checkpoint that runs while the writer keeps appending never quite catches
//! up, and the WAL only starts over from its beginning once every frame in it has been
//! copied. So once the WAL holds [`RESTART_BYTES`], the writer finishes the job itself
//! between two commits: at its first commit after the thread's next pass ended, when only
//! the frames of the last commit or so are left to copy (`policy`). The WAL is measured
//! in frames, as SQLite reports them after each commit: each commit rewrites whole pages,
//! so the WAL grows several times faster than the events themselves. It starts over well
//! below [`WAL_SIZE_LIMIT`], so a steady load never truncates it: truncating frees
//! blocks, and the file system's next journal commit, which every commit's fsync waits
//! on, pays for that.
//!
//! SQLite flushes the database file only when a checkpoint has copied the whole WAL,
//! which under load is the writer's catch-up; so the thread flushes the file itself
//! after its passes, and the catch-up's flush finds only its own few pages to write.
//!
//! Owns: the checkpoint thread, its connection and its handle on the database file,
//! and when the writer catches up.
//! Must not: write rows.

mod policy;

use std::cell::Cell;
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::hooks::Wal;
use rusqlite::Connection;

use super::StoreError;
use policy::{Policy, Step};

/// WAL bytes between two background passes (SQLite's own default is 1,000 pages).
pub const CHECKPOINT_BYTES: usize = 4 << 20;

/// A WAL this large starts over once the thread has copied it.
pub const RESTART_BYTES: usize = 16 << 20;

/// Passes a woken thread makes at most, each copying what the writer appended during
/// the one before.
pub const MAX_PASSES: u32 = 4;

/// A pass that leaves at most this many frames uncopied ends the thread's turn.
const SMALL_REMAINDER_FRAMES: i64 = 16;

/// The longest the writer waits for a busy checkpoint thread before a catch-up that is
/// overdue.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// The WAL file is truncated back to this size when it starts over after a burst the
/// checkpointer could not keep up with; a WAL this large is overdue.
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// When the WAL is checkpointed, in bytes (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct WalSizes {
    /// Growth between two wakes of the thread.
    pub every: usize,
    /// The WAL starts over once the thread has copied this much.
    pub restart: usize,
    /// A WAL this long is overdue: the writer waits for the thread (bounded).
    pub overdue: usize,
}

impl Default for WalSizes {
    fn default() -> WalSizes {
        WalSizes {
            every: CHECKPOINT_BYTES,
            restart: RESTART_BYTES,
            overdue: WAL_SIZE_LIMIT as usize,
        }
    }
}

thread_local! {
    /// Frames in the WAL after the last commit on this thread (see [`watch`]).
    static WAL_FRAMES: Cell<i64> = const { Cell::new(0) };
}

fn note_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(i64::from(frames)));
    Ok(())
}

/// Has the writer's connection report the WAL's length after each of its commits
/// (call it after setting `wal_autocheckpoint`, which replaces the hook).
pub fn watch(conn: &Connection) {
    conn.wal_hook(Some(note_frames));
}

/// Runs one passive checkpoint on `conn`: (frames in the WAL, frames copied so far).
pub fn passive(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// Writes the pages the thread's passes copied into the database file through to the
/// disk, so the catch-up need not (module docs). A failure only puts that wait back on
/// the catch-up, so it is logged, not returned.
fn flush_copies(db_file: &std::fs::File) {
    if let Err(e) = db_file.sync_data() {
        log::warn!("flushing the database file after a WAL checkpoint failed: {e}");
    }
}

/// The writer's side: reads the WAL's length after each commit, wakes the thread,
/// decides catch-ups.
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    busy: Arc<AtomicBool>,
    /// Wakes the thread has finished.
    done: Arc<AtomicU64>,
    /// Wakes sent to the thread.
    sent: u64,
    thread: Option<JoinHandle<()>>,
    policy: Policy,
}

impl Checkpointer {
    /// Opens a second connection to `path` and starts the thread, which checkpoints
    /// as `sizes` say.
    pub fn start(
        path: &Path,
        synchronous_full: bool,
        sizes: WalSizes,
    ) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)?;
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let frames = |bytes: usize| i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(1);
        let policy = Policy::new(
            frames(sizes.every),
            frames(sizes.restart),
            frames(sizes.overdue),
        );
        // The checkpoint's fsyncs follow the connection that runs it.
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        // The thread's own handle on the database file, to flush what its passes
        // copied (see `flush_copies`).
        let db_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| StoreError::DataDir {
                path: path.to_owned(),
                source,
            })?;
        let (wake, woken) = sync_channel::<()>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (thread_busy, thread_done) = (busy.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("switchyard-wal".into())
            .spawn(move || {
                // Ends when the writer drops its sender.
                while woken.recv().is_ok() {
                    thread_busy.store(true, Ordering::Release);
                    let mut copied_any = false;
                    for _ in 0..MAX_PASSES {
                        match passive(&conn) {
                            Ok((frames, copied)) => {
                                log::debug!("WAL checkpoint: {copied} of {frames} frames copied");
                                copied_any |= copied > 0;
                                if frames - copied <= SMALL_REMAINDER_FRAMES {
                                    break;
                                }
                            }
                            Err(e) => {
                                log::warn!("WAL checkpoint failed (retried later): {e}");
                                break;
                            }
                        }
                    }
                    if copied_any {
                        flush_copies(&db_file);
                    }
                    thread_done.fetch_add(1, Ordering::AcqRel);
                    thread_busy.store(false, Ordering::Release);
                }
            })
            .map_err(|source| StoreError::Thread { source })?;
        Ok(Checkpointer {
            wake: Some(wake),
            busy,
            done,
            sent: 0,
            thread: Some(thread),
            policy,
        })
    }

    /// After a commit on the writer's connection (the one given to [`watch`]): wakes
    /// the thread when the WAL has grown enough, and says whether the writer should
    /// now catch up itself (see the module docs).
    pub fn committed(&mut self) -> bool {
        let frames = WAL_FRAMES.with(Cell::get);
        match self.policy.after_commit(frames, self.thread_done()) {
            Step::Nothing => false,
            Step::Wake => {
                self.wake_thread();
                false
            }
            Step::CatchUp => true,
            Step::WaitThenCatchUp => {
                // The thread was busy at every chance since: wait for it (a rare,
                // bounded stall) rather than let the WAL grow without end.
                let deadline = Instant::now() + MAX_CATCH_UP_WAIT;
                while !self.thread_done() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                true
            }
        }
    }

    /// The thread has finished every pass it was woken for.
    fn thread_done(&self) -> bool {
        !self.busy.load(Ordering::Acquire) && self.done.load(Ordering::Acquire) >= self.sent
    }

    fn wake_thread(&mut self) {
        let Some(wake) = &self.wake else { return };
        match wake.try_send(()) {
            Ok(()) => self.sent += 1,
            // Full: a pass is already due, and it will copy this too.
            Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                log::error!("the WAL checkpoint thread is gone; the WAL grows until restart")
            }
        }
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
