//! Which dead letters go when there are more than `store.max_dead_letters`.
//!
//! They are taken from the principals holding the most, down to a common level, and
//! oldest first within a principal: a subscriber that fails everything (a dead-letter
//! storm) evicts its own dead letters before anyone else's. With one principal (auth
//! off: everyone is `anonymous`) this is plain oldest-first.
//!
//! Owns: that choice, as a pure function. Must not: touch a backend (each one counts
//! and deletes in its own way).

/// How many dead letters each principal gives up so that `excess` go in all (or all
/// there are): the largest counts are cut down to a common level; where a level falls
/// between two counts, the first principals in `counts` give up one more. Principals
/// giving up none are left out.
pub fn fair_eviction(counts: &[(String, u64)], excess: u64) -> Vec<(String, u64)> {
    let above = |level: u64| -> u64 { counts.iter().map(|(_, n)| n.saturating_sub(level)).sum() };
    let top = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    if above(0) <= excess {
        return counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| (p.clone(), *n))
            .collect();
    }
    // The lowest level that removes no more than `excess`: above() falls as it rises.
    let (mut lo, mut hi) = (0, top);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if above(mid) <= excess {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let level = lo;
    // Fewer than the principals at `level` or above: one more each from the first.
    let mut extra = excess - above(level);
    counts
        .iter()
        .filter_map(|(p, n)| {
            let mut take = n.saturating_sub(level);
            if extra > 0 && *n >= level && level > 0 {
                take += 1;
                extra -= 1;
            }
            (take > 0).then(|| (p.clone(), take))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::fair_eviction;

    fn counts(c: &[(&str, u64)]) -> Vec<(String, u64)> {
        c.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect()
    }

    #[test]
    fn the_heaviest_give_up_first() {
        type Counts<'a> = &'a [(&'a str, u64)];
        let cases: &[(Counts, u64, Counts)] = &[
            // One principal: plain oldest first.
            (&[("anonymous", 120)], 20, &[("anonymous", 20)]),
            // A storm evicts its own before a real dead letter of another.
            (&[("real", 3), ("storm", 1000)], 100, &[("storm", 100)]),
            (&[("storm", 1000), ("real", 3)], 997, &[("storm", 997)]),
            // Down to a common level: 60/40, 30 to go -> both at 35.
            (&[("a", 60), ("b", 40)], 30, &[("a", 25), ("b", 5)]),
            // Equal counts share; the odd one comes from the first.
            (&[("a", 50), ("b", 50)], 10, &[("a", 5), ("b", 5)]),
            (&[("a", 50), ("b", 50)], 11, &[("a", 6), ("b", 5)]),
            (&[("a", 5), ("b", 9), ("c", 9)], 5, &[("b", 3), ("c", 2)]),
            // Nothing to do, or more than there is.
            (&[("a", 5)], 0, &[]),
            (&[("a", 5), ("b", 2)], 9, &[("a", 5), ("b", 2)]),
            (&[], 3, &[]),
        ];
        for (have, excess, want) in cases {
            let got = fair_eviction(&counts(have), *excess);
            assert_eq!(got, counts(want), "{have:?} minus {excess}");
            let total: u64 = got.iter().map(|(_, n)| n).sum();
            let all: u64 = have.iter().map(|(_, n)| n).sum();
            assert_eq!(total, (*excess).min(all), "{have:?} minus {excess}");
        }
    }
}
