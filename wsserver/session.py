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
from collections.abc import Set as AbstractSet

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from . import metrics
from .auth import Identity
from .errors import CLOSE_REASONS, CloseCode

log = logging.getLogger(__name__)

_conn_counter = itertools.count(1)
REPLY_ROOM = 4  # replies may use this many send-queue sizes before the socket is shed
HEAVY_IN_FLIGHT = 4  # history/sync requests of one socket served at once
_OPEN = State.OPEN
_EVENTS_SENT = {kind: metrics.EVENTS_SENT.labels(kind=kind) for kind in
                ("ack", "error", "event", "message", "typing", "status")}

# Sockets with frames encoded but not yet written. Frames pushed during one
# callback (a writer batch's fan-out, say) go out in one write per socket, flushed
# once per event-loop iteration: fewer syscalls, same order.
_dirty: list["Session"] = []
_flush_scheduled = False


def _flush_dirty() -> None:
    global _flush_scheduled
    _flush_scheduled = False
    sessions = _dirty[:]
    _dirty.clear()
    for session in sessions:
        session.flush()


_NO_CHATS: AbstractSet[int] = frozenset()


def _with(chats: AbstractSet[int], chat_id: int) -> set[int]:
    """`chats` with `chat_id` added; the shared empty set is replaced by a new one."""
    own: set[int] = set() if chats is _NO_CHATS else chats  # type: ignore[assignment]
    own.add(chat_id)
    return own


def _drop(chats: AbstractSet[int], chat_id: int) -> bool:
    """Removes `chat_id` from `chats`; True when it was there."""
    if chat_id in chats:
        chats.discard(chat_id)  # type: ignore[attr-defined]
        return True
    return False


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
        "expiry_timer", "closing", "close_task", "heavy", "queue_limit", "unflushed",
        "ping_data", "ping_sent", "ka_slot", "__weakref__",
    )

    def __init__(
        self, ws: ServerConnection, identity: Identity, node_id: str, queue_limit: int,
        rate: float, burst: int,
    ) -> None:
        self.ws = ws
        self.conn_id = f"{node_id}-{next(_conn_counter)}"
        self.identity = identity
        self.opened_at = time.monotonic()
        # Most sockets never subscribe or type: they share one empty set until
        # they do (an empty set is 216 bytes; see docs/capacity.md).
        self.subscriptions: AbstractSet[int] = _NO_CHATS
        self.typing: AbstractSet[int] = _NO_CHATS
        self.member_until: dict[int, float] = {}
        self.pending = 0
        self.bucket = TokenBucket(rate, burst)
        self.violations = 0
        self.bad_frames = 0
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.close_task: asyncio.Task[None] | None = None
        self.heavy: asyncio.Semaphore | None = None  # made on the first large read
        self.queue_limit = queue_limit
        self.unflushed = 0
        self.ping_data: bytes | None = None  # the keepalive ping awaiting its pong
        self.ping_sent = 0.0
        self.ka_slot = -1  # the keepalive bucket, -1 when not in one

    @property
    def user_id(self) -> int:
        return self.identity.user_id

    def subscribe(self, chat_id: int) -> None:
        self.subscriptions = _with(self.subscriptions, chat_id)

    def unsubscribe(self, chat_id: int) -> None:
        _drop(self.subscriptions, chat_id)

    def start_typing(self, chat_id: int) -> None:
        self.typing = _with(self.typing, chat_id)

    def stop_typing(self, chat_id: int) -> bool:
        """True when this socket was typing in the chat."""
        return _drop(self.typing, chat_id)

    def push(self, frame: bytes, kind: str = "event") -> bool:
        """Queues one text frame; False when the socket is gone or was shed."""
        global _flush_scheduled
        ws = self.ws
        if self.closing or ws.protocol.state is not _OPEN:
            return False
        transport = ws.transport
        queued = self.unflushed + len(frame)
        if transport is not None:
            if queued > self.queue_limit and self.unflushed:
                # Frames coalesced this turn are not the peer's backlog: write them
                # out first, and judge the socket by what it has not taken.
                self.flush()
                queued = len(frame)
            queued += transport.get_write_buffer_size()
        # Replies to this socket's own requests are paced by the server (large
        # reads wait for the socket to drain, see ChatServer._gated), so they get
        # more room before the socket counts as a slow consumer; events do not.
        limit = self.queue_limit * REPLY_ROOM if kind in ("ack", "error") else self.queue_limit
        if queued > limit:
            metrics.SLOW_CONSUMER_CLOSES.inc()
            log.info("conn.slow_consumer conn=%s user=%s", self.conn_id, self.user_id)
            self.flush()
            self.close(CloseCode.SLOW_CONSUMER)
            return False
        try:
            ws.protocol.send_text(frame)
        except Exception as exc:  # the protocol left OPEN under us
            log.debug("conn.push_failed conn=%s err=%s", self.conn_id, type(exc).__name__)
            return False
        if not self.unflushed:
            _dirty.append(self)
            if not _flush_scheduled:
                _flush_scheduled = True
                asyncio.get_running_loop().call_soon(_flush_dirty)
        self.unflushed += len(frame)
        _EVENTS_SENT[kind].inc()
        return True

    def flush(self) -> None:
        """Writes every frame queued for this socket in one go."""
        if not self.unflushed:
            return
        self.unflushed = 0
        ws = self.ws
        chunks = ws.protocol.data_to_send()
        if not chunks:
            return
        transport = ws.transport
        if all(chunks) and transport is not None and not transport.is_closing():
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            return
        # An end-of-stream marker is among them: let websockets handle it.
        ws.protocol.writes[:0] = chunks
        try:
            ws.send_data()
        except Exception as exc:
            log.debug("conn.flush_failed conn=%s err=%s", self.conn_id, type(exc).__name__)

    def close(self, code: int, reason: str | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
        text = reason or CLOSE_REASONS.get(code, "")
        self.close_task = asyncio.get_running_loop().create_task(self._close(code, text))

    async def _close(self, code: int, reason: str) -> None:
        # websockets bounds the wait for the peer's close frame by close_timeout,
        # but not the wait for the socket to drain before our close frame goes
        # out: a peer that stopped reading would hold the socket open for ever.
        ws = self.ws
        try:
            await asyncio.wait_for(ws.close(code, reason), (ws.close_timeout or 5.0) + 5.0)
        except asyncio.TimeoutError:
            log.info("conn.close_forced conn=%s user=%s", self.conn_id, self.user_id)
            if ws.transport is not None:
                ws.transport.abort()
        except Exception as exc:
            log.debug("conn.close_failed conn=%s err=%s", self.conn_id, type(exc).__name__)

