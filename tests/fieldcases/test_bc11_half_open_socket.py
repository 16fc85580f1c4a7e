"""BC-11: a peer that vanishes without a FIN stops typing within the typing TTL and
is dropped within ping_interval + ping_timeout (+ close_timeout); afterwards it
is listed neither typing nor online."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.wire import RawWs

PING_S = 0.5
TTL_S = 1.5
CLOSE_TIMEOUT_S = 5.0  # the server's close handshake bound


async def silent_typist(world: Any, user: int, chat: int) -> RawWs:
    """A raw client that subscribes, starts typing, then never reads again."""
    raw = await RawWs.connect(world.node.ws_port, world.token(user))
    await raw.send_json(
        {"type": "chat.subscribe", "id": "s", "data": {"chat_id": chat}}
    )
    await raw.send_json({"type": "typing.start", "id": "t", "data": {"chat_id": chat}})
    got = set()
    while got != {"s", "t"}:
        msg = await raw.message()
        assert msg is not None
        if msg.get("type") == "ack":
            got.add(msg["id"])
    return raw


# A real client process: subscribes, starts typing, then idles (and exits by itself
# after 60 s). The test freezes it with SIGSTOP, so it neither reads nor answers pings.
TYPIST = r"""
import json, sys, time
from websockets.sync.client import connect
url, token, chat = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = {"Authorization": "Bearer " + token}
with connect(url, additional_headers=headers, compression=None) as ws:
    ws.send(json.dumps({"type": "chat.subscribe", "id": "s", "data": {"chat_id": chat}}))
    ws.send(json.dumps({"type": "typing.start", "id": "t", "data": {"chat_id": chat}}))
    got = set()
    while got != {"s", "t"}:
        m = json.loads(ws.recv(timeout=10))
        if m.get("type") == "ack":
            got.add(m["id"])
    print("ready", flush=True)
    time.sleep(60)
"""


@contextlib.asynccontextmanager
async def frozen_typist(
    world: Any, user: int, chat: int, how: str
) -> AsyncIterator[None]:
    """A typist that goes silent: a socket never read again, or a stopped process."""
    if how == "silent-socket":
        raw = await silent_typist(world, user, chat)
        try:
            yield
        finally:
            raw.close()
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", TYPIST, world.ws_url, world.token(user), str(chat)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline), 20
        )
        assert line.strip() == b"ready"
        os.kill(proc.pid, signal.SIGSTOP)
        yield
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def typing_event(client: Any, user: int, timeout: float) -> bool:
    while True:
        ev = await client.event("chat.user.typing", timeout)
        if ev["data"]["user_id"] == user:
            return ev["data"]["typing"]


@pytest.mark.parametrize("how", ["silent-socket", "sigstopped-process"])
async def test_half_open_typist_stops_typing_and_goes_offline_when_it_stops_answering(
    world_with, how
):
    """Typing lapses by TTL; the silent peer is dropped by keepalive."""
    world = await world_with(
        ping_interval_s=PING_S, ping_timeout_s=PING_S, typing_ttl_s=TTL_S
    )
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wb = await world.connect(b)
    await wb.ok("chat.subscribe", {"chat_id": chat})
    async with frozen_typist(world, a, chat, how):
        assert await typing_event(wb, a, 5) is True
        sub = await wb.ok("chat.subscribe", {"chat_id": chat})
        assert a in sub["online"]

        # no typing.stop ever comes: the TTL ends it
        assert await typing_event(wb, a, TTL_S + 2) is False

        # keepalive drops the silent peer: poll what B is told, bounded
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * PING_S + CLOSE_TIMEOUT_S + 3
        while True:
            sub = await wb.ok("chat.subscribe", {"chat_id": chat})
            if a not in sub["online"] or loop.time() > deadline:
                break
            await asyncio.sleep(0.25)
        assert a not in sub["online"] and a not in sub["typing"]
        assert world.node.registry.connections_of(a) == 0


async def test_typing_ends_at_disconnect_when_typist_resets_connection(world_with):
    """A typist whose TCP connection is reset is announced typing=false at once,
    long before its typing TTL."""
    world = await world_with(typing_ttl_s=60.0)
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wb = await world.connect(b)
    await wb.ok("chat.subscribe", {"chat_id": chat})
    typist = await silent_typist(world, a, chat)
    assert await typing_event(wb, a, 5) is True
    typist.reset()
    assert await typing_event(wb, a, 5) is False
    sub = await wb.ok("chat.subscribe", {"chat_id": chat})
    assert a not in sub["typing"] and a not in sub["online"]
