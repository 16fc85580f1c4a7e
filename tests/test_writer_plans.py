"""The plans the writer's statements get on a writer connection.

A writer connection keeps one generic plan per statement for its whole life, made
against whatever the tables hold when it first runs. The worst case is a new
database whose empty tables were just analyzed: the planner then expects one row
per table, and any plan is cheap. Every table must still be reached through an
index, row by row from the batch's keys: no table scan, no full-index walk (a
materialized one included), no merge or hash join. Otherwise the plan grows
slower with every message stored, for as long as the connection lives.
"""

from __future__ import annotations

import re

import asyncpg
import pytest

from wsserver import search_index
from wsserver import store as store_mod
from wsserver.store import Store

STATEMENTS = {
    "send": store_mod._SEND_SQL,
    "claim attachments": store_mod._CLAIM_ATTACHMENTS_SQL,
}
SCAN = re.compile(r"(\w[\w ]*?Scan)(?: using (\w+))? on (\w+)")
TABLES = {"messages", "chats", "chat_participants", "users", "message_attachments"}


def _scans(plan: str) -> list[tuple[str, str | None, str]]:
    return [m.groups() for m in SCAN.finditer(plan)]


async def _generic_plan(conn: asyncpg.Connection, sql: str) -> str:
    """The plan a prepared statement gets with `force_generic_plan` (set by the
    writer's connection, by the caller otherwise), on tables analyzed empty."""
    await conn.execute("ANALYZE")
    params = max(int(n) for n in re.findall(r"\$(\d+)", sql))
    await conn.execute("PREPARE plan_probe AS " + sql)
    try:
        nulls = ", ".join(["NULL"] * params)
        rows = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE plan_probe({nulls})")
    finally:
        await conn.execute("DEALLOCATE plan_probe")
    return "\n".join(r[0] for r in rows)


_KEY_COLUMNS_SQL = """
SELECT c.relname, array_agg(a.attname ORDER BY k.n) AS columns
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  CROSS JOIN LATERAL unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, n)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid IN (SELECT oid FROM pg_class WHERE relname = ANY($1::text[]))
 GROUP BY c.relname
"""


async def _key_columns(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """The key columns of each index on the writer's tables, in order."""
    rows = await conn.fetch(_KEY_COLUMNS_SQL, sorted(TABLES))
    return {r["relname"]: list(r["columns"]) for r in rows}


def _assert_keyed(name: str, plan: str, keys: dict[str, list[str]] | None = None) -> None:
    for node in ("Merge", "Hash Join", "Materialize", "Seq Scan"):
        assert node not in plan, f"{name}: {node}\n{plan}"
    table_scans = [s for s in _scans(plan) if s[2] in TABLES]
    assert table_scans, f"{name}: no table reached?\n{plan}"
    for kind, index, table in table_scans:
        assert kind in {"Index Scan", "Index Only Scan"} and index, f"{name}: {kind} on {table}\n{plan}"
    lines = plan.splitlines()
    # Each index scan is driven by a key, not a filter over the whole index.
    for line_no, line in enumerate(lines):
        if "Index Scan using" in line or "Index Only Scan using" in line:
            following = lines[line_no + 1:line_no + 3]
            assert following and "Index Cond" in following[0], f"{name}: unkeyed scan\n{plan}"
            index = re.search(r"Scan using (\w+)", line).group(1)  # type: ignore[union-attr]
            columns = (keys or {}).get(index)
            if columns is None:
                continue
            cond = following[0]
            # ...on its leading column (a condition on a later one walks the index
            # whole: the members of a chat read through (user_id, chat_id) did), by
            # equality or as the first of a row comparison (ROW(a, b) >= ROW(x, y)
            # on an index on (a, b): one entry visited).
            assert re.search(rf"\b{columns[0]} = |ROW\({columns[0]}\b", cond), \
                f"{name}: {index} not keyed on its first column {columns[0]}\n{plan}"
            # ...and not on a part of a key with the rest left to a filter: the
            # lookup of a message by (chat, key) or (chat, seq), planned on empty
            # tables, walked every message of the chat in (chat_id, rev) order and
            # compared each row's key (a generic plan is kept for the connection's
            # life, so the cost grew with the chat).
            if len(following) > 1 and following[1].strip().startswith("Filter:"):
                keyed = [c for c in columns if re.search(rf"\b{c}\b", cond)]
                assert keyed == columns, \
                    f"{name}: {index} keyed on {keyed} of {columns}, the rest filtered\n{plan}"


@pytest.mark.parametrize("name", sorted(STATEMENTS))
async def test_writer_statement_reaches_rows_by_key_only(fresh_db: str, name: str) -> None:
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=1,
                                     init=Store.connection_init())
    try:
        store = Store(pool)
        conn = await store.lease()
        try:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            _assert_keyed(name, await _generic_plan(conn, STATEMENTS[name]),
                          await _key_columns(conn))
        finally:
            await store.release(conn)
        # Given back to the pool, the connection plans like any other again.
        async with pool.acquire() as again:
            assert await again.fetchval("SHOW plan_cache_mode") == "auto"
            assert await again.fetchval("SHOW enable_mergejoin") == "on"
    finally:
        await pool.close()


# Statements that run in a transaction with KEYED_ONLY_LOCAL (on a pooled connection):
# the receipt flush, and the search indexer's read of the messages it took (a scan of
# `messages` per pass would grow with the table).
LOCAL_KEYED = {
    "flush": store_mod._MARK_DELIVERED_SQL,
    "index read": search_index._READ_SQL,
}


@pytest.mark.parametrize("name", sorted(LOCAL_KEYED))
async def test_local_keyed_statement_reaches_rows_by_key_only(fresh_db: str, name: str) -> None:
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        async with conn.transaction():
            await conn.execute(store_mod.KEYED_ONLY_LOCAL)
            _assert_keyed(name, await _generic_plan(conn, LOCAL_KEYED[name]),
                          await _key_columns(conn))
        assert await conn.fetchval("SHOW enable_hashjoin") == "on"  # LOCAL: gone at commit
    finally:
        await conn.close()


async def test_without_the_settings_the_planner_would_merge_or_scan(fresh_db: str) -> None:
    """The check above can fail: on the same empty tables, the planner left to
    itself picks something other than keyed nested loops for these statements."""
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        plans = [await _generic_plan(conn, sql) for sql in STATEMENTS.values()]
        plans.append(await _generic_plan(conn, store_mod._MARK_DELIVERED_SQL))
    finally:
        await conn.close()
    failures = 0
    for plan in plans:
        try:
            _assert_keyed("unset", plan)
        except AssertionError:
            failures += 1
    assert failures > 0
