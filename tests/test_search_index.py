"""The search indexer: every way a message's text changes reaches message_grams,
exactly once in effect, in rev order, shared between nodes, and a failed pass
loses nothing."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from tests.helpers import send_data
from wsserver import metrics
from wsserver.search import fold, grams, text_grams
from wsserver.search_index import SearchIndexer
from wsserver.store import Store


async def _grams_of(world, message_id: int) -> set[str] | None:
    rows = await world.sql("SELECT grams FROM message_grams WHERE message_id = $1", message_id)
    return set(rows[0]["grams"].split()) if rows else None


async def _queued(world) -> int:
    return (await world.sql("SELECT count(*) AS n FROM message_grams_queue"))[0]["n"]


async def test_sent_edited_translated_and_deleted_text_reaches_the_index(world, node):
    a, b = await world.user(locale="ru"), await world.user(locale="en")
    chat = await world.chat([a, b])
    ws = await world.connect(a)
    msg = await ws.ok("message.send", send_data(chat, "k1", "Где мой ЗАКАЗ? 订单"))
    mid = msg["id"]
    assert await _grams_of(world, mid) is None  # committed and acked before indexing
    assert await _queued(world) == 1
    before = metrics.SEARCH_INDEXED._value.get()
    assert await node.search_index.drain() == 1
    assert metrics.SEARCH_INDEXED._value.get() == before + 1
    got = await _grams_of(world, mid)
    assert {"зак", "ака", "каз", "订", "单", "订单", "где"} <= got
    assert set(grams("заказ")) <= got

    await ws.ok("message.edit", {"message_id": mid, "text": "Посылка пришла"})
    await node.search_index.drain()
    got = await _grams_of(world, mid)
    assert "пос" in got and "зак" not in got and "订单" not in got

    # A translation landing is an UPDATE of content like any other (the trigger).
    await world.sql(
        """WITH bump AS (UPDATE chats SET rev = rev + 1 WHERE id = $1 RETURNING rev)
           UPDATE messages SET content = content || '{"en": "Parcel arrived"}',
                  rev = (SELECT rev FROM bump) WHERE id = $2""", chat, mid)
    await node.search_index.drain()
    got = await _grams_of(world, mid)
    assert {"пос", "par", "arr"} <= got

    await ws.ok("message.delete", {"message_id": mid})
    await node.search_index.drain()
    assert await _grams_of(world, mid) == set()
    assert await _queued(world) == 0


async def test_the_node_indexes_by_itself_within_its_interval(world_with):
    world = await world_with(search_index_interval_s=0.05)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws = await world.connect(a)
    mid = (await ws.ok("message.send", send_data(chat, "k1", "самостоятельно")))["id"]
    for _ in range(400):  # bounded by count: the loop runs every 50 ms
        if await _grams_of(world, mid):
            break
        await asyncio.sleep(0.05)
    assert "сам" in await _grams_of(world, mid)
    assert metrics.SEARCH_INDEX_LAG_SECONDS._value.get() >= 0


async def test_updates_that_leave_text_alone_queue_nothing(world, node):
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws = await world.connect(a)
    mid = (await ws.ok("message.send", send_data(chat, "k1", "текст")))["id"]
    await node.search_index.drain()
    await world.sql("UPDATE messages SET metadata = '{\"x\": 1}' WHERE id = $1", mid)
    assert await _queued(world) == 0


async def test_an_older_content_never_replaces_a_newer_one(world, node):
    """Two indexers that raced over one message: the write with the lower rev loses,
    whichever lands last."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws = await world.connect(a)
    mid = (await ws.ok("message.send", send_data(chat, "k1", "первый")))["id"]
    await ws.ok("message.edit", {"message_id": mid, "text": "второй"})
    await node.search_index.drain()
    rev = (await world.sql("SELECT rev FROM messages WHERE id = $1", mid))[0]["rev"]
    from wsserver.search_index import _PUT_SQL

    await world.sql(_PUT_SQL, [mid], [rev - 1], [text_grams("первый")])
    assert "вто" in await _grams_of(world, mid)
    await world.sql(_PUT_SQL, [mid], [rev + 1], [text_grams("третий")])
    assert "тре" in await _grams_of(world, mid)


