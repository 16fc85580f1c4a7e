"""The migration runner: idempotent, ordered, recorded."""

from __future__ import annotations

import asyncpg

from wsserver import db


async def test_migrate_applies_nothing_twice(fresh_db: str) -> None:
    """A migrated database gets no second application and keeps its records."""
    assert await db.migrate(fresh_db) == []
    conn = await asyncpg.connect(fresh_db)
    try:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema='public'"
            )
        }
    finally:
        await conn.close()
    assert names == [name for name, _ in db.migrations()]
    assert {"chats", "chat_participants", "messages", "message_statuses",
            "message_attachments", "users", "orders"} <= tables
