"""Where the database comes from, the asyncpg pool, and the migration runner.

Migrations are the plain files in sql/ (NNNN_name.sql), applied in order under a
PostgreSQL advisory lock, each in its own transaction, recorded in schema_migrations.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import asyncpg

from .config import Settings
from .embedded_pg import EmbeddedPostgres

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x6265_7365_6461  # "beseda"
EMBEDDED_DB_NAME = "beseda"


def sql_dir() -> Path:
    override = os.environ.get("BESEDA_SQL_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "sql"


def migrations() -> list[tuple[str, str]]:
    files = sorted(p for p in sql_dir().glob("*.sql") if p.name[:4].isdigit())
    return [(p.stem, p.read_text()) for p in files]


async def ensure_database(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()
    return _dsn_for(admin_dsn, name)


async def recreate_database(admin_dsn: str, name: str) -> str:
    """An empty database `name`, dropped first if it exists (benchmarks, tests)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _dsn_for(admin_dsn, name)


def _dsn_for(admin_dsn: str, name: str) -> str:
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


async def resolve_database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """DATABASE_URL when set; otherwise an embedded cluster under the data folder."""
    if settings.database_url:
        return settings.database_url, None
    pg = EmbeddedPostgres(settings.data_dir / "pg")
    pg.start()
    dsn = await ensure_database(pg.dsn, EMBEDDED_DB_NAME)
    return dsn, pg


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "server_settings": {
            "application_name": "beseda",
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "idle_in_transaction_session_timeout": "30000",
        },
        "command_timeout": settings.db_statement_timeout_ms / 1000 + 5,
    }
    if settings.pgbouncer:
        # pgbouncer in transaction mode: no named prepared statements survive, and
        # it refuses startup parameters it does not know (statement_timeout ...),
        # so the statement timeout is enforced by the client (docs/limits.md).
        kwargs["statement_cache_size"] = 0
        kwargs["server_settings"] = {"application_name": "beseda"}
        kwargs["command_timeout"] = settings.db_statement_timeout_ms / 1000
    return kwargs


async def create_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        max_inactive_connection_lifetime=60,
        **connect_kwargs(settings),
    )
    assert pool is not None
    return pool


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied by this call.

    Each migration runs in its own transaction under a transaction-scoped advisory
    lock, so concurrent migrators (and pgbouncer in transaction mode, where a
    session lock could stay behind on a pooled server connection) are safe.
    """
    applied_now: list[str] = []
    # No statement cache: through pgbouncer named statements do not survive.
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        for name, text in migrations():
            digest = hashlib.sha256(text.encode()).hexdigest()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
                done = await conn.fetchval(
                    "SELECT checksum FROM schema_migrations WHERE name = $1", name
                )
                if done is not None:
                    if done != digest:
                        log.warning("migrate.changed name=%s (applied version kept)", name)
                    continue
                log.info("migrate.apply name=%s", name)
                await conn.execute(text)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                    name,
                    digest,
                )
            applied_now.append(name)
    finally:
        await conn.close()
    return applied_now


NODE_LOCK_ID = 0x6265_7365_6467  # held shared by every node, exclusively by a bulk import


class SchemaIncomplete(RuntimeError):
    """the schema is not whole (a bulk import has indexes left to build, or runs)"""


class NodePresence:
    """A node's standing claim on its database, for the bulk importer to see.

    Every node holds the advisory lock NODE_LOCK_ID shared, on a connection of its
    own, for as long as it runs; `beseda import-twilio --bulk` takes it exclusively
    for its whole run before it drops the indexes of `messages`. So the two exclude
    each other whichever comes first, with no window between a check and an action
    (importer/bulk.py). A node also refuses a database whose indexes a bulk import
    dropped and has not built again (`import_deferred` rows): without them every send
    would scan, and the unique keys that make sends idempotent would not hold.

    If the connection is lost (the database restarted), it is opened again and the
    lock taken again at the next `keep` call (every few seconds from the node).
    Through pgbouncer in transaction mode a session lock means nothing, so there is
    no claim: the bulk importer then relies on its check of connected nodes alone.
    """

    APPLICATION = "beseda-presence"  # not counted with the pool's `beseda` connections

    def __init__(self, dsn: str, settings: Settings) -> None:
        self.dsn = dsn
        self.settings = settings
        self.conn: asyncpg.Connection | None = None

    async def _connect(self) -> asyncpg.Connection:
        kwargs = connect_kwargs(self.settings)
        kwargs["server_settings"] = {**kwargs["server_settings"],
                                     "application_name": self.APPLICATION}
        return await asyncpg.connect(self.dsn, **kwargs)

    async def claim(self) -> None:
        conn = await self._connect()
        try:
            if not self.settings.pgbouncer and not await conn.fetchval(
                    "SELECT pg_try_advisory_lock_shared($1)", NODE_LOCK_ID):
                raise SchemaIncomplete(
                    "a bulk import (beseda import-twilio --bulk) is running against this "
                    "database; start the node when it has finished")
            await self._check_deferred(conn)
        except BaseException:
            await conn.close()
            raise
        if self.settings.pgbouncer:
            await conn.close()  # no session lock to hold
        else:
            self.conn = conn

    @staticmethod
    async def _check_deferred(conn: asyncpg.Connection) -> None:
        names = await conn.fetchval(
            "SELECT string_agg(name, ', ' ORDER BY name) FROM import_deferred")
        if names:
            raise SchemaIncomplete(
                "a bulk import (beseda import-twilio --bulk) has not built these yet: "
                f"{names}; run the importer again to finish it")

    async def keep(self) -> None:
        """Takes the claim again if its connection was lost; never raises."""
        if self.settings.pgbouncer or (self.conn is not None and not self.conn.is_closed()):
            return
        try:
            conn = await self._connect()
        except Exception:  # the database is still away: next time
            return
        try:
            held = await conn.fetchval("SELECT pg_try_advisory_lock_shared($1)", NODE_LOCK_ID)
        except Exception:
            conn.terminate()
            return
        if not held:
            log.error("node.presence_lost a bulk import holds the database; this node "
                      "keeps serving but should be stopped until the import has finished")
            conn.terminate()
            return
        self.conn = conn
        log.info("node.presence_restored")

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.close()
        self.conn = None