async def test_a_failed_pass_leaves_its_queue_rows_for_the_next(world, node):
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws = await world.connect(a)
    mid = (await ws.ok("message.send", send_data(chat, "k1", "устойчивость")))["id"]
    conn = await asyncpg.connect(world.dsn)
    try:
        # message_grams locked: the pass's write waits, then hits the statement timeout.
        await conn.execute("BEGIN; LOCK TABLE message_grams IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(node.search_index.run_once(), timeout=1.0)
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()
    assert await _queued(world) == 1
    assert await node.search_index.drain() == 1
    assert "уст" in await _grams_of(world, mid)


async def test_two_indexers_share_the_queue_and_index_everything_once(world_with):
    """Nodes run an indexer each: queue rows one holds are skipped by the other."""
    world = await world_with(rate_burst=1000)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws = await world.connect(a)
    sent = [
        (await ws.ok("message.send", send_data(chat, f"k{i}", f"сообщение номер {i}")))
        ["id"] for i in range(300)
    ]
    pools = [
        await asyncpg.create_pool(world.dsn, min_size=1, max_size=2, init=Store.connection_init())
        for _ in range(2)
    ]
    try:
        indexers = [SearchIndexer(Store(p), batch=25) for p in pools]
        done = await asyncio.gather(*(ix.drain() for ix in indexers))
    finally:
        for p in pools:
            await p.close()
    assert sum(done) == 300
    rows = await world.sql(
        "SELECT message_id, grams FROM message_grams WHERE message_id = ANY($1)", sent)
    assert len(rows) == 300
    assert all("соо" in r["grams"].split() for r in rows)
    assert await _queued(world) == 0


async def test_python_grams_follow_the_sql_rule(world):
    """text_grams gives the same grams as beseda_grams (sql/0010), which still
    indexes chat and user names, over texts in three scripts, emoji and odd spacing."""
    words = ["привет", "ЗАКАЗ", "Доставка", "hello", "ORDER", "订单", "什么时候发货", "你好",
             "👍", "👨‍👩‍👧", "a", "ab", "No.5", "中a文", "x1", "ΣΟΣ", "İstanbul"]
    seps = [" ", "  ", "\t", "\n", "\r\n", ", ", ""]
    rnd = random.Random(7)
    texts = []
    for _ in range(400):
        parts = []
        for _ in range(rnd.randint(0, 7)):
            parts += [rnd.choice(seps), rnd.choice(words)]
        texts.append("".join(parts))
    texts += ["", " ", "一", "一二", "я" * 4100]
    rows = await world.sql(
        "SELECT t, beseda_grams(t) AS g FROM unnest($1::text[]) AS t", texts)
    for r in rows:
        assert set(text_grams(r["t"]).split()) == set(r["g"]), r["t"]
    # Lowercasing is character by character, as PostgreSQL's: no final sigma.
    assert fold("ΟΣ") == "οσ" and fold("İ") == "i"


async def test_a_failing_indexer_keeps_trying_less_often(world):
    """A pass that fails (here: its pool is closed) is counted and retried; the pause
    doubles from the interval up to MAX_PAUSE_S and falls back after a good pass."""
    from wsserver.search_index import MAX_PAUSE_S

    pool = await asyncpg.create_pool(world.dsn, min_size=1, max_size=1)
    await pool.close()
    ix = SearchIndexer(Store(pool), interval_s=0.05, batch=8)
    before = metrics.SEARCH_INDEX_ERRORS._value.get()
    await ix.start()
    try:
        for _ in range(400):  # bounded by count; 0.05 + 0.1 + 0.2 s of pauses suffice
            if metrics.SEARCH_INDEX_ERRORS._value.get() >= before + 3:
                break
            await asyncio.sleep(0.01)
        assert metrics.SEARCH_INDEX_ERRORS._value.get() >= before + 3
        assert ix._task is not None and not ix._task.done()
        assert ix.take <= 1  # halved on each failure: one message per pass at worst
    finally:
        await ix.stop()
    pauses = [0.05]
    for _ in range(12):
        pauses.append(ix.next_pause(pauses[-1], failed=True))
    assert pauses[:4] == [0.05, 0.1, 0.2, 0.4] and pauses[-1] == MAX_PAUSE_S
    assert ix.next_pause(MAX_PAUSE_S, failed=False) == 0.05


async def test_heavy_messages_are_written_in_several_statements(world_with, monkeypatch):
    """A pass whose grams exceed GRAMS_PER_STATEMENT writes them in several statements
    (one of 200 long messages of random Han text timed out and blocked the queue)."""
    from wsserver import search_index

    monkeypatch.setattr(search_index, "GRAMS_PER_STATEMENT", 500)
    world = await world_with(rate_burst=1000)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws = await world.connect(a)
    rnd = random.Random(3)
    for i in range(20):
        text = "".join(chr(0x4E00 + rnd.randrange(20000)) for _ in range(300))
        await ws.ok("message.send", send_data(chat, f"h{i}", text))
    statements = []
    real_put = search_index._PUT_SQL
    ix = world.node.search_index
    original_execute = asyncpg.connection.Connection.execute

    async def counting(self, query, *args, **kw):
        if query == real_put:
            statements.append(len(args[0]))
        return await original_execute(self, query, *args, **kw)

    monkeypatch.setattr(asyncpg.connection.Connection, "execute", counting)
    assert await ix.drain() == 20
    assert len(statements) >= 10 and sum(statements) == 20
    rows = await world.sql("SELECT count(*) AS n FROM message_grams WHERE grams <> ''")
    assert rows[0]["n"] == 20
