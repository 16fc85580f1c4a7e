"""BC-02: a slow reader never sees a gap while its socket stays open.

The server may shed a reader that falls too far behind (4009), but it never drops
an event and keeps the socket open; after a reconnect, `chats.sync` fills the rest.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import send_data
from tests.wire import RawWs, sync_all

FAST = {"rate_per_s": 100_000.0, "rate_burst": 100_000, "max_pending_requests": 1000}


async def read_slowly(
    raw: RawWs, chat: int, want: int, pause_s: float
) -> tuple[list[int], int | None]:
    """Reads chat.message.new seqs until `want` arrived or the socket closed."""
    seqs: list[int] = []
    while len(seqs) < want:
        msg = await raw.message(timeout=30)
        if msg is None:
            return seqs, raw.close_code
        if msg.get("type") == "chat.message.new" and msg["data"]["chat_id"] == chat:
            seqs.append(msg["data"]["seq"])
        await asyncio.sleep(pause_s)
    return seqs, None


async def pump(sender: Any, chat: int, n: int, text: str) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    for start in range(0, n, 100):
        futs = [
            sender.send_nowait("message.send", send_data(chat, f"k{i}", text))
            for i in range(start, min(n, start + 100))
        ]
        replies.extend(await asyncio.wait_for(asyncio.gather(*futs), 60))
    return replies


async def test_slow_reader_sees_no_gap_and_sync_fills_rest_when_send_queue_is_small(
    world_with,
):
    """With a small send queue the slow reader is shed or served; never a hole."""
    world = await world_with(send_queue_bytes=64 * 1024, **FAST)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    n = 1500
    slow = await RawWs.connect(world.node.ws_port, world.token(b), rcvbuf=8192)
    sender = await world.connect(a)
    try:
        reading = asyncio.get_running_loop().create_task(
            read_slowly(slow, chat, n, 0.002)
        )
        replies = await pump(sender, chat, n, "z" * 1000)
        seqs, code = await asyncio.wait_for(reading, 60)
    finally:
        slow.close()
    assert all(r["type"] == "ack" for r in replies)
    assert seqs == list(range(1, len(seqs) + 1))
    if len(seqs) < n:
        assert code == 4009
    again = await world.connect(b)
    rev = seqs[-1] if seqs else 0  # only sends in this chat: rev == seq
    changes, _ = await sync_all(again, chat, rev, max_pages=1000)
    assert seqs + [c["data"]["seq"] for c in changes] == list(range(1, n + 1))


async def test_slow_reader_gets_every_event_in_order_when_queue_suffices(world_with):
    """A reader slower than the sender but within its queue gets 1..n exactly."""
    world = await world_with(**FAST)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    n = 300
    slow = await RawWs.connect(world.node.ws_port, world.token(b), rcvbuf=8192)
    sender = await world.connect(a)
    try:
        reading = asyncio.get_running_loop().create_task(
            read_slowly(slow, chat, n, 0.005)
        )
        replies = await pump(sender, chat, n, "short")
        seqs, code = await asyncio.wait_for(reading, 60)
    finally:
        slow.close()
    assert all(r["type"] == "ack" for r in replies)
    assert code is None
    assert seqs == list(range(1, n + 1))


async def test_prompt_readers_are_not_shed_when_a_batch_of_large_frames_lands_at_once(
    world_with,
):
    """A batch of 300 x 8 KB sends commits at once: the sender's acks and the
    receiver's events (2.4 MB each) exceed the 1 MiB queue within one loop turn,
    yet both sockets read promptly and neither is closed."""
    world = await world_with(**FAST)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    sender, reader = await world.connect(a), await world.connect(b)
    futs = [
        sender.send_nowait("message.send", send_data(chat, f"k{i}", "ы" * 4000))
        for i in range(300)
    ]
    replies = await asyncio.wait_for(asyncio.gather(*futs), 60)
    assert all(r["type"] == "ack" for r in replies)
    events = await reader.events_of("chat.message.new", 300)
    assert [e["data"]["seq"] for e in events] == list(range(1, 301))
    assert not sender.closed.is_set() and not reader.closed.is_set()


async def test_stalled_reader_is_closed_4009_without_a_gap_when_it_falls_behind(
    world_with,
):
    """A reader that stalls mid-stream is shed with 4009 (seen once it reads again):
    what it got before the close is 1..k exactly, and sync gives k+1..n."""
    world = await world_with(send_queue_bytes=64 * 1024, **FAST)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    n = 2000
    stalled = await RawWs.connect(world.node.ws_port, world.token(b), rcvbuf=8192)
    sender = await world.connect(a)
    loop = asyncio.get_running_loop()

    def shed() -> bool:
        return all(s.closing for s in world.node.registry.sessions_of(b))

    async def stall_then_read() -> tuple[list[int], int | None]:
        seqs, _ = await read_slowly(stalled, chat, 100, 0.002)
        deadline = loop.time() + 60
        while not shed() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert shed(), "the stalled reader was never shed"
        stalled.widen(1024 * 1024)
        rest, code = await read_slowly(stalled, chat, n, 0.0)
        return seqs + rest, code

    try:
        reading = loop.create_task(stall_then_read())
        replies = await pump(sender, chat, n, "q" * 4000)
        seqs, code = await asyncio.wait_for(reading, 90)
    finally:
        stalled.close()
    assert all(r["type"] == "ack" for r in replies)
    assert code == 4009
    assert 100 <= len(seqs) < n
    assert seqs == list(range(1, len(seqs) + 1))
    again = await world.connect(b)
    # pages are small here: a reply stays within a quarter of the 64 KiB queue
    changes, _ = await sync_all(again, chat, seqs[-1], max_pages=1000)
    assert seqs + [c["data"]["seq"] for c in changes] == list(range(1, n + 1))
