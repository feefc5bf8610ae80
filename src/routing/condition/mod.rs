//! CEL conditions of `conditional` subscriptions (docs/protocol.md section 4.4).
//!
//! Owns: compiling a condition once at subscribe time ([`Condition::compile`], a bad
//! expression answers `invalid_condition` with its line and column), and the
//! evaluation input built once per event and shared by every subscription that
//! reaches a condition ([`MatchInput`]).
//!
//! Both the CEL parser and its evaluator recurse once per level of the expression
//! tree, with large frames (largest in the parser of a debug build). So a condition is
//! parsed on a thread of its own with a large stack ([`COMPILE_STACK`]), and one whose
//! tree is deeper than [`MAX_DEPTH`] is refused: evaluation then fits the router
//! thread's stack whatever the client wrote.
//! Must not: decide which subscriptions are tested against an event (the index and
//! the router do) or count anything itself beyond the errors it reports.
//!
//! Each top-level field of the delivered envelope is a variable (`topic`, `priority`,
//! `payload`, ...) and the whole envelope is `event` (`event.type`, as `type` is a CEL
//! built-in). Optional fields an event does not carry are `null`, as in the envelope
//! (`target == null`). A missing key inside `payload` or `metadata` is an evaluation
//! error, which means "no match"; `has(payload.x)` tests for it. JSON numbers become
//! CEL `int` when they are integers that fit, `uint` above that, `double` otherwise,
//! so `payload.count == 3` and `payload.cost > 5.0` both read naturally. The standard
//! library and the `strings` extension (`lowerAscii`, `split`, `replace`, ...) are
//! available.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

mod analysis;

use analysis::{depth_exceeds, has_nested_loop, topic_prefixes};

use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::Event;

/// Longest accepted condition, in bytes.
pub const MAX_CONDITION_LEN: usize = 4096;
/// Deepest accepted expression tree. `&&` and `||` chains are balanced by the parser
/// (64 terms are 7 levels); `1 + 1 + ...` and nested calls, lists and comprehensions
/// are one level per step. A tree this deep evaluates well within a thread's default
/// stack, even in a debug build.
pub const MAX_DEPTH: usize = 24;
/// Stack of the thread a condition is parsed on: the parser's own nesting limit (96
/// brackets) times its frames in a debug build, with room to spare.
pub const COMPILE_STACK: usize = 32 << 20;

/// The one CEL environment: standard library plus the strings extension. Programs are
/// compiled against it and every evaluation context shares it.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    if let Err(e) = env.add_extension(cel::extensions::strings) {
        log::error!("CEL strings extension not loaded: {e}");
    }
    Arc::new(env)
});

/// A compiled condition. Cheap to clone (the program is shared).
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    program: Arc<Program>,
    /// The identifiers the expression reads: only these are converted to CEL values
    /// for an event.
    variables: Arc<[Box<str>]>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// Why a condition could not be evaluated on an event. The event does not match.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Execution(String),
    #[error("the condition gave {0}, not a bool")]
    NotBool(String),
}

impl Condition {
    /// Compiles `source`, or answers `invalid_condition` with the position (line and
    /// column, from 1) and what the parser expected there.
    pub fn compile(source: &str) -> Result<Condition, ProtocolError> {
        let invalid = |msg: String| ProtocolError::new(ErrorCode::InvalidCondition, msg);
        if source.trim().is_empty() {
            return Err(invalid("`condition` is empty".into()));
        }
        if source.len() > MAX_CONDITION_LEN {
            return Err(invalid(format!(
                "`condition` is longer than {MAX_CONDITION_LEN} bytes"
            )));
        }
        let owned = source.to_owned();
        let program = std::thread::Builder::new()
            .name("cel-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn(move || compile_bounded(&owned))
            .map_err(|e| {
                ProtocolError::new(
                    ErrorCode::Internal,
                    format!("cannot start compiling the condition: {e}"),
                )
            })?
            .join()
            .map_err(|_| ProtocolError::new(ErrorCode::Internal, "the condition compiler failed"))?
            .map_err(invalid)?;
        // The tree is at most MAX_DEPTH deep, so walking it here is cheap and safe.
        let variables = program
            .references()
            .variables()
            .into_iter()
            .map(Box::from)
            .collect();
        Ok(Condition {
            source: source.into(),
            program: Arc::new(program),
            variables,
        })
    }

    /// The expression as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Literal topic prefixes one of which every topic the condition can accept
    /// starts with, read off its expression: `topic.startsWith("cost.")`,
    /// `topic == "a.b"` and `topic in [...]`, through `&&` (either side constrains)
    /// and `||` (both sides must). `None` when it places no such constraint.
    pub fn topic_prefixes(&self) -> Option<Vec<Vec<String>>> {
        topic_prefixes(self.program.expression())
    }

    /// Evaluates the condition on the event of `input`.
    pub fn evaluate(&self, input: &MatchInput<'_>) -> Result<bool, EvalError> {
        let mut cel = input.cel.borrow_mut();
        let cel = cel.get_or_insert_with(|| CelInput::new(input.event));
        for name in self.variables.iter() {
            cel.bind(name);
        }
        match self.program.execute(&cel.context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::NotBool(format!("{:?}", other.type_of()))),
            Err(e) => Err(EvalError::Execution(e.to_string())),
        }
    }
}

