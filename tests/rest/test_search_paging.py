"""Search reads chats newest first and only as far as the page needs; these pin
that every page (and `has_more`) is what the whole, sorted result would give,
on every message-search path."""

from __future__ import annotations

import pytest

from tests.rest.test_legacy import post


@pytest.fixture(params=["per_chat", "index", "index_capped"])
def search_path(request, monkeypatch):
    from wsserver import chatlist

    if request.param != "per_chat":
        monkeypatch.setattr(chatlist, "SEARCH_PER_CHAT_MAX_MESSAGES", 0)
    if request.param == "index_capped":
        monkeypatch.setattr(chatlist, "SEARCH_INDEX_CAP", 1)
    return request.param


async def _age(world, chats: list[int]) -> None:
    """Newest activity in list order: chats[0] newest."""
    await world.sql(
        """UPDATE chats c SET updated_at = now() - make_interval(mins => t.n::int)
             FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, n) WHERE c.id = t.id""",
        chats,
    )


async def test_search_pages_walk_the_whole_result_newest_first(api, world, search_path):
    """150 chats, two in three matching (by message or by name) and spread out:
    pages of 30 give exactly the matches, newest first, with has_more right."""
    u = await world.user("client", name="Ульяна")
    other = await world.user("client", name="Пётр")
    chats, expected = [], []
    for i in range(150):
        kind = i % 3
        name = f"Доставка чат {i}" if kind == 1 else f"чат {i}"
        chat = await world.chat([u, other], name=name)
        await post(api, chat, other, "Ваша доставка готова" if kind == 0 else "Ничего")
        chats.append(chat)
        if kind != 2:
            expected.append(chat)
    await _age(world, chats)
    seen: list[int] = []
    tok = world.token(u, "client")
    for page in range(1, 5):
        st, body = await api.get("/api/v1/client/chat/search", tok, query="ДОСТАВКА",
                                 page=page, per_page=30)
        assert st == 200, body
        seen += [c["id"] for c in body["data"]]
        assert body["meta"]["has_more"] is (page < 4)
    assert seen == expected


@pytest.mark.parametrize("batch", [4, 64])
async def test_manager_search_lists_all_matching_chats_of_an_order(
    api, world, search_path, batch, monkeypatch
):
    """An order's oldest chat is far behind the chats that fill the first page of
    orders; it is still listed under its order, and later pages go on from there."""
    from wsserver import chatlist

    monkeypatch.setattr(chatlist, "SEARCH_BATCH", batch)
    m = await world.user("manager", name="Max")
    b = await world.user("buyer", name="Bob")
    first = next(world.ids) + 10**9
    order_ids = [first + i for i in range(40)]
    await world.sql(
        "INSERT INTO orders (id, buyer_id, manager_id) SELECT o, $2, $3 FROM unnest($1::bigint[]) o",
        order_ids, b, m,
    )
    chats = []  # newest first
    for oid in order_ids:
        chat = await world.chat([b, m], name=f"order {oid}")
        await world.sql("UPDATE chats SET order_id = $1 WHERE id = $2", oid, chat)
        await post(api, chat, b, "parcel ready")
        chats.append(chat)
    old = await world.chat([b, m], name="older chat of the first order")
    await world.sql("UPDATE chats SET order_id = $1 WHERE id = $2", order_ids[0], old)
    await post(api, old, b, "the parcel again")
    await _age(world, chats + [old])

    tok = world.token(m, "manager")
    got = []
    for page in (1, 2, 3, 4, 5):
        st, body = await api.get("/api/v1/manager/chat/search", tok, query="parcel",
                                 page=page, per_page=10)
        assert st == 200, body
        got += [(o["order_id"], [c["id"] for c in o["chats"]]) for o in body["data"]]
        assert body["meta"]["has_more"] is (page < 4)
    assert got[0] == (order_ids[0], [chats[0], old])
    assert got[1:] == [(oid, [c]) for oid, c in zip(order_ids[1:], chats[1:], strict=True)]

    import asyncpg

    from wsserver.chatlist import ChatList, Page, Viewer
    from wsserver.search import parse

    conn = await asyncpg.connect(world.dsn)
    try:
        ids = await ChatList(None)._order_page_ids(  # type: ignore[arg-type]
            conn, Viewer(m, "manager"), parse("parcel"), Page(1, 10)
        )
    finally:
        await conn.close()
    assert len(ids) == len(set(ids)) and old in ids and ids[:11] == chats[:11]


async def test_a_term_common_by_analyze_skips_the_index_and_still_finds_all(
    api, world, node, monkeypatch
):
    """After ANALYZE, a term in most messages is known to be common (its rarest
    gram's frequency), so the capped index read is skipped; a rare or unknown term
    is not. Either way the answer is the same, exact one."""
    import asyncpg

    from wsserver import chatlist
    from wsserver.search import parse

    monkeypatch.setattr(chatlist, "SEARCH_PER_CHAT_MAX_MESSAGES", 0)
    monkeypatch.setattr(chatlist, "SEARCH_INDEX_CAP", 2)
    u = await world.user("client", name="Ульяна")
    other = await world.user("client", name="Пётр")
    chats = []
    for i in range(12):
        chat = await world.chat([u, other], name=f"чат {i}")
        for j in range(4):
            await post(api, chat, other, f"Ваша доставка {j}" if i % 4 else f"склад {j}")
        chats.append(chat)
    await _age(world, chats)
    await node.search_index.drain()
    conn = await asyncpg.connect(world.dsn)
    try:
        await conn.execute("ANALYZE message_grams")
        stats = chatlist.GramStats()
        assert await stats.looks_common(conn, parse("ДОСТАВКА"))
        assert not await stats.looks_common(conn, parse("отсутствует"))
        assert stats.estimate(parse("доставка")) > stats.estimate(parse("склад")) > 0
    finally:
        await conn.close()
    tok = world.token(u, "client")
    for query, expected in (
        ("доставка", [c for i, c in enumerate(chats) if i % 4]),
        ("склад", [c for i, c in enumerate(chats) if not i % 4]),
        ("отсутствует", []),
    ):
        st, body = await api.get("/api/v1/client/chat/search", tok, query=query, per_page=5)
        assert st == 200, body
        assert [c["id"] for c in body["data"]] == expected[:5]
        assert body["meta"]["has_more"] is (len(expected) > 5)
