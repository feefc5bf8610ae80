//! One WebSocket text frame, as a client may send anything: `protocol::decode`, then
//! what the session does next with a decoded command (event validation and encoding,
//! expiry, the subscription's matcher and coalesce key on sample events). Runs on a
//! small stack, so that deep recursion shows up as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{decode, Command, EncodedEvent, Event, ValidatedBatch};
use switchyard::routing::SubscriptionSpec;
use switchyard_fuzz::{instants, on_small_stack, SAMPLES};

fn check(event: Event) {
    for now in instants() {
        let _ = event.is_expired(now);
    }
    let _ = EncodedEvent::new(event);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.to_owned();
    on_small_stack(move || run(&text));
});

fn run(text: &str) {
    match decode(text, usize::MAX).command {
        Ok(Command::Publish { event }) => {
            if let Ok(event) = Event::from_json(event, "fuzz") {
                check(event);
            }
        }
        Ok(Command::PublishBatch { events }) => {
            let mut batch = ValidatedBatch::new(events, "fuzz");
            batch.take_valid().into_iter().for_each(check);
            let _ = batch.merge(Vec::new());
        }
        Ok(Command::Subscribe { request }) => {
            let Ok(spec) = SubscriptionSpec::from_request(request) else {
                return;
            };
            let _ = spec.matcher.topic_prefixes();
            for event in SAMPLES.iter() {
                let _ = spec.matcher.matches(event);
                if let Some(c) = &spec.coalesce {
                    let _ = c.key_of(event);
                }
            }
        }
        _ => {}
    }
}
