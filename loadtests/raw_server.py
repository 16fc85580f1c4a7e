"""The raw ceiling: a minimal websockets broadcast server with no storage and no auth.

It speaks Beseda's envelopes (PROTOCOL.md sections 3-5) closely enough for the load
client to drive it exactly as it drives Beseda: `message.send` is answered with an
`ack` shaped like Beseda's (a made-up id and a per-chat seq) and the message is pushed
as `chat.message.new` to every other connection in the chat. Nothing is stored,
nothing is verified, so what it reaches is what websockets + uvloop can do on this
machine: the ceiling any real server built on them stays under.

Membership is given at connect time, by query string (`/ws?user=U&chats=1,2`) or by a
chat map file (`--chat-map map.json`, `{"user id": [chat ids]}`) looked up with the
user from `?user=` or, failing that, from the unverified `sub` of a Bearer token.

    python -m loadtests.raw_server --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import logging
import os
import resource
import signal
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgspec
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

log = logging.getLogger("loadtests.raw_server")

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _sub_from_bearer(header: str | None) -> int | None:
    """The `sub` claim of a JWT, read without verifying it (this server trusts all)."""
    if not header or not header.lower().startswith("bearer "):
        return None
    parts = header[7:].strip().split(".")
    if len(parts) != 3:
        return None
    try:
        body = parts[1] + "=" * (-len(parts[1]) % 4)
        sub = json.loads(base64.urlsafe_b64decode(body)).get("sub")
        return int(sub)
    except (ValueError, TypeError, AttributeError):
        return None


class Hub:
    """Chat membership and the fake message sequence."""

    def __init__(self, chat_map: dict[int, list[int]] | None = None) -> None:
        self.chat_map = chat_map or {}
        self.members: dict[int, set[ServerConnection]] = defaultdict(set)
        self.seqs: dict[int, int] = defaultdict(int)
        self.ids = itertools.count(1)
        self.connections = 0
        self.messages = 0

    def membership(self, ws: ServerConnection) -> tuple[int, list[int]]:
        query = parse_qs(urlsplit(ws.request.path).query)
        user: int | None = None
        if "user" in query:
            user = int(query["user"][0])
        else:
            user = _sub_from_bearer(ws.request.headers.get("Authorization"))
        if user is None:
            raise ValueError("no user: pass ?user= or a Bearer token with a sub")
        if "chats" in query:
            chats = [int(c) for c in query["chats"][0].split(",") if c]
        else:
            chats = list(self.chat_map.get(user, []))
        return user, chats

    async def handler(self, ws: ServerConnection) -> None:
        try:
            user, chats = self.membership(ws)
        except ValueError as exc:
            await ws.close(1008, str(exc)[:100])
            return
        for chat in chats:
            self.members[chat].add(ws)
        self.connections += 1
        try:
            async for raw in ws:
                self.on_frame(ws, user, raw)
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            for chat in chats:
                self.members[chat].discard(ws)

    def on_frame(self, ws: ServerConnection, user: int, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            asyncio.ensure_future(ws.close(1003, "binary frames are not accepted"))
            return
        try:
            env = _decode(raw)
            kind = env["type"]
            req_id = env.get("id")
        except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
            broadcast([ws], _error(None, "bad_request", "malformed envelope"))
            return
        if kind != "message.send":
            if req_id is not None:
                broadcast([ws], _encode({"type": "ack", "id": req_id, "data": {}}).decode())
            return
        try:
            data = env["data"]
            chat = data["chat_id"]
            key = data["message_key"]
        except (KeyError, TypeError):
            broadcast([ws], _error(req_id, "bad_request", "chat_id and message_key"))
            return
        room = self.members.get(chat)
        if room is None or ws not in room:
            broadcast([ws], _error(req_id, "not_found", "chat not found"))
            return
        self.seqs[chat] += 1
        seq = self.seqs[chat]
        mid = next(self.ids)
        created = datetime.now(timezone.utc).isoformat()
        self.messages += 1
        broadcast(
            [ws],
            _encode(
                {
                    "type": "ack",
                    "id": req_id,
                    "data": {
                        "id": mid,
                        "chat_id": chat,
                        "seq": seq,
                        "created_at": created,
                        "duplicate": False,
                    },
                }
            ).decode(),
        )
        text = data.get("text")
        event = _encode(
            {
                "type": "chat.message.new",
                "data": {
                    "id": mid,
                    "chat_id": chat,
                    "seq": seq,
                    "rev": seq,
                    "user_id": user,
                    "type": data.get("type", "text"),
                    "content": {"ru": text},
                    "lang": "ru",
                    "metadata": data.get("metadata") or {},
                    "attachments": [],
                    "reply_to_id": None,
                    "message_key": key,
                    "created_at": created,
                    "edited_at": None,
                    "deleted_at": None,
                },
            }
        )
        # str, not bytes: bytes would go out as binary frames.
        broadcast([c for c in room if c is not ws], event.decode())


def _error(req_id: object, code: str, message: str) -> str:
    env: dict[str, object] = {"type": "error", "error": {"code": code, "message": message}}
    if req_id is not None:
        env["id"] = req_id
    return _encode(env).decode()


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(host: str, port: int, chat_map: dict[int, list[int]] | None) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the raw server listens on the loopback only")
    hub = Hub(chat_map)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        hub.handler,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_size=64 * 1024,
        max_queue=64,
        backlog=4096,
    ):
        print(f"raw_server listening on {host}:{port} pid={os.getpid()}", flush=True)
        await stop
    print(f"raw_server stopped messages={hub.messages}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--chat-map", type=Path, help='JSON {"user": [chat, ...]}')
    args = p.parse_args(argv)
    chat_map = None
    if args.chat_map:
        raw = json.loads(args.chat_map.read_text())
        chat_map = {int(k): [int(c) for c in v] for k, v in raw.items()}
    raise_nofile_limit()
    profile_to = os.environ.get("LOADTEST_CPROFILE")
    if profile_to:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            uvloop.run(run(args.host, args.port, chat_map))
        finally:
            prof.disable()
            prof.dump_stats(profile_to)
    else:
        uvloop.run(run(args.host, args.port, chat_map))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()
