"""Reconnect schedule as pure functions: exponential backoff with jitter, and which URL
to try next. Mirrors the Rust client (src/client/backoff.rs, src/client/rotation.rs).

Owns: how long to wait and where to go after a failure. Must not: sleep, draw random
numbers or open sockets (the caller does, so the schedule is testable).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Backoff:
    """`initial × multiplier^(attempt-1)` seconds, capped at `max`, then spread by
    ± `jitter` (a fraction) so that clients cut off together do not return together."""

    initial: float = 1.0
    max: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, random: float) -> float:
        """Seconds before attempt `attempt` (1 for the first retry), for `random` in
        [0, 1). Never more than `max × (1 + jitter)`, never negative."""
        exp = min(max(attempt - 1, 0), 64)
        base = min(self.initial * max(self.multiplier, 1.0) ** exp, self.max)
        jitter = min(max(self.jitter, 0.0), 1.0)
        spread = 1.0 + jitter * (2.0 * min(max(random, 0.0), 1.0) - 1.0)
        return max(base * spread, 0.0)


def after_failure(index: int, urls: int, failures: int) -> Tuple[int, Optional[int]]:
    """After `failures` (1 for the first) failed or lost connections in a row, the last on
    `urls[index]`: the next URL, round robin, and the backoff round to wait first (None:
    try at once). A URL not yet tried in this round is tried at once, since another node
    failing says nothing about it; a full round of failures waits `delay(round)`."""
    urls = max(urls, 1)
    failures = max(failures, 1)
    wait = failures // urls if failures % urls == 0 else None
    return (index % urls + 1) % urls, wait
