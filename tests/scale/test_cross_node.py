"""Two and three nodes on one PostgreSQL and one Redis: delivery, order, presence."""

from __future__ import annotations

import asyncio
import random

from tests.helpers import send_data
from tests.ops.scrape import scrape
from tests.ops.test_metrics import ALLOWED_LABELS


def seqs(events: list[dict]) -> list[int]:
    return [e["data"]["seq"] for e in events]


async def test_cross_node_multi_device_users_get_each_message_once(cluster):
    """BC-03: A1,B1 on N1 and A2,B2 on N2; 100 sends from A1 reach A2, B1, B2 once
    each, in order, and A1 only as acks."""
    await cluster.start(2)
    w = cluster.world
    a, b = await w.user(), await w.user()
    chat = await w.chat([a, b])
    a1, b1 = await cluster.connect(0, a), await cluster.connect(0, b)
    a2, b2 = await cluster.connect(1, a), await cluster.connect(1, b)

    futs = [
        a1.send_nowait("message.send", send_data(chat, f"k{i}", f"m{i}"))
        for i in range(100)
    ]
    replies = await asyncio.gather(*futs)
    assert all(r["type"] == "ack" for r in replies)
    for client in (a2, b1, b2):
        events = await client.events_of("chat.message.new", 100)
        assert seqs(events) == list(range(1, 101))
        assert len({e["data"]["id"] for e in events}) == 100
    for client in (a1, a2, b1, b2):
        assert await client.quiet(0.3, "chat.message.new") == []

    # the bus and hold-back metrics keep to bounded labels, never an id
    samples = await scrape(cluster.nodes[1].http_port)
    names = {name for name, _ in samples}
    assert {"beseda_bus_messages_total", "beseda_bus_up"} <= names
    for name, labels in samples:
        for key, val in labels if name.startswith("beseda_") else ():
            assert key in ALLOWED_LABELS
            if key != "generation":  # GC generations 0-2 may equal a chat id
                assert val not in {str(a), str(b), str(chat)}


async def test_user_connecting_just_before_a_send_gets_it_from_another_node(cluster):
    """BC-04: a socket is routed before its 101, so a message committed right after
    the handshake on another node reaches it (20 fresh connections). A message
    committed a few ms before the handshake may come too, in order (docs/scale.md)."""
    await cluster.start(2)
    w = cluster.world
    a, b = await w.user(), await w.user()
    chat = await w.chat([a, b])
    wa = await cluster.connect(0, a)
    for i in range(20):
        wb = await cluster.connect(1, b)
        ack = await wa.ok("message.send", send_data(chat, f"r{i}", f"hello {i}"))
        got = []
        while not got or got[-1] != ack["seq"]:
            got.append((await wb.event("chat.message.new", timeout=5))["data"]["seq"])
        assert got == sorted(set(got)) and len(got) <= 2
        await wb.close()


async def test_every_socket_sees_seq_order_with_concurrent_senders_on_three_nodes(
    cluster,
):
    """Senders on every node write one chat at once, many rounds: every socket on any
    node gets chat.message.new in seq order, no gap and no duplicate."""
    await cluster.start(3)
    w = cluster.world
    rounds, per_sender = 8, 15
    rng = random.Random(7)
    for r in range(rounds):
        senders = [await w.user() for _ in range(3)]
        watcher = await w.user()
        chat = await w.chat([*senders, watcher])
        sockets = {u: [await cluster.connect(i, u)] for i, u in enumerate(senders)}
        watchers = [await cluster.connect(i, watcher) for i in range(3)]
        # a second device of each sender on the next node
        for i, u in enumerate(senders):
            sockets[u].append(await cluster.connect((i + 1) % 3, u))

        async def burst(i: int, u: int) -> list[int]:
            out = []
            for j in range(per_sender):
                if rng.random() < 0.3:
                    await asyncio.sleep(0.002)
                ack = await sockets[u][0].ok(  # noqa: B023
                    "message.send", send_data(chat, f"{r}-{i}-{j}", "x")  # noqa: B023
                )
                out.append(ack["seq"])
            return out

        own = await asyncio.gather(*(burst(i, u) for i, u in enumerate(senders)))
        total = 3 * per_sender
        assert sorted(s for lst in own for s in lst) == list(range(1, total + 1))
        for ws in watchers:
            assert seqs(await ws.events_of("chat.message.new", total)) == list(
                range(1, total + 1)
            )
        for i, u in enumerate(senders):
            first, second = sockets[u]
            got = seqs(await first.events_of("chat.message.new", total - per_sender))
            assert got == sorted(set(range(1, total + 1)) - set(own[i]))
            assert seqs(await second.events_of("chat.message.new", total)) == list(
                range(1, total + 1)
            )
        for ws in [*watchers, *(s for lst in sockets.values() for s in lst)]:
            assert await ws.quiet(0.0, "chat.message.new") == []
            await ws.close()
        await asyncio.sleep(0)


