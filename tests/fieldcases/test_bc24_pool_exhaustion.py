"""BC-24: a small pool survives clients that vanish mid-request, and a locked table
is answered `unavailable` within the statement timeout instead of hanging.

The node runs with `db_pool_max=5` (BESEDA_DB_POOL_MAX) and, for the lock case,
`db_statement_timeout_ms=3000` (BESEDA_DB_STATEMENT_TIMEOUT_MS).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from tests.helpers import send_data
from tests.wire import RawWs, bulk_users

POOL_MAX = 5
STORM_ROUNDS = 3
STORM_CLIENTS = 100
STATEMENT_TIMEOUT_MS = 3000


def db_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1].split("?", 1)[0]


async def app_backends(world: Any) -> list[asyncpg.Record]:
    return await world.sql(
        """SELECT state FROM pg_stat_activity
            WHERE datname = $1 AND application_name = 'beseda' AND pid <> pg_backend_pid()""",
        db_name(world.dsn),
    )


async def pool_gauges(http_port: int) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{http_port}/metrics")).text
    out = {}
    for line in text.splitlines():
        if line.startswith("beseda_db_pool_connections{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            out[state] = float(line.rsplit(" ", 1)[1])
    return out


async def vanishing_client(port: int, token: str, chat: int, n: int) -> None:
    """Connects, asks history and sends, then resets the TCP connection 5 ms later."""
    try:
        raw = await RawWs.connect(port, token)
    except (OSError, asyncio.TimeoutError):
        return
    await raw.send_json(
        {"type": "messages.history", "id": "h", "data": {"chat_id": chat, "limit": 100}}
    )
    await raw.send_json(
        {
            "type": "message.send",
            "id": "s",
            "data": send_data(chat, f"storm-{n}", "storm"),
        }
    )
    await asyncio.sleep(0.005)
    raw.reset()


async def test_pool_serves_clean_client_when_storm_of_reset_clients_ends(world_with):
    """After 300 clients reset mid-request, a clean client's sends are acked, no pool
    connection stays checked out, and none is left idle in transaction."""
    world = await world_with(
        db_pool_max=POOL_MAX, rate_per_s=100_000.0, rate_burst=100_000
    )
    users = await bulk_users(world, 10)
    chat = await world.chat(users)
    tokens = [world.token(u) for u in users]
    port = world.node.ws_port
    for r in range(STORM_ROUNDS):
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    vanishing_client(
                        port, tokens[i % len(tokens)], chat, r * STORM_CLIENTS + i
                    )
                    for i in range(STORM_CLIENTS)
                )
            ),
            60,
        )

    clean = await world.connect(users[0])
    for i in range(10):
        ack = await clean.ok(
            "message.send", send_data(chat, f"clean-{i}", "clean"), timeout=10
        )
        assert ack["duplicate"] is False

    pool = world.node.pool
    leased = sum(
        lane.conn is not None for lane in world.node.writer._lanes
    )  # kept by writer lanes
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        states = [r["state"] for r in await app_backends(world)]
        if (
            "idle in transaction" not in states
            and pool.get_idle_size() + world.node.store.idle_kept + leased == pool.get_size()
        ):
            break
        await asyncio.sleep(0.2)
    assert "idle in transaction" not in states
    assert len(states) <= POOL_MAX
    kept = world.node.store.idle_kept
    assert (
        pool.get_idle_size() + kept + leased == pool.get_size()
    )  # nothing else leaked out of the pool
    stored = await world.sql(
        """SELECT message_key, count(*) AS n FROM messages WHERE chat_id = $1
            GROUP BY message_key HAVING count(*) > 1""",
        chat,
    )
    assert stored == []


async def test_send_is_unavailable_within_statement_timeout_when_chats_table_is_locked(
    world_with,
):
    """Sends and history during an exclusive lock get `unavailable`; after release the
    same keys are stored exactly once."""
    world = await world_with(
        db_pool_max=POOL_MAX, db_statement_timeout_ms=STATEMENT_TIMEOUT_MS
    )
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    await wa.ok("message.send", send_data(chat, "before", "before the lock"))

    locker = await asyncpg.connect(world.dsn)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE chats IN ACCESS EXCLUSIVE MODE")
        try:
            bound = STATEMENT_TIMEOUT_MS / 1000 + 5
            r1 = await wa.request(
                "message.send", send_data(chat, "k1", "during"), timeout=bound
            )
            r2 = await wa.request(
                "message.send", send_data(chat, "k2", "during"), timeout=bound
            )
            pending = wa.send_nowait("messages.history", {"chat_id": chat})
            await asyncio.sleep(0.5)
            gauges = await pool_gauges(world.node.http_port)
            r3 = await asyncio.wait_for(pending, bound)
        finally:
            await tx.rollback()
    finally:
        await locker.close()
    for reply in (r1, r2, r3):
        assert reply["type"] == "error" and reply["error"]["code"] == "unavailable", (
            reply
        )
    # /metrics showed the pool busy while the history query waited on the lock
    assert gauges["max"] == POOL_MAX and gauges["busy"] >= 1

    first = [
        await wa.ok("message.send", send_data(chat, k, "retried")) for k in ("k1", "k2")
    ]
    again = [
        await wa.ok("message.send", send_data(chat, k, "retried")) for k in ("k1", "k2")
    ]
    assert [f["duplicate"] for f in first] == [False, False]
    assert [g["duplicate"] for g in again] == [True, True]
    assert [f["seq"] for f in first] == [2, 3]
    rows = await world.sql(
        "SELECT message_key FROM messages WHERE chat_id = $1 ORDER BY seq", chat
    )
    assert [r["message_key"] for r in rows] == ["before", "k1", "k2"]
