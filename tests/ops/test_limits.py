"""Each limit holds with its contract code and its metric, while another client on
the same server goes on unaffected."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from typing import Any

import asyncpg
import pytest
import websockets

from tests.helpers import World, WsClient, send_data
from tests.ops.scrape import delta, scrape, wait_for_metric


@pytest.fixture
async def limited(node_factory: Any, new_id: Any) -> Any:
    """Starts a node with the given limits and a World on it; all closed after."""
    worlds: list[World] = []

    async def start(**overrides: Any) -> tuple[Any, World]:
        node = await node_factory(**overrides)
        world = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
        worlds.append(world)
        return node, world

    yield start
    for w in worlds:
        await w.close()


async def pair(world: World) -> tuple[int, int, int]:
    a, b = await world.user(), await world.user()
    return a, b, await world.chat([a, b])


async def assert_unaffected(world: World, uid: int, chat: int, key: str) -> None:
    """A bystander's socket still sends and gets its ack."""
    client = await world.connect(uid)
    ack = await client.ok("message.send", send_data(chat, key, "bystander"))
    assert ack["message_key"] == key


async def test_connections_per_ip_refused_with_429_json(limited):
    """Past BESEDA_MAX_CONN_PER_IP a handshake gets HTTP 429 with a JSON error;
    another address is still admitted, and a freed slot is reusable."""
    node, world = await limited(max_connections_per_ip=2)
    a, b, _chat = await pair(world)
    c = await world.user()
    before = await scrape(node.http_port)
    first = await world.connect(a)
    await world.connect(b)

    with pytest.raises(websockets.InvalidStatus) as refused:
        await world.connect(c)
    response = refused.value.response
    assert response.status_code == 429
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body)["error"]["code"] == "rate_limited"

    other = await WsClient.connect(
        world.ws_url, world.token(c), local_addr=("127.0.0.2", 0)
    )
    world.clients.append(other)
    assert (await other.ok("chats.sync", {"chats": []})) is not None

    after = await scrape(node.http_port)
    assert delta(before, after, "beseda_rejections_total", reason="connections_ip") == 1
    assert delta(before, after, "beseda_handshakes_total", outcome="limited") == 1

    await first.close()
    await wait_for_metric(
        node.http_port,
        lambda s: delta(before, s, "beseda_connection_closes_total", code="1000") == 1,
    )
    again = await world.connect(c)
    await again.ok("message.send", send_data(await world.chat([c, b]), "ip-1", "slot"))


async def test_connections_per_user_refused_with_429_json(limited):
    """Past BESEDA_MAX_CONN_PER_USER the user's next handshake is a 429; other users
    connect as before."""
    node, world = await limited(max_connections_per_user=2)
    a, b, chat = await pair(world)
    before = await scrape(node.http_port)
    await world.connect(a)
    await world.connect(a)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await world.connect(a)
    assert refused.value.response.status_code == 429
    assert json.loads(refused.value.response.body)["error"]["code"] == "rate_limited"
    after = await scrape(node.http_port)
    assert delta(before, after, "beseda_rejections_total", reason="connections_user") == 1
    await assert_unaffected(world, b, chat, "user-limit")


async def test_flooding_client_gets_retry_after_then_4008_others_unaffected(limited):
    """The token bucket answers rate_limited with retry_after_ms; past the allowed
    violations the socket closes 4008; a second user's sends still go through."""
    node, world = await limited(rate_per_s=0.5, rate_burst=3, rate_violations_before_close=4)
    a, b, chat = await pair(world)
    flooder = await world.connect(a)
    before = await scrape(node.http_port)
    futures = [
        flooder.send_nowait("messages.history", {"chat_id": chat, "limit": 1})
        for _ in range(12)
    ]
    code = await flooder.wait_closed()
    assert code == 4008
    replies = [f.result() for f in futures if f.done() and not f.exception()]
    errors = [r["error"] for r in replies if r["type"] == "error"]
    assert errors and all(e["code"] == "rate_limited" and e["retry_after_ms"] > 0 for e in errors)
    after = await wait_for_metric(
        node.http_port,
        lambda s: delta(before, s, "beseda_connection_closes_total", code="4008") == 1,
    )
    assert delta(before, after, "beseda_rejections_total", reason="rate") >= 5
    await assert_unaffected(world, b, chat, "rate-bystander")


async def test_text_over_limit_is_too_large_and_socket_stays_open(limited):
    """A text over BESEDA_MAX_TEXT_BYTES: `too_large` with the request id; the same
    socket sends the next message."""
    node, world = await limited(max_text_bytes=100)
    a, _b, chat = await pair(world)
    client = await world.connect(a)
    before = await scrape(node.http_port)
    reply = await client.request("message.send", send_data(chat, "big", "я" * 60), rid="big-1")
    assert reply["type"] == "error" and reply["id"] == "big-1"
    assert reply["error"]["code"] == "too_large"
    await client.ok("message.send", send_data(chat, "small", "ok"))
    after = await scrape(node.http_port)
    assert delta(before, after, "beseda_rejections_total", reason="size") == 1


async def test_frame_over_limit_closes_1009_others_unaffected(limited):
    """A frame over BESEDA_MAX_FRAME_BYTES closes that socket with 1009 only."""
    node, world = await limited(max_frame_bytes=2048)
    a, b, chat = await pair(world)
    client = await world.connect(a)
    before = await scrape(node.http_port)
    await client.raw(json.dumps({"type": "chats.sync", "id": "x", "data": {"pad": "x" * 4096}}))
    assert await client.wait_closed() == 1009
    after = await wait_for_metric(
        node.http_port,
        lambda s: delta(before, s, "beseda_connection_closes_total", code="1009") == 1,
    )
    assert delta(before, after, "beseda_rejections_total", reason="size") == 1
    await assert_unaffected(world, b, chat, "frame-bystander")