async def test_same_key_from_two_nodes_at_once_stores_one_message(cluster):
    """BC-19: the same message_key sent at the same instant from sockets on two nodes
    gives both the same message, one duplicate: false, and B one event per key."""
    await cluster.start(2)
    w = cluster.world
    a, b = await w.user(), await w.user()
    chat = await w.chat([a, b])
    a1, a2 = await cluster.connect(0, a), await cluster.connect(1, a)
    wb = await cluster.connect(1, b)
    keys = 100
    for i in range(keys):
        text2 = "hello" if i % 2 else "other text"
        r1, r2 = await asyncio.gather(
            a1.request("message.send", send_data(chat, f"k-race-{i}", "hello")),
            a2.request("message.send", send_data(chat, f"k-race-{i}", text2)),
        )
        assert r1["type"] == "ack" and r2["type"] == "ack", (r1, r2)
        assert (
            r1["data"]["id"] == r2["data"]["id"]
            and r1["data"]["seq"] == r2["data"]["seq"]
        )
        assert sorted([r1["data"]["duplicate"], r2["data"]["duplicate"]]) == [
            False,
            True,
        ]
        assert r1["data"]["content"] == r2["data"]["content"]
    events = await wb.events_of("chat.message.new", keys)
    assert seqs(events) == list(range(1, keys + 1))
    assert await wb.quiet(0.3, "chat.message.new") == []
    rows = await w.sql("SELECT count(*) AS n FROM messages WHERE chat_id = $1", chat)
    assert rows[0]["n"] == keys


async def test_online_and_typing_cross_nodes_and_typing_lapses_without_stop(cluster):
    """BC-11: B on N1 sees A (on N2) online and typing; typing=false comes within the
    TTL though A never sends typing.stop; after A leaves, A is not online."""
    await cluster.start(2)
    w = cluster.world
    a, b = await w.user(), await w.user()
    chat = await w.chat([a, b])
    wb = await cluster.connect(0, b)
    wa = await cluster.connect(1, a)
    ack = await wb.ok("chat.subscribe", {"chat_id": chat})
    assert a in ack["online"]
    await wa.ok("chat.subscribe", {"chat_id": chat})
    await wa.ok("typing.start", {"chat_id": chat})
    ev = await wb.event("chat.user.typing", timeout=5)
    assert ev["data"] == {"chat_id": chat, "user_id": a, "typing": True}
    ack = await wb.ok("chat.subscribe", {"chat_id": chat})
    assert ack["typing"] == [a]
    ev = await wb.event("chat.user.typing", timeout=5)  # TTL is 1 s here
    assert ev["data"]["typing"] is False
    await wa.close()
    for _ in range(100):
        ack = await wb.ok("chat.subscribe", {"chat_id": chat})
        if a not in ack["online"]:
            break
        await asyncio.sleep(0.05)
    assert a not in ack["online"] and ack["typing"] == []


async def test_typing_renewals_keep_remote_view_alive(cluster):
    """A typist renewing typing.start stays typing on other nodes past the relay's
    own lifetime (twice the TTL plus a heartbeat), with no repeated typing=true."""
    await cluster.start(2)
    w = cluster.world
    a, b = await w.user(), await w.user()
    chat = await w.chat([a, b])
    wb = await cluster.connect(0, b)
    wa = await cluster.connect(1, a)
    await wb.ok("chat.subscribe", {"chat_id": chat})
    relay_life = 2 * 1.0 + 0.25
    renewals = 0
    started = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - started < relay_life + 0.5:
        await wa.ok("typing.start", {"chat_id": chat})
        renewals += 1
        await asyncio.sleep(0.15)
    events = wb.drain_events("chat.user.typing")
    assert [e["data"]["typing"] for e in events] == [True], renewals
    await wa.ok("typing.stop", {"chat_id": chat})
    ev = await wb.event("chat.user.typing", timeout=5)
    assert ev["data"]["typing"] is False
