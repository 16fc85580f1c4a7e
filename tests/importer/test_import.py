"""The importer against a generated export: exact result, idempotent, resumable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from importer import cli

from importer_helpers import (
    REPO,
    clean_import_digest,
    check_replies,
    checksums,
    full_digest,
    importer_argv,
    importer_cmd,
    logical_digest,
    subprocess_env,
)

SIMPLE_COUNTS = (
    "chats", "chats_by_type", "chats_by_status", "chats_with_order", "chats_without_messages",
    "orders", "users_csv_rows", "twilio_users", "participant_records", "chat_participants",
    "chat_participants_by_role", "participants_unknown_identity",
    "participants_without_identity", "read_horizons_on_index_gap",
    "conversation_records_in_pages", "duplicate_conversation_records",
    "message_records_in_pages", "duplicate_message_records", "messages", "messages_by_type",
    "messages_edited", "messages_deleted", "messages_empty_body", "messages_by_unknown_author",
    "messages_by_departed_participant", "missing_indices_below_last", "attachments",
    "media_files_present", "missing_media_files", "delivery_receipts", "unknown_identities",
    "bad_attribute_strings", "bodies_with_nul_char", "bodies_with_literal_backslash_u0000",
    "bodies_over_1600_chars", "max_body_utf8_bytes",
)


def expected(export: Path) -> dict:
    return json.loads((export / "EXPECTED.json").read_text(encoding="utf-8"))


def check_report(report: dict, exp: dict) -> None:
    for key in SIMPLE_COUNTS:
        assert report["counts"][key] == exp["counts"][key], key
    assert report["unknown_identity_list"] == exp["unknown_identity_list"]


async def check_database(conn: asyncpg.Connection, export: Path, data_dir: Path) -> None:
    exp = expected(export)
    c = exp["counts"]
    q = conn.fetchval
    assert await q("SELECT count(*) FROM chats") == c["chats"]
    for t, n in c["chats_by_type"].items():
        assert await q("SELECT count(*) FROM chats WHERE type = $1", t) == n
    assert await q("SELECT count(*) FROM chats WHERE status = 'active'") == \
        c["chats_by_status"]["active"]
    assert await q("SELECT count(*) FROM chats WHERE status = 'archived'") == \
        c["chats_by_status"]["archived"]
    assert await q("SELECT count(*) FROM chats WHERE order_id IS NOT NULL") == \
        c["chats_with_order"]
    assert await q("SELECT count(*) FROM chats WHERE last_seq = 0") == c["chats_without_messages"]
    assert await q("SELECT count(*) FROM chat_participants") == c["chat_participants"]
    for role, n in c["chat_participants_by_role"].items():
        assert await q("SELECT count(*) FROM chat_participants WHERE role = $1", role) == n
    assert await q("SELECT count(*) FROM messages") == c["messages"]
    for t, n in c["messages_by_type"].items():
        assert await q("SELECT count(*) FROM messages WHERE type = $1", t) == n
    assert await q("SELECT count(*) FROM messages WHERE edited_at IS NOT NULL") == \
        c["messages_edited"]
    assert await q("SELECT count(*) FROM messages WHERE deleted_at IS NOT NULL") == 0
    assert await q("SELECT count(*) FROM messages WHERE content = '{}'") == \
        c["messages_empty_body"]
    assert await q("SELECT count(*) FROM messages WHERE user_id IS NULL AND type <> 'system'") \
        == c["messages_by_unknown_author"]
    assert await q("SELECT count(*) FROM message_attachments") == c["attachments"]
    assert await q("SELECT count(*) FROM message_attachments WHERE status = 'missing'") == \
        c["missing_media_files"]
    assert await q("SELECT count(*) FROM orders") == c["orders"]
    assert await q("SELECT count(*) FROM chat_events") == 0  # the import is silent
    assert await checksums(conn) == (exp["checksums"]["bodies_sha256"],
                                     exp["checksums"]["full_sha256"])
    # counters: seq dense 1..n, rev = seq, last message is the last seq
    assert await q(
        """SELECT count(*) FROM chats c WHERE c.last_seq <> (SELECT count(*) FROM messages m
           WHERE m.chat_id = c.id) OR c.rev <> c.last_seq""") == 0
    assert await q("SELECT count(*) FROM messages WHERE rev <> seq OR created_rev <> seq") == 0
    assert await q(
        """SELECT count(*) FROM chats c LEFT JOIN messages m ON m.id = c.last_message_id
           WHERE (c.last_seq > 0 AND (m.seq IS DISTINCT FROM c.last_seq
                                      OR c.last_message_at IS DISTINCT FROM m.created_at))
              OR (c.last_seq = 0 AND c.last_message_id IS NOT NULL)""") == 0
    assert await q(
        """SELECT count(*) FROM chat_participants p LEFT JOIN messages m
             ON m.id = p.last_read_message_id
           WHERE (p.last_read_message_id IS NULL) <> (p.last_read_seq = 0)
              OR (m.id IS NOT NULL AND (m.seq <> p.last_read_seq OR m.chat_id <> p.chat_id))""") \
        == 0
    # NUL became U+FFFD; the literal six characters stayed
    assert await q(r"SELECT count(*) FROM messages WHERE content::text LIKE '%\\u0000%'") == \
        c["bodies_with_literal_backslash_u0000"]
    # present media: copied, right size, right first bytes
    rows = await conn.fetch(
        "SELECT external_id, storage_key, size, mime_type FROM message_attachments "
        "WHERE status = 'stored'")
    assert len(rows) == c["media_files_present"]
    magic = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG", "application/pdf": b"%PDF",
             "audio/ogg": b"OggS"}
    for r in rows:
        blob = (data_dir / "attachments" / r["storage_key"]).read_bytes()
        assert blob == (export / "media" / r["external_id"]).read_bytes()
        assert len(blob) == r["size"]
        assert blob.startswith(magic.get(r["mime_type"], b""))


async def test_dry_run_validates_and_writes_nothing(fresh_db: str, std_export: Path,
                                                    tmp_path: Path) -> None:
    """--dry-run reports the exact counts of EXPECTED.json and leaves the database empty."""
    out = tmp_path / "report.json"
    rc = await cli.run_async(importer_argv(std_export, fresh_db, tmp_path / "data",
                                           "--dry-run", "--report", str(out)))
    assert rc == 0
    check_report(json.loads(out.read_text()), expected(std_export))
    conn = await asyncpg.connect(fresh_db)
    try:
        for table in ("chats", "messages", "chat_participants", "message_attachments",
                      "users", "orders", "import_runs", "import_conversations"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    finally:
        await conn.close()
    assert not (tmp_path / "data").exists()


async def test_import_is_exact_and_rerun_changes_nothing(fresh_db: str, std_export: Path,
                                                        tmp_path: Path) -> None:
    """Counts and both checksums match EXPECTED.json; a second run leaves every row as is."""
    data = tmp_path / "data"
    r1 = tmp_path / "r1.json"
    assert await cli.run_async(importer_argv(std_export, fresh_db, data, "--batch-messages",
                                             "700", "--report", str(r1))) == 0
    report = json.loads(r1.read_text())
    check_report(report, expected(std_export))
    assert report["run"]["messages_inserted"] == expected(std_export)["counts"]["messages"]
    missing = expected(std_export)["counts"]["missing_media_files"]
    assert report["missing_media_sids_total"] == missing
    side = Path(report["full_lists"]["missing_media_sids"]).read_text().split()
    assert len(side) == missing and side[:len(report["missing_media_sids"])] == \
        report["missing_media_sids"]
    conn = await asyncpg.connect(fresh_db)
    try:
        await check_database(conn, std_export, data)
        linked = await check_replies(conn, report)
        assert report["run"]["replies_linked"] == linked
        assert report["run"]["replies_unlinked"] == report["other_counts"][
            "replies_target_not_in_export"]
        before = await full_digest(conn)
        r2 = tmp_path / "r2.json"
        assert await cli.run_async(importer_argv(std_export, fresh_db, data,
                                                 "--report", str(r2))) == 0
        again = json.loads(r2.read_text())
        check_report(again, expected(std_export))  # the report still covers the export
        assert again["run"]["messages_inserted"] == 0
        assert again["run"]["conversations_skipped_done"] == report["counts"]["chats"]
        assert await full_digest(conn) == before
        # with the progress rows gone, the run re-reads every page and still changes nothing
        await conn.execute("DELETE FROM import_conversations")
        assert await cli.run_async(importer_argv(std_export, fresh_db, data,
                                                 "--report", str(r2))) == 0
        third = json.loads(r2.read_text())
        assert third["run"]["messages_inserted"] == 0
        assert third["run"]["messages_already_present"] == report["counts"]["messages"]
        assert await full_digest(conn) == before
        statuses = [r[0] for r in await conn.fetch(
            "SELECT status FROM import_runs ORDER BY id")]
        assert statuses == ["finished"] * 3
    finally:
        await conn.close()


async def test_new_message_over_the_socket_continues_an_imported_chat(
    fresh_db: str, std_export: Path, tmp_path: Path, node_factory: Any
) -> None:
    """After `beseda import-twilio`, a participant sends over a live socket: the
    message takes last_seq + 1, the other participant gets it, history has both."""
    from tests.helpers import WsClient
    from wsserver.auth import mint

    out = subprocess.run(
        [sys.executable, "-m", "wsserver.cli", "import-twilio", str(std_export),
         "--data-dir", str(tmp_path / "d"), "--progress", "none"],
        env=subprocess_env(fresh_db), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    conn = await asyncpg.connect(fresh_db)
    try:
        chat = await conn.fetchrow(
            """SELECT c.id, c.last_seq, c.rev, array_agg(p.user_id ORDER BY p.user_id) AS users
                 FROM chats c JOIN chat_participants p ON p.chat_id = c.id AND p.left_at IS NULL
                WHERE c.status = 'active' AND c.last_seq > 0
                GROUP BY c.id HAVING count(*) >= 2 ORDER BY c.id LIMIT 1""")
    finally:
        await conn.close()
    assert chat is not None
    node = await node_factory(database_url=fresh_db)
    # Imported messages were queued for search; the node's indexer takes them all.
    assert await node.search_index.drain() > 0
    conn = await asyncpg.connect(fresh_db)
    try:
        n = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM messages) AS messages,
                      (SELECT count(*) FROM message_grams) AS indexed,
                      (SELECT count(*) FROM message_grams_queue) AS queued""")
    finally:
        await conn.close()
    assert n["indexed"] == n["messages"] > 0 and n["queued"] == 0
    url = f"ws://127.0.0.1:{node.ws_port}/ws"
    sender, reader = chat["users"][0], chat["users"][1]
    ws_a = await WsClient.connect(url, mint(node.settings, sender, "buyer"))
    ws_b = await WsClient.connect(url, mint(node.settings, reader, "client"))
    try:
        ack = await ws_a.ok("message.send", {
            "chat_id": chat["id"], "message_key": "after-import-1", "text": "новое после импорта"})
        assert ack["seq"] == chat["last_seq"] + 1 and ack["rev"] == chat["rev"] + 1
        event = await ws_b.event("chat.message.new")
        assert event["data"]["id"] == ack["id"]
        hist = await ws_b.ok("messages.history", {"chat_id": chat["id"], "limit": 2})
        assert [m["seq"] for m in hist["messages"]] == [chat["last_seq"], chat["last_seq"] + 1]
        assert hist["messages"][1]["content"]["ru"] == "новое после импорта"
    finally:
        await ws_a.close()
        await ws_b.close()


