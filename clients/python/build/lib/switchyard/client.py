"""The client: one WebSocket at a time, reconnected with backoff, over one or several node
URLs, carrying publishes, subscriptions and acks (docs/protocol.md).

Owns: the connection task (the one place that reads the socket), the requests awaiting
replies, the window of unanswered publishes, the subscriptions to restore after a
reconnect. Must not: decide policy inline; backoff, rotation, `unavailable` retries and
resume points are the pure functions of `backoff`, `pending` and `resume`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from . import _ws
from .backoff import Backoff, after_failure
from .errors import (ClientClosed, ClientFailed, ConnectionLost, ProtocolViolation,
                     RequestTimeout, ServerError, SwitchyardError, Unauthorized, error_from)
from .pending import judge
from .resume import Resume
from .subscription import Published, Subscription

log = logging.getLogger("switchyard")

CONNECTING, CONNECTED, RECONNECTING, FAILED, CLOSED = (
    "connecting", "connected", "reconnecting", "failed", "closed")

#: Unanswered publishes (and batches) on the wire at once. The server itself stops
#: reading a connection with 64 publishes awaiting their commit (protocol section 3.9).
DEFAULT_WINDOW = 64
#: A resubscribe refused because the server has not yet noticed the old connection is
#: gone (`... is already active on another connection`) is tried again this often.
RESUBSCRIBE_RETRIES = 20
RESUBSCRIBE_DELAY = 0.5


@dataclass
class _Pending:
    frame: Dict[str, Any]
    #: Sent again after a reconnect (or on the next node after `unavailable`).
    retry: bool
    future: "asyncio.Future[Any]"
    #: "request", "ack" (answered by the next reply, section 3.9) or "resubscribe".
    kind: str = "request"
    #: The connection it was last sent on.
    sent_on: int = -1
    earlier: Optional[List[Any]] = None
    subscription: Optional[Subscription] = None
    attempts: int = 0


class Client:
    """A Switchyard client. `urls`: one `ws://host:port/ws` (or `wss://`), or the nodes of
    one cluster, tried in order then round robin. `token` is sent as a Bearer header.

    ```python
    async with Client("ws://127.0.0.1:9090/ws") as client:
        sub = await client.subscribe(patterns=["task.>"])
        await client.publish({"topic": "task.created", "payload": {"task_id": "t-1"}})
        async for event in sub:
            print(event.topic, event.payload)
    ```
    """

    def __init__(self, urls: Union[str, Sequence[str]], token: Optional[str] = None, *,
                 window: int = DEFAULT_WINDOW, request_timeout: float = 30.0,
                 open_timeout: float = 10.0, backoff: Backoff = Backoff(),
                 max_attempts: Optional[int] = None, ssl: Any = None,
                 delivery_buffer: int = 1024) -> None:
        self.urls: List[str] = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one URL is needed")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.token = token
        self.window = window
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.ssl = ssl
        self.delivery_buffer = delivery_buffer
        self.state = CONNECTING
        #: Why the client failed, when `state` is "failed".
        self.error: Optional[SwitchyardError] = None
        self._index = 0
        self._ws: Any = None
        self._generation = 0
        self._next_id = 1
        self._pending: Dict[int, _Pending] = {}
        self._subs: Dict[str, Subscription] = {}
        self._move_on = False
        self._task: Optional["asyncio.Task[None]"] = None
        self._state_changed: Optional[asyncio.Event] = None
        self._room: Optional[asyncio.Semaphore] = None
        self._unanswered = 0
        #: Connections opened so far (1 once connected, more after reconnects).
        self.connections = 0

    # ------------------------------------------------------------------ lifecycle

    async def connect(self, timeout: Optional[float] = None) -> "Client":
        """Starts the connection task and waits until connected (`timeout`: seconds, None
        for `open_timeout` per URL tried). Raises `Unauthorized` for a refused token,
        `ClientFailed` after `max_attempts`, `RequestTimeout` when it takes longer."""
        self._start()
        limit = timeout if timeout is not None else self.open_timeout * len(self.urls)
        await self.wait_connected(limit)
        return self

    async def __aenter__(self) -> "Client":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _start(self) -> None:
        if self._task is None:
            self._state_changed = asyncio.Event()
            self._room = asyncio.Semaphore(self.window)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_connected(self, timeout: float) -> None:
        self._start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state != CONNECTED:
            if self.state in (FAILED, CLOSED):
                raise self.error or ClientClosed("the client is closed")
            assert self._state_changed is not None
            changed = self._state_changed
            try:
                await asyncio.wait_for(changed.wait(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise RequestTimeout(f"not connected within {timeout} s") from None

    def _set_state(self, state: str) -> None:
        self.state = state
        if self._state_changed is not None:
            self._state_changed.set()
            self._state_changed = asyncio.Event()

    async def close(self) -> None:
        """Closes the connection; calls still waiting raise `ClientClosed` and
        subscriptions stop iterating."""
        if self.state == CLOSED:
            return
        # A durable name is freed when the server sees the connection end, which can be
        # after a new connection asks for it; unsubscribing frees it before we go.
        durable = [s.id for s in self._subs.values() if s.durable]
        if durable and self._ws is not None:
            try:
                await self._settle_acks()
                waits = [await self._request({"type": "unsubscribe", "subscription_id": i},
                                             retry=False) for i in durable]
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True),
                                       min(self.request_timeout, 2.0))
            except (asyncio.TimeoutError, SwitchyardError):
                pass
        # Taken first: cancelling the task clears `_ws`.
        ws, self._ws = self._ws, None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass
        self._end_all(CLOSED, ClientClosed("the client is closed"), error_subs=False)

    def _end_all(self, state: str, error: SwitchyardError, *, error_subs: bool) -> None:
        if state == FAILED:
            self.error = error
        self._set_state(state)
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(error)
        self._pending.clear()
        for sub in self._subs.values():
            sub.end(error if error_subs else None)
        self._subs.clear()

    # ------------------------------------------------------------------ publishing

    @property
    def unanswered(self) -> int:
        """Publishes (and batches) sent or queued and not yet answered."""
        return self._unanswered

    async def submit(self, event: Dict[str, Any]) -> "asyncio.Future[Published]":
        """Waits for room in the window of unanswered publishes, sends the event, and
        returns a future of its `Published` (or its `ServerError`). A loop of `submit`s
        pipelines up to `window` publishes, then waits: back-pressure, not memory."""
        frame = {"type": "publish_event", "event": _with_id(event)}
        raw = await self._windowed(frame)
        return _then(raw, _published)

    async def submit_batch(self, events: Iterable[Dict[str, Any]]
                           ) -> "asyncio.Future[List[Union[Published, ServerError]]]":
        """As `submit`, for a `publish_batch` (one window slot for the whole batch)."""
        frame = {"type": "publish_batch", "events": [_with_id(e) for e in events]}
        raw = await self._windowed(frame)
        return _then(raw, _batch_results)

    async def publish(self, event: Dict[str, Any]) -> Published:
        """Publishes one event and returns its `Published` once the router stored it.
        Every event gets an `id` when it has none, so a publish resent after a reconnect
        is answered `duplicate` rather than stored twice."""
        return await self._within(await self.submit(event))

    async def publish_batch(self, events: Iterable[Dict[str, Any]]
                            ) -> List[Union[Published, ServerError]]:
        """Publishes events in one frame: one result per event, in order, either a
        `Published` or the `ServerError` that refused that event (not raised)."""
        return await self._within(await self.submit_batch(events))

    async def _windowed(self, frame: Dict[str, Any]) -> "asyncio.Future[Any]":
        self._start()
        assert self._room is not None
        await self._room.acquire()
        self._unanswered += 1
        room = self._room

        def release() -> None:
            self._unanswered -= 1
            room.release()
        try:
            future = await self._request(frame, retry=True)
        except BaseException:
            release()
            raise
        future.add_done_callback(lambda _: release())
        return future

    # ------------------------------------------------------------------ subscribing

    async def subscribe(self, patterns: Optional[Sequence[str]] = None, *,
                        filter: Optional[Dict[str, Any]] = None,
                        condition: Optional[str] = None, durable: Optional[str] = None,
                        ack: bool = False, id: Optional[str] = None,
                        from_cursor: Optional[int] = None, since: Optional[str] = None,
                        notices: bool = False, resume: bool = True,
                        **options: Any) -> Subscription:
        """Subscribes (docs/protocol.md section 4.1) and returns the `Subscription` once
        the server answered `subscribed`; a refusal raises its `ServerError`. Any other
        subscription field (`ack_timeout_ms`, `max_in_flight`, `coalesce`, ...) passes
        through `options`.

        After a reconnect the subscription is sent again under the same id: a durable one
        resumes from the server's record; any other from the smallest per-priority mark
        (docs/protocol.md section 5.3), so a lower-priority event still waiting when the
        connection dropped is not skipped, and what the resume repeats is filtered out.
        For that a subscription without `from_cursor` starts at the log's current end
        (`GET /api/stats`). `resume=False`: resubscribe as first sent, from then on."""
        self._start()
        spec: Dict[str, Any] = {"id": id or uuid.uuid4().hex}
        if patterns is not None:
            spec["patterns"] = [patterns] if isinstance(patterns, str) else list(patterns)
        for key, value in (("filter", filter), ("condition", condition),
                           ("durable", durable), ("since", since)):
            if value is not None:
                spec[key] = value
        if ack:
            spec["ack"] = True
        spec.update(options)
        record: Optional[Resume] = None
        if resume and durable is None:
            start = from_cursor
            if start is None:
                start = await self._last_cursor()
            if start is not None and since is None:
                spec["from_cursor"] = start
            record = Resume(start, replaying="from_cursor" in spec or since is not None,
                            ack=ack, coalesce="coalesce" in options)
        elif from_cursor is not None:
            spec["from_cursor"] = from_cursor
        if spec["id"] in self._subs:
            raise ValueError(f"subscription id {spec['id']!r} is in use on this client")
        sub = Subscription(self, spec, resume=record, since=since or _now(), notices=notices,
                           buffer=self.delivery_buffer)
        # Registered first: its events may arrive before `subscribed` (section 3.9).
        self._subs[sub.id] = sub
        try:
            await self._within(await self._request(
                {"type": "subscribe", "subscription": spec}, retry=True))
        except BaseException:
            self._subs.pop(sub.id, None)
            raise
        return sub

    async def unsubscribe(self, subscription_id: str) -> None:
        """Ends a subscription; its iterator stops after what is buffered."""
        sub = self._subs.pop(subscription_id, None)
        if sub is not None:
            sub.end()
            if sub.uses_acks:
                await self._settle_acks()
        try:
            await self._within(await self._request(
                {"type": "unsubscribe", "subscription_id": subscription_id}, retry=False))
        except ConnectionLost:
            pass  # a connection that dropped took the subscription with it

    async def ack(self, subscription_id: str, *event_ids: str, confirm: bool = False) -> None:
        """Acknowledges deliveries. The protocol answers a successful ack with nothing, so
        by default this only sends it (an error is logged); `confirm=True` also waits
        for the server to have processed it and raises its error (`UnknownEvent`, ...)."""
        if not event_ids:
            raise ValueError("ack needs at least one event id")
        frame: Dict[str, Any] = {"type": "ack", "subscription_id": subscription_id}
        if len(event_ids) == 1:
            frame["event_id"] = event_ids[0]
        else:
            frame["event_ids"] = list(event_ids)
        sub = self._subs.get(subscription_id)
        if sub is not None:
            sub.settled(event_ids)
        await self._fire(frame, confirm)

    async def nack(self, subscription_id: str, event_id: str, *, requeue: bool = True,
                   delay_ms: int = 0, confirm: bool = False) -> None:
        """Redelivers a delivery (after `delay_ms`), or with `requeue=False` dead-letters
        it. `confirm` as for `ack`."""
        frame = {"type": "nack", "subscription_id": subscription_id, "event_id": event_id,
                 "requeue": requeue, "delay_ms": delay_ms}
        sub = self._subs.get(subscription_id)
        if sub is not None and not requeue:
            sub.settled([event_id])
        await self._fire(frame, confirm)

    async def ping(self) -> str:
        """A round trip; returns the server's time."""
        reply = await self._within(await self._request({"type": "ping"}, retry=True))
        return str(reply.get("server_time", ""))

    async def _settle_acks(self) -> None:
        """Waits for a ping's round trip. The server records acks asynchronously: an
        `unsubscribe` right behind them can overtake them, and they are then refused
        `unknown_event` and not recorded (a durable subscription would get those events
        again). A round trip first lets them land."""
        try:
            await asyncio.wait_for(self.ping(), min(self.request_timeout, 2.0))
        except (asyncio.TimeoutError, SwitchyardError):
            pass

    async def _fire(self, frame: Dict[str, Any], confirm: bool) -> None:
        if not confirm:
            await self._send(frame)
            return
        # Replies leave in command order and a successful ack has none (section 3.9):
        # the reply to a ping sent right after it means it was accepted.
        acked = await self._request(frame, retry=False, kind="ack")
        pong = await self._request({"type": "ping"}, retry=False)
        try:
            await self._within(acked)
        finally:
            pong.cancel()

    # ------------------------------------------------------------------ requests

    async def _request(self, frame: Dict[str, Any], *, retry: bool, kind: str = "request",
                       sub: Optional[Subscription] = None) -> "asyncio.Future[Any]":
        if self.state in (FAILED, CLOSED):
            raise self.error or ClientClosed("the client is closed")
        request_id = self._next_id
        self._next_id += 1
        frame = dict(frame, request_id=request_id)
        future: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        pending = _Pending(frame, retry, future, kind=kind, subscription=sub)
        self._pending[request_id] = pending

        def forget(_: "asyncio.Future[Any]") -> None:
            if self._pending.get(request_id) is pending:
                del self._pending[request_id]
        future.add_done_callback(forget)
        if self._ws is not None:
            pending.sent_on = self._generation
            await self._send(frame)
        return future

    async def _within(self, future: "asyncio.Future[Any]") -> Any:
        try:
            return await asyncio.wait_for(future, self.request_timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no reply within {self.request_timeout} s") from None

    async def _send(self, frame: Dict[str, Any]) -> None:
        """Sends on the current connection, if any. A frame lost with the connection is
        resent by the reconnect when its request is retried; an ack need not be (the
        server redelivers what was not acknowledged)."""
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(json.dumps(frame))
        except _ws.ConnectionClosed:
            pass

    async def _last_cursor(self) -> Optional[int]:
        """`store.last_cursor` from `GET /api/stats` on the node in use: where a
        subscription that starts now resumes from (docs/protocol.md section 5.3). None
        when it cannot be read; the subscription then resumes by time."""
        url = _http_url(self.urls[self._index % len(self.urls)], "/api/stats")
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

        def get() -> Any:
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=self.open_timeout, context=self.ssl) as r:
                return json.load(r)
        try:
            stats = await asyncio.get_running_loop().run_in_executor(None, get)
            cursor = stats["store"]["last_cursor"]
            return cursor if isinstance(cursor, int) else 0
        except Exception as e:  # noqa: BLE001 - any failure falls back to resume by time
            log.info("switchyard: cannot read %s (%s); resuming by time", url, e)
            return None

    # ------------------------------------------------------------------ connection task

    async def _run(self) -> None:
        failures = 0
        while True:
            url = self.urls[self._index]
            before = failures
            try:
                ws = await _ws.open_socket(url, self.token, self.open_timeout, self.ssl)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is a reconnect
                if _ws.refused_status(e) == 401:
                    self._end_all(FAILED, Unauthorized("unauthorized",
                                  f"{url} refused the credential"), error_subs=True)
                    return
                log.info("switchyard: connect to %s failed: %s", url, e)
            else:
                failures = 0
                ended = await self._serve(ws)
                if ended == "unavailable":
                    failures = before
                    log.info("switchyard: %s answered unavailable; trying the next node", url)
                else:
                    log.info("switchyard: connection to %s lost", url)
            failures += 1
            if self.max_attempts is not None and failures > self.max_attempts:
                self._end_all(FAILED, ClientFailed(
                    f"gave up after {self.max_attempts} failed connection attempts"),
                    error_subs=True)
                return
            self._set_state(RECONNECTING)
            self._index, wait = after_failure(self._index, len(self.urls), failures)
            if wait is not None:
                await asyncio.sleep(self.backoff.delay(wait, random.random()))

    async def _serve(self, ws: Any) -> str:
        self._generation += 1
        generation = self._generation
        self._move_on = False
        try:
            await self._restore(ws, generation)
            self._ws = ws
            self.connections += 1
            self._set_state(CONNECTED)
            async for raw in ws:
                await self._receive(raw)
                if self._move_on:
                    await ws.close()
                    return "unavailable"
        except _ws.ConnectionClosed:
            pass
        except OSError as e:
            log.info("switchyard: socket error: %s", e)
        finally:
            self._ws = None
            self._lost()
        return "lost"

    async def _restore(self, ws: Any, generation: int) -> None:
        """Sends every subscription again (resuming), then every unanswered request."""
        awaiting = {p.frame["subscription"].get("id") for p in self._pending.values()
                    if p.frame.get("type") == "subscribe" and p.kind == "request"}
        for sub in list(self._subs.values()):
            if sub.id not in awaiting:
                await self._resubscribe(ws, sub, generation)
        # Requests made while this ran are sent here too, until none is left: only then
        # does `_request` send on its own.
        while True:
            unsent = sorted(i for i, p in self._pending.items() if p.sent_on != generation)
            if not unsent:
                return
            for request_id in unsent:
                p = self._pending.get(request_id)
                if p is not None:
                    p.sent_on = generation
                    await ws.send(json.dumps(p.frame))

    async def _resubscribe(self, ws: Any, sub: Subscription, generation: int,
                           attempts: int = 0) -> None:
        frame = {"type": "subscribe", "subscription": sub.resume_frame(),
                 "request_id": self._next_id}
        future: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = _Pending(frame, False, future, kind="resubscribe",
                                                sent_on=generation, subscription=sub,
                                                attempts=attempts)
        self._next_id += 1
        await ws.send(json.dumps(frame))

    def _lost(self) -> None:
        """The connection dropped: calls that are not retried fail now."""
        for request_id, p in list(self._pending.items()):
            if p.kind == "resubscribe":
                del self._pending[request_id]  # the next connection restores it anew
            elif not p.retry:
                del self._pending[request_id]
                if not p.future.done():
                    p.future.set_exception(ConnectionLost("the connection dropped before the reply"))

    async def _receive(self, raw: Union[str, bytes]) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            log.warning("switchyard: a frame that is not JSON")
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        if kind in ("event", "replay_complete", "dropped", "gap"):
            sub = self._subs.get(str(msg.get("subscription_id")))
            if sub is not None:
                await sub.deliver(msg)
            return
        request_id = msg.get("request_id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            if kind == "error":
                log.warning("switchyard: server error: %s", msg)
            return
        # Replies come in command order: a confirmed ack before this reply succeeded.
        for earlier_id, p in list(self._pending.items()):
            if p.kind == "ack" and earlier_id < request_id and not p.future.done():
                p.future.set_result(None)
        p = self._pending.pop(request_id, None)
        if p is None:
            return
        if p.kind == "resubscribe":
            self._resubscribed(p, msg)
            return
        if p.future.done():  # its caller stopped waiting
            return
        verdict, detail = judge(p.retry, p.earlier, msg)
        if verdict == "retry":
            p.earlier = detail
            p.sent_on = -1
            self._pending[request_id] = p
            self._move_on = True
        elif detail.get("type") == "error":
            p.future.set_exception(error_from(detail, request_id))
        else:
            p.future.set_result(detail)

    def _resubscribed(self, p: _Pending, msg: Dict[str, Any]) -> None:
        sub = p.subscription
        if msg.get("type") != "error" or sub is None or self._subs.get(sub.id) is not sub:
            return
        error = error_from(msg)
        if "already active" in error.message and p.attempts < RESUBSCRIBE_RETRIES:
            # The server has not yet seen the previous connection end; try again soon.
            asyncio.get_running_loop().call_later(
                RESUBSCRIBE_DELAY, lambda: asyncio.ensure_future(
                    self._retry_resubscribe(sub, p.attempts + 1)))
            return
        log.warning("switchyard: resubscribe of %s refused: %s", sub.id, error)
        self._subs.pop(sub.id, None)
        sub.end(error)

    async def _retry_resubscribe(self, sub: Subscription, attempts: int) -> None:
        ws = self._ws
        if ws is None or self._subs.get(sub.id) is not sub:
            return  # a reconnect restores it anyway
        try:
            await self._resubscribe(ws, sub, self._generation, attempts)
        except _ws.ConnectionClosed:
            pass


def _with_id(event: Dict[str, Any]) -> Dict[str, Any]:
    if not isinstance(event, dict):
        raise TypeError("an event is a dict")
    if event.get("id") is None:
        return dict(event, id=str(uuid.uuid4()))
    return event


def _published(reply: Dict[str, Any]) -> Published:
    event_id, cursor = reply.get("event_id"), reply.get("cursor")
    if not isinstance(event_id, str) or not isinstance(cursor, int):
        raise ProtocolViolation(f"unexpected reply: {reply}")
    return Published(event_id, cursor, bool(reply.get("duplicate", False)))


def _batch_results(reply: Dict[str, Any]) -> List[Union[Published, ServerError]]:
    results = reply.get("results")
    if not isinstance(results, list):
        raise ProtocolViolation(f"unexpected reply: {reply}")
    return [error_from(r["error"]) if isinstance(r, dict) and "error" in r else _published(r)
            for r in results]


def _then(raw: "asyncio.Future[Any]", convert: Any) -> "asyncio.Future[Any]":
    """A future of `convert(result of raw)`."""
    out: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()

    def done(f: "asyncio.Future[Any]") -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
        elif f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
        else:
            try:
                out.set_result(convert(f.result()))
            except SwitchyardError as e:
                out.set_exception(e)
    raw.add_done_callback(done)
    # A caller that gives up (timeout) frees the window slot too.
    out.add_done_callback(lambda f: raw.cancel() if f.cancelled() else None)
    return out


def _http_url(ws_url: str, path: str) -> str:
    parts = urllib.parse.urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
