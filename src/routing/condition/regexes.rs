//! `matches` with regexes compiled once per condition, not once per call.
//!
//! The `cel` crate's own `matches` compiles its pattern on every call: a condition like
//! `agent_id.matches("^a-[0-9]+$")` compiled a regex per event, on the router thread.
//! Here a condition's literal patterns are compiled with the condition (a bad one is
//! `invalid_condition` at subscribe time), and the `matches` this environment
//! registers looks them up in the condition being evaluated ([`with_literals`]). A
//! pattern computed at run time is still compiled per call, bounded by
//! [`REGEX_SIZE_LIMIT`].
//!
//! Owns: finding, compiling and looking up a condition's literal patterns.

use std::cell::RefCell;
use std::sync::Arc;

use cel::common::ast::Expr;
use cel::common::types::{CelBool, CelString};
use cel::{Env, ExecutionError, IdedExpr};
use regex::{Regex, RegexBuilder};

use super::analysis::{children, string_literal};

/// Largest compiled form of one regex, in bytes (the `regex` crate's `size_limit`): a
/// pattern written to blow up (`(a{100}){100}`) is refused, not built.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A condition's literal patterns, compiled.
pub(super) type Literals = Arc<[(Box<str>, Regex)]>;

thread_local! {
    /// The literal patterns of the condition evaluating on this thread.
    static ACTIVE: RefCell<Option<Literals>> = const { RefCell::new(None) };
}

/// Compiles every literal pattern of a `matches` call under `root`; `Err` is the
/// message of `invalid_condition`.
pub(super) fn compile_literals(root: &IdedExpr) -> Result<Literals, String> {
    let mut compiled: Vec<(Box<str>, Regex)> = Vec::new();
    let mut stack = vec![root];
    while let Some(expr) = stack.pop() {
        if let Expr::Call(call) = &expr.expr {
            // `s.matches(re)` or `matches(s, re)`.
            let pattern = match (call.target.as_deref(), call.args.as_slice()) {
                (Some(_), [re]) | (None, [_, re]) if call.func_name == "matches" => {
                    string_literal(re)
                }
                _ => None,
            };
            if let Some(p) = pattern.filter(|p| !compiled.iter().any(|(q, _)| &**q == *p)) {
                let regex = compile(p).map_err(|e| format!("invalid condition: {e}"))?;
                compiled.push((p.into(), regex));
            }
        }
        stack.extend(children(expr).into_iter().map(|(child, _)| child));
    }
    Ok(compiled.into())
}

fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("`{pattern}` is not a usable regex: {e}"))
}

/// Runs `f` (an evaluation) with `literals` as the patterns `matches` finds compiled.
pub(super) fn with_literals<T>(literals: &Literals, f: impl FnOnce() -> T) -> T {
    let previous = ACTIVE.with(|a| a.replace(Some(literals.clone())));
    let result = f();
    ACTIVE.with(|a| *a.borrow_mut() = previous);
    result
}

#[cfg(test)]
thread_local! {
    /// Patterns compiled at evaluation (not literals) on this thread, for the tests.
    pub(super) static RUNTIME_COMPILES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn matches(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let pattern = re.inner();
    let literal = ACTIVE.with(|a| {
        a.borrow().as_ref().and_then(|lits| {
            lits.iter()
                .find(|(p, _)| &**p == pattern)
                .map(|(_, r)| r.is_match(this.inner()))
        })
    });
    let found = match literal {
        Some(found) => found,
        None => {
            #[cfg(test)]
            RUNTIME_COMPILES.set(RUNTIME_COMPILES.get() + 1);
            compile(pattern)
                .map_err(|message| ExecutionError::FunctionError {
                    function: "matches".into(),
                    message,
                })?
                .is_match(this.inner())
        }
    };
    Ok(CelBool::from(found))
}

/// Registers `matches` as a function and as a method of strings, as the standard
/// library does with the `cel` crate's `regex` feature (which is off).
pub(super) fn register(env: &mut Env) -> Result<(), cel::DeclarationError> {
    cel::add_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>, id = "matches")?;
    cel::add_member_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>)?;
    Ok(())
}
