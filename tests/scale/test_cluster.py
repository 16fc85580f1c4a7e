"""Two nodes over a three-shard Valkey cluster: keys and channels spread by hash tag."""

from __future__ import annotations

import asyncio

from tests.helpers import World, send_data
from tests.scale.conftest import SCALE_DEFAULTS, _command


async def test_nodes_over_a_redis_cluster_deliver_across_nodes_once(
    node_factory, valkey_cluster, new_id
):
    """With a redis+cluster:// URL, routes, heartbeats, sharded channels and typing
    work across three shards: every device gets each message once, in order."""
    nodes = [
        await node_factory(
            redis_url=valkey_cluster, node_id=f"c{i}-{next(new_id)}", **SCALE_DEFAULTS
        )
        for i in range(2)
    ]
    w = World(nodes[0].dsn, nodes[0].settings, "", new_id)
    try:
        a, b = await w.user(), await w.user()
        chat = await w.chat([a, b])
        urls = [f"ws://127.0.0.1:{n.ws_port}/ws" for n in nodes]
        w.ws_url = urls[0]
        a1, b1 = await w.connect(a), await w.connect(b)
        w.ws_url = urls[1]
        a2, b2 = await w.connect(a), await w.connect(b)

        ack = await b1.ok("chat.subscribe", {"chat_id": chat})
        assert a in ack["online"]
        await a2.ok("chat.subscribe", {"chat_id": chat})
        await a2.ok("typing.start", {"chat_id": chat})
        ev = await b1.event("chat.user.typing", timeout=5)
        assert ev["data"]["user_id"] == a and ev["data"]["typing"] is True

        futs = [
            a1.send_nowait("message.send", send_data(chat, f"k{i}", "x"))
            for i in range(50)
        ]
        assert all(r["type"] == "ack" for r in await asyncio.gather(*futs))
        for client in (a2, b1, b2):
            events = await client.events_of("chat.message.new", 50)
            assert [e["data"]["seq"] for e in events] == list(range(1, 51))
        assert await a1.quiet(0.2, "chat.message.new") == []

        # the keys really are spread over the shards
        port = int(valkey_cluster.rsplit(":", 1)[1])
        shards = {
            _command(port, "CLUSTER", "KEYSLOT", key)
            for key in (f"bs:u:{{{a}}}", f"bs:u:{{{b}}}", "bs:nodes")
        }
        assert len(shards) == 3
    finally:
        await w.close()
