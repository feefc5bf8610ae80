//! Which pending changes to publish now, and which updates merge.
//!
//! A change waits until it was first seen `debounce_ms` ago; changes are taken in
//! outbox order, up to the first one still waiting, so no event overtakes an earlier
//! change. Among those taken, consecutive updates of one row (no insert or delete of
//! that row between them) merge into the latest: one event, which drains them all,
//! with the status before the first. A change's wait is bounded by the window, so a
//! row updated without pause is still reported every window.

/// One pending change, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending<'a> {
    pub id: i64,
    pub is_update: bool,
    pub key: &'a str,
    /// When this source first saw it, in milliseconds of any monotonic clock.
    pub seen_ms: u64,
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Index of the change it reports (the latest of those merged).
    pub latest: usize,
    /// Index of the first change merged into it (its previous status).
    pub first: usize,
    /// Outbox ids it drains once published.
    pub covers: Vec<i64>,
}

/// The events to publish at `now_ms` from `pending` (in outbox order).
pub fn plan(pending: &[Pending<'_>], now_ms: u64, debounce_ms: u64) -> Vec<Planned> {
    let settled = pending
        .iter()
        .take_while(|p| now_ms.saturating_sub(p.seen_ms) >= debounce_ms)
        .count();
    let mut planned: Vec<Planned> = Vec::new();
    // Per key, the planned event an update of it may still merge into.
    let mut open: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, p) in pending[..settled].iter().enumerate() {
        let merge_into = match (p.is_update && debounce_ms > 0, open.get(p.key)) {
            (true, Some(&at)) => Some(at),
            _ => None,
        };
        match merge_into {
            Some(at) => {
                let group = &mut planned[at];
                group.latest = i;
                group.covers.push(p.id);
            }
            None => {
                planned.push(Planned {
                    latest: i,
                    first: i,
                    covers: vec![p.id],
                });
                if p.is_update {
                    open.insert(p.key, planned.len() - 1);
                }
            }
        }
        if !p.is_update {
            open.remove(p.key);
        }
    }
    // A merged event goes where its latest change was.
    planned.sort_by_key(|g| g.latest);
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: i64, op: char, key: &str, seen_ms: u64) -> Pending<'_> {
        Pending {
            id,
            is_update: op == 'u',
            key,
            seen_ms,
        }
    }

    /// (latest, first, covers) of each planned event.
    fn shape(plan: &[Planned]) -> Vec<(usize, usize, Vec<i64>)> {
        plan.iter()
            .map(|g| (g.latest, g.first, g.covers.clone()))
            .collect()
    }

    #[test]
    fn plans() {
        type Case<'a> = (
            &'a str,
            Vec<Pending<'a>>,
            u64,
            u64,
            Vec<(usize, usize, Vec<i64>)>,
        );
        let table: Vec<Case> = vec![
            ("nothing pending", vec![], 1000, 100, vec![]),
            (
                "too recent: waits",
                vec![p(1, 'i', "a", 950)],
                1000,
                100,
                vec![],
            ),
            (
                "updates of one row merge into the latest",
                vec![p(1, 'u', "a", 0), p(2, 'u', "a", 0), p(3, 'u', "a", 0)],
                100,
                100,
                vec![(2, 0, vec![1, 2, 3])],
            ),
            (
                "no window: nothing merges",
                vec![p(1, 'u', "a", 0), p(2, 'u', "a", 0)],
                0,
                0,
                vec![(0, 0, vec![1]), (1, 1, vec![2])],
            ),
            (
                "other rows keep their place after a merge",
                vec![p(1, 'u', "a", 0), p(2, 'i', "b", 0), p(3, 'u', "a", 0)],
                500,
                100,
                vec![(1, 1, vec![2]), (2, 0, vec![1, 3])],
            ),
            (
                "a delete ends the merge: update, delete, insert, update",
                vec![
                    p(1, 'u', "a", 0),
                    p(2, 'd', "a", 0),
                    p(3, 'i', "a", 0),
                    p(4, 'u', "a", 0),
                ],
                500,
                100,
                vec![
                    (0, 0, vec![1]),
                    (1, 1, vec![2]),
                    (2, 2, vec![3]),
                    (3, 3, vec![4]),
                ],
            ),
            (
                "taken up to the first change still waiting",
                vec![p(1, 'u', "a", 0), p(2, 'i', "b", 950), p(3, 'u', "a", 0)],
                1000,
                100,
                vec![(0, 0, vec![1])],
            ),
        ];
        for (what, pending, now, window, expected) in table {
            assert_eq!(shape(&plan(&pending, now, window)), expected, "{what}");
        }
    }
}
