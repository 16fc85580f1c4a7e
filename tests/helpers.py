"""Test-side WebSocket client and data helpers (real sockets, real database)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import asyncpg
import websockets
from websockets.asyncio.client import ClientConnection

from wsserver.auth import mint
from wsserver.config import Settings

_req_ids = itertools.count(1)


class WsClient:
    """One socket: replies matched by id, pushed events queued in arrival order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.untagged: list[dict[str, Any]] = []
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self.closed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls, url: str, token: str | None, *, via_query: bool = False, **kwargs: Any
    ) -> "WsClient":
        headers = {}
        if token is not None and not via_query:
            headers["Authorization"] = f"Bearer {token}"
        if token is not None and via_query:
            url = f"{url}?token={token}"
        ws = await websockets.connect(
            url, additional_headers=headers, compression=None, max_size=2**24, **kwargs
        )
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                rid = frame.get("id")
                if rid is not None and frame.get("type") in ("ack", "error"):
                    self.replies.setdefault(rid, []).append(frame)
                    fut = self._waiting.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
                elif frame.get("type") in ("ack", "error"):
                    self.untagged.append(frame)
                else:
                    self.events.put_nowait(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("socket closed"))

    def send_nowait(self, type_: str, data: Any, rid: str | None = None) -> asyncio.Future[dict[str, Any]]:
        rid = rid or f"r{next(_req_ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        frame = {"type": type_, "id": rid, "data": data}
        asyncio.get_running_loop().create_task(self.ws.send(json.dumps(frame, ensure_ascii=False)))
        return fut

    async def request(self, type_: str, data: Any, rid: str | None = None, timeout: float = 15) -> dict[str, Any]:
        return await asyncio.wait_for(self.send_nowait(type_, data, rid), timeout)

    async def ok(self, type_: str, data: Any, timeout: float = 15) -> Any:
        reply = await self.request(type_, data, timeout=timeout)
        assert reply["type"] == "ack", reply
        return reply["data"]

    async def raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def event(self, type_: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """The next event (of a type, skipping others)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            frame = await asyncio.wait_for(self.events.get(), max(0.01, left))
            if type_ is None or frame["type"] == type_:
                return frame

    async def events_of(self, type_: str, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        return [await self.event(type_, timeout) for _ in range(n)]

    def drain_events(self, type_: str | None = None) -> list[dict[str, Any]]:
        out = []
        while not self.events.empty():
            frame = self.events.get_nowait()
            if type_ is None or frame["type"] == type_:
                out.append(frame)
        return out

    async def quiet(self, seconds: float = 0.5, type_: str | None = None) -> list[dict[str, Any]]:
        """Waits, then returns what arrived meanwhile (the caller asserts on it)."""
        await asyncio.sleep(seconds)
        return self.drain_events(type_)

    async def wait_closed(self, timeout: float = 15) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


class World:
    """Creates users and chats straight in the database, and mints their tokens."""

    def __init__(self, dsn: str, settings: Settings, ws_url: str, ids: Any) -> None:
        self.dsn = dsn
        self.settings = settings
        self.ws_url = ws_url
        self.ids = ids
        self.clients: list[WsClient] = []

    async def user(self, role: str = "buyer", *, locale: str = "ru", name: str = "", demo: bool = False) -> int:
        uid = next(self.ids)
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                "INSERT INTO users (id, name, role, locale, is_demo) VALUES ($1, $2, $3, $4, $5)",
                uid, name or f"user {uid}", role if role != "service" else "service", locale, demo,
            )
        finally:
            await conn.close()
        return uid

    async def chat(self, users: list[int], *, status: str = "active", group: str = "order", name: str = "chat") -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            chat_id = await conn.fetchval(
                """INSERT INTO chats (type, "group", name, status) VALUES ($1, $2, $3, $4)
                   RETURNING id""",
                "private" if len(users) == 2 else "group", group, name, status,
            )
            await conn.executemany(
                "INSERT INTO chat_participants (chat_id, user_id, role) VALUES ($1, $2, $3)",
                [(chat_id, u, "owner" if i == 0 else "member") for i, u in enumerate(users)],
            )
        finally:
            await conn.close()
        return int(chat_id)

    def token(self, uid: int, role: str = "buyer", **kw: Any) -> str:
        return mint(self.settings, uid, role, **kw)

    async def connect(
        self, uid: int, role: str = "buyer", *, ttl_s: float = 3600, **kw: Any
    ) -> WsClient:
        client = await WsClient.connect(self.ws_url, self.token(uid, role, ttl_s=ttl_s), **kw)
        self.clients.append(client)
        return client

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


def send_data(chat_id: int, key: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"chat_id": chat_id, "message_key": key, "type": "text", "text": text, **extra}


class ServerProcess:
    """`beseda serve` as a real subprocess on free 127.0.0.1 ports."""

    def __init__(self, dsn: str, settings: Settings, env: dict[str, str] | None = None) -> None:
        import os

        from wsserver.embedded_pg import free_port

        self.ws_port = free_port()
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "BESEDA_JWT_SECRET": settings.jwt_secret or "",
            "BESEDA_DATA_DIR": str(settings.data_dir),
            "BESEDA_COMPRESSION": "0",
            **(env or {}),
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.log_lines: list[str] = []
        self._pump: asyncio.Task[None] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60) -> "ServerProcess":
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wsserver.cli", "serve",
            "--host", "127.0.0.1", "--ws-port", str(self.ws_port),
            "--http-port", str(self.http_port),
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        ready = asyncio.Event()
        self._pump = asyncio.get_running_loop().create_task(self._read(ready))
        await asyncio.wait_for(ready.wait(), timeout)
        if self.proc.returncode is not None:
            raise RuntimeError("server exited:\n" + "\n".join(self.log_lines[-30:]))
        return self

    async def _read(self, ready: asyncio.Event) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log_lines.append(line)
            if line.startswith("beseda: ws://"):
                ready.set()
        ready.set()

    async def stop(self, sig: int | None = None, timeout: float = 30) -> int | None:
        import signal

        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig if sig is not None else signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._pump, 5)
        return self.proc.returncode

    async def kill(self) -> None:
        import signal

        await self.stop(signal.SIGKILL)
