"""Bad data is counted and carried past, never fatal and never silent."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
from test_bc22 import CH, write_export

from importer import cli
from importer.export import parse_attributes
from importer.lang import detect
from importer.storage import LocalStorage, StorageError


def test_language_is_guessed_by_script() -> None:
    """Cyrillic -> ru, CJK -> zh, Latin -> en, no letters -> the default."""
    assert detect("Добрый день") == "ru"
    assert detect("您好，请问") == "zh"
    assert detect("Hi there") == "en"
    assert detect("👍🏽🔥 123") == "ru"
    assert detect("👍", default="en") == "en"
    assert detect("Hello, привет, как дела") == "ru"


def test_attributes_parse_or_keep_raw() -> None:
    """A JSON string becomes an object; anything else is kept raw and flagged."""
    assert parse_attributes("{\"order\":\"A-1\"}") == (True, {"order": "A-1"})
    assert parse_attributes("{}") == (True, {})
    assert parse_attributes(None) == (True, {})
    assert parse_attributes({"already": 1}) == (True, {"already": 1})
    assert parse_attributes("{role: manager}") == (False, "{role: manager}")
    assert parse_attributes("\x00{}") == (False, "\ufffd{}")
    assert parse_attributes("{\"a\": \"x\\u0000y\"}") == (True, {"a": "x\ufffdy"})


def test_storage_refuses_unsafe_keys(tmp_path: Path) -> None:
    """Keys cannot climb out of the attachments folder."""
    store = LocalStorage(tmp_path)
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    assert store.put("twilio/ab/MEab", src) == 3
    for bad in ("../x", "a/../../x", "/etc/passwd", "a b"):
        try:
            store.put(bad, src)
        except StorageError:
            continue
        raise AssertionError(bad)


async def test_broken_pages_and_records_are_counted(fresh_db: str, tmp_path: Path) -> None:
    """An unparsable page, a record without sid, a lone surrogate: counted, rest imported."""
    ex = write_export(tmp_path / "ex", 0, 100, "2024-10-27T02:00:00Z")
    pages = ex / "conversations" / CH / "messages"
    doc = json.loads((pages / "page-00002.json").read_text(encoding="utf-8"))
    doc["messages"][0]["index"] = "not a number"
    doc["messages"][1]["sid"] = None
    raw = json.dumps(doc, ensure_ascii=False)
    raw = raw.replace('"body": "Сообщение 52', '"body": "\\ud800 Сообщение 52', 1)
    (pages / "page-00002.json").write_text(raw, encoding="utf-8")
    (pages / "page-00003.json").write_text("{\"messages\": [", encoding="utf-8")
    (ex / "conversations" / "page-00002.json").write_text(
        json.dumps({"conversations": [{"sid": "../../etc"}], "meta": {}}), encoding="utf-8")
    out = tmp_path / "r.json"
    rc = await cli.run_async(["--database-url", fresh_db, "--data-dir", str(tmp_path / "d"),
                              "--progress", "none", "--report", str(out), str(ex)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["other_counts"]["bad_pages"] == 1
    assert report["other_counts"]["invalid_message_records"] == 2
    assert report["other_counts"]["invalid_conversation_records"] == 1
    assert report["counts"]["messages"] == 98
    assert any(i["kind"] == "bad_page" for i in report["issues"])
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 98
        body = await conn.fetchval(
            "SELECT content->>'ru' FROM messages WHERE external_id = $1", "IM" + f"{52:032x}")
        assert body.startswith("\ufffd Сообщение 52")
        assert await conn.fetchval("SELECT last_seq FROM chats") == 98
    finally:
        await conn.close()
