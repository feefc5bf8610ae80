//! The subscription index: which subscriptions an event's topic can reach at all.
//!
//! A subscription whose topic patterns all start with literal segments is filed under
//! those prefixes in a trie of topic segments (`task.*` under `task`, `agent.a7.>` under
//! `agent.a7`); one that may match any topic (no pattern, or one starting with a
//! wildcard) sits at the root. For a topic, only the subscriptions on the path of its
//! segments are candidates, so most events never reach most filters and conditions.
//! Candidates still go through the full matcher.
//!
//! Owns: the entries and the trie. Must not: match events (the matcher does) or know
//! what an entry is beyond its prefixes.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
struct Node {
    /// Entries filed exactly at this prefix.
    here: Vec<u64>,
    children: HashMap<String, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.children.is_empty()
    }

    /// Removes `key` from the node at `path`, pruning nodes left empty.
    fn remove(&mut self, path: &[String], key: u64) {
        match path.split_first() {
            None => self.here.retain(|k| *k != key),
            Some((first, rest)) => {
                if let Some(child) = self.children.get_mut(first) {
                    child.remove(rest, key);
                    if child.is_empty() {
                        self.children.remove(first);
                    }
                }
            }
        }
    }
}

struct Entry<T> {
    value: T,
    /// Where it is filed; empty for the root.
    prefixes: Vec<Vec<String>>,
}

/// Entries in insertion order, filed by literal topic prefix.
pub struct SubscriptionIndex<T> {
    entries: BTreeMap<u64, Entry<T>>,
    root: Node,
    next_key: u64,
}

impl<T> Default for SubscriptionIndex<T> {
    fn default() -> Self {
        SubscriptionIndex {
            entries: BTreeMap::new(),
            root: Node::default(),
            next_key: 0,
        }
    }
}

impl<T> SubscriptionIndex<T> {
    /// Files `value` under `prefixes` (`None`: may match any topic).
    pub fn insert(&mut self, prefixes: Option<Vec<Vec<String>>>, value: T) {
        let key = self.next_key;
        self.next_key += 1;
        let prefixes = prefixes.map(minimal).unwrap_or_default();
        if prefixes.is_empty() {
            self.root.here.push(key);
        }
        for prefix in &prefixes {
            let mut node = &mut self.root;
            for segment in prefix {
                node = node.children.entry(segment.clone()).or_default();
            }
            node.here.push(key);
        }
        self.entries.insert(key, Entry { value, prefixes });
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| !keep(&e.value))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            let Some(entry) = self.entries.remove(&key) else {
                continue;
            };
            if entry.prefixes.is_empty() {
                self.root.here.retain(|k| *k != key);
            }
            for prefix in &entry.prefixes {
                self.root.remove(prefix, key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.values().map(|e| &e.value)
    }

    /// Calls `f` once for every entry that `topic` can reach.
    pub fn for_each_candidate(&self, topic: &str, mut f: impl FnMut(&T)) {
        let mut node = &self.root;
        let mut visit = |node: &Node| {
            for key in &node.here {
                if let Some(e) = self.entries.get(key) {
                    f(&e.value);
                }
            }
        };
        visit(node);
        for segment in topic.split('.') {
            match node.children.get(segment) {
                Some(child) => {
                    node = child;
                    visit(node);
                }
                None => break,
            }
        }
    }
}

/// Drops every prefix that extends another one (`task` covers `task.created`), so an
/// entry is met at most once on any path, and duplicates.
fn minimal(mut prefixes: Vec<Vec<String>>) -> Vec<Vec<String>> {
    prefixes.sort();
    prefixes.dedup();
    let mut kept: Vec<Vec<String>> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        // Sorted order puts a prefix right before the entries that extend it.
        if kept.last().is_some_and(|k| p.starts_with(k)) {
            continue;
        }
        kept.push(p);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(str::to_owned).collect()
    }

    fn candidates(index: &SubscriptionIndex<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        index.for_each_candidate(topic, |v| out.push(*v));
        out.sort();
        out
    }

    #[test]
    fn files_by_prefix_and_finds_each_once() {
        let mut index = SubscriptionIndex::default();
        index.insert(None, "any");
        index.insert(Some(vec![p("task")]), "task");
        index.insert(Some(vec![p("task.created"), p("task")]), "task-twice");
        index.insert(Some(vec![p("task.created")]), "created");
        index.insert(Some(vec![p("cost"), p("agent.a7")]), "cost-or-a7");
        assert_eq!(
            candidates(&index, "task.created"),
            ["any", "created", "task", "task-twice"]
        );
        assert_eq!(
            candidates(&index, "task.failed"),
            ["any", "task", "task-twice"]
        );
        assert_eq!(
            candidates(&index, "agent.a7.started"),
            ["any", "cost-or-a7"]
        );
        assert_eq!(candidates(&index, "agent.a8.started"), ["any"]);
        assert_eq!(candidates(&index, "cost"), ["any", "cost-or-a7"]);
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn retain_removes_and_prunes() {
        let mut index = SubscriptionIndex::default();
        index.insert(Some(vec![p("a.b.c")]), 1);
        index.insert(Some(vec![p("a")]), 2);
        index.insert(None, 3);
        index.retain(|v| *v == 2);
        let mut seen = Vec::new();
        index.for_each_candidate("a.b.c", |v| seen.push(*v));
        assert_eq!(seen, [2]);
        assert!(!index.root.children["a"].children.contains_key("b"));
        index.retain(|_| false);
        assert!(index.is_empty() && index.root.is_empty());
        assert_eq!(index.iter().count(), 0);
    }

    #[test]
    fn iterates_in_insertion_order() {
        let mut index = SubscriptionIndex::default();
        for (i, prefix) in ["z", "a", "m"].into_iter().enumerate() {
            index.insert(Some(vec![p(prefix)]), i);
        }
        assert_eq!(index.iter().copied().collect::<Vec<_>>(), [0, 1, 2]);
    }
}
