"""Legacy endpoints (PROTOCOL.md section 6) over real HTTP and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from tests.helpers import send_data

_keys = itertools.count(1)


async def post(api, chat: int, user: int, text: str) -> dict:
    return await api.ok(
        "POST", f"/internal/v1/chats/{chat}/messages", api.service_token(),
        json={"message_key": f"k{next(_keys)}", "text": text, "type": "text", "user_id": user},
    )


async def test_buyer_list_shows_only_own_chats_newest_first(api, world):
    """A buyer sees the chats they take part in, newest activity first."""
    a, b, m = await world.user(), await world.user(), await world.user("manager")
    c1 = await world.chat([a, m], name="first")
    c2 = await world.chat([a, m], name="second")
    await world.chat([b, m], name="not a's")
    await post(api, c1, m, "hello")
    status, body = await api.get("/api/v1/buyer/chat", world.token(a))
    assert status == 200
    assert [c["id"] for c in body["data"]] == [c1, c2]
    item = body["data"][0]
    for field in ("id", "name", "type", "group", "status", "order_id", "verification_id",
                  "last_message", "unread", "created_at", "updated_at"):
        assert field in item
    assert item["last_message"] == "hello" and item["unread"] == 1
    assert body["data"][1]["last_message"] is None
    assert body["meta"] == {"page": 1, "per_page": 50, "has_more": False}


async def test_list_filters_by_group_and_archive(api, world):
    """`group` filters, `is_archive=1` lists archived chats only, 0 or absent active."""
    a, m = await world.user("client"), await world.user("manager")
    support = await world.chat([a, m], group="support")
    order = await world.chat([a, m], group="order")
    archived = await world.chat([a, m], group="order", status="archived")
    tok = world.token(a, "client")
    ids = lambda body: [c["id"] for c in body["data"]]  # noqa: E731
    assert ids((await api.get("/api/v1/client/chat", tok))[1]) == [order, support]
    assert ids((await api.get("/api/v1/client/chat", tok, group="support"))[1]) == [support]
    assert ids((await api.get("/api/v1/client/chat", tok, is_archive=1))[1]) == [archived]
    assert ids((await api.get("/api/v1/client/chat", tok, is_archive=0, group="order"))[1]) == [order]


async def test_list_pages_with_page_and_per_page(api, world):
    """Pages do not overlap; `meta.has_more` says when another page exists."""
    a, m = await world.user(), await world.user("manager")
    chats = [await world.chat([a, m], name=f"c{i}") for i in range(5)]
    tok = world.token(a)
    seen = []
    for page in (1, 2, 3):
        status, body = await api.get("/api/v1/buyer/chat", tok, page=page, per_page=2)
        assert status == 200
        assert body["meta"] == {"page": page, "per_page": 2, "has_more": page < 3}
        seen += [c["id"] for c in body["data"]]
    assert sorted(seen) == sorted(chats) and len(seen) == 5


async def test_last_message_in_callers_language_and_never_deleted(api, world):
    """The preview is the caller's translation when one exists, and skips deleted messages."""
    a = await world.user(locale="en")
    b = await world.user(locale="ru")
    chat = await world.chat([a, b])
    first = await post(api, chat, b, "Привет")
    await world.sql(
        """UPDATE messages SET content = content || '{"en": "Hello"}'::jsonb WHERE id = $1""",
        first["id"],
    )
    st, body = await api.get("/api/v1/buyer/chat", world.token(a))
    assert body["data"][0]["last_message"] == "Hello"
    st, body = await api.get("/api/v1/buyer/chat", world.token(b))
    assert body["data"][0]["last_message"] == "Привет"

    second = await post(api, chat, b, "секрет")
    wb = await world.connect(b)
    await wb.ok("message.delete", {"message_id": second["id"]})
    for tok in (world.token(a), world.token(b)):
        st, body = await api.get("/api/v1/buyer/chat", tok)
        assert "секрет" not in json.dumps(body, ensure_ascii=False)
    st, body = await api.get("/api/v1/buyer/chat/get-chat", world.token(b), chat_id=chat)
    assert [msg["id"] for msg in body["data"]["messages"]] == [first["id"]]


