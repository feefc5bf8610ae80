//! The `strings` extension, with every function that can grow a string bounded.
//!
//! The `cel` crate's `strings` extension builds its results without a limit: on a
//! 1 MiB payload string, `s.replace("", t)` with a 4000-byte `t` allocates about 4 GB,
//! and `strings.quote` or `format` nested in themselves double their input at each
//! level. A condition runs on the router thread for every event, so a subscriber could
//! exhaust the server's memory with one. This module registers the same functions
//! under the same names and signatures, but `replace`, `join`, `format` and
//! `strings.quote` work out the size of their result before building it, and answer
//! an evaluation error (the event does not match) when it is over
//! [`MAX_CONDITION_STRING_BYTES`]. The other functions never return more than they
//! are given and are the crate's own, copied (they are private to it).
//!
//! String `+` is evaluated by the interpreter itself and cannot be overridden; it is
//! bounded at compile time instead (see [`super::MAX_ADDITIONS`]).
//!
//! Owns: the string functions of the condition environment and their output bound.

use std::sync::{Arc, LazyLock};

use cel::common::types::{CelInt, CelList, CelString, LIST_TYPE, STRING_TYPE};
use cel::common::value::{CowVal, Val};
use cel::objects::Key;
use cel::{Context, Env, ExecutionError, Program, Value};

/// Longest string a string function of a condition may build, in bytes: the default
/// `limits.max_event_bytes`, so every string an event can carry can still be
/// rewritten, but a condition cannot multiply it.
pub const MAX_CONDITION_STRING_BYTES: usize = 1 << 20;

/// Registers the extension's overloads on `env`, as `cel::extensions::strings` does.
pub(super) fn register(env: &mut Env) -> Result<(), cel::DeclarationError> {
    cel::add_member_overload!(env, fn char_at: (CelString, CelInt) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn index_of: (CelString, CelString) -> CelInt)?;
    cel::add_member_overload!(env, fn index_of_offset: (CelString, CelString, CelInt) -> Result<CelInt>,
        name = "indexOf")?;
    cel::add_member_overload!(env, fn last_index_of: (CelString, CelString) -> CelInt)?;
    cel::add_member_overload!(env, fn last_index_of_offset: (CelString, CelString, CelInt) -> Result<CelInt>,
        name = "lastIndexOf")?;
    // By hand, as the macro would downcast the receiver to a `CelList`: `join` takes
    // any `list`, like the stdlib's list overloads.
    env.add_member_overload("join", "list.join()", LIST_TYPE, vec![], join)?;
    env.add_member_overload(
        "join",
        "list.join(string)",
        LIST_TYPE,
        vec![STRING_TYPE],
        join_sep,
    )?;
    cel::add_member_overload!(env, fn lower_ascii: (CelString) -> CelString)?;
    cel::add_member_overload!(env, fn upper_ascii: (CelString) -> CelString)?;
    cel::add_member_overload!(env, fn trim: (CelString) -> CelString)?;
    cel::add_member_overload!(env, fn replace: (CelString, CelString, CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn replace_n: (CelString, CelString, CelString, CelInt) -> Result<CelString>,
        name = "replace")?;
    cel::add_member_overload!(env, fn split: (CelString, CelString) -> CelList)?;
    cel::add_member_overload!(env, fn split_n: (CelString, CelString, CelInt) -> CelList,
        name = "split")?;
    cel::add_member_overload!(env, fn substring: (CelString, CelInt) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn substring_range: (CelString, CelInt, CelInt) -> Result<CelString>,
        name = "substring")?;
    env.add_member_overload(
        "format",
        "string.format(list)",
        STRING_TYPE,
        vec![LIST_TYPE],
        format,
    )?;
    cel::add_overload!(env, fn quote: (CelString) -> Result<CelString>, name = "strings.quote")?;
    cel::add_member_overload!(env, fn reverse: (CelString) -> CelString)?;
    Ok(())
}

/// `Err` when a result of `len` bytes (`None`: more than fits a `usize`) would be
/// over [`MAX_CONDITION_STRING_BYTES`].
fn check_len(function: &str, len: Option<usize>) -> Result<(), ExecutionError> {
    match len {
        Some(len) if len <= MAX_CONDITION_STRING_BYTES => Ok(()),
        _ => Err(ExecutionError::function_error(
            function,
            format!(
                "the result would be longer than {MAX_CONDITION_STRING_BYTES} bytes, \
                 the most a condition may build"
            ),
        )),
    }
}

/// The length of `this` with its first `n` occurrences of `from` (all of them when
/// `None`) replaced by `to`, counted without building it. An empty `from` matches at
/// every code point boundary, ends included, as `str::replace` has it.
fn replaced_len(this: &str, from: &str, to: &str, n: Option<usize>) -> Option<usize> {
    let all = if from.is_empty() {
        this.chars().count() + 1
    } else {
        // `matches` finds the same non-overlapping occurrences `replace` replaces.
        match n {
            Some(n) => this.matches(from).take(n).count(),
            None => this.matches(from).count(),
        }
    };
    let count = n.map_or(all, |n| all.min(n));
    // The replaced occurrences are part of `this`, so this never underflows.
    (this.len() - count * from.len()).checked_add(count.checked_mul(to.len())?)
}

fn replace(
    this: &CelString<'_>,
    from: &CelString<'_>,
    to: &CelString<'_>,
) -> Result<CelString<'static>, ExecutionError> {
    check_len(
        "replace",
        replaced_len(this, from.inner(), to.inner(), None),
    )?;
    Ok(this.replace(from.inner(), to.inner()).into())
}

