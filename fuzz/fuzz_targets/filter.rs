//! The `filter` object of a subscription: parsing, compiling, and matching it against
//! sample events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::routing::filter::Filter;
use switchyard_fuzz::SAMPLES;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok((_, filter)) = Filter::from_json(value) else {
        return;
    };
    for event in SAMPLES.iter() {
        let _ = filter.matches(event);
    }
});
