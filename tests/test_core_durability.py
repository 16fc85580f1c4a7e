"""Acked means stored: server restarts, PostgreSQL outages, and a batch with a bad row."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import ServerProcess, World, WsClient, send_data


@pytest.mark.slow
async def test_server_restart_keeps_every_acked_message(fresh_db, base_settings, new_id):
    """Kill -9 the server mid-stream: everything acked before is in history after."""
    server = await ServerProcess(fresh_db, base_settings).start()
    world = World(fresh_db, base_settings, server.ws_url, new_id)
    try:
        a, b = await world.user(), await world.user()
        chat = await world.chat([a, b])
        wa = await world.connect(a)
        acked = []
        for i in range(30):
            acked.append(await wa.ok("message.send", send_data(chat, f"k{i}", f"до {i}")))
        futs = [wa.send_nowait("message.send", send_data(chat, f"late{i}", "x")) for i in range(50)]
        await server.kill()
        late = await asyncio.gather(*futs, return_exceptions=True)
        acked += [r["data"] for r in late if isinstance(r, dict) and r["type"] == "ack"]

        server2 = ServerProcess(fresh_db, base_settings)
        server2.ws_port, server2.http_port = server.ws_port, server.http_port
        await server2.start()
        try:
            wb = await WsClient.connect(server2.ws_url, world.token(b))
            world.clients.append(wb)
            hist = await wb.ok("messages.history", {"chat_id": chat, "after_seq": 0, "limit": 100})
            stored = {m["message_key"]: m for m in hist["messages"]}
            for ack in acked:
                assert stored[ack["message_key"]]["id"] == ack["id"]
            seqs = [m["seq"] for m in hist["messages"]]
            assert seqs == list(range(1, len(seqs) + 1))
            assert stored["k0"]["content"]["ru"] == "до 0"
        finally:
            await world.close()
            await server2.stop()
    finally:
        await server.stop()


@pytest.mark.slow
async def test_postgres_outage_answers_unavailable_then_recovers(pg, node_factory, new_id):
    """Sends during an outage get `unavailable`; the same keys later store once."""
    if not pg.controllable:
        pytest.skip("DATABASE_URL points at an external server that tests may not stop")
    node = await node_factory(db_acquire_timeout_s=2.0)
    world = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
    try:
        a, b = await world.user(), await world.user()
        chat = await world.chat([a, b])
        wa, wb = await world.connect(a), await world.connect(b)
        await wa.ok("message.send", send_data(chat, "before", "one"))

        await asyncio.to_thread(pg.stop)
        try:
            replies = [await wa.request("message.send", send_data(chat, f"down{i}", f"d{i}"))
                       for i in range(3)]
            assert [r["error"]["code"] for r in replies] == ["unavailable"] * 3
            hist = await wa.request("messages.history", {"chat_id": chat})
            assert hist["error"]["code"] == "unavailable"
        finally:
            await asyncio.to_thread(pg.start)

        stored = []
        for i in range(3):
            for _attempt in range(50):
                reply = await wa.request("message.send", send_data(chat, f"down{i}", f"d{i}"))
                if reply["type"] == "ack":
                    stored.append(reply["data"])
                    break
                assert reply["error"]["code"] == "unavailable"
                await asyncio.sleep(0.2)
        assert [s["seq"] for s in stored] == [2, 3, 4]
        again = await wa.ok("message.send", send_data(chat, "down0", "d0"))
        assert again["duplicate"] is True and again["seq"] == 2
        events = await wb.events_of("chat.message.new", 4)
        assert [e["data"]["seq"] for e in events] == [1, 2, 3, 4]
        assert await wb.quiet(0.3, "chat.message.new") == []
    finally:
        await world.close()


async def test_batch_with_bad_rows_stores_the_good_ones(node, world):
    """Over the socket: bad reply_to, archived chat, stranger's chat each fail alone."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    archived = await world.chat([a, b], status="archived")
    foreign = await world.chat([b, await world.user()])
    wa = await world.connect(a)
    first = await wa.ok("message.send", send_data(chat, "first", "root"))

    frames = [
        send_data(chat, "good1", "1"),
        send_data(chat, "badreply", "2", reply_to_id=first["id"] + 10_000),
        send_data(archived, "arch", "3"),
        send_data(foreign, "foreign", "4"),
        send_data(chat, "good2", "5", reply_to_id=first["id"]),
    ]
    rows = [wa.send_nowait("message.send", f) for f in frames]
    replies = await asyncio.gather(*rows)
    kinds = [r["type"] if r["type"] == "ack" else r["error"]["code"] for r in replies]
    assert kinds == ["ack", "bad_request", "conflict", "not_found", "ack"]
    assert [replies[0]["data"]["seq"], replies[4]["data"]["seq"]] == [2, 3]
    counts = await world.sql(
        "SELECT chat_id, count(*) AS n, max(seq) AS top FROM messages GROUP BY chat_id"
    )
    assert {(r["chat_id"], r["n"], r["top"]) for r in counts} == {(chat, 3, 3)}
    last = await world.sql("SELECT last_seq, rev FROM chats WHERE id = $1", chat)
    assert (last[0]["last_seq"], last[0]["rev"]) == (3, 3)
