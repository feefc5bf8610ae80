//! [`end_turn`]: the future a session waits on (`ctx.wait`) to hand its HTTP worker
//! thread to the other connections there, between turns of reading or writing.
//!
//! Owns: the wake-up flag of one wait. Must not: touch actor state; it is not an actor.
//!
//! `tokio::task::yield_now` alone does not end a turn here. The HTTP/1 dispatcher that
//! drives a WebSocket context (actix-http `h1::Dispatcher`) polls the context again at
//! once, in the same task poll, for as long as the socket takes the bytes: it refills
//! its write buffer and flushes in a loop. `yield_now` is ready on its second poll
//! whether or not the runtime ran anything in between, so a session that "yielded"
//! between turns went on writing until it had nothing left, and a critical frame for
//! the next connection on that thread waited behind all of it (docs/benchmarks.md,
//! scenario 4). [`EndTurn`] is ready only once the runtime has woken the task again,
//! which it does after the tasks that were already waiting to run.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Ends the current turn of the task that awaits it; see the module docs.
pub fn end_turn() -> EndTurn {
    EndTurn {
        woken: None,
        yield_now: Box::pin(tokio::task::yield_now()),
    }
}

/// The future [`end_turn`] returns.
pub struct EndTurn {
    /// Set at the first poll; flips when the runtime wakes the task.
    woken: Option<Arc<Woken>>,
    yield_now: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Wakes the task and remembers that it did.
struct Woken {
    flag: AtomicBool,
    task: Waker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Future for EndTurn {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(woken) = &self.woken {
            return if woken.flag.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        // `yield_now` asks the runtime to wake the task after the others that are ready
        // have run (tokio defers the wake-up); it gets a waker that records it.
        let woken = Arc::new(Woken {
            flag: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(woken.clone());
        let _ = self
            .yield_now
            .as_mut()
            .poll(&mut Context::from_waker(&waker));
        self.woken = Some(woken);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(flavor = "current_thread")]
    async fn polled_again_at_once_the_turn_is_not_over() {
        let mut turn = std::pin::pin!(end_turn());
        // What the HTTP dispatcher does: poll again within the same task poll.
        poll_fn(|cx| {
            assert!(turn.as_mut().poll(cx).is_pending());
            assert!(turn.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        let other_ran = Arc::new(AtomicBool::new(false));
        let other = other_ran.clone();
        tokio::spawn(async move { other.store(true, Ordering::Release) });
        turn.await;
        assert!(other_ran.load(Ordering::Acquire));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn plain_yield_now_is_ready_when_polled_again_at_once() {
        // The behaviour `EndTurn` exists for; if tokio changes it, this says so.
        let mut yielded = std::pin::pin!(tokio::task::yield_now());
        poll_fn(|cx| {
            assert!(yielded.as_mut().poll(cx).is_pending());
            assert!(yielded.as_mut().poll(cx).is_ready());
            Poll::Ready(())
        })
        .await;
    }
}