/// One event, as every matcher sees it: built once per event and shared by every
/// subscription tested against it. The CEL side is built only when a condition first
/// needs it, and then only the variables the conditions read.
pub struct MatchInput<'a> {
    pub event: &'a Event,
    cel: RefCell<Option<CelInput>>,
}

impl<'a> MatchInput<'a> {
    pub fn new(event: &'a Event) -> Self {
        MatchInput {
            event,
            cel: RefCell::new(None),
        }
    }
}

/// An event's envelope and the CEL context its conditions run in. Converting a JSON
/// value to CEL copies it (and the context converts it once more into its own
/// representation), so a field becomes a variable only when a condition reads it;
/// `event`, the whole envelope, only when one reads that.
struct CelInput {
    /// The envelope exactly as delivered: every defaulted field filled in.
    envelope: serde_json::Map<String, serde_json::Value>,
    context: Context<'static, 'static>,
    /// Names already looked at (bound, or not a field of the envelope).
    seen: Vec<Box<str>>,
}

impl CelInput {
    fn new(event: &Event) -> CelInput {
        let envelope = match serde_json::to_value(event) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        CelInput {
            envelope,
            context: Context::with_env(ENV.clone()),
            seen: Vec::new(),
        }
    }

    /// Makes `name` a variable if it is a field of the envelope or `event`. Other
    /// names (comprehension variables, or a field no event has) stay unbound: reading
    /// one is an evaluation error, as it always was.
    fn bind(&mut self, name: &str) {
        if self.seen.iter().any(|n| &**n == name) {
            return;
        }
        self.seen.push(name.into());
        let value = if name == "event" {
            let fields = self
                .envelope
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect::<HashMap<_, _>>();
            Value::Map(Map {
                map: Arc::new(fields),
            })
        } else if let Some(field) = self.envelope.get(name) {
            json_to_cel(field)
        } else {
            return;
        };
        self.context.add_variable_from_value(name, value);
    }
}

/// Parses `source` and checks its depth; runs on the [`COMPILE_STACK`] thread, where a
/// too-deep tree is also dropped. `Err` is the message of `invalid_condition`.
fn compile_bounded(source: &str) -> Result<Program, String> {
    let program = ENV.compile(source).map_err(|errors| {
        let detail = match errors.errors.first() {
            Some(e) => format!("line {}, column {}: {}", e.pos.0, e.pos.1 + 1, e.msg.trim()),
            None => "the expression could not be parsed".to_owned(),
        };
        format!("invalid condition at {detail}")
    })?;
    if depth_exceeds(program.expression(), MAX_DEPTH) {
        return Err(format!(
            "the condition is nested more than {MAX_DEPTH} levels deep; \
             use `in [...]` rather than long chains of `==`, or fewer nested calls"
        ));
    }
    if has_nested_loop(program.expression()) {
        return Err(
            "a condition cannot loop inside a loop: `all`, `exists`, `exists_one`, \
             `map` and `filter` may not appear in the predicate of another (conditions run \
             on every event, and a loop in a loop over a large payload list would take \
             its square)"
                .to_owned(),
        );
    }
    Ok(program)
}

/// JSON to CEL: integers that fit become `int`, larger ones `uint`, others `double`.
fn json_to_cel(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        J::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(condition: &str, event: serde_json::Value) -> Result<bool, EvalError> {
        let c = Condition::compile(condition).unwrap();
        let e = Event::from_json(event, "svc").unwrap();
        c.evaluate(&MatchInput::new(&e))
    }

    #[test]
    fn protocol_example() {
        let c =
            r#"priority == "critical" || (topic.startsWith("cost.") && payload.total_cost > 5.0)"#;
        let cost =
            |v: serde_json::Value| json!({"topic": "cost.update", "payload": {"total_cost": v}});
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
            p(
                r#"priority == "critical" || (topic.startsWith("cost.") && payload.total_cost > 5.0)"#
            ),
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
}
