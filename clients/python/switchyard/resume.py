"""Where a subscription resumes after a reconnect, and which deliveries a resume repeats:
a pure, per-subscription record (docs/protocol.md section 5.3).

Live delivery is highest priority first, so the highest cursor received is *not* a safe
place to resume: a lower-priority event with a lower cursor may still have been waiting
when the connection dropped. Following the protocol's recipe, this keeps a mark per
priority: the highest cursor received live (after `replay_complete`) for that priority,
`start` for a priority not seen live yet. The resume point is the smallest mark (and, with
`ack`, below every event not yet acknowledged); it becomes the new `start`. Events a resume
replays again are recognised (a cursor at or below its priority's mark, or one already
delivered) and not handed to the caller twice.

Owns: marks, the resume point, duplicate detection. Must not: touch the socket or the
clock. Durable subscriptions need none of this: the server keeps their position.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Set

PRIORITIES = ("critical", "high", "normal", "low")

#: Cursors remembered to recognise repeats; past it the oldest are forgotten, which can
#: only let a repeat through, never lose an event.
MAX_SEEN = 100_000
#: Unacknowledged deliveries tracked; past it the oldest are forgotten.
MAX_UNACKED = 10_000


class Resume:
    """Resume state of one non-durable subscription.

    `start` is the cursor the subscription started after (None: unknown, the caller then
    resumes by time); `replaying`: its first subscribe asked for a replay. `ack`: the subscription acknowledges, so redeliveries are expected
    (not filtered) and the resume point stays below unacknowledged events. `coalesce`:
    held events arrive out of cursor order, so only exact repeats are filtered.
    """

    def __init__(self, start: Optional[int], *, replaying: bool, ack: bool = False,
                 coalesce: bool = False) -> None:
        self.start = start
        self.ack = ack
        self.coalesce = coalesce
        self.marks: Dict[str, int] = {}
        # A subscribe with `from_cursor` or `since` replays first; its events set no mark.
        self.replaying = replaying
        self.seen: Set[int] = set()
        self.unacked: Dict[str, int] = {}

    def replay_complete(self) -> None:
        self.replaying = False

    def accept(self, envelope: Mapping[str, Any], attempt: int) -> bool:
        """Records a delivery; False when it repeats one already handed over."""
        cursor = envelope.get("cursor")
        priority = envelope.get("priority")
        # Dead-letter notices carry cursor 0: never replayed, never repeated.
        if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor <= 0:
            return True
        if self.ack:
            event_id = envelope.get("id")
            if isinstance(event_id, str):
                self.unacked[event_id] = cursor
                if len(self.unacked) > MAX_UNACKED:
                    del self.unacked[next(iter(self.unacked))]
            if not self.replaying and attempt == 1 and priority in PRIORITIES:
                self.marks[priority] = max(self.marks.get(priority, cursor), cursor)
            return True
        mark = self.marks.get(priority) if isinstance(priority, str) else None
        if cursor in self.seen or (not self.coalesce and mark is not None and cursor <= mark):
            return False
        self.seen.add(cursor)
        if len(self.seen) > MAX_SEEN:
            for old in sorted(self.seen)[: MAX_SEEN // 10]:
                self.seen.discard(old)
        if not self.replaying and priority in PRIORITIES:
            self.marks[priority] = max(self.marks.get(priority, cursor), cursor)
        return True

    def settled(self, event_id: str) -> None:
        """An event was acknowledged (or rejected for good): no longer holds the resume
        point back."""
        self.unacked.pop(event_id, None)

    def resume_point(self) -> Optional[int]:
        """The `from_cursor` to resubscribe with, or None to resume by time (`start`
        unknown and a priority without a mark)."""
        if self.start is None and len(self.marks) < len(PRIORITIES):
            return None
        base = self.start if self.start is not None else 0
        point = min(self.marks.get(p, base) for p in PRIORITIES)
        if self.unacked:
            point = min(point, min(self.unacked.values()) - 1)
        return max(point, 0)

    def resumed(self, point: Optional[int]) -> None:
        """The subscription was sent again from `point` (None: by time)."""
        if point is None:
            self.replaying = True
            return
        self.start = point
        self.replaying = True
        self.seen = {c for c in self.seen if c > point}
