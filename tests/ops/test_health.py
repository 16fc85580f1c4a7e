"""/healthz and /readyz: alive always, ready only with the database reachable."""

from __future__ import annotations

import asyncio

import pytest

from tests.ops.scrape import get_json, scrape, value


async def wait_ready(http_port: int, want: int, timeout: float = 60.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await get_json(http_port, "/readyz")
        if status == want:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/readyz stayed {status}: {body}")
        await asyncio.sleep(0.2)


async def test_healthz_and_readyz_answer_ok_on_a_healthy_node(node):
    """Both endpoints answer 200; readiness lists its checks."""
    assert await get_json(node.http_port, "/healthz") == (200, {"status": "ok"})
    status, body = await get_json(node.http_port, "/readyz")
    assert status == 200
    assert body == {
        "status": "ready", "checks": {"database": True, "bus": True, "accepting": True}
    }
    samples = await scrape(node.http_port)
    assert value(samples, "beseda_dependency_up", dependency="database") == 1


@pytest.mark.slow
async def test_readyz_goes_not_ready_while_postgres_is_stopped(pg, node_factory):
    """PostgreSQL stopped: /readyz 503 with database false, /healthz still 200;
    PostgreSQL back: /readyz 200 again."""
    if not pg.controllable:
        pytest.skip("DATABASE_URL points at an external server that tests may not stop")
    node = await node_factory(db_acquire_timeout_s=1.0, ready_timeout_s=1.0)
    await wait_ready(node.http_port, 200)
    pg.stop()
    try:
        body = await wait_ready(node.http_port, 503)
        assert body["status"] == "not_ready"
        assert body["checks"]["database"] is False and body["checks"]["bus"] is True
        assert (await get_json(node.http_port, "/healthz"))[0] == 200
        samples = await scrape(node.http_port)
        assert value(samples, "beseda_dependency_up", dependency="database") == 0
    finally:
        pg.start()
    body = await wait_ready(node.http_port, 200)
    assert body["checks"]["database"] is True
    samples = await scrape(node.http_port)
    assert value(samples, "beseda_dependency_up", dependency="database") == 1


async def test_readyz_goes_not_ready_while_draining(node):
    """A draining node is alive but not ready, so the balancer stops sending to it."""
    node.server.accepting = False
    try:
        status, body = await get_json(node.http_port, "/readyz")
        assert status == 503 and body["checks"]["accepting"] is False
    finally:
        node.server.accepting = True
