"""BC-01: a consumer that stops reading must not grow server memory without bound.

The server runs as a `beseda serve` process so its RSS can be sampled; the stuck
consumer is a real socket with a 4 KiB receive buffer that the test never reads
until the end. It must be shed with 4009, and then resume with `chats.sync`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import World, WsClient, send_data
from tests.wire import RawWs, ServerProcess, rss_bytes, sync_all
from wsserver.config import Settings

SECRET = "bc01-secret-" + "y" * 32
MESSAGES = 5000
TEXT_BYTES = 4096
WINDOW = 200
# 5,000 x 4 KiB is ~20 MiB of frames for the stuck socket alone; shed at a 1 MiB
# queue, the server's growth stays well under that.
RSS_GROWTH_LIMIT = 16 * 1024 * 1024


async def send_many(
    client: WsClient, chat: int, prefix: str, n: int, text: str
) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    for start in range(0, n, WINDOW):
        futs = [
            client.send_nowait("message.send", send_data(chat, f"{prefix}{i}", text))
            for i in range(start, min(n, start + WINDOW))
        ]
        replies.extend(await asyncio.wait_for(asyncio.gather(*futs), 60))
    return replies


async def slow_closes(http: httpx.AsyncClient, server: ServerProcess) -> float:
    resp = await http.get(f"http://127.0.0.1:{server.http_port}/metrics")
    for line in resp.text.splitlines():
        if line.startswith("beseda_slow_consumer_closes_total "):
            return float(line.split()[1])
    return 0.0


async def open_sockets(http: httpx.AsyncClient, server: ServerProcess) -> float:
    resp = await http.get(f"http://127.0.0.1:{server.http_port}/metrics")
    for line in resp.text.splitlines():
        if line.startswith("beseda_connections_open "):
            return float(line.split()[1])
    raise AssertionError("no beseda_connections_open metric")


@pytest.fixture
async def server(fresh_db: str, tmp_path: Path) -> Any:
    proc = ServerProcess(
        fresh_db,
        SECRET,
        tmp_path / "serve",
        {
            "BESEDA_RATE_PER_S": "100000",
            "BESEDA_RATE_BURST": "100000",
            "BESEDA_MAX_PENDING_REQUESTS": "1000",
            "BESEDA_COMPRESSION": "0",
            "BESEDA_SEND_QUEUE_BYTES": str(1024 * 1024),
        },
    )
    try:
        await proc.ready()
        yield proc
    finally:
        proc.stop()


@pytest.mark.slow
async def test_slow_consumer_is_shed_4009_and_memory_stays_bounded_when_it_stops_reading(
    server: ServerProcess, fresh_db: str, tmp_path: Path, new_id: Any
) -> None:
    """A stuck reader is closed with 4009, RSS stays bounded, sync gives all once,
    and a device that never reads again is let go too."""
    settings = Settings(jwt_secret=SECRET, data_dir=tmp_path / "mint")
    world = World(fresh_db, settings, f"ws://127.0.0.1:{server.ws_port}/ws", new_id)
    a, b, d = await world.user(), await world.user(), await world.user()
    chat = await world.chat([a, b])
    warm_chat = await world.chat([a, d])
    text = "x" * TEXT_BYTES

    stuck = await RawWs.connect(server.ws_port, world.token(b), rcvbuf=4096)
    await stuck.send_json(
        {"type": "chat.subscribe", "id": "s1", "data": {"chat_id": chat}}
    )
    sub_ack = await stuck.message()
    assert sub_ack is not None and sub_ack["type"] == "ack" and sub_ack["id"] == "s1"
    # a second device of B that never reads again, not even after being shed
    frozen = await RawWs.connect(server.ws_port, world.token(b), rcvbuf=4096)

    sender = await WsClient.connect(world.ws_url, world.token(a))
    try:
        # warm the allocator and the pool on a chat nobody reads, then take a baseline
        warm = await send_many(sender, warm_chat, "w", 500, text)
        assert all(r["type"] == "ack" for r in warm)
        await asyncio.sleep(0.5)
        baseline = rss_bytes(server.pid)
        peak = baseline
        sampling = True
        reader: asyncio.Task[tuple[int | None, list[dict[str, Any]]]] | None = None

        async def sample() -> None:
            # Samples RSS; once the server reports both B sockets shed, one
            # of them starts reading again so that it can see its close frame.
            nonlocal peak, reader
            async with httpx.AsyncClient() as http:
                while sampling:
                    peak = max(peak, rss_bytes(server.pid))
                    if reader is None and await slow_closes(http, server) >= 2:
                        stuck.widen(1024 * 1024)
                        reader = asyncio.get_running_loop().create_task(
                            stuck.until_closed(timeout=30)
                        )
                    await asyncio.sleep(0.2)

        sampler = asyncio.get_running_loop().create_task(sample())
        replies = await send_many(sender, chat, "k", MESSAGES, text)
        sampling = False
        await sampler
        peak = max(peak, rss_bytes(server.pid))
    finally:
        await sender.close()

    bad = [r for r in replies if r["type"] != "ack"]
    assert bad == []
    assert sorted(r["data"]["seq"] for r in replies) == list(range(1, MESSAGES + 1))
    assert peak - baseline < RSS_GROWTH_LIMIT, (baseline, peak)

    # The stuck client read again only after the shed: gap-free, then 4009.
    assert reader is not None
    code, frames = await reader
    stuck.close()
    assert code == 4009
    seen = [f["data"]["seq"] for f in frames if f.get("type") == "chat.message.new"]
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) < MESSAGES
    assert server.alive()

    again = await WsClient.connect(world.ws_url, world.token(b))
    try:
        changes, pages = await sync_all(again, chat, 0)
        assert len(pages) >= 2
        assert [p["has_more"] for p in pages] == [True] * (len(pages) - 1) + [False]
        assert [c["type"] for c in changes] == ["chat.message.new"] * MESSAGES
        assert [c["data"]["seq"] for c in changes] == list(range(1, MESSAGES + 1))
        last_rev = changes[-1]["data"]["rev"]
        tail, _ = await sync_all(again, chat, last_rev)
        assert tail == []
    finally:
        await again.close()

    # The frozen device never read its close frame: the server still let it go
    # (after its close timeout), so no socket is left open on the server.
    async with httpx.AsyncClient() as http:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while await open_sockets(http, server) > 0 and loop.time() < deadline:
            await asyncio.sleep(0.25)
        assert await open_sockets(http, server) == 0
    frozen.close()
