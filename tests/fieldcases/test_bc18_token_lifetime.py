"""BC-18: a live socket does not outlive its token.

Tokens here live a few seconds and the node's leeway is one second. Decisions
(docs/protocol.md): a refresh for another `sub` is `unauthorized`; a refresh that
does not extend the current `exp` is refused (`unauthorized`), never honoured.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.helpers import WsClient, send_data
from tests.wire import RawWs, claims_of

LEEWAY_S = 1.0


async def open_socket(world: Any, uid: int, ttl_s: int) -> tuple[WsClient, float]:
    token = world.token(uid, ttl_s=ttl_s)
    ws = await WsClient.connect(world.ws_url, token)
    world.clients.append(ws)
    return ws, float(claims_of(token)["exp"])


async def until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def test_socket_closes_4001_and_stores_nothing_after_expiry_when_client_keeps_sending(
    world_with,
):
    """A client that never reads keeps typing every 0.5 s and sending every second
    past exp + leeway: it is closed with 4001, and no send made after exp + leeway
    is acked or stored, while those made before are."""
    world = await world_with(jwt_leeway_s=LEEWAY_S)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    token = world.token(a, ttl_s=3)
    exp = float(claims_of(token)["exp"])
    cutoff = exp + LEEWAY_S
    raw = await RawWs.connect(world.node.ws_port, token)
    sent: list[tuple[float, str]] = []
    i = 0
    try:
        while time.time() < cutoff + 1.5:
            await raw.send_json({"type": "typing.start", "data": {"chat_id": chat}})
            if i % 2 == 0:
                sent.append((time.time(), f"k{i}"))
                await raw.send_json(
                    {
                        "type": "message.send",
                        "id": f"k{i}",
                        "data": send_data(chat, f"k{i}", "x"),
                    }
                )
            i += 1
            await asyncio.sleep(0.5)
        code, frames = await raw.until_closed(timeout=10)
    finally:
        raw.close()
    assert code == 4001
    early = {k for t, k in sent if t < exp - 0.5}
    late = {k for t, k in sent if t > cutoff}
    assert early and late
    acked = {f["id"] for f in frames if f.get("type") == "ack"}
    stored = {
        r["message_key"]
        for r in await world.sql(
            "SELECT message_key FROM messages WHERE chat_id = $1", chat
        )
    }
    assert early <= acked and early <= stored
    assert acked.isdisjoint(late) and stored.isdisjoint(late)


async def test_refresh_extends_socket_past_first_expiry_when_token_is_newer(world_with):
    """A newer token for the same sub is acked with its exp; the socket lives on."""
    world = await world_with(jwt_leeway_s=LEEWAY_S)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws, exp = await open_socket(world, a, 3)
    fresh = world.token(a, ttl_s=60)
    ack = await ws.ok("auth.refresh", {"token": fresh})
    assert ack == {"exp": claims_of(fresh)["exp"]}
    await until(exp + LEEWAY_S + 1.0)
    got = await ws.ok("message.send", send_data(chat, "after", "after first exp"))
    assert got["user_id"] == a
    assert not ws.closed.is_set()


async def test_refresh_for_another_user_is_unauthorized_and_socket_closes_at_first_expiry(
    world_with,
):
    """Identity stays the original user's, and the original exp still closes it."""
    world = await world_with(jwt_leeway_s=LEEWAY_S)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws, exp = await open_socket(world, a, 3)
    reply = await ws.request("auth.refresh", {"token": world.token(b, ttl_s=600)})
    assert reply["type"] == "error" and reply["error"]["code"] == "unauthorized"
    ack = await ws.ok("message.send", send_data(chat, "k1", "me"))
    assert ack["user_id"] == a
    assert await ws.wait_closed(exp + LEEWAY_S + 5 - time.time()) == 4001


@pytest.mark.parametrize("shorter_by", [3, 0], ids=["earlier-exp", "same-exp"])
async def test_refresh_not_extending_exp_is_refused_and_first_expiry_stands(
    world_with, shorter_by
):
    """A refresh token expiring earlier (or at the same time) is refused; the
    socket keeps working until its own exp, then closes with 4001."""
    world = await world_with(jwt_leeway_s=LEEWAY_S)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws, exp = await open_socket(world, a, 5)
    weaker = world.token(a, ttl_s=max(1, int(exp - time.time()) - shorter_by))
    if shorter_by == 0:
        weaker_claims = claims_of(weaker)
        assert weaker_claims["exp"] <= exp
    reply = await ws.request("auth.refresh", {"token": weaker})
    assert reply["type"] == "error" and reply["error"]["code"] == "unauthorized"
    weaker_exp = claims_of(weaker)["exp"]
    if weaker_exp < exp - LEEWAY_S - 1:
        await until(weaker_exp + LEEWAY_S + 0.5)
        await ws.ok("message.send", send_data(chat, "k-mid", "still open"))
    assert await ws.wait_closed(exp + LEEWAY_S + 5 - time.time()) == 4001


async def test_refresh_with_another_role_is_refused_and_the_socket_keeps_its_own(world_with):
    """Found by the newcomer attack: a refresh token naming the same user as a
    manager turned a buyer's live socket into a manager's (who may delete others'
    messages). What a socket may do stays fixed for its life; a new role reconnects."""
    world = await world_with(jwt_leeway_s=LEEWAY_S)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    ws_b, _ = await open_socket(world, b, 600)
    theirs = await ws_b.ok("message.send", send_data(chat, "kb", "b's"))
    ws, exp = await open_socket(world, a, 600)
    reply = await ws.request("auth.refresh", {"token": world.token(a, "manager", ttl_s=1200)})
    assert reply["type"] == "error" and reply["error"]["code"] == "unauthorized"
    refused = await ws.request("message.delete", {"message_id": theirs["id"]})
    assert refused["type"] == "error" and refused["error"]["code"] == "forbidden"
    ack = await ws.ok("auth.refresh", {"token": world.token(a, ttl_s=1200)})
    assert ack["exp"] > exp