def _run_and_kill(cmd: list[str], env: dict[str, str], after_lines: int | None,
                  delay: float | None) -> int | None:
    """Start the importer; SIGKILL it after N progress lines or a delay. Its return code."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    if delay is not None:
        time.sleep(delay)
    else:
        seen = 0
        for line in proc.stderr:
            if "import.progress" in line:
                seen += 1
                if seen >= (after_lines or 0):
                    break
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return proc.returncode


async def test_killed_at_random_points_resumes_to_the_same_result(
        fresh_db: str, second_db: str, std_export: Path, tmp_path: Path) -> None:
    """SIGKILL mid-run (several times), then resume: the same rows as one clean run."""
    want = await clean_import_digest(std_export, second_db, tmp_path / "ref")

    rng = random.Random(20261204)
    data = tmp_path / "data"
    env = subprocess_env(fresh_db)
    cmd = importer_cmd(std_export, data, "--batch-messages", "250")
    killed = 0
    for attempt in range(4):
        if attempt == 3:
            rc = _run_and_kill(cmd, env, None, rng.uniform(0.2, 1.2))
        else:
            rc = _run_and_kill(cmd, env, rng.randint(1, 8), None)
        killed += rc == -signal.SIGKILL
    assert killed >= 2
    done = subprocess.run(cmd + ["--report", str(tmp_path / "final.json")], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "final.json").read_text())
    check_report(report, json.loads((std_export / "EXPECTED.json").read_text()))
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await logical_digest(conn) == want
        await check_database(conn, std_export, data)
        statuses = [r[0] for r in await conn.fetch("SELECT status FROM import_runs ORDER BY id")]
        assert statuses[-1] == "finished"
        assert "interrupted" in statuses
    finally:
        await conn.close()


async def test_second_importer_is_refused(fresh_db: str, std_export: Path,
                                          tmp_path: Path) -> None:
    """Only one importer per database: a second one exits with code 3."""
    from importer.load import IMPORT_LOCK_ID

    holder = await asyncpg.connect(fresh_db)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", IMPORT_LOCK_ID)
        rc = await cli.run_async(importer_argv(std_export, fresh_db, tmp_path / "d"))
        assert rc == 3
    finally:
        await holder.close()


async def test_sigterm_marks_the_run_interrupted_and_stops_the_writers(
        fresh_db: str, std_export: Path, tmp_path: Path) -> None:
    """SIGTERM mid-run: exit 130, the run row says `interrupted`, no writer process
    outlives the importer, and the next run finishes the import exactly."""
    import psutil

    env = subprocess_env(fresh_db)
    cmd = importer_cmd(std_export, tmp_path / "data", "--batch-messages", "250",
                       "--writers", "2")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "import.progress" in line:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the writers run as processes of their own"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "import.interrupted" in rest
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    done = subprocess.run(cmd + ["--report", str(tmp_path / "final.json")], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    conn = await asyncpg.connect(fresh_db)
    try:
        statuses = [r[0] for r in await conn.fetch("SELECT status FROM import_runs ORDER BY id")]
        assert statuses == ["interrupted", "finished"]
        await check_database(conn, std_export, tmp_path / "data")
    finally:
        await conn.close()


def test_writers_are_bounded() -> None:
    """--writers takes 1 to 16: each is a process with a connection of its own."""
    for bad in ("0", "17", "-1"):
        with pytest.raises(SystemExit):
            cli.parser().parse_args(["x", "--writers", bad])
    assert cli.parser().parse_args(["x", "--writers", "16"]).writers == 16
