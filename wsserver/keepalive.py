"""Keepalive pings for every socket of a node, from one task.

websockets can ping on its own, but it runs one task per connection for it, which
costs about 1.8 KiB per idle socket (a tenth of what a socket costs us in all). Here
the node's sockets are spread over `SLOTS` buckets and one task visits a bucket every
`interval / SLOTS` seconds, so each socket is visited once per interval:

- no ping outstanding: send one (the payload goes into websockets' own
  `pending_pings`, so its pong handling acknowledges it as usual);
- the last ping still unanswered after `timeout`: close with 1011 and websockets'
  own reason, which `limits.count_close` counts as a ping timeout.

A ping is written without waiting for the socket to drain: a peer that does not
read is the slow-consumer rule's business, and must not hold up the visit of the
others. A socket is closed at the latest `interval + timeout` after its last ping
that was answered, as with websockets' keepalive.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from websockets.protocol import State

from .errors import CloseCode
from .limits import KEEPALIVE_TIMEOUT_REASON
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

SLOTS = 16
_OPEN = State.OPEN


class Keepalive:
    def __init__(self, interval_s: float, timeout_s: float) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._slots: list[set[Session]] = [set() for _ in range(SLOTS)]
        self._turn = 0
        self._placed = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def add(self, session: Session) -> None:
        if not self.enabled:
            return
        # Round robin: sockets opened together are pinged at different times.
        session.ka_slot = self._placed % SLOTS
        self._placed += 1
        self._slots[session.ka_slot].add(session)

    def remove(self, session: Session) -> None:
        if session.ka_slot >= 0:
            self._slots[session.ka_slot].discard(session)
            session.ka_slot = -1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.interval_s / SLOTS
        due = loop.time()
        while True:
            due += tick
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            if now - due > self.interval_s:
                due = now  # the loop was stalled for long: do not fire a burst of turns
            bucket = self._slots[self._turn]
            self._turn = (self._turn + 1) % SLOTS
            for session in list(bucket):
                try:
                    self.visit(session, now)
                except Exception:
                    log.exception("keepalive.visit_failed conn=%s", session.conn_id)

    def visit(self, session: Session, now: float) -> None:
        ws = session.ws
        if session.closing or ws.protocol.state is not _OPEN:
            return
        sent = session.ping_data
        if sent is not None and sent in ws.pending_pings:
            # Visits are timer wake-ups, a few ms either way: judged with half a
            # tick of slack, a timeout equal to the interval closes at the first
            # visit after it, not one interval later.
            if now - session.ping_sent >= self.timeout_s - self.interval_s / SLOTS / 2:
                session.flush()
                session.close(CloseCode.INTERNAL, KEEPALIVE_TIMEOUT_REASON)
            return
        data = os.urandom(4)
        while data in ws.pending_pings:
            data = os.urandom(4)
        ws.pending_pings[data] = (ws.loop.create_future(), now)
        ws.protocol.send_ping(data)
        session.ping_data = data
        session.ping_sent = now
        session.unflushed += 1  # the ping sits in the protocol's buffer: write it out
        session.flush()
