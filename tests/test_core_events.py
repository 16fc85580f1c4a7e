"""Edit, delete and read reach the right sockets only: the acting socket gets its
ack, every other socket of the chat's participants gets the event, and a user in
another chat gets nothing."""

from __future__ import annotations

from typing import Any

from tests.helpers import send_data


async def setup(world: Any) -> dict[str, Any]:
    a, b, c, d = [await world.user() for _ in range(4)]
    chat = await world.chat([a, b])
    other = await world.chat([c, d])
    s = {
        "a": a,
        "b": b,
        "c": c,
        "chat": chat,
        "other": other,
        "a1": await world.connect(a),
        "a2": await world.connect(a),
        "b1": await world.connect(b),
        "c1": await world.connect(c),
    }
    s["msg"] = await s["a1"].ok("message.send", send_data(chat, "k1", "original"))
    for name in ("a2", "b1"):
        await s[name].event("chat.message.new")
    return s


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


async def test_edit_event_reaches_other_participant_sockets_only_when_author_edits(
    world,
):
    """a1 edits: a2 and b1 get chat.message.update with the new text; a1 and c1 do not."""
    s = await setup(world)
    ack = await s["a1"].ok(
        "message.edit", {"message_id": s["msg"]["id"], "text": "changed"}
    )
    assert ack["content"][ack["lang"]] == "changed" and ack["edited_at"] is not None
    assert ack["rev"] > s["msg"]["rev"]
    for name in ("a2", "b1"):
        ev = await s[name].event("chat.message.update")
        assert ev["data"]["id"] == s["msg"]["id"] and ev["data"] == ack
    assert of_type(await s["a1"].quiet(0.4), "chat.message.update") == []
    assert await s["c1"].quiet(0.1) == []


async def test_delete_event_reaches_other_participant_sockets_only_when_author_deletes(
    world,
):
    """a1 deletes: a2 and b1 get chat.message.delete with id, chat_id, rev, deleted_at."""
    s = await setup(world)
    ack = await s["a1"].ok("message.delete", {"message_id": s["msg"]["id"]})
    assert ack["id"] == s["msg"]["id"] and ack["deleted_at"]
    for name in ("a2", "b1"):
        ev = await s[name].event("chat.message.delete")
        assert ev["data"] == {
            "id": s["msg"]["id"],
            "chat_id": s["chat"],
            "rev": ack["rev"],
            "deleted_at": ack["deleted_at"],
        }
    assert of_type(await s["a1"].quiet(0.4), "chat.message.delete") == []
    assert await s["c1"].quiet(0.1) == []
    history = await s["b1"].ok("messages.history", {"chat_id": s["chat"]})
    gone = history["messages"][0]
    assert gone["deleted_at"] == ack["deleted_at"] and set(
        gone["content"].values()
    ) == {None}


async def test_read_status_reaches_participants_but_not_reader_when_horizon_moves(
    world,
):
    """b1 reads: a1 and a2 get chat.message.status read with the horizon; c1 nothing."""
    s = await setup(world)
    ack = await s["b1"].ok(
        "message.read", {"chat_id": s["chat"], "message_id": s["msg"]["id"]}
    )
    assert ack == {
        "chat_id": s["chat"],
        "last_read_message_id": s["msg"]["id"],
        "unread": 0,
    }
    for name in ("a1", "a2"):
        while True:
            ev = await s[name].event("chat.message.status")
            if ev["data"]["status"] == "read":
                break
        assert ev["data"] == {
            "chat_id": s["chat"],
            "user_id": s["b"],
            "status": "read",
            "message_id": s["msg"]["id"],
        }
    reads = [
        e
        for e in of_type(await s["b1"].quiet(0.4), "chat.message.status")
        if e["data"]["status"] == "read"
    ]
    assert reads == []
    assert await s["c1"].quiet(0.1) == []


async def test_read_sends_no_event_when_horizon_is_unchanged(world):
    """Reading the same message again acks but announces nothing new."""
    s = await setup(world)
    await s["b1"].ok(
        "message.read", {"chat_id": s["chat"], "message_id": s["msg"]["id"]}
    )
    await s["a2"].quiet(0.4)
    again = await s["b1"].ok(
        "message.read", {"chat_id": s["chat"], "message_id": s["msg"]["id"]}
    )
    assert again["last_read_message_id"] == s["msg"]["id"]
    reads = [
        e
        for e in of_type(await s["a2"].quiet(0.4), "chat.message.status")
        if e["data"]["status"] == "read"
    ]
    assert reads == []


async def test_edit_and_delete_are_forbidden_and_silent_when_message_is_another_users(
    world,
):
    """b1 may not edit a's message nor delete it (b is a buyer): forbidden, no events."""
    s = await setup(world)
    for type_, data in (
        ("message.edit", {"message_id": s["msg"]["id"], "text": "hijack"}),
        ("message.delete", {"message_id": s["msg"]["id"]}),
    ):
        reply = await s["b1"].request(type_, data)
        assert reply["type"] == "error" and reply["error"]["code"] == "forbidden", reply
    for name in ("a1", "a2", "c1"):
        assert of_type(await s[name].quiet(0.2), "chat.message.update") == []
    rows = await world.sql(
        "SELECT content, deleted_at FROM messages WHERE id = $1", s["msg"]["id"]
    )
    assert "original" in rows[0]["content"] and rows[0]["deleted_at"] is None
