"""get-chat builds its participants and messages as JSON in PostgreSQL; these pin
that the result is the wire shape the socket gives for the same messages
(`message_out`), field by field, including the awkward values."""

from __future__ import annotations

import itertools

import msgspec

from tests.helpers import send_data
from tests.rest.test_attachments import PDF, png, upload

_keys = itertools.count(1)

AWKWARD_TEXTS = [
    'quote " backslash \\ slash / tab \t newline \n end',
    "control \x01\x1f and \u2028 line separator",
    "emoji 👨\u200d👩\u200d👧 and 🐱",
    "Здравствуйте, заказ готов",
    "您好，订单已发货",
]

AWKWARD_METADATA = [
    {},
    {"kind": "paid", "nested": {"list": [1, 2.5, None, True, "x"], "ключ": "значение"}},
    {"small": 0.0000001, "big": 12345678901234567, "neg": -3, "exp": 1.5e10},
    {"text": "中文 \" \\ \n"},
]


def _no_urls(messages: list[dict]) -> list[dict]:
    """Messages with the signed links taken out (a link may be minted in another
    hour bucket between two calls); asserts each attachment had one."""
    out = []
    for msg in messages:
        atts = []
        for a in msg["attachments"]:
            a = dict(a)
            assert a.pop("url").startswith(f"/internal/v1/attachments/{a['id']}/download?")
            atts.append(a)
        out.append({**msg, "attachments": atts})
    return out


async def test_get_chat_messages_match_the_socket_shape(api, world):
    """Every message field (translations, metadata of every JSON kind, replies,
    edits, system messages, attachments with links) equals what history gives."""
    a = await world.user(name='Анна "А" \\ 安娜')
    m = await world.user("manager", locale="en", name="Manager Max")
    chat = await world.chat([a, m], name="shape")
    wa = await world.connect(a)
    ids = []
    for i, text in enumerate(AWKWARD_TEXTS):
        meta = AWKWARD_METADATA[i % len(AWKWARD_METADATA)]
        extra = {"metadata": meta} if meta else {}
        if ids:
            extra["reply_to_id"] = ids[0]
        ack = await wa.ok("message.send", send_data(chat, f"t{i}", text, **extra))
        ids.append(ack["id"])
    await wa.ok("message.edit", {"message_id": ids[1], "text": "edited text"})
    await world.sql(
        """UPDATE messages SET content = content || '{"en": "Hello", "zh": "你好"}'::jsonb
            WHERE id = $1""",
        ids[3],
    )
    st, img = await upload(api, world.token(a), png(5, 3), "фото.png", chat_id=chat)
    st, doc = await upload(api, world.token(a), PDF, "счёт.pdf", chat_id=chat)
    await wa.ok("message.send", send_data(
        chat, "att", "files", type="image", attachments=[img["data"]["id"], doc["data"]["id"]]
    ))
    st, _ = await api.service("POST", f"/chats/{chat}/messages", json={
        "message_key": "sys", "text": "Заказ оплачен", "metadata": {"kind": "paid"},
    })
    assert st == 201
    gone = await wa.ok("message.send", send_data(chat, "gone", "to delete"))
    await wa.ok("message.delete", {"message_id": gone["id"]})

    hist = await wa.ok("messages.history", {"chat_id": chat})
    expected = [msg for msg in hist["messages"] if msg["deleted_at"] is None]
    st, body = await api.get("/api/v1/buyer/chat/get-chat", world.token(a), chat_id=chat)
    assert st == 200
    got = body["data"]["messages"]
    assert [msg["seq"] for msg in got] == sorted(msg["seq"] for msg in expected)
    assert _no_urls(got) == _no_urls(sorted(expected, key=lambda x: x["seq"]))
    assert [list(msg) for msg in got] == [list(msg) for msg in expected]  # field order too
    with_files = [msg for msg in got if msg["attachments"]]
    assert len(with_files) == 1 and len(with_files[0]["attachments"]) == 2


