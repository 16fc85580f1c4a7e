"""The server's log never holds a token or message text, and each connection line
names its connection; checked on a real `beseda serve` subprocess."""

from __future__ import annotations

import re
import uuid

import pytest
import websockets

from tests.helpers import ServerProcess, World, WsClient, send_data
from wsserver.auth import mint

LINE = re.compile(r"^\S+Z level=(debug|info|warning|error|critical) logger=\S+ \S+")


async def refused(url: str, token: str, *, via_query: bool) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        await WsClient.connect(url, token, via_query=via_query)
    return info.value.response.status_code


@pytest.mark.slow
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_logs_hold_no_token_and_no_message_text(level, fresh_db, base_settings, new_id):
    """Bad and good tokens (header and ?token=), auth.refresh, sends, edits and a
    malformed frame, then a grep of everything the process wrote."""
    server = ServerProcess(fresh_db, base_settings, {"BESEDA_LOG_LEVEL": level})
    await server.start()
    world = World(fresh_db, base_settings, server.ws_url, new_id)
    canary = uuid.uuid4().hex
    foreign = base_settings.with_(jwt_secret="another-secret-" + "y" * 32)
    secrets: list[str] = []
    try:
        a, b = await world.user(), await world.user()
        chat = await world.chat([a, b])

        forged = mint(foreign, a, "buyer")
        garbage = f"opaque-{canary}-token"
        for token in (forged, garbage):
            secrets.append(token)
            assert await refused(server.ws_url, token, via_query=False) == 401
            assert await refused(server.ws_url, token, via_query=True) == 401

        header_token = world.token(a)
        query_token = world.token(b)
        secrets += [header_token, query_token]
        wa = await world.connect(a)
        wb = await WsClient.connect(server.ws_url, query_token, via_query=True)
        world.clients.append(wb)

        texts = [f"canary-text-{canary}-секрет", f"canary-edit-{canary}-тайна"]
        secrets += texts
        ack = await wa.ok("message.send", send_data(chat, f"k-{canary}", texts[0]))
        await wb.event("chat.message.new")
        await wa.ok("message.edit", {"message_id": ack["id"], "text": texts[1]})

        bad_refresh = mint(foreign, a, "buyer", ttl_s=7200)
        good_refresh = world.token(a, ttl_s=7200)
        secrets += [bad_refresh, good_refresh]
        reply = await wa.request("auth.refresh", {"token": bad_refresh})
        assert reply["error"]["code"] == "unauthorized"
        await wa.ok("auth.refresh", {"token": good_refresh})

        malformed = f'{{"type": "message.send", "data": {{"text": "canary-bad-{canary}"'
        secrets.append(f"canary-bad-{canary}")
        await wa.raw(malformed)
        await wa.ok("messages.history", {"chat_id": chat, "limit": 5})
    finally:
        await world.close()
        await server.stop()

    output = "\n".join(server.log_lines)
    assert "conn.open" in output and "conn.refused" in output and "conn.closed" in output
    leaked = [s for s in secrets if s in output]
    signatures = [s.rsplit(".", 1)[1] for s in secrets if s.count(".") == 2]
    leaked += [sig for sig in signatures if sig in output]
    assert canary not in output
    assert base_settings.jwt_secret not in output
    assert not leaked, f"secrets in the {level} log"

    for line in server.log_lines:
        if line.startswith("beseda: "):
            continue
        assert LINE.match(line), line
        event = line.split(" ", 4)[3] if len(line.split(" ", 4)) > 3 else ""
        if event.startswith("conn."):
            assert re.search(r" (conn|hs)=\S+", line), line
