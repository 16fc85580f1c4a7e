"""BC-05: a client away while 350 messages, 10 edits and 5 deletes happen resumes
with `chats.sync` pages that cover every change once, in `rev` order.

The server compacts: a message changed several times since the client's `rev`
appears once, in its latest state with its latest `rev` (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import send_data
from tests.wire import history_all, sync_all
from wsserver import store as store_module

FAST = {"rate_per_s": 100_000.0, "rate_burst": 100_000, "max_pending_requests": 1000}
BEFORE = 20
NEW = 350


async def build_scenario(world: Any) -> tuple[Any, int, int, int, dict[str, list[int]]]:
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    for i in range(BEFORE):
        await wa.ok("message.send", send_data(chat, f"old{i}", f"old {i}"))
    seen = await wb.events_of("chat.message.new", BEFORE)
    r0 = seen[-1]["data"]["rev"]
    ids = {e["data"]["seq"]: e["data"]["id"] for e in seen}
    await wb.close()

    futs = [
        wa.send_nowait("message.send", send_data(chat, f"new{i}", f"new {i}"))
        for i in range(NEW)
    ]
    for r in await asyncio.gather(*futs):
        assert r["type"] == "ack", r
        ids[r["data"]["seq"]] = r["data"]["id"]
    edited = [1, 2, 3, 4, 5, 21, 22, 23, 24, 25]
    deleted = [6, 7, 26, 27, 28]
    for seq in edited:
        await wa.ok("message.edit", {"message_id": ids[seq], "text": f"edited {seq}"})
    for seq in deleted:
        await wa.ok("message.delete", {"message_id": ids[seq]})
    return b, chat, r0, a, {"edited": edited, "deleted": deleted}


def check_changes(
    changes: list[dict[str, Any]],
    r0: int,
    plan: dict[str, list[int]],
    history: list[dict[str, Any]],
    paged: bool = False,
) -> None:
    revs = [c["data"]["rev"] for c in changes]
    assert revs == sorted(set(revs)) and revs[0] > r0
    by_seq = {c["data"]["seq"]: c for c in changes}
    assert len(by_seq) == len(changes)  # each message once
    expected_seqs = set(range(BEFORE + 1, BEFORE + NEW + 1)) | {1, 2, 3, 4, 5, 6, 7}
    assert set(by_seq) == expected_seqs

    latest = {m["seq"]: m for m in history}
    for seq, change in by_seq.items():
        data = change["data"]
        assert data["rev"] == latest[seq]["rev"]  # latest state, latest rev
        if seq in plan["deleted"]:
            assert change["type"] == "chat.message.delete"
            assert data["deleted_at"] is not None
            assert all(v is None for v in data["content"].values())
        elif seq in plan["edited"]:
            assert data["edited_at"] is not None
            assert data["content"][data["lang"]] == f"edited {seq}"
            if seq <= BEFORE:
                assert change["type"] == "chat.message.update"
            elif paged:
                # born on an earlier page's range, so labelled relative to this
                # page's rev; clients apply new and update alike (docs/limits.md)
                assert change["type"] in ("chat.message.new", "chat.message.update")
            else:
                assert change["type"] == "chat.message.new"
        else:
            assert change["type"] == "chat.message.new"
            assert data["content"] == latest[seq]["content"]


async def test_sync_covers_every_change_once_when_client_was_away(world_with):
    """350 new + 10 edits + 5 deletes: one compacted page, then an empty sync."""
    world = await world_with(**FAST)
    b, chat, r0, _a, plan = await build_scenario(world)
    wb = await world.connect(b)
    changes, pages = await sync_all(wb, chat, r0)
    assert [p["has_more"] for p in pages] == [False]
    history = await history_all(wb, chat)
    assert len(history) == BEFORE + NEW
    check_changes(changes, r0, plan, history)
    assert sum(m["edited_at"] is not None for m in history) == 10
    assert sum(m["deleted_at"] is not None for m in history) == 5

    final_rev = changes[-1]["data"]["rev"]
    assert final_rev == pages[-1]["rev"]
    tail, tail_pages = await sync_all(wb, chat, final_rev)
    assert tail == [] and tail_pages[0]["has_more"] is False


async def test_sync_pages_cover_every_change_once_when_pages_are_small(
    world_with, monkeypatch
):
    """With 64-change pages, has_more is true on every page but the last."""
    monkeypatch.setattr(store_module, "SYNC_PAGE", 64)
    world = await world_with(**FAST)
    b, chat, r0, _a, plan = await build_scenario(world)
    wb = await world.connect(b)
    changes, pages = await sync_all(wb, chat, r0)
    assert len(pages) == -(-len(changes) // 64)
    assert all(len(p["changes"]) == 64 for p in pages[:-1])
    assert [p["has_more"] for p in pages] == [True] * (len(pages) - 1) + [False]
    history = await history_all(wb, chat)
    check_changes(changes, r0, plan, history, paged=True)


@pytest.mark.parametrize("ahead", [1, 10_000])
async def test_sync_says_reset_when_rev_is_ahead_of_server(world_with, ahead):
    """A rev the server never handed out is answered reset: true, never a partial set."""
    world = await world_with()
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    ack = await wa.ok("message.send", send_data(chat, "k1", "hi"))
    got = await wa.ok(
        "chats.sync", {"chats": [{"chat_id": chat, "rev": ack["rev"] + ahead}]}
    )
    entry = got["chats"][0]
    assert (
        entry["reset"] is True and entry["changes"] == [] and entry["has_more"] is False
    )


async def test_sync_says_reset_when_chat_was_deleted_while_away(world_with):
    """A chat deleted while the client was away cannot be resumed: reset, no changes."""
    world = await world_with()
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    ack = await wa.ok("message.send", send_data(chat, "k1", "hi"))
    await world.sql("UPDATE chats SET deleted_at = now() WHERE id = $1", chat)
    got = await wa.ok("chats.sync", {"chats": [{"chat_id": chat, "rev": ack["rev"] - 1}]})
    entry = got["chats"][0]
    assert entry["reset"] is True and entry["changes"] == [] and entry["has_more"] is False
