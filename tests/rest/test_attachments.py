"""Uploads: streamed multipart, type sniffed from bytes, metadata, limits, signed
download links, and linking to messages on the socket."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.helpers import send_data

MP3_FRAME = b"\xff\xfb\x90\x00" + b"\x00" * 413  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 200


def png(width: int = 3, height: int = 2) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


async def upload(api, token, data: bytes, name: str, **fields) -> tuple[int, dict]:
    return await api.call(
        "POST", "/internal/v1/attachments", token,
        files={"file": (name, data, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


async def test_png_upload_reports_size_and_dimensions_and_downloads(api, world, http):
    a = await world.user()
    data = png(3, 2)
    st, body = await upload(api, world.token(a), data, "фото.png")
    assert st == 201, body
    out = body["data"]
    assert out["type"] == "image" and out["mime_type"] == "image/png"
    assert out["size"] == len(data) and out["name"] == "фото.png"
    assert out["metadata"]["width"] == 3 and out["metadata"]["height"] == 2
    r = await http.get(out["url"])
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_mp3_upload_reports_duration_and_format(api, world):
    a = await world.user()
    st, body = await upload(api, world.token(a), MP3_FRAME * 120, "voice.mp3")
    assert st == 201, body
    out = body["data"]
    assert out["type"] == "audio" and out["mime_type"] == "audio/mpeg"
    assert out["metadata"]["format"] == "mpeg"
    assert out["metadata"]["duration"] == pytest.approx(3.13, abs=0.05)


async def test_pdf_upload_is_a_file(api, world):
    a = await world.user()
    st, body = await upload(api, world.token(a), PDF, "invoice.pdf")
    assert st == 201 and body["data"]["type"] == "file"
    assert body["data"]["mime_type"] == "application/pdf"
    assert body["data"]["metadata"]["name"] == "invoice.pdf"


async def test_type_comes_from_bytes_not_name(api, world):
    """A renamed executable is refused; a PNG named .pdf is still an image."""
    a = await world.user()
    st, body = await upload(api, world.token(a), ELF, "photo.png")
    assert st == 415 and body["error"]["code"] == "bad_request"
    st, body = await upload(api, world.token(a), b"\x00\x01\x02binary junk", "x.txt")
    assert st == 415
    st, body = await upload(api, world.token(a), png(), "document.pdf")
    assert st == 201 and body["data"]["type"] == "image"
    st, body = await upload(api, world.token(a), png(), "x.png", type="audio")
    assert st == 415
    st, body = await upload(api, world.token(a), "plain text, привет".encode(), "note.txt")
    assert st == 201 and body["data"]["mime_type"] == "text/plain"
    rows = await world.sql("SELECT count(*) AS n FROM message_attachments WHERE uploader_id = $1", a)
    assert rows[0]["n"] == 2


async def test_oversized_upload_is_413_and_leaves_nothing(node_factory, new_id):
    import httpx

    from tests.helpers import World
    from tests.rest.conftest import Api

    node = await node_factory(max_upload_bytes=50_000)
    world = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}", trust_env=False) as c:
        api = Api(c, world, node)
        a = await world.user()
        big = png(1, 1)[:64] + b"\x00" * 80_000
        st, body = await upload(api, world.token(a), big, "big.png")
        assert st == 413 and body["error"]["code"] == "too_large"
        st, body = await upload(api, world.token(a), png(), "small.png")
        assert st == 201
    staging = node.settings.data_dir / "uploads" / ".staging"
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"content": b"not multipart", "headers": {"Content-Type": "text/plain"}}, 400),
        ({"data": {"chat_id": "1"}}, 400),
        ({"files": {"other": ("a.png", b"x")}}, 400),
        ({"files": {"file": ("a.txt", b"")}}, 400),
        ({"files": {"file": ("a.txt", b"hi")}, "data": {"chat_id": "abc"}}, 400),
        ({"content": b"--xx\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=xx"}}, 400),
    ],
)
async def test_malformed_uploads_are_400(api, world, kwargs, status):
    a = await world.user()
    st, body = await api.call("POST", "/internal/v1/attachments", world.token(a), **kwargs)
    assert st == status, body


async def test_upload_to_a_chat_that_is_not_yours_is_404(api, world):
    a, b = await world.user(), await world.user()
    foreign = await world.chat([b, await world.user()])
    st, body = await upload(api, world.token(a), png(), "x.png", chat_id=foreign)
    assert st == 404
    st, body = await upload(api, world.token(b), png(), "x.png", chat_id=foreign)
    assert st == 201


async def test_signed_links_refuse_tampering_and_expiry(api, world, http, node):
    a = await world.user()
    st, body = await upload(api, world.token(a), PDF, "a.pdf")
    url = body["data"]["url"]
    path, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    other = path.replace(f"/{body['data']['id']}/", f"/{body['data']['id'] + 1}/")
    assert (await http.get(f"{other}?{query}")).status_code == 403
    bad_sig = params["sig"][:-2] + ("AA" if not params["sig"].endswith("AA") else "BB")
    assert (await http.get(f"{path}?exp={params['exp']}&sig={bad_sig}")).status_code == 403
    assert (await http.get(f"{path}?exp={int(params['exp']) + 3600}&sig={params['sig']}")).status_code == 403
    signer = node._http.config.app.state.signer
    old = signer.url(body["data"]["id"], now=0)
    assert (await http.get(old)).status_code == 403
    assert (await http.get(path)).status_code == 400


async def test_send_links_own_unused_attachments_and_refuses_others(api, world, http):
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    st, mine = await upload(api, world.token(a), png(4, 4), "p.png", chat_id=chat)
    st, theirs = await upload(api, world.token(b), PDF, "b.pdf")
    att_id = mine["data"]["id"]

    ack = await wa.ok("message.send", send_data(chat, "m1", "look", type="image", attachments=[att_id]))
    assert [x["id"] for x in ack["attachments"]] == [att_id]
    ev = await wb.event("chat.message.new")
    got = ev["data"]["attachments"][0]
    assert got["metadata"]["width"] == 4 and got["url"]
    r = await http.get(got["url"])
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"

    reused = await wa.request("message.send", send_data(chat, "m2", "again", attachments=[att_id]))
    assert reused["type"] == "error" and reused["error"]["code"] == "conflict"
    foreign = await wa.request(
        "message.send", send_data(chat, "m3", "steal", attachments=[theirs["data"]["id"]])
    )
    assert foreign["type"] == "error" and foreign["error"]["code"] == "conflict"
    hist = await wb.ok("messages.history", {"chat_id": chat})
    assert [len(mm["attachments"]) for mm in hist["messages"]] == [1]


async def test_service_uploads_on_a_users_behalf(api, world):
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    st, body = await upload(api, api.service_token(), PDF, "x.pdf")
    assert st == 400
    st, body = await upload(api, api.service_token(), PDF, "x.pdf", user_id=a)
    assert st == 201
    st, out = await api.service("POST", f"/chats/{chat}/messages", json={
        "message_key": "svc-att", "type": "file", "user_id": a, "attachments": [body["data"]["id"]],
    })
    assert st == 201 and out["data"]["attachments"][0]["id"] == body["data"]["id"]


async def test_two_sends_claiming_one_attachment_in_a_batch_only_one_stores(api, world):
    """Two sends of one batch name the same upload: the first gets it, the second
    `conflict` and stores nothing (no attachment-less file message)."""
    import asyncio as _asyncio

    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    st, up = await upload(api, world.token(a), PDF, "a.pdf", chat_id=chat)
    att = up["data"]["id"]
    # pipelined: the writer takes both into one batch behind the filler sends
    fill = [wa.request("message.send", send_data(chat, f"f{i}", "fill")) for i in range(5)]
    one = wa.request("message.send", send_data(chat, "c1", "first", type="file", attachments=[att]))
    two = wa.request("message.send", send_data(chat, "c2", "second", type="file", attachments=[att]))
    replies = await _asyncio.gather(*fill, one, two)
    first, second = replies[-2], replies[-1]
    assert first["type"] == "ack" and [x["id"] for x in first["data"]["attachments"]] == [att]
    assert second["type"] == "error" and second["error"]["code"] == "conflict"
    hist = await wa.ok("messages.history", {"chat_id": chat})
    assert [m["message_key"] for m in hist["messages"] if m["type"] == "file"] == ["c1"]
