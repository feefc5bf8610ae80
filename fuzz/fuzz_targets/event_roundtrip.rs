//! One published event, as a client may send it: validated (`Event::from_raw`),
//! encoded into its envelope (what stores keep and subscribers receive), decoded back
//! as a store reads it, and encoded again. The decoded event must equal the published
//! one (timestamps at the envelope's microsecond precision), and encoding must be
//! stable, or replay would hand out events that differ from the live ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use switchyard::protocol::{EncodedEvent, Event};
use switchyard_fuzz::on_small_stack;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = RawValue::from_string(text.to_owned()) else {
        return;
    };
    on_small_stack(move || run(&raw));
});

fn run(raw: &RawValue) {
    let Ok(mut published) = Event::from_raw(raw, "fuzz") else {
        return;
    };
    published.cursor = 7;
    let encoded = EncodedEvent::new(published.clone());
    let mut decoded: Event = serde_json::from_str(&encoded.json)
        .unwrap_or_else(|e| panic!("an envelope we wrote does not decode: {e}\n{}", encoded.json));
    // Not part of the envelope.
    decoded.publisher = published.publisher.clone();
    decoded.id_generated = published.id_generated;
    let micros = published.timestamp.timestamp_subsec_nanos() % 1000;
    published.timestamp -= chrono::Duration::nanoseconds(i64::from(micros));
    assert_eq!(decoded, published, "{}", encoded.json);
    let again = EncodedEvent::new(decoded);
    assert_eq!(again.json, encoded.json, "encoding is not stable");
}
