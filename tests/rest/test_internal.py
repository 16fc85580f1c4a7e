"""Internal API (PROTOCOL.md section 7): projections, ChatService, live events."""

from __future__ import annotations

import pytest

from tests.helpers import send_data


async def new_chat(api, users, **kw) -> dict:
    return await api.ok("POST", "/internal/v1/chats", api.service_token(), json={
        "group": kw.pop("group", "order"), "type": "group", "name": kw.pop("name", "chat"),
        "users": [{"user_id": u, "role": "member"} for u in users], **kw,
    })


async def test_user_and_order_upserts_are_idempotent(api, world):
    uid, oid = next(world.ids), next(world.ids)
    body = {"name": "Ли Вэй", "role": "client", "locale": "zh", "is_demo": False}
    for _ in range(2):
        st, out = await api.service("PUT", f"/users/{uid}", json=body)
        assert st == 200 and out["data"]["locale"] == "zh"
    st, out = await api.service("PUT", f"/users/{uid}", json={**body, "name": "Li Wei"})
    assert out["data"]["name"] == "Li Wei"
    rows = await world.sql("SELECT name, role, locale FROM users WHERE id = $1", uid)
    assert dict(rows[0]) == {"name": "Li Wei", "role": "client", "locale": "zh"}
    for _ in range(2):
        st, out = await api.service("PUT", f"/orders/{oid}", json={"buyer_id": uid, "fulfillment_id": None})
        assert st == 200 and out["data"]["fulfillment_id"] is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/users/abc", {}),
        ("PUT", "/users/5", {"locale": "de"}),
        ("PUT", "/users/5", {"is_demo": 1}),
        ("PUT", "/users/5", {"name": "a\u0000b"}),
        ("PUT", "/orders/5", {"buyer_id": "5"}),
        ("PUT", "/orders/5", {"buyer_id": True}),
        ("POST", "/chats", {"type": "channel"}),
        ("POST", "/chats", {"users": [{"user_id": 0}]}),
        ("POST", "/chats", {"metadata": {"x": "y" * 5000}}),
        ("POST", "/chats/1/messages", {"text": "no key"}),
        ("POST", "/chats/1/messages", {"message_key": "k", "type": "text", "text": "no user"}),
    ],
)
async def test_invalid_bodies_are_400_naming_the_problem(api, world, method, path, body):
    st, out = await api.service(method, path, json=body)
    assert st == 400, out
    assert out["error"]["code"] == "bad_request" and out["error"]["message"]


async def test_non_json_body_is_400(api, world):
    st, out = await api.service("PUT", "/users/5", content=b"{not json", headers={"Content-Type": "application/json"})
    assert st == 400
    st, out = await api.service("PUT", "/users/5", content=b"name=x")
    assert st == 400


async def test_create_get_and_update_chat_reach_live_sockets(api, world):
    """A new chat reaches participants as chat.update; PATCH emits chat.update with a rev."""
    a, b = await world.user(), await world.user("manager")
    wa = await world.connect(a)
    chat = await new_chat(api, [a, b], name="new", metadata={"k": 1})
    assert chat["participants"] == [{"user_id": a, "role": "member"}, {"user_id": b, "role": "member"}]
    ev = await wa.event("chat.update")
    assert ev["data"]["id"] == chat["id"] and ev["data"]["name"] == "new"

    st, got = await api.service("GET", f"/chats/{chat['id']}")
    assert st == 200 and got["data"]["metadata"] == {"k": 1}
    st, got = await api.service("PATCH", f"/chats/{chat['id']}", json={"name": "renamed", "group": "support"})
    assert st == 200 and got["data"]["name"] == "renamed" and got["data"]["group"] == "support"
    ev = await wa.event("chat.update")
    assert ev["data"]["name"] == "renamed" and ev["data"]["rev"] == got["data"]["rev"]

    sync = await wa.ok("chats.sync", {"chats": [{"chat_id": chat["id"], "rev": 0}]})
    changes = sync["chats"][0]["changes"]
    assert [c["type"] for c in changes] == ["chat.update"]
    assert changes[0]["data"]["name"] == "renamed"


