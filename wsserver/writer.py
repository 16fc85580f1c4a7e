"""The batch writer: sends that arrive together are stored in one statement.

Sends are spread over a few lanes by chat id; each lane stores one batch at a time,
so a chat's messages are committed, acknowledged and fanned out in `seq` order on
this node, while batches for other chats proceed on other lanes. Each send gets its
own result: a bad row fails alone, a database outage answers `unavailable` at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import metrics
from .errors import BesedaError, Internal, Unavailable
from .store import SendResult, SendRow, Store

log = logging.getLogger(__name__)

Callback = Callable[["PendingSend", SendResult, float], None]

YIELD_EVERY_SENDS = 64


@dataclass(slots=True)
class PendingSend:
    row: SendRow
    callback: Callback
    context: Any
    received_at: float


class _Lane:
    def __init__(self, writer: "BatchWriter", number: int) -> None:
        self.writer = writer
        self.number = number
        self.queue: deque[PendingSend] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.busy = False
        self.conn: Any = None

    async def run(self) -> None:
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            batch: list[PendingSend] = []
            limit = self.writer.max_batch
            while self.queue and len(batch) < limit:
                batch.append(self.queue.popleft())
            metrics.WRITER_QUEUE.dec(len(batch))
            self.busy = True
            try:
                await self.writer.store_batch(self, batch)
            finally:
                self.busy = False


class BatchWriter:
    def __init__(self, store: Store, *, lanes: int = 2, max_batch: int = 64) -> None:
        self.store = store
        self.max_batch = max_batch
        self._lanes = [_Lane(self, i) for i in range(max(1, lanes))]
        self._started = False

    def start(self) -> None:
        for lane in self._lanes:
            lane.task = asyncio.get_running_loop().create_task(lane.run())
        self._started = True

    async def stop(self, timeout: float = 10.0) -> None:
        """Finishes what is queued (up to `timeout`), then stops the lanes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
            any(lane.queue or lane.busy for lane in self._lanes)
        ):
            await asyncio.sleep(0.01)
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
        for lane in self._lanes:
            if lane.task is not None:
                try:
                    await lane.task
                except asyncio.CancelledError:
                    pass
        for lane in self._lanes:
            if lane.conn is not None:
                await self.store.release(lane.conn)
                lane.conn = None
            while lane.queue:
                item = lane.queue.popleft()
                self._finish(item, SendResult(error=Unavailable("server is shutting down")), 0.0)

    @property
    def depth(self) -> int:
        return sum(len(lane.queue) for lane in self._lanes)

    def submit(self, row: SendRow, callback: Callback, context: Any = None) -> None:
        lane = self._lanes[row.chat_id % len(self._lanes)]
        lane.queue.append(PendingSend(row, callback, context, time.perf_counter()))
        metrics.WRITER_QUEUE.inc()
        lane.wakeup.set()

    async def write(self, row: SendRow) -> SendResult:
        """Awaitable form for callers outside the socket path (REST, internal API)."""
        fut: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()

        def done(_item: PendingSend, result: SendResult, _t: float) -> None:
            if not fut.done():
                fut.set_result(result)

        self.submit(row, done)
        return await fut

    async def _write(self, lane: _Lane, rows: list[SendRow]) -> list[SendResult]:
        """One batch on the lane's own connection (no pool round trip per batch)."""
        if lane.conn is None:
            lane.conn = await self.store.lease()
        try:
            return await self.store.write_sends(rows, lane.conn)
        except BaseException:
            conn, lane.conn = lane.conn, None
            await self.store.release(conn)
            raise

    @staticmethod
    def _requeue(lane: _Lane, items: list[PendingSend]) -> None:
        """Puts sends back at the head of the lane's queue, in their order."""
        lane.queue.extendleft(reversed(items))
        metrics.WRITER_QUEUE.inc(len(items))
        lane.wakeup.set()

    async def store_batch(self, lane: _Lane, batch: list[PendingSend]) -> None:
        # A send repeating a key already in this batch from the same sender is a
        # retry: it waits for the first and answers with its result. The same key
        # from anyone else is not theirs to see: it goes to the next batch, whose
        # check then finds the key taken (or the chat not theirs) against the
        # committed row.
        first: dict[tuple[int, str], int] = {}
        unique: list[PendingSend] = []
        followers: list[tuple[PendingSend, int]] = []
        deferred: list[PendingSend] = []
        for item in batch:
            key = (item.row.chat_id, item.row.message_key)
            at = first.get(key)
            if at is None:
                first[key] = len(unique)
                unique.append(item)
            elif unique[at].row.user_id == item.row.user_id:
                followers.append((item, at))
            else:
                deferred.append(item)
        if deferred:
            self._requeue(lane, deferred)

        started = time.perf_counter()
        try:
            results = await self._write(lane, [item.row for item in unique])
        except BesedaError as exc:
            results = [SendResult(error=exc) for _ in unique]
        except Exception:
            log.exception("writer.batch_failed size=%d", len(unique))
            results = [SendResult(error=Internal()) for _ in unique]
        committed = time.perf_counter()
        metrics.WRITER_BATCH_SIZE.observe(len(unique))
        metrics.WRITER_BATCH_SECONDS.observe(committed - started)

        for n, (item, result) in enumerate(zip(unique, results, strict=False), start=1):
            metrics.SEND_TO_COMMIT.observe(committed - item.received_at)
            self._finish(item, result, committed)
            if n % YIELD_EVERY_SENDS == 0:
                # A large batch (BESEDA_WRITER_MAX_BATCH raised) is thousands of
                # frames: fan it out in slices so other lanes' acks and the socket
                # reads are not held up. This lane takes its next batch only after the
                # whole fan-out, so a chat's messages still go out in seq order.
                # (Sending the next batch before this fan-out was tried once and not
                # kept: at 7,800 msgs/s in chats of 2 the acks fell further behind, in
                # probes too noisy at that rate to say by how much.)
                await asyncio.sleep(0)
        # A follower whose first stored nothing (refused, or failed) is a send of its
        # own (a corrected retry), not a repeat of a stored message: it goes first into
        # the next batch and gets its own answer.
        again = [item for item, at in followers if results[at].message is None]
        if again:
            self._requeue(lane, again)
        for item, at in followers:
            res = results[at]
            if res.message is not None:
                self._finish(item, SendResult(message=res.message, duplicate=True, members=[]),
                             committed)

    @staticmethod
    def _finish(item: PendingSend, result: SendResult, committed: float) -> None:
        try:
            item.callback(item, result, committed)
        except Exception:
            log.exception("writer.callback_failed")
