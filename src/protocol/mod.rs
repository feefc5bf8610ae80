//! The wire protocol of docs/protocol.md: the event envelope, client commands and
//! server replies. Pure data and codecs; no actors, no sockets.

pub mod command;
pub mod dialect;
pub mod event;
pub mod order;
pub mod priority;
pub mod reply;
pub mod topic;

use std::sync::Arc;

pub use command::{decode, Command, Decoded, SubscribeRequest};
pub use event::{Event, ANONYMOUS, ENVELOPE_FIELDS};
pub use priority::Priority;
pub use reply::{PublishOk, PublishResult, Reply};

/// An accepted event together with its JSON envelope, serialised exactly once and
/// shared (behind an `Arc`) by the log, the HTTP API and every delivery.
#[derive(Debug)]
pub struct EncodedEvent {
    pub event: Event,
    /// Shared, so that a store can keep the envelope without the decoded event.
    pub json: Arc<str>,
    /// When the router accepted it (or it was read back): the start of its
    /// publish-to-deliver latency.
    pub accepted_at: std::time::Instant,
    /// Its topic family's slot in the metrics' table, looked up once per event
    /// (`metrics::Metrics::family_of`).
    pub family: std::sync::OnceLock<u16>,
}

impl EncodedEvent {
    pub fn new(event: Event) -> Arc<EncodedEvent> {
        thread_local! {
            /// Encoding goes through one growing buffer per thread, then into an
            /// exactly sized string: no reallocation while serialising (the router
            /// encodes every accepted event, and growing a fresh `String` from empty
            /// reallocates several times per event).
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let json = SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            // An `Event` holds only strings, numbers and JSON values: encoding cannot
            // fail, and serde_json writes UTF-8.
            serde_json::to_writer(&mut *buf, &event)
                .ok()
                .and_then(|()| std::str::from_utf8(buf).ok())
                .map_or_else(|| Arc::from("{}"), Arc::from)
        });
        Self::with_json(event, json)
    }

    /// An event with its envelope already at hand (read back from the store).
    /// The envelope up to and including `"cursor":`, for a log that numbers events
    /// itself (it appends the cursor and the closing brace). `None` once numbered.
    pub fn json_before_cursor(&self) -> Option<&str> {
        // `cursor` is the envelope's last field (`Event`), and is 0 until numbered.
        (self.event.cursor == 0)
            .then(|| self.json.strip_suffix("0}"))
            .flatten()
            .filter(|head| head.ends_with("\"cursor\":"))
    }

    /// This event numbered `cursor` (its envelope re-encoded).
    pub fn numbered(&self, cursor: u64) -> Arc<EncodedEvent> {
        let mut event = self.event.clone();
        event.cursor = cursor;
        EncodedEvent::new(event)
    }

    pub fn with_json(event: Event, json: Arc<str>) -> Arc<EncodedEvent> {
        Arc::new(EncodedEvent {
            event,
            json,
            accepted_at: std::time::Instant::now(),
            family: std::sync::OnceLock::new(),
        })
    }
}

/// The body of `POST /api/events`, split into its events' JSON text: one event
/// (`single`) or an array of them.
#[derive(Debug)]
pub struct EventsBody<'a> {
    pub events: Vec<&'a serde_json::value::RawValue>,
    pub single: bool,
}

/// Splits a `POST /api/events` body into events, as a WebSocket frame is: each stays
/// JSON text until validated ([`Event::from_raw`]), and the body as a whole must be
/// JSON a client could have parsed. An empty array is `invalid_event`.
pub fn split_events_body(body: &[u8]) -> Result<EventsBody<'_>, crate::error::ProtocolError> {
    use crate::error::{ErrorCode, ProtocolError};
    let invalid_json =
        |e: String| ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"));
    let single = !body.trim_ascii_start().starts_with(b"[");
    let text = std::str::from_utf8(body).map_err(|e| invalid_json(e.to_string()))?;
    event::check_json(text)?;
    // Checked above: these parses cannot fail.
    let events = if single {
        vec![serde_json::from_str(text).map_err(|e| invalid_json(e.to_string()))?]
    } else {
        serde_json::from_str(text).map_err(|e| invalid_json(e.to_string()))?
    };
    if events.is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::InvalidEvent,
            "the array holds no event",
        ));
    }
    Ok(EventsBody { events, single })
}

/// A batch of published events after validation: the valid ones go to the router,
/// the invalid ones keep their slot so results come back in the order sent.
#[derive(Debug)]
pub struct ValidatedBatch {
    slots: Vec<Option<crate::error::ProtocolError>>,
    /// The events that passed validation, in order.
    pub valid: Vec<Event>,
}