async def test_archive_reaches_sockets_at_once_and_stops_sends(api, world):
    a, b = await world.user(), await world.user()
    chat = (await new_chat(api, [a, b]))["id"]
    wa, wb = await world.connect(a), await world.connect(b)
    st, out = await api.service("POST", f"/chats/{chat}/archive")
    assert st == 200 and out["data"]["status"] == "archived"
    for ws in (wa, wb):
        ev = await ws.event("chat.archive")
        assert ev["data"]["chat_id"] == chat and ev["data"]["rev"] >= 1
    reply = await wa.request("message.send", send_data(chat, "k1", "late"))
    assert reply["type"] == "error" and reply["error"]["code"] == "conflict"
    st, body = await api.get("/api/v1/buyer/chat", world.token(a), is_archive=1)
    assert [c["id"] for c in body["data"]] == [chat]
    st, out = await api.service("POST", f"/chats/{chat}/unarchive")
    assert out["data"]["status"] == "active"
    assert (await wa.event("chat.update"))["data"]["status"] == "active"


async def test_delete_hides_chat_from_every_list(api, world):
    a, m = await world.user(), await world.user("manager")
    chat = (await new_chat(api, [a, m], name="gone soon"))["id"]
    wa = await world.connect(a)
    st, out = await api.service("DELETE", f"/chats/{chat}")
    assert st == 200 and out["data"]["deleted_at"] is not None
    ev = await wa.event("chat.archive")
    assert ev["data"] == {"chat_id": chat, "deleted": True, "rev": ev["data"]["rev"]}
    for path, params in (("/api/v1/buyer/chat", {}), ("/api/v1/buyer/chat", {"is_archive": 1}),
                         ("/api/v1/buyer/chat/search", {"query": "gone"})):
        st, body = await api.get(path, world.token(a), **params)
        assert body["data"] == []
    st, _ = await api.get("/api/v1/buyer/chat/get-chat", world.token(a), chat_id=chat)
    assert st == 404
    st, _ = await api.service("GET", f"/chats/{chat}")
    assert st == 404
    sync = await wa.ok("chats.sync", {"chats": [{"chat_id": chat, "rev": 0}]})
    assert sync["chats"][0]["reset"] is True


async def test_participants_join_and_leave_with_events(api, world):
    a, b, c = await world.user(), await world.user(), await world.user()
    chat = (await new_chat(api, [a, b]))["id"]
    wa, wc = await world.connect(a), await world.connect(c)
    st, out = await api.service("POST", f"/chats/{chat}/participants", json={"user_id": c, "role": "admin"})
    assert st == 200
    for ws in (wa, wc):
        ev = await ws.event("chat.user.join")
        assert ev["data"]["user_id"] == c and ev["data"]["role"] == "admin"
    await wc.ok("message.send", send_data(chat, "hi", "hi from c"))

    st, out = await api.service("GET", f"/chats/{chat}/participants")
    parts = {p["user_id"]: p for p in out["data"]}
    assert set(parts) == {a, b, c}
    assert parts[a]["unread"] == 1 and parts[b]["unread"] == 1
    assert set(parts[a]) >= {"last_read_message_id", "unread", "is_muted", "left_at"}

    st, out = await api.service("DELETE", f"/chats/{chat}/participants/{c}")
    assert st == 200
    assert (await wa.event("chat.user.leave"))["data"]["user_id"] == c
    assert (await wc.event("chat.user.leave"))["data"]["user_id"] == c
    reply = await wc.request("message.send", send_data(chat, "again", "still here?"))
    assert reply["type"] == "error" and reply["error"]["code"] == "not_found"
    st, out = await api.service("GET", f"/chats/{chat}/participants")
    assert {p["user_id"]: p["left_at"] is not None for p in out["data"]}[c] is True
    st, out = await api.service("DELETE", f"/chats/{chat}/participants/{c}")
    assert st == 404
    sync = await wa.ok("chats.sync", {"chats": [{"chat_id": chat, "rev": 0}]})
    kinds = [ch["type"] for ch in sync["chats"][0]["changes"]]
    assert kinds == ["chat.user.join", "chat.message.new", "chat.user.leave"]

    # said while c was away, then c comes back: history, not unread news
    away = await wa.ok("message.send", send_data(chat, "away", "while c was away"))
    st, _ = await api.service("POST", f"/chats/{chat}/participants", json={"user_id": c, "role": "member"})
    assert st == 200
    st, out = await api.service("GET", f"/chats/{chat}/participants")
    parts = {p["user_id"]: p for p in out["data"]}
    assert parts[c]["left_at"] is None and parts[c]["unread"] == 0
    assert parts[c]["last_read_message_id"] == away["id"]
    await wa.ok("message.send", send_data(chat, "back", "welcome back"))
    st, out = await api.service("GET", f"/chats/{chat}/participants")
    assert {p["user_id"]: p["unread"] for p in out["data"]}[c] == 1


