"""Hold-back: each user's sockets on this node get `chat.message.new` in `seq`
order, once.

With several nodes writing one chat, events reach a node in any order (local commits
at once, remote ones through Redis). The sequencer keeps, per (user, chat), the next
`seq` to emit; an event ahead of it waits up to `hold_s`, then the gap is filled from
the database. Events below it are duplicates and are dropped. State lives only while
the user has a socket here (`forget_user`), so a gap always means an event that was
routed to this node and is late or lost, never history from before the user came.
Pure bookkeeping plus one injected fill query; it knows nothing of sockets or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from . import metrics

log = logging.getLogger(__name__)

FILL_ATTEMPTS = 5
ATTACH_MARGIN_S = 0.05


@dataclass(slots=True)
class Held:
    """One event waiting for its turn on one user's sockets."""

    frame: bytes
    exclude: str | None
    author: int | None


# (chat_id, after_seq or None for "recent only", before_seq, lookback_s) ->
# [(seq, author, frame)] in seq order, seq < before_seq.
FillFn = Callable[
    [int, int | None, int, float], Awaitable[list[tuple[int, int | None, bytes]]]
]
# (user_id, chat_id, seq, event): put the event on this user's sockets here.
EmitFn = Callable[[int, int, int, Held], None]
# (user_id): a gap could not be filled; this user's sockets must resync.
GiveUpFn = Callable[[int], None]

Key = tuple[int, int]  # (user_id, chat_id)


@dataclass(slots=True)
class _Stream:
    expected: int | None  # next seq to emit; None until a baseline is known
    since: float  # monotonic time the user's first socket arrived here
    held: dict[int, Held] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    filling: bool = False
    attempts: int = 0


class Sequencer:
    def __init__(
        self,
        fill: FillFn,
        emit: EmitFn,
        give_up: GiveUpFn,
        *,
        hold_s: float = 0.15,
        lookback_s: float = 3.0,
    ) -> None:
        self._fill = fill
        self._emit = emit
        self._give_up = give_up
        self.hold_s = hold_s
        self.lookback_s = lookback_s
        self._streams: dict[Key, _Stream] = {}
        self._by_user: dict[int, set[int]] = {}
        self._arrived: dict[int, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- users come and go ------------------------------------------------------

    def user_arrived(self, user_id: int) -> None:
        """The user's first socket on this node is being opened."""
        self._arrived.setdefault(user_id, time.monotonic())

    def forget_user(self, user_id: int) -> None:
        """The user's last socket here closed: drop their streams."""
        self._arrived.pop(user_id, None)
        for chat_id in self._by_user.pop(user_id, ()):
            st = self._streams.pop((user_id, chat_id), None)
            if st is not None and st.timer is not None:
                st.timer.cancel()

    # -- events -----------------------------------------------------------------

    def offer(
        self,
        user_id: int,
        chat_id: int,
        seq: int,
        frame: bytes,
        exclude: str | None,
        author: int | None,
    ) -> None:
        """Takes one `chat.message.new` for one user; emits it (and whatever it
        unblocks) when it is next in order."""
        key = (user_id, chat_id)
        st = self._streams.get(key)
        if st is None:
            since = self._arrived.get(user_id)
            if since is None:
                return  # no socket of this user here (any more)
            st = _Stream(expected=1 if seq == 1 else None, since=since)
            self._streams[key] = st
            self._by_user.setdefault(user_id, set()).add(chat_id)
        if (st.expected is not None and seq < st.expected) or seq in st.held:
            metrics.ORDER_EVENTS.labels(result="duplicate").inc()
            return
        st.held[seq] = Held(frame, exclude, author)
        self._drain(key, st)
        if st.held:
            metrics.ORDER_EVENTS.labels(result="held").inc()
            self._arm(key, st)

    def _drain(self, key: Key, st: _Stream) -> None:
        if st.expected is None:
            return
        held = st.held
        while st.expected in held:
            self._emit(key[0], key[1], st.expected, held.pop(st.expected))
            st.expected += 1
        if not held and st.timer is not None:
            st.timer.cancel()
            st.timer = None

    def _arm(self, key: Key, st: _Stream, delay: float | None = None) -> None:
        if st.timer is not None or st.filling:
            return
        st.timer = asyncio.get_running_loop().call_later(
            self.hold_s if delay is None else delay, self._start_fill, key
        )

    def _start_fill(self, key: Key) -> None:
        st = self._streams.get(key)
        if st is None:
            return
        st.timer = None
        if not st.held:
            return
        st.filling = True
        task = asyncio.get_running_loop().create_task(self._fill_gap(key, st))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_gap(self, key: Key, st: _Stream) -> None:
        try:
            await self._fill_once(key, st)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            st.attempts += 1
            metrics.ORDER_EVENTS.labels(result="fill_failed").inc()
            log.warning(
                "order.fill_failed chat=%s attempt=%d err=%s",
                key[1],
                st.attempts,
                type(exc).__name__,
            )
            if st.attempts >= FILL_ATTEMPTS:
                self._skip_gap(key, st)
        finally:
            st.filling = False
        if st.held and self._streams.get(key) is st:
            self._arm(key, st, self.hold_s * (1 + st.attempts))

    async def _fill_once(self, key: Key, st: _Stream) -> None:
        chat_id = key[1]
        low = min(st.held)
        if st.expected is None:
            # No baseline yet: the messages just before the first one held that
            # were stored since this user arrived here (plus a margin).
            window = min(self.lookback_s, time.monotonic() - st.since + ATTACH_MARGIN_S)
            rows = await self._fill(chat_id, None, low, window)
            st.expected = rows[0][0] if rows else low
            metrics.ORDER_EVENTS.labels(result="baseline").inc()
        else:
            rows = await self._fill(chat_id, st.expected - 1, low, 0.0)
            metrics.ORDER_EVENTS.labels(result="filled").inc(len(rows))
        if self._streams.get(key) is not st:
            return  # the user left meanwhile
        for seq, author, frame in rows:
            if seq >= st.expected and seq not in st.held:
                st.held[seq] = Held(frame, None, author)
        st.attempts = 0
        self._drain(key, st)

    def _skip_gap(self, key: Key, st: _Stream) -> None:
        """The database will not say what is missing: jump ahead, and have the
        user resync rather than keep a socket open with a hole in it."""
        low = min(st.held)
        log.warning("order.gap_skipped chat=%s from=%s to=%s", key[1], st.expected, low)
        metrics.ORDER_EVENTS.labels(result="skipped").inc()
        st.expected = low
        st.attempts = 0
        self._give_up(key[0])
        self._drain(key, st)

    # -- introspection and shutdown ---------------------------------------------

    def pending(self) -> int:
        return sum(len(st.held) for st in self._streams.values())

    async def stop(self) -> None:
        for st in self._streams.values():
            if st.timer is not None:
                st.timer.cancel()
                st.timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
