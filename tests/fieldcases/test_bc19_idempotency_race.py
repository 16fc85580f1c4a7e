"""BC-19 (one node): two sockets of one user race the same `message_key`.

Both get an ack for the same message, exactly one with `duplicate: false`; the
other participant gets one `chat.message.new` per key; history holds one message
per key. When the racing copies differ, both acks carry the stored (first) text.
"""

from __future__ import annotations

import asyncio
import json

from tests.helpers import send_data
from tests.wire import reply_to

ROUNDS = 200
FAST = {"rate_per_s": 100_000.0, "rate_burst": 100_000}


async def race(
    a1, a2, chat: int, rounds: int, texts: tuple[str, str]
) -> list[tuple[dict, dict]]:
    pairs = []
    for i in range(rounds):
        f1 = json.dumps(
            {
                "type": "message.send",
                "id": f"x1-{i}",
                "data": send_data(chat, f"k-race-{i}", texts[0]),
            }
        )
        f2 = json.dumps(
            {
                "type": "message.send",
                "id": f"x2-{i}",
                "data": send_data(chat, f"k-race-{i}", texts[1]),
            }
        )
        await asyncio.gather(a1.raw(f1), a2.raw(f2))
        pairs.append((await reply_to(a1, f"x1-{i}"), await reply_to(a2, f"x2-{i}")))
    return pairs


async def test_racing_same_key_from_two_sockets_stores_once_and_acks_both(world_with):
    """200 rounds: same id and seq in both acks, one duplicate:false, B sees one event per key."""
    world = await world_with(**FAST)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    a1, a2, wb = await world.connect(a), await world.connect(a), await world.connect(b)
    pairs = await race(a1, a2, chat, ROUNDS, ("hello", "hello"))
    for i, (r1, r2) in enumerate(pairs):
        assert r1["type"] == "ack" and r2["type"] == "ack", (r1, r2)
        d1, d2 = r1["data"], r2["data"]
        assert (d1["id"], d1["seq"]) == (d2["id"], d2["seq"])
        assert d1["seq"] == i + 1
        assert sorted([d1["duplicate"], d2["duplicate"]]) == [False, True]
    events = await wb.events_of("chat.message.new", ROUNDS)
    assert [e["data"]["seq"] for e in events] == list(range(1, ROUNDS + 1))
    assert await wb.quiet(0.3, "chat.message.new") == []
    rows = await world.sql(
        "SELECT count(*) AS n, max(seq) AS top FROM messages WHERE chat_id = $1", chat
    )
    assert (rows[0]["n"], rows[0]["top"]) == (ROUNDS, ROUNDS)


async def test_racing_same_key_with_different_text_acks_the_stored_text(world_with):
    """Both acks carry the one stored text, whichever copy won the race."""
    world = await world_with(**FAST)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    a1, a2 = await world.connect(a), await world.connect(a)
    pairs = await race(a1, a2, chat, 50, ("first text", "second text"))
    stored = {
        r["message_key"]: r["content"]
        for r in await world.sql(
            "SELECT message_key, content FROM messages WHERE chat_id = $1", chat
        )
    }
    assert len(stored) == 50
    for i, (r1, r2) in enumerate(pairs):
        d1, d2 = r1["data"], r2["data"]
        assert d1["content"] == d2["content"]
        text = d1["content"][d1["lang"]]
        assert text in ("first text", "second text")
        assert json.loads(stored[f"k-race-{i}"]) == {d1["lang"]: text}


async def test_send_returns_first_text_when_key_is_retried_with_other_text(world):
    """A later copy of a stored key is a duplicate carrying the first text."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    a1, a2 = await world.connect(a), await world.connect(a)
    first = await a1.ok("message.send", send_data(chat, "k", "one"))
    again = await a2.ok("message.send", send_data(chat, "k", "two"))
    assert again["duplicate"] is True and again["id"] == first["id"]
    assert again["content"] == first["content"]
