"""Connection admission (per IP, per user), handshake accounting and close-code
classification for the WebSocket shell. Bookkeeping on the event loop; no I/O.

The per-connection limits (rate, pending requests, frame and text size, send queue)
live where they are enforced: `server._dispatch`, `protocol.codec`, `session.push`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request

from . import metrics
from .errors import CloseCode

KEEPALIVE_TIMEOUT_REASON = "keepalive ping timeout"  # as websockets words it
ABNORMAL_CLOSURE = 1006


class ConnectionLimiter:
    """Open connections per client IP on this node; a limit of 0 switches it off.

    The count moves when a connection opens and closes, so handshakes in flight at
    the same moment can pass the limit by at most their own number.
    """

    def __init__(self, max_per_ip: int) -> None:
        self.max_per_ip = max_per_ip
        self.by_ip: dict[str, int] = {}

    def ip_full(self, ip: str) -> bool:
        return self.max_per_ip > 0 and self.by_ip.get(ip, 0) >= self.max_per_ip

    def opened(self, ip: str) -> None:
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1

    def closed(self, ip: str) -> None:
        left = self.by_ip.get(ip, 0) - 1
        if left > 0:
            self.by_ip[ip] = left
        else:
            self.by_ip.pop(ip, None)


def peer_ip(conn: ServerConnection) -> str:
    """The client's IP as the socket sees it (a proxy's, behind one)."""
    address: Any = conn.remote_address
    if isinstance(address, (tuple, list)) and address:
        return str(address[0])
    return "unknown"


# The handshake's HTTP answer, as a `beseda_handshakes_total` outcome.
OUTCOME_BY_STATUS = {
    101: "ok", 401: "unauthorized", 429: "limited", 404: "not_found", 503: "draining",
}


_HANDSHAKE_DONE = Request(path="/", headers=Headers())


class TrackedConnection(ServerConnection):
    """A server connection that counts its handshake, once, by how it ended.

    The outcome follows the HTTP answer (OUTCOME_BY_STATUS; any other answer, such
    as websockets' own 400 or 426, is `failed`). websockets applies `open_timeout` by
    cancelling the handshake (`timeout`); a client that leaves before its request is
    complete gets no answer (`failed`).
    """

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        except asyncio.CancelledError:
            metrics.HANDSHAKES.labels(outcome="timeout").inc()
            raise
        except Exception:
            metrics.HANDSHAKES.labels(outcome="failed").inc()
            raise
        status = self.response.status_code if self.response is not None else 0
        metrics.HANDSHAKES.labels(outcome=OUTCOME_BY_STATUS.get(status, "failed")).inc()
        if status == 101:
            # Nothing reads the handshake's request and response after this, and
            # their headers are about 3 KiB per open socket (docs/capacity.md).
            # websockets tells the handshake phase by `request is None`, so the
            # request is swapped for one shared, empty stand-in; its parser keeps
            # the original in a local variable, so that one's headers are cleared.
            if self.request is not None:
                self.request.headers.clear()
            self.request = _HANDSHAKE_DONE
            self.response = None


def _server_closed_first(conn: ServerConnection) -> bool:
    protocol = conn.protocol
    return protocol.close_sent is not None and (
        protocol.close_rcvd is None or protocol.close_rcvd_then_sent is False
    )


def close_code_of(conn: ServerConnection) -> int:
    """The code of the side that closed first: ours when the server initiated the
    close (even if the client never echoed it), else the client's; 1006 if none."""
    protocol = conn.protocol
    if _server_closed_first(conn):
        assert protocol.close_sent is not None
        return int(protocol.close_sent.code)
    if protocol.close_rcvd is not None:
        return int(protocol.close_rcvd.code)
    return ABNORMAL_CLOSURE


def close_origin(conn: ServerConnection) -> tuple[str, str]:
    """Who closed first ("server", "client" or "none") and, for the server, its reason.
    A client's own reason is never returned: it is client text, not for the log."""
    if _server_closed_first(conn):
        sent = conn.protocol.close_sent
        return "server", sent.reason if sent is not None else ""
    if conn.protocol.close_rcvd is not None:
        return "client", ""
    return "none", ""


def count_close(conn: ServerConnection) -> int:
    """Counts a finished connection's close by code, and the limit closes among them:
    1009 as a `size` rejection, 1003 and 1008 as `policy`, keepalive timeouts."""
    code = close_code_of(conn)
    metrics.CLOSES.labels(code=str(code)).inc()
    if _server_closed_first(conn):
        if code == CloseCode.TOO_BIG:
            metrics.REJECTIONS.labels(reason="size").inc()
        elif code in (CloseCode.POLICY, CloseCode.UNSUPPORTED_DATA):
            metrics.REJECTIONS.labels(reason="policy").inc()
        elif code == CloseCode.INTERNAL:
            sent = conn.protocol.close_sent
            if sent is not None and sent.reason == KEEPALIVE_TIMEOUT_REASON:
                metrics.PING_TIMEOUTS.inc()
    return code
