"""A node: the database, store, writer, bus, WebSocket server and HTTP app, wired
together and started and stopped in order. `beseda serve` runs one; tests run
several in one process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import uuid
from collections.abc import Generator
from typing import Any

import asyncpg
import uvicorn

from . import __version__, db, metrics
from .auth import TokenVerifier
from .bus.base import Bus
from .bus.memory import MemoryBus
from .config import Settings
from .embedded_pg import EmbeddedPostgres
from .registry import Registry
from .search_index import SearchIndexer
from .server import ChatServer
from .store import REPLY_PAGE_BYTES, Store
from .tasks import cancel_and_wait
from .writer import BatchWriter

log = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def tune_gc() -> None:
    """Fewer full collections on a busy node. Every object that lives through a
    young collection (a message in flight, a receipt waiting for its flush) counts
    towards a full one, which walks every object of the process and stops the loop
    for tens of milliseconds with thousands of sockets open. What exists at start-up
    (modules, the language model) is moved out of the collector's sight, and older
    generations are collected less often; garbage in cycles still goes, later."""
    gc.freeze()
    gc.set_threshold(2000, 50, 100)


# A pooled connection idle this long is closed by the pool; the store keeps the
# ones it is given back for as long before returning them (`Store.connection`).
IDLE_CONNECTION_S = 60.0
PRESENCE_CHECK_S = 5.0  # how soon a node takes its claim again after a database restart

# A shutdown step that has not finished by then is abandoned (and cancelled), so a
# stuck bus or provider connection cannot keep a stopping node alive.
STOP_PART_TIMEOUT_S = 10.0


async def _bounded(coro: Any, timeout: float, part: str) -> None:
    """Runs one shutdown step for at most `timeout` seconds, never raising. Unlike
    `wait_for`, it does not wait for a cancelled step to unwind either."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("node.stop_abandoned part=%s after_s=%s", part, timeout)
        task.cancel()
        return
    if not task.cancelled() and task.exception() is not None:
        log.warning("node.stop_failed part=%s error=%s", part, type(task.exception()).__name__)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = settings.node_id or uuid.uuid4().hex[:8]
        self.embedded_pg: EmbeddedPostgres | None = None
        self.dsn = ""
        self.pool: asyncpg.Pool | None = None
        self.http_port = 0
        self.ws_port = 0
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.search_index: SearchIndexer | None = None
        self.presence: db.NodePresence | None = None
        self._presence_task: asyncio.Task[None] | None = None

    async def start(self, *, migrate: bool = True) -> None:
        s = self.settings
        self.dsn, self.embedded_pg = await db.resolve_database_url(s)
        if migrate:
            applied = await db.migrate(self.dsn)
            if applied:
                log.info("migrate.done applied=%s", ",".join(applied))
        # Held for the node's life, so a bulk import cannot take the schema apart
        # under it (and this node cannot start while one does): db.NodePresence.
        self.presence = db.NodePresence(self.dsn, s)
        await self.presence.claim()
        self._presence_task = asyncio.get_running_loop().create_task(
            self._keep_presence(self.presence))
        # Each writer lane keeps one connection; reads need at least two more.
        pool_max = max(s.db_pool_max, s.writer_lanes + 2)
        if pool_max != s.db_pool_max:
            log.warning(
                "db.pool_raised max=%d lanes=%d (BESEDA_DB_POOL_MAX too small)",
                pool_max, s.writer_lanes,
            )
        self.pool = await asyncpg.create_pool(
            self.dsn,
            min_size=min(s.db_pool_min, pool_max),
            max_size=pool_max,
            max_inactive_connection_lifetime=IDLE_CONNECTION_S,
            init=Store.connection_init(),
            reset=Store.connection_reset(),
            **db.connect_kwargs(s),
        )
        self.store = Store(
            self.pool,
            default_lang=s.default_lang,
            acquire_timeout_s=s.db_acquire_timeout_s,
            page_bytes=min(REPLY_PAGE_BYTES, s.send_queue_bytes // 4),
            session_settings=not s.pgbouncer,
            keep_idle_s=IDLE_CONNECTION_S,
        )
        self.writer = BatchWriter(self.store, lanes=s.writer_lanes, max_batch=s.writer_max_batch)
        self.registry = Registry()
        self.bus: Bus = self._make_bus()
        self.verifier = TokenVerifier(s)
        self.server = ChatServer(
            s, self.store, self.writer, self.bus, self.registry, self.verifier, self.node_id
        )
        await self.bus.start()
        self._lag_task = asyncio.get_running_loop().create_task(metrics.watch_event_loop())
        metrics.watch_gc()
        tune_gc()
        self.writer.start()
        self.search_index = SearchIndexer(self.store, interval_s=s.search_index_interval_s)
        await self.search_index.start()
        await self.server.start()
        self.ws_port = self.server.port
        from .translation.worker import start_translation

        self.translations, self.translator = await start_translation(self)
        await self._start_http()
        log.info(
            "node.started node=%s ws=%s:%s http=%s:%s bus=%s",
            self.node_id, s.host, self.ws_port, s.host, self.http_port, self.bus.name,
        )

    def _make_bus(self) -> Bus:
        if self.settings.redis_url:
            from .bus.redis import RedisBus  # the multi-node path

            return RedisBus(
                self.settings.redis_url, self.registry, self.node_id,
                settings=self.settings, store=self.store,
            )
        return MemoryBus(self.registry)

    async def _start_http(self) -> None:
        from restadapter.app import build_app

        app = build_app(self)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.http_port))
        sock.listen(1024)
        sock.setblocking(False)
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, loop="none", lifespan="off", log_level="warning", access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.get_running_loop().create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)

    async def database_ready(self) -> bool:
        try:
            async with self.store.connection() as conn:
                await conn.fetchval("SELECT 1")
            return True
        except Exception:
            return False

    async def readiness(self) -> dict[str, bool]:
        """Database and bus reachable (each check bounded by ready_timeout_s), and
        the node accepting connections; sets `beseda_dependency_up`."""
        timeout = self.settings.ready_timeout_s

        async def bounded(check: Any) -> bool:
            try:
                return bool(await asyncio.wait_for(check, timeout))
            except Exception:
                return False

        database, bus = await asyncio.gather(
            bounded(self.database_ready()), bounded(self.bus.ready())
        )
        metrics.DEPENDENCY_UP.labels(dependency="database").set(1 if database else 0)
        metrics.DEPENDENCY_UP.labels(dependency="bus").set(1 if bus else 0)
        return {"database": database, "bus": bus, "accepting": self.server.accepting}

    def refresh_gauges(self) -> None:
        """Gauges read at scrape time rather than kept on the hot path."""
        metrics.BUILD_INFO.labels(version=__version__).set(1)
        if self.pool is not None:
            size = self.pool.get_size()
            idle = self.pool.get_idle_size() + self.store.idle_kept
            metrics.DB_POOL_SIZE.labels(state="idle").set(idle)
            metrics.DB_POOL_SIZE.labels(state="busy").set(size - idle)
            metrics.DB_POOL_SIZE.labels(state="max").set(self.pool.get_max_size())
        total = largest = 0
        for sessions in self.registry.by_user.values():
            for session in sessions:
                transport = session.ws.transport
                buffered = session.unflushed
                if transport is not None:
                    buffered += transport.get_write_buffer_size()
                total += buffered
                largest = max(largest, buffered)
        metrics.SEND_QUEUE_BUFFERED_BYTES.set(total)
        metrics.SEND_QUEUE_LARGEST_BYTES.set(largest)

    @staticmethod
    async def _keep_presence(presence: db.NodePresence) -> None:
        while True:
            await asyncio.sleep(PRESENCE_CHECK_S)
            await presence.keep()

    async def stop(self, timeout: float | None = None) -> None:
        """Drain: stop accepting, finish batches, close sockets with 1012, shut down."""
        t = self.settings.drain_timeout_s if timeout is None else timeout
        await self.server.drain(t)
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._http_task, timeout=10)
        if getattr(self, "translator", None) is not None:
            await _bounded(self.translator.stop(), STOP_PART_TIMEOUT_S, "translator")
        await _bounded(self.bus.stop(), STOP_PART_TIMEOUT_S, "bus")
        if self.search_index is not None:
            await self.search_index.stop()
        if self._lag_task is not None:
            self._lag_task.cancel()
        await cancel_and_wait(self._presence_task)
        if self.presence is not None:
            await _bounded(self.presence.close(), STOP_PART_TIMEOUT_S, "presence")
        if self.pool is not None:
            await self.store.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=5)
        log.info("node.stopped node=%s", self.node_id)
