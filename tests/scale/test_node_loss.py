"""Real `beseda serve` processes: one killed with SIGKILL mid-load, one drained with
SIGTERM mid-load. Clients resume on the other node with chats.sync."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest

from tests.helpers import World, WsClient, send_data
from tests.scale.test_redis_outage import View, wait_for

MARK = "plaintext-marker"


class Sender:
    """Sends numbered messages with fresh keys; retries unanswered ones (same key)
    on whatever socket it has; remembers every ack."""

    def __init__(self, chat: int, name: str) -> None:
        self.chat = chat
        self.name = name
        self.acked: dict[str, int] = {}
        self.unanswered: list[str] = []

    async def run(self, ws: WsClient, keys: range, pause: float = 0.005) -> None:
        for i in keys:
            key = f"{self.name}-{i}"
            if ws.closed.is_set():
                self.unanswered.append(key)
                continue
            try:
                reply = await ws.request(
                    "message.send", send_data(self.chat, key, f"{MARK} {i}"), timeout=10
                )
            except (ConnectionError, TimeoutError):
                self.unanswered.append(key)
                continue
            if reply["type"] == "ack":
                self.acked[key] = reply["data"]["id"]
            else:
                assert reply["error"]["code"] == "unavailable", reply
                self.unanswered.append(key)
            await asyncio.sleep(pause)

    async def retry(self, ws: WsClient) -> None:
        for key in self.unanswered:
            ack = await ws.ok(
                "message.send", send_data(self.chat, key, f"{MARK} retry")
            )
            assert key not in self.acked or self.acked[key] == ack["id"]
            self.acked[key] = ack["id"]
        self.unanswered = []


async def world_for(serve, node_factory) -> World:
    from wsserver.config import Settings

    settings = Settings(jwt_secret=serve.env["BESEDA_JWT_SECRET"])
    return World(node_factory.dsn, settings, serve.url, iter(range(10**9, 10**10)))


async def connect(world: World, url: str, uid: int) -> WsClient:
    ws = await WsClient.connect(url, world.token(uid))
    world.clients.append(ws)
    return ws


@pytest.mark.slow
async def test_node_killed_mid_load_clients_resume_elsewhere_with_every_acked_message(
    serve_factory, node_factory, new_id
):
    """SIGKILL one of two nodes while senders on both write one chat: the receiver
    and the sender from the dead node reconnect to the other node, resync, retry;
    every acked message is there once, and the dead node's users go offline and stop
    typing (BC-11 across nodes)."""
    p1, p2 = serve_factory(), serve_factory()
    await asyncio.gather(p1.start(), p2.start())
    w = await world_for(p1, node_factory)
    w.ids = new_id
    a, b, c, d = [await w.user() for _ in range(4)]
    chat = await w.chat([a, b, c, d])
    wa = await connect(w, p1.url, a)
    wb = await connect(w, p2.url, b)
    wc = await connect(w, p2.url, c)
    wd = await connect(w, p2.url, d)  # stays away once its node dies
    await wa.ok("chat.subscribe", {"chat_id": chat})
    await wd.ok("chat.subscribe", {"chat_id": chat})

    async def keep_typing() -> None:
        while not wd.closed.is_set():
            with contextlib.suppress(ConnectionError, TimeoutError):
                await wd.ok("typing.start", {"chat_id": chat}, timeout=2)
            await asyncio.sleep(0.3)

    typist = asyncio.get_running_loop().create_task(keep_typing())
    ev = await wa.event("chat.user.typing", timeout=5)
    assert ev["data"] == {"chat_id": chat, "user_id": d, "typing": True}
    view = View(chat)
    sa, sc = Sender(chat, "a"), Sender(chat, "c")

    async def receive(ws: WsClient) -> None:
        while True:
            ev = await ws.event("chat.message.new", timeout=30)
            view.take([ev], ws)

    reader = asyncio.get_running_loop().create_task(receive(wb))
    load_a = asyncio.get_running_loop().create_task(sa.run(wa, range(120)))
    await sc.run(wc, range(40))
    p2.signal(signal.SIGKILL)
    await p2.wait(10)
    await sc.run(wc, range(40, 50))  # the socket is dead: these go unanswered
    # d never said typing.stop and its node is gone: the relay on p1 lapses
    ev = await wa.event("chat.user.typing", timeout=10)
    assert ev["data"] == {"chat_id": chat, "user_id": d, "typing": False}
    typist.cancel()
    await wb.wait_closed()
    reader.cancel()
    view.take(wb.drain_events(), wb)

    wb = await connect(w, p1.url, b)
    await view.sync(wb)
    reader = asyncio.get_running_loop().create_task(receive(wb))
    wc = await connect(w, p1.url, c)
    await sc.retry(wc)
    await sc.run(wc, range(50, 70))
    await load_a
    await sa.retry(wa)

    rows = await w.sql(
        "SELECT id, seq FROM messages WHERE chat_id = $1 ORDER BY seq", chat
    )
    total = len(rows)
    assert [r["seq"] for r in rows] == list(range(1, total + 1))
    assert total == 120 + 70
    await wait_for(lambda: len(view.seqs) >= total, timeout=20)
    reader.cancel()
    await view.sync(wb)
    assert view.seqs == list(range(1, total + 1))
    acked = set(sa.acked.values()) | set(sc.acked.values())
    assert acked == {r["id"] for r in rows}

    ws_check = await connect(w, p1.url, a)
    for _ in range(200):
        ack = await ws_check.ok("chat.subscribe", {"chat_id": chat})
        if d not in ack["online"]:
            break
        await asyncio.sleep(0.05)
    assert d not in ack["online"] and b in ack["online"]
    await w.close()
    assert MARK not in p1.log.read_text()


@pytest.mark.slow
async def test_sigterm_drains_with_1012_and_clients_resume_on_the_other_node(
    serve_factory, node_factory, new_id
):
    """SIGTERM mid-load: the node stops accepting, finishes in-flight batches, closes
    sockets with 1012 and exits in time; clients resume on the other node and lose
    nothing that was acked."""
    p1 = serve_factory(BESEDA_DRAIN_TIMEOUT_S="4")
    p2 = serve_factory()
    await asyncio.gather(p1.start(), p2.start())
    w = await world_for(p1, node_factory)
    w.ids = new_id
    a, b = await w.user(), await w.user()
    chat = await w.chat([a, b])
    wa = await connect(w, p1.url, a)
    wb = await connect(w, p1.url, b)
    wb2 = await connect(w, p2.url, b)
    view, view2 = View(chat), View(chat)
    sender = Sender(chat, "a")

    async def pipelined(ws: WsClient) -> None:
        futs = {}
        for i in range(300):
            key = f"a-{i}"
            if ws.closed.is_set():
                sender.unanswered.append(key)
                continue
            futs[key] = ws.send_nowait(
                "message.send", send_data(chat, key, f"{MARK} {i}")
            )
            if i == 150:
                p1.signal(signal.SIGTERM)
            await asyncio.sleep(0.002)
        await asyncio.wait(futs.values(), timeout=15)
        for key, fut in futs.items():
            if not fut.done() or fut.exception() is not None:
                sender.unanswered.append(key)
                continue
            reply = fut.result()
            if reply["type"] == "ack":
                sender.acked[key] = reply["data"]["id"]
            else:
                assert reply["error"]["code"] == "unavailable", reply
                sender.unanswered.append(key)

    await pipelined(wa)
    assert await wa.wait_closed() == 1012
    assert await wb.wait_closed() == 1012
    assert await p1.wait(4 + 6) == 0
    assert len(sender.acked) >= 100

    view.take(wb.drain_events(), wb)
    wa = await connect(w, p2.url, a)
    await sender.retry(wa)
    wb = await connect(w, p2.url, b)
    await view.sync(wb)
    rows = await w.sql(
        "SELECT id, seq FROM messages WHERE chat_id = $1 ORDER BY seq", chat
    )
    assert len(rows) == 300 and [r["seq"] for r in rows] == list(range(1, 301))
    assert view.seqs == list(range(1, 301))
    assert set(sender.acked.values()) == {r["id"] for r in rows}
    # the device that stayed on the other node saw everything live, in order, once
    events = await wb2.events_of("chat.message.new", 300, timeout=20)
    view2.take(events, wb2)
    assert view2.seqs == list(range(1, 301))
    assert MARK not in p1.log.read_text()
