"""BC-16: unsigned (`alg: none` in any case), stripped and tampered tokens are
refused: 401 with no upgrade at the handshake, as a header and as `?token=`, and
`unauthorized` on `auth.refresh`, which keeps the socket's identity and expiry."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.helpers import WsClient, send_data
from tests.wire import ServerProcess, claims_of, handshake, retamper, unsigned_token
from wsserver.auth import mint
from wsserver.config import Settings


def variants(valid: str) -> dict[str, str]:
    claims = claims_of(valid)
    header, payload, _sig = valid.split(".")
    return {
        "alg none": unsigned_token("none", claims),
        "alg None": unsigned_token("None", claims),
        "alg NONE": unsigned_token("NONE", claims),
        "alg none, manager": unsigned_token("none", {**claims, "role": "manager"}),
        "signature stripped": f"{header}.{payload}.",
        "signature part missing": f"{header}.{payload}",
        "payload tampered": retamper(valid, role="manager"),
        "sub tampered": retamper(valid, sub=str(int(claims["sub"]) + 1)),
        "exp extended": retamper(valid, exp=claims["exp"] + 86400),
    }


@pytest.mark.parametrize("via_query", [False, True], ids=["header", "query"])
async def test_handshake_refuses_401_without_upgrade_when_token_is_unsigned_or_tampered(
    world_with, via_query
):
    """Each forged variant: HTTP 401, no Upgrade, a JSON unauthorized body."""
    world = await world_with()
    uid = await world.user()
    valid = world.token(uid)
    status, headers, _ = await handshake(world.node.ws_port, valid, via_query=via_query)
    # the genuine token is accepted, so the refusals below mean something
    assert status == 101
    forged_tokens = variants(valid)
    for name, forged in forged_tokens.items():
        status, headers, body = await handshake(
            world.node.ws_port, forged, via_query=via_query
        )
        assert status == 401, name
        assert "upgrade" not in headers and "sec-websocket-accept" not in headers, name
        assert json.loads(body)["error"]["code"] == "unauthorized", name


async def test_refresh_with_forged_token_is_unauthorized_and_keeps_identity(world_with):
    """auth.refresh with each variant fails; the socket still acts as its user."""
    world = await world_with()
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    valid = world.token(a, ttl_s=600)
    wa = await WsClient.connect(world.ws_url, valid)
    world.clients.append(wa)
    for name, forged in variants(valid).items():
        reply = await wa.request("auth.refresh", {"token": forged})
        assert reply["type"] == "error" and reply["error"]["code"] == "unauthorized", (
            name
        )
    ack = await wa.ok("message.send", send_data(chat, "k1", "still me"))
    assert ack["user_id"] == a
    assert not wa.closed.is_set()
    session = world.node.registry.sessions_of(a)[0]
    assert (
        session.identity.exp == claims_of(valid)["exp"]
        and session.identity.role == "buyer"
    )


async def test_no_token_text_reaches_the_log_when_server_logs_at_debug(
    fresh_db, tmp_path
):
    """A `beseda serve` at DEBUG refuses forged tokens and accepts a good one, as a
    header and as `?token=`; its log holds no piece of any token."""
    secret = "bc16-secret-" + "k" * 32
    server = ServerProcess(
        fresh_db, secret, tmp_path / "serve", {"BESEDA_LOG_LEVEL": "DEBUG"}
    )
    try:
        await server.ready()
        valid = mint(
            Settings(jwt_secret=secret, data_dir=tmp_path / "mint"), 77, "buyer"
        )
        tokens = [valid, *variants(valid).values()]
        for token in tokens:
            for via_query in (False, True):
                await handshake(server.ws_port, token, via_query=via_query)
    finally:
        server.stop()
    log = Path(server.log_path).read_text()
    assert "conn.refused" in log  # the refusals were logged, without their tokens
    for token in tokens:
        for part in token.split("."):
            if len(part) > 16:
                assert part not in log


async def test_rest_refuses_401_json_when_token_is_unsigned_or_tampered(world_with):
    """GET /api/v1/manager/chat with each forged token: 401 `unauthorized` JSON."""
    world = await world_with()
    manager = await world.user("manager")
    valid = world.token(manager, "manager")
    url = f"http://127.0.0.1:{world.node.http_port}/api/v1/manager/chat"
    async with httpx.AsyncClient() as http:
        ok = await http.get(url, headers={"Authorization": f"Bearer {valid}"})
        assert ok.status_code == 200
        for name, forged in variants(valid).items():
            got = await http.get(url, headers={"Authorization": f"Bearer {forged}"})
            assert got.status_code == 401, name
            assert got.json()["error"]["code"] == "unauthorized", name
