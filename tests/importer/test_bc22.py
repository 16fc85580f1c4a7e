"""FIELD_CASES BC-22: overlapping exports imported E1, E2 (killed once), E1 again."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
from importer_helpers import REPO, importer_argv, importer_cmd, subprocess_env

from importer import cli

CH = "CH" + "b" * 32
MB_A, MB_B = "MB" + "1" * 32, "MB" + "2" * 32
ADMIN_ROLE, USER_ROLE = "RL" + "a" * 32, "RL" + "c" * 32
PRESENT_MEDIA = "ME" + "f" * 32


def sid(prefix: str, i: int) -> str:
    return f"{prefix}{i:032x}"


def body_for(i: int) -> str | None:
    kind = i % 25
    if kind == 4:
        return None  # empty body with media
    if kind == 9:
        return ""
    # emoji with ZWJ and skin tone, Cyrillic with a combining accent (NFD, kept as is)
    return f"Сообщение {i}: е\u0301 👩🏿\u200d💻 👍🏽 \\u0000 ok"


def message(i: int) -> dict[str, Any]:
    kind = i % 25
    t = f"2024-10-27T{(i // 60) % 24:02d}:{i % 60:02d}:00Z"
    m: dict[str, Any] = {
        "sid": sid("IM", i), "conversation_sid": CH, "index": i,
        "author": "buyer_1" if i % 2 else "manager_1",
        "participant_sid": MB_A if i % 2 else MB_B,
        "body": body_for(i), "media": None, "attributes": "{}",
        "date_created": t, "date_updated": t, "delivery": None, "content_sid": None,
    }
    if kind == 1:  # two media items
        m["media"] = [
            {"sid": PRESENT_MEDIA if i == 51 else sid("ME", i * 10), "content_type": "image/png",
             "filename": "фото.png", "size": 1000, "category": "media"},
            {"sid": sid("ME", i * 10 + 1), "content_type": "application/pdf",
             "filename": None, "size": 2000, "category": "media"},
        ]
    elif kind == 2:  # legacy single-media shape: an object, not a list
        m["media"] = {"sid": sid("ME", i * 10), "content_type": "audio/ogg",
                      "filename": "voice.ogg", "size": 300}
        m["type"] = "media"
    elif kind == 3:  # legacy single-media fields with an empty media list
        m["media"] = []
        m["media_sid"] = sid("ME", i * 10)
        m["media_content_type"] = "image/jpeg"
        m["media_filename"] = "scan.jpg"
        m["media_size"] = 400
    elif kind == 4:
        m["media"] = [{"sid": sid("ME", i * 10), "content_type": "video/mp4",
                       "filename": "clip.mp4", "size": 5000, "category": "media"}]
    elif kind == 5:
        m["attributes"] = "{\"order\":\"A-1\"}"
    return m


def write_export(root: Path, lo: int, hi: int, updated: str) -> Path:
    def page(path: Path, key: str, items: list[Any], n: int, last: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"page": n, "page_size": 50, "key": key, "url": "u", "first_page_url": "u",
                "previous_page_url": None, "next_page_url": None if last else "n"}
        path.write_text(json.dumps({key: items, "meta": meta}, ensure_ascii=False),
                        encoding="utf-8")

    conv = {"sid": CH, "friendly_name": "Заказ 42 🚚", "unique_name": "order-42",
            "attributes": "{\"order_id\": \"42\"}", "date_created": "2024-10-26T00:00:00Z",
            "date_updated": updated, "state": "active", "timers": {}}
    page(root / "conversations" / "page-00001.json", "conversations", [conv], 0, True)
    parts = [
        {"sid": MB_B, "identity": "manager_1", "attributes": "{}", "role_sid": ADMIN_ROLE,
         "date_created": "2024-10-26T00:00:00Z", "last_read_message_index": hi - 1,
         "last_read_timestamp": updated},
        {"sid": MB_A, "identity": "buyer_1", "attributes": "{}", "role_sid": USER_ROLE,
         "date_created": "2024-10-26T00:01:00Z", "last_read_message_index": None,
         "last_read_timestamp": None},
    ]
    page(root / "conversations" / CH / "participants" / "page-00001.json", "participants",
         parts, 0, True)
    msgs = [message(i) for i in range(lo, hi)]
    for n in range(0, len(msgs), 50):
        page(root / "conversations" / CH / "messages" / f"page-{n // 50 + 1:05d}.json",
             "messages", msgs[n:n + 50], n // 50, n + 50 >= len(msgs))
    page(root / "roles" / "page-00001.json", "roles",
         [{"sid": ADMIN_ROLE, "friendly_name": "Conversation Admin"},
          {"sid": USER_ROLE, "friendly_name": "Conversation User"}], 0, True)
    (root / "media").mkdir(exist_ok=True)
    (root / "media" / PRESENT_MEDIA).write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    (root / "users.csv").write_text("identity,user_id,role\nbuyer_1,11,buyer\n"
                                    "manager_1,12,manager\n", encoding="utf-8")
    (root / "orders.csv").write_text("order_id,buyer_id,manager_id,fulfillment_id\n"
                                     "42,11,12,\n", encoding="utf-8")
    return root


# E2's end: long enough that a kill sent on an early progress line lands mid-run
# (with 100 here, a faster writer once finished all its 2-message transactions first)
HI = 1050


async def test_overlapping_exports_give_each_message_once(fresh_db: str, tmp_path: Path) -> None:
    """E1 (0..99), E2 (50..HI-1, killed once), E1: HI messages, seq 1..HI, sids once."""
    e1 = write_export(tmp_path / "e1", 0, 100, "2024-10-27T02:00:00Z")
    e2 = write_export(tmp_path / "e2", 50, HI, "2024-10-27T03:00:00Z")
    data = tmp_path / "data"
    assert await cli.run_async(importer_argv(e1, fresh_db, data)) == 0

    # killed after E2's first 60 messages (50 of them already imported), with some 490
    # small transactions still to go: the writer runs ahead of the progress lines it
    # sends, but not by that much
    cmd = importer_cmd(e2, data, "--batch-messages", "2")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(fresh_db),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "import.progress" in line and "messages=60 " in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    conn = await asyncpg.connect(fresh_db)
    try:
        partial = await conn.fetchval("SELECT count(*) FROM messages")
        assert 100 < partial < HI
        assert await cli.run_async(importer_argv(e2, fresh_db, data)) == 0
        assert await cli.run_async(importer_argv(e1, fresh_db, data)) == 0

        rows = await conn.fetch(
            """SELECT m.id, m.seq, m.rev, m.type, m.content::text AS content,
                      m.metadata::text AS metadata, m.external_id, m.message_key
               FROM messages m ORDER BY m.seq""")
        assert len(rows) == HI
        assert [r["seq"] for r in rows] == list(range(1, HI + 1))
        metas = [json.loads(r["metadata"])["twilio"] for r in rows]
        assert [m["index"] for m in metas] == list(range(HI))
        assert len({r["external_id"] for r in rows}) == HI
        assert all(r["external_id"] == r["message_key"] == sid("IM", i)
                   for i, r in enumerate(rows))
        for i, (r, meta) in enumerate(zip(rows, metas, strict=False)):
            kind = i % 25
            content = json.loads(r["content"])
            want = body_for(i)
            assert (next(iter(content.values())) if content else None) == (want or None)
            if kind == 5:
                assert meta["attributes"] == {"order": "A-1"}
            n_att = await conn.fetchval(
                "SELECT count(*) FROM message_attachments WHERE message_id = $1", r["id"])
            assert n_att == {1: 2, 2: 1, 3: 1, 4: 1}.get(kind, 0), i
            assert r["type"] == {1: "image", 2: "audio", 3: "image", 4: "file"}.get(kind, "text")
        chat = await conn.fetchrow("SELECT * FROM chats")
        assert chat["last_seq"] == HI and chat["rev"] == HI
        assert chat["order_id"] == 42
        assert chat["last_message_id"] == rows[-1]["id"]
        assert json.loads(chat["metadata"])["twilio"]["attributes"] == {"order_id": "42"}
        horizons = {r["user_id"]: r["last_read_seq"] for r in await conn.fetch(
            "SELECT user_id, last_read_seq FROM chat_participants")}
        assert horizons == {12: HI, 11: HI}
        assert await conn.fetchval("SELECT count(*) FROM chat_events") == 0
        legacy = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE metadata #> '{twilio,legacy_media}' = 'true'")
        assert legacy == 2 * HI // 25  # kinds 2 and 3, once each in 25
        stored = await conn.fetchrow(
            "SELECT storage_key, size FROM message_attachments WHERE status = 'stored'")
        assert (data / "attachments" / stored["storage_key"]).read_bytes().startswith(b"\x89PNG")
    finally:
        await conn.close()
