"""Per-connection state and the bounded push path to one socket.

A socket's send queue is its transport write buffer, bounded by `send_queue_bytes`:
an event that would go past the bound closes the socket with 4009 (the client
resumes with chats.sync). Nothing is ever dropped from a socket that stays open.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from . import metrics
from .auth import Identity
from .errors import CLOSE_REASONS, CloseCode

log = logging.getLogger(__name__)

_conn_counter = itertools.count(1)
_OPEN = State.OPEN


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 1.0


class Session:
    __slots__ = (
        "ws", "conn_id", "identity", "opened_at", "subscriptions", "typing",
        "member_until", "pending", "bucket", "violations", "bad_frames",
        "expiry_timer", "closing", "queue_limit", "__weakref__",
    )

    def __init__(
        self, ws: ServerConnection, identity: Identity, node_id: str, queue_limit: int,
        rate: float, burst: int,
    ) -> None:
        self.ws = ws
        self.conn_id = f"{node_id}-{next(_conn_counter)}"
        self.identity = identity
        self.opened_at = time.monotonic()
        self.subscriptions: set[int] = set()
        self.typing: set[int] = set()
        self.member_until: dict[int, float] = {}
        self.pending = 0
        self.bucket = TokenBucket(rate, burst)
        self.violations = 0
        self.bad_frames = 0
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.queue_limit = queue_limit

    @property
    def user_id(self) -> int:
        return self.identity.user_id

    def push(self, frame: bytes, kind: str = "event") -> bool:
        """Queues one text frame; False when the socket is gone or was shed."""
        ws = self.ws
        if self.closing or ws.protocol.state is not _OPEN:
            return False
        transport = ws.transport
        if transport is not None and transport.get_write_buffer_size() + len(frame) > self.queue_limit:
            metrics.SLOW_CONSUMER_CLOSES.inc()
            log.info("conn.slow_consumer conn=%s user=%s", self.conn_id, self.user_id)
            self.close(CloseCode.SLOW_CONSUMER)
            return False
        try:
            ws.protocol.send_text(frame)
            ws.send_data()
        except Exception as exc:  # the transport went away under us
            log.debug("conn.push_failed conn=%s err=%s", self.conn_id, type(exc).__name__)
            return False
        metrics.EVENTS_SENT.labels(kind=kind).inc()
        return True

    def close(self, code: int, reason: str | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
        text = reason or CLOSE_REASONS.get(code, "")
        asyncio.get_running_loop().create_task(self._close(code, text))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception as exc:
            log.debug("conn.close_failed conn=%s err=%s", self.conn_id, type(exc).__name__)

    def describe(self) -> dict[str, Any]:
        return {"conn": self.conn_id, "user": self.user_id}
