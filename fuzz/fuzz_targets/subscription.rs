//! The `subscription` object of a `subscribe` command: `SubscriptionSpec::from_json`
//! (which compiles patterns, the filter, the CEL condition and the coalesce spec),
//! then the compiled matcher, its index prefixes and the coalesce key on sample events.
//! Runs on a small stack, so that deep recursion shows up as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::routing::SubscriptionSpec;
use switchyard_fuzz::{on_small_stack, SAMPLES};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    on_small_stack(move || {
        let Ok(spec) = SubscriptionSpec::from_json(value) else {
            return;
        };
        let _ = spec.matcher.topic_prefixes();
        for event in SAMPLES.iter() {
            let _ = spec.matcher.matches(event);
            if let Some(c) = &spec.coalesce {
                let _ = c.key_of(event);
            }
        }
    });
});