@pytest.mark.parametrize(
    "text",
    [
        "a" * 159 + "🐱" + "tail",
        "я" * 99 + "👍🏽" + "я" * 200,
        "x" * 58 + "👨\u200d👩\u200d👧" + "y" * 300,
        "中" * 85 + "𠀀" + "中" * 300,
        "e\u0301" * 150,
    ],
)
async def test_preview_is_cut_at_a_grapheme_boundary(api, world, http, text):
    """BC-26: previews are valid UTF-8 and end on a whole grapheme; history is exact."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    sent = await post(api, chat, b, text)
    r = await http.get("/api/v1/buyer/chat", headers={"Authorization": f"Bearer {world.token(a)}"})
    body = json.loads(r.content.decode("utf-8", errors="strict"))
    preview = body["data"][0]["last_message"]
    assert text.startswith(preview) and "\ufffd" not in preview
    assert len(preview) <= 200
    import regex

    whole = regex.findall(r"\X", text)
    cut = regex.findall(r"\X", preview)
    assert whole[: len(cut)] == cut
    st, body = await api.get("/api/v1/buyer/chat/get-chat", world.token(a), chat_id=chat)
    assert body["data"]["messages"][0]["content"][sent["lang"]] == text


async def test_get_chat_returns_participants_and_latest_messages(api, world):
    """get-chat answers the chat with participants and its latest 50 messages."""
    a = await world.user(name="Анна")
    m = await world.user("manager", name="Manager Max")
    chat = await world.chat([a, m], name="order chat")
    for i in range(55):
        await post(api, chat, a, f"m{i}")
    st, body = await api.get("/api/v1/buyer/chat/get-chat", world.token(a), chat_id=chat)
    assert st == 200
    data = body["data"]
    assert data["id"] == chat and data["name"] == "order chat"
    assert {p["user_id"]: p["name"] for p in data["participants"]} == {a: "Анна", m: "Manager Max"}
    assert [msg["seq"] for msg in data["messages"]] == list(range(6, 56))


async def test_a_chat_of_someone_else_is_404_like_a_missing_one(api, world):
    """No id probing: someone else's chat and a chat that never existed look the same."""
    a, b = await world.user(), await world.user()
    other = await world.chat([b, await world.user("manager")])
    s1, b1 = await api.get("/api/v1/buyer/chat/get-chat", world.token(a), chat_id=other)
    s2, b2 = await api.get("/api/v1/buyer/chat/get-chat", world.token(a), chat_id=10**15)
    assert s1 == s2 == 404 and b1 == b2
    assert b1["error"]["code"] == "not_found"


async def test_demo_buyer_is_refused_list_and_get_chat_but_may_search(api, world):
    """Demo accounts (token claim or projection) get 403 where section 6 says so."""
    a = await world.user()
    chat = await world.chat([a, await world.user("manager")], name="demo zone")
    demo_tok = world.token(a, demo=True)
    for path, params in (("/api/v1/buyer/chat", {}), ("/api/v1/buyer/chat/get-chat", {"chat_id": chat})):
        st, body = await api.get(path, demo_tok, **params)
        assert st == 403 and body["error"]["code"] == "forbidden"
    st, body = await api.get("/api/v1/buyer/chat/search", demo_tok, query="demo")
    assert st == 200 and [c["id"] for c in body["data"]] == [chat]
    d = await world.user(demo=True)
    st, _ = await api.get("/api/v1/buyer/chat", world.token(d))
    assert st == 403
    c = await world.user("client", demo=True)
    st, _ = await api.get("/api/v1/client/chat", world.token(c, "client", demo=True))
    assert st == 200


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/api/v1/buyer/chat", "client"),
        ("/api/v1/buyer/chat/search?query=abc", "manager"),
        ("/api/v1/buyer/chat/get-chat?chat_id=1", "service"),
        ("/api/v1/client/chat", "buyer"),
        ("/api/v1/client/chat/search?query=abc", "buyer"),
        ("/api/v1/manager/chat", "client"),
        ("/api/v1/manager/chat/search?query=1", "buyer"),
        ("/api/v1/manager/chat/getChat?order_id=1", "client"),
        ("/internal/v1/chats/1", "manager"),
    ],
)
async def test_wrong_role_is_forbidden(api, world, path, role):
    """Each endpoint answers 403 to roles that may not call it."""
    uid = await world.user(role if role != "service" else "buyer")
    st, body = await api.call("GET", path, world.token(uid, role))
    assert st == 403 and body["error"]["code"] == "forbidden"


