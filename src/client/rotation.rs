//! Which node to try next, as a pure function: round robin over the configured URLs,
//! with the [`Backoff`](super::Backoff) wait once per round.
//!
//! Owns: the order of connection attempts over several URLs and when to wait between
//! them. Must not: sleep or open sockets (the connection task does, so the policy is
//! testable on its own).

/// The next connection attempt: which URL, and whether to wait first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Next {
    /// Index into `ClientConfig::urls`.
    pub index: usize,
    /// `Some(n)`: wait `Backoff::delay(n, ..)` before the attempt; `None`: try at once.
    pub wait: Option<u32>,
}

/// After `failures` (1 for the first) failed or lost connections in a row, the last on
/// `urls[index]`: move on to the next URL. A URL not yet tried in this round is tried at
/// once, since another node failing says nothing about it; once every URL has failed
/// (a full round) the client backs off, round `r` waiting `Backoff::delay(r, ..)`. With
/// one URL every attempt waits, `delay(failures, ..)`, as a single-server client does.
pub(super) fn after_failure(index: usize, urls: usize, failures: u32) -> Next {
    let urls = urls.max(1);
    let per_round = u32::try_from(urls).unwrap_or(u32::MAX);
    let failures = failures.max(1);
    Next {
        index: (index % urls + 1) % urls,
        wait: failures
            .is_multiple_of(per_round)
            .then_some(failures / per_round),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_with_one_wait_per_round() {
        // (last index, urls, failures in a row) → (next index, wait)
        let table = [
            // One URL: today's behaviour, every attempt waits delay(failures).
            ((0, 1, 1), (0, Some(1))),
            ((0, 1, 2), (0, Some(2))),
            ((0, 1, 7), (0, Some(7))),
            // Two nodes: A lost, B at once; B fails too, wait round 1, then A...
            ((0, 2, 1), (1, None)),
            ((1, 2, 2), (0, Some(1))),
            ((0, 2, 3), (1, None)),
            ((1, 2, 4), (0, Some(2))),
            // ...from wherever the round started.
            ((1, 2, 1), (0, None)),
            // Three nodes: two tried at once, then the round's wait.
            ((2, 3, 1), (0, None)),
            ((0, 3, 2), (1, None)),
            ((1, 3, 3), (2, Some(1))),
            ((2, 3, 6), (0, Some(2))),
            // Out-of-range inputs: 0 failures is the first, 0 URLs is one, a stale
            // index wraps.
            ((0, 2, 0), (1, None)),
            ((0, 0, 1), (0, Some(1))),
            ((5, 2, 1), (0, None)),
        ];
        for ((index, urls, failures), (want_index, want_wait)) in table {
            assert_eq!(
                after_failure(index, urls, failures),
                Next {
                    index: want_index,
                    wait: want_wait
                },
                "after failure {failures} on {index} of {urls}"
            );
        }
    }
}
