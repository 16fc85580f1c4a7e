"""The batch statement itself: one call, many rows, each with its own outcome."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from wsserver.lang import detect
from wsserver.store import SendRow, Store
from wsserver.writer import BatchWriter


@contextlib.asynccontextmanager
async def _store(world: Any) -> AsyncIterator[Store]:
    """A Store on a one-connection pool of the test database."""
    pool = await asyncpg.create_pool(world.dsn, min_size=1, max_size=1, init=Store.connection_init())
    try:
        yield Store(pool)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _writer(world: Any) -> AsyncIterator[BatchWriter]:
    """A running one-lane BatchWriter: sends submitted in one loop turn are one batch."""
    pool = await asyncpg.create_pool(world.dsn, min_size=2, max_size=3, init=Store.connection_init())
    writer = BatchWriter(Store(pool), lanes=1)
    writer.start()
    try:
        yield writer
    finally:
        await writer.stop()
        await pool.close()


@contextlib.asynccontextmanager
async def _other_transaction(world: Any) -> AsyncIterator[tuple[asyncpg.Connection, Any]]:
    """A connection of its own with a transaction open, to hold locks a send meets;
    the test ends the transaction, the connection closes on the way out."""
    conn = await asyncpg.connect(world.dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        yield conn, tx
    finally:
        await conn.close()


async def _until_waiting_for_a_lock(conn: asyncpg.Connection, task: asyncio.Future[Any]) -> bool:
    """Polls until another backend of this database waits for a lock (True) or the
    task is done without one (False)."""
    while not task.done():
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        if waiting:
            return True
        await asyncio.sleep(0.01)
    return False


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
    async with _store(world) as store:
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


async def test_same_key_from_another_sender_in_one_batch_gets_nothing_of_the_first(world):
    """Two senders using one message_key in the same writer batch: the second is
    not answered with the first's message (text, id): an outsider gets not_found,
    another member conflict; a retry by the first sender is its duplicate."""
    a, b, outsider = await world.user(), await world.user(), await world.user()
    chat = await world.chat([a, b])
    async with _writer(world) as writer:
        rows = [_row(chat, a, "k-1", "private text"), _row(chat, outsider, "k-1", "x"),
                _row(chat, b, "k-1", "y"), _row(chat, a, "k-1", "private text")]
        # submitted in one loop turn, so they are one batch
        results = await asyncio.gather(*(writer.write(r) for r in rows))
    assert results[0].message is not None and not results[0].duplicate
    assert results[1].message is None and results[1].error.code == "not_found"
    assert results[2].message is None and results[2].error.code == "conflict"
    assert results[3].duplicate and results[3].message.id == results[0].message.id
    stored = await world.sql("SELECT user_id FROM messages WHERE chat_id = $1", chat)
    assert [r["user_id"] for r in stored] == [a]


async def test_sender_horizon_waits_for_a_row_another_transaction_holds(world):
    """A receipt flush or a read from the sender's other device holding the sender's
    participant row: the send waits for it rather than skip moving the sender's read
    horizon, so the sender's own message never counts as unread for them."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    async with _store(world) as store:
        await store.write_sends([_row(chat, b, "from-b")])
        async with _other_transaction(world) as (holder, tr):
            await holder.execute(
                "SELECT 1 FROM chat_participants WHERE chat_id = $1 AND user_id = $2 FOR UPDATE",
                chat, a,
            )
            send = asyncio.ensure_future(store.write_sends([_row(chat, a, "from-a")]))
            # Until the send either finished (it skipped the row) or waits for the lock.
            await _until_waiting_for_a_lock(holder, send)
            await tr.rollback()
            sent = await send
    assert sent[0].message is not None and sent[0].message.seq == 2
    row = (await world.sql(
        """SELECT c.last_seq - p.last_read_seq AS unread, p.last_read_message_id
             FROM chats c JOIN chat_participants p ON p.chat_id = c.id
            WHERE c.id = $1 AND p.user_id = $2""", chat, a))[0]
    assert row["unread"] == 0
    assert row["last_read_message_id"] == sent[0].message.id


async def test_a_participant_removed_under_the_statement_gets_nothing_stored(world):
    """Found by the newcomer attack: a participant removed while their sends were in
    flight still had a batch of them stored after the leave, and fanned out to them.
    The removal holds the chat row (as ChatService.remove_participant does) while the
    send statement starts: its check still sees the member; its lock of the chat
    waits, then its lock of the sender's participant row sees the leave, so the rows
    are run again in a new statement, which refuses them."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    async with _store(world) as store:
        await store.write_sends([_row(chat, b, "before")])
        async with _other_transaction(world) as (remover, tx):
            await remover.execute("SELECT 1 FROM chats WHERE id = $1 FOR UPDATE", chat)
            await remover.execute(
                "UPDATE chat_participants SET left_at = now() WHERE chat_id = $1 AND user_id = $2",
                chat, b)
            await remover.execute("UPDATE chats SET rev = rev + 1 WHERE id = $1", chat)
            send = asyncio.ensure_future(store.write_sends([
                _row(chat, b, "after-1"), _row(chat, a, "to-both"), _row(chat, b, "after-2")]))
            assert await _until_waiting_for_a_lock(remover, send), \
                "the send statement never waited for the removal"
            await tx.commit()
            results = await send
    assert [r.error.code if r.error else "stored" for r in results] == \
        ["not_found", "stored", "not_found"]
    assert sorted(results[1].members) == [a]  # the fan-out no longer reaches b
    rows = await world.sql("SELECT message_key FROM messages WHERE chat_id = $1 ORDER BY seq", chat)
    assert [r["message_key"] for r in rows] == ["before", "to-both"]


async def test_a_corrected_resend_in_the_same_batch_is_not_answered_with_the_refusal(world):
    """Found by the newcomer attack: a send refused (a reply to another chat's
    message) and its corrected resend with the same key, pipelined into one batch:
    the resend got the first one's refusal. It is now a send of its own."""
    a, b = await world.user(), await world.user()
    chat, other = await world.chat([a, b]), await world.chat([a, b])
    async with _writer(world) as writer:
        elsewhere = await writer.write(_row(other, a, "o"))
        first, fixed = await asyncio.gather(
            writer.write(_row(chat, a, "k", "hi", reply_to_id=elsewhere.message.id)),
            writer.write(_row(chat, a, "k", "hi")),
        )
    assert first.error is not None and first.error.code == "bad_request"
    assert fixed.message is not None and not fixed.duplicate and fixed.message.seq == 1


async def test_a_deleted_chat_refuses_its_members_with_conflict_and_hides_from_strangers(world):
    """Deleted like archived for its participants (`conflict`, nothing stored); a
    stranger still cannot tell the chat exists (`not_found`); a retry of a message
    stored before the deletion is still its duplicate."""
    a, b, stranger = await world.user(), await world.user(), await world.user()
    chat = await world.chat([a, b])
    async with _store(world) as store:
        first = await store.write_sends([_row(chat, a, "before")])
        await world.sql("UPDATE chats SET deleted_at = now(), rev = rev + 1 WHERE id = $1", chat)
        results = await store.write_sends([
            _row(chat, a, "after"), _row(chat, stranger, "x"), _row(chat, a, "before")])
    assert [r.error.code if r.error else "dup" for r in results] == ["conflict", "not_found", "dup"]
    assert results[0].error.message == "chat is deleted"
    assert results[2].message.id == first[0].message.id
    assert len(await world.sql("SELECT 1 FROM messages WHERE chat_id = $1", chat)) == 1