/// Replaces the first `n` occurrences, or all of them when `n` is negative.
fn replace_n(
    this: &CelString<'_>,
    from: &CelString<'_>,
    to: &CelString<'_>,
    n: &CelInt,
) -> Result<CelString<'static>, ExecutionError> {
    match usize::try_from(*n.inner()) {
        Ok(n) => {
            check_len(
                "replace",
                replaced_len(this, from.inner(), to.inner(), Some(n)),
            )?;
            Ok(this.replacen(from.inner(), to.inner(), n).into())
        }
        Err(_) => replace(this, from, to),
    }
}

fn join<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    match args.as_slice() {
        [list] => join_with(list.as_ref(), ""),
        _ => Err(ExecutionError::invalid_argument_count(1, args.len())),
    }
}

fn join_sep<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    match args.as_slice() {
        [list, sep] => join_with(list.as_ref(), arg::<CelString>(sep.as_ref())?.inner()),
        _ => Err(ExecutionError::invalid_argument_count(2, args.len())),
    }
}

/// Concatenates the strings of any iterable `list`, `sep` between each, if the result
/// is within bounds.
fn join_with<'b, 'v>(list: &dyn Val, sep: &str) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut items = iterable(list)?.iter();
    let mut parts = Vec::new();
    let mut len = Some(0usize);
    while let Some(item) = items.next() {
        let part = arg::<CelString>(item)?.inner();
        let gap = if parts.is_empty() { 0 } else { sep.len() };
        len = len.and_then(|l| l.checked_add(gap)?.checked_add(part.len()));
        check_len("join", len)?;
        parts.push(part);
    }
    Ok(CowVal::owned(CelString::from(parts.join(sep))))
}

/// The scratch environment `format` is delegated to: the crate's own, whose
/// clauses, precisions and error messages are the spec's.
static FORMAT: LazyLock<Option<(Arc<Env>, Program)>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings).ok()?;
    let program = env.compile("f.format(args)").ok()?;
    Some((Arc::new(env), program))
});

/// `string.format(list)` of the `cel` crate, run only when its result is known to fit:
/// no clause writes more than the bound [`formatted_bound`] gives its argument.
fn format<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [this, list] = args.as_slice() else {
        return Err(ExecutionError::invalid_argument_count(2, args.len()));
    };
    let this = arg::<CelString>(this.as_ref())?.inner().to_owned();
    let list = Value::try_from(list.as_ref())?;
    let Value::List(items) = &list else {
        return Err(ExecutionError::function_error(
            "format",
            "the arguments are not a list",
        ));
    };
    let bound = items.iter().try_fold(this.len(), |sum, item| {
        sum.checked_add(formatted_bound(item)?)
    });
    check_len("format", bound)?;
    let Some((env, program)) = &*FORMAT else {
        return Err(ExecutionError::function_error(
            "format",
            "string formatting is not available",
        ));
    };
    let mut context = Context::with_env(env.clone());
    context.add_variable_from_value("f", this);
    context.add_variable_from_value("args", list);
    let formatted = program.execute(&context)?;
    let formatted: Box<dyn Val> = formatted.try_into()?;
    Ok(CowVal::Owned(formatted))
}

