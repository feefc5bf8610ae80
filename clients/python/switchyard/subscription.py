"""What a subscriber holds: `Subscription`, an async iterator of `Event`s (and, when asked
for, notices), and the types it yields.

Owns: the per-subscription delivery buffer, its resume record and the subscribe frame
that restores it. Must not: touch the socket; the client's connection task feeds it.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, Optional, Union

from .errors import SwitchyardError
from .resume import Resume

if TYPE_CHECKING:
    from .client import Client


@dataclass(frozen=True)
class Published:
    """The answer to a publish: the event's id and cursor; `duplicate` when the router had
    already stored an event with that id (the cursor is then the original one)."""

    event_id: str
    cursor: int
    duplicate: bool


@dataclass
class Event:
    """One delivery: the full envelope (docs/protocol.md section 2) and its attempt."""

    subscription: "Subscription" = field(repr=False)
    envelope: Dict[str, Any]
    attempt: int

    @property
    def id(self) -> str:
        return str(self.envelope.get("id", ""))

    @property
    def topic(self) -> str:
        return str(self.envelope.get("topic", ""))

    @property
    def type(self) -> str:
        return str(self.envelope.get("type", ""))

    @property
    def priority(self) -> str:
        return str(self.envelope.get("priority", ""))

    @property
    def cursor(self) -> int:
        cursor = self.envelope.get("cursor")
        return cursor if isinstance(cursor, int) else 0

    @property
    def payload(self) -> Any:
        return self.envelope.get("payload")

    def __getitem__(self, key: str) -> Any:
        return self.envelope[key]

    async def ack(self, *, confirm: bool = False) -> None:
        """Acknowledges this delivery (subscriptions with `ack` or `durable`)."""
        await self.subscription.ack(self.id, confirm=confirm)

    async def nack(self, *, requeue: bool = True, delay_ms: int = 0, confirm: bool = False) -> None:
        """Redelivers it (after `delay_ms`), or with `requeue=False` dead-letters it."""
        await self.subscription.nack(self.id, requeue=requeue, delay_ms=delay_ms, confirm=confirm)


@dataclass(frozen=True)
class ReplayComplete:
    """The replay (or a resume's replay) is done; live events follow."""

    subscription_id: str
    last_cursor: int


@dataclass(frozen=True)
class Dropped:
    """The server dropped `count` events because this client read too slowly."""

    subscription_id: str
    count: int


@dataclass(frozen=True)
class Gap:
    """A durable subscription lost these cursors (inclusive) to retention."""

    subscription_id: str
    from_cursor: int
    to_cursor: int


Notice = Union[ReplayComplete, Dropped, Gap]
Delivery = Union[Event, ReplayComplete, Dropped, Gap]

_END = object()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class Subscription:
    """A live subscription. `async for event in subscription` yields its events in the
    order the server sent them (with `notices=True`, also `ReplayComplete`, `Dropped` and
    `Gap`), across reconnects, until it is closed or the client ends. A full buffer
    (`Client(delivery_buffer=...)`) stops the connection reading: the server then treats
    this client as a slow consumer."""

    def __init__(self, client: "Client", spec: Dict[str, Any], *, resume: Optional[Resume],
                 since: str, notices: bool, buffer: int) -> None:
        self.id: str = spec["id"]
        self.spec = spec
        self.durable: Optional[str] = spec.get("durable")
        self.uses_acks = bool(spec.get("ack") or self.durable)
        self._client = client
        self._resume = resume
        self._since = since
        self._notices = notices
        self._queue: "asyncio.Queue[Any]" = asyncio.Queue(maxsize=buffer)
        self._ended = False
        self._end_error: Optional[SwitchyardError] = None
        #: True from a subscribe with replay until its `replay_complete`.
        self.replaying = bool(spec.get("durable")) or "from_cursor" in spec or "since" in spec
        #: Events the server reported dropped for this subscription (slow consumer).
        self.dropped = 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._ended and self._queue.empty():
            self._finish()
        item = await self._queue.get()
        if item is _END:
            self._finish()
        return item

    def _finish(self) -> None:
        error, self._end_error = self._end_error, None
        if error is not None:
            raise error
        raise StopAsyncIteration

    async def next_event(self, timeout: Optional[float] = None) -> Event:
        """The next event (notices skipped); `asyncio.TimeoutError` after `timeout`."""
        async def wait() -> Event:
            while True:
                item = await self.__anext__()
                if isinstance(item, Event):
                    return item
        return await asyncio.wait_for(wait(), timeout)

    async def ack(self, *event_ids: str, confirm: bool = False) -> None:
        await self._client.ack(self.id, *event_ids, confirm=confirm)

    async def nack(self, event_id: str, *, requeue: bool = True, delay_ms: int = 0,
                   confirm: bool = False) -> None:
        await self._client.nack(self.id, event_id, requeue=requeue, delay_ms=delay_ms, confirm=confirm)

    async def close(self) -> None:
        """Unsubscribes; iteration ends after what is already buffered."""
        await self._client.unsubscribe(self.id)

    # ------------------------------------------------ fed by the client's connection task

    def resume_frame(self) -> Dict[str, Any]:
        """The subscription object that restores it after a reconnect."""
        spec = dict(self.spec)
        if self._resume is not None:
            spec.pop("from_cursor", None)
            spec.pop("since", None)
            point = self._resume.resume_point()
            if point is None:
                spec["since"] = self._since
            else:
                spec["from_cursor"] = point
            self._resume.resumed(point)
        self.replaying = bool(self.durable) or "from_cursor" in spec or "since" in spec
        return spec

    def settled(self, event_ids: Any) -> None:
        if self._resume is not None:
            for event_id in event_ids:
                self._resume.settled(event_id)

    async def deliver(self, msg: Dict[str, Any]) -> None:
        kind = msg.get("type")
        item: Any
        if kind == "event":
            envelope = msg.get("event")
            if not isinstance(envelope, dict):
                return
            attempt = _int(msg.get("attempt")) or 1
            if self._resume is not None and not self._resume.accept(envelope, attempt):
                return
            item = Event(self, envelope, attempt)
        elif kind == "replay_complete":
            self.replaying = False
            if self._resume is not None:
                self._resume.replay_complete()
            item = ReplayComplete(self.id, _int(msg.get("last_cursor")))
        elif kind == "dropped":
            self.dropped += _int(msg.get("count"))
            item = Dropped(self.id, _int(msg.get("count")))
        elif kind == "gap":
            item = Gap(self.id, _int(msg.get("from_cursor")), _int(msg.get("to_cursor")))
        else:
            return
        if isinstance(item, Event) or self._notices:
            if not self._ended:
                await self._queue.put(item)

    def end(self, error: Optional[SwitchyardError] = None) -> None:
        """No more deliveries: iteration raises `error`, or stops."""
        if self._ended:
            return
        self._ended = True
        self._end_error = error
        # Wakes a reader waiting on an empty buffer; a full one ends once drained.
        if not self._queue.full():
            self._queue.put_nowait(_END)
