"""Two users chatting over real sockets: delivery, storage, idempotency, ordering."""

from __future__ import annotations

import asyncio

from tests.helpers import send_data

ZWJ_FAMILY = "👨\u200d👩\u200d👧\u200d👦"
TEXTS = ["Привет", "你好", f"{ZWJ_FAMILY} 👍🏽 🏳️\u200d🌈", "mixed Привет 你好 e\u0301"]


async def test_two_users_exchange_multilingual_text_byte_exact(world):
    """Russian, Chinese and ZWJ emoji arrive and are stored exactly as sent."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)

    for i, text in enumerate(TEXTS):
        ack = await wa.ok("message.send", send_data(chat, f"k{i}", text))
        assert ack["seq"] == i + 1 and ack["duplicate"] is False
        ev = await wb.event("chat.message.new")
        got = ev["data"]
        assert got["id"] == ack["id"] and got["seq"] == i + 1
        assert text in [v for v in got["content"].values() if v is not None]
        assert got["content"][got["lang"]] == text

    rows = await world.sql("SELECT content, lang FROM messages WHERE chat_id = $1 ORDER BY seq", chat)
    assert [r["content"] for r in rows] == [
        __import__("json").dumps({r["lang"]: t}, ensure_ascii=False) for r, t in zip(rows, TEXTS, strict=False)
    ]
    assert [r["lang"] for r in rows[:2]] == ["ru", "zh"]


async def test_sender_gets_ack_not_event_and_other_devices_get_event(world):
    """The sending socket gets its ack; the sender's other socket gets the event."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    a1, a2, b1 = await world.connect(a), await world.connect(a), await world.connect(b)
    ack = await a1.ok("message.send", send_data(chat, "k1", "hello"))
    assert (await a2.event("chat.message.new"))["data"]["id"] == ack["id"]
    assert (await b1.event("chat.message.new"))["data"]["id"] == ack["id"]
    assert await a1.quiet(0.3, "chat.message.new") == []


async def test_retried_send_stores_once_and_pushes_once(world):
    """The same message_key again answers the first message with duplicate: true."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    first = await wa.ok("message.send", send_data(chat, "same", "one"))
    again = await wa.ok("message.send", send_data(chat, "same", "two"))
    assert again["duplicate"] is True and again["id"] == first["id"]
    assert again["content"]["en"] == "one"
    # concurrent copies in one burst (one batch)
    futs = [wa.send_nowait("message.send", send_data(chat, "burst", "x")) for _ in range(5)]
    replies = await asyncio.gather(*futs)
    ids = {r["data"]["id"] for r in replies}
    assert len(ids) == 1 and sum(not r["data"]["duplicate"] for r in replies) == 1
    events = await wb.events_of("chat.message.new", 2)
    assert [e["data"]["seq"] for e in events] == [1, 2]
    assert await wb.quiet(0.3, "chat.message.new") == []
    rows = await world.sql("SELECT count(*) AS n FROM messages WHERE chat_id = $1", chat)
    assert rows[0]["n"] == 2


async def test_pipelined_sends_keep_seq_order_for_every_receiver(world):
    """200 sends without waiting: acks and events in seq order, no gaps."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    futs = [wa.send_nowait("message.send", send_data(chat, f"p{i}", f"m{i}")) for i in range(200)]
    replies = await asyncio.gather(*futs)
    assert all(r["type"] == "ack" for r in replies)
    assert sorted(r["data"]["seq"] for r in replies) == list(range(1, 201))
    events = await wb.events_of("chat.message.new", 200)
    assert [e["data"]["seq"] for e in events] == list(range(1, 201))


async def test_own_messages_are_read_and_others_count_as_unread(world):
    """Sending moves the sender's read horizon; the other side's unread grows."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    acks = [await wa.ok("message.send", send_data(chat, f"u{i}", f"m{i}")) for i in range(3)]
    rows = await world.sql(
        "SELECT user_id, last_read_seq, last_read_message_id FROM chat_participants "
        "WHERE chat_id = $1", chat,
    )
    horizons = {r["user_id"]: (r["last_read_seq"], r["last_read_message_id"]) for r in rows}
    assert horizons == {a: (3, acks[2]["id"]), b: (0, None)}
    read = await wb.ok("message.read", {"chat_id": chat, "message_id": acks[1]["id"]})
    assert read == {"chat_id": chat, "last_read_message_id": acks[1]["id"], "unread": 1}
    status = await wa.event("chat.message.status")
    while status["data"]["status"] == "delivered":  # a receipt may come first
        status = await wa.event("chat.message.status")
    assert status["data"] == {"chat_id": chat, "user_id": b, "status": "read",
                              "message_id": acks[1]["id"]}


async def test_another_senders_message_key_is_a_conflict_not_a_duplicate(world):
    """Keys are unique per chat; reusing someone else's key is refused, not merged."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    first = await wa.ok("message.send", send_data(chat, "k-1", "from a"))
    reply = await wb.request("message.send", send_data(chat, "k-1", "from b"))
    assert reply["type"] == "error" and reply["error"]["code"] == "conflict"
    again = await wa.ok("message.send", send_data(chat, "k-1", "from a again"))
    assert again["duplicate"] is True and again["id"] == first["id"]
    rows = await world.sql("SELECT count(*) AS n FROM messages WHERE chat_id = $1", chat)
    assert rows[0]["n"] == 1
