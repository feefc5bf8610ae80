"""Frames in and out, as pure helpers: ids for events, replies into results, futures
chained through a conversion, the HTTP address beside a WebSocket one.

Owns: the shapes of `published` / `published_batch` replies. Must not: touch the socket.
"""
from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from datetime import datetime, timezone
from typing import Any, Dict, List, Union

from .errors import ProtocolViolation, ServerError, SwitchyardError, error_from
from .subscription import Published


def with_id(event: Dict[str, Any]) -> Dict[str, Any]:
    if not isinstance(event, dict):
        raise TypeError("an event is a dict")
    if event.get("id") is None:
        return dict(event, id=str(uuid.uuid4()))
    return event


def published(reply: Dict[str, Any]) -> Published:
    event_id, cursor = reply.get("event_id"), reply.get("cursor")
    if not isinstance(event_id, str) or not isinstance(cursor, int):
        raise ProtocolViolation(f"unexpected reply: {reply}")
    return Published(event_id, cursor, bool(reply.get("duplicate", False)))


def batch_results(reply: Dict[str, Any]) -> List[Union[Published, ServerError]]:
    results = reply.get("results")
    if not isinstance(results, list):
        raise ProtocolViolation(f"unexpected reply: {reply}")
    return [error_from(r["error"]) if isinstance(r, dict) and "error" in r else published(r)
            for r in results]


def then(raw: "asyncio.Future[Any]", convert: Any) -> "asyncio.Future[Any]":
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


def http_url(ws_url: str, path: str) -> str:
    parts = urllib.parse.urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