/// The most bytes any clause of `format` writes for `value`: `%x` doubles a string
/// and invalid UTF-8 bytes become three bytes each; a number with `%f` at the largest
/// precision (100) takes at most 410; lists and maps are written with `, ` and `: `
/// between their elements.
fn formatted_bound(value: &Value) -> Option<usize> {
    const SCALAR: usize = 512;
    match value {
        Value::String(s) => s.len().checked_mul(2),
        Value::Bytes(b) => b.len().checked_mul(3),
        Value::List(items) => items.iter().try_fold(2usize, |sum, item| {
            sum.checked_add(formatted_bound(item)?)?.checked_add(2)
        }),
        Value::Map(map) => map.map.iter().try_fold(2usize, |sum, (key, value)| {
            let key = match key {
                Key::String(s) => s.len(),
                _ => SCALAR,
            };
            sum.checked_add(key)?
                .checked_add(formatted_bound(value)?)?
                .checked_add(4)
        }),
        _ => Some(SCALAR),
    }
}

/// `this` as a double-quoted CEL string literal: the characters CEL escapes are
/// escaped. Each escape doubles its character, so nested quotes double their input.
fn quote(this: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    let escaped = |c: char| {
        matches!(
            c,
            '\x07' | '\x08' | '\x0c' | '\n' | '\r' | '\t' | '\x0b' | '\\' | '"'
        )
    };
    let extra = this.chars().filter(|c| escaped(*c)).count();
    let len = this.len().checked_add(extra).and_then(|l| l.checked_add(2));
    check_len("strings.quote", len)?;
    let mut quoted = String::with_capacity(this.len() + 2);
    quoted.push('"');
    for c in this.chars() {
        match c {
            '\x07' => quoted.push_str("\\a"),
            '\x08' => quoted.push_str("\\b"),
            '\x0c' => quoted.push_str("\\f"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            '\x0b' => quoted.push_str("\\v"),
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Ok(quoted.into())
}

// The functions below never build more than they are given: the `cel` crate's
// (0.15, `extensions/strings.rs`), unchanged.

fn out_of_range(function: &str, idx: i64) -> ExecutionError {
    ExecutionError::function_error(function, format!("index out of range: {idx}"))
}

fn char_at(this: &CelString<'_>, idx: &CelInt) -> Result<CelString<'static>, ExecutionError> {
    let idx = *idx.inner();
    let len = this.chars().count() as i64;
    if idx < 0 || idx > len {
        return Err(out_of_range("charAt", idx));
    }
    Ok(this
        .chars()
        .nth(idx as usize)
        .map(|c| c.to_string())
        .unwrap_or_default()
        .into())
}

/// The code-point index of the first occurrence of `needle` in `runes`, at or
/// after `offset`.
fn find_runes(runes: &[char], needle: &[char], offset: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(offset);
    }
    runes[offset..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + offset)
}

/// The code-point index of the last occurrence of `needle` in `runes` that
/// starts at or before `offset`.
fn rfind_runes(runes: &[char], needle: &[char], offset: usize) -> Option<usize> {
    if needle.len() > runes.len() {
        return None;
    }
    let last = offset.min(runes.len() - needle.len());
    (0..=last)
        .rev()
        .find(|&i| runes[i..i + needle.len()] == *needle)
}

fn index_of(this: &CelString<'_>, needle: &CelString<'_>) -> CelInt {
    let runes: Vec<char> = this.chars().collect();
    let needle: Vec<char> = needle.chars().collect();
    find_runes(&runes, &needle, 0)
        .map_or(-1, |i| i as i64)
        .into()
}

fn index_of_offset(
    this: &CelString<'_>,
    needle: &CelString<'_>,
    offset: &CelInt,
) -> Result<CelInt, ExecutionError> {
    find_from("indexOf", this, needle, offset, find_runes)
}

/// `indexOf` / `lastIndexOf` with an offset: a negative offset, or one past the end
/// with a non-empty needle, is out of range; an empty needle is found at the offset.
fn find_from(
    function: &str,
    this: &CelString<'_>,
    needle: &CelString<'_>,
    offset: &CelInt,
    find: fn(&[char], &[char], usize) -> Option<usize>,
) -> Result<CelInt, ExecutionError> {
    let offset = *offset.inner();
    let runes: Vec<char> = this.chars().collect();
    if offset < 0 {
        return Err(out_of_range(function, offset));
    }
    if needle.is_empty() {
        return Ok(offset.min(runes.len() as i64).into());
    }
    if offset >= runes.len() as i64 {
        return Err(out_of_range(function, offset));
    }
    let needle: Vec<char> = needle.chars().collect();
    Ok(find(&runes, &needle, offset as usize)
        .map_or(-1, |i| i as i64)
        .into())
}

fn last_index_of(this: &CelString<'_>, needle: &CelString<'_>) -> CelInt {
    let runes: Vec<char> = this.chars().collect();
    let needle: Vec<char> = needle.chars().collect();
    rfind_runes(&runes, &needle, runes.len())
        .map_or(-1, |i| i as i64)
        .into()
}

fn last_index_of_offset(
    this: &CelString<'_>,
    needle: &CelString<'_>,
    offset: &CelInt,
) -> Result<CelInt, ExecutionError> {
    find_from("lastIndexOf", this, needle, offset, rfind_runes)
}

fn lower_ascii(this: &CelString<'_>) -> CelString<'static> {
    this.to_ascii_lowercase().into()
}

fn upper_ascii(this: &CelString<'_>) -> CelString<'static> {
    this.to_ascii_uppercase().into()
}

fn trim(this: &CelString<'_>) -> CelString<'static> {
    this.trim().to_owned().into()
}

fn split(this: &CelString<'_>, sep: &CelString<'_>) -> CelList<'static> {
    split_n(this, sep, &CelInt::from(-1))
}

/// Splits into at most `n` parts, the last holding the unsplit remainder: none
/// when `n` is zero, all of them when it is negative. An empty separator splits
/// between code points.
fn split_n(this: &CelString<'_>, sep: &CelString<'_>, n: &CelInt) -> CelList<'static> {
    let n = *n.inner();
    let parts: Vec<&str> = match (usize::try_from(n), sep.is_empty()) {
        (Ok(0), _) => Vec::new(),
        (Ok(n), true) => {
            let mut parts: Vec<&str> = Vec::new();
            let mut rest: &str = this;
            while let Some(c) = rest.chars().next() {
                if parts.len() + 1 == n {
                    break;
                }
                let (head, tail) = rest.split_at(c.len_utf8());
                parts.push(head);
                rest = tail;
            }
            if !rest.is_empty() {
                parts.push(rest);
            }
            parts
        }
        (Ok(n), false) => this.splitn(n, sep.inner()).collect(),
        (Err(_), true) => this
            .char_indices()
            .map(|(i, c)| &this[i..i + c.len_utf8()])
            .collect(),
        (Err(_), false) => this.split(sep.inner()).collect(),
    };
    parts
        .into_iter()
        .map(|s| Box::new(CelString::from(s.to_owned())) as Box<dyn Val>)
        .collect::<Vec<_>>()
        .into()
}

fn substring(this: &CelString<'_>, start: &CelInt) -> Result<CelString<'static>, ExecutionError> {
    let len = this.chars().count() as i64;
    if *start.inner() < 0 || *start.inner() > len {
        return Err(out_of_range("substring", *start.inner()));
    }
    substring_range(this, start, &CelInt::from(len))
}

fn substring_range(
    this: &CelString<'_>,
    start: &CelInt,
    end: &CelInt,
) -> Result<CelString<'static>, ExecutionError> {
    let (start, end) = (*start.inner(), *end.inner());
    let len = this.chars().count() as i64;
    if start > end {
        return Err(ExecutionError::function_error(
            "substring",
            format!("invalid substring range. start: {start}, end: {end}"),
        ));
    }
    if start < 0 || start > len {
        return Err(out_of_range("substring", start));
    }
    if end > len {
        return Err(out_of_range("substring", end));
    }
    Ok(this
        .chars()
        .skip(start as usize)
        .take((end - start) as usize)
        .collect::<String>()
        .into())
}

/// Reverses the code points of `this`.
fn reverse(this: &CelString<'_>) -> CelString<'static> {
    this.chars().rev().collect::<String>().into()
}
/// `val` downcast to the `T` its overload was registered with.
fn arg<'b, 'v, T: cel::common::value::FromVal<'b, 'v> + Val>(
    val: &'b (dyn Val + 'v),
) -> Result<&'b T, ExecutionError> {
    val.downcast_ref::<T>()
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: val.get_type().name().to_owned(),
            want: T::cel_type().name().to_owned(),
        })
}

/// `list` as an iterable, for an overload that takes any `list`, not just a `CelList`.
fn iterable<'b, 'v>(
    list: &'b (dyn Val + 'v),
) -> Result<&'b (dyn cel::common::traits::Iterable + 'v), ExecutionError> {
    list.as_iterable()
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: list.get_type().name().to_owned(),
            want: "iterable".to_owned(),
        })
}

#[cfg(test)]
#[path = "strings_tests.rs"]
mod tests;
