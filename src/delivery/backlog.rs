//! The count of frames handed to one session and not written yet: how a delivery
//! worker and a session share the work of a slow socket.
//!
//! Owns: the bounds on what a session may hold. Must not: decide what is dropped (the
//! subscription queues do).

use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// Frames per `WriteFrames` message.
pub const FRAMES_PER_BATCH: usize = 256;
/// Batches sent to one session per flush before giving other sessions a turn.
pub const BATCHES_PER_FLUSH: usize = 8;
/// Frames a session may have been handed and not written yet. Past this the rest waits
/// in the worker, where overflow drops the lowest priority first (docs/protocol.md
/// section 4.9) and the session's memory stays bounded.
pub const MAX_UNWRITTEN_FRAMES: usize = 2 * FRAMES_PER_BATCH;
/// Critical events a session may be handed past [`MAX_UNWRITTEN_FRAMES`]. Without
/// them a critical event waits here until the session has written half its backlog,
/// then for its turn in the session's mailbox; with them it joins the session's queue
/// at once and leaves ahead of the lower-priority events there.
pub const URGENT_FRAMES: usize = FRAMES_PER_BATCH / 4;

/// Frames handed to one session and not written yet, shared by the session and the
/// delivery worker that serves it. The worker hands over no more past
/// [`MAX_UNWRITTEN_FRAMES`] and says it is waiting; the session, once it has written
/// down to half of that, tells the worker (`Resume`): the worker keeps no timer for a
/// waiting session, so a fast subscriber never waits on one.
#[derive(Debug, Default)]
pub struct Backlog {
    unwritten: AtomicUsize,
    worker_waits: AtomicBool,
}

impl Backlog {
    /// Worker: may more frames be handed over now? When not, the worker is marked as
    /// waiting first and the count checked again, so a session that wrote everything
    /// in between cannot leave it waiting for nothing.
    pub fn has_room(&self) -> bool {
        if self.unwritten.load(Acquire) < MAX_UNWRITTEN_FRAMES {
            return true;
        }
        self.worker_waits.store(true, Release);
        self.unwritten.load(Acquire) < MAX_UNWRITTEN_FRAMES
    }

    /// Worker, once [`has_room`](Self::has_room) said no: how many critical events may
    /// still be handed over ([`URGENT_FRAMES`] past the limit, less those not written).
    pub fn urgent_room(&self) -> usize {
        (MAX_UNWRITTEN_FRAMES + URGENT_FRAMES).saturating_sub(self.unwritten.load(Acquire))
    }

    /// Worker: `n` frames are being handed over (counted before sending, as the
    /// session may write them before `try_send` returns).
    pub fn handed(&self, n: usize) {
        self.unwritten.fetch_add(n, AcqRel);
    }

    /// Worker: `n` frames handed over were not taken after all (the mailbox was full).
    pub fn returned(&self, n: usize) {
        self.unwritten.fetch_sub(n, AcqRel);
    }

    /// Session: `n` frames were written. True when the worker waits for room and now
    /// has it: the session should tell it.
    pub fn written(&self, n: usize) -> bool {
        let left = self.unwritten.fetch_sub(n, AcqRel).saturating_sub(n);
        left <= MAX_UNWRITTEN_FRAMES / 2 && self.worker_waits.swap(false, AcqRel)
    }

    /// Handed over and not written yet.
    pub fn unwritten(&self) -> usize {
        self.unwritten.load(Acquire)
    }
}
