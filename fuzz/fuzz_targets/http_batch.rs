//! The body of `POST /api/events` as a client may send it: split into events
//! (`split_events_body`), each validated as the ingress does (`ValidatedBatch`), the
//! valid ones encoded, and the results merged back into the order sent. Every event of
//! the body gets exactly one result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{split_events_body, EncodedEvent, ValidatedBatch};
use switchyard_fuzz::on_small_stack;

fuzz_target!(|data: &[u8]| {
    let body = data.to_vec();
    on_small_stack(move || run(&body));
});

fn run(body: &[u8]) {
    let Ok(split) = split_events_body(body) else {
        return;
    };
    assert!(!split.events.is_empty());
    assert!(!split.single || split.events.len() == 1);
    let mut batch = ValidatedBatch::new(&split.events, "fuzz");
    let valid = batch.take_valid();
    for event in &valid {
        let _ = EncodedEvent::new(event.clone());
    }
    assert_eq!(batch.merge(Vec::new()).len(), split.events.len());
}
