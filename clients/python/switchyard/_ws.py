"""Opening a WebSocket with whichever `websockets` is installed (10 to 17).

Owns: the differences between the library's implementations (13+ has
`websockets.asyncio.client`, taking `additional_headers`; older versions only the legacy
client, taking `extra_headers`), and reading the HTTP status of a refused upgrade. Must
not: speak the protocol.
"""
from __future__ import annotations

from typing import Any, Optional

try:  # websockets >= 13
    from websockets.asyncio.client import connect as _connect

    _HEADERS = "additional_headers"
except ImportError:  # websockets 10 to 12: the legacy implementation
    from websockets.client import connect as _connect  # type: ignore[no-redef]

    _HEADERS = "extra_headers"

from websockets.exceptions import ConnectionClosed

__all__ = ["open_socket", "refused_status", "ConnectionClosed"]

#: Largest frame accepted from the server. Events are at most `max_event_bytes` (1 MiB by
#: default) plus the envelope; websockets' own default (1 MiB) would cut a large one off.
MAX_FRAME_BYTES = 64 << 20


async def open_socket(url: str, token: Optional[str], open_timeout: float, ssl: Any) -> Any:
    """A connected WebSocket; raises what websockets raises when it cannot connect."""
    kwargs: dict = {
        "open_timeout": open_timeout,
        # The server echoes a close frame at once but ends TCP later, on a timer of its
        # own: waiting for that would add up to `close_timeout` to every close.
        "close_timeout": 0.2,
        "max_size": MAX_FRAME_BYTES,
    }
    if token is not None:
        kwargs[_HEADERS] = {"Authorization": f"Bearer {token}"}
    if ssl is not None:
        kwargs["ssl"] = ssl
    return await _connect(url, **kwargs)


def refused_status(exc: BaseException) -> Optional[int]:
    """The HTTP status of an upgrade the server refused, else None."""
    response = getattr(exc, "response", None)  # InvalidStatus (13+)
    status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(exc, "status_code", None)  # InvalidStatusCode (legacy)
    return status if isinstance(status, int) else None
