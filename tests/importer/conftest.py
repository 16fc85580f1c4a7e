"""Fixtures for the importer tests: a generated export and a second database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from importer_helpers import generate

from tests.conftest import create_database, drop_database


@pytest.fixture(scope="session")
def std_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 conversations x 20 messages, seed 7: every hostile case at least once."""
    return generate(tmp_path_factory.mktemp("export") / "ex", 300, 20, 7)


@pytest.fixture
async def second_db(pg: Any, template_db: str) -> AsyncIterator[str]:
    """Another migrated, empty database, to compare two imports."""
    dsn = await create_database(pg, template_db)
    yield dsn
    await drop_database(pg, dsn)