async def test_bad_or_missing_tokens_are_401(api, world):
    """BC-16 on REST: no token, garbage, alg none, a tampered payload: all 401."""
    import base64

    uid = await world.user("manager")
    good = world.token(uid, "manager")
    head, payload, sig = good.split(".")
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    variants = [
        None,
        "garbage",
        f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        f"{b64({'alg': 'NONE', 'typ': 'JWT'})}.{payload}.",
        f"{head}.{payload}.",
        f"{head}.{b64({**claims, 'role': 'service'})}.{sig}",
        world.token(uid, "manager", ttl_s=-60),
    ]
    for tok in variants:
        st, body = await api.get("/api/v1/manager/chat", tok)
        assert st == 401, tok
        assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "query",
    [
        "is_archive=2",
        "is_archive=true",
        "page=0",
        "per_page=201",
        "per_page=abc",
        "group=" + "g" * 65,
        "group=%zz",
        "group=%ff%fe",
        "group=a%00b",
        "group=a&group=b",
        "x=" + "a" * 10_000,
    ],
)
async def test_bad_list_parameters_are_400(api, world, query):
    """Bad parameters answer 400 with a message naming the problem, never 500."""
    a = await world.user("client")
    st, body = await api.call("GET", f"/api/v1/client/chat?{query}", world.token(a, "client"))
    assert st == 400, body
    assert body["error"]["code"] == "bad_request" and body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/api/v1/buyer/chat/get-chat?chat_id=abc", "buyer"),
        ("/api/v1/buyer/chat/get-chat", "buyer"),
        ("/api/v1/buyer/chat/get-chat?chat_id=-1", "buyer"),
        ("/api/v1/buyer/chat/get-chat?chat_id=99999999999999999999", "buyer"),
        ("/api/v1/manager/chat/getChat?order_id=abc", "manager"),
        ("/api/v1/manager/chat/search?query=", "manager"),
        ("/api/v1/client/chat/search", "client"),
        ("/api/v1/client/chat/search?query=+++", "client"),
        ("/api/v1/client/chat/search?query=" + "заказ" * 2000, "client"),
        ("/api/v1/client/chat/search?query=ab", "client"),
    ],
)
async def test_bad_ids_and_queries_are_400(api, world, path, role):
    """Ids must be integers; a search query must be present, short and searchable."""
    uid = await world.user(role)
    st, body = await api.call("GET", path, world.token(uid, role))
    assert st == 400, body
    assert body["error"]["code"] == "bad_request"


async def test_unknown_route_and_method_answer_json_errors(api, world):
    st, body = await api.get("/api/v1/nothing")
    assert st == 404 and body["error"]["code"] == "not_found"
    st, body = await api.call("DELETE", "/api/v1/buyer/chat")
    assert st == 405 and body["error"]["code"] == "bad_request"