impl ValidatedBatch {
    /// Validates `raw` events published by `publisher` ([`Event::from_raw`]).
    pub fn new(raw: &[&serde_json::value::RawValue], publisher: &str) -> ValidatedBatch {
        let mut slots = Vec::with_capacity(raw.len());
        let mut valid = Vec::with_capacity(raw.len());
        for text in raw {
            match Event::from_raw(text, publisher) {
                Ok(event) => {
                    valid.push(event);
                    slots.push(None);
                }
                Err(e) => slots.push(Some(e)),
            }
        }
        ValidatedBatch { slots, valid }
    }

    /// The validation error of the first event, if it has one.
    pub fn first_error(&self) -> Option<&crate::error::ProtocolError> {
        self.slots.first().and_then(Option::as_ref)
    }

    /// Refuses every valid event after the first `keep` with `error`: each keeps its
    /// slot (its result is that error) and is never sent to the router. Returns how
    /// many were refused.
    pub fn refuse_after(&mut self, keep: usize, error: &crate::error::ProtocolError) -> usize {
        let mut seen = 0;
        for slot in &mut self.slots {
            if slot.is_none() {
                if seen >= keep {
                    *slot = Some(error.clone());
                }
                seen += 1;
            }
        }
        let refused = self.valid.len().saturating_sub(keep);
        self.valid.truncate(keep);
        refused
    }

    /// Refuses every valid event for which `check` fails (a topic outside the
    /// publisher's grant): it keeps its slot with that error and is never routed.
    /// Returns how many were refused.
    pub fn refuse_where(
        &mut self,
        check: impl Fn(&Event) -> Result<(), crate::error::ProtocolError>,
    ) -> usize {
        let mut events = std::mem::take(&mut self.valid).into_iter();
        let mut refused = 0;
        for slot in &mut self.slots {
            if slot.is_some() {
                continue;
            }
            let Some(event) = events.next() else { break };
            match check(&event) {
                Ok(()) => self.valid.push(event),
                Err(e) => {
                    *slot = Some(e);
                    refused += 1;
                }
            }
        }
        refused
    }

    /// Takes the valid events out, for the router.
    pub fn take_valid(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.valid)
    }

    /// Merges the router's results for the valid events back into the sent order.
    pub fn merge(
        self,
        accepted: Vec<Result<PublishOk, crate::error::ProtocolError>>,
    ) -> Vec<Result<PublishOk, crate::error::ProtocolError>> {
        let mut accepted = accepted.into_iter();
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Some(err) => Err(err),
                None => accepted.next().unwrap_or_else(|| {
                    Err(crate::error::ProtocolError::new(
                        crate::error::ErrorCode::Internal,
                        "router returned too few results",
                    ))
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The batch as the ingress sees it: each event still JSON text.
    fn batch(events: &[serde_json::Value]) -> ValidatedBatch {
        let raw: Vec<_> = events
            .iter()
            .map(|e| serde_json::value::to_raw_value(e).unwrap())
            .collect();
        let borrowed: Vec<&serde_json::value::RawValue> = raw.iter().map(|r| &**r).collect();
        ValidatedBatch::new(&borrowed, "s")
    }

    #[test]
    fn batch_results_keep_their_order() {
        let mut batch = batch(&[json!({"type": "a"}), json!({}), json!({"type": "b"})]);
        assert!(batch.first_error().is_none());
        let valid = batch.take_valid();
        assert_eq!(valid.len(), 2);
        let accepted = valid
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(PublishOk {
                    event_id: e.id.clone(),
                    cursor: i as u64 + 1,
                    duplicate: false,
                })
            })
            .collect();
        let merged = batch.merge(accepted);
        assert_eq!(merged[0].as_ref().unwrap().cursor, 1);
        assert_eq!(
            merged[1].as_ref().unwrap_err().code,
            crate::error::ErrorCode::InvalidEvent
        );
        assert_eq!(merged[2].as_ref().unwrap().cursor, 2);
    }

    #[test]
    fn refused_events_keep_their_slot_and_never_reach_the_router() {
        use crate::error::{ErrorCode, ProtocolError};
        let mut batch = batch(&[
            json!({"type": "a"}),
            json!({}),
            json!({"type": "b"}),
            json!({"type": "c"}),
        ]);
        let limited = ProtocolError::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(batch.refuse_after(1, &limited), 2);
        let valid = batch.take_valid();
        assert_eq!(valid.len(), 1);
        assert_eq!(valid[0].event_type, "a");
        let ok = PublishOk {
            event_id: valid[0].id.clone(),
            cursor: 7,
            duplicate: false,
        };
        let merged = batch.merge(vec![Ok(ok)]);
        let codes: Vec<_> = merged
            .iter()
            .map(|r| r.as_ref().map(|ok| ok.cursor).map_err(|e| e.code))
            .collect();
        assert_eq!(
            codes,
            [
                Ok(7),
                Err(ErrorCode::InvalidEvent),
                Err(ErrorCode::RateLimited),
                Err(ErrorCode::RateLimited)
            ]
        );
    }
}
