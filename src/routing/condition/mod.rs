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
//! available; a string function whose result would be longer than
//! [`MAX_CONDITION_STRING_BYTES`] is an evaluation error, and a condition may write at
//! most [`MAX_ADDITIONS`] `+` (see the `strings` module).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

mod analysis;
mod regexes;
mod strings;

use analysis::{additions, depth_exceeds, has_loop, has_nested_loop, topic_prefixes};
pub use regexes::REGEX_SIZE_LIMIT;
pub use strings::MAX_CONDITION_STRING_BYTES;

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
/// The default of `limits.max_condition_loop_items`: the most elements a list or map
/// may have for a condition with a loop (`all`, `exists`, `exists_one`, `map`,
/// `filter`) to be evaluated on its event.
pub const DEFAULT_MAX_LOOP_ITEMS: usize = 10_000;
/// Most `+` a condition may write. String `+` is the interpreter's own and cannot be
/// bounded as the string functions are ([`MAX_CONDITION_STRING_BYTES`]); its result is
/// the sum of its operands, so with this many a condition builds at most 33 times the
/// largest string it reads or makes (the operands of a balanced tree of 32 `+`; a chain is
/// also held to [`MAX_DEPTH`]).
pub const MAX_ADDITIONS: usize = 32;

/// The one CEL environment: standard library plus the strings extension (ours, whose
/// results are bounded). Programs are
/// compiled against it and every evaluation context shares it.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    if let Err(e) = env.add_extension(strings::register) {
        log::error!("CEL strings extension not loaded: {e}");
    }
    if let Err(e) = regexes::register(&mut env) {
        log::error!("CEL `matches` not registered: {e}");
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
    /// Its literal `matches` patterns, compiled once.
    literals: regexes::Literals,
    /// It has a loop, whose cost grows with the lists it reads.
    loops: bool,
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
    /// Not evaluated: it loops, and the event has a list or map longer than
    /// `limits.max_condition_loop_items` (the loop would hold up the router).
    #[error("not evaluated: the condition loops and the event has {items} elements in one list or map (more than limits.max_condition_loop_items = {max})")]
    TooLarge { items: usize, max: usize },
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
        let literals = regexes::compile_literals(program.expression()).map_err(invalid)?;
        let loops = has_loop(program.expression());
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
            literals,
            loops,
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
        // A loop walks every element of what it reads: bounded by the input, since it
        // cannot be stopped once it runs (loops in loops are refused at compile time).
        if self.loops && cel.largest > input.max_loop_items {
            return Err(EvalError::TooLarge {
                items: cel.largest,
                max: input.max_loop_items,
            });
        }
        match regexes::with_literals(&self.literals, || self.program.execute(&cel.context)) {
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
    /// `limits.max_condition_loop_items`.
    max_loop_items: usize,
    cel: RefCell<Option<CelInput>>,
}

impl<'a> MatchInput<'a> {
    pub fn new(event: &'a Event) -> Self {
        MatchInput {
            event,
            max_loop_items: DEFAULT_MAX_LOOP_ITEMS,
            cel: RefCell::new(None),
        }
    }

    /// Conditions with a loop are evaluated only if no list or map they read has more
    /// than `max` elements.
    pub fn with_max_loop_items(mut self, max: usize) -> Self {
        self.max_loop_items = max;
        self
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
    /// Elements of the longest list or map in the variables bound so far.
    largest: usize,
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
            largest: 0,
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
        let largest = &mut self.largest;
        let value = if name == "event" {
            *largest = (*largest).max(self.envelope.len());
            let fields = self
                .envelope
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v, largest)))
                .collect::<HashMap<_, _>>();
            Value::Map(Map {
                map: Arc::new(fields),
            })
        } else if let Some(field) = self.envelope.get(name) {
            json_to_cel(field, largest)
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
    if additions(program.expression()) > MAX_ADDITIONS {
        return Err(format!(
            "the condition has more than {MAX_ADDITIONS} `+`: conditions run on every \
             event, and each `+` of strings copies both"
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
/// `largest` grows to the element count of the longest list or map met.
fn json_to_cel(value: &serde_json::Value, largest: &mut usize) -> Value {
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
        J::Array(items) => {
            *largest = (*largest).max(items.len());
            Value::List(Arc::new(
                items.iter().map(|v| json_to_cel(v, largest)).collect(),
            ))
        }
        J::Object(fields) => {
            *largest = (*largest).max(fields.len());
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v, largest)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests;
