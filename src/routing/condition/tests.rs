//! Table tests of compiling and evaluating conditions.

use super::*;
use serde_json::json;

fn eval(condition: &str, event: serde_json::Value) -> Result<bool, EvalError> {
    let c = Condition::compile(condition).unwrap();
    let e = Event::from_json(event, "svc").unwrap();
    c.evaluate(&MatchInput::new(&e))
}

#[test]
fn protocol_example() {
    let c = r#"priority == "critical" || (topic.startsWith("cost.") && payload.total_cost > 5.0)"#;
    let cost = |v: serde_json::Value| json!({"topic": "cost.update", "payload": {"total_cost": v}});
    assert_eq!(eval(c, cost(json!(7.5))), Ok(true));
    assert_eq!(eval(c, cost(json!(7))), Ok(true), "int against double");
    assert_eq!(eval(c, cost(json!(2.0))), Ok(false));
    assert_eq!(
        eval(c, json!({"topic": "task.x", "priority": "critical"})),
        Ok(true)
    );
    // Missing field: an error, which the router treats as no match.
    assert!(eval(c, json!({"topic": "cost.update"})).is_err());
}

#[test]
fn variables_lists_strings_and_in() {
    let ev = json!({
        "type": "task_created", "source": "planner", "agent_id": "a-7",
        "payload": {"tags": ["gpu", "urgent"], "meta": {"region": "eu-west", "n": 3}}
    });
    let table = [
        (r#"event.type == "task_created""#, true),
        (r#"topic == "task.created""#, true),
        (r#""gpu" in payload.tags"#, true),
        (r#""cpu" in payload.tags"#, false),
        (r#"source in ["planner", "executor"]"#, true),
        (r#"payload.meta.region.startsWith("eu-")"#, true),
        (
            r#"payload.meta.region.endsWith("west") && payload.meta.n == 3"#,
            true,
        ),
        (r#"agent_id.matches("^a-[0-9]+$")"#, true),
        (r#"payload.tags.exists(t, t == "urgent")"#, true),
        (r#"size(payload.tags) == 2"#, true),
        (r#"source.upperAscii() == "PLANNER""#, true),
        (r#"has(payload.meta.region) && !has(payload.missing)"#, true),
        (r#"target == null && event.correlation_id == null"#, true),
        (r#"target == "x""#, false),
        (r#"payload.meta.n > 2u"#, true),
    ];
    for (cond, want) in table {
        assert_eq!(eval(cond, ev.clone()), Ok(want), "{cond}");
    }
}

#[test]
fn a_loop_inside_a_loop_is_refused_and_loops_in_sequence_are_not() {
    let ev = json!({"type": "t", "payload": {"a": [1, 2, 3], "b": [[1], [2, 3]]}});
    for cond in [
        "payload.a.all(x, payload.a.exists(y, y == x))",
        "payload.a.exists(x, payload.a.filter(y, y > x).size() > 0)",
        "payload.b.all(l, l.map(v, v * 2).size() > 0)",
        "payload.a.exists_one(x, [1, 2].exists(y, y == x))",
    ] {
        let err = Condition::compile(cond).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCondition, "{cond}");
        assert!(
            err.message.contains("loop inside a loop"),
            "{cond}: {err:?}"
        );
    }
    for (cond, want) in [
        ("payload.a.filter(x, x > 1).all(y, y > 1)", true),
        ("payload.a.map(x, x * 2).exists(y, y == 6)", true),
        (
            "payload.a.exists(x, x == 2) && payload.b.all(l, size(l) > 0)",
            true,
        ),
        ("payload.a.all(x, x in [1, 2, 3])", true),
        ("payload.b.exists(l, 3 in l)", true),
    ] {
        assert_eq!(eval(cond, ev.clone()), Ok(want), "{cond}");
    }
}

#[test]
fn runtime_errors_are_reported_not_panics() {
    let ev = json!({"type": "a", "payload": {"n": "three"}});
    for cond in [
        "payload.n > 2",
        "nosuchvariable == 'x'",
        "payload.nested.deeper == 1",
        "1 / 0 == 1",
        "payload.n",
    ] {
        assert!(eval(cond, ev.clone()).is_err(), "{cond}");
    }
}

#[test]
fn bad_expressions_give_position() {
    for (cond, fragment) in [
        ("priority ==", "line 1, column"),
        ("topic.startsWith(\"a\"", "line 1, column"),
        ("", "empty"),
    ] {
        let err = Condition::compile(cond).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCondition);
        assert!(err.message.contains(fragment), "{cond}: {}", err.message);
    }
    let long = "a == 1 || ".repeat(500) + "true";
    assert_eq!(
        Condition::compile(&long).unwrap_err().code,
        ErrorCode::InvalidCondition
    );
}

/// Without the depth limits, each of these would overflow the stack of a 2 MiB
/// thread (this test's, an HTTP worker's or the router's) in a debug build and
/// abort the process. The first came from `fuzz/` (target `subscription`), the
/// others from `tests/hostile.rs`.
#[test]
fn deep_expressions_are_refused_not_a_stack_overflow() {
    let nested = |open: &str, inner: &str, close: &str, n: usize| {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    };
    for deep in [
        r#"pa[l#[[[[[[[[[[[[[[[[[[.exi4"#.to_owned(),
        nested("size(", "[1]", ")", 40),
        nested("(", "true", ")", 500),
        nested("[1].map(x, ", "[1]", ")", 12),
        nested("{1: ", "1", "}", 40),
        "1 + ".repeat(1000) + "1 == 0",
        "payload.a".to_owned() + &" + payload.a".repeat(300) + " > 0",
    ] {
        let err = Condition::compile(&deep).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCondition, "{deep}");
    }
    // Up to the limit, a condition compiles and evaluates on this thread.
    let e = Event::from_json(json!({"type": "a", "topic": "t7"}), "svc").unwrap();
    let at_limit = "1 + ".repeat(MAX_DEPTH - 3) + "1 > 0";
    let c = Condition::compile(&at_limit).unwrap();
    assert_eq!(c.evaluate(&MatchInput::new(&e)), Ok(true));
    // `||` chains are balanced: 200 alternatives are well within the depth limit.
    let ors: Vec<String> = (0..200).map(|i| format!("topic == 't{i}'")).collect();
    let c = Condition::compile(&ors.join(" || ")).unwrap();
    assert_eq!(c.evaluate(&MatchInput::new(&e)), Ok(true));
    assert!(c.topic_prefixes().is_some());
}

#[test]
fn topic_prefixes_from_the_expression() {
    let p = |c: &str| {
        Condition::compile(c)
            .unwrap()
            .topic_prefixes()
            .map(|v| v.into_iter().map(|s| s.join(".")).collect::<Vec<_>>())
    };
    let some = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        p(r#"topic.startsWith("cost.") && payload.x > 1"#),
        some(&["cost"])
    );
    assert_eq!(
        p(r#"payload.x > 1 && event.topic == "task.created""#),
        some(&["task.created"])
    );
    assert_eq!(p(r#"topic.startsWith("agent.a7.st")"#), some(&["agent.a7"]));
    assert_eq!(
        p(r#"topic in ["a.b", "c"] || topic.startsWith("d.")"#),
        some(&["a.b", "c", "d"])
    );
    assert_eq!(p(r#""x.y" == topic"#), some(&["x.y"]));
    assert_eq!(
        p(r#"payload.x > 1 && source == "s" && topic.startsWith("t.")"#),
        some(&["t"])
    );
    assert_eq!(p(r#"topic.startsWith("cost")"#), None);
    assert_eq!(
        p(r#"priority == "critical" || (topic.startsWith("cost.") && payload.total_cost > 5.0)"#),
        None
    );
    assert_eq!(p(r#"!topic.startsWith("cost.")"#), None);
    assert_eq!(p(r#"source == "x""#), None);
}

#[test]
fn input_is_built_once_and_shared() {
    let e = Event::from_json(json!({"type": "a", "payload": {"x": 1}}), "svc").unwrap();
    let input = MatchInput::new(&e);
    let a = Condition::compile("payload.x == 1").unwrap();
    let b = Condition::compile("payload.x == 2").unwrap();
    assert_eq!(a.evaluate(&input), Ok(true));
    assert_eq!(b.evaluate(&input), Ok(false));
    let cel = input.cel.borrow();
    let seen: Vec<&str> = cel.as_ref().unwrap().seen.iter().map(|n| &**n).collect();
    assert_eq!(
        seen,
        ["payload"],
        "only what the conditions read is converted"
    );
}

/// Binding only the variables a condition reads changes no result: every field,
/// `event`, comprehension variables and unknown names behave as when every field
/// was bound up front.
#[test]
fn variables_are_bound_on_demand_with_the_same_results() {
    let e = Event::from_json(
        json!({"type": "task_created", "priority": "high", "agent_id": "a1",
               "payload": {"tags": ["x", "y"], "n": 2}, "metadata": {"team": "t"}}),
        "svc",
    )
    .unwrap();
    let input = MatchInput::new(&e);
    for (condition, expected) in [
        (
            r#"event.type == "task_created" && event.payload.n == 2"#,
            Ok(true),
        ),
        (r#"topic == "task.created" && source == "svc""#, Ok(true)),
        (
            r#"priority == "high" && agent_id == "a1" && target == null"#,
            Ok(true),
        ),
        (
            r#"payload.tags.exists(t, t == "y") && metadata.team == "t""#,
            Ok(true),
        ),
        (r#"has(payload.missing)"#, Ok(false)),
        (r#"event.cursor == cursor && event.id == id"#, Ok(true)),
    ] {
        let c = Condition::compile(condition).unwrap();
        assert_eq!(c.evaluate(&input), expected, "{condition}");
    }
    let unknown = Condition::compile("nosuchfield == 1").unwrap();
    assert!(matches!(
        unknown.evaluate(&input),
        Err(EvalError::Execution(_))
    ));
}

/// A literal `matches` pattern is compiled with the condition, never per evaluation; a
/// bad one is refused at subscribe time; a computed one still works.
#[test]
fn literal_regexes_are_compiled_once() {
    let compiles = || regexes::RUNTIME_COMPILES.get();
    let c =
        Condition::compile(r#"agent_id.matches("^a-[0-9]+$") || matches(source, "^x")"#).unwrap();
    let before = compiles();
    for i in 0..100 {
        let e = Event::from_json(json!({"topic": "t", "agent_id": format!("a-{i}")}), "s").unwrap();
        assert_eq!(c.evaluate(&MatchInput::new(&e)), Ok(true));
    }
    let e = Event::from_json(json!({"topic": "t", "agent_id": "b"}), "xs").unwrap();
    assert_eq!(c.evaluate(&MatchInput::new(&e)), Ok(true));
    assert_eq!(compiles(), before, "101 evaluations compiled no regex");

    let computed = Condition::compile(r#"topic.matches(source)"#).unwrap();
    let e = Event::from_json(json!({"topic": "abc"}), "^a").unwrap();
    assert_eq!(computed.evaluate(&MatchInput::new(&e)), Ok(true));
    assert_eq!(compiles(), before + 1);

    for bad in [
        r#"topic.matches("(")"#,
        r#"topic.matches("(a{1000}){1000}")"#,
    ] {
        let err = Condition::compile(bad).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCondition, "{bad}");
    }
}

/// A condition with a loop is evaluated only while the lists and maps it reads stay
/// within the limit; one without a loop is not bounded by it.
#[test]
fn loops_are_bounded_by_the_size_of_their_input() {
    let looping = Condition::compile("payload.items.exists(x, x < 0)").unwrap();
    let plain = Condition::compile("size(payload.items) > 0").unwrap();
    let event = |n: i64| {
        let items: Vec<i64> = (0..n).map(|i| if i == n - 1 { -1 } else { i }).collect();
        Event::from_json(json!({"topic": "t", "payload": {"items": items}}), "s").unwrap()
    };
    let table = [
        // (items, limit, looping, plain)
        (3, 3, Ok(true), Ok(true)),
        (
            4,
            3,
            Err(EvalError::TooLarge { items: 4, max: 3 }),
            Ok(true),
        ),
        (
            20_000,
            DEFAULT_MAX_LOOP_ITEMS,
            Err(EvalError::TooLarge {
                items: 20_000,
                max: 10_000,
            }),
            Ok(true),
        ),
        (10_000, DEFAULT_MAX_LOOP_ITEMS, Ok(true), Ok(true)),
    ];
    for (n, max, want_loop, want_plain) in table {
        let e = event(n);
        let input = MatchInput::new(&e).with_max_loop_items(max);
        assert_eq!(
            looping.evaluate(&input),
            want_loop,
            "{n} items, limit {max}"
        );
        assert_eq!(plain.evaluate(&input), want_plain, "{n} items, limit {max}");
    }
}
