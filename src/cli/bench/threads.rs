//! Client threads: each runs its own single-threaded actix runtime, because a
//! WebSocket connection is not `Send` and must live and die on the thread that opened
//! it, and because one thread reading every subscriber's frames would be what limits a
//! fan-out.
//!
//! Owns: starting those threads and waiting until their connections are open. Must
//! not: know what runs on them.

use std::future::Future;

use tokio::sync::oneshot;

use super::wire::{connect, Conn};
use super::BenchError;

/// How a client thread says its connections are open (or why they are not).
pub type Ready = oneshot::Sender<Result<(), BenchError>>;
pub type IsReady = oneshot::Receiver<Result<(), BenchError>>;

/// Runs `make` on a thread of its own with its own single-threaded runtime (WebSocket
/// connections are not `Send`: each lives and dies on the thread that opened it).
/// `make` reports on [`Ready`] once its connections are open; answers that report's
/// receiver (for [`all_ready`]) and the receiver of its result.
pub fn on_own_thread<T, F, Fut>(
    name: String,
    make: F,
) -> Result<(IsReady, oneshot::Receiver<T>), BenchError>
where
    F: FnOnce(Ready) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (ready, is_ready) = oneshot::channel();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let out = actix_web::rt::System::new().block_on(make(ready));
            let _ = tx.send(out);
        })
        .map_err(|e| BenchError::Connection(format!("cannot start a client thread: {e}")))?;
    Ok((is_ready, rx))
}

/// A lane with a connection and a thread of its own (the critical and ping lanes):
/// connects, then runs `run` on the connection. Returns once it is connected; the
/// receiver gets `None` if it could not.
pub async fn connected_lane<T, F, Fut>(
    name: &str,
    url: &str,
    token: &Option<String>,
    run: F,
) -> Result<oneshot::Receiver<Option<T>>, BenchError>
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (url, token) = (url.to_owned(), token.clone());
    let (ready, result) = on_own_thread(name.into(), move |ready| async move {
        match connect(&url, token.as_deref()).await {
            Ok(ws) => {
                let _ = ready.send(Ok(()));
                Some(run(ws).await)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                None
            }
        }
    })?;
    all_ready(vec![ready]).await?;
    Ok(result)
}

/// Waits until every client thread has opened its connections; the first failure.
pub async fn all_ready(readies: Vec<IsReady>) -> Result<(), BenchError> {
    for r in readies {
        r.await.map_err(|_| {
            BenchError::Connection("a client thread stopped before it was ready".into())
        })??;
    }
    Ok(())
}
