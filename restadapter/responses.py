"""Response shapes: `{"data": ...}` (with `meta` for pages) and `{"error": {...}}`,
and the handlers that turn every failure into the latter."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from wsserver.errors import BesedaError, Internal

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "bad_request", 409: "conflict", 413: "too_large", 415: "bad_request",
    429: "rate_limited", 503: "unavailable",
}


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def ok(data: Any, status: int = 200, meta: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"data": data}
    if meta is not None:
        body["meta"] = meta
    return JSON(body, status_code=status)


def page_meta(page: int, per_page: int, has_more: bool) -> dict[str, Any]:
    return {"page": page, "per_page": per_page, "has_more": has_more}


def error(status: int, code: str, message: str, **extra: Any) -> Response:
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    if "retry_after_ms" in extra:
        headers = {"Retry-After": str(max(1, int(extra["retry_after_ms"]) // 1000))}
    return JSON({"error": {"code": code, "message": message, **extra}}, status, headers)


async def on_beseda_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BesedaError)
    if exc.http_status >= 500 and exc.code == "internal":
        log.error("rest.internal message=%s", exc.message)
    return error(exc.http_status, exc.code, exc.message, **exc.extra)


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    message = {404: "no such endpoint", 405: "method not allowed"}.get(
        exc.status_code, str(exc.detail).lower()
    )
    return error(exc.status_code, code, message)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("rest.failed path=%s", request.url.path, exc_info=exc)
    e = Internal()
    return error(e.http_status, e.code, e.message)


Handler = Callable[[Request], Awaitable[Response]]


def endpoint(fn: Handler) -> Handler:
    """Runs a handler; a BesedaError becomes its JSON error, anything else a logged
    500 with a fixed message (the traceback goes to the log, never to the client)."""

    @functools.wraps(fn)
    async def run(request: Request) -> Response:
        try:
            return await fn(request)
        except BesedaError as exc:
            return await on_beseda_error(request, exc)
        except Exception as exc:
            return await on_unexpected(request, exc)

    return run
