//! CEL conditions on fuzzed events: a few fixed conditions, compiled once, that reach
//! into every part of an event (envelope fields, payload lists and maps, strings,
//! numbers, regexes), evaluated on whatever event a client can publish. An
//! evaluation may fail (`condition_errors`); it must never panic or overflow the
//! router's stack.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use switchyard::protocol::Event;
use switchyard::routing::condition::{Condition, MatchInput};
use switchyard_fuzz::on_small_stack;

static CONDITIONS: LazyLock<Vec<Condition>> = LazyLock::new(|| {
    [
        r#"topic.startsWith("task.") && priority == "high""#,
        r#"payload.n > 3 || payload.total_cost >= 1.5"#,
        r#"payload.tags.exists(t, t == "urgent")"#,
        r#"payload.items.all(i, i.qty * 2 < 100)"#,
        r#"size(payload.items) > 2 && payload.items[0].name.matches("^a.*z$")"#,
        r#"source.matches("(a|b)+c") || has(payload.k.v)"#,
        r#"metadata.retries + 1 > 2 && string(payload.n) == "3""#,
        r#"payload.items.map(i, i.qty).filter(q, q > 1).size() > 0"#,
        r#"int(payload.n) / int(payload.d) == 2 && double(payload.x) < 1e300"#,
        r#""x" in payload && payload.x in ["a", "b"] && agent_id != null"#,
    ]
    .iter()
    .map(|c| Condition::compile(c).unwrap_or_else(|e| panic!("{c}: {}", e.message)))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = RawValue::from_string(text.to_owned()) else {
        return;
    };
    LazyLock::force(&CONDITIONS);
    on_small_stack(move || {
        let Ok(event) = Event::from_raw(&raw, "fuzz") else {
            return;
        };
        let input = MatchInput::new(&event);
        for condition in CONDITIONS.iter() {
            let _ = condition.evaluate(&input);
        }
    });
});
