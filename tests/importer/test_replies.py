"""attributes.reply_to_index becomes reply_to_id: same page, earlier page, earlier
transaction, earlier run; deleted, later and malformed targets stay unlinked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
from importer_helpers import importer_argv

from importer import cli

CH = "CH" + "7" * 32
MB_A, MB_B = "MB" + "a" * 32, "MB" + "b" * 32
DELETED = {13, 14, 40}  # index gaps: Twilio deletions
# index of the reply -> what its attributes say
REPLIES: dict[int, Any] = {
    5: 4,        # the message just before, same page
    60: 2,       # two pages back (50 per page), several transactions back
    61: 13,      # a deleted message: not linked
    62: 62,      # itself: not linked
    63: 70,      # a later message: not linked
    64: "12",    # an index written as a string: linked
    65: "x",     # not an index: not linked
    66: -1,      # negative: not linked
    90: 55,      # in the first export only (second run)
    91: 80,      # in the second export, earlier page
}


def _msg(i: int) -> dict[str, Any]:
    t = f"2025-03-30T{i // 60:02d}:{i % 60:02d}:00Z"
    attrs: dict[str, Any] = {"client": "web"}
    if i in REPLIES:
        attrs["reply_to_index"] = REPLIES[i]
    return {"sid": f"IM{i:032x}", "index": i, "author": "u_a" if i % 2 else "u_b",
            "participant_sid": MB_A if i % 2 else MB_B, "body": f"сообщение {i}",
            "media": None, "attributes": json.dumps(attrs), "date_created": t,
            "date_updated": t, "delivery": None, "content_sid": None}


def _page(path: Path, key: str, items: list[Any], n: int, last: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"page": n, "page_size": 50, "key": key, "url": "u", "first_page_url": "u",
            "previous_page_url": None, "next_page_url": None if last else "n"}
    path.write_text(json.dumps({key: items, "meta": meta}, ensure_ascii=False), "utf-8")


def write_export(root: Path, indices: list[int]) -> Path:
    conv = {"sid": CH, "friendly_name": "replies", "unique_name": None, "attributes": "{}",
            "date_created": "2025-03-30T00:00:00Z", "date_updated": "2025-03-30T03:00:00Z",
            "state": "active", "timers": {}}
    _page(root / "conversations" / "page-00001.json", "conversations", [conv], 0, True)
    parts = [{"sid": sid, "identity": ident, "attributes": "{}", "role_sid": None,
              "date_created": "2025-03-30T00:00:00Z", "last_read_message_index": None,
              "last_read_timestamp": None} for sid, ident in ((MB_A, "u_a"), (MB_B, "u_b"))]
    _page(root / "conversations" / CH / "participants" / "page-00001.json", "participants",
          parts, 0, True)
    msgs = [_msg(i) for i in indices if i not in DELETED]
    for n in range(0, len(msgs), 50):
        _page(root / "conversations" / CH / "messages" / f"page-{n // 50 + 1:05d}.json",
              "messages", msgs[n:n + 50], n // 50, n + 50 >= len(msgs))
    (root / "users.csv").write_text("identity,user_id,role\nu_a,21,buyer\nu_b,22,manager\n",
                                    encoding="utf-8")
    (root / "orders.csv").write_text("order_id,buyer_id,manager_id,fulfillment_id\n",
                                     encoding="utf-8")
    return root


async def _links(dsn: str) -> dict[int, int | None]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT (m.metadata #>> '{twilio,index}')::int AS i,
                      (r.metadata #>> '{twilio,index}')::int AS target, r.chat_id = m.chat_id AS same
               FROM messages m LEFT JOIN messages r ON r.id = m.reply_to_id""")
    finally:
        await conn.close()
    assert all(r["same"] is not False for r in rows)
    return {r["i"]: r["target"] for r in rows}


async def test_replies_link_within_an_export(fresh_db: str, tmp_path: Path) -> None:
    export = write_export(tmp_path / "ex", list(range(0, 80)))
    report_path = tmp_path / "r.json"
    # small transactions: index 60 replies to a message committed several batches back
    assert await cli.run_async(importer_argv(export, fresh_db, tmp_path / "d",
                                             "--batch-messages", "7",
                                             "--report", str(report_path))) == 0
    report = json.loads(report_path.read_text())
    links = await _links(fresh_db)
    assert {i: t for i, t in links.items() if t is not None} == {5: 4, 60: 2, 64: 12}
    o = report["other_counts"]
    assert o["replies"] == 8
    assert o["replies_bad_index"] == 2          # "x" and -1
    assert o["replies_to_later_index"] == 2     # itself and a later one
    assert o["replies_target_not_in_export"] == 1
    assert report["run"]["replies_linked"] == 3
    assert report["run"]["replies_unlinked"] == 1


async def test_replies_link_to_an_earlier_run(fresh_db: str, tmp_path: Path) -> None:
    """A later export that holds only newer messages links to what an earlier one
    imported; one re-run of each changes nothing."""
    first = write_export(tmp_path / "e1", list(range(0, 60)))
    second = write_export(tmp_path / "e2", list(range(60, 100)))
    data = tmp_path / "d"
    assert await cli.run_async(importer_argv(first, fresh_db, data)) == 0
    r2 = tmp_path / "r2.json"
    assert await cli.run_async(importer_argv(second, fresh_db, data, "--batch-messages", "5",
                                             "--report", str(r2))) == 0
    links = await _links(fresh_db)
    assert {i: t for i, t in links.items() if t is not None} == \
        {5: 4, 60: 2, 64: 12, 90: 55, 91: 80}
    run = json.loads(r2.read_text())["run"]
    # 60 -> 2 and 90 -> 55 are found in the database, 91 -> 80 in this export, 61 -> 13
    # is a deletion; 62 and 63 are never looked up
    assert run["replies_linked"] == 4 and run["replies_unlinked"] == 1
    for export in (first, second):
        assert await cli.run_async(importer_argv(export, fresh_db, data)) == 0
    assert await _links(fresh_db) == links
