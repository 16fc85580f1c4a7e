"""Cost of idle sockets on one node: memory and keepalive CPU.

    .venv/bin/python -m loadtests.idle_bench [--sockets 2000] [--seconds 20]
        [--ping-interval 1] [--out loadtests/reports/idle]

One `beseda serve` subprocess (embedded PostgreSQL, no Redis), a client process that
opens --sockets idle sockets and answers pings. The node pings every
--ping-interval seconds (shortened from 20 s so that a short run sees many pings).
Measures node CPU with no sockets and with them over the same time, and RSS growth:
CPU per ping/pong and bytes per idle socket. Bounded by --seconds; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import websockets

from loadtests.scale_bench import SECRET, Node, proc_cpu_s, proc_rss_bytes
from wsserver import db
from wsserver.auth import mint
from wsserver.config import Settings
from wsserver.embedded_pg import EmbeddedPostgres


async def run(args: argparse.Namespace) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="beseda-idle-"))
    pg = EmbeddedPostgres(tmp / "pg")
    pg.start()
    node = None
    try:
        dsn = await db.ensure_database(pg.dsn, "idle")
        await db.migrate(dsn)
        conn = await asyncpg.connect(dsn)
        base = 20_000_000
        await conn.executemany(
            "INSERT INTO users (id, name, role, locale, is_demo) "
            "VALUES ($1, 'idle', 'buyer', 'ru', false)",
            [(base + i,) for i in range(args.sockets)],
        )
        await conn.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BESEDA_")}
        env.pop("REDIS_URL", None)
        env.update(
            DATABASE_URL=dsn,
            BESEDA_JWT_SECRET=SECRET,
            BESEDA_COMPRESSION="0",
            BESEDA_LOG_LEVEL="WARNING",
            BESEDA_PING_INTERVAL_S=str(args.ping_interval),
            BESEDA_MAX_CONN_PER_IP="100000",
            BESEDA_DATA_DIR=str(tmp / "node"),
        )
        node = Node(0, env, tmp / "node.log")
        await node.start()
        pid = node.proc.pid

        await asyncio.sleep(2)
        cpu0 = proc_cpu_s(pid)
        await asyncio.sleep(args.seconds)
        idle_cpu = proc_cpu_s(pid) - cpu0
        rss0 = proc_rss_bytes(pid)

        settings = Settings(jwt_secret=SECRET)
        sem = asyncio.Semaphore(50)
        sockets = []

        async def open_one(i: int) -> None:
            async with sem:
                token = mint(settings, base + i, "buyer", ttl_s=3600)
                sockets.append(
                    await websockets.connect(
                        node.url,
                        additional_headers={"Authorization": f"Bearer {token}"},
                        compression=None,
                        ping_interval=None,
                        open_timeout=30,
                    )
                )

        await asyncio.gather(*(open_one(i) for i in range(args.sockets)))
        await asyncio.sleep(2)
        rss1 = proc_rss_bytes(pid)
        cpu1 = proc_cpu_s(pid)
        await asyncio.sleep(args.seconds)
        busy_cpu = proc_cpu_s(pid) - cpu1
        for ws in sockets:
            await ws.close()
        pings = args.sockets * args.seconds / args.ping_interval
        return {
            "sockets": args.sockets,
            "seconds": args.seconds,
            "ping_interval_s": args.ping_interval,
            "node_cpu_s_without_sockets": idle_cpu,
            "node_cpu_s_with_sockets": busy_cpu,
            "cpu_us_per_ping": (busy_cpu - idle_cpu) * 1e6 / pings,
            "rss_bytes_per_idle_socket": (rss1 - rss0) / args.sockets,
        }
    finally:
        if node is not None:
            node.stop()
        pg.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--ping-interval", type=float, default=1.0)
    p.add_argument("--out", default="loadtests/reports/idle")
    args = p.parse_args()
    import uvloop

    r = uvloop.run(run(args))
    text = "\n".join(
        [
            "# Idle sockets on one node",
            "",
            "Written by `loadtests/idle_bench.py`: one `beseda serve`, "
            f"{r['sockets']} idle sockets, node pings every {r['ping_interval_s']} s, "
            f"{r['seconds']} s measured with and without the sockets.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| node CPU without sockets | {r['node_cpu_s_without_sockets']:.2f} s |",
            f"| node CPU with the sockets | {r['node_cpu_s_with_sockets']:.2f} s |",
            f"| CPU per ping/pong | {r['cpu_us_per_ping']:.1f} µs |",
            f"| RSS per idle socket | {r['rss_bytes_per_idle_socket'] / 1024:.1f} KiB |",
            "",
        ]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2))
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