async def test_system_message_is_delivered_once_per_key(api, world):
    a, b = await world.user(), await world.user()
    chat = (await new_chat(api, [a, b]))["id"]
    wa = await world.connect(a)
    body = {"message_key": "sys-1", "text": "Заказ оплачен", "metadata": {"kind": "paid"}}
    st, first = await api.service("POST", f"/chats/{chat}/messages", json=body)
    assert st == 201
    msg = first["data"]
    assert msg["type"] == "system" and msg["user_id"] is None and msg["lang"] == "ru"
    assert msg["duplicate"] is False
    ev = await wa.event("chat.message.new")
    assert ev["data"]["id"] == msg["id"] and ev["data"]["content"]["ru"] == "Заказ оплачен"
    st, again = await api.service("POST", f"/chats/{chat}/messages", json=body)
    assert st == 200 and again["data"]["id"] == msg["id"] and again["data"]["duplicate"] is True
    assert await wa.quiet(0.3, "chat.message.new") == []

    st, out = await api.service("POST", f"/chats/{chat}/messages",
                                json={"message_key": "u1", "type": "text", "text": "hi", "user_id": b})
    assert st == 201 and out["data"]["user_id"] == b
    outsider = await world.user()
    st, out = await api.service("POST", f"/chats/{chat}/messages",
                                json={"message_key": "u2", "type": "text", "text": "hi", "user_id": outsider})
    assert st == 400
    st, out = await api.service("POST", "/chats/999999999/messages", json=body)
    assert st == 404


async def test_messages_list_and_statuses(api, world):
    a, b = await world.user(), await world.user()
    chat = (await new_chat(api, [a, b]))["id"]
    wa, wb = await world.connect(a), await world.connect(b)
    acks = [await wa.ok("message.send", send_data(chat, f"k{i}", f"m{i}")) for i in range(5)]
    st, out = await api.service("GET", f"/chats/{chat}/messages", params={"limit": 2})
    assert [m["seq"] for m in out["data"]["messages"]] == [4, 5] and out["data"]["has_more"]
    st, out = await api.service("GET", f"/chats/{chat}/messages", params={"after_seq": 3})
    assert [m["seq"] for m in out["data"]["messages"]] == [4, 5] and not out["data"]["has_more"]
    st, out = await api.service("GET", f"/chats/{chat}/messages", params={"before_seq": 2})
    assert [m["seq"] for m in out["data"]["messages"]] == [1]
    st, out = await api.service("GET", f"/chats/{chat}/messages", params={"limit": 101})
    assert st == 400

    await wb.ok("message.read", {"chat_id": chat, "message_id": acks[2]["id"]})
    st, out = await api.service("GET", f"/messages/{acks[1]['id']}/statuses")
    assert st == 200
    assert [(s["user_id"], s["status"]) for s in out["data"]] == [(b, "read")]
    assert out["data"][0]["read_at"] is not None
    st, out = await api.service("GET", f"/messages/{acks[4]['id']}/statuses")
    assert out["data"][0]["status"] in ("delivered", None)
    st, out = await api.service("GET", "/messages/999999999/statuses")
    assert st == 404


async def test_deeply_nested_json_bodies_are_bad_requests_not_500(api, world):
    """A 30 KB body nested 5,000 deep answers 400 on every JSON endpoint."""
    nested = '{"a":' * 5000 + "1" + "}" * 5000
    a = await world.user()
    for method, path, token in (
        ("POST", "/api/v1/chat-message", world.token(a)),
        ("POST", "/internal/v1/chats", api.service_token()),
        ("PUT", f"/internal/v1/users/{a}", api.service_token()),
    ):
        st, body = await api.call(
            method, path, token, content=nested, headers={"Content-Type": "application/json"}
        )
        assert st == 400, (path, st, body)
        assert body["error"]["code"] == "bad_request"
