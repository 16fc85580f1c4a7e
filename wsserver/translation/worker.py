"""The translation worker: drains `translation_jobs` with FOR UPDATE SKIP LOCKED.

A job is leased (locked_until) rather than held in an open transaction, so no
database connection waits on a slow provider and a crashed worker's jobs come back
when the lease runs out. What the provider gave is stored at once; what it did not
is retried with exponential backoff, without limit: an outage delays translations,
it never loses them, and sending never waits for any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

import asyncpg

from .. import lang, metrics
from .providers import Provider, make_provider
from .service import Translations

if TYPE_CHECKING:
    from ..app import Node

log = logging.getLogger(__name__)

CHANNEL = "beseda_translation"

_CLAIM_SQL = """
UPDATE translation_jobs j
   SET locked_until = now() + make_interval(secs => $2), attempts = j.attempts + 1
 WHERE j.message_id IN (
        SELECT message_id FROM translation_jobs
         WHERE run_after <= now() AND (locked_until IS NULL OR locked_until < now())
         ORDER BY run_after
         LIMIT $1
           FOR UPDATE SKIP LOCKED)
RETURNING j.message_id, j.chat_id, j.attempts
"""


class TranslationWorker:
    """Runs on every node that has a provider; any number of nodes may run one."""

    def __init__(self, node: "Node", provider: Provider) -> None:
        self.node = node
        self.provider = provider
        self.translations = Translations(node, provider)
        self.concurrency = max(1, node.settings.translate_workers)
        self.batch = 8
        self.poll_s = 1.0
        self.backoff_base_s = 1.0
        self.backoff_cap_s = 300.0
        self.lease_s = node.settings.translate_timeout_s * 3 + 30
        self.gauge_s = 15.0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        await self._switch_on()
        with contextlib.suppress(Exception):
            self._listener = await asyncpg.connect(self.node.dsn)
            await self._listener.add_listener(CHANNEL, self._notified)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(i)) for i in range(self.concurrency)]
        self._tasks.append(loop.create_task(self._watch_queue()))
        log.info("translate.started provider=%s workers=%d", self.provider.name, self.concurrency)

    async def _switch_on(self) -> None:
        """Enables the enqueue triggers (off until a provider exists, see
        sql/0012) and the queue flag together. ALTER TABLE waits for a lock on
        `messages` that every send also takes, so it gives up after a short wait
        rather than stall sends behind a long import transaction, and tries again."""
        delay = 1.0
        while True:
            try:
                async with self.node.store.connection() as conn, conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '2s'")
                    disabled = await conn.fetchval(
                        """SELECT count(*) FROM pg_trigger
                            WHERE tgrelid = 'messages'::regclass AND tgenabled = 'D'
                              AND tgname IN ('messages_translation_insert',
                                             'messages_translation_edit')""")
                    if disabled:
                        await conn.execute(
                            "ALTER TABLE messages ENABLE TRIGGER messages_translation_insert;"
                            "ALTER TABLE messages ENABLE TRIGGER messages_translation_edit")
                    await conn.execute(
                        "UPDATE translation_settings SET enabled = true WHERE NOT enabled")
                return
            except asyncpg.LockNotAvailableError:
                log.warning("translate.switch_on_waiting retry_in=%.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _notified(self, *_args: Any) -> None:
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), timeout=2)
        await self.provider.close()

    async def _run(self, number: int) -> None:
        while True:
            try:
                jobs = await self._claim()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("translate.claim_failed worker=%d error=%s", number, type(exc).__name__)
                jobs = []
            if not jobs:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                continue
            for job in jobs:
                try:
                    await self._process(job["message_id"], job["attempts"])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("translate.job_failed message=%s", job["message_id"])
                    with contextlib.suppress(Exception):
                        await self._retry(job["message_id"], job["attempts"], "internal error")

    async def refresh_gauges(self) -> None:
        """Queue depth and the oldest job's age, for `BesedaTranslationBacklog`."""
        async with self.node.store.connection() as conn:
            row = await conn.fetchrow(
                """SELECT count(*) AS depth,
                          COALESCE(EXTRACT(epoch FROM now() - min(created_at)), 0) AS age
                     FROM translation_jobs""")
        metrics.TRANSLATION_QUEUE_DEPTH.set(row["depth"])
        metrics.TRANSLATION_OLDEST_AGE_SECONDS.set(float(row["age"]))

    async def _watch_queue(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except Exception as exc:  # the gauges keep their last value meanwhile
                log.warning("translate.gauges_failed error=%s", type(exc).__name__)
            await asyncio.sleep(self.gauge_s)

    async def _claim(self) -> list[Any]:
        async with self.node.store.connection() as conn:
            return list(await conn.fetch(_CLAIM_SQL, self.batch, self.lease_s))

    async def _process(self, message_id: int, attempts: int) -> None:
        async with self.node.store.connection() as conn:
            row = await conn.fetchrow(
                """SELECT chat_id, message_key, content, lang, deleted_at
                     FROM messages WHERE id = $1""",
                message_id,
            )
        if row is None or row["deleted_at"] is not None or row["lang"] not in lang.LANGS:
            await self._done(message_id, attempts)
            return
        content = dict(row["content"] or {})
        original = content.get(row["lang"])
        if not original:
            await self._done(message_id, attempts)
            return
        wanted = [code for code in lang.LANGS if code != row["lang"] and not content.get(code)]
        found: dict[str, str] = {}
        if wanted:
            cached = await self.translations.cached(row["chat_id"], row["message_key"], original)
            found.update({k: v for k, v in cached.items() if k in wanted and v})
            rest = [code for code in wanted if code not in found]
            found.update(await self.translations.ask(original, row["lang"], rest))
        if found:
            await self.translations.apply(message_id, original, found)
        missing = [code for code in wanted if code not in found]
        if missing:
            await self._retry(message_id, attempts, "provider gave no " + ",".join(missing))
        else:
            await self._done(message_id, attempts)

    async def _done(self, message_id: int, attempts: int) -> None:
        # An edit while we worked reset the job (attempts = 0): leave that one.
        async with self.node.store.connection() as conn:
            await conn.execute(
                "DELETE FROM translation_jobs WHERE message_id = $1 AND attempts = $2",
                message_id, attempts,
            )

    def backoff_s(self, attempts: int) -> float:
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, attempts - 1))
        return delay * (0.75 + random.random() / 2)

    async def _retry(self, message_id: int, attempts: int, reason: str) -> None:
        async with self.node.store.connection() as conn:
            await conn.execute(
                """UPDATE translation_jobs
                      SET run_after = now() + make_interval(secs => $3), locked_until = NULL,
                          last_error = $4
                    WHERE message_id = $1 AND attempts = $2""",
                message_id, attempts, self.backoff_s(attempts), reason[:200],
            )


async def start_translation(node: "Node") -> tuple[Translations, TranslationWorker | None]:
    """The node's translation side: always the REST helper, a worker when a
    provider is configured."""
    lang.detector()
    provider = make_provider(node.settings)
    if provider is None:
        return Translations(node, None), None
    worker = TranslationWorker(node, provider)
    await worker.start()
    return worker.translations, worker
