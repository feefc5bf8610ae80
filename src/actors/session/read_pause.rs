//! [`Gated`]: the request body stream a session reads its frames from, which stops
//! reading while its [`ReadPause`] says so (overload control: `crate::overload`).
//!
//! Owns: the instant until which one connection's bytes stay in its socket. Must not:
//! touch actor state or drop, reorder or hold back bytes it has read; it is not an actor.
//!
//! Why not `ctx.wait(sleep)` in the session: that stops the whole actor, so the frames
//! its delivery worker hands it are not written either. A low-only publisher that also
//! subscribes would have its deliveries held for every pause, and on a busy
//! subscription its worker's waiting queue would overflow and drop them. Here only the
//! reading stops: the bytes wait in the socket (TCP backpressure), and the session goes
//! on writing, answering and handling its mailbox. Frames the WebSocket decoder had
//! already read when the pause began still reach the session, which keeps them, in
//! order, until the pause is over (`Session::deferred`): handled at once, a window of
//! pipelined batches would pass as one burst. While it keeps any, it holds the reading
//! ([`ReadPause::hold`]), so what it keeps never grows past what was read before.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_web::rt::time::{sleep_until, Instant, Sleep};
use futures_util::Stream;

/// The session's side: ask the stream to stop reading for a while, or until released.
#[derive(Clone, Debug, Default)]
pub struct ReadPause {
    inner: Rc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    until: Cell<Option<Instant>>,
    /// Held by the session while it has frames of its own to handle first.
    held: Cell<bool>,
    /// The stream's task, waiting for a release.
    waiting: RefCell<Option<Waker>>,
}

impl ReadPause {
    /// Read nothing more until [`release`](Self::release), whatever the time: the
    /// session holds the reading while frames read earlier still wait to be handled,
    /// so that what it keeps stays bounded by what was read before a pause.
    pub fn hold(&self) {
        self.inner.held.set(true);
    }

    /// Ends a [`hold`](Self::hold); the stream reads again unless a pause is on.
    pub fn release(&self) {
        self.inner.held.set(false);
        if let Some(waker) = self.inner.waiting.take() {
            waker.wake();
        }
    }

    /// Read nothing more for `pause` from now (or longer, if an earlier pause ends later).
    pub fn pause_for(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let until = self.inner.until.get().map_or(until, |u| u.max(until));
        self.inner.until.set(Some(until));
    }

    /// How long the pause still lasts; `None` when reading is on.
    pub fn remaining(&self) -> Option<Duration> {
        let left = self
            .inner
            .until
            .get()?
            .checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// Wraps the stream this pause applies to.
    pub fn gate<S>(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            pause: self.clone(),
            sleep: None,
        }
    }
}

/// A stream that yields nothing while its [`ReadPause`] is on or held.
pub struct Gated<S> {
    inner: S,
    pause: ReadPause,
    /// The timer of the pause being waited out.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let pause = &this.pause.inner;
        if pause.held.get() {
            pause.waiting.replace(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        if let Some(until) = pause.until.get() {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(sleep_until(until)));
            if sleep.deadline() != until {
                sleep.as_mut().reset(until);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            pause.until.set(None);
            this.sleep = None;
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A stream of 1, 2, 3 that is always ready.
    fn numbers() -> impl Stream<Item = u32> + Unpin {
        let mut next = 0;
        Box::pin(futures_util::stream::poll_fn(move |_| {
            next += 1;
            Poll::Ready((next <= 3).then_some(next))
        }))
    }

    async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }

    #[actix_rt::test]
    async fn reads_nothing_until_the_pause_is_over() {
        let pause = ReadPause::default();
        let mut stream = pause.gate(numbers());
        assert_eq!(next(&mut stream).await, Some(1));
        let start = Instant::now();
        pause.pause_for(Duration::from_millis(50));
        // A shorter pause asked for meanwhile does not end the longer one.
        pause.pause_for(Duration::from_millis(10));
        assert_eq!(next(&mut stream).await, Some(2));
        assert!(start.elapsed() >= Duration::from_millis(50));
        // Over: the stream is read again, and the pause is forgotten.
        assert_eq!(pause.inner.until.get(), None);
        assert_eq!(next(&mut stream).await, Some(3));
        assert_eq!(next(&mut stream).await, None);
    }

    #[actix_rt::test]
    async fn a_hold_keeps_the_stream_waiting_until_released() {
        let pause = ReadPause::default();
        let mut stream = pause.gate(numbers());
        pause.hold();
        poll_fn(|cx| {
            assert!(Pin::new(&mut stream).poll_next(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        // The release wakes the waiting task, and the stream is read again.
        let woken = pause.inner.waiting.take().expect("a waiting task");
        let flag = Arc::new(Flag::default());
        pause.inner.waiting.replace(Some(Waker::from(flag.clone())));
        pause.release();
        assert!(flag.0.load(Ordering::Acquire));
        drop(woken);
        assert_eq!(next(&mut stream).await, Some(1));
    }

    /// A waker that records that it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    #[actix_rt::test]
    async fn a_longer_pause_asked_for_while_waiting_moves_the_end() {
        let pause = ReadPause::default();
        let mut stream = pause.gate(numbers());
        let start = Instant::now();
        pause.pause_for(Duration::from_millis(10));
        poll_fn(|cx| {
            // Waiting on the 10 ms timer when the pause grows to 40 ms.
            assert!(Pin::new(&mut stream).poll_next(cx).is_pending());
            pause.pause_for(Duration::from_millis(40));
            Poll::Ready(())
        })
        .await;
        assert_eq!(next(&mut stream).await, Some(1));
        assert!(start.elapsed() >= Duration::from_millis(40));
    }
}
