"""BC-10 (socket part): load on the hot path must not starve keepalive.

The node pings every second and drops a peer whose pong is a second late, so a
loop blocked for about a second would close idle clients with 1011. Fifty idle
clients ping the server too while three senders pipeline messages and a fourth
client types. (The translation half of BC-10 belongs to the REST adapter.)
"""

from __future__ import annotations

import asyncio

from tests.helpers import send_data
from tests.wire import bulk_users

IDLE = 50
SENDERS = 3
PER_SENDER = 600


async def test_idle_clients_keep_answering_pings_when_sends_load_the_loop(world_with):
    """Every idle client's pings are answered and none is closed during the load."""
    world = await world_with(
        ping_interval_s=1.0,
        ping_timeout_s=1.0,
        rate_per_s=100_000.0,
        rate_burst=100_000,
        max_pending_requests=1000,
    )
    idle_users = await bulk_users(world, IDLE)
    senders = await bulk_users(world, SENDERS)
    chat = await world.chat(senders + idle_users[:10])
    idle = [await world.connect(u) for u in idle_users]
    typist = await world.connect(senders[0])
    writers = [await world.connect(u) for u in senders]
    pongs = [0] * IDLE
    done = asyncio.Event()

    async def ping_loop(i: int) -> None:
        while not done.is_set():
            waiter = await idle[i].ws.ping()
            await asyncio.wait_for(waiter, 10)
            pongs[i] += 1
            await asyncio.sleep(0.5)

    async def typing_loop() -> None:
        while not done.is_set():
            await typist.ok("typing.start", {"chat_id": chat})
            await asyncio.sleep(1.0)

    async def send_loop(w: int) -> list[dict]:
        replies = []
        for start in range(0, PER_SENDER, 100):
            futs = [
                writers[w].send_nowait(
                    "message.send", send_data(chat, f"w{w}-{i}", "load " * 40)
                )
                for i in range(start, start + 100)
            ]
            replies.extend(await asyncio.wait_for(asyncio.gather(*futs), 60))
        return replies

    background = [
        asyncio.get_running_loop().create_task(ping_loop(i)) for i in range(IDLE)
    ]
    background.append(asyncio.get_running_loop().create_task(typing_loop()))
    results = await asyncio.gather(*(send_loop(w) for w in range(SENDERS)))
    await asyncio.sleep(2.5)  # more than a full ping interval after the load
    done.set()
    await asyncio.wait_for(asyncio.gather(*background), 15)

    assert all(r["type"] == "ack" for rs in results for r in rs)
    assert sum(len(rs) for rs in results) == SENDERS * PER_SENDER
    assert all(n >= 2 for n in pongs), pongs
    closed = [c.ws.close_code for c in idle + writers + [typist] if c.closed.is_set()]
    assert closed == []
