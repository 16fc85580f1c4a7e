"""The batch statement itself: one call, many rows, each with its own outcome."""

from __future__ import annotations

import asyncpg

from wsserver.lang import detect
from wsserver.store import SendRow, Store


def _row(chat: int, user: int, key: str, text: str = "x", **kw) -> SendRow:
    return SendRow(chat_id=chat, user_id=user, message_key=key, type="text", text=text,
                   lang=detect(text), metadata=None, reply_to_id=kw.pop("reply_to_id", None), **kw)


async def test_write_sends_one_batch_isolates_each_bad_row(world):
    """Good rows around bad ones are stored with dense seqs; bad rows take no seq."""
    a, b = await world.user(locale="en"), await world.user()
    chat = await world.chat([a, b])
    other = await world.chat([a, b])
    archived = await world.chat([a, b], status="archived")
    stranger = await world.chat([b, await world.user()])
    pool = await asyncpg.create_pool(world.dsn, min_size=1, max_size=1, init=Store.connection_init())
    try:
        store = Store(pool)
        first = await store.write_sends([_row(chat, a, "root")])
        root_id = first[0].message.id
        results = await store.write_sends([
            _row(chat, a, "g1", "Привет"),
            _row(chat, a, "bad-reply", reply_to_id=root_id + 999),
            _row(archived, a, "arch"),
            _row(other, a, "o1", "hello"),
            _row(stranger, a, "intruder"),
            _row(chat, a, "root"),  # a retry of an earlier send
            _row(chat, a, "g2", "你好", reply_to_id=root_id),
            _row(other, a, "o2", "👍"),
        ])
    finally:
        await pool.close()

    outcome = [r.error.code if r.error else ("dup" if r.duplicate else r.message.seq) for r in results]
    assert outcome == [2, "bad_request", "conflict", 1, "not_found", "dup", 3, 2]
    assert results[5].message.id == root_id
    assert [results[0].message.lang, results[6].message.lang] == ["ru", "zh"]
    assert results[7].message.lang == "en"  # emoji only: the sender's locale
    assert sorted(results[0].members) == sorted([a, b])
    rows = await world.sql(
        "SELECT id, last_seq, rev, last_message_id FROM chats WHERE id = ANY($1) ORDER BY id",
        [chat, other, archived, stranger],
    )
    assert [(r["last_seq"], r["rev"]) for r in rows] == [(3, 3), (2, 2), (0, 0), (0, 0)]
    assert rows[0]["last_message_id"] == results[6].message.id
