"""What a reply does to the request it answers: answer it, or, when the node answered
`unavailable` (cluster mode: it cannot reach the shared log, nothing was stored), keep it
to send again on the next node. Mirrors src/client/pending.rs.

Owns: the rule that `unavailable` is retried rather than surfaced, and how a resent
batch's answers are put together. Must not: touch the socket.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

UNAVAILABLE = "unavailable"

Frame = Dict[str, Any]


def _is_unavailable(error: Any) -> bool:
    return isinstance(error, dict) and error.get("code") == UNAVAILABLE


def judge(retry: bool, earlier: Optional[List[Any]], msg: Frame) -> Tuple[str, Any]:
    """`("reply", msg)` to hand `msg` to the caller (an `error` frame included), or
    `("retry", earlier)` to keep the request and send it again on the next node, where
    `earlier` is a batch's answers so far (an event stored the first time keeps that
    answer rather than the resend's `duplicate: true`)."""
    if msg.get("type") == "error":
        if retry and _is_unavailable(msg):
            return "retry", earlier
        return "reply", msg
    results = msg.get("results")
    if msg.get("type") != "published_batch" or not isinstance(results, list):
        return "reply", msg
    merged = [
        earlier[i] if earlier is not None and i < len(earlier)
        and not _is_unavailable(_error_of(earlier[i])) else answer
        for i, answer in enumerate(results)
    ]
    if retry and any(_is_unavailable(_error_of(r)) for r in merged):
        return "retry", merged
    return "reply", dict(msg, results=merged)


def _error_of(result: Any) -> Any:
    return result.get("error") if isinstance(result, dict) else None
