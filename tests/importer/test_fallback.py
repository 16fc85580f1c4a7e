"""A batch whose COPY fails is inserted row by row: the rows are those the COPY
writes (checked column by column against a clean import), the message that cannot
go in is rejected and counted, and a reply to it stays unlinked.

The bodies and one sid carry the characters the COPY text format escapes (backslash,
tab, newline, carriage return), so the comparison also checks those lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from importer_helpers import importer_argv

from importer import cli

CH_A = "CH" + "a" * 32
CH_B = "CH" + "b" * 32
MB_1, MB_2 = "MB" + "1" * 32, "MB" + "2" * 32
ODD_SID = "IM\\odd\tsid\nwith\rescapes"
BODIES = ["plain", "tab\there", "new\nline", "back\\slash \\n \\u0000", "cr\r\nlf",
          "кириллица\t\\", "", None, "汉字 \\\\ end"]


def _sid(i: int) -> str:
    return ODD_SID if i == 7 else f"IM{i:032x}"


def _msg(conv: str, i: int, sid: str | None = None) -> dict[str, Any]:
    created = f"2025-04-01T10:{i:02d}:00Z"
    attrs: dict[str, Any] = {"note": "a\tb\\c"}
    if i == 5:
        attrs["reply_to_index"] = 4
    if i == 9:
        attrs["reply_to_index"] = 2
    return {"sid": sid or _sid(i), "index": i, "author": "u_1" if i % 2 else "u_2",
            "participant_sid": MB_1 if i % 2 else MB_2, "body": BODIES[i % len(BODIES)],
            "media": None, "attributes": json.dumps(attrs),
            "date_created": created,
            "date_updated": f"2025-04-02T10:{i:02d}:00Z" if i % 3 == 0 else created,
            "delivery": None, "content_sid": None}


def _page(path: Path, key: str, items: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({key: items, "meta": {"page": 0, "key": key}},
                               ensure_ascii=False), "utf-8")


def write_export(root: Path, conv_sid: str, messages: list[dict[str, Any]]) -> Path:
    conv = {"sid": conv_sid, "friendly_name": "fallback", "unique_name": None,
            "attributes": "{}", "date_created": "2025-04-01T00:00:00Z",
            "date_updated": "2025-04-03T00:00:00Z", "state": "active", "timers": {}}
    _page(root / "conversations" / "page-00001.json", "conversations", [conv])
    parts = [{"sid": sid, "identity": ident, "attributes": "{}", "role_sid": None,
              "date_created": "2025-04-01T00:00:00Z", "last_read_message_index": None,
              "last_read_timestamp": None} for sid, ident in ((MB_1, "u_1"), (MB_2, "u_2"))]
    _page(root / "conversations" / conv_sid / "participants" / "page-00001.json",
          "participants", parts)
    _page(root / "conversations" / conv_sid / "messages" / "page-00001.json", "messages",
          messages)
    (root / "users.csv").write_text("identity,user_id,role\nu_1,31,buyer\nu_2,32,manager\n",
                                    encoding="utf-8")
    (root / "orders.csv").write_text("order_id,buyer_id,manager_id,fulfillment_id\n",
                                     encoding="utf-8")
    return root


async def _rows(dsn: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT m.message_key, m.seq, m.rev, m.created_rev, m.user_id, m.type,
                      m.content::text AS content, m.lang, m.metadata::text AS metadata,
                      m.created_at, m.edited_at, m.external_id,
                      r.message_key AS reply_key
               FROM messages m JOIN chats c ON c.id = m.chat_id
               LEFT JOIN messages r ON r.id = m.reply_to_id
               WHERE c.external_id = $1""", CH_A)
    finally:
        await conn.close()
    return {r["message_key"]: dict(r) for r in rows}


