//! The one way clients' events enter the router. A WebSocket `publish_event` or
//! `publish_batch`, `POST /api/events` and any future event source call
//! [`Ingress::admit`], then [`Ingress::publish`]; a limit added here holds for all of
//! them. (A retried dead letter was admitted once already: it goes to
//! [`router::publish`] directly.)
//!
//! Owns, in this order: the size and batch limits, validation of each event, the
//! topics reserved to the server (`switchyard.>`), the caller's publish grants (topic
//! and `source`), the connection's rate budget, overload admission, and the hand-off to
//! the router. Must not: know the transport. How a refusal reaches the client (an
//! `error` frame, an HTTP status, one result of a batch) and how a publisher waits out
//! an overload pause are the caller's.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use serde_json::value::RawValue;

use super::router::{self, Dedupe, Router};
use crate::auth::Principal;
use crate::config::LimitsConfig;
use crate::error::{ErrorCode, ProtocolError};
use crate::metrics::Metrics;
use crate::overload::LowAdmission;
use crate::protocol::topic::check_not_reserved;
use crate::protocol::{Event, PublishOk, ValidatedBatch};
use crate::rate_limit::PublishBudget;

/// How a publish was sent, which decides how much of it a refusal takes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One event: any refusal refuses the publish.
    One,
    /// A batch: each event gets its own result; only a batch over the limits is
    /// refused whole.
    Batch,
}

/// A publish that passed every check, ready for [`Ingress::publish`].
#[derive(Debug)]
pub struct Admitted {
    batch: ValidatedBatch,
    events: Vec<Event>,
    pause: Option<Duration>,
}

impl Admitted {
    /// How long overload control asks this publisher to wait before its next publish:
    /// set only for a publish of low events while urgent ones are late.
    pub fn pause(&self) -> Option<Duration> {
        self.pause
    }
}

/// The shared publish path; one per server, shared by the HTTP handlers and cloned
/// into every session.
#[derive(Debug, Clone)]
pub struct Ingress {
    router: Addr<Router>,
    metrics: Arc<Metrics>,
    admission: Arc<LowAdmission>,
    max_event_bytes: usize,
    max_batch_events: usize,
}

impl Ingress {
    pub fn new(
        router: Addr<Router>,
        metrics: Arc<Metrics>,
        admission: Arc<LowAdmission>,
        limits: &LimitsConfig,
    ) -> Self {
        Ingress {
            router,
            metrics,
            admission,
            max_event_bytes: limits.max_event_bytes,
            max_batch_events: limits.max_batch_events,
        }
    }

    /// Overload control, for the sessions that report their deliveries to it.
    pub fn admission(&self) -> &Arc<LowAdmission> {
        &self.admission
    }

    /// Refuses a publish `bytes` long as sent when it is over `limits.max_event_bytes`;
    /// [`admit`](Self::admit) checks this first, and a transport may check it before
    /// it parses anything.
    pub fn check_size(&self, bytes: usize, shape: Shape) -> Result<(), ProtocolError> {
        if bytes <= self.max_event_bytes {
            return Ok(());
        }
        let what = match shape {
            Shape::One => "event",
            Shape::Batch => "batch",
        };
        Err(ProtocolError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "{what} is {bytes} bytes, over the limit of {}",
                self.max_event_bytes
            ),
        ))
    }

    /// Checks a publish of `raw` events, `bytes` long as sent, by `caller`, charging
    /// `budget` one token per valid event. `Err` refuses the whole publish; a batch
    /// keeps its refused events as results of their own.
    pub fn admit(
        &self,
        raw: &[&RawValue],
        bytes: usize,
        shape: Shape,
        caller: &Principal,
        budget: &PublishBudget,
    ) -> Result<Admitted, ProtocolError> {
        self.check_size(bytes, shape)?;
        if raw.len() > self.max_batch_events {
            return Err(ProtocolError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "batch of {} events is over the limit of {}",
                    raw.len(),
                    self.max_batch_events
                ),
            ));
        }
        let mut batch = ValidatedBatch::new(raw, &caller.name);
        batch.refuse_where(|e| {
            check_not_reserved(&e.topic)?;
            caller.check_publish(&e.topic)?;
            caller.check_source(&e.source)
        });
        if shape == Shape::One {
            if let Some(e) = batch.first_error() {
                return Err(e.clone());
            }
        }
        if let Err(over) = budget.take(batch.valid.len()) {
            if shape == Shape::One {
                self.metrics.rejected_over_rate.fetch_add(1, Relaxed);
                return Err(over.error);
            }
            let refused = batch.refuse_after(over.granted, &over.error);
            self.metrics
                .rejected_over_rate
                .fetch_add(refused as u64, Relaxed);
        }
        let events = batch.take_valid();
        let pause = self.admission.admit_events(&events);
        Ok(Admitted {
            batch,
            events,
            pause,
        })
    }

    /// Hands an admitted publish to the router at once; resolves, once committed, to
    /// one result per event of the publish, in the order sent.
    pub fn publish(
        &self,
        admitted: Admitted,
    ) -> impl Future<Output = Vec<Result<PublishOk, ProtocolError>>> + 'static {
        let Admitted { batch, events, .. } = admitted;
        let accepted = router::publish(&self.router, &self.metrics, events, Dedupe::Check);
        async move { batch.merge(accepted.await) }
    }
}
