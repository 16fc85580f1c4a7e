"""The bad-input matrix: each malformed or invalid frame is answered with an error
(naming the field where there is one) and the connection goes on working with
nothing stored; a binary frame closes 1003 and an oversized one 1009."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import send_data
from tests.wire import reply_to


def envelope(type_: str, data: Any, rid: str = "bad") -> str:
    return json.dumps({"type": type_, "id": rid, "data": data}, ensure_ascii=False)


def send_without(chat: int, name: str) -> dict[str, Any]:
    data = send_data(chat, "k-bad", "text")
    del data[name]
    return data


def deep_send(chat: int, where: str, depth: int = 1500, text: str = "x") -> str:
    """A send whose metadata (or an unknown field) nests `depth` lists deep; it is
    built as text, since the JSON encoder would refuse the depth itself."""
    nest = "[" * depth + "]" * depth
    data = f'"chat_id":{chat},"message_key":"k-deep","text":"{text}"'
    if where == "metadata":
        data += f',"metadata":{{"n":{nest}}}'
    elif where == "data":
        data += f',"extra":{nest}'
    if where == "envelope":
        return f'{{"type":"message.send","id":"bad","extra":{nest},"data":{{{data}}}}}'
    return f'{{"type":"message.send","id":"bad","data":{{{data}}}}}'


# (name, frame builder taking the chat id, expected code, words the message must hold)
CASES: list[tuple[str, Any, str, list[str]]] = [
    (
        "malformed json",
        lambda c: '{"type": "message.send", "id": "bad", "data": {',
        "bad_request",
        [],
    ),
    (
        "trailing garbage",
        lambda c: envelope("message.send", send_data(c, "k", "t")) + "]",
        "bad_request",
        [],
    ),
    (
        "chat_id true",
        lambda c: envelope("message.send", {**send_data(c, "k", "t"), "chat_id": True}),
        "bad_request",
        ["chat_id"],
    ),
    (
        "chat_id as string",
        lambda c: envelope(
            "message.send", {**send_data(c, "k", "t"), "chat_id": str(c)}
        ),
        "bad_request",
        ["chat_id"],
    ),
    (
        "chat_id float",
        lambda c: envelope(
            "message.send", {**send_data(c, "k", "t"), "chat_id": c + 0.5}
        ),
        "bad_request",
        ["chat_id"],
    ),
    (
        "chat_id zero",
        lambda c: envelope("message.send", {**send_data(c, "k", "t"), "chat_id": 0}),
        "bad_request",
        ["chat_id"],
    ),
    (
        "text as number",
        lambda c: envelope("message.send", {**send_data(c, "k", "t"), "text": 5}),
        "bad_request",
        ["text"],
    ),
    (
        "unknown type",
        lambda c: envelope("message.explode", {"chat_id": c}),
        "bad_request",
        ["message.explode"],
    ),
    (
        "missing chat_id",
        lambda c: envelope("message.send", send_without(c, "chat_id")),
        "bad_request",
        ["chat_id"],
    ),
    (
        "missing message_key",
        lambda c: envelope("message.send", send_without(c, "message_key")),
        "bad_request",
        ["message_key"],
    ),
    (
        "missing text",
        lambda c: envelope("message.send", send_without(c, "text")),
        "bad_request",
        ["text"],
    ),
    (
        "empty message_key",
        lambda c: envelope("message.send", send_data(c, "", "t")),
        "bad_request",
        ["message_key"],
    ),
    (
        "message_key of 65",
        lambda c: envelope("message.send", send_data(c, "k" * 65, "t")),
        "bad_request",
        ["message_key"],
    ),
    (
        "bad message type",
        lambda c: envelope("message.send", {**send_data(c, "k", "t"), "type": "video"}),
        "bad_request",
        ["type"],
    ),
    ("data not an object", lambda c: envelope("message.send", 5), "bad_request", []),
    (
        "missing envelope type",
        lambda c: json.dumps({"id": "bad", "data": {}}),
        "bad_request",
        ["type"],
    ),
    (
        "type not a string",
        lambda c: json.dumps({"type": 7, "id": "bad", "data": {}}),
        "bad_request",
        ["type"],
    ),
    (
        "text over the limit",
        lambda c: envelope("message.send", send_data(c, "k", "x" * 33_000)),
        "too_large",
        ["text"],
    ),
    (
        "edit text as bool",
        lambda c: envelope("message.edit", {"message_id": 1, "text": True}),
        "bad_request",
        ["text"],
    ),
    (
        "read message_id as string",
        lambda c: envelope("message.read", {"chat_id": c, "message_id": "1"}),
        "bad_request",
        ["message_id"],
    ),
    (
        "sync chats not a list",
        lambda c: envelope("chats.sync", {"chats": {"chat_id": c}}),
        "bad_request",
        ["chats"],
    ),
    ("metadata nested deep", lambda c: deep_send(c, "metadata"), "bad_request", []),
    ("unknown field nested deep", lambda c: deep_send(c, "data"), "bad_request", []),
    (
        "envelope field nested deep",
        lambda c: deep_send(c, "envelope"),
        "bad_request",
        [],
    ),
    (
        "nested deep with nul",
        lambda c: deep_send(c, "metadata", 1000, "a\\u0000"),
        "bad_request",
        [],
    ),
    (
        "sync rev as string",
        lambda c: envelope("chats.sync", {"chats": [{"chat_id": c, "rev": "0"}]}),
        "bad_request",
        ["rev"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_bad_frame_is_answered_and_connection_still_works(world, case):
    """The error carries the request id and names the field; nothing is stored; the
    next valid send on the same socket is acked as seq 1."""
    _name, build, code, words = case
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    await wa.raw(build(chat))
    err = await reply_to(wa, "bad")
    assert err["type"] == "error" and err["error"]["code"] == code, err
    for word in words:
        assert word in err["error"]["message"], err
    ack = await wa.ok("message.send", send_data(chat, "k-good", "good"))
    assert ack["seq"] == 1
    rows = await world.sql("SELECT message_key FROM messages WHERE chat_id = $1", chat)
    assert [r["message_key"] for r in rows] == ["k-good"]


@pytest.mark.parametrize(
    "frame", ["not json at all", "[1, 2]", '"a string"', "null", "{}"]
)
async def test_frame_gets_untagged_bad_request_when_id_is_unreadable(world, frame):
    """A frame with no readable id is answered by an error without id; the socket stays."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    await wa.raw(frame)
    ack = await wa.ok("message.send", send_data(chat, "k-good", "good"))
    assert ack["seq"] == 1
    assert [u["error"]["code"] for u in wa.untagged] == ["bad_request"]


async def test_send_is_acked_when_data_has_unknown_fields(world):
    """Extra fields in data do not make a request invalid."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    ack = await wa.ok(
        "message.send",
        {**send_data(chat, "k", "hello"), "colour": "red", "extra": {"x": 1}},
    )
    assert ack["seq"] == 1


async def test_socket_closes_1003_and_stores_nothing_when_frame_is_binary(world):
    """A binary frame, even holding valid JSON, closes the connection with 1003."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    await wa.raw(envelope("message.send", send_data(chat, "k-bin", "binary")).encode())
    assert await wa.wait_closed(10) == 1003
    assert await world.sql("SELECT 1 FROM messages WHERE chat_id = $1", chat) == []


async def test_socket_closes_1009_and_stores_nothing_when_frame_is_oversized(world):
    """A frame over 64 KiB closes the connection with 1009."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    await wa.raw(envelope("message.send", send_data(chat, "k-big", "x" * 70_000)))
    assert await wa.wait_closed(10) == 1009
    assert await world.sql("SELECT 1 FROM messages WHERE chat_id = $1", chat) == []
