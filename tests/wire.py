"""Low-level test clients: a raw WebSocket over a plain socket, raw handshakes, a
`beseda serve` subprocess, and bulk data helpers (real sockets, real database).

The raw client is websockets' sans-I/O `ClientProtocol` over a non-blocking socket
that the test reads only when it chooses to: a peer that stops reading (and so
stops answering pings) is a client that simply does not call `recv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.helpers import World

LOOPBACK = "127.0.0.1"


class RawWs:
    """A WebSocket client whose socket is read only on demand."""

    def __init__(self, sock: socket.socket, proto: ClientProtocol) -> None:
        self.sock = sock
        self.proto = proto
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.eof = False

    @classmethod
    async def connect(
        cls,
        port: int,
        token: str | None,
        *,
        rcvbuf: int | None = None,
        via_query: bool = False,
        deflate: bool = False,
        timeout: float = 10.0,
    ) -> "RawWs":
        path = "/ws"
        if token is not None and via_query:
            path += f"?token={token}"
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        proto = ClientProtocol(
            parse_uri(f"ws://{LOOPBACK}:{port}{path}"),
            extensions=extensions,
            max_size=None,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (LOOPBACK, port)), timeout)
        client = cls(sock, proto)
        request = proto.connect()
        if token is not None and not via_query:
            request.headers["Authorization"] = f"Bearer {token}"
        proto.send_request(request)
        await client._flush()
        deadline = loop.time() + timeout
        while True:
            events = await client._recv_events(deadline)
            if events:
                response = events[0]
                assert isinstance(response, Response)
                client.frames.extend(e for e in events[1:] if isinstance(e, Frame))
                if proto.handshake_exc is not None:
                    sock.close()
                    raise proto.handshake_exc
                return client

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        for chunk in self.proto.data_to_send():
            if chunk:
                await loop.sock_sendall(self.sock, chunk)

    async def _recv_events(self, deadline: float) -> list[Any]:
        loop = asyncio.get_running_loop()
        left = max(0.01, deadline - loop.time())
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), left)
        if data:
            self.proto.receive_data(data)
        else:
            self.eof = True
            self.proto.receive_eof()
        events = self.proto.events_received()
        await self._flush()  # pongs and close replies
        return events

    async def send_json(self, obj: Any) -> None:
        await self.send_text(json.dumps(obj, ensure_ascii=False))

    async def send_text(self, text: str | bytes) -> None:
        self.proto.send_text(text.encode() if isinstance(text, str) else text)
        await self._flush()

    async def send_binary(self, data: bytes) -> None:
        self.proto.send_binary(data)
        await self._flush()

    async def frame(self, timeout: float = 10.0) -> Frame:
        """The next data or close frame (pings are answered on the way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.frames:
                f = self.frames.pop(0)
                if f.opcode is Opcode.CLOSE:
                    self.close_code = Close.parse(f.data).code if f.data else 1005
                    return f
                if f.opcode in (Opcode.TEXT, Opcode.BINARY):
                    return f
            if self.eof:
                raise ConnectionError("socket closed")
            self.frames.extend(
                e for e in await self._recv_events(deadline) if isinstance(e, Frame)
            )

    async def message(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next JSON frame, or None once a close frame arrived."""
        f = await self.frame(timeout)
        if f.opcode is Opcode.CLOSE:
            return None
        return json.loads(f.data)

    async def until_closed(
        self, timeout: float = 15.0
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """Reads to the close frame (or EOF); returns the close code and the frames."""
        got: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(ConnectionError):
            while True:
                msg = await self.message(max(0.01, deadline - loop.time()))
                if msg is None:
                    break
                got.append(msg)
        return self.close_code, got

    def widen(self, rcvbuf: int) -> None:
        """Enlarges the receive buffer, as a paused client that wakes up would read."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    def reset(self) -> None:
        """Drops the connection with a TCP RST (SO_LINGER 0), like a vanished peer."""
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


async def handshake(
    port: int, token: str | None, *, via_query: bool = False, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """A raw upgrade request; returns (status, lowercased headers, body)."""
    path = "/ws" if not (token and via_query) else f"/ws?token={token}"
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {LOOPBACK}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if token is not None and not via_query:
        lines.append(f"Authorization: Bearer {token}")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOOPBACK, port), timeout
    )
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = b""
        length = int(headers.get("content-length", "0"))
        if status != 101 and length:
            body = await asyncio.wait_for(reader.readexactly(length), timeout)
        return status, headers, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def refused_status(exc: BaseException) -> int | None:
    return exc.response.status_code if isinstance(exc, InvalidStatus) else None


# -- data -----------------------------------------------------------------------


async def bulk_users(world: World, n: int, role: str = "buyer") -> list[int]:
    ids = [next(world.ids) for _ in range(n)]
    conn = await asyncpg.connect(world.dsn)
    try:
        await conn.executemany(
            "INSERT INTO users (id, name, role, locale, is_demo) VALUES ($1, $2, $3, 'ru', false)",
            [(u, f"user {u}", role) for u in ids],
        )
    finally:
        await conn.close()
    return ids


def world_for(node: Any, ids: Any) -> World:
    return World(node.dsn, node.settings, f"ws://{LOOPBACK}:{node.ws_port}/ws", ids)


async def sync_all(
    client: Any, chat_id: int, rev: int, max_pages: int = 100
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pages `chats.sync` from `rev` until has_more is false; returns (changes, pages)."""
    changes: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    for _ in range(max_pages):
        ack = await client.ok(
            "chats.sync", {"chats": [{"chat_id": chat_id, "rev": rev}]}, timeout=30
        )
        page = ack["chats"][0]
        pages.append(page)
        assert page["reset"] is False, page
        changes.extend(page["changes"])
        if page["changes"]:
            rev = page["changes"][-1]["data"]["rev"]
        if not page["has_more"]:
            return changes, pages
    raise AssertionError(f"chats.sync still had more after {max_pages} pages")


async def history_all(client: Any, chat_id: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    for _ in range(10_000):
        ack = await client.ok(
            "messages.history", {"chat_id": chat_id, "after_seq": after, "limit": 100}
        )
        out.extend(ack["messages"])
        if not ack["has_more"]:
            return out
        after = ack["messages"][-1]["seq"]
    raise AssertionError("history did not end")


# -- a server process -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class ServerProcess:
    """`beseda serve` on loopback against the test database; stopped by its PID."""

    def __init__(
        self, dsn: str, secret: str, data_dir: Path, env: dict[str, str]
    ) -> None:
        self.ws_port = free_port()
        self.http_port = free_port()
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BESEDA_", "REDIS_"))
        }
        full_env.update(
            DATABASE_URL=dsn,
            BESEDA_JWT_SECRET=secret,
            BESEDA_DATA_DIR=str(data_dir),
            BESEDA_LOG_LEVEL="WARNING",
        )
        full_env.update(env)
        self.log_path = data_dir / "serve.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsserver.cli",
                "serve",
                "--host",
                LOOPBACK,
                "--ws-port",
                str(self.ws_port),
                "--http-port",
                str(self.http_port),
            ],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(
            loop.run_in_executor(None, self.proc.stdout.readline), timeout
        )
        if b"ws://" not in line:
            raise RuntimeError(
                f"server did not start: {self.log_path.read_text()[-2000:]}"
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def now() -> float:
    return time.time()


async def reply_to(client: Any, rid: str, timeout: float = 15.0) -> dict[str, Any]:
    """The (first) reply a WsClient got for a request id sent with `raw`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while rid not in client.replies:
        if loop.time() > deadline:
            raise TimeoutError(f"no reply to {rid}")
        if client.closed.is_set():
            raise ConnectionError(f"closed before a reply to {rid}")
        await asyncio.sleep(0.01)
    return client.replies[rid][0]


# -- forged tokens ------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: str) -> str:
    """A JWT with any header, signed with HMAC-SHA256 whatever the header says."""
    import hashlib
    import hmac

    signing = (
        f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    )
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64url(sig)}"


def unsigned_token(alg: str, claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def retamper(token: str, **changes: Any) -> str:
    """The same header and signature over a changed payload."""
    header, payload, sig = token.split(".")
    claims = json.loads(unb64url(payload))
    claims.update(changes)
    return f"{header}.{b64url(json.dumps(claims).encode())}.{sig}"


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(unb64url(token.split(".")[1]))
