"""The delivered-receipt flush writes in chunks: every horizon of a flush larger
than one chunk is stored, and each moved horizon is announced once."""

from __future__ import annotations

from typing import Any

import asyncpg

from wsserver import receipts
from wsserver.bus.memory import MemoryBus
from wsserver.registry import Registry
from wsserver.store import SendRow, Store


class _Recorder(MemoryBus):
    def __init__(self) -> None:
        super().__init__(Registry())
        self.published: list[tuple[list[int], bytes]] = []

    def publish_users(self, users: Any, frame: bytes, *args: Any, **kwargs: Any) -> list[int]:
        self.published.append((list(users), frame))
        return list(users)


async def test_flush_larger_than_a_chunk_stores_and_announces_every_horizon(world, monkeypatch):
    monkeypatch.setattr(receipts, "FLUSH_CHUNK", 3)
    monkeypatch.setattr(receipts, "FLUSH_PAUSE_S", 0.0)
    sender = await world.user()
    readers = [await world.user() for _ in range(4)]
    chats = [await world.chat([sender, r]) for r in readers]
    chats.append(await world.chat([sender, *readers]))
    pool = await asyncpg.create_pool(world.dsn, min_size=1, max_size=2, init=Store.connection_init())
    try:
        store = Store(pool)
        sent = await store.write_sends([
            SendRow(chat_id=c, user_id=sender, message_key=f"r-{c}", type="text", text="hi",
                    lang="en", metadata=None, reply_to_id=None)
            for c in chats
        ])
        bus = _Recorder()
        tracker = receipts.DeliveryTracker(store, bus, interval_s=3600)
        for res in sent:
            msg = res.message
            tracker.note(msg.chat_id, msg.seq, sender, [u for u in res.members])
        await tracker.flush()
    finally:
        await pool.close()
    rows = await world.sql(
        "SELECT chat_id, user_id, delivered_seq FROM chat_participants"
        " WHERE chat_id = ANY($1) AND user_id <> $2", chats, sender)
    assert len(rows) == 4 + 4  # four pairs, and the group of five without the sender
    assert all(r["delivered_seq"] == 1 for r in rows)
    # one status event per moved horizon (8 > FLUSH_CHUNK), each to its chat's members
    assert len(bus.published) == 8
    assert all(b'"status":"delivered"' in frame for _users, frame in bus.published)
