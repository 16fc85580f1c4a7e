"""BC-25: oversized input. A text over the limit is `too_large` and the socket stays;
a frame over 64 KiB closes 1009, compressed or not, without inflating it; the text
limit is 32,768 UTF-8 bytes (PROTOCOL.md section 9, docs/protocol.md), so 30,000
Cyrillic characters are too large; repeated abuse ends in 1008 or 4008.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.helpers import World, WsClient, send_data
from tests.wire import ServerProcess, reply_to
from wsserver.config import Settings

LIMIT = 32 * 1024


def frame(rid: str, chat: int, key: str, text: str, **extra: Any) -> str:
    return json.dumps(
        {
            "type": "message.send",
            "id": rid,
            "data": send_data(chat, key, text, **extra),
        },
        ensure_ascii=False,
    )


async def count(world: Any, chat: int) -> int:
    return (
        await world.sql("SELECT count(*) AS n FROM messages WHERE chat_id = $1", chat)
    )[0]["n"]


async def pair(world: Any) -> tuple[int, WsClient]:
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    return chat, await world.connect(a)


TOO_LARGE = [
    ("ascii 40000", "x" * 40_000),
    ("cyrillic 30000 (60 KB UTF-8)", "я" * 30_000),
    ("cyrillic one over", "я" * (LIMIT // 2 + 1)),
    ("emoji one over", "😀" * (LIMIT // 4) + "x"),
]


@pytest.mark.parametrize(
    "text", [t for _, t in TOO_LARGE], ids=[n for n, _ in TOO_LARGE]
)
async def test_send_is_too_large_and_keeps_connection_when_text_is_over_limit(
    world, text
):
    """The error carries the request id; nothing is stored; the socket still works."""
    chat, wa = await pair(world)
    await wa.raw(frame("big", chat, "k-big", text))
    err = await reply_to(wa, "big")
    assert err["type"] == "error" and err["error"]["code"] == "too_large"
    assert "`data.text`" in err["error"]["message"]
    assert await count(world, chat) == 0
    ack = await wa.ok("message.send", send_data(chat, "k-ok", "fine"))
    assert ack["seq"] == 1


@pytest.mark.parametrize(
    "text",
    ["я" * (LIMIT // 2), "😀" * (LIMIT // 4), "a" * LIMIT],
    ids=["cyrillic", "emoji", "ascii"],
)
async def test_send_is_stored_byte_exact_when_text_is_exactly_at_byte_limit(
    world, text
):
    """32,768 UTF-8 bytes is within the limit, whatever the character count."""
    chat, wa = await pair(world)
    await wa.raw(frame("edge", chat, "k-edge", text))
    ack = await reply_to(wa, "edge")
    assert ack["type"] == "ack", ack
    history = await wa.ok("messages.history", {"chat_id": chat})
    assert history["messages"][0]["content"][ack["data"]["lang"]] == text


async def test_edit_and_send_are_too_large_when_text_or_metadata_is_over_limit(world):
    """message.edit text and metadata over 4 KiB are too_large, nothing changes."""
    chat, wa = await pair(world)
    sent = await wa.ok("message.send", send_data(chat, "k1", "small"))
    edit = await wa.request(
        "message.edit", {"message_id": sent["id"], "text": "x" * (LIMIT + 1)}
    )
    assert edit["type"] == "error" and edit["error"]["code"] == "too_large"
    meta = await wa.request(
        "message.send", send_data(chat, "k2", "m", metadata={"n": "x" * 5000})
    )
    assert meta["type"] == "error" and meta["error"]["code"] == "too_large"
    assert "`data.metadata`" in meta["error"]["message"]
    rows = await world.sql(
        "SELECT content, edited_at FROM messages WHERE chat_id = $1", chat
    )
    assert len(rows) == 1 and rows[0]["edited_at"] is None


async def test_socket_closes_1009_when_frame_is_over_64_kib(world):
    """A 2 MiB text frame closes the connection with 1009 and stores nothing."""
    chat, wa = await pair(world)
    await wa.raw(frame("huge", chat, "k-huge", "x" * (2 * 1024 * 1024)))
    assert await wa.wait_closed(10) == 1009
    assert "huge" not in wa.replies
    assert await count(world, chat) == 0


async def test_socket_closes_1008_or_4008_and_server_lives_when_too_large_sends_repeat(
    world,
):
    """A flood of over-limit texts ends with 1008 or 4008, and others still chat."""
    chat, wa = await pair(world)
    text = "x" * 40_000
    for i in range(300):
        if wa.closed.is_set():
            break
        try:
            await wa.raw(frame(f"f{i}", chat, f"f{i}", text))
        except websockets.ConnectionClosed:
            break
    assert await wa.wait_closed(15) in (1008, 4008)
    assert all(v[0]["type"] == "error" for v in wa.replies.values())
    assert await count(world, chat) == 0
    c, d = await world.user(), await world.user()
    fresh_chat = await world.chat([c, d])
    fresh = await world.connect(c)
    assert (await fresh.ok("message.send", send_data(fresh_chat, "k", "alive")))[
        "seq"
    ] == 1


# -- compressed frames, against a server process whose peak RSS can be read ---------

SECRET = "bc25-secret-" + "z" * 32
BOMB_BYTES = 32 * 1024 * 1024  # about 32 KB once deflated: under the 64 KiB frame cap


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@pytest.fixture
async def deflate_server(fresh_db: str, tmp_path: Path) -> Any:
    proc = ServerProcess(
        fresh_db, SECRET, tmp_path / "serve", {"BESEDA_COMPRESSION": "1"}
    )
    try:
        await proc.ready()
        yield proc
    finally:
        proc.stop()


async def test_socket_closes_1009_without_inflating_when_deflated_frame_is_a_bomb(
    deflate_server, fresh_db, tmp_path, new_id
):
    """32 MiB of 'a' deflated to ~32 KB: closed 1009, the server's peak RSS barely moves."""
    world = World(
        fresh_db, Settings(jwt_secret=SECRET, data_dir=tmp_path / "mint"), "", new_id
    )
    uid = await world.user()
    url = f"ws://127.0.0.1:{deflate_server.ws_port}/ws"
    ws = await websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {world.token(uid)}"},
        compression="deflate",
        max_size=2**20,
    )
    try:
        assert ws.response.headers.get("Sec-WebSocket-Extensions", "").startswith(
            "permessage-deflate"
        )
        small = json.dumps(
            {"type": "chat.subscribe", "id": "x", "data": {"chat_id": 1}}
        )
        await ws.send(small)
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] == "x"
        before = peak_rss(deflate_server.pid)
        await ws.send("a" * BOMB_BYTES)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009
    finally:
        await ws.close()
    assert deflate_server.alive()
    assert peak_rss(deflate_server.pid) - before < 10 * 1024 * 1024
