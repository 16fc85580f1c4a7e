"""Fixtures for the importer tests: a generated export and a second database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from importer_helpers import generate


@pytest.fixture(scope="session")
def std_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 conversations x 20 messages, seed 7: every hostile case at least once."""
    return generate(tmp_path_factory.mktemp("export") / "ex", 300, 20, 7)


@pytest.fixture
async def second_db(pg: Any, template_db: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    yield pg.dsn_for(name)
