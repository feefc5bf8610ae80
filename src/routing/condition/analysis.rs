//! What a compiled condition's syntax tree says before it runs: how deep it nests,
//! whether it loops (inside a loop), and which topic prefixes it can match.

use cel::common::ast::{operators, EntryExpr, Expr, LiteralValue};
use cel::IdedExpr;

/// Does a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) run inside
/// the loop body of another? Its cost would be the product of the two lists' lengths,
/// and with lists from an event's payload (up to `max_event_bytes`) that is a router
/// stalled for seconds: conditions run on the router's thread for every event. A
/// comprehension in another's range (`l.filter(...).all(...)`) or result runs once,
/// and is fine. Walks without recursion; the tree is already bounded by [`MAX_DEPTH`].
pub(super) fn has_nested_loop(root: &IdedExpr) -> bool {
    let mut stack = vec![(root, false)];
    while let Some((expr, in_loop)) = stack.pop() {
        if in_loop && matches!(expr.expr, Expr::Comprehension(_)) {
            return true;
        }
        stack.extend(
            children(expr)
                .into_iter()
                .map(|(child, body)| (child, in_loop || body)),
        );
    }
    false
}

/// Does the tree under `root` hold a comprehension (`all`, `exists`, `exists_one`,
/// `map`, `filter`)? Its cost grows with the list it walks.
pub(super) fn has_loop(root: &IdedExpr) -> bool {
    let mut stack = vec![root];
    while let Some(expr) = stack.pop() {
        if matches!(expr.expr, Expr::Comprehension(_)) {
            return true;
        }
        stack.extend(children(expr).into_iter().map(|(child, _)| child));
    }
    false
}

/// How many `+` the condition writes. The loops of `map`, `filter` and `exists_one`
/// add to their accumulator (`@result`, a name no condition can write) with a `+` of
/// their own, which is not counted: it is not the client's.
pub(super) fn additions(root: &IdedExpr) -> usize {
    let mut count = 0;
    let mut stack = vec![root];
    while let Some(expr) = stack.pop() {
        if let Expr::Call(call) = &expr.expr {
            let accumulates = matches!(
                call.args.first().map(|a| &a.expr),
                Some(Expr::Ident(name)) if name == "@result"
            );
            if call.func_name == operators::ADD && call.target.is_none() && !accumulates {
                count += 1;
            }
        }
        stack.extend(children(expr).into_iter().map(|(child, _)| child));
    }
    count
}

/// Is the tree under `root` more than `max` levels deep? Walks it without recursion.
pub(super) fn depth_exceeds(root: &IdedExpr, max: usize) -> bool {
    let mut stack = vec![(root, 1)];
    while let Some((expr, depth)) = stack.pop() {
        if depth > max {
            return true;
        }
        stack.extend(
            children(expr)
                .into_iter()
                .map(|(child, _)| (child, depth + 1)),
        );
    }
    false
}

/// The direct subexpressions of `expr`, each with whether it is a comprehension's loop
/// body (`loop_cond`, `loop_step`: evaluated once per element) rather than evaluated
/// once. Compile time only, on trees bounded by [`MAX_CONDITION_LEN`].
pub(super) fn children(expr: &IdedExpr) -> Vec<(&IdedExpr, bool)> {
    let once = |e| (e, false);
    match &expr.expr {
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .map(once)
            .collect(),
        Expr::Comprehension(c) => vec![
            (&c.iter_range, false),
            (&c.accu_init, false),
            (&c.result, false),
            (&c.loop_cond, true),
            (&c.loop_step, true),
        ],
        Expr::List(list) => list.elements.iter().map(once).collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .filter_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => Some([once(&e.key), once(&e.value)]),
                _ => None,
            })
            .flatten()
            .collect(),
        Expr::Struct(st) => st
            .entries
            .iter()
            .filter_map(|entry| match &entry.expr {
                EntryExpr::StructField(f) => Some(once(&f.value)),
                _ => None,
            })
            .collect(),
        Expr::Select(select) => vec![once(&select.operand)],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

pub(super) fn topic_prefixes(expr: &IdedExpr) -> Option<Vec<Vec<String>>> {
    let Expr::Call(call) = &expr.expr else {
        return None;
    };
    let segments = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
    match (
        call.func_name.as_str(),
        call.target.as_deref(),
        call.args.as_slice(),
    ) {
        (operators::LOGICAL_AND, None, [a, b]) => topic_prefixes(a).or_else(|| topic_prefixes(b)),
        (operators::LOGICAL_OR, None, [a, b]) => {
            let mut both = topic_prefixes(a)?;
            both.extend(topic_prefixes(b)?);
            Some(both)
        }
        ("startsWith", Some(target), [arg]) if is_topic(target) => {
            // Only whole segments: "cost." → `cost`; "cost.bud" → `cost`; "co" → none.
            let lit = string_literal(arg)?;
            let mut prefix = segments(lit);
            prefix.pop();
            (!prefix.is_empty() && prefix.iter().all(|s| !s.is_empty())).then(|| vec![prefix])
        }
        (operators::EQUALS, None, [a, b]) => {
            let lit = match (is_topic(a), is_topic(b)) {
                (true, _) => string_literal(b)?,
                (_, true) => string_literal(a)?,
                _ => return None,
            };
            Some(vec![segments(lit)])
        }
        (operators::IN, None, [a, list]) if is_topic(a) => {
            let Expr::List(list) = &list.expr else {
                return None;
            };
            list.elements
                .iter()
                .map(|e| string_literal(e).map(segments))
                .collect()
        }
        _ => None,
    }
}

/// `topic` or `event.topic`.
pub(super) fn is_topic(expr: &IdedExpr) -> bool {
    match &expr.expr {
        Expr::Ident(name) => name == "topic",
        Expr::Select(select) => {
            !select.test
                && select.field == "topic"
                && matches!(&select.operand.expr, Expr::Ident(name) if name == "event")
        }
        _ => false,
    }
}

pub(super) fn string_literal(expr: &IdedExpr) -> Option<&str> {
    match &expr.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}
