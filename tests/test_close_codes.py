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
