"""Every error that reaches a client, mapped to its wire code, and the close codes.

    BesedaError                      code            http  retryable
    ├── BadRequest                   bad_request     400
    ├── Unauthorized                 unauthorized    401
    ├── Forbidden                    forbidden       403
    ├── NotFound                     not_found       404
    ├── Conflict                     conflict        409
    ├── TooLarge                     too_large       413
    ├── RateLimited                  rate_limited    429   yes (retry_after_ms)
    ├── Unavailable                  unavailable     503   yes (same message_key)
    └── Internal                     internal        500   (a bug: fixed message)

Messages are short lowercase facts with no user data.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class BesedaError(Exception):
    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message or self.code.replace("_", " "))
        self.message = message or self.code.replace("_", " ")
        self.extra = extra

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.extra)
        return body


class BadRequest(BesedaError):
    code = "bad_request"
    http_status = 400


class Unauthorized(BesedaError):
    code = "unauthorized"
    http_status = 401


class Forbidden(BesedaError):
    code = "forbidden"
    http_status = 403


class NotFound(BesedaError):
    code = "not_found"
    http_status = 404


class Conflict(BesedaError):
    code = "conflict"
    http_status = 409


class TooLarge(BesedaError):
    code = "too_large"
    http_status = 413


class RateLimited(BesedaError):
    code = "rate_limited"
    http_status = 429
    retryable = True

    def __init__(self, retry_after_ms: int, message: str = "rate limit exceeded") -> None:
        super().__init__(message, retry_after_ms=int(retry_after_ms))
        self.retry_after_ms = int(retry_after_ms)


class Unavailable(BesedaError):
    code = "unavailable"
    http_status = 503
    retryable = True


class Internal(BesedaError):
    code = "internal"
    http_status = 500

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)


class CloseCode(IntEnum):
    """WebSocket close codes and what the client should do on each."""

    NORMAL = 1000  # done; reconnect when needed
    UNSUPPORTED_DATA = 1003  # binary frame: fix the client, then reconnect
    POLICY = 1008  # repeated abuse: back off before reconnecting
    TOO_BIG = 1009  # frame over the limit: fix the client, then reconnect
    INTERNAL = 1011  # server bug: reconnect with backoff
    SERVICE_RESTART = 1012  # drain or shutdown: reconnect (elsewhere), chats.sync
    TOKEN_EXPIRED = 4001  # get a fresh token, reconnect, chats.sync
    RATE = 4008  # flooding: back off, reconnect, chats.sync
    SLOW_CONSUMER = 4009  # send queue full: reconnect, chats.sync
    TOO_MANY_CONNECTIONS = 4029  # per-user/IP limit: close another device first


CLOSE_REASONS: dict[int, str] = {
    CloseCode.UNSUPPORTED_DATA: "binary frames are not supported",
    CloseCode.POLICY: "policy violation",
    CloseCode.TOO_BIG: "frame too big",
    CloseCode.SERVICE_RESTART: "service restart",
    CloseCode.TOKEN_EXPIRED: "token expired",
    CloseCode.RATE: "rate limit exceeded",
    CloseCode.SLOW_CONSUMER: "send queue full: resume with chats.sync",
    CloseCode.TOO_MANY_CONNECTIONS: "too many connections",
}
