//! How a source's events enter the router: through [`Ingress`], like a client's, as
//! the source's own principal, in batches within the publish limits.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::actors::ingress::{Ingress, Shape};
use crate::auth::Principal;
use crate::config::LimitsConfig;
use crate::error::{ErrorCode, ProtocolError};
use crate::rate_limit::PublishBudget;

/// What became of one event a source published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or a duplicate of an event committed before).
    Published,
    /// It can never be published (invalid, too large, forbidden): skip it.
    Refused(String),
    /// Not now (the router is busy or unavailable): publish it again later.
    Retry(String),
}

impl Outcome {
    fn of(e: &ProtocolError) -> Outcome {
        match e.code {
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal => {
                Outcome::Retry(e.message.clone())
            }
            _ => Outcome::Refused(format!("{}: {}", e.code.as_str(), e.message)),
        }
    }
}

/// One source's way in.
#[derive(Clone)]
pub struct SourcePublisher {
    ingress: Ingress,
    principal: Arc<Principal>,
    /// Unlimited: a source is paced by the router's answers, not by a client's rate.
    budget: Arc<PublishBudget>,
    max_event_bytes: usize,
    max_batch_events: usize,
}

impl SourcePublisher {
    /// Publishes as `principal`: a configured token's of the source's name, so that
    /// its grants apply, or else [`Principal::source`].
    pub fn new(ingress: Ingress, principal: Arc<Principal>, limits: &LimitsConfig) -> Self {
        SourcePublisher {
            ingress,
            principal,
            budget: Arc::new(PublishBudget::with_clock(0, 0, Default::default())),
            max_event_bytes: limits.max_event_bytes,
            max_batch_events: limits.max_batch_events,
        }
    }

    /// Publishes `events` (envelope JSON texts) in order; one outcome each, in order.
    pub async fn publish(&self, events: Vec<String>) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut batch: Vec<Box<RawValue>> = Vec::new();
        let mut bytes = 0;
        for text in events {
            if text.len() > self.max_event_bytes {
                // Sent alone, so that the refusal is this event's only.
                outcomes.extend(self.send(std::mem::take(&mut batch)).await);
                outcomes.push(Outcome::Refused(format!(
                    "payload_too_large: the event is {} bytes, over limits.max_event_bytes",
                    text.len()
                )));
                bytes = 0;
                continue;
            }
            if batch.len() == self.max_batch_events || bytes + text.len() > self.max_event_bytes {
                outcomes.extend(self.send(std::mem::take(&mut batch)).await);
                bytes = 0;
            }
            bytes += text.len();
            match RawValue::from_string(text) {
                Ok(raw) => batch.push(raw),
                Err(e) => {
                    outcomes.extend(self.send(std::mem::take(&mut batch)).await);
                    bytes = 0;
                    outcomes.push(Outcome::Refused(format!("invalid JSON: {e}")));
                }
            }
        }
        outcomes.extend(self.send(batch).await);
        outcomes
    }

    async fn send(&self, batch: Vec<Box<RawValue>>) -> Vec<Outcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        let refs: Vec<&RawValue> = batch.iter().map(|r| &**r).collect();
        let bytes = refs.iter().map(|r| r.get().len()).sum();
        let admitted =
            match self
                .ingress
                .admit(&refs, bytes, Shape::Batch, &self.principal, &self.budget)
            {
                Ok(a) => a,
                Err(e) => return vec![Outcome::of(&e); batch.len()],
            };
        if let Some(pause) = admitted.pause() {
            // Overload control asks low publishers to wait; a source is one.
            actix::clock::sleep(pause).await;
        }
        self.ingress
            .publish(admitted)
            .await
            .iter()
            .map(|r| match r {
                Ok(_) => Outcome::Published,
                Err(e) => Outcome::of(e),
            })
            .collect()
    }
}
