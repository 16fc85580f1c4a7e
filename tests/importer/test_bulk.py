"""`--bulk`: the indexes and keys of `messages` (and the foreign key and plain index of
`message_attachments`) dropped for the load and built back, exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from importer import cli
from wsserver import db

from importer_helpers import (
    REPO,
    clean_import_digest,
    importer_argv,
    importer_cmd,
    logical_digest,
    subprocess_env,
)
from test_import import check_database, check_report, expected

SCHEMA_SQL = """
SELECT 'index ' || indexdef FROM pg_indexes
 WHERE tablename IN ('messages', 'message_attachments')
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' '
       || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid IN ('messages'::regclass, 'message_attachments'::regclass)
ORDER BY 1
"""


async def messages_schema(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(SCHEMA_SQL)]
    finally:
        await conn.close()


async def _bulk_report(export: Path, dsn: str, data: Path, report: Path) -> dict[str, Any]:
    """One bulk run by a single writer that must succeed; its JSON report."""
    assert await cli.run_async(importer_argv(export, dsn, data, "--bulk", "--writers", "1",
                                             "--report", str(report))) == 0
    return json.loads(report.read_text())



async def test_bulk_import_is_exact_and_builds_every_index_back(
        fresh_db: str, std_export: Path, tmp_path: Path) -> None:
    """The same rows as a live-safe import; every index and key of `messages` is
    back, with the same definition; a second bulk run changes nothing."""
    schema = await messages_schema(fresh_db)
    assert any("messages_chat_seq_key" in s for s in schema)
    data = tmp_path / "data"
    r1 = tmp_path / "r1.json"
    assert await cli.run_async(importer_argv(std_export, fresh_db, data, "--bulk",
                                             "--batch-messages", "700",
                                             "--report", str(r1))) == 0
    report = json.loads(r1.read_text())
    check_report(report, expected(std_export))
    bulk = report["run"]["bulk"]
    # unique keys, plain indexes and foreign keys; never the primary key
    assert {"messages_chat_seq_key", "messages_chat_message_key_key", "messages_chat_rev_idx",
            "messages_external_idx", "messages_chat_id_fkey",
            "messages_reply_to_id_fkey"} <= set(bulk["deferred"])
    assert "messages_pkey" not in bulk["deferred"]
    # attachments: the foreign key and the plain index; the unique key on the media sid
    # stays (a sid two messages share is refused row by row, as in a live-safe run)
    assert {"message_attachments_message_id_fkey",
            "message_attachments_message_order_idx"} <= set(bulk["deferred"])
    assert "message_attachments_external_idx" not in bulk["deferred"]
    assert set(bulk["rebuilt_seconds"]) == set(bulk["deferred"])
    assert await messages_schema(fresh_db) == schema
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM import_deferred") == 0
        # analyzed at the end: the planner has statistics for the keys it plans with
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'messages' "
            "AND attname IN ('chat_id', 'seq', 'external_id')") == 3
        await check_database(conn, std_export, data)
        before = await logical_digest(conn)
        assert await cli.run_async(importer_argv(std_export, fresh_db, data, "--bulk",
                                                 "--report", str(tmp_path / "r2.json"))) == 0
        again = json.loads((tmp_path / "r2.json").read_text())
        assert again["run"]["messages_inserted"] == 0
        assert await logical_digest(conn) == before
    finally:
        await conn.close()
    assert await messages_schema(fresh_db) == schema


async def test_a_media_sid_two_messages_share_is_refused_row_by_row_in_bulk(
        fresh_db: str, tmp_path: Path) -> None:
    """The unique key on attachments' media sid is kept through a bulk load: the second
    message's item is refused and counted, exactly as without `--bulk`, and the run
    still ends with every index and key built back."""
    from test_fallback import CH_A, _msg, write_export

    schema = await messages_schema(fresh_db)
    shared = {"sid": "ME" + "5" * 32, "content_type": "image/png", "filename": "a.png",
              "size": 10, "category": "media"}
    msgs = [_msg(CH_A, i) for i in range(4)]
    msgs[1]["media"] = [shared]
    msgs[2]["media"] = [dict(shared), {**shared, "sid": "ME" + "6" * 32}]
    export = write_export(tmp_path / "x", CH_A, msgs)
    full = await _bulk_report(export, fresh_db, tmp_path / "d", tmp_path / "r.json")
    run = full["run"]
    assert run["messages_inserted"] == 4
    assert run["attachments_inserted"] == 2 and run["attachments_rejected"] == 1
    assert [i for i in full["issues"] if i["kind"] == "attachment_rejected"] == [
        {"kind": "attachment_rejected", "conversation": CH_A, "sid": shared["sid"],
         "reason": "duplicate key", "message_sid": msgs[2]["sid"]}]
    assert await messages_schema(fresh_db) == schema
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM import_deferred") == 0
        got = await conn.fetch(
            "SELECT m.external_id AS msg, a.external_id AS media FROM message_attachments a "
            "JOIN messages m ON m.id = a.message_id ORDER BY a.id")
        assert [(r["msg"], r["media"]) for r in got] == [
            (msgs[1]["sid"], shared["sid"]), (msgs[2]["sid"], "ME" + "6" * 32)]
    finally:
        await conn.close()


async def test_bulk_is_refused_while_a_node_is_connected(
        node_factory: Any, std_export: Path, tmp_path: Path) -> None:
    """A node serving the database: exit 4, nothing dropped, nothing written; the
    live-safe import goes on beside it."""
    node = await node_factory()
    dsn = node_factory.dsn
    schema = await messages_schema(dsn)
    assert await cli.run_async(importer_argv(std_export, dsn, tmp_path / "d", "--bulk")) == 4
    assert await messages_schema(dsn) == schema
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM import_deferred") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await conn.close()
    assert node.ws_port  # still serving
    assert await cli.run_async(importer_argv(std_export, dsn, tmp_path / "d")) == 0


async def test_killed_bulk_run_keeps_nodes_out_until_an_import_finishes_it(
        fresh_db: str, second_db: str, std_export: Path, tmp_path: Path,
        base_settings: Any) -> None:
    """SIGKILL during a bulk load: the dropped items stay recorded, a node refuses
    to start on that database, and the next (plain) run builds them first and ends
    with the same rows as one clean run."""
    from test_import import _run_and_kill
    from wsserver.app import Node

    schema = await messages_schema(fresh_db)
    want = await clean_import_digest(std_export, second_db, tmp_path / "ref")

    env = subprocess_env(fresh_db)
    cmd = importer_cmd(std_export, tmp_path / "data", "--bulk", "--batch-messages", "250")
    rc = _run_and_kill(cmd, env, 3, None)
    assert rc is not None and rc < 0  # killed mid-load, not finished
    conn = await asyncpg.connect(fresh_db)
    try:
        left = await conn.fetchval("SELECT count(*) FROM import_deferred")
        assert left > 0
        assert 0 < await conn.fetchval("SELECT count(*) FROM messages") < \
            expected(std_export)["counts"]["messages"]
    finally:
        await conn.close()

    node = Node(base_settings.with_(database_url=fresh_db))
    with pytest.raises(db.SchemaIncomplete, match="messages_chat_seq_key"):
        await node.start()
    assert node.pool is None  # refused before it opened anything

    done = subprocess.run(cmd[:-3] + ["--report", str(tmp_path / "final.json")], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "import.bulk_unfinished" in done.stderr
    final = json.loads((tmp_path / "final.json").read_text())
    check_report(final, expected(std_export))
    assert set(final["run"]["bulk"]["rebuilt_seconds"]) >= {"messages_chat_seq_key"}
    assert await messages_schema(fresh_db) == schema
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM import_deferred") == 0
        # analyzed after the load, not only with the builds that came before it
        assert await conn.fetchval(
            "SELECT last_analyze >= (SELECT max(done_at) FROM import_conversations) "
            "FROM pg_stat_user_tables WHERE relname = 'messages'")
        assert await logical_digest(conn) == want
        await check_database(conn, std_export, tmp_path / "data")
    finally:
        await conn.close()


async def test_a_duplicate_found_by_the_rebuild_is_named_and_keeps_nodes_out(
        fresh_db: str, tmp_path: Path) -> None:
    """A key the load let through (a hand-made duplicate here) fails its build: the
    run says which index and which key, and the index stays recorded."""
    from importer import bulk

    conn = await asyncpg.connect(fresh_db)
    try:
        await bulk.defer(conn)
        chat = await conn.fetchval(
            "INSERT INTO chats (type, \"group\", name) VALUES ('private', 'private', 'x') "
            "RETURNING id")
        for seq in (1, 2):
            await conn.execute(
                "INSERT INTO messages (chat_id, seq, rev, created_rev, type, message_key, "
                "external_id) VALUES ($1, $2, $2, $2, 'text', 'kDUP', $3)",
                chat, seq, f"IM{seq}")
        with pytest.raises(bulk.RebuildFailed,
                           match=r"(?s)messages_chat_message_key_key.*kDUP"):
            await bulk.rebuild([conn])
        assert "messages_chat_message_key_key" in await bulk.pending(conn)
    finally:
        await conn.close()


async def test_a_node_cannot_start_between_the_bulk_check_and_the_drops(
        fresh_db: str, std_export: Path, tmp_path: Path, base_settings: Any) -> None:
    """The race a newcomer found: a bulk import that has checked for nodes but waits
    to drop (here, behind an open write on `chats`) already holds the nodes' lock, so
    a node starting meanwhile is refused, before it opens its pool; and a running
    node holds that lock shared, so the import is refused even when the node's pool
    has no connection open."""
    import asyncio

    from importer import bulk
    from wsserver.app import Node
    from wsserver.db import NODE_LOCK_ID

    blocker = await asyncpg.connect(fresh_db)
    await blocker.execute("INSERT INTO chats (type, \"group\", name) "
                          "VALUES ('private', 'private', 'x')")
    tr = blocker.transaction()
    await tr.start()
    await blocker.execute("UPDATE chats SET name = name")
    run = asyncio.ensure_future(cli.run_async(importer_argv(
        std_export, fresh_db, tmp_path / "d", "--bulk", "--writers", "1")))
    probe = await asyncpg.connect(fresh_db)
    try:
        for _ in range(200):  # until the import waits on its drops
            waiting = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name = 'beseda-importer'")
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the import never reached its drops"
        node = Node(base_settings.with_(database_url=fresh_db))
        with pytest.raises(db.SchemaIncomplete, match="bulk import .* is running"):
            await node.start()
        assert node.pool is None
        await tr.commit()
        assert await asyncio.wait_for(run, 300) == 0
    finally:
        if not run.done():
            run.cancel()
        await blocker.close()

    # and the other way round: a running node holds the lock for its life
    node = Node(base_settings.with_(database_url=fresh_db))
    await node.start()
    try:
        assert not await probe.fetchval("SELECT pg_try_advisory_lock($1)", NODE_LOCK_ID)
        with pytest.raises(bulk.NodesConnected):
            await bulk.claim(probe)
    finally:
        await node.stop(timeout=2)
        await probe.close()


async def test_a_node_takes_its_claim_again_after_losing_its_connection(
        node_factory: Any) -> None:
    """The presence connection killed (as by a database restart): the node opens it
    again and holds the lock again, so a bulk import started afterwards is refused."""
    import asyncio

    from importer import bulk

    node = await node_factory()
    dsn = node_factory.dsn
    admin = await asyncpg.connect(dsn)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'beseda-presence' AND datname = current_database()")
        assert killed == 1
        lost = node.presence.conn
        for _ in range(100):  # the node notices the server's goodbye
            if lost.is_closed():
                break
            await asyncio.sleep(0.05)
        assert lost.is_closed()
        for _ in range(100):
            await node.presence.keep()  # what the node's task does every few seconds
            if node.presence.conn is not lost and node.presence.conn is not None:
                break
            await asyncio.sleep(0.05)
        held = await admin.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' "
            "AND granted")
        assert held == 1
        from wsserver.db import NODE_LOCK_ID

        assert not await admin.fetchval("SELECT pg_try_advisory_lock($1)", NODE_LOCK_ID)
        with pytest.raises(bulk.NodesConnected):
            await bulk.claim(admin)
    finally:
        await admin.close()


async def test_a_message_sid_another_conversation_has_is_refused_in_bulk_too(
        fresh_db: str, tmp_path: Path) -> None:
    """Without its keys during the load a bulk run inserts a sid another conversation
    has; the build of `messages_external_idx` finds it, the later copy is taken out
    with what points at it, and the run ends as a live-safe run's row-by-row refusal
    ends: refused and listed, counts right, every key back (the run used to fail there
    and leave nodes locked out)."""
    from test_fallback import CH_A, CH_B, _msg, _sid, write_export

    schema = await messages_schema(fresh_db)
    other = write_export(tmp_path / "b", CH_B, [_msg(CH_B, 0, sid=_sid(4))])
    assert await cli.run_async(importer_argv(other, fresh_db, tmp_path / "d", "--bulk",
                                             "--writers", "1")) == 0
    export = write_export(tmp_path / "a", CH_A, [_msg(CH_A, i) for i in range(6)])
    full = await _bulk_report(export, fresh_db, tmp_path / "d", tmp_path / "r.json")
    run = full["run"]
    assert run["messages_rejected"] == 1 and run["messages_inserted"] == 5
    assert run["replies_linked"] == 0 and run["replies_unlinked"] == 1  # 5 replied to 4
    assert [(i["conversation"], i["sid"]) for i in full["issues"]
            if i["kind"] == "message_rejected"] == [(CH_A, _sid(4))]
    assert await messages_schema(fresh_db) == schema
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM import_deferred") == 0
        rows = {r["external_id"]: r for r in await conn.fetch(
            "SELECT m.external_id, m.seq, m.reply_to_id, c.external_id AS conv "
            "FROM messages m JOIN chats c ON c.id = m.chat_id")}
        assert len(rows) == 6 and rows[_sid(4)]["conv"] == CH_B  # the first copy stays
        assert rows[_sid(5)]["reply_to_id"] is None
        # a live-safe import of the same two exports ends the same way
        assert [rows[_sid(i)]["seq"] for i in (0, 1, 2, 3, 5)] == [1, 2, 3, 4, 6]
        chat = await conn.fetchrow("SELECT c.last_seq, c.last_message_id, m.external_id "
                                   "FROM chats c JOIN messages m ON m.id = c.last_message_id "
                                   "WHERE c.external_id = $1", CH_A)
        assert chat["last_seq"] == 6 and chat["external_id"] == _sid(5)
        # read again, nothing moves
        await conn.execute("DELETE FROM import_conversations")
        assert await cli.run_async(importer_argv(export, fresh_db, tmp_path / "d",
                                                 "--writers", "1")) == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 6
        assert await conn.fetchval(
            "SELECT last_seq FROM chats WHERE external_id = $1", CH_A) == 6
    finally:
        await conn.close()
