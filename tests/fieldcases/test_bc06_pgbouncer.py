"""BC-06: the node behind pgbouncer in transaction mode (BESEDA_PGBOUNCER=1).

pgbouncer runs on a free loopback port in front of the test PostgreSQL. Skipped
when the pgbouncer binary is not installed (`apt-get install pgbouncer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import send_data
from tests.wire import bulk_users, free_port

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
)
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None,
    reason="pgbouncer binary not installed (apt-get install pgbouncer)",
)

SOCKETS = 10
EACH = 50


@pytest.fixture
async def bouncer_dsn(fresh_db: str) -> Any:
    """A DSN for the test database through pgbouncer (transaction pooling)."""
    target = urlsplit(fresh_db)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="beseda-pgbouncer-"))
    folder.chmod(0o755)
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={target.port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "max_client_conn = 500\n"
        "default_pool_size = 8\n"
    )
    for f in folder.iterdir():
        f.chmod(0o644)
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]  # pgbouncer refuses to run as root
    log = open(folder / "pgbouncer.log", "wb")
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), 0.2),
            ):
                break
            if proc.poll() is not None or loop.time() > deadline:
                raise RuntimeError((folder / "pgbouncer.log").read_text()[-2000:])
            await asyncio.sleep(0.05)
        yield f"postgresql://{target.username}@127.0.0.1:{port}{target.path}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


async def test_sends_history_and_reads_work_when_database_is_behind_pgbouncer(
    world_with, bouncer_dsn
):
    """10 sockets x 50 sends + histories + reads, and REST chat lists: no internal or
    unavailable, all stored once."""
    world = await world_with(
        database_url=bouncer_dsn,
        pgbouncer=True,
        rate_per_s=100_000.0,
        rate_burst=100_000,
        max_pending_requests=1000,
    )
    users = await bulk_users(world, SOCKETS)
    viewer = await world.user("client")
    chat = await world.chat(users + [viewer])
    clients = [await world.connect(u) for u in users]
    seed = await clients[0].ok("message.send", send_data(chat, "seed", "seed"))

    async def work(i: int) -> list[dict[str, Any]]:
        c = clients[i]
        futs = []
        for j in range(EACH):
            futs.append(
                c.send_nowait(
                    "message.send", send_data(chat, f"u{i}-{j}", f"m {i} {j}")
                )
            )
            futs.append(
                c.send_nowait("messages.history", {"chat_id": chat, "limit": 20})
            )
            futs.append(
                c.send_nowait(
                    "message.read", {"chat_id": chat, "message_id": seed["id"]}
                )
            )
        return await asyncio.wait_for(asyncio.gather(*futs), 60)

    async def rest_lists() -> list[httpx.Response]:
        url = f"http://127.0.0.1:{world.node.http_port}/api/v1/client/chat"
        headers = {"Authorization": f"Bearer {world.token(viewer, 'client')}"}
        async with httpx.AsyncClient(timeout=30) as http:
            return await asyncio.gather(
                *(http.get(url, headers=headers) for _ in range(20))
            )

    results, lists = await asyncio.gather(
        asyncio.gather(*(work(i) for i in range(SOCKETS))), rest_lists()
    )
    assert [r.status_code for r in lists] == [200] * 20
    assert all([c["id"] for c in r.json()["data"]] == [chat] for r in lists)
    bad = [r for rs in results for r in rs if r["type"] != "ack"]
    assert bad == []
    rows = await world.sql(
        """SELECT count(*) AS n, count(DISTINCT message_key) AS keys, max(seq) AS top
             FROM messages WHERE chat_id = $1""",
        chat,
    )
    total = SOCKETS * EACH + 1
    assert (rows[0]["n"], rows[0]["keys"], rows[0]["top"]) == (total, total, total)


async def test_concurrent_migrations_finish_and_leave_no_lock_when_run_through_pgbouncer(
    bouncer_dsn, fresh_db
):
    """Six migrators at once through transaction pooling all finish; no advisory
    lock stays behind on a pooled server connection."""
    import asyncpg

    from wsserver import db

    results = await asyncio.wait_for(
        asyncio.gather(*(db.migrate(bouncer_dsn) for _ in range(6))), 60
    )
    assert results == [[]] * 6  # the template was migrated already
    conn = await asyncpg.connect(fresh_db)
    try:
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )
    finally:
        await conn.close()
    assert held == 0
