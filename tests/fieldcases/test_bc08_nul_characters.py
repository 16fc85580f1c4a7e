"""BC-08: U+0000 (and lone surrogates) in any string of a request is a bad_request
naming the field; neighbours in the same burst are stored and no seq is skipped."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import send_data
from tests.wire import reply_to

NUL = "\u0000"


def frame(rid: str, chat: int, key: str, text: str, metadata: object = None) -> str:
    data = send_data(chat, key, text)
    if metadata is not None:
        data["metadata"] = metadata
    return json.dumps({"type": "message.send", "id": rid, "data": data})


BAD_SENDS = [
    # (description, text, metadata, message_key, field named)
    ("text", f"a{NUL}b", None, "k2", "data.text"),
    ("metadata value", "ok-3", {"note": f"x{NUL}y"}, "k3", "data.metadata.note"),
    (
        "nested metadata",
        "ok",
        {"a": [1, {"b": f"{NUL}"}]},
        "k5",
        "data.metadata.a[1].b",
    ),
    ("metadata key", "ok", {f"k{NUL}": 1}, "k6", "data.metadata (a key)"),
    ("message key", "ok", None, f"k{NUL}7", "data.message_key"),
]


@pytest.mark.parametrize("case", BAD_SENDS, ids=[c[0] for c in BAD_SENDS])
async def test_send_is_bad_request_naming_field_when_burst_holds_nul(world, case):
    """The bad row is refused by name; k1 and k4 around it are stored, seq 1 and 2."""
    _desc, text, metadata, key, field = case
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    burst = [
        frame("x1", chat, "k1", "ok-1"),
        frame("x2", chat, key, text, metadata),
        frame("x4", chat, "k4", "ok-4"),
    ]
    await asyncio.gather(*(wa.raw(f) for f in burst))
    replies = {rid: await reply_to(wa, rid) for rid in ("x1", "x2", "x4")}
    assert replies["x1"]["type"] == "ack" and replies["x4"]["type"] == "ack"
    err = replies["x2"]
    assert err["type"] == "error" and err["error"]["code"] == "bad_request"
    assert f"`{field}`" in err["error"]["message"]
    assert sorted([replies["x1"]["data"]["seq"], replies["x4"]["data"]["seq"]]) == [
        1,
        2,
    ]
    events = await wb.events_of("chat.message.new", 2)
    assert sorted(e["data"]["seq"] for e in events) == [1, 2]
    rows = await world.sql(
        "SELECT seq, message_key FROM messages WHERE chat_id = $1 ORDER BY seq", chat
    )
    assert [(r["seq"], r["message_key"]) for r in rows] in (
        [(1, "k1"), (2, "k4")],
        [(1, "k4"), (2, "k1")],
    )
    # the same connection goes on working, and the next seq follows without a hole
    ack = await wa.ok("message.send", send_data(chat, "k9", "after"))
    assert ack["seq"] == 3


async def test_edit_is_bad_request_and_changes_nothing_when_text_has_nul(world):
    """message.edit with U+0000 is refused by field; the stored text stays."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    sent = await wa.ok("message.send", send_data(chat, "k1", "original"))
    reply = await wa.request(
        "message.edit", {"message_id": sent["id"], "text": f"x{NUL}"}
    )
    assert reply["type"] == "error" and reply["error"]["code"] == "bad_request"
    assert "`data.text`" in reply["error"]["message"]
    rows = await world.sql(
        "SELECT content, edited_at, rev FROM messages WHERE id = $1", sent["id"]
    )
    assert "original" in rows[0]["content"] and rows[0]["edited_at"] is None
    assert rows[0]["rev"] == sent["rev"]


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud83dz"])
async def test_send_is_bad_request_naming_text_when_it_has_lone_surrogate(
    world, escape
):
    """A lone surrogate escape in text is refused by name, never stored."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    raw = (
        '{"type":"message.send","id":"s1","data":{"chat_id":%d,"message_key":"k1","type":"text","text":"%s"}}'
        % (chat, escape)
    )
    await wa.raw(raw)
    reply = await reply_to(wa, "s1")
    assert reply["type"] == "error" and reply["error"]["code"] == "bad_request"
    assert "`data.text`" in reply["error"]["message"]
    assert (
        await world.sql("SELECT count(*) AS n FROM messages WHERE chat_id = $1", chat)
    )[0]["n"] == 0


async def test_send_is_stored_byte_exact_when_text_has_escaped_backslash_u0000(world):
    """The six characters backslash-u-0-0-0-0 are text, not NUL: stored as sent."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    text = "path \\u0000 literal"
    ack = await wa.ok(
        "message.send", send_data(chat, "k1", text, metadata={"n": "\\u0000"})
    )
    assert ack["content"][ack["lang"]] == text and ack["metadata"] == {"n": "\\u0000"}
    history = await wa.ok("messages.history", {"chat_id": chat, "after_seq": 0})
    assert history["messages"][0]["content"][ack["lang"]] == text
