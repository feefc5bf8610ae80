//! When the writer wakes the checkpoint thread and when it finishes a checkpoint itself:
//! a pure decision on the WAL's size after each commit.
//!
//! Owns: that decision. Must not: run a checkpoint or read the clock.

/// What the writer does after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Wake the thread for a passive pass.
    Wake,
    /// Copy what the thread left (the frames of the last commit or so), so that the
    /// next commit starts the WAL over from its beginning.
    CatchUp,
    /// The thread has not finished its pass since the WAL passed the point where it
    /// should have started over: wait for it (bounded), then catch up.
    WaitThenCatchUp,
}

/// Sizes in WAL frames (pages).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Frames appended between two wakes of the thread.
    wake_every: i64,
    /// A WAL this long starts over once the thread has copied it.
    restart_at: i64,
    /// A WAL this long is overdue: the writer waits for the thread.
    overdue_at: i64,
    /// The WAL's length when the thread was last woken.
    woken_at: i64,
    /// The thread was woken to prepare a restart; the writer catches up once that pass
    /// is done.
    restart_pending: bool,
}

impl Policy {
    pub fn new(wake_every: i64, restart_at: i64, overdue_at: i64) -> Policy {
        Policy {
            wake_every: wake_every.max(1),
            restart_at: restart_at.max(1),
            overdue_at: overdue_at.max(restart_at),
            woken_at: 0,
            restart_pending: false,
        }
    }

    /// After a commit that left `frames` in the WAL; `thread_done` says whether the
    /// thread has finished every pass it was woken for.
    pub fn after_commit(&mut self, frames: i64, thread_done: bool) -> Step {
        if frames < self.woken_at {
            // The WAL started over.
            self.woken_at = 0;
            self.restart_pending = false;
        }
        if self.restart_pending {
            if thread_done {
                self.restart_pending = false;
                return Step::CatchUp;
            }
            if frames >= self.overdue_at {
                self.restart_pending = false;
                return Step::WaitThenCatchUp;
            }
            return Step::Nothing;
        }
        if frames >= self.restart_at {
            // Catching up now would copy whatever the thread has not reached yet, up to
            // `wake_every` frames, while every publish waits: let the thread copy that
            // first.
            self.restart_pending = true;
            self.woken_at = frames;
            return Step::Wake;
        }
        if frames - self.woken_at >= self.wake_every {
            self.woken_at = frames;
            return Step::Wake;
        }
        Step::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::Step::*;
    use super::*;

    /// Each row: (frames in the WAL after a commit, the thread's passes all done,
    /// expected step), applied in order to one policy of wake 10, restart 40, overdue 80.
    fn run(rows: &[(i64, bool, Step)]) {
        let mut policy = Policy::new(10, 40, 80);
        for (i, &(frames, done, step)) in rows.iter().enumerate() {
            assert_eq!(
                policy.after_commit(frames, done),
                step,
                "row {i}: {frames} frames, thread done {done}"
            );
        }
    }

    #[test]
    fn wakes_every_so_many_frames() {
        run(&[
            (3, true, Nothing),
            (9, true, Nothing),
            (10, true, Wake),
            (15, false, Nothing),
            (20, false, Wake),
            (29, true, Nothing),
            (31, true, Wake),
        ]);
    }

    #[test]
    fn catches_up_at_the_first_commit_after_the_restart_pass() {
        run(&[
            (10, true, Wake),
            (20, true, Wake),
            (30, true, Wake),
            // Past the restart point: the thread copies first, even if it is idle.
            (41, true, Wake),
            (43, false, Nothing),
            (45, false, Nothing),
            (47, true, CatchUp),
            // The WAL started over.
            (2, true, Nothing),
            (12, true, Wake),
        ]);
    }

    #[test]
    fn an_overdue_wal_waits_for_the_thread() {
        run(&[
            (45, true, Wake),
            (60, false, Nothing),
            (80, false, WaitThenCatchUp),
            // A catch-up that did not start the WAL over (a reader held it): the next
            // commit prepares another.
            (81, true, Wake),
            (82, true, CatchUp),
        ]);
    }

    #[test]
    fn a_wal_that_never_reaches_the_restart_point_is_only_woken_for() {
        let mut policy = Policy::new(10, 40, 80);
        let steps: Vec<Step> = (1..=39).map(|f| policy.after_commit(f, true)).collect();
        assert_eq!(steps.iter().filter(|s| **s == Wake).count(), 3);
        assert!(!steps.contains(&CatchUp));
    }
}
