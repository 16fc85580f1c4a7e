"""A user outside a chat gets `not_found` for every request on it, exactly as for a
chat that does not exist (ids cannot be probed), and never any of its events."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import send_data

MISSING_CHAT = 8_000_000_000
MISSING_MESSAGE = 9_000_000_000


def requests(chat: int, message: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("message.send", send_data(chat, "probe", "probe")),
        ("message.edit", {"message_id": message, "text": "probe"}),
        ("message.delete", {"message_id": message}),
        ("message.read", {"chat_id": chat, "message_id": message}),
        ("typing.start", {"chat_id": chat}),
        ("typing.stop", {"chat_id": chat}),
        ("chat.subscribe", {"chat_id": chat}),
        ("chat.unsubscribe", {"chat_id": chat}),
        ("messages.history", {"chat_id": chat}),
        ("messages.history", {"chat_id": chat, "after_seq": 0}),
    ]


async def scene(world: Any, outsider_left: bool) -> dict[str, Any]:
    a, b, x = await world.user(), await world.user(), await world.user()
    chat = await world.chat([a, b, x] if outsider_left else [a, b])
    if outsider_left:
        await world.sql(
            "UPDATE chat_participants SET left_at = now() WHERE chat_id = $1 AND user_id = $2",
            chat,
            x,
        )
    wa, wb, wx = await world.connect(a), await world.connect(b), await world.connect(x)
    await wb.ok("chat.subscribe", {"chat_id": chat})
    msg = await wa.ok("message.send", send_data(chat, "k1", "secret"))
    await wb.event("chat.message.new")
    return {"chat": chat, "msg": msg, "a": wa, "b": wb, "x": wx}


@pytest.mark.parametrize("outsider_left", [False, True], ids=["never-member", "left"])
async def test_outsider_gets_not_found_like_missing_chat_for_every_request(
    world, outsider_left
):
    """Each request type on a real chat answers exactly what it answers on a missing one."""
    s = await scene(world, outsider_left)
    wx = s["x"]
    real = requests(s["chat"], s["msg"]["id"])
    missing = requests(MISSING_CHAT, MISSING_MESSAGE)
    for (type_, data), (_, ghost) in zip(real, missing, strict=True):
        got = await wx.request(type_, data)
        assert got["type"] == "error" and got["error"]["code"] == "not_found", (
            type_,
            got,
        )
        probe = await wx.request(type_, ghost)
        assert probe["error"]["code"] == "not_found", (type_, probe)
        assert got["error"] == probe["error"], type_
    rows = await world.sql(
        """SELECT count(*) AS n,
                  bool_or(edited_at IS NOT NULL OR deleted_at IS NOT NULL) AS touched
             FROM messages WHERE chat_id = $1""",
        s["chat"],
    )
    assert rows[0]["n"] == 1 and rows[0]["touched"] is False


@pytest.mark.parametrize("outsider_left", [False, True], ids=["never-member", "left"])
async def test_sync_says_reset_with_no_changes_when_caller_is_outsider(
    world, outsider_left
):
    """chats.sync on a chat the user cannot see: reset true, no changes, like a missing one."""
    s = await scene(world, outsider_left)
    ack = await s["x"].ok(
        "chats.sync",
        {
            "chats": [
                {"chat_id": s["chat"], "rev": 0},
                {"chat_id": MISSING_CHAT, "rev": 0},
            ]
        },
    )
    real, ghost = ack["chats"]
    assert real["reset"] is True and real["changes"] == [] and real["has_more"] is False
    assert {k: v for k, v in real.items() if k != "chat_id"} == {
        k: v for k, v in ghost.items() if k != "chat_id"
    }


async def test_outsider_receives_no_event_when_members_act(world):
    """Sends, edits, deletes, reads and typing in the chat never reach the outsider."""
    s = await scene(world, False)
    wa, wb, wx = s["a"], s["b"], s["x"]
    await wx.request("chat.subscribe", {"chat_id": s["chat"]})
    await wa.ok("chat.subscribe", {"chat_id": s["chat"]})
    m2 = await wa.ok("message.send", send_data(s["chat"], "k2", "two"))
    await wa.ok("message.edit", {"message_id": m2["id"], "text": "two!"})
    await wa.ok("typing.start", {"chat_id": s["chat"]})
    await wb.ok("message.read", {"chat_id": s["chat"], "message_id": m2["id"]})
    await wa.ok("message.delete", {"message_id": m2["id"]})
    await wb.event("chat.message.delete")  # the member got everything up to here
    assert await wx.quiet(1.2) == []  # past one delivered-receipt flush too
