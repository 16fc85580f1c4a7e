"""A client that disconnects, misses messages, edits and deletes, and resumes with
chats.sync ends with exactly the server's state: nothing lost, nothing twice."""

from __future__ import annotations

from typing import Any

from tests.helpers import send_data
from tests.wire import history_all, sync_all

FAST = {"rate_per_s": 100_000.0, "rate_burst": 100_000, "max_pending_requests": 1000}


def apply(
    state: dict[int, dict[str, Any]], change_type: str, data: dict[str, Any]
) -> None:
    """The client side of resume: new and update upsert by id, delete marks."""
    if change_type in ("chat.message.new", "chat.message.update"):
        state[data["id"]] = data
    elif change_type == "chat.message.delete":
        kept = dict(state.get(data["id"], {}))
        kept.update(data)
        kept["content"] = {"ru": None, "en": None, "zh": None}
        state[data["id"]] = kept


async def test_resumed_client_holds_server_state_when_it_missed_50_messages_and_edits(
    world_with,
):
    """Live events, then a gap of 50 sends, 5 edits and 2 deletes, then chats.sync."""
    world = await world_with(**FAST)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)

    state: dict[int, dict[str, Any]] = {}
    rev = 0
    for i in range(10):
        await wa.ok("message.send", send_data(chat, f"live{i}", f"live {i}"))
    for ev in await wb.events_of("chat.message.new", 10):
        apply(state, ev["type"], ev["data"])
        rev = max(rev, ev["data"]["rev"])
    await wb.close()

    sent = [
        await wa.ok("message.send", send_data(chat, f"gap{i}", f"gap {i}"))
        for i in range(50)
    ]
    seen_ids = list(state)
    for mid in seen_ids[:3] + [sent[0]["id"], sent[1]["id"]]:
        await wa.ok("message.edit", {"message_id": mid, "text": f"edited {mid}"})
    for mid in (seen_ids[5], sent[2]["id"]):
        await wa.ok("message.delete", {"message_id": mid})
    again = await wa.ok("message.send", send_data(chat, "gap0", "retried"))
    assert again["duplicate"] is True  # a retry in the gap stores nothing

    wb2 = await world.connect(b)
    changes, pages = await sync_all(wb2, chat, rev)
    ids = [c["data"]["id"] for c in changes]
    assert len(ids) == len(set(ids))  # nothing twice
    assert [c["data"]["rev"] for c in changes] == sorted(
        c["data"]["rev"] for c in changes
    )
    for c in changes:
        apply(state, c["type"], c["data"])

    server = {m["id"]: m for m in await history_all(wb2, chat)}
    assert len(server) == 60
    assert state == server  # nothing lost, every change in its latest state
    assert sum(m["edited_at"] is not None for m in state.values()) == 5
    assert sum(m["deleted_at"] is not None for m in state.values()) == 2
    tail, _ = await sync_all(wb2, chat, pages[-1]["rev"])
    assert tail == []