async def test_get_chat_item_and_participants(api, world):
    """The chat part equals the list item; participants are the current ones, in
    join order, with a null name for a user the projection does not know."""
    a = await world.user(name="Анна")
    m = await world.user("manager", name="Manager Max")
    left = await world.user(name="gone")
    chat = await world.chat([a, m, left], name="people")
    unknown = 10**12 + next(_keys)
    await world.sql(
        "INSERT INTO chat_participants (chat_id, user_id, role) VALUES ($1, $2, 'member')",
        chat, unknown,
    )
    await world.sql(
        "UPDATE chat_participants SET left_at = now() WHERE chat_id = $1 AND user_id = $2",
        chat, left,
    )
    wa = await world.connect(a)
    await wa.ok("message.send", send_data(chat, "p1", "привет"))

    st, body = await api.get("/api/v1/buyer/chat/get-chat", world.token(a), chat_id=chat)
    assert st == 200
    data = body["data"]
    rows = await world.sql(
        """SELECT p.user_id, p.role, u.name, u.role AS user_role, p.last_read_message_id,
                  p.joined_at
             FROM chat_participants p LEFT JOIN users u ON u.id = p.user_id
            WHERE p.chat_id = $1 AND p.left_at IS NULL ORDER BY p.joined_at, p.user_id""",
        chat,
    )
    from wsserver.store import iso

    assert data["participants"] == [
        {"user_id": r["user_id"], "name": r["name"], "role": r["role"],
         "user_role": r["user_role"], "last_read_message_id": r["last_read_message_id"],
         "joined_at": iso(r["joined_at"])}
        for r in rows
    ]
    assert {p["user_id"] for p in data["participants"]} == {a, m, unknown}
    assert [p["name"] for p in data["participants"] if p["user_id"] == unknown] == [None]

    st, listed = await api.get("/api/v1/buyer/chat", world.token(a))
    item = next(c for c in listed["data"] if c["id"] == chat)
    assert {k: v for k, v in data.items() if k not in ("participants", "messages")} == item


async def test_get_chat_of_an_empty_chat_and_an_unknown_caller(api, world):
    """No messages: an empty list. A caller the projection does not know gets the
    default locale and is not taken for a demo account."""
    a = await world.user()
    ghost = 10**12 + next(_keys)
    chat = await world.chat([a, await world.user("manager")], name="empty")
    await world.sql(
        "INSERT INTO chat_participants (chat_id, user_id, role) VALUES ($1, $2, 'member')",
        chat, ghost,
    )
    for uid in (a, ghost):
        st, body = await api.get("/api/v1/buyer/chat/get-chat", world.token(uid), chat_id=chat)
        assert st == 200, body
        assert body["data"]["messages"] == [] and body["data"]["last_message"] is None


async def test_demo_projection_is_refused_before_visibility(api, world):
    """A demo account gets 403 on get-chat whether or not it sees the chat (so a
    demo caller learns nothing about chat ids)."""
    d = await world.user(demo=True)
    mine = await world.chat([d, await world.user("manager")])
    other = await world.chat([await world.user(), await world.user("manager")])
    for chat in (mine, other, 10**15):
        st, body = await api.get("/api/v1/buyer/chat/get-chat", world.token(d), chat_id=chat)
        assert st == 403 and body["error"]["code"] == "forbidden"


async def test_get_chat_body_is_compact_json(api, world, http):
    """PostgreSQL writes the body and the adapter passes it through: it is compact
    (no whitespace outside strings) for chat and message metadata with nulls,
    nesting and awkward strings too, and a long last message is cut as in lists."""
    a = await world.user()
    chat = await world.chat([a, await world.user("manager")], name="compact")
    await world.sql(
        "UPDATE chats SET metadata = $2::text::jsonb WHERE id = $1",
        chat, '{"order": {"note": null, "tags": ["a, b", null]}, "price": 1.50, "ok": true}',
    )
    wa = await world.connect(a)
    extra_metadata = [{"n": None, "s": "null : x, y", "deep": [{"k": None}, [], {}]}, {"": ""}]
    for i, meta in enumerate(AWKWARD_METADATA + extra_metadata):
        extra = {"metadata": meta} if meta else {}
        await wa.ok("message.send", send_data(chat, f"c{i}", AWKWARD_TEXTS[i % 5], **extra))
    long_text = "д" * 198 + "👨\u200d👩\u200d👧" + " tail" * 20
    await wa.ok("message.send", send_data(chat, "long", long_text))

    tok = world.token(a)
    r = await http.get("/api/v1/buyer/chat/get-chat", params={"chat_id": chat},
                       headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200
    assert r.content == msgspec.json.format(r.content, indent=-1)
    data = r.json()["data"]
    assert data["metadata"] == {"order": {"note": None, "tags": ["a, b", None]}, "price": 1.5,
                                "ok": True}
    assert [msg["metadata"] for msg in data["messages"][: len(AWKWARD_METADATA) + 2]] == (
        AWKWARD_METADATA + extra_metadata
    )
    assert data["last_message"] == "д" * 198
    st, listed = await api.get("/api/v1/buyer/chat", tok)
    item = next(c for c in listed["data"] if c["id"] == chat)
    assert {k: v for k, v in data.items() if k not in ("participants", "messages")} == item
