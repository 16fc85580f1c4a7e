"""A local stand-in for LibreTranslate and DeepL on 127.0.0.1, with switches for an
outage and slowness. It "translates" by tagging the text with the target code."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class FakeProvider:
    def __init__(self) -> None:
        self.down = False
        self.delay_s = 0.0
        self.calls: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def tag(text: str, target: str) -> str:
        return f"[{target.lower()}] {text}"

    async def _gate(self) -> Response | None:
        await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            return JSONResponse({"error": "unavailable"}, status_code=503)
        return None

    async def libre(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append({"api": "libre", **body})
        if (r := await self._gate()) is not None:
            return r
        q = body["q"]
        out = [self.tag(t, body["target"]) for t in q] if isinstance(q, list) else self.tag(q, body["target"])
        return JSONResponse({"translatedText": out})

    async def deepl(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append({"api": "deepl", "auth": request.headers.get("authorization"), **body})
        if (r := await self._gate()) is not None:
            return r
        if not (request.headers.get("authorization") or "").startswith("DeepL-Auth-Key "):
            return JSONResponse({"message": "forbidden"}, status_code=403)
        return JSONResponse({"translations": [
            {"detected_source_language": body["source_lang"], "text": self.tag(t, body["target_lang"])}
            for t in body["text"]
        ]})

    async def start(self) -> None:
        app = Starlette(routes=[
            Route("/translate", self.libre, methods=["POST"]),
            Route("/v2/translate", self.deepl, methods=["POST"]),
        ])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, loop="none", lifespan="off", log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
