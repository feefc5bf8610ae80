"""Typed errors: one exception class per error code of docs/protocol.md section 7.

Owns: the mapping from a wire `code` to a Python exception. Must not: know about sockets.
Catch `ServerError` for any refusal by the router (its `code` is the stable string), or a
subclass such as `InvalidEvent` or `Forbidden` for one case.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Type


class SwitchyardError(Exception):
    """Base of every error this package raises."""


class ServerError(SwitchyardError):
    """The router refused a command (an `error` reply, or a batch item's `error`)."""

    code: str = "unknown"

    def __init__(self, code: str, message: str, request_id: object = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class InvalidJson(ServerError):
    code = "invalid_json"


class UnknownCommand(ServerError):
    code = "unknown_command"


class InvalidEvent(ServerError):
    code = "invalid_event"


class InvalidSubscription(ServerError):
    code = "invalid_subscription"


class InvalidPattern(ServerError):
    code = "invalid_pattern"


class InvalidCondition(ServerError):
    code = "invalid_condition"


class UnknownSubscription(ServerError):
    code = "unknown_subscription"


class UnknownEvent(ServerError):
    code = "unknown_event"


class UnsupportedFrame(ServerError):
    code = "unsupported_frame"


class PayloadTooLarge(ServerError):
    code = "payload_too_large"


class RateLimited(ServerError):
    """Per-connection rate or a busy router. `retry_after` is the hint in seconds when
    the message carries one (`retry in 3 ms`), else None ("retry shortly")."""

    code = "rate_limited"

    @property
    def retry_after(self) -> Optional[float]:
        m = re.search(r"retry in (\d+) ms", self.message)
        return int(m.group(1)) / 1000.0 if m else None


class TooManySubscriptions(ServerError):
    code = "too_many_subscriptions"


class Unauthorized(ServerError):
    """Missing or invalid credential: the WebSocket upgrade was refused with HTTP 401."""

    code = "unauthorized"


class Forbidden(ServerError):
    code = "forbidden"


class Internal(ServerError):
    code = "internal"


class Unavailable(ServerError):
    """Cluster mode: the node cannot reach the shared log; nothing was stored."""

    code = "unavailable"


class ConnectionLost(SwitchyardError):
    """The connection dropped before the reply to a call that is not retried."""


class ClientClosed(SwitchyardError):
    """The client was closed."""


class ClientFailed(SwitchyardError):
    """The client gave up reconnecting (`max_attempts` failures in a row)."""


class RequestTimeout(SwitchyardError, TimeoutError):
    """No reply within the client's `request_timeout` (reconnects included)."""


class ProtocolViolation(SwitchyardError):
    """The server sent something this client cannot read (a reply of the wrong shape)."""


_BY_CODE: Dict[str, Type[ServerError]] = {
    cls.code: cls
    for cls in (
        InvalidJson, UnknownCommand, InvalidEvent, InvalidSubscription, InvalidPattern,
        InvalidCondition, UnknownSubscription, UnknownEvent, UnsupportedFrame,
        PayloadTooLarge, RateLimited, TooManySubscriptions, Unauthorized, Forbidden,
        Internal, Unavailable,
    )
}


def error_from(error: object, request_id: object = None) -> ServerError:
    """The exception for an `error` frame or a batch item's `error` object. An unknown
    code (a newer server) is a plain `ServerError` carrying it."""
    if not isinstance(error, dict):
        return ServerError("unknown", repr(error), request_id)
    code = error.get("code")
    code = code if isinstance(code, str) else "unknown"
    message = error.get("message")
    message = message if isinstance(message, str) else ""
    return _BY_CODE.get(code, ServerError)(code, message, request_id)
