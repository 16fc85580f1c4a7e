"""The search indexer: keeps message_grams in step with messages, off the send path.

Every node runs one. Each pass takes up to `batch` queued message ids (rows other
nodes hold are skipped, so nodes share the work), reads those messages, computes
their grams here (wsserver/search.py) and writes them, all in one transaction: a
node that dies mid-pass leaves its queue rows for the next pass. Two passes that
raced over one message write in rev order (`ON CONFLICT ... WHERE rev <`), so an
older content never replaces a newer one.

A message becomes findable through the index one pass after its commit (the
interval, 0.5 s by default, when the queue keeps up). Search rechecks every hit
against the message's text, so a late pass hides a new match until it runs and
never shows a stale one (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from . import metrics
from .errors import BesedaError
from .search import text_grams
from .store import KEYED_ONLY_LOCAL, Store
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

INTERVAL_S = 0.5
MIN_INTERVAL_S = 0.05
MAX_PAUSE_S = 10.0
# Queue entries per pass, and how long the node's loop rests between two passes
# while the queue holds more: that many times the last pass's own duration. A pass
# is one transaction whose PostgreSQL work (the grams' GIN index) competes for the
# same cores as the writer's batches; passes of 1,000 run back to back were bursts
# of 40-135 ms, and sends committed behind them. Measured at a steady 2,943 msgs/s
# in chats of 10, four 10 s runs each: ack p99 20-73 ms (mean 49) with passes of
# 1,000 back to back, 20-48 ms (mean 30) with passes of 250 and a rest as long as
# the pass. A backlog (after a burst of sends, an import) is then worked off at
# about half of the indexer's full speed: 11,000 short messages a second against
# 24,000 unpaced, on an idle machine (30,000 queued); under load, less.
BATCH = 250
BACKLOG_REST = 1.0
# Grams are computed on the event loop, which is handed back every SLICE_S (one
# message is at most about 10 ms: 4,000 random Han characters).
SLICE_S = 0.005
# Grams written per statement: a pass of long messages is written in several
# statements, so none nears the statement timeout (10 s by default).
GRAMS_PER_STATEMENT = 50_000
# How often the lag gauge is read from the queue itself (failed passes included).
LAG_READ_S = 5.0

_LAG_SQL = """
SELECT COALESCE(EXTRACT(epoch FROM now() - min(queued_at)), 0) FROM message_grams_queue
"""

# The queue has no index: rows are taken in heap order and deleted by their ctid.
_TAKE_SQL = """
DELETE FROM message_grams_queue q
 WHERE q.ctid = ANY (ARRAY(
    SELECT ctid FROM message_grams_queue LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING q.message_id, q.queued_at
"""

# Keyed by the ids taken, so that no plan (a generic one made while `messages` was
# empty included) ever walks the table: see tests/test_writer_plans.py.
_READ_SQL = """
SELECT m.id, m.rev, m.deleted_at IS NOT NULL AS gone,
       m.content ->> 'ru' AS ru, m.content ->> 'en' AS en, m.content ->> 'zh' AS zh
  FROM messages m WHERE m.id = ANY($1::bigint[])
"""

_PUT_SQL = """
INSERT INTO message_grams AS g (message_id, rev, grams)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])
    ON CONFLICT (message_id) DO UPDATE SET rev = EXCLUDED.rev, grams = EXCLUDED.grams
 WHERE g.rev < EXCLUDED.rev
"""


class SearchIndexer:
    def __init__(self, store: Store, interval_s: float = INTERVAL_S, batch: int = BATCH) -> None:
        self.store = store
        self.interval_s = max(interval_s, MIN_INTERVAL_S)
        self.batch = batch
        # Halved after a failed pass (down to one message) and restored after a good
        # one, so a pass of heavy messages that cannot finish does not block the queue.
        self.take = batch
        self._lag_read_at = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        pause = self.interval_s
        while True:
            await asyncio.sleep(pause)
            try:
                await self.drain(rest=BACKLOG_REST)
                pause = self.next_pause(pause, failed=False)
            except Exception as exc:  # a bad pass must not end the loop
                metrics.SEARCH_INDEX_ERRORS.inc()
                code = exc.code if isinstance(exc, BesedaError) else type(exc).__name__
                self.take = max(1, self.take // 2)
                pause = self.next_pause(pause, failed=True)
                log.warning("search_index.pass_failed error=%s take=%d retry_in=%.1fs",
                            code, self.take, pause)
            await self._read_lag()

    async def _read_lag(self) -> None:
        """The age of the oldest queue entry, from the queue (so a stuck indexer shows)."""
        now = time.monotonic()
        if now - self._lag_read_at < LAG_READ_S:
            return
        self._lag_read_at = now
        try:
            async with self.store.connection() as conn:
                metrics.SEARCH_INDEX_LAG_SECONDS.set(float(await conn.fetchval(_LAG_SQL)))
        except Exception as exc:  # the gauge keeps its last value
            log.debug("search_index.lag_read_failed error=%s", type(exc).__name__)

    def next_pause(self, pause: float, *, failed: bool) -> float:
        """The interval after a good pass; after a failed one, twice the last pause up
        to MAX_PAUSE_S, so a node whose database is away tries (and logs) less often."""
        return min(pause * 2, MAX_PAUSE_S) if failed else self.interval_s

    async def drain(self, *, rest: float = 0.0) -> int:
        """Runs passes until the queue looks empty; returns the messages indexed.
        With `rest`, waits that many times each full pass's duration before the
        next (BACKLOG_REST)."""
        total = 0
        while True:
            asked = self.take
            started = time.perf_counter()
            done = await self.run_once()
            self.take = self.batch  # a pass went through: full size again
            total += done
            if done < asked:
                return total
            if rest:
                await asyncio.sleep((time.perf_counter() - started) * rest)

    async def run_once(self) -> int:
        """One pass: up to `batch` queue entries indexed in one transaction; returns
        how many entries it took (a message queued twice is indexed once)."""
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute(KEYED_ONLY_LOCAL)
            taken = await conn.fetch(_TAKE_SQL, self.take)
            if not taken:
                metrics.SEARCH_INDEX_LAG_SECONDS.set(0)
                return 0
            oldest = min(r["queued_at"] for r in taken)
            rows = await conn.fetch(_READ_SQL, list({r["message_id"] for r in taken}))
            ids: list[int] = []
            revs: list[int] = []
            grams: list[str] = []
            held = 0
            handed_back = time.perf_counter()
            for r in rows:
                ids.append(r["id"])
                revs.append(r["rev"])
                g = "" if r["gone"] else text_grams(r["ru"], r["en"], r["zh"])
                grams.append(g)
                held += g.count(" ") + 1
                if held >= GRAMS_PER_STATEMENT:
                    await conn.execute(_PUT_SQL, ids, revs, grams)
                    ids, revs, grams, held = [], [], [], 0
                if time.perf_counter() - handed_back > SLICE_S:
                    await asyncio.sleep(0)
                    handed_back = time.perf_counter()
            if ids:
                await conn.execute(_PUT_SQL, ids, revs, grams)
        lag = (datetime.now(timezone.utc) - oldest).total_seconds()
        metrics.SEARCH_INDEXED.inc(len(rows))
        metrics.SEARCH_INDEX_LAG_SECONDS.set(max(0.0, lag))
        return len(taken)
