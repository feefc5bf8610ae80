//! Table tests of the bounded string functions.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{replaced_len, MAX_CONDITION_STRING_BYTES};
use crate::protocol::Event;
use crate::routing::condition::{Condition, EvalError, MatchInput, MAX_ADDITIONS};

fn eval(condition: &str, payload: serde_json::Value) -> Result<bool, EvalError> {
    let c = Condition::compile(condition).unwrap();
    let e = Event::from_json(json!({"type": "t", "payload": payload}), "svc").unwrap();
    c.evaluate(&MatchInput::new(&e))
}

fn over_the_bound(result: Result<bool, EvalError>) -> bool {
    matches!(result, Err(EvalError::Execution(m)) if m.contains("longer than 1048576 bytes"))
}

#[test]
fn replaced_len_counts_before_building() {
    let table: [(&str, &str, &str, Option<usize>); 9] = [
        ("hello", "l", "LL", None),
        ("hello", "l", "", None),
        ("hello", "", "-", None),
        ("héllo", "", "-", None),
        ("", "", "abc", None),
        ("aaaa", "aa", "b", None),
        ("hello", "l", "LL", Some(1)),
        ("hello", "", "-", Some(2)),
        ("hello", "", "-", Some(0)),
    ];
    for (this, from, to, n) in table {
        let built = match n {
            Some(n) => this.replacen(from, to, n),
            None => this.replace(from, to),
        };
        assert_eq!(
            replaced_len(this, from, to, n),
            Some(built.len()),
            "{this:?}.replace({from:?}, {to:?}, {n:?})"
        );
    }
}

#[test]
fn the_functions_still_work_within_the_bound() {
    let table = [
        (r#"payload.s.replace("b", "xx") == "axxc""#, true),
        (r#"payload.s.replace("", "-") == "-a-b-c-""#, true),
        (r#"payload.s.replace("", "-", 2) == "-a-bc""#, true),
        (r#"payload.s.replace("b", "x", -1) == "axc""#, true),
        (r#"["a", "b"].join("-") == "a-b""#, true),
        (r#"[payload.s, payload.s].join() == "abcabc""#, true),
        (r#""%s=%d".format([payload.s, 3]) == "abc=3""#, true),
        (r#""%.2f".format([1.5]) == "1.50""#, true),
        (r#"strings.quote(payload.q) == "\"a\\\"b\"""#, true),
        (
            r#"payload.s.upperAscii().lowerAscii().reverse() == "cba""#,
            true,
        ),
        (r#"payload.s.split("b") == ["a", "c"]"#, true),
        (
            r#"payload.s.charAt(1) == "b" && payload.s.indexOf("c") == 2"#,
            true,
        ),
        (
            r#"payload.s.substring(1, 2) == "b" && " x ".trim() == "x""#,
            true,
        ),
    ];
    for (condition, expected) in table {
        let got = eval(condition, json!({"s": "abc", "q": "a\"b"}));
        assert_eq!(got, Ok(expected), "{condition}");
    }
    assert!(eval(r#""%.101f".format([1.0]) == """#, json!({})).is_err());
}

#[test]
fn a_huge_replace_errors_without_building_it() {
    // 1 MiB with 4000 bytes inserted at each of its boundaries: about 4 GB if built.
    let s = "a".repeat(1 << 20);
    let long = "x".repeat(4000);
    let started = Instant::now();
    let got = eval(
        &format!(r#"payload.s.replace("", "{long}").size() > 0"#),
        json!({ "s": s }),
    );
    assert!(over_the_bound(got.clone()), "{got:?}");
    // Not a speed assertion: building 4 GB would take far longer or fail outright.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn every_growing_function_is_bounded() {
    let half = "\\".repeat(MAX_CONDITION_STRING_BYTES / 2);
    let table = [
        // One step over the bound, or more.
        r#"payload.h.replace("\\", "\\\\\\").size() > 0"#,
        r#"(payload.h + payload.h).replace("\\", "yy").size() > 0"#,
        r#"[payload.h, payload.h, "x"].join().size() > 0"#,
        r#"[payload.h, payload.h].join("-").size() > 0"#,
        r#""%s%s%s".format([payload.h, payload.h, "x"]).size() > 0"#,
        r#"strings.quote(payload.h).size() > 0"#,
        // Exponential growth stops at the first step over the bound.
        r#"strings.quote(strings.quote(strings.quote(payload.s))).size() > 0"#,
        r#"payload.a.replace("a", "aa").replace("a", "aa").replace("a", "aa").size() > 0"#,
    ];
    for condition in table {
        let got = eval(
            condition,
            json!({
                "h": half,
                "s": "\\".repeat(MAX_CONDITION_STRING_BYTES / 4 + 1),
                "a": "a".repeat(MAX_CONDITION_STRING_BYTES / 4 + 1),
            }),
        );
        assert!(over_the_bound(got.clone()), "{condition}: {got:?}");
    }
    // Exactly at the bound is fine.
    let at = eval(
        r#"[payload.h, payload.h].join().size() == 1048576"#,
        json!({ "h": half }),
    );
    assert_eq!(at, Ok(true));
}

#[test]
fn additions_are_counted_at_compile_time() {
    let sum = |n: usize| vec!["payload.s"; n + 1].join(" + ");
    // Balanced by brackets to stay within the depth limit.
    let balanced = |n: usize| format!("({}) + ({}) == \"\"", sum(n / 2 - 1), sum(n / 2 - 1));
    assert!(Condition::compile(&balanced(MAX_ADDITIONS)).is_ok());
    let err = Condition::compile(&balanced(MAX_ADDITIONS + 2)).unwrap_err();
    assert!(err.message.contains("more than 32 `+`"), "{}", err.message);
    // The loops' own accumulating `+` are not the client's.
    let loops = r#"payload.l.map(x, x + 1).filter(x, x > 1).size() == 1 && payload.l.exists_one(x, x == 1)"#;
    assert_eq!(eval(loops, json!({"l": [1]})), Ok(true));
}
