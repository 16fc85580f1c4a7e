"""Close codes the contract promises, seen by a real client."""

from __future__ import annotations

from tests.helpers import send_data


async def test_binary_frame_closes_1003_and_others_carry_on(world):
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    bad, good = await world.connect(a), await world.connect(b)
    await bad.raw(b"\x00\x01binary")
    assert await bad.wait_closed() == 1003
    assert (await good.ok("message.send", send_data(chat, "k", "still fine")))["seq"] == 1


async def test_expired_token_closes_4001(node_factory, new_id):
    from tests.helpers import World

    node = await node_factory(jwt_leeway_s=0.0)
    world = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
    try:
        a = await world.user()
        client = await world.connect(a, ttl_s=1)
        assert await client.wait_closed(timeout=15) == 4001
    finally:
        await world.close()


async def test_pipelined_large_reads_are_paced_not_shed(node_factory, new_id):
    """60 sync requests with big replies, sent at once by a client that pauses before
    reading (small receive buffer): every one is answered, none shed with 4009,
    although together the replies are many times the send queue."""
    import asyncio
    import json
    import socket

    import websockets

    from tests.helpers import World

    node = await node_factory(send_queue_bytes=256 * 1024)
    world = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
    try:
        a, b = await world.user(), await world.user()
        chat = await world.chat([a, b])
        wa = await world.connect(a)
        for i in range(30):
            await wa.ok("message.send", send_data(chat, f"big{i}", "ж" * 10_000))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", node.ws_port))
        ws = await websockets.connect(
            world.ws_url, sock=sock, compression=None, max_size=2**24, max_queue=None,
            additional_headers={"Authorization": f"Bearer {world.token(b)}"},
        )
        try:
            for i in range(60):
                await ws.send(json.dumps({"type": "chats.sync", "id": f"s{i}",
                                          "data": {"chats": [{"chat_id": chat, "rev": 0}]}}))
            await asyncio.sleep(1.5)  # not reading: the server must wait, not shed
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(60)]
        finally:
            await ws.close()
        assert sorted(r["id"] for r in replies) == sorted(f"s{i}" for i in range(60))
        assert all(r["type"] == "ack" and r["data"]["chats"][0]["changes"] for r in replies)
    finally:
        await world.close()