async def test_repeated_bad_frames_close_1008_and_binary_closes_1003(limited):
    """Malformed frames get bad_request until the allowance runs out (1008); a binary
    frame closes 1003; both count as `policy` rejections."""
    node, world = await limited(bad_frames_before_close=2)
    a, b, chat = await pair(world)
    before = await scrape(node.http_port)
    client = await world.connect(a)
    for _ in range(3):
        await client.raw("not json")
    assert await client.wait_closed() == 1008
    assert [f["error"]["code"] for f in client.untagged] == ["bad_request"] * 3

    binary = await world.connect(a)
    await binary.raw(b"\x00\x01")
    assert await binary.wait_closed() == 1003
    after = await wait_for_metric(
        node.http_port,
        lambda s: delta(before, s, "beseda_rejections_total", reason="policy") == 2,
    )
    assert delta(before, after, "beseda_rejections_total", reason="invalid") == 3
    assert delta(before, after, "beseda_connection_closes_total", code="1008") == 1
    assert delta(before, after, "beseda_connection_closes_total", code="1003") == 1
    await assert_unaffected(world, b, chat, "policy-bystander")


async def test_pending_requests_limit_answers_rate_limited(limited):
    """With BESEDA_MAX_PENDING_REQUESTS in flight, the next request is refused with
    rate_limited and retry_after_ms; once the first finishes, requests pass again."""
    node, world = await limited(max_pending_requests=1)
    a, _b, chat = await pair(world)
    client = await world.connect(a)
    locker = await asyncpg.connect(node.dsn)
    try:
        before = await scrape(node.http_port)
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        stuck = client.send_nowait("messages.history", {"chat_id": chat, "limit": 1})
        await wait_for_metric(
            node.http_port,
            lambda s: delta(before, s, "beseda_db_pool_acquire_seconds_count") >= 1,
        )
        refused = await client.request("messages.history", {"chat_id": chat, "limit": 1})
        assert refused["type"] == "error"
        assert refused["error"]["code"] == "rate_limited"
        assert refused["error"]["retry_after_ms"] > 0
        await tx.rollback()
        assert (await stuck)["type"] == "ack"
        await client.ok("messages.history", {"chat_id": chat, "limit": 1})
        after = await scrape(node.http_port)
        assert delta(before, after, "beseda_rejections_total", reason="pending") == 1
    finally:
        await locker.close()


async def test_silent_tcp_client_is_dropped_at_handshake_timeout(limited):
    """A socket that never sends its upgrade request is closed after
    BESEDA_HANDSHAKE_TIMEOUT_S and counted as a `timeout` handshake."""
    node, world = await limited(handshake_timeout_s=0.3)
    a, b, chat = await pair(world)
    before = await scrape(node.http_port)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.ws_port)
    try:
        assert await asyncio.wait_for(reader.read(), 15) == b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    after = await wait_for_metric(
        node.http_port,
        lambda s: delta(before, s, "beseda_handshakes_total", outcome="timeout") == 1,
    )
    assert delta(before, after, "beseda_handshakes_total", outcome="ok") == 0
    await assert_unaffected(world, b, chat, "hs-bystander")


async def raw_upgrade(port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgrade by hand, so nothing answers the server's pings after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_client_ignoring_pings_is_closed_others_keep_going(limited):
    """A client that never answers keepalive pings is closed (1011, ping timeout
    counted) while a normal client on the same node stays connected."""
    node, world = await limited(ping_interval_s=0.2, ping_timeout_s=0.2)
    a, b, chat = await pair(world)
    bystander = await world.connect(b)
    before = await scrape(node.http_port)
    reader, writer = await raw_upgrade(node.ws_port, world.token(a))
    try:
        while await asyncio.wait_for(reader.read(4096), 15):
            pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    after = await wait_for_metric(
        node.http_port, lambda s: delta(before, s, "beseda_ping_timeouts_total") == 1
    )
    assert delta(before, after, "beseda_connection_closes_total", code="1011") == 1
    assert not bystander.closed.is_set()
    await bystander.ok("message.send", send_data(chat, "ping-bystander", "still here"))


async def test_client_answering_pings_is_pinged_each_interval_and_kept(limited):
    """The node-wide keepalive pings every socket about once per interval; a client
    that answers each ping (by hand, so every ping is seen) is never closed."""
    node, world = await limited(ping_interval_s=0.2, ping_timeout_s=0.2)
    a, _b, _chat = await pair(world)
    before = await scrape(node.http_port)
    reader, writer = await raw_upgrade(node.ws_port, world.token(a))
    pings = 0
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5
        while loop.time() < end:
            try:
                head = await asyncio.wait_for(reader.readexactly(2), end - loop.time())
            except asyncio.TimeoutError:
                break
            opcode, size = head[0] & 0x0F, head[1] & 0x7F
            assert size < 126, "no large frame expected on an idle socket"
            payload = await reader.readexactly(size)
            assert opcode == 0x9, f"unexpected opcode {opcode} (8 would be a close)"
            pings += 1
            mask = os.urandom(4)
            writer.write(bytes([0x8A, 0x80 | size]) + mask
                         + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    # 1.5 s at one ping per 0.2 s: about 7; the bound leaves room for a slow machine.
    assert pings >= 3
    after = await scrape(node.http_port)
    assert delta(before, after, "beseda_ping_timeouts_total") == 0
