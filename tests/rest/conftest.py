"""REST fixtures: a real httpx client against the node's HTTP port on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest


class Api:
    """Calls the node's HTTP port with a token; returns (status, json).

    Before a search it lets the node's search indexer catch up with what is
    committed (which it does by itself within `BESEDA_SEARCH_INDEX_INTERVAL_S`), so
    a test's search sees the messages the test just wrote."""

    def __init__(self, client: httpx.AsyncClient, world: Any, node: Any) -> None:
        self.client = client
        self.world = world
        self.node = node

    def service_token(self) -> str:
        return self.world.token(1, "service")

    async def call(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if "/chat/search" in path:
            await self.node.search_index.drain()
        r = await self.client.request(method, path, headers=headers, **kw)
        try:
            body = r.json()
        except ValueError:
            body = r.text
        return r.status_code, body

    async def get(self, path: str, token: str | None = None, **params: Any) -> tuple[int, Any]:
        return await self.call("GET", path, token, params=params)

    async def ok(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        status, body = await self.call(method, path, token, **kw)
        assert status in (200, 201), (status, body)
        return body["data"]

    async def service(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call(method, "/internal/v1" + path, self.service_token(), **kw)


@pytest.fixture
async def http(node: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.http_port}", timeout=30, trust_env=False
    ) as client:
        yield client


@pytest.fixture
async def api(http: httpx.AsyncClient, world: Any, node: Any) -> Api:
    return Api(http, world, node)