async def test_manager_sees_chats_of_managed_orders_and_searches_by_order_id(api, world):
    """Managers see their orders' chats too; search answers orders with fulfillment."""
    mgr = await world.user("manager")
    other_mgr = await world.user("manager")
    buyer = await world.user()
    oid, oid2 = next(world.ids), next(world.ids)
    await api.ok("PUT", f"/internal/v1/orders/{oid}", api.service_token(),
                 json={"buyer_id": buyer, "manager_id": mgr, "fulfillment_id": None})
    await api.ok("PUT", f"/internal/v1/orders/{oid2}", api.service_token(),
                 json={"buyer_id": buyer, "manager_id": other_mgr, "fulfillment_id": 777})
    chat = await api.ok("POST", "/internal/v1/chats", api.service_token(), json={
        "group": "order", "type": "group", "name": "Заказ", "order_id": oid,
        "users": [{"user_id": buyer, "role": "member"}]})
    chat2 = await api.ok("POST", "/internal/v1/chats", api.service_token(), json={
        "group": "order", "type": "group", "name": "Other", "order_id": oid2,
        "users": [{"user_id": buyer, "role": "member"}]})
    tok = world.token(mgr, "manager")
    st, body = await api.get("/api/v1/manager/chat", tok)
    assert [c["id"] for c in body["data"]] == [chat["id"]]
    assert body["data"][0]["unread"] == 0

    st, body = await api.get("/api/v1/manager/chat/search", tok, query=str(oid))
    assert st == 200
    assert len(body["data"]) == 1
    order = body["data"][0]
    chats = order.pop("chats")
    assert order == {
        "order_id": oid, "buyer_id": buyer, "manager_id": mgr, "fulfillment_id": "не назначен",
    }
    assert [c["id"] for c in chats] == [chat["id"]]
    st, body = await api.get("/api/v1/manager/chat/search", tok, query=str(oid2))
    assert st == 200 and body["data"] == []

    st, body = await api.get("/api/v1/manager/chat/getChat", tok, order_id=oid)
    assert st == 200 and body["data"]["order_id"] == oid
    assert [c["id"] for c in body["data"]["chats"]] == [chat["id"]]
    st, body = await api.get("/api/v1/manager/chat/getChat", tok, order_id=oid2)
    assert st == 404

    tok2 = world.token(other_mgr, "manager")
    st, body = await api.get("/api/v1/manager/chat/getChat", tok2, order_id=oid2)
    assert body["data"]["fulfillment_id"] == 777
    assert [c["id"] for c in body["data"]["chats"]] == [chat2["id"]]


async def test_concurrent_list_requests_all_succeed(api, world):
    """BC-07: 200 concurrent list calls while a socket sends: all 200."""
    a, b = await world.user("client"), await world.user("client")
    chat = await world.chat([a, b])
    wa = await world.connect(a, "client")
    tok = world.token(a, "client")
    sends = [wa.send_nowait("message.send", send_data(chat, f"c{i}", f"m{i}")) for i in range(100)]
    results = await asyncio.gather(*(api.get("/api/v1/client/chat", tok) for _ in range(200)))
    assert all(st == 200 for st, _ in results)
    replies = await asyncio.gather(*sends)
    assert all(r["type"] == "ack" for r in replies)


async def test_direct_reads_answer_like_the_routed_ones(api, world, http):
    """The hot GETs skip Starlette's router (`restadapter.app._App`); other methods,
    HEAD and a trailing slash on those paths still answer as routed, and a GET
    answers with the same JSON errors as any endpoint."""
    from restadapter.legacy import direct

    a = await world.user()
    chat = await world.chat([a, await world.user("manager")])
    tok = world.token(a)
    assert "/api/v1/buyer/chat/get-chat" in direct and "/api/v1/manager/chat" in direct
    for path in direct:
        st, body = await api.call("POST", path, tok)
        assert st == 405 and body["error"] == {"code": "bad_request", "message": "method not allowed"}
        r = await http.get(path + "/", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 307 and r.headers["location"].endswith(path)
        st, body = await api.get(path)
        assert st == 401 and body["error"]["code"] == "unauthorized"
    r = await http.head("/api/v1/buyer/chat/get-chat", params={"chat_id": chat},
                        headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200 and r.content == b""
    st, body = await api.get("/api/v1/buyer/chat/get-chat", tok, chat_id=chat)
    assert st == 200 and body["data"]["id"] == chat
