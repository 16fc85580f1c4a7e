"""Search in Cyrillic, Latin and Chinese: names, participants, order ids, messages."""

from __future__ import annotations

import pytest

from tests.rest.test_legacy import post


@pytest.fixture(params=["per_chat", "index", "index_capped"])
def search_path(request, monkeypatch):
    """Runs each search test through every message-search path."""
    from wsserver import chatlist

    if request.param != "per_chat":
        monkeypatch.setattr(chatlist, "SEARCH_PER_CHAT_MAX_MESSAGES", 0)
    if request.param == "index_capped":
        monkeypatch.setattr(chatlist, "SEARCH_INDEX_CAP", 1)
    return request.param


@pytest.fixture
async def corpus(api, world, search_path):
    """A client U with four chats of different kinds, and someone else's chat."""
    u = await world.user("client", name="Ульяна")
    seller = await world.user("client", name="Shenzhen Supplier Li")
    other = await world.user("client", name="Чужой")
    oid = next(world.ids)
    names = {
        "zh": "深圳电子供应商",
        "zh2": "订单123 深圳",
        "ru": "Обсуждение ЗАКАЗА",
        "en": "Delivery questions",
    }
    chats = {}
    for key, name in names.items():
        chats[key] = (await api.ok("POST", "/internal/v1/chats", api.service_token(), json={
            "group": "order", "name": name, "order_id": oid if key == "en" else None,
            "users": [{"user_id": u, "role": "member"}, {"user_id": seller, "role": "member"}],
        }))["id"]
    chats["private"] = (await api.ok("POST", "/internal/v1/chats", api.service_token(), json={
        "name": "Заказ 订单 secret", "users": [{"user_id": other}]}))["id"]
    await post(api, chats["zh"], seller, "这是一个测试订单")
    await post(api, chats["en"], seller, "Your parcel is on the way")
    await post(api, chats["ru"], u, "Когда будет готов мой заказ?")
    return {"u": u, "token": world.token(u, "client"), "chats": chats, "oid": oid}


async def found(api, corpus, query) -> list[int]:
    st, body = await api.get("/api/v1/client/chat/search", corpus["token"], query=query)
    assert st == 200, body
    return sorted(c["id"] for c in body["data"])


async def test_russian_search_is_case_insensitive(api, corpus):
    c = corpus["chats"]
    assert await found(api, corpus, "заказ") == sorted([c["ru"]])
    assert await found(api, corpus, "ЗАКАЗ") == sorted([c["ru"]])
    assert await found(api, corpus, "Заказа") == [c["ru"]]


async def test_english_search_matches_names_and_message_text(api, corpus):
    c = corpus["chats"]
    assert await found(api, corpus, "DELIVERY") == [c["en"]]
    assert await found(api, corpus, "parcel") == [c["en"]]
    assert await found(api, corpus, "supplier") == sorted(
        [c["zh"], c["zh2"], c["ru"], c["en"]]
    )


async def test_chinese_search_finds_one_and_two_character_terms(api, corpus):
    """BC-15: sub-word Chinese queries match, spaced terms match token by token."""
    c = corpus["chats"]
    assert await found(api, corpus, "订单") == sorted([c["zh"], c["zh2"]])
    assert await found(api, corpus, "单") == sorted([c["zh"], c["zh2"]])
    assert await found(api, corpus, "测试") == [c["zh"]]
    assert await found(api, corpus, "供应商") == [c["zh"]]
    assert await found(api, corpus, "测试 订单") == [c["zh"]]
    assert await found(api, corpus, "订单123") == [c["zh2"]]
    assert await found(api, corpus, "深圳") == sorted([c["zh"], c["zh2"]])


async def test_percent_encoded_and_plus_spaced_queries_decode_as_forms(api, corpus):
    c = corpus["chats"]
    for raw in ("%E6%B5%8B%E8%AF%95", "%E6%B5%8B%E8%AF%95+%E8%AE%A2%E5%8D%95"):
        st, body = await api.call(
            "GET", f"/api/v1/client/chat/search?query={raw}", corpus["token"]
        )
        assert st == 200 and [x["id"] for x in body["data"]] == [c["zh"]]


async def test_order_id_search_matches_the_chat_of_that_order(api, corpus):
    c = corpus["chats"]
    assert await found(api, corpus, str(corpus["oid"])) == [c["en"]]


async def test_search_never_shows_other_users_chats(api, corpus):
    assert corpus["chats"]["private"] not in await found(api, corpus, "secret")
    assert await found(api, corpus, "Чужой") == []


async def test_deleted_message_text_is_not_searchable(api, world, corpus):
    c = corpus["chats"]
    msg = await post(api, c["en"], corpus["u"], "ephemeral words")
    assert await found(api, corpus, "ephemeral") == [c["en"]]
    ws = await world.connect(corpus["u"], "client")
    await ws.ok("message.delete", {"message_id": msg["id"]})
    assert await found(api, corpus, "ephemeral") == []


async def test_message_search_can_use_the_gram_index(world, corpus):
    """The search expression matches message_grams_idx: with scans priced out (and
    the partial index on messages hidden) the planner looks grams up in it. On a table this small it rightly prefers other
    paths; loadtests/ shows the large case."""
    import asyncpg

    from wsserver.chatlist import _MESSAGE_GRAMS_SQL

    conn = await asyncpg.connect(world.dsn)
    try:
        tr = conn.transaction()
        await tr.start()
        await conn.execute("DROP INDEX messages_chat_live_seq_idx")
        await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch(
            "EXPLAIN (COSTS OFF) " + _MESSAGE_GRAMS_SQL.replace("$1::text[]", "ARRAY['订单']")
            .replace("$2::text[]", "ARRAY['%订单%']").replace("$3", "100")
        )
        await tr.rollback()
    finally:
        await conn.close()
    plan = "\n".join(r[0] for r in rows)
    assert "Bitmap Index Scan on message_grams_idx" in plan, plan


async def test_manager_text_search_groups_results_by_order(api, world, corpus):
    mgr = await world.user("manager")
    await api.ok("PUT", f"/internal/v1/orders/{corpus['oid']}", api.service_token(),
                 json={"manager_id": mgr, "fulfillment_id": 55})
    st, body = await api.get("/api/v1/manager/chat/search", world.token(mgr, "manager"), query="parcel")
    assert st == 200
    assert [(o["order_id"], o["fulfillment_id"], [x["id"] for x in o["chats"]]) for o in body["data"]] == [
        (corpus["oid"], 55, [corpus["chats"]["en"]])
    ]
