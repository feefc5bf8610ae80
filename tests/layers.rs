//! The crate's shape, checked: imports only point down.
//!
//! Reads every library file under `src/` (the binary's `main.rs` and `cli/` sit on
//! top of the library and are not part of it), finds what each one names through
//! `crate::`, `super::` and `self::` paths, and checks:
//!
//! 1. Top-level modules only name modules of a lower layer ([`LAYERS`]).
//! 2. Inside every folder, the files and subfolders do not name each other in a cycle.
//!    A child naming its own parent (the type it adds `impl` blocks to) and a parent
//!    re-exporting its children are one unit, not a cycle.
//!
//! Test code (from a `#[cfg(test)]` on, and `tests.rs` files) is not checked: a test
//! may reach anywhere. Paths in comments and strings do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, lowest first. A module may name modules of the
/// layers before its own, never one of its own layer or above.
const LAYERS: &[&[&str]] = &[
    &["error", "tls", "client"],
    &["config"],
    &["protocol"],
    &["routing"],
    &["metrics"],
    &["delivery"],
    &["store"],
    &["auth", "rate_limit", "overload", "sources"],
    &["actors"],
    &["http"],
    &["server"],
];

type Module = Vec<String>;

#[test]
fn imports_only_point_down() {
    let files = library_files();
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    let layer_of = |top: &str| LAYERS.iter().position(|l| l.contains(&top));
    let mut problems = Vec::new();
    // Edges between sibling units, per folder.
    let mut folders: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, text) in &files {
        if module.is_empty() {
            continue; // lib.rs declares the modules and re-exports the entry points.
        }
        if layer_of(&module[0]).is_none() {
            problems.push(format!("`{}` is in no layer of LAYERS", module[0]));
        }
        for path in referenced_paths(&strip(text)) {
            let Some(target) = resolve(module, &path, &modules) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // a module and its own parent or child
            }
            let (from, to) = (&module[common], &target[common]);
            if common == 0 {
                if let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) {
                    if b >= a {
                        problems.push(format!(
                            "{}: names `{}` ({}), which is not below `{from}`",
                            module.join("::"),
                            path.join("::"),
                            to
                        ));
                    }
                }
            } else {
                folders
                    .entry(module[..common].to_vec())
                    .or_default()
                    .entry(from.clone())
                    .or_default()
                    .insert(to.clone());
            }
        }
    }
    for (folder, graph) in &folders {
        if let Some(cycle) = find_cycle(graph) {
            problems.push(format!(
                "cycle in `{}`: {}",
                folder.join("::"),
                cycle.join(" -> ")
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Every library file with its module path (`src/actors/session/mod.rs` is
/// `actors::session`), without the binary's files and test-only files.
fn library_files() -> Vec<(Module, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path: PathBuf = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let name = parts.last().cloned().unwrap_or_default();
            if parts[0] == "main" || parts[0] == "cli" || parts[0] == "bin" || name == "tests" {
                continue;
            }
            if name == "mod" || name == "lib" {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            files.push((parts, text));
        }
    }
    files
}

/// The source without comments, string and char literals, and test code.
fn strip(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if bytes.get(i + 1) == Some(&b'#') || bytes.get(i + 1) == Some(&b'"') => {
                // A raw string r"…" or r#"…"#: skip to the matching end.
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if bytes.get(j) != Some(&b'"') || (i > 0 && is_ident(bytes[i - 1])) {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let end = format!("\"{}", "#".repeat(hashes));
                i = text[j + 1..]
                    .find(&end)
                    .map_or(bytes.len(), |k| j + 1 + k + end.len());
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                // A char literal ('x' or '\n'); a lifetime has no closing quote.
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every path a file names that starts with `crate`, `super` or `self`: in `use`
/// trees (braces expanded) and inline (`crate::a::b(...)`).
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let tail = &rest[at + 3..];
        let end = tail.find(';').unwrap_or(tail.len());
        expand(&[], tail[..end].trim(), &mut paths);
        rest = &tail[end..];
    }
    let bytes = code.as_bytes();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(k) = code[from..].find(root) {
            let at = from + k;
            from = at + root.len();
            if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b':') {
                continue;
            }
            let mut end = at;
            while end < bytes.len() && (is_ident(bytes[end]) || bytes[end] == b':') {
                end += 1;
            }
            let path: Vec<String> = code[at..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            // `crate::{…}` alone is the head of a `use` tree, expanded above.
            if path.len() > 1 {
                paths.push(path);
            }
        }
    }
    paths
        .into_iter()
        .filter(|p| {
            matches!(
                p.first().map(String::as_str),
                Some("crate" | "super" | "self")
            )
        })
        .collect()
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(k) = text[from..].find(word) {
        let at = from + k;
        let before = at == 0 || !is_ident(bytes[at - 1]);
        let after = bytes
            .get(at + word.len())
            .is_some_and(|b| b.is_ascii_whitespace());
        if before && after {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let close = tree.rfind('}').unwrap_or(tree.len());
        let mut base = prefix.to_vec();
        base.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..close];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
    } else if !tree.is_empty() {
        let tree = tree.split(" as ").next().unwrap_or(tree);
        let mut path = prefix.to_vec();
        path.extend(segments(tree));
        out.push(path);
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "self" || path.trim() == "self")
        .map(str::to_owned)
        .collect()
}

/// The module a path names: the longest module prefix of it that exists.
fn resolve(from: &Module, path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut full: Module = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" => from.clone(),
        "super" => from.clone(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        full.pop();
        while rest.first().is_some_and(|s| s == "super") {
            full.pop();
            rest = &rest[1..];
        }
    }
    full.extend(rest.iter().cloned());
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// A cycle in `graph`, as the names along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// The checker itself, on small cases: it must see what it is there to see.
#[test]
fn the_checker_finds_use_trees_inline_paths_and_cycles() {
    let code = strip(
        r#"
        // use crate::commented::out;
        use crate::{a::{B, c::D}, e as f};
        use super::sibling::Thing;
        fn g() { let s = "crate::in_a_string"; crate::inline::call(s); }
        #[cfg(test)]
        mod tests { use crate::only_tests; }
        "#,
    );
    let mut paths: Vec<String> = referenced_paths(&code)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths,
        [
            "crate::a::B",
            "crate::a::c::D",
            "crate::e",
            "crate::inline::call",
            "super::sibling::Thing",
        ]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let modules: BTreeSet<Module> = [vec!["x".to_owned()], vec!["x".into(), "y".into()]]
        .into_iter()
        .collect();
    let from = vec!["x".to_owned(), "y".to_owned()];
    let path: Vec<String> = ["super", "Item"].map(str::to_owned).to_vec();
    assert_eq!(resolve(&from, &path, &modules), Some(vec!["x".to_owned()]));
}