class _Failures(logging.Handler):
    """Counts the importer's `import.copy_failed` warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += "import.copy_failed" in record.getMessage()

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


@pytest.fixture
def copy_failures() -> Iterator[_Failures]:
    handler = _Failures()
    logger = logging.getLogger("beseda.importer")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_a_failed_copy_inserts_the_same_rows_one_by_one(
        fresh_db: str, second_db: str, tmp_path: Path, copy_failures: _Failures) -> None:
    n = 12
    export = write_export(tmp_path / "a", CH_A, [_msg(CH_A, i) for i in range(n)])
    assert await cli.run_async(importer_argv(export, fresh_db, tmp_path / "d1",
                                             "--writers", "1")) == 0
    assert copy_failures.take() == 0  # the COPY lines themselves went in
    clean = await _rows(fresh_db)
    assert len(clean) == n and clean[_sid(5)]["reply_key"] == _sid(4)
    assert clean[ODD_SID]["external_id"] == ODD_SID
    assert json.loads(clean[_sid(1)]["content"]) == {"en": "tab\there"}

    # another conversation took the sid of message 4 first: the COPY of CH_A fails
    other = write_export(tmp_path / "b", CH_B, [_msg(CH_B, 0, sid=_sid(4))])
    assert await cli.run_async(importer_argv(other, second_db, tmp_path / "d2",
                                             "--writers", "1")) == 0
    report = tmp_path / "r.json"
    assert await cli.run_async(importer_argv(export, second_db, tmp_path / "d2",
                                             "--writers", "1", "--report", str(report))) == 0
    assert copy_failures.take() == 1
    full = json.loads(report.read_text())
    run = full["run"]
    assert run["messages_rejected"] == 1 and run["messages_inserted"] == n - 1
    # the rejected message is named in the report, not only counted
    assert [i for i in full["issues"] if i["kind"] == "message_rejected"] == [
        {"kind": "message_rejected", "conversation": CH_A, "sid": _sid(4),
         "reason": "duplicate key"}]
    assert run["replies_linked"] == 1 and run["replies_unlinked"] == 1
    fallback = await _rows(second_db)
    expected = {k: v for k, v in clean.items() if k != _sid(4)}
    expected[_sid(5)] = {**expected[_sid(5)], "reply_key": None}
    assert fallback == expected


async def test_a_refused_message_does_not_move_the_counters_when_its_chat_is_read_again(
        fresh_db: str, tmp_path: Path) -> None:
    """A sid another chat has is refused on every run; when the chat is read again (its
    progress rows deleted, a forced re-read) it is refused before it is given a seq, so
    the chat's counters and rows stay as they are (they used to move on each run)."""
    n = 6
    other = write_export(tmp_path / "b", CH_B, [_msg(CH_B, 0, sid=_sid(0))])
    export = write_export(tmp_path / "a", CH_A, [_msg(CH_A, i) for i in range(n)])
    for ex in (other, export):
        assert await cli.run_async(importer_argv(ex, fresh_db, tmp_path / "d",
                                                 "--writers", "1")) == 0
    conn = await asyncpg.connect(fresh_db)
    try:
        async def chat_state() -> list[Any]:
            return [tuple(r) for r in await conn.fetch(
                "SELECT c.external_id, c.last_seq, c.rev, count(m.id) FROM chats c "
                "LEFT JOIN messages m ON m.chat_id = c.id GROUP BY c.id ORDER BY c.id")]

        before = await chat_state()
        assert before[1][3] == n - 1  # sid 0 refused
        for _ in range(2):
            await conn.execute("DELETE FROM import_conversations")
            report = tmp_path / "r.json"
            assert await cli.run_async(importer_argv(export, fresh_db, tmp_path / "d",
                                                     "--writers", "1", "--report",
                                                     str(report))) == 0
            run = json.loads(report.read_text())["run"]
            assert run["messages_rejected"] == 1 and run["messages_inserted"] == 0
            assert run["messages_appended_out_of_index_order"] == 0
            assert await chat_state() == before
    finally:
        await conn.close()
