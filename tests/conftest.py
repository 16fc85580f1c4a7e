"""Session-wide real services: PostgreSQL (embedded, or DATABASE_URL) on uvloop.

`pg` is a handle that outage tests may stop and start (embedded only). Each test
module that needs isolation asks for `fresh_db`, a new database cloned from a
migrated template, which takes a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from wsserver import db
from wsserver.config import Settings
from wsserver.embedded_pg import EmbeddedPostgres

TEMPLATE_DB = "beseda_template"


def pytest_asyncio_loop_factories(config: object, item: object) -> dict[str, object]:
    """The suite runs on uvloop, as the server does; BESEDA_TEST_LOOP=asyncio switches."""
    if os.environ.get("BESEDA_TEST_LOOP", "uvloop") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


class PgHandle:
    """The test PostgreSQL: an admin DSN, and stop/start when it is ours."""

    def __init__(self, admin_dsn: str, embedded: EmbeddedPostgres | None) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded

    @property
    def controllable(self) -> bool:
        return self.embedded is not None

    def stop(self) -> None:
        assert self.embedded is not None
        self.embedded.stop(mode="immediate")

    def start(self) -> None:
        assert self.embedded is not None
        self.embedded.start()

    def dsn_for(self, name: str) -> str:
        return self.admin_dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg() -> Iterator[PgHandle]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield PgHandle(url, None)
        return
    root = Path(tempfile.mkdtemp(prefix="beseda-pg-"))
    server = EmbeddedPostgres(root)
    server.start()
    try:
        yield PgHandle(server.dsn, server)
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_db(pg: PgHandle) -> str:
    await db.recreate_database(pg.admin_dsn, TEMPLATE_DB)
    await db.migrate(pg.dsn_for(TEMPLATE_DB))
    return TEMPLATE_DB


async def create_database(pg: PgHandle, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return pg.dsn_for(name)


async def drop_database(pg: PgHandle, dsn: str) -> None:
    """Drops a test's database (a full run would otherwise leave gigabytes behind)."""
    name = dsn.rsplit("/", 1)[1]
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(pg.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def fresh_db(pg: PgHandle, template_db: str) -> AsyncIterator[str]:
    """A DSN of a new, migrated, empty database for this test alone, dropped after it."""
    dsn = await create_database(pg, template_db)
    yield dsn
    await drop_database(pg, dsn)


@pytest.fixture(scope="session")
async def shared_db(pg: PgHandle, template_db: str) -> str:
    """One migrated database shared by tests that create their own rows."""
    return await create_database(pg, template_db)


_ids = itertools.count(1_000_000 + (os.getpid() % 1000) * 1_000_000)


@pytest.fixture
def new_id() -> "itertools.count[int]":
    """Unique user/order ids for tests sharing a database."""
    return _ids


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1",
        ws_port=0,
        http_port=0,
        data_dir=tmp_path / "data",
        jwt_secret="test-secret-" + "x" * 32,
        compression=False,
        # Tests run the search indexer themselves (`node.search_index.drain()`), so
        # what is indexed when is theirs to say; one test runs it on its own timer.
        search_index_interval_s=3600.0,
    )


@pytest.fixture
async def node_factory(
    fresh_db: str, base_settings: Settings
) -> AsyncIterator[Any]:
    """Starts in-process nodes on one fresh database; all stopped at teardown."""
    from wsserver.app import Node

    nodes: list[Node] = []

    async def start(**overrides: Any) -> Node:
        settings = base_settings.with_(database_url=overrides.pop("database_url", fresh_db), **overrides)
        node = Node(settings)
        await node.start()
        nodes.append(node)
        return node

    start.dsn = fresh_db  # type: ignore[attr-defined]
    yield start
    for node in reversed(nodes):
        with contextlib.suppress(Exception):
            await node.stop(timeout=2)


@pytest.fixture
async def node(node_factory: Any) -> Any:
    return await node_factory()


@pytest.fixture
async def world(node: Any, new_id: Any) -> AsyncIterator[Any]:
    from tests.helpers import World

    w = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
    yield w
    await w.close()


@pytest.fixture
async def world_with(node_factory: Any, new_id: Any) -> AsyncIterator[Any]:
    """`await world_with(**Settings overrides)`: a node of its own and a World on it."""
    from tests.helpers import World

    worlds: list[World] = []

    async def make(**overrides: Any) -> World:
        node = await node_factory(**overrides)
        w = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
        w.node = node  # type: ignore[attr-defined]
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        await w.close()
